//! **launch_state** — invariants 10 and 24: a failed VM-entry leaves the vmcs12 clear, and the
//! launch state decides whether VMLAUNCH/VMRESUME may enter.
//!
//! **KVM behaviour.** `nested_vmx_run` checks `vmcs12->launch_state` with `CC()` and VMfails with
//! `VMXERR_VMLAUNCH_NONCLEAR_VMCS` (4) or `VMXERR_VMRESUME_NONLAUNCHED_VMCS` (5) before
//! `kvm_nested_vmenter`; `prepare_vmcs12` sets `launch_state = 1` only when the entry did not fail.
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit VMLAUNCH → kvm_nested_vmenter vmcs=A → inject … FAILED_VMENTRY   (A stays clear)
//! [no VMCLEAR exit]  kvm_exit VMRESUME → kvm_nested_vmenter vmcs=A          → anomaly
//! kvm_exit VMLAUNCH → kvm_nested_vmenter vmcs=A → kvm_entry → inject        (A launched)
//! [no VMCLEAR exit]  kvm_exit VMLAUNCH → kvm_nested_vmenter vmcs=A          → anomaly
//! ```

use vmxray_events::NestedVmenter;
use vmxray_events::codes::Isa;

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::{EntryCause, LaunchState};

const RULE: RuleId = RuleId::LaunchState;

#[inline]
pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, v: &NestedVmenter) {
    if v.is_evmcs() || v.isa == Some(Isa::Svm) {
        return;
    }
    let Some(launch) = ctx.vcpu.pending_launch else { return };
    let Some(rec) = ctx.vcpu.vmcs12.get(v.vmcs) else { return };
    // On the stack: most VMLAUNCH/VMRESUME pass, and this runs for every one of them.
    let evidence = [rec.last_exit.map_or(launch.at, |e| e.at), launch.at];
    let vmcs = v.vmcs;
    match (launch.cause, rec.launch) {
        (EntryCause::Vmresume, LaunchState::Clear) => {
            ctx.checked(RULE);
            ctx.report(RULE, Severity::Error, &evidence, || {
                format!("VMRESUME of vmcs12 {} entered L2 although its VMLAUNCH failed (still clear): expected VMfail 5 (VMRESUME_NONLAUNCHED_VMCS)", hex(vmcs))
            });
        }
        (EntryCause::Vmlaunch, LaunchState::Launched) => {
            ctx.checked(RULE);
            ctx.report(RULE, Severity::Error, &evidence, || {
                format!("VMLAUNCH of launched vmcs12 {} entered L2 with no VMCLEAR: expected VMfail 4 (VMLAUNCH_NONCLEAR_VMCS)", hex(vmcs))
            });
        }
        (EntryCause::Vmresume, LaunchState::Launched)
        | (EntryCause::Vmlaunch, LaunchState::Clear) => {
            ctx.checked(RULE);
        }
        (EntryCause::Vmlaunch | EntryCause::Vmresume, LaunchState::Unknown)
        | (
            EntryCause::Rsm
            | EntryCause::Restore
            | EntryCause::Unexplained
            | EntryCause::Unattributed
            | EntryCause::Inferred,
            _,
        ) => {}
    }
}
