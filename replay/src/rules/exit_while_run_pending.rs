//! **exit_while_run_pending** — between a nested VM-entry that injects an event
//! (VMLAUNCH/VMRESUME/VMRUN with a valid `event_inj`) and the first `kvm_entry` that runs L2,
//! KVM makes no nested VM-exit to L1 other than a failed entry: the injected event would be
//! discarded with it.
//!
//! **KVM behaviour.** A nested VM-entry sets `nested_run_pending`; it clears after the first
//! hardware entry into L2. While it is set, `vmx_check_nested_events`/`svm_check_nested_events`
//! refuse event-driven nested exits (`-EBUSY`), because the event L1 asked to inject on entry
//! lives only in the entry that has not happened yet (nVMX's `nested_vmx_vmexit` even WARNs if
//! the flag is still set). nVMX carries the flag across migration in the nested state
//! (`KVM_STATE_NESTED_RUN_PENDING`); nSVM did not restore it, so a vCPU saved between VMRUN and
//! the entry came back on the destination without it, took the next interrupt as a nested
//! VM-exit before L2 ever ran, and L2 lost the event L1 had injected. Fixed by 81f76adad560
//! "KVM: nSVM: correctly restore nested_run_pending on migration" (Maxim Levitsky, Jan 2021).
//! His first patches for the symptom ("fix for disappearing L1->L2 event injection on L1
//! migration", for nSVM and as an nVMX RFC, Jan 2021) were not merged: restoring the flag cured
//! nSVM, and nVMX already restored it. The nVMX migration fix of the same month that did land,
//! d51e1d3f6b42 "KVM: nVMX: Sync unsync'd vmcs02 state to vmcs12 on migration", cures a
//! different loss (vmcs12 fields not synced before `KVM_GET_NESTED_STATE`).
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit VMLAUNCH/VMRESUME/VMRUN … kvm_nested_vmenter/kvm_nested_vmrun (event_inj valid)
//! … kvm_nested_intr_vmexit or kvm_nested_vmexit_inject (not a failed entry)   → error
//! ```
//! A `kvm_entry` in between ends it (the run is no longer pending). The HLT path (§2.5) leaves
//! L2 without running it but needs no valid `event_inj`; a failed entry (`FAILED_VMENTRY`, nSVM's
//! `SVM_EXIT_ERR`) is KVM's answer to a bad vmcs12/vmcb12, not an exit.
//!
//! **Across two captures of an excerpt** (a report pasting the trace before and after a
//! migration): the model starts afresh at the second capture, but a vCPU that left for
//! userspace (`kvm_userspace_exit`) with such a run pending is remembered. If the second
//! capture's first nested event of that vCPU is `kvm_nested_intr_vmexit` at RIP 0xfff0 — the
//! reset value of a vmcb L2's state was never loaded into, the mark of a vCPU restored in guest
//! mode that has not entered L2 since — the same loss is reported, as a warning: what ran
//! between the captures is not in the trace.

use vmxray_events::codes::{ExitCode, IntrInfo};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{EntryCause, Mode, VcpuState};

const RULE: RuleId = RuleId::ExitWhileRunPending;

/// The RIP a vCPU has at RESET, and the vmcb of a vCPU that never ran has.
const RESET_RIP: u64 = 0xfff0;

/// What the rule remembers: the pending run it reported on, and a run carried over the start
/// of another capture.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    /// The `kvm_nested_vmenter` already reported (the SVM exit shows twice: intr, inject).
    reported: Option<EventIndex>,
    /// A run the previous capture left pending.
    carried: Option<Pending>,
}

/// A nested VM-entry whose run is pending.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    /// Its `kvm_nested_vmenter`.
    at: EventIndex,
    /// The instruction that made it.
    insn: &'static str,
    /// L2's RIP from vmcs12/vmcb12.
    nested_rip: u64,
    /// The event L1 injects with it.
    event_inj: IntrInfo,
}

