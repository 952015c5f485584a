//! **early_vmfail_resume** — invariant 8: a VMfail caught before `kvm_nested_vmenter` leaves L1
//! in root mode at the next instruction, with no MMU role change.
//!
//! **KVM behaviour.** The `CC()` checks of `nested_vmx_check_controls`/`…_host_state` and the
//! early hardware check end in `nested_vmx_fail`, which sets ZF/CF, records the error and skips
//! the instruction (`kvm_skip_emulated_instruction`); no nested state is loaded.
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit VMLAUNCH|VMRESUME rip R
//! kvm_nested_vmenter_failed CC message                 [no kvm_nested_vmenter before it]
//!   or kvm_nested_vmenter, then kvm_nested_vmenter_failed "early hardware check …"
//! kvm_mmu_get_page root with a role ≠ the last root's                  → anomaly
//! kvm_entry rip ≠ R + 3                                                → anomaly
//! ```
//! VMLAUNCH/VMRESUME are 3 bytes (`0f 01 c2/c3`); a prefixed encoding would be longer, hence
//! *warning*.

use vmxray_events::codes::MmuPageRole;
use vmxray_events::{Entry, MmuPage, VmFailKind};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{Mode, PendingLaunch, is_cr3_root};

const RULE: RuleId = RuleId::EarlyVmfailResume;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    armed: Option<Armed>,
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    failed_at: EventIndex,
    launch: PendingLaunch,
    role_before: Option<MmuPageRole>,
}

pub(crate) fn on_vmenter_failed(ctx: &mut Ctx<'_>, st: &mut State, kind: VmFailKind) {
    let launch = match kind {
        VmFailKind::LateHardware => return,
        // nested_early_check: the check runs after kvm_nested_vmenter.
        VmFailKind::EarlyHardware => ctx.vcpu.entry_launch.or(ctx.vcpu.pending_launch),
        // A guest-state CC() failure: a FAILED_VMENTRY nested exit follows, not a VMfail.
        VmFailKind::Check if matches!(ctx.vcpu.mode, Mode::L2Pending { .. } | Mode::L2Run) => {
            return;
        }
        VmFailKind::Check => ctx.vcpu.pending_launch,
    };
    if let Some(launch) = launch {
        st.armed = Some(Armed {
            failed_at: ctx.at,
            launch,
            role_before: ctx.vcpu.last_root.map(|r| r.role),
        });
    }
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let Some(armed) = st.armed else { return };
    let Some(before) = armed.role_before else { return };
    if !is_cr3_root(page.role) || page.role == before {
        return;
    }
    st.armed = Some(Armed { role_before: None, ..armed });
    let role = page.role;
    ctx.report(RULE, Severity::Warning, &[armed.launch.at, armed.failed_at], || {
        format!("MMU root role changed from {before} to {role} after a VMfail that must leave L1 untouched")
    });
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State, e: &Entry) {
    let Some(armed) = st.armed.take() else { return };
    let (Some(rip), Some(launch_rip)) = (e.rip, armed.launch.rip) else { return };
    ctx.checked(RULE);
    let expected = launch_rip.wrapping_add(3);
    if rip == expected {
        return;
    }
    ctx.report(RULE, Severity::Warning, &[armed.launch.at, armed.failed_at], || {
        format!(
            "after a VMfail L1 resumes at {} instead of {} (after its VMLAUNCH/VMRESUME at {})",
            hex(rip),
            hex(expected),
            hex(launch_rip)
        )
    });
}
