//! **late_vmfail_resume** — §2.6, invariant 9: a late VM-Fail emits no inject and resumes L1
//! after its VMLAUNCH/VMRESUME.
//!
//! **KVM behaviour.** `4f350c6dbcb9` "kvm: nVMX: Handle deferred early VMLAUNCH/VMRESUME failure
//! properly" (Jim Mattson): when hardware rejects vmcs02, L2 state is not loaded, vmcs12 is not
//! modified except the VM-instruction error, and L1 continues with the next instruction.
//! `nested_vmx_vmexit` with `vmx->fail` skips `kvm_nested_vmexit_inject`.
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit VMLAUNCH|VMRESUME rip R → kvm_nested_vmenter → kvm_entry (L2)
//! kvm_nested_vmenter_failed "hardware VM-instruction error: …"
//! kvm_nested_vmexit_inject                                → anomaly (no inject allowed)
//! kvm_entry rip ≠ R + 3                                   → anomaly
//! ```

use vmxray_events::{Entry, VmFailKind};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::PendingLaunch;

const RULE: RuleId = RuleId::LateVmfailResume;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    armed: Option<(EventIndex, PendingLaunch)>,
}

pub(crate) fn on_vmenter_failed(ctx: &mut Ctx<'_>, st: &mut State, kind: VmFailKind) {
    if kind == VmFailKind::LateHardware
        && let Some(launch) = ctx.vcpu.entry_launch
    {
        st.armed = Some((ctx.at, launch));
    }
}

pub(crate) fn on_inject(ctx: &mut Ctx<'_>, st: &mut State) {
    let Some((failed_at, launch)) = st.armed.take() else { return };
    ctx.checked(RULE);
    ctx.report(RULE, Severity::Error, &[launch.at, failed_at], || {
        "kvm_nested_vmexit_inject after a late VM-Fail: L1 must see VMfail (ZF, error 7), not a VM-exit (4f350c6dbcb9)".to_owned()
    });
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State, e: &Entry) {
    let Some((failed_at, launch)) = st.armed.take() else { return };
    let (Some(rip), Some(launch_rip)) = (e.rip, launch.rip) else { return };
    ctx.checked(RULE);
    let expected = launch_rip.wrapping_add(3);
    if rip == expected {
        return;
    }
    ctx.report(RULE, Severity::Error, &[launch.at, failed_at], || {
        format!(
            "after a late VM-Fail L1 resumes at {} instead of {} (the instruction after its VMLAUNCH/VMRESUME at {})",
            hex(rip),
            hex(expected),
            hex(launch_rip)
        )
    });
}