/// The pending run of `vcpu`, if it is one this rule checks: entered by
/// VMLAUNCH/VMRESUME/VMRUN with a valid event, and no `kvm_entry` since.
fn pending(vcpu: &VcpuState) -> Option<Pending> {
    let Mode::L2Pending { since } = vcpu.mode else { return None };
    let rec = vcpu.current_record()?;
    if rec.entered_at != Some(since) || !rec.event_inj.valid() {
        return None;
    }
    let insn = match rec.entered_by? {
        EntryCause::Vmresume if rec.svm => "VMRUN",
        EntryCause::Vmresume => "VMRESUME",
        EntryCause::Vmlaunch => "VMLAUNCH",
        // RSM and restores set nested_run_pending from state the trace does not show.
        EntryCause::Rsm
        | EntryCause::Restore
        | EntryCause::Unexplained
        | EntryCause::Unattributed
        | EntryCause::Inferred => return None,
    };
    Some(Pending { at: since, insn, nested_rip: rec.nested_rip?.value, event_inj: rec.event_inj })
}

/// `event_inj 0x80000036 (valid, external interrupt, vector 0x36)`.
fn describe(event: IntrInfo) -> String {
    format!(
        "event_inj {:#010x} (valid, {}, vector {:#x}{})",
        event.0,
        event.kind(),
        event.vector(),
        if event.error_code_valid() { ", with an error code" } else { "" }
    )
}

/// At a capture boundary of an excerpt: what the rule keeps of `vcpu` for the next capture.
/// Only a run still pending when the vCPU left for userspace (where its state can be saved).
pub(crate) fn carry(vcpu: &VcpuState) -> State {
    let carried = pending(vcpu).filter(|_| vcpu.in_exit_handling == Some(false));
    State { reported: None, carried }
}

/// `kvm_nested_intr_vmexit` (nSVM): an interrupt makes L2 exit to L1.
pub(crate) fn on_intr_vmexit(ctx: &mut Ctx<'_>, st: &mut State, rip: u64) {
    if let Some(p) = pending(ctx.vcpu) {
        st.carried = None;
        if st.reported == Some(p.at) {
            return;
        }
        st.reported = Some(p.at);
        ctx.checked(RULE);
        // In an excerpt the kvm_entry may be among the lines left out, unless the exit's RIP
        // shows that L2's state was never loaded.
        let proven = rip == RESET_RIP && p.nested_rip != RESET_RIP;
        report_within(ctx, p, "kvm_nested_intr_vmexit", Some(rip), proven);
        return;
    }
    let Some(c) = st.carried.take() else { return };
    ctx.checked(RULE);
    if rip != RESET_RIP || c.nested_rip == RESET_RIP {
        return;
    }
    ctx.report(RULE, Severity::Warning, &[c.at], || {
        format!(
            "nested VM-exit to L1 (kvm_nested_intr_vmexit) at RIP {} before any entry into L2, in the capture after the one whose {} at {} left for userspace with the run pending and {}: {} is the reset RIP of a vmcb L2's state was never loaded into, the mark of a vCPU restored in guest mode (KVM_SET_NESTED_STATE) that exits to L1 before re-entering L2. If nothing ran between the captures, this exit discards the event L1 injected: nested_run_pending was not restored with the nested state (fixed for nSVM by 81f76adad560)",
            hex(rip),
            c.insn,
            c.at,
            describe(c.event_inj),
            hex(RESET_RIP),
        )
    });
}

/// `kvm_nested_vmexit_inject`: L1 now sees a VM-exit.
pub(crate) fn on_inject(ctx: &mut Ctx<'_>, st: &mut State, reason: ExitCode) {
    st.carried = None;
    let Some(p) = pending(ctx.vcpu) else { return };
    if st.reported == Some(p.at) {
        return;
    }
    st.reported = Some(p.at);
    ctx.checked(RULE);
    let failed_entry = match reason {
        ExitCode::Vmx(r) => r.failed_vmentry(),
        // SVM_EXIT_ERR (-1, 32 or 64 bits wide).
        ExitCode::Svm(c) => c.0 & 0xffff_ffff == 0xffff_ffff,
        ExitCode::Raw(_) => false,
    };
    if !failed_entry {
        let what = format!("kvm_nested_vmexit_inject {reason}");
        report_within(ctx, p, &what, None, false);
    }
}

fn report_within(ctx: &mut Ctx<'_>, p: Pending, what: &str, rip: Option<u64>, proven: bool) {
    let (severity, cut) = if ctx.config.excerpt && !proven {
        (Severity::Info, " (excerpt: the kvm_entry into L2 may be among the lines it leaves out)")
    } else {
        (Severity::Error, "")
    };
    let at_rip = rip.map(|r| format!(" at RIP {}", hex(r))).unwrap_or_default();
    ctx.report(RULE, severity, &[p.at], || {
        format!(
            "nested VM-exit to L1 ({what}){at_rip} while the {} at {} was still pending, with no kvm_entry into L2 since: it discards the event L1 injected, {}. KVM must refuse event-driven nested exits until L2 has run once (nested_run_pending; nSVM lost the flag across migration until 81f76adad560){cut}",
            p.insn,
            p.at,
            describe(p.event_inj),
        )
    });
}

