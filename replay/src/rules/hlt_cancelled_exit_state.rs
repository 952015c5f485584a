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
//!
//! **Nested EPT: consequence only** (*warning*). With nested_ept=y `kvm_nested_vmenter` shows
//! the EPTP, not GUEST_CR3, so the stale CR3 itself is invisible; §3(a) step 5 says "only L1's
//! reaction is visible". The rule then flags the first visible consequence: the vmcs12's next
//! hardware run (after its zero-instruction exit) ends with a hardware exception that L1
//! intercepts — L2 runs on another L2's page tables and faults at once (Muen's "subject
//! crashed" path):
//! ```text
//! kvm_nested_vmenter vmcs=B nested_ept=y → kvm_nested_vmexit_inject (async; no kvm_entry)
//! [no VMWRITE exit]
//! kvm_nested_vmenter vmcs=B nested_ept=y → kvm_entry (L2) → kvm_exit EXCEPTION_NMI
//!   → kvm_nested_vmexit_inject EXCEPTION_NMI (exception L1 intercepts)   → warning
//! ```
//! An L2 may legitimately fault into L1 right after waking, hence the lower severity; the
//! anomaly's evidence holds the zero-instruction exit, the re-entry and the faulting `kvm_exit`.

use vmxray_events::codes::{ExitCode, IntrType, VmxBasicReason};
use vmxray_events::{ExitInfo, NestedVmenter};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::Mode;

/// A nested-EPT re-entry of a vmcs12 whose previous entry never reached hardware.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    watching: Option<Watch>,
}

#[derive(Clone, Copy, Debug)]
struct Watch {
    vmptr: u64,
    zero_exit_at: EventIndex,
    vmenter_at: EventIndex,
}

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

#[inline]
pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, watch: &mut State, v: &NestedVmenter) {
    watch.watching = None;
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
    if st.counters.vmwrite == rec.vmwrites_at_exit && v.nested_tdp_root().is_some() {
        watch.watching = Some(Watch { vmptr: v.vmcs, zero_exit_at: exit.at, vmenter_at: ctx.at });
    }
    ctx.checked(RULE);
    // After VMWRITE exits (fields not traced) only a change L1 would not make counts: GUEST_CR3
    // becoming the CR3 of the other L2 that last ran on hardware.
    let vmwrote = st.counters.vmwrite != rec.vmwrites_at_exit;
    let mut diffs = Vec::new();
    if rip.value != v.nested_rip && !vmwrote {
        diffs.push(format!("GUEST_RIP {} -> {}", hex(rip.value), hex(v.nested_rip)));
    }
    if let (Some(old), Some(new)) = (rec.guest_cr3, v.guest_cr3())
        && old.value != new
    {
        let other_subject = st.last_hw_l2.is_some_and(|(p, cr3)| {
            p.is_some_and(|p| p != v.vmcs) && cr3.is_some_and(|c| c.value == new)
        });
        if !vmwrote || other_subject {
            diffs.push(format!(
                "GUEST_CR3 {} -> {}{}",
                hex(old.value),
                hex(new),
                if other_subject { " (the CR3 of the L2 that last ran on hardware)" } else { "" }
            ));
        }
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

/// The first nested exit of a watched re-entry (see the module documentation).
#[inline]
pub(crate) fn on_inject(ctx: &mut Ctx<'_>, watch: &mut State, info: &ExitInfo) {
    let Some(w) = watch.watching.take() else { return };
    if ctx.vcpu.mode != Mode::L2Run || ctx.vcpu.current_vmptr != Some(w.vmptr) {
        return;
    }
    let exception = info.reason().is_vmx(VmxBasicReason::EXCEPTION_NMI)
        && info.intr_info().is_some_and(|i| i.valid() && i.kind() == IntrType::HardwareException);
    if !exception {
        return;
    }
    let mut evidence = vec![w.zero_exit_at, w.vmenter_at];
    evidence.extend(ctx.vcpu.last_exit.map(|x| x.at));
    let (vmptr, intr) = (w.vmptr, info.intr_info().map_or(0, |i| i.0));
    ctx.report(RULE, Severity::Warning, &evidence, || {
        format!(
            "vmcs12 {} (nested EPT, GUEST_CR3 not traced) exited before L2 ran a single instruction, and its next run faults into L1 at once (intr_info {}): consistent with L2 running on a stale vmcs02.GUEST_CR3 (bug a, fixed by 04f11ef45810; consequence only)",
            hex(vmptr),
            hex(u64::from(intr))
        )
    });
}

/// A silent exit (SMI) ends the watched run.
pub(crate) fn on_silent_exit(watch: &mut State) {
    watch.watching = None;
}
