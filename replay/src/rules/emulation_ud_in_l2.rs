//! **emulation_ud_in_l2** — when L0 emulates an instruction of L2 and the emulator fails, KVM
//! injects #UD into L2; for a plain data move (a `mov` or a string instruction, what MMIO
//! accesses are made of) the failure itself is the anomaly.
//!
//! **KVM behaviour.** `handle_emulation_failure` (x86.c) queues #UD; only outside guest mode, at
//! CPL 0, does it also exit to userspace with `KVM_EXIT_INTERNAL_ERROR`. In guest mode the #UD
//! goes to L2: that is KVM's designed answer to an instruction it cannot emulate for L2, so a
//! failure on an unusual instruction is reported for information only. A `mov` or a `movs` to
//! device memory is different: the emulator implements them, no L1 control intercepts them, and
//! an MMIO exit hands them to the emulator all the time. In Linux 5.6-rc4, 07721feee46b
//! ("KVM: nVMX: Don't emulate instructions in guest mode") made the emulator refuse in guest mode
//! any instruction whose intercept check did not clear it, and since c44b4c6ab80e ("KVM:
//! emulate: clean up initializations in init_decode_cache") the emulator's context kept the
//! previous instruction's intercept for instructions without slow-path flags: Hyper-V's `rep
//! movs` to MMIO inherited one, failed, and L2 took #UD. Fixed by 342993f96ab2 "KVM: x86: clear
//! stale x86_emulate_ctxt->intercept value" (Vitaly Kuznetsov, March 2020).
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit … kvm_nested_vmexit (L2 exited; L0 handles it) … kvm_emulate_insn … FAIL
//! … kvm_inj_exception #UD                                   → anomaly (warning for a data move)
//! ```
//! A `kvm_entry`, `kvm_exit`, nested VM-entry or VM-exit, or `kvm_userspace_exit` between the
//! failure and the #UD ends the sequence (the #UD would not be the failure's, or not L2's).

use vmxray_events::InsnBytes;
use vmxray_events::codes::ExceptionVector;
use vmxray_events::insn::{is_data_move, mnemonic};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::Level;

const RULE: RuleId = RuleId::EmulationUdInL2;

/// A failed emulation in L2 awaiting its outcome.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    failed: Option<Failed>,
}

#[derive(Clone, Copy, Debug)]
struct Failed {
    /// The `kvm_emulate_insn … FAIL`.
    at: EventIndex,
    /// The exit whose handling emulated it, when traced.
    exit: Option<EventIndex>,
    rip: u64,
    insn: InsnBytes,
}

/// `kvm_emulate_insn`: a failure while KVM handles an exit of L2 arms the rule.
pub(crate) fn on_emulate(
    ctx: &mut Ctx<'_>,
    st: &mut State,
    rip: u64,
    insn: &InsnBytes,
    failed: bool,
) {
    st.failed = None;
    // In L2 and handling its exit (an excerpt may start at the kvm_nested_vmexit, which KVM
    // traces only while handling one): not after an entry or a return from userspace.
    if ctx.vcpu.level() != Some(Level::L2) || ctx.vcpu.in_exit_handling == Some(false) {
        return;
    }
    // KVM traces every emulation when it starts and a failed one again with FAIL: counting
    // the starts counts each data move L0 emulated for L2 once.
    if !failed {
        if is_data_move(insn.as_slice()) {
            ctx.checked(RULE);
        }
        return;
    }
    let exit = ctx.vcpu.last_exit.map(|e| e.at);
    st.failed = Some(Failed { at: ctx.at, exit, rip, insn: *insn });
}

/// `kvm_inj_exception`: #UD right after the failure is `handle_emulation_failure`'s.
pub(crate) fn on_inj_exception(ctx: &mut Ctx<'_>, st: &mut State, vector: ExceptionVector) {
    let Some(f) = st.failed.take() else { return };
    if vector != ExceptionVector::UD {
        return;
    }
    let bytes = f.insn.as_slice();
    let hex_bytes = bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    let name = mnemonic(bytes).unwrap_or_else(|| "an instruction".to_owned());
    let after = match ctx.vcpu.last_exit {
        Some(e) if Some(e.at) == f.exit => format!(" while handling L2's {} exit", e.reason),
        Some(_) | None => String::new(),
    };
    let mut evidence = vec![f.at];
    evidence.extend(f.exit);
    let data_move = is_data_move(bytes);
    let severity = if data_move { Severity::Warning } else { Severity::Info };
    ctx.report(RULE, severity, &evidence, || {
        let what = format!(
            "KVM's emulator failed `{name}` ({hex_bytes}) at L2 rip {}{after} and injected #UD into L2 (in guest mode an emulation failure becomes a #UD in L2, not an exit to userspace)",
            hex(f.rip)
        );
        if data_move {
            format!(
                "{what}: a plain data move, which the emulator implements and L1 cannot intercept, should not fail — the signature of the Linux 5.6-rc4 regression in which a stale emulator intercept made KVM refuse L2's MMIO copy (07721feee46b with c44b4c6ab80e; fixed by 342993f96ab2)"
            )
        } else {
            format!("{what}: KVM's designed answer when it cannot emulate an instruction for L2")
        }
    });
}