/// `kvm_entry`: a pending run that injects an event reached L2 with no exit before it (one
/// decided instance), or the vCPU runs anyway.
pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    st.carried = None;
    if pending(ctx.vcpu).is_some() {
        ctx.checked(RULE);
    }
}

/// A `kvm_exit` or nested VM-entry: the vCPU ran, or is entering anew.
pub(crate) fn disarm(st: &mut State) {
    st.carried = None;
}

#[cfg(test)]
mod tests {
    use vmxray_events::codes::{ExitCode, IntrInfo, Isa, SvmExitCode};
    use vmxray_events::test_util::*;
    use vmxray_events::{EventKind, ExitFields, ExitInfo, NestedVmenter, SegmentReason};

    use crate::rules::emulation_ud_in_l2::tests::checks;
    use crate::{Anomaly, Model, ModelConfig, RuleId, Severity};

    const A: u64 = 0x1000_0000;
    const L2_RIP: u64 = 0xa000;
    /// An external interrupt, vector 0x36, valid: the nSVM report's event_inj.
    const INJ: u32 = 0x8000_0036;

    fn run_with(t: &EventBuilder, excerpt: bool) -> (Vec<Anomaly>, u64) {
        let mut m = Model::new(ModelConfig { excerpt, ..ModelConfig::default() });
        let found = m
            .run(&t.events)
            .into_iter()
            .filter(|a| a.rule == RuleId::ExitWhileRunPending)
            .collect();
        (found, checks(&m, RuleId::ExitWhileRunPending))
    }

    fn run(t: &EventBuilder) -> Vec<Anomaly> {
        run_with(t, false).0
    }

    fn svm_exit(t: &mut EventBuilder, code: u64, rip: Option<u64>, inject: bool) -> u64 {
        let info = ExitInfo::from(ExitFields {
            reason: ExitCode::Svm(SvmExitCode(code)),
            isa: Some(Isa::Svm),
            guest_rip: rip,
            info1: Some(0),
            info2: Some(0),
            intr_info: Some(IntrInfo(0)),
            error_code: Some(0),
            vcpu_id: if inject { None } else { Some(t.vcpu) },
            requests: None,
        });
        t.push(if inject {
            EventKind::KvmNestedVmexitInject(info)
        } else {
            EventKind::KvmExit(info)
        })
    }

    /// L1 executes VMRUN at 0x100 injecting `inj`; returns the `kvm_nested_vmrun`.
    fn vmrun(t: &mut EventBuilder, inj: u32) -> u64 {
        svm_exit(t, SvmExitCode::VMRUN.0, Some(0x100), false);
        t.push(EventKind::KvmNestedVmenter(NestedVmenter {
            rip: 0x100,
            vmcs: A,
            nested_rip: L2_RIP,
            int_ctl: 0x0100_0001,
            event_inj: IntrInfo(inj),
            tdp_enabled: Some(true),
            guest_pgd: None,
            isa: Some(Isa::Svm),
        }))
    }

    /// An interrupt makes L2 exit to L1 (`kvm_nested_intr_vmexit` at `rip`, then the inject).
    fn intr_exit(t: &mut EventBuilder, rip: u64) -> u64 {
        let at = t.push(EventKind::KvmNestedIntrVmexit { rip });
        svm_exit(t, SvmExitCode::INTR.0, None, true);
        at
    }

    #[test]
    fn an_interrupt_exit_before_l2_ran_discards_the_injected_event() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        let enter = vmrun(&mut t, INJ);
        let exit = intr_exit(&mut t, L2_RIP);
        t.entry(0x103);
        let found = run(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        let a = &found[0];
        assert_eq!((a.at.0, a.severity), (exit, Severity::Error));
        assert!(a.evidence.iter().any(|e| e.0 == enter));
        assert!(a.message.contains("VMRUN"), "{a}");
        assert!(
            a.message.contains("event_inj 0x80000036 (valid, external interrupt, vector 0x36)"),
            "{a}"
        );
        assert!(a.message.contains("81f76adad560"), "{a}");
    }

