//! **hlt_cancelled_exit_state** — §2.5 / bug (a), invariant 6: a nested exit taken before L2
//! ever ran must report exactly the entered L2 state.
//!
//! **KVM behaviour.** `nested_vmx_run` halts instead of entering when vmcs12's activity state is
//! HLT; L2's state is loaded in software only. The synthesized exit
//! (`sync_vmcs02_to_vmcs12`) must then return the entered values — which it did not before
//! `04f11ef45810` "KVM: nVMX: Always write vmcs02.GUEST_CR3 during nested VM-Enter" (regression
//! from `fd3edd4a9066`).
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter vmcs=B nested_rip=R guest_cr3=C     (no kvm_entry follows)
//! kvm_nested_vmexit_inject reason ∈ {EXTERNAL_INTERRUPT, INTERRUPT_WINDOW, NMI_WINDOW,
//!                                    PREEMPTION_TIMER} (or the silent SMI exit)
//! [no VMWRITE exit]
//! kvm_nested_vmenter vmcs=B nested_rip=R' guest_cr3=C'   R' ≠ R or C' ≠ C → anomaly
//! ```
//! Only asynchronous exits are compared: after them L1 has no reason to move L2's RIP. eVMCS
//! entries (vmcs -1) are skipped.

use vmxray_capture::NestedVmenter;
use vmxray_capture::codes::{ExitCode, VmxBasicReason};

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};

const RULE: RuleId = RuleId::HltCancelledExitState;

/// Exits that interrupt L2 without L2 having done anything that L1 would emulate.
pub(crate) fn is_asynchronous(reason: Option<ExitCode>) -> bool {
    match reason {
        None => true,
        Some(ExitCode::Vmx(r)) => {
            !r.failed_vmentry()
                && matches!(
                    r.basic(),
                    VmxBasicReason::EXTERNAL_INTERRUPT
                        | VmxBasicReason::INTERRUPT_WINDOW
                        | VmxBasicReason::NMI_WINDOW
                        | VmxBasicReason::PREEMPTION_TIMER
                )
        }
        Some(ExitCode::Svm(_) | ExitCode::Raw(_)) => false,
    }
}

pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, v: &NestedVmenter) {
    if v.is_evmcs() {
        return;
    }
    let st = ctx.vcpu;
    let Some(rec) = st.vmcs12.get(v.vmcs) else { return };
    let (Some(exit), Some(entered_at), Some(rip)) = (rec.last_exit, rec.entered_at, rec.nested_rip)
    else {
        return;
    };
    if exit.at < entered_at || !exit.zero_instructions || !is_asynchronous(exit.reason) {
        return;
    }
    ctx.checked(RULE);
    if st.counters.vmwrite != rec.vmwrites_at_exit {
        return;
    }
    let mut diffs = Vec::new();
    if rip.value != v.nested_rip {
        diffs.push(format!("GUEST_RIP {} -> {}", hex(rip.value), hex(v.nested_rip)));
    }
    if let (Some(old), Some(new)) = (rec.guest_cr3, v.guest_cr3())
        && old.value != new
    {
        diffs.push(format!("GUEST_CR3 {} -> {}", hex(old.value), hex(new)));
    }
    if diffs.is_empty() {
        return;
    }
    let vmcs = v.vmcs;
    let reason = exit.reason.map_or_else(|| "silent SMI exit".to_owned(), |r| r.to_string());
    ctx.report(RULE, Severity::Error, &[entered_at, exit.at], || {
        format!(
            "vmcs12 {} exited ({reason}) before L2 ran a single instruction, yet its state changed: {}",
            hex(vmcs),
            diffs.join(", ")
        )
    });
}