/// Anything that ends the handling of the exit, or changes the level, before the #UD.
pub(crate) fn disarm(st: &mut State) {
    st.failed = None;
}

#[cfg(test)]
pub(crate) mod tests {
    use vmxray_events::test_util::*;

    use crate::model::RuleStatus;
    use crate::{Anomaly, Model, ModelConfig, RuleId, Severity};

    const REP_MOVS: &[u8] = &[0xf3, 0xa5];

    /// How many instances the rule decided.
    pub(crate) fn checks(m: &Model, rule: RuleId) -> u64 {
        m.summary().rules.iter().find(|r| r.rule == rule).map_or(0, |r| match r.status {
            RuleStatus::Checked { checks, .. } => checks,
            RuleStatus::NotCheckable { .. } => 0,
        })
    }

    fn run(t: &EventBuilder) -> Vec<Anomaly> {
        Model::new(ModelConfig::default())
            .run(&t.events)
            .into_iter()
            .filter(|a| a.rule == RuleId::EmulationUdInL2)
            .collect()
    }

    /// L2 at `rip` takes an EPT violation on MMIO that L0 emulates; `failed` says whether the
    /// emulator fails. Returns the failure's index (or the start's).
    fn mmio_in_l2(t: &mut EventBuilder, insn: &[u8], failed: bool) -> u64 {
        let rip = 0xffff_f802_987d_6169;
        t.establish_l1();
        t.enter_l2(VMRESUME, 0x100, 0x1000_0000, rip, true, EPTP);
        t.exit_full(EPT_VIOLATION, rip, 0x181, 0);
        t.nested_vmexit_full(EPT_VIOLATION, rip, 0x181, 0);
        t.page_fault(0xfebd_0000, 0x181);
        let start = t.emulate(rip, insn, false);
        if failed { t.emulate(rip, insn, true) } else { start }
    }

    #[test]
    fn a_failed_mmio_copy_in_l2_then_ud_is_a_warning() {
        let mut t = EventBuilder::new();
        let fail = mmio_in_l2(&mut t, REP_MOVS, true);
        let ud = t.inj_exception(6);
        t.entry(0xffff_f802_987d_6169);
        let found = run(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        let a = &found[0];
        assert_eq!((a.at.0, a.severity), (ud, Severity::Warning));
        assert!(a.evidence.iter().any(|e| e.0 == fail));
        assert!(a.message.contains("`rep movs` (f3 a5)"), "{a}");
        assert!(a.message.contains("EPT_VIOLATION"), "{a}");
        assert!(a.message.contains("342993f96ab2"), "{a}");
    }

    #[test]
    fn an_instruction_the_emulator_lacks_is_reported_for_information() {
        let mut t = EventBuilder::new();
        // `ud2`-like garbage the emulator cannot decode: #UD into L2 is KVM's design.
        mmio_in_l2(&mut t, &[0x0f, 0xff], true);
        t.inj_exception(6);
        let found = run(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].severity, Severity::Info);
        assert!(found[0].message.contains("designed answer"), "{}", found[0]);
    }

    #[test]
    fn silent_when_the_emulation_succeeds_and_counts_it() {
        let mut t = EventBuilder::new();
        mmio_in_l2(&mut t, REP_MOVS, false);
        t.entry(0xffff_f802_987d_616b);
        let mut m = Model::new(ModelConfig::default());
        assert!(m.run(&t.events).is_empty());
        assert_eq!(checks(&m, RuleId::EmulationUdInL2), 1);
    }

    #[test]
    fn silent_when_the_failure_is_in_l1() {
        // L1 at CPL 3 gets the same #UD (handle_emulation_failure): not an L2 matter.
        let mut t = EventBuilder::new();
        t.establish_l1();
        t.exit_full(EPT_VIOLATION, 0x40_1000, 0x181, 0);
        t.page_fault(0xfebd_0000, 0x181);
        t.emulate(0x40_1000, REP_MOVS, false);
        t.emulate(0x40_1000, REP_MOVS, true);
        t.inj_exception(6);
        assert!(run(&t).is_empty());
    }

    #[test]
    fn silent_when_something_else_comes_between_the_failure_and_the_ud() {
        for between in 0..3 {
            let mut t = EventBuilder::new();
            mmio_in_l2(&mut t, REP_MOVS, true);
            match between {
                0 => drop(t.entry(0xffff_f802_987d_6169)),
                1 => drop(t.userspace_exit(17)),
                _ => drop(t.inject(EPT_VIOLATION)),
            }
            t.inj_exception(6);
            assert!(run(&t).is_empty(), "case {between}");
        }
        // Another exception than #UD is not handle_emulation_failure's.
        let mut t = EventBuilder::new();
        mmio_in_l2(&mut t, REP_MOVS, true);
        t.inj_exception(14);
        assert!(run(&t).is_empty());
    }
}