    #[test]
    fn vmx_inject_before_the_first_entry_is_reported_once() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        t.exit(VMLAUNCH, 0x100);
        t.vmenter_inj(A, L2_RIP, true, EPTP, 0x8000_0b0e);
        let at = t.inject(EXTERNAL_INTERRUPT);
        t.entry(0x200);
        let found = run(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].at.0, at);
        assert!(found[0].message.contains("VMLAUNCH"), "{}", found[0]);
        assert!(found[0].message.contains("hardware exception, vector 0xe, with an error code"));
    }

    #[test]
    fn silent_when_l2_entered_first() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        vmrun(&mut t, INJ);
        t.entry(L2_RIP);
        svm_exit(&mut t, SvmExitCode::INTR.0, Some(L2_RIP), false);
        intr_exit(&mut t, L2_RIP);
        t.entry(0x103);
        let (found, checked) = run_with(&t, false);
        assert!(found.is_empty());
        // The entry that delivered the event is the decided instance.
        assert_eq!(checked, 1);
    }

    #[test]
    fn silent_without_a_valid_event_or_on_a_failed_entry() {
        // The HLT path: entry with no event, the timer fires before L2 runs.
        let mut t = EventBuilder::new();
        t.establish_l1();
        t.exit(VMRESUME, 0x100);
        t.vmenter(A, L2_RIP, true, EPTP);
        t.inject(PREEMPTION_TIMER);
        t.entry(0x200);
        let (found, checked) = run_with(&t, false);
        assert!(found.is_empty());
        assert_eq!(checked, 0);
        // A vmcs12 whose guest state fails: FAILED_VMENTRY is an answer, not an exit.
        let mut t = EventBuilder::new();
        t.establish_l1();
        t.exit(VMLAUNCH, 0x100);
        t.vmenter_inj(A, L2_RIP, true, EPTP, INJ);
        t.inject(FAILED_INVALID_STATE);
        t.entry(0x200);
        let (found, checked) = run_with(&t, false);
        assert!(found.is_empty());
        assert_eq!(checked, 1);
        // nSVM's VMRUN that enter_svm_guest_mode refused: SVM_EXIT_ERR.
        let mut t = EventBuilder::new();
        t.establish_l1();
        vmrun(&mut t, INJ);
        svm_exit(&mut t, 0xffff_ffff, None, true);
        assert!(run(&t).is_empty());
    }

    #[test]
    fn in_an_excerpt_the_missing_entry_may_be_a_cut_unless_the_rip_is_the_reset_one() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        vmrun(&mut t, INJ);
        intr_exit(&mut t, L2_RIP);
        let (found, _) = run_with(&t, true);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::Info);
        assert!(found[0].message.contains("may be among the lines it leaves out"));
        let mut t = EventBuilder::new();
        t.establish_l1();
        vmrun(&mut t, INJ);
        intr_exit(&mut t, 0xfff0);
        let (found, _) = run_with(&t, true);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::Error);
    }

    /// The nSVM report's shape: VMRUN with an event, the vCPU leaves for userspace, another
    /// capture starts (the migration), an interrupt exit at `rip` before any entry.
    fn migration(rip: u64, left_for_userspace: bool, entry_after: bool) -> EventBuilder {
        let mut t = EventBuilder::new();
        t.establish_l1();
        vmrun(&mut t, INJ);
        if left_for_userspace {
            t.userspace_exit(10);
        }
        t.push(EventKind::Segment { index: 1, reason: SegmentReason::Separator });
        t.other("kvm_apic_accept_irq");
        if entry_after {
            t.entry(L2_RIP);
        }
        intr_exit(&mut t, rip);
        t
    }

    #[test]
    fn across_captures_a_reset_rip_exit_after_a_pending_vmrun_is_a_warning() {
        let t = migration(0xfff0, true, false);
        let found = run(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(found[0].message.contains("in the capture after the one whose VMRUN"));
        // Near misses: the exit is at L2's own RIP, the vCPU never left for userspace, or it
        // entered L2 in the new capture first.
        assert!(run(&migration(L2_RIP, true, false)).is_empty());
        assert!(run(&migration(0xfff0, false, false)).is_empty());
        assert!(run(&migration(0xfff0, true, true)).is_empty());
    }
}
