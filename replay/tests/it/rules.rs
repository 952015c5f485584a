//! One test per rule: the buggy sequence (from the reference's §3 signatures and §5 invariants)
//! yields the anomaly at the right event with the right evidence; the fixed sequence yields none.

use crate::common::*;
use vmxray_replay::{Model, ModelConfig, RuleId, Severity};

const A: u64 = 0x1000_0000;
const B: u64 = 0x2000_0000;
const CA: u64 = 0x10ff_9000;
const CB: u64 = 0x10ff_a000;

/// Muen (§3a): A runs with CA; B is entered with HLT activity and exits on its preemption timer
/// without running; at B's next entry its GUEST_CR3 is `b_cr3_next`.
fn muen(b_cr3_next: u64) -> (EventBuilder, u64, u64, u64) {
    let mut t = EventBuilder::new();
    let a_enter = t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, false, CA);
    t.reflect(PREEMPTION_TIMER, 0xa010, 0x200);
    t.l1_exit(VMPTRLD, 0x210);
    t.exit(VMLAUNCH, 0x220);
    let b_enter = t.vmenter(B, 0xb000, false, CB);
    // HLT activity: no kvm_entry, L1's preemption timer fires.
    let b_exit = t.inject(PREEMPTION_TIMER);
    t.entry(0x200);
    t.exit(VMRESUME, 0x220);
    t.vmenter(B, 0xb000, false, b_cr3_next);
    t.entry(0xb000);
    (t, a_enter, b_enter, b_exit)
}

#[test]
fn changed_subject_cr3_muen_signature_is_critical() {
    let (t, a_enter, b_enter, b_exit) = muen(CA);
    let at = t.next() - 2;
    let a = assert_one(&t.events, RuleId::ChangedSubjectCr3, at, &[b_enter, b_exit, a_enter]);
    assert_eq!(a.severity, Severity::Critical);
    assert!(a.message.contains("0x10ff9000"), "{}", a.message);
    // The same divergence breaks invariant 6 too.
    assert_one(&t.events, RuleId::HltCancelledExitState, at, &[b_enter, b_exit]);
}

#[test]
fn changed_subject_cr3_fixed_kernel_is_clean() {
    let (t, ..) = muen(CB);
    assert_clean(&t.events);
}

#[test]
fn changed_subject_cr3_unrelated_value_is_a_warning_and_vmwrite_excuses_it() {
    let (t, ..) = muen(0x4242_4000);
    let a = assert_one(&t.events, RuleId::ChangedSubjectCr3, t.next() - 2, &[]);
    assert_eq!(a.severity, Severity::Warning);

    // The same with an L1 VMWRITE after B's exit: L1 may have rewritten GUEST_CR3 (the
    // written field is not traced), so an unrelated value is excused...
    let with_vmwrite = |b_cr3_next: u64| {
        let mut t = EventBuilder::new();
        t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, false, CA);
        t.reflect(PREEMPTION_TIMER, 0xa010, 0x200);
        t.l1_exit(VMPTRLD, 0x210);
        t.exit(VMLAUNCH, 0x220);
        t.vmenter(B, 0xb000, false, CB);
        t.inject(PREEMPTION_TIMER);
        t.entry(0x200);
        t.l1_exit(VMWRITE, 0x230);
        t.exit(VMRESUME, 0x240);
        t.vmenter(B, 0xb000, false, b_cr3_next);
        t.entry(0xb000);
        t
    };
    assert_clean(&with_vmwrite(0x4242_4000).events);
    // ...but not A's CR3: the real bug-(a) recordings (samples/real/vmx/bugs/a-*) have an L1
    // that VMWRITEs HOST_RSP (not shadowed, so it exits) before every VMRESUME.
    let t = with_vmwrite(CA);
    let a = assert_one(&t.events, RuleId::ChangedSubjectCr3, t.next() - 2, &[]);
    assert_eq!(a.severity, Severity::Error);
    assert!(a.message.contains("1 VMWRITE exit(s) of unknown fields"), "{}", a.message);
    assert_one(&t.events, RuleId::HltCancelledExitState, t.next() - 2, &[]);
}

#[test]
fn changed_subject_cr3_l2_that_ran_under_ept_is_not_decidable() {
    // B ran on hardware under L0 EPT: L2 changes CR3 without exiting, nothing to decide.
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, B, 0xb000, false, CB);
    t.reflect(PREEMPTION_TIMER, 0xb010, 0x200);
    t.enter_l2(VMRESUME, 0x220, B, 0xb010, false, 0x5555_0000);
    assert_clean(&t.events);
}

#[test]
fn hlt_cancelled_exit_state_rip_moved() {
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, B, 0xb000, true, EPTP);
    t.reflect(HLT, 0xb010, 0x200);
    t.exit(VMRESUME, 0x220);
    let enter = t.vmenter(B, 0xb011, true, EPTP);
    let exit = t.inject(EXTERNAL_INTERRUPT);
    t.entry(0x200);
    t.exit(VMRESUME, 0x220);
    let at = t.vmenter(B, 0xb013, true, EPTP);
    t.entry(0xb013);
    assert_one(&t.events, RuleId::HltCancelledExitState, at, &[enter, exit]);

    let mut fixed = EventBuilder::new();
    fixed.enter_l2(VMLAUNCH, 0x100, B, 0xb000, true, EPTP);
    fixed.reflect(HLT, 0xb010, 0x200);
    fixed.exit(VMRESUME, 0x220);
    fixed.vmenter(B, 0xb011, true, EPTP);
    fixed.inject(EXTERNAL_INTERRUPT);
    fixed.entry(0x200);
    fixed.enter_l2(VMRESUME, 0x220, B, 0xb011, true, EPTP);
    assert_clean(&fixed.events);
}

/// §3(b): enable_ept=0, L1 CR3 C1, late VM-Fail, then L1's root.
fn late_vmfail(root_gfn: u64, resume_rip: u64, inject: bool) -> (EventBuilder, u64, u64) {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(CR_ACCESS, 0x300);
    let cr3 = t.cr(true, 3, 0x5000);
    t.get_page(5, ROLE_L1, true);
    t.entry(0x303);
    t.exit(VMLAUNCH, 0x310);
    t.vmenter(A, 0xa000, false, 0x9000);
    t.get_page(9, ROLE_L2, true);
    t.entry(0xa000);
    let failed =
        t.vmenter_failed("hardware VM-instruction error: VMENTRY_INVALID_CONTROL_FIELD", 7);
    if inject {
        t.inject(FAILED_INVALID_STATE);
    }
    t.get_page(root_gfn, ROLE_L1, false);
    t.entry(resume_rip);
    (t, cr3, failed)
}

#[test]
fn late_vmfail_l1_cr3_shadow_root_hpa() {
    let (t, cr3, failed) = late_vmfail(0x12_3456, 0x313, false);
    assert_one(&t.events, RuleId::LateVmfailL1Cr3, t.next() - 2, &[cr3, failed]);
    let (fixed, ..) = late_vmfail(5, 0x313, false);
    assert_clean(&fixed.events);
}

#[test]
fn late_vmfail_l1_cr3_from_a_cr3_read() {
    let (mut t, cr3, failed) = late_vmfail(5, 0x313, false);
    t.exit(CR_ACCESS, 0x320);
    let read = t.cr(false, 3, 0x7777_7000);
    t.entry(0x323);
    // The root check already consumed the window: the read is not compared again.
    assert!(of(&run(&t.events), RuleId::LateVmfailL1Cr3).is_empty());
    let mut t2 = EventBuilder::new();
    t2.events = t.events[..=usize::try_from(failed).unwrap()].to_vec();
    t2.exit(CR_ACCESS, 0x313);
    let at = t2.cr(false, 3, 0x7777_7000);
    t2.entry(0x316);
    assert_one(&t2.events, RuleId::LateVmfailL1Cr3, at, &[cr3, failed]);
    let _ = read;
}

/// What follows a late VM-Fail in the real recordings (samples/real/vmx/bugs/b-*): L1's
/// "CR3" after the unwind has no memslot.
#[derive(Clone, Copy, PartialEq)]
enum AfterLateVmfail {
    /// 6.1 with the bug: the root load fails, triple fault, no entry.
    Shutdown,
    /// 6.12 with the bug: a dummy root (no `kvm_mmu_get_page`), L1 entered, #PF, #DF, shutdown.
    RootlessEntry,
    /// Fixed KVM: L1's root, L1 runs, later shuts down for its own reasons.
    RootThenShutdown,
}

fn late_vmfail_then(after: AfterLateVmfail, roots_traced: bool) -> (EventBuilder, u64, u64) {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(CR_ACCESS, 0x300);
    let cr3 = t.cr(false, 3, 0x2000);
    if roots_traced {
        t.get_page(2, ROLE_L1, false);
    }
    t.entry(0x303);
    t.exit(VMLAUNCH, 0x310);
    t.vmenter(A, 0xa000, false, 0x9000);
    if roots_traced {
        t.get_page(9, ROLE_L2, true);
    }
    t.entry(0xa000);
    let failed =
        t.vmenter_failed("hardware VM-instruction error: VMENTRY_INVALID_CONTROL_FIELD", 7);
    if after == AfterLateVmfail::RootThenShutdown {
        t.get_page(2, ROLE_L1, false);
    }
    if after != AfterLateVmfail::Shutdown {
        t.entry(0x313);
        t.exit(EXCEPTION_NMI, 0x313);
        t.page_fault(0x313, 0x10);
        t.inj_exception(14);
        t.entry(0x313);
        t.exit(EXCEPTION_NMI, 0x313);
        t.page_fault(0x1536b0, 0);
        t.inj_exception(8);
    }
    t.userspace_exit(8);
    (t, cr3, failed)
}

#[test]
fn late_vmfail_l1_cr3_shutdown_forms() {
    use AfterLateVmfail::*;
    for roots_traced in [true, false] {
        // 6.1: shut down before L1 runs again.
        let (t, cr3, failed) = late_vmfail_then(Shutdown, roots_traced);
        assert_one(&t.events, RuleId::LateVmfailL1Cr3, t.next() - 1, &[cr3, failed]);
        // The fix: L1's root is loaded before it runs; its own triple fault later is not ours.
        let (t, ..) = late_vmfail_then(RootThenShutdown, roots_traced);
        assert!(of(&run(&t.events), RuleId::LateVmfailL1Cr3).is_empty());
    }
    // 6.12: entered without a root load, then #PF, #DF, shutdown.
    let (t, cr3, failed) = late_vmfail_then(RootlessEntry, true);
    assert_one(&t.events, RuleId::LateVmfailL1Cr3, t.next() - 1, &[cr3, failed, failed + 1]);
    // Without root loads in the trace a rootless entry proves nothing.
    let (t, ..) = late_vmfail_then(RootlessEntry, false);
    assert!(of(&run(&t.events), RuleId::LateVmfailL1Cr3).is_empty());
    // Another userspace exit (I/O) before L1 runs decides nothing.
    let (mut t, ..) = late_vmfail_then(Shutdown, true);
    t.events.pop();
    t.userspace_exit(2);
    t.get_page(2, ROLE_L1, false);
    t.entry(0x313);
    assert_clean(&t.events);
}

#[test]
fn late_vmfail_resume_wrong_rip_and_inject() {
    let (t, _, failed) = late_vmfail(5, 0x310, false);
    assert_one(&t.events, RuleId::LateVmfailResume, t.next() - 1, &[failed]);
    let (t, _, failed) = late_vmfail(5, 0x313, true);
    assert_one(&t.events, RuleId::LateVmfailResume, failed + 1, &[failed]);
}

/// §3(c): one EPTP, INVEPT in L1, then VMRESUME with or without a root reacquisition.
fn invept(reacquire: bool, trigger: u32, second_vmcs: u64) -> (EventBuilder, u64, u64) {
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(A, 0xa000, true, EPTP);
    t.get_page(7, ROLE_GUEST_MMU, true);
    t.entry(0xa000);
    t.reflect(CPUID, 0xa010, 0x200);
    let trig = t.l1_exit(trigger, 0x210);
    t.exit(if second_vmcs == A { VMRESUME } else { VMLAUNCH }, 0x220);
    let enter = t.vmenter(second_vmcs, 0xa012, true, EPTP);
    if reacquire {
        t.get_page(7, ROLE_GUEST_MMU, false);
    }
    t.entry(0xa012);
    (t, trig, enter)
}

#[test]
fn guest_mmu_root_not_reacquired_after_invept() {
    let (t, trig, enter) = invept(false, INVEPT, A);
    assert_one(&t.events, RuleId::GuestMmuRootNotReacquired, t.next() - 1, &[trig, enter]);
    let (fixed, ..) = invept(true, INVEPT, A);
    assert_clean(&fixed.events);
}

/// Two subjects with their own EPTP (as in samples/real/vmx/bugs/c-*): B runs, then A; L1
/// edits A's EPT12 and executes INVEPT while A is current; A is entered again.
fn invept_two_eptps(reacquire: bool, vmptrld_between: bool) -> (EventBuilder, u64, u64) {
    const EPTP_B: u64 = 0x9000 | 3 << 3 | 1 << 6 | 6;
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(B, 0xb000, true, EPTP_B);
    t.get_page(9, ROLE_GUEST_MMU, true);
    t.entry(0xb000);
    t.reflect(PREEMPTION_TIMER, 0xb010, 0x200);
    t.l1_exit(VMPTRLD, 0x210);
    t.exit(VMLAUNCH, 0x220);
    t.vmenter(A, 0xa000, true, EPTP);
    t.get_page(7, ROLE_GUEST_MMU, true);
    t.entry(0xa000);
    t.reflect(CPUID, 0xa010, 0x200);
    let trig = t.l1_exit(INVEPT, 0x230);
    if vmptrld_between {
        t.l1_exit(VMPTRLD, 0x240);
    }
    t.exit(VMRESUME, 0x250);
    let enter = t.vmenter(A, 0xa012, true, EPTP);
    if reacquire {
        t.get_page(7, ROLE_GUEST_MMU, false);
    }
    t.entry(0xa012);
    (t, trig, enter)
}

#[test]
fn guest_mmu_root_not_reacquired_after_invept_with_two_eptps() {
    let (t, trig, enter) = invept_two_eptps(false, false);
    let a = assert_one(&t.events, RuleId::GuestMmuRootNotReacquired, t.next() - 1, &[trig, enter]);
    assert_eq!(a.severity, Severity::Warning);
    assert!(a.message.contains("taken to be the EPTP of this vmcs12"), "{}", a.message);
    let (fixed, ..) = invept_two_eptps(true, false);
    assert_clean(&fixed.events);
    // A VMPTRLD of the same vmcs12 in between: which context the INVEPT meant is unknown.
    let (ambiguous, ..) = invept_two_eptps(false, true);
    assert_clean(&ambiguous.events);
}

#[test]
fn guest_mmu_root_not_reacquired_after_vmptrld_of_another_vmcs12() {
    let (t, trig, enter) = invept(false, VMPTRLD, B);
    assert_one(&t.events, RuleId::GuestMmuRootNotReacquired, t.next() - 1, &[trig, enter]);
    let (fixed, ..) = invept(true, VMPTRLD, B);
    assert_clean(&fixed.events);
    // VMPTRLD of the same vmcs12 releases nothing.
    let (same, ..) = invept(false, VMPTRLD, A);
    assert_clean(&same.events);
}

fn invvpid(reacquire: bool) -> (EventBuilder, u64, u64) {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(CR_ACCESS, 0x300);
    t.cr(true, 3, 0x5000);
    t.get_page(5, ROLE_L1, true);
    t.entry(0x303);
    t.exit(VMLAUNCH, 0x310);
    t.vmenter(A, 0xa000, false, 0x9000);
    t.get_page(9, ROLE_L2, true);
    t.entry(0xa000);
    t.reflect(CPUID, 0xa010, 0x200);
    let inv = t.l1_exit(INVVPID, 0x210);
    t.exit(VMRESUME, 0x220);
    let enter = t.vmenter(A, 0xa012, false, 0x9000);
    if reacquire {
        t.get_page(9, ROLE_L2, false);
    }
    t.entry(0xa012);
    (t, inv, enter)
}

#[test]
fn invvpid_root_not_reacquired() {
    let (t, inv, enter) = invvpid(false);
    assert_one(&t.events, RuleId::InvvpidRootNotReacquired, t.next() - 1, &[inv, enter]);
    let (fixed, ..) = invvpid(true);
    assert_clean(&fixed.events);
}

fn reset(root: Option<u32>) -> (EventBuilder, u64) {
    let mut t = EventBuilder::new();
    t.exit(EXTERNAL_INTERRUPT, 0x1000);
    let paging = t.get_page(0x10, ROLE_L1, true);
    t.entry(0x1000);
    t.exit(EXTERNAL_INTERRUPT, 0x1010);
    t.userspace_exit(10);
    if let Some(role) = root {
        t.get_page(0, role, true);
    }
    t.entry(0xfff0);
    (t, paging)
}

#[test]
fn reset_root_role() {
    let (t, paging) = reset(None);
    assert_one(&t.events, RuleId::ResetRootRole, t.next() - 1, &[paging]);
    let (t, paging) = reset(Some(ROLE_L1));
    assert_one(&t.events, RuleId::ResetRootRole, t.next() - 1, &[paging]);
    let (fixed, _) = reset(Some(ROLE_DIRECT));
    assert_clean(&fixed.events);
}

fn evmcs(next_rip: u64) -> (EventBuilder, u64, u64) {
    let mut t = EventBuilder::new();
    t.exit(HLT, 0x500);
    t.userspace_exit(10);
    let restore = t.vmenter(u64::MAX, 0xb000, true, EPTP);
    let exit = t.inject(EXTERNAL_INTERRUPT);
    t.entry(0x200);
    t.exit(VMRESUME, 0x220);
    t.vmenter(u64::MAX, next_rip, true, EPTP);
    t.entry(next_rip);
    (t, restore, exit)
}

#[test]
fn evmcs_restore_stale_exit() {
    let (t, restore, exit) = evmcs(0xb002);
    let a = assert_one(&t.events, RuleId::EvmcsRestoreStaleExit, t.next() - 2, &[restore, exit]);
    assert_eq!(a.severity, Severity::Warning);
    let (fixed, ..) = evmcs(0xb000);
    assert_clean(&fixed.events);
}

#[test]
fn pml_full_in_l2() {
    let mut t = EventBuilder::new();
    let enter = t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    let at = t.exit(PML_FULL, 0xa004);
    assert_one(&t.events, RuleId::PmlFullInL2, at, &[enter]);
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    let at = t.pml_full();
    assert_one(&t.events, RuleId::PmlFullInL2, at, &[]);
    // PML_FULL in L1 is L0's own dirty logging.
    let mut fixed = EventBuilder::new();
    fixed.establish_l1();
    fixed.l1_exit(PML_FULL, 0x300);
    assert_clean(&fixed.events);
}

#[test]
fn entry_without_exit() {
    let mut t = EventBuilder::new();
    t.entry(0x1000);
    t.exit(CPUID, 0x1000);
    let first = t.entry(0x1002);
    let at = t.entry(0x1000);
    assert_one(&t.events, RuleId::EntryWithoutExit, at, &[first]);
    let mut fixed = EventBuilder::new();
    fixed.entry(0x1000);
    fixed.l1_exit(CPUID, 0x1000);
    assert_clean(&fixed.events);
}

#[test]
fn in_an_excerpt_an_absence_is_info_and_names_the_cut() {
    // The same missing kvm_exit: an error in a whole trace, info in an excerpt (the poster's
    // cut is the likelier cause); a value divergence keeps its severity in both.
    let mut t = EventBuilder::new();
    t.entry(0x1000);
    t.exit(CPUID, 0x1000);
    t.entry(0x1002);
    t.entry(0x1000);
    let excerpt = ModelConfig { excerpt: true, ..ModelConfig::default() };
    let whole = of(&run(&t.events), RuleId::EntryWithoutExit);
    assert_eq!(whole[0].severity, Severity::Error);
    let cut = of(&Model::new(excerpt).run(&t.events), RuleId::EntryWithoutExit);
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].severity, Severity::Info);
    assert!(cut[0].message.contains("the kvm_exit between the two entries"), "{}", cut[0]);
    assert_eq!(RuleId::RootWrongLevel.gap_explainable(), None);
}

#[test]
fn entry_without_exit_excuses_the_late_vmfail() {
    let (t, ..) = late_vmfail(5, 0x313, false);
    assert!(of(&run(&t.events), RuleId::EntryWithoutExit).is_empty());
}

#[test]
fn nested_vmexit_outside_l2() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(CPUID, 0x300);
    let at = t.nested_vmexit_full(CPUID, 0x300, 0, 0);
    assert_one(&t.events, RuleId::NestedVmexitOutsideL2, at, &[]);
    let mut fixed = EventBuilder::new();
    fixed.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    fixed.reflect(CPUID, 0xa000, 0x200);
    assert_clean(&fixed.events);
}

#[test]
fn nested_vmexit_mismatch() {
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    let exit = t.exit_full(EPT_VIOLATION, 0xa004, 0x181, 0);
    let at = t.nested_vmexit_full(EPT_VIOLATION, 0xa004, 0x182, 0);
    let a = assert_one(&t.events, RuleId::NestedVmexitMismatch, at, &[exit]);
    assert!(a.message.contains("info1"));
}

#[test]
fn unexplained_vmenter() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    let exit = t.exit(CPUID, 0x300);
    let at = t.vmenter(A, 0xa000, true, EPTP);
    assert_one(&t.events, RuleId::UnexplainedVmenter, at, &[exit]);
    // RSM and restore explain an entry with no VMLAUNCH/VMRESUME.
    let mut fixed = EventBuilder::new();
    fixed.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    fixed.exit(EXTERNAL_INTERRUPT, 0xa000);
    fixed.nested_vmexit_full(EXTERNAL_INTERRUPT, 0xa000, 0, 0);
    fixed.smm(true);
    fixed.entry(0x8000);
    fixed.exit_full(EXCEPTION_NMI, 0x8010, 0, 0x8000_0306);
    fixed.smm(false);
    fixed.vmenter(A, 0xa000, true, EPTP);
    fixed.entry(0xa000);
    fixed.reflect(CPUID, 0xa000, 0x200);
    fixed.exit(HLT, 0x203);
    fixed.userspace_exit(10);
    fixed.vmenter(A, 0xa002, true, EPTP);
    fixed.entry(0xa002);
    assert_clean(&fixed.events);
}

#[test]
fn host_rip_mismatch() {
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.reflect(CPUID, 0xa000, 0x200);
    let learned = t.next() - 1;
    t.enter_l2(VMRESUME, 0x220, A, 0xa002, true, EPTP);
    t.exit(CPUID, 0xa002);
    t.nested_vmexit_full(CPUID, 0xa002, 0, 0);
    let inject = t.inject(CPUID);
    let at = t.entry(0x300);
    assert_one(&t.events, RuleId::HostRipMismatch, at, &[learned, inject]);

    let mut fixed = EventBuilder::new();
    fixed.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    fixed.reflect(CPUID, 0xa000, 0x200);
    fixed.l1_exit(VMWRITE, 0x210);
    fixed.enter_l2(VMRESUME, 0x220, A, 0xa002, true, EPTP);
    fixed.reflect(CPUID, 0xa002, 0x300);
    assert_clean(&fixed.events);
}

#[test]
fn l2_entry_mismatch() {
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    let enter = t.vmenter(A, 0xa000, true, EPTP);
    let at = t.entry(0xa004);
    assert_one(&t.events, RuleId::L2EntryMismatch, at, &[enter]);
    // 6.14: the injected event must be vmcs12's.
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    let enter = t.vmenter_inj(A, 0xa000, true, EPTP, 0x8000_0b0e);
    let at = t.entry_intr(0xa000, Some(0x8000_0306));
    assert_one(&t.events, RuleId::L2EntryMismatch, at, &[enter]);
    let mut fixed = EventBuilder::new();
    fixed.exit(VMLAUNCH, 0x100);
    fixed.vmenter_inj(A, 0xa000, true, EPTP, 0x8000_0b0e);
    fixed.entry_intr(0xa000, Some(0x8000_0b0e));
    assert_clean(&fixed.events);
}

fn failed_launch_then(insn: u32) -> (EventBuilder, u64) {
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(A, 0xa000, true, EPTP);
    // A guest-state check after kvm_nested_vmenter: KVM lands in L1 at HOST_RIP without
    // nested_vmx_vmexit, so no kvm_nested_vmexit_inject (real 6.1/6.12, l1-vmfail-*).
    let failed = t.vmenter_failed("!nested_guest_cr0_valid(vcpu, vmcs12->guest_cr0)", 0);
    t.entry(0x200);
    t.exit(insn, 0x220);
    t.vmenter(A, 0xa000, true, EPTP);
    t.entry(0xa000);
    (t, failed)
}

#[test]
fn launch_state() {
    let (t, failed) = failed_launch_then(VMRESUME);
    assert_one(&t.events, RuleId::LaunchState, t.next() - 2, &[failed]);
    let (fixed, _) = failed_launch_then(VMLAUNCH);
    assert_clean(&fixed.events);
    // VMLAUNCH of a launched vmcs12.
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.reflect(CPUID, 0xa000, 0x200);
    t.exit(VMLAUNCH, 0x220);
    let at = t.vmenter(A, 0xa002, true, EPTP);
    assert_one(&t.events, RuleId::LaunchState, at, &[]);
}

#[test]
fn vmptr_without_vmptrld() {
    let mut t = EventBuilder::new();
    let first = t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.reflect(CPUID, 0xa000, 0x200);
    t.exit(VMLAUNCH, 0x220);
    let at = t.vmenter(B, 0xb000, true, EPTP);
    assert_one(&t.events, RuleId::VmptrWithoutVmptrld, at, &[first]);
    let mut fixed = EventBuilder::new();
    fixed.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    fixed.reflect(CPUID, 0xa000, 0x200);
    fixed.l1_exit(VMPTRLD, 0x210);
    fixed.enter_l2(VMLAUNCH, 0x220, B, 0xb000, true, EPTP);
    assert_clean(&fixed.events);
}

#[test]
fn early_vmfail_resume() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    let launch = t.exit(VMRESUME, 0x300);
    let failed = t.vmenter_failed("CC(vmcs12->launch_state == launch)", 0);
    let at = t.entry(0x300);
    assert_one(&t.events, RuleId::EarlyVmfailResume, at, &[launch, failed]);
    let mut fixed = EventBuilder::new();
    fixed.establish_l1();
    fixed.exit(VMRESUME, 0x300);
    fixed.vmenter_failed("CC(vmcs12->launch_state == launch)", 0);
    fixed.entry(0x303);
    assert_clean(&fixed.events);
}

#[test]
fn root_gfn_not_cr3() {
    let mut t = EventBuilder::new();
    t.exit(CR_ACCESS, 0x300);
    let cr3 = t.cr(true, 3, 0x8000_0000_0000_5000);
    let at = t.get_page(6, ROLE_L1, true);
    t.entry(0x303);
    assert_one(&t.events, RuleId::RootGfnNotCr3, at, &[cr3]);
    let mut fixed = EventBuilder::new();
    fixed.exit(CR_ACCESS, 0x300);
    fixed.cr(true, 3, 0x8000_0000_0000_5001);
    fixed.get_page(5, ROLE_L1, true);
    fixed.entry(0x303);
    // A child page after a walk is not the root.
    fixed.exit(CR_ACCESS, 0x310);
    fixed.cr(true, 3, 0x6000);
    fixed.entry(0x313);
    fixed.exit_full(EXCEPTION_NMI, 0x313, 0x9000, 0x8000_0b0e);
    fixed.walk(0x9000, 0);
    fixed.get_page(0x44, ROLE_L1, true);
    fixed.entry(0x313);
    assert_clean(&fixed.events);
}

#[test]
fn root_wrong_level() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(CR_ACCESS, 0x300);
    let at = t.get_page(5, ROLE_L2, true);
    t.entry(0x303);
    assert_one(&t.events, RuleId::RootWrongLevel, at, &[]);
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(A, 0xa000, false, 0x9000);
    let at = t.get_page(9, ROLE_L1, true);
    assert_one(&t.events, RuleId::RootWrongLevel, at, &[]);
}

#[test]
fn root_wrong_smm() {
    let mut t = EventBuilder::new();
    t.exit(EXTERNAL_INTERRUPT, 0x1000);
    t.smm(true);
    let at = t.get_page(0, ROLE_DIRECT, true);
    t.entry(0x8000);
    assert_one(&t.events, RuleId::RootWrongSmm, at, &[]);
    let mut fixed = EventBuilder::new();
    fixed.exit(EXTERNAL_INTERRUPT, 0x1000);
    fixed.smm(true);
    fixed.get_page(0, ROLE_DIRECT | 1 << 24, true);
    fixed.entry(0x8000);
    fixed.exit_full(EXCEPTION_NMI, 0x8010, 0, 0x8000_0306);
    fixed.smm(false);
    fixed.get_page(0x10, ROLE_L1, true);
    fixed.entry(0x1000);
    assert_clean(&fixed.events);
    let _ = ROLE_SMM;
}

#[test]
fn guest_mmu_root_role() {
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    let enter = t.vmenter(A, 0xa000, true, EPTP);
    let at = t.get_page(7, ROLE_GUEST_MMU | 1 << 16, true);
    t.entry(0xa000);
    let a = assert_one(&t.events, RuleId::GuestMmuRootRole, at, &[enter]);
    assert!(a.message.contains("ad_disabled"));
}

#[test]
fn smm_nested_return() {
    let build = |rsm_vmcs: Option<u64>| {
        let mut t = EventBuilder::new();
        t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
        t.exit(EXTERNAL_INTERRUPT, 0xa000);
        t.nested_vmexit_full(EXTERNAL_INTERRUPT, 0xa000, 0, 0);
        let smi = t.smm(true);
        t.entry(0x8000);
        t.exit_full(EXCEPTION_NMI, 0x8010, 0, 0x8000_0306);
        let rsm = t.smm(false);
        if let Some(vmcs) = rsm_vmcs {
            t.vmenter(vmcs, 0xa000, true, EPTP);
        }
        t.entry(0xa000);
        (t, smi, rsm)
    };
    let (t, smi, rsm) = build(Some(B));
    assert_one(&t.events, RuleId::SmmNestedReturn, rsm + 1, &[smi, rsm]);
    let (t, smi, rsm) = build(None);
    assert_one(&t.events, RuleId::SmmNestedReturn, rsm + 1, &[smi, rsm]);
    let (fixed, ..) = build(Some(A));
    assert_clean(&fixed.events);
}

#[test]
fn rsm_l1_state() {
    // SMI in L2, RSM (emulated after a #UD exit) back into L2, L2's first exit reflected to L1.
    let build = |l1_rip: u64| {
        let mut t = EventBuilder::new();
        t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
        t.exit(EXTERNAL_INTERRUPT, 0xa000);
        t.nested_vmexit_full(EXTERNAL_INTERRUPT, 0xa000, 0, 0);
        t.smm(true);
        t.entry(0x8000);
        let rsm = t.exit_full(EXCEPTION_NMI, 0x8010, 0, 0x8000_0306);
        let left = t.smm(false);
        let back = t.vmenter(A, 0xa000, true, EPTP);
        t.entry(0xa000);
        t.exit(CPUID, 0xa004);
        t.nested_vmexit_full(CPUID, 0xa004, 0, 0);
        let reflected = t.inject(CPUID);
        let at = t.entry(l1_rip);
        (t, [rsm, left, back, reflected], at)
    };
    let (t, evidence, at) = build(0x8010);
    let a = assert_one(&t.events, RuleId::RsmL1State, at, &evidence);
    assert!(a.message.contains("RSM instruction"), "{a}");
    let (fixed, ..) = build(0x200);
    assert_clean(&fixed.events);
    // RSM back to L1 (no nested re-entry): nothing to check, nothing reported.
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.smm(true);
    t.entry(0x8000);
    t.exit_full(EXCEPTION_NMI, 0x8010, 0, 0x8000_0306);
    t.smm(false);
    t.entry(0x8010);
    assert!(run(&t.events).iter().all(|a| a.rule != RuleId::RsmL1State));
}

#[test]
fn l2_pf_not_handled_by_l0() {
    let build = |handled: bool| {
        let mut t = EventBuilder::new();
        t.establish_l1();
        t.exit(CR_ACCESS, 0x300);
        t.cr(true, 3, 0x5000);
        t.get_page(5, ROLE_L1, true);
        t.entry(0x303);
        t.enter_l2(VMLAUNCH, 0x310, A, 0xa000, false, 0x9000);
        let exit = t.exit_full(EXCEPTION_NMI, 0xa000, 0xdead_b000, 0x8000_0b0e);
        t.nested_vmexit_full(EXCEPTION_NMI, 0xa000, 0xdead_b000, 0x8000_0b0e);
        if handled {
            t.page_fault(0xdead_b000, 2);
        }
        let at = t.inject_full(EXCEPTION_NMI, 0xdead_b000, 0x8000_0b0e);
        t.entry(0x200);
        (t, exit, at)
    };
    let (t, exit, at) = build(false);
    assert_one(&t.events, RuleId::L2PfNotHandledByL0, at, &[exit]);
    let (fixed, ..) = build(true);
    assert_clean(&fixed.events);
}

#[test]
fn lost_events_resynchronize_instead_of_guessing() {
    let mut t = EventBuilder::new();
    t.entry(0x1000);
    t.lost();
    t.entry(0x1000);
    // Mid-L2 after the loss: a nested exit is evidence, not an anomaly.
    t.exit(CPUID, 0xa000);
    t.nested_vmexit_full(CPUID, 0xa000, 0, 0);
    t.inject(CPUID);
    t.entry(0x200);
    assert_clean(&t.events);
}

#[test]
fn capture_starting_mid_l2_is_clean() {
    let mut t = EventBuilder::new();
    t.entry(0xa000);
    t.exit_full(EPT_VIOLATION, 0xa000, 0x181, 0);
    t.nested_vmexit_full(EPT_VIOLATION, 0xa000, 0x181, 0);
    t.page_fault(0x3000, 0x181);
    t.entry(0xa000);
    t.reflect(CPUID, 0xa000, 0x200);
    t.enter_l2(VMRESUME, 0x220, A, 0xa002, true, EPTP);
    assert_clean(&t.events);
}

#[test]
fn threads_are_attributed_to_their_vcpu() {
    use vmxray_replay::{Actor, Model};
    let mut t = EventBuilder::new();
    t.pid = 7;
    t.cr(true, 3, 0x5000); // before the thread is known
    t.entry(0x1000);
    t.exit(CR_ACCESS, 0x1000);
    t.cr(true, 3, 0x6000);
    t.pid = 99; // an MMU-notifier thread
    t.get_page(0x44, ROLE_L1, false);
    let mut m = Model::default();
    m.run(&t.events);
    assert_eq!(m.vcpu_of_thread(7).map(|v| v.id), Some(0));
    assert!(m.state(Actor::vcpu(0)).is_some());
    assert!(m.state(Actor::Thread(99)).is_some());
    assert!(m.state(Actor::Thread(7)).is_none());
}

#[test]
fn silent_leave_of_guest_mode_is_learned_not_reported() {
    // L2 runs; KVM leaves guest mode without an event (reset / KVM_SET_NESTED_STATE); the next
    // L1 exit is not followed by kvm_nested_vmexit, so the model corrects its level.
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.exit_full(EPT_VIOLATION, 0xa000, 0x181, 0);
    t.nested_vmexit_full(EPT_VIOLATION, 0xa000, 0x181, 0);
    t.entry(0xa000);
    t.exit(EXTERNAL_INTERRUPT, 0xa000);
    t.nested_vmexit_full(EXTERNAL_INTERRUPT, 0xa000, 0, 0);
    t.userspace_exit(10);
    // Reset: KVM leaves guest mode without an event.
    t.entry(0xfff0);
    t.l1_exit(CPUID, 0xfff0);
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(B, 0xb000, true, EPTP);
    t.entry(0xb000);
    assert_clean(&t.events);
}

#[test]
fn early_hardware_check_failure_is_a_vmfail() {
    let build = |resume: u64| {
        let mut t = EventBuilder::new();
        let launch = t.exit(VMLAUNCH, 0x100);
        t.vmenter(A, 0xa000, true, EPTP);
        let failed = t.vmenter_failed("early hardware check VM-instruction error: ", 7);
        t.entry(resume);
        (t, launch, failed)
    };
    let (fixed, ..) = build(0x103);
    assert_clean(&fixed.events);
    let (t, launch, failed) = build(0x100);
    assert_one(&t.events, RuleId::EarlyVmfailResume, t.next() - 1, &[launch, failed]);
}

#[test]
fn smi_right_after_a_nested_exit_is_not_a_host_rip_mismatch() {
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.reflect(CPUID, 0xa000, 0x200);
    t.enter_l2(VMRESUME, 0x220, A, 0xa002, true, EPTP);
    t.exit(CPUID, 0xa002);
    t.nested_vmexit_full(CPUID, 0xa002, 0, 0);
    t.inject(CPUID);
    t.smm(true);
    t.entry(0x8000);
    assert_clean(&t.events);
}

#[test]
fn changed_subject_cr3_under_shadow_paging() {
    // enable_ept=0: KVM never writes vmcs12.GUEST_CR3 on exit, so a change is L1's doing; only a
    // reflected MOV CR3 (or task switch) explains one without a VMWRITE exit (shadow VMCS).
    let build = |reason: u32| {
        let mut t = EventBuilder::new();
        t.establish_l1();
        t.exit(CR_ACCESS, 0x300);
        t.cr(true, 3, 0x5000);
        t.get_page(5, ROLE_L1, true);
        t.entry(0x303);
        t.exit(VMLAUNCH, 0x310);
        let enter = t.vmenter(A, 0xa000, false, 0x9000);
        t.get_page(9, ROLE_L2, true);
        t.entry(0xa000);
        let exit = t.reflect(reason, 0xa000, 0x200);
        t.exit(VMRESUME, 0x220);
        t.vmenter(A, 0xa003, false, 0xb000);
        t.get_page(0xb, ROLE_L2, true);
        t.entry(0xa003);
        (t, enter, exit)
    };
    let (t, enter, exit) = build(CPUID);
    let a = assert_one(&t.events, RuleId::ChangedSubjectCr3, t.next() - 3, &[enter, exit]);
    assert_eq!(a.severity, Severity::Warning);
    let (reflected_cr3, ..) = build(CR_ACCESS);
    assert_clean(&reflected_cr3.events);
}

#[test]
fn late_vmfail_l1_cr3_from_the_start_of_a_trace() {
    // The trace starts in L1 with no nested event: the VMLAUNCH proves the CR3 was L1's.
    let mut t = EventBuilder::new();
    t.exit(CR_ACCESS, 0x300);
    let cr3 = t.cr(true, 3, 0x5000);
    t.get_page(5, ROLE_L1, true);
    t.entry(0x303);
    t.exit(VMLAUNCH, 0x310);
    t.vmenter(A, 0xa000, false, 0x9000);
    t.get_page(9, ROLE_L2, true);
    t.entry(0xa000);
    let failed =
        t.vmenter_failed("hardware VM-instruction error: VMENTRY_INVALID_CONTROL_FIELD", 7);
    let at = t.get_page(0x12_3456, ROLE_L1, false);
    t.entry(0x313);
    assert_one(&t.events, RuleId::LateVmfailL1Cr3, at, &[cr3, failed]);
}

#[test]
fn guest_mmu_root_checked_on_first_reentry_when_get_page_is_traced() {
    // No guest_mmu root seen at the first entry (cached), but kvm_mmu_get_page is traced.
    let mut t = EventBuilder::new();
    t.get_page(0x10, ROLE_DIRECT, false);
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(A, 0xa000, true, EPTP);
    t.entry(0xa000);
    t.reflect(CPUID, 0xa000, 0x200);
    let inv = t.l1_exit(INVEPT, 0x210);
    t.exit(VMRESUME, 0x220);
    let enter = t.vmenter(A, 0xa002, true, EPTP);
    let at = t.entry(0xa002);
    assert_one(&t.events, RuleId::GuestMmuRootNotReacquired, at, &[inv, enter]);
}

#[test]
fn evmcs_restore_as_the_first_event() {
    let mut t = EventBuilder::new();
    let restore = t.vmenter(u64::MAX, 0xb000, true, EPTP);
    let exit = t.inject(EXTERNAL_INTERRUPT);
    t.entry(0x200);
    t.exit(VMRESUME, 0x220);
    let at = t.vmenter(u64::MAX, 0xb002, true, EPTP);
    t.entry(0xb002);
    assert_one(&t.events, RuleId::EvmcsRestoreStaleExit, at, &[restore, exit]);
}

#[test]
fn role_change_root_reload() {
    let build = |reload: Option<u32>, new_cr0: u64| {
        let mut t = EventBuilder::new();
        t.exit(CR_ACCESS, 0x300);
        t.cr(true, 3, 0x5000);
        t.get_page(5, ROLE_L1, true);
        t.entry(0x303);
        t.exit(CR_ACCESS, 0x310);
        t.cr(false, 0, 0x8001_0033);
        t.entry(0x313);
        t.exit(CR_ACCESS, 0x320);
        let write = t.cr(true, 0, new_cr0);
        if let Some(role) = reload {
            t.get_page(if role == ROLE_DIRECT { 0 } else { 5 }, role, false);
        }
        t.entry(0x323);
        (t, write)
    };
    // CR0.WP cleared and no root reloaded.
    let (t, write) = build(None, 0x8000_0033);
    assert_one(&t.events, RuleId::RoleChangeRootReload, t.next() - 1, &[write]);
    // CR0.PG cleared but the new root is a shadow root.
    let (t, write) = build(Some(ROLE_L1), 0x0001_0033);
    assert_one(&t.events, RuleId::RoleChangeRootReload, t.next() - 2, &[write]);
    let (fixed, _) = build(Some(ROLE_DIRECT), 0x0001_0033);
    assert_clean(&fixed.events);
    let (fixed, _) = build(Some(ROLE_L1), 0x8000_0033);
    assert_clean(&fixed.events);
    // A write that faults changes nothing.
    let mut t = EventBuilder::new();
    t.get_page(5, ROLE_L1, true);
    t.exit(CR_ACCESS, 0x310);
    t.cr(false, 0, 0x8001_0033);
    t.entry(0x313);
    t.exit(CR_ACCESS, 0x320);
    t.cr(true, 0, 0x8000_0032);
    t.inj_exception(13);
    t.entry(0x320);
    assert_clean(&t.events);
}

#[test]
fn launch_state_after_a_late_vmfail_of_vmlaunch() {
    // The late VM-Fail leaves the vmcs12 clear: a VMRESUME must VMfail, not enter.
    let (mut t, ..) = late_vmfail(5, 0x313, false);
    t.exit(VMRESUME, 0x320);
    let at = t.vmenter(A, 0xa000, false, 0x9000);
    assert_one(&t.events, RuleId::LaunchState, at, &[]);
}

#[test]
fn before_6_1_nested_entries_are_inferred_and_vmenter_rules_are_not_checkable() {
    use vmxray_replay::{Model, RuleStatus};
    // No kvm_nested_vmenter: VMLAUNCH, then an entry that is neither at the instruction nor
    // after it, is an L2 entry.
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(VMLAUNCH, 0x100);
    t.entry(0xa000);
    t.exit(CPUID, 0xa000);
    t.nested_vmexit_full(CPUID, 0xa000, 0, 0);
    t.inject(CPUID);
    t.entry(0x200);
    // A VMfail: entry right after the instruction.
    t.exit(VMRESUME, 0x210);
    t.entry(0x213);
    let mut model = Model::default();
    let found = model.run(&t.events);
    assert!(found.is_empty(), "{found:#?}");
    let summary = model.summary();
    assert!(!summary.features.nested_vmenter);
    for rule in [RuleId::ChangedSubjectCr3, RuleId::L2EntryMismatch, RuleId::UnexplainedVmenter] {
        let status = summary.rules.iter().find(|r| r.rule == rule).unwrap().status;
        assert!(matches!(status, RuleStatus::NotCheckable { .. }), "{rule}: {status:?}");
    }
    let status =
        summary.rules.iter().find(|r| r.rule == RuleId::NestedVmexitOutsideL2).unwrap().status;
    assert!(matches!(status, RuleStatus::Checked { .. }));

    // After the VMfail the vCPU is in L1: a nested exit now is an anomaly.
    t.exit(CPUID, 0x213);
    let at = t.nested_vmexit_full(CPUID, 0x213, 0, 0);
    assert_one(&t.events, RuleId::NestedVmexitOutsideL2, at, &[]);
}

#[test]
fn state_stays_bounded_with_many_threads_and_vmcs12s() {
    use vmxray_replay::Model;
    use vmxray_replay::model::MAX_THREAD_SLOTS;
    use vmxray_replay::state::Vmcs12Store;
    use vmxray_replay::triage::{TriageConfig, triage};
    let mut t = EventBuilder::new();
    for pid in 0..2000 {
        t.pid = 10_000 + pid;
        t.get_page(0x44, ROLE_L1, false);
    }
    t.pid = 1000;
    for i in 0..500u64 {
        t.l1_exit(VMPTRLD, 0x100);
        t.enter_l2(VMLAUNCH, 0x110, 0x1000_0000 + i * 0x1000, 0xa000, true, EPTP);
        t.reflect(CPUID, 0xa000, 0x200);
    }
    let mut model = Model::default();
    model.run(&t.events);
    assert!(model.states().count() <= MAX_THREAD_SLOTS + 1);
    let vcpu = model.state(vmxray_replay::Actor::vcpu(0)).unwrap();
    assert!(vcpu.vmcs12.iter().count() <= Vmcs12Store::CAPACITY);
    let report = triage(&t.events, TriageConfig::default());
    assert!(report.crashes.is_empty());
}

/// An AP restarted by INIT/SIPI: a long-mode HLT exit, then KVM enters it at RIP 0 (SIPI).
fn sipi(direct_roots: bool, userspace_between: bool) -> (EventBuilder, u64) {
    let mut t = EventBuilder::new();
    t.exit(EXTERNAL_INTERRUPT, 0xffff_ffff_8100_0000);
    let paging = t.get_page(0x10, ROLE_L1, true);
    t.entry(0xffff_ffff_8100_0000);
    t.exit(HLT, 0xffff_ffff_8103_a6f1);
    t.other("kvm_vcpu_wakeup");
    if userspace_between {
        t.userspace_exit(10);
    }
    if direct_roots {
        // mmu_alloc_direct_roots for an unpaged guest: four level-2 PAE roots.
        for i in 0..4u64 {
            t.get_page(i << 18, 2 | 1 << 7 | 7 << 8 | 1 << 12, true);
        }
    }
    t.entry(0);
    (t, paging)
}

#[test]
fn reset_root_role_after_init_sipi() {
    let (t, paging) = sipi(false, false);
    assert_one(&t.events, RuleId::ResetRootRole, t.next() - 1, &[paging]);
    let (fixed, _) = sipi(true, false);
    assert_clean(&fixed.events);
    // Userspace may have set the registers (KVM_SET_REGS): RIP 0 proves nothing then.
    let (userspace, _) = sipi(false, true);
    assert_clean(&userspace.events);
}

#[test]
fn evmcs_restore_stale_exit_bugcheck() {
    let mut t = EventBuilder::new();
    t.exit(HLT, 0x500);
    t.userspace_exit(10);
    let restore = t.vmenter(u64::MAX, 0xb000, true, EPTP);
    let exit = t.inject(EXTERNAL_INTERRUPT);
    t.entry(0x200);
    let wrmsr = t.exit(32, 0x210);
    let at = t.push(vmxray_events::EventKind::KvmMsr {
        write: true,
        index: 0x4000_0100,
        data: 0x20001,
        exception: false,
    });
    let a = assert_one(&t.events, RuleId::EvmcsRestoreStaleExit, at, &[restore, exit, wrmsr]);
    assert_eq!(a.severity, Severity::Warning);
}

/// vmcs12 B with nested EPT: an HLT-path entry (no kvm_entry), then its next run's first exit.
fn hlt_then(reason: u32, intr: u32) -> (EventBuilder, [u64; 3], u64) {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(VMRESUME, 0x100);
    t.vmenter(B, 0xb000, true, EPTP);
    let zero = t.inject(PREEMPTION_TIMER);
    t.entry(0x200);
    t.exit(VMRESUME, 0x100);
    let again = t.vmenter(B, 0xb000, true, EPTP);
    t.entry(0xb000);
    let hw = t.exit_full(reason, 0xb010, 0x4132d7, intr);
    t.nested_vmexit_full(reason, 0xb010, 0x4132d7, intr);
    let inject = t.inject_full(reason, 0x4132d7, intr);
    t.entry(0x200);
    (t, [zero, again, hw], inject)
}

#[test]
fn hlt_cancelled_exit_state_nested_ept_consequence() {
    let (t, evidence, inject) = hlt_then(EXCEPTION_NMI, 0x8000_0b0e);
    let a = assert_one(&t.events, RuleId::HltCancelledExitState, inject, &evidence);
    assert_eq!(a.severity, Severity::Warning);
    let (fixed, ..) = hlt_then(CPUID, 0);
    assert_clean(&fixed.events);
}

#[test]
fn unknown_guest_mode_is_not_held_against_a_root() {
    // A text rendering of kvm_mmu_get_page: guest_mode and smm unknown (reads as 0).
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.exit(EXTERNAL_INTERRUPT, 0xa004);
    t.nested_vmexit_full(EXTERNAL_INTERRUPT, 0xa004, 0, 0);
    let page = vmxray_events::MmuPage {
        role_known: vmxray_events::MmuPage::ROLE_KNOWN_KERNEL_PRINT,
        ..vmxray_events::MmuPage::with_role(
            Some(0),
            0x7,
            vmxray_events::codes::MmuPageRole(ROLE_GUEST_MMU & 0xffff),
        )
    };
    t.push(vmxray_events::EventKind::KvmMmuGetPage { page, created: false });
    t.entry(0xa004);
    assert_clean(&t.events);
    let mut model = vmxray_replay::Model::default();
    model.run(&t.events);
    let status = model.summary().rules.into_iter().find(|r| r.rule == RuleId::RootWrongLevel);
    assert!(matches!(
        status.map(|r| r.status),
        Some(vmxray_replay::RuleStatus::NotCheckable { .. })
    ));
}

#[test]
fn emulation_ud_in_l2() {
    // L2's MMIO `rep movs` (EPT violation, L0 emulates): a failure answered with #UD into L2.
    let build = |failed: bool| {
        let mut t = EventBuilder::new();
        t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
        let exit = t.exit_full(EPT_VIOLATION, 0xa010, 0x181, 0);
        t.nested_vmexit_full(EPT_VIOLATION, 0xa010, 0x181, 0);
        t.page_fault(0xfebd_0000, 0x181);
        t.emulate(0xa010, &[0xf3, 0xa5], false);
        let at = if failed {
            t.emulate(0xa010, &[0xf3, 0xa5], true);
            t.inj_exception(6)
        } else {
            t.entry(0xa012)
        };
        (t, exit, at)
    };
    let (t, exit, at) = build(true);
    let a = assert_one(&t.events, RuleId::EmulationUdInL2, at, &[exit]);
    assert_eq!(a.severity, Severity::Warning);
    let (fixed, ..) = build(false);
    assert_clean(&fixed.events);
}

#[test]
fn exit_while_run_pending() {
    // VMLAUNCH injecting #PF (with its error code); an external interrupt makes KVM exit to L1
    // before L2 ever ran (buggy), or L2 runs first and then exits (fixed).
    let build = |entered: bool| {
        let mut t = EventBuilder::new();
        t.exit(VMLAUNCH, 0x100);
        let enter = t.vmenter_inj(A, 0xa000, true, EPTP, 0x8000_0b0e);
        if entered {
            t.entry_intr(0xa000, Some(0x8000_0b0e));
            t.exit(EXTERNAL_INTERRUPT, 0xa000);
            t.nested_vmexit_full(EXTERNAL_INTERRUPT, 0xa000, 0, 0);
        }
        let at = t.inject(EXTERNAL_INTERRUPT);
        t.entry(0x200);
        (t, enter, at)
    };
    let (t, enter, at) = build(false);
    let a = assert_one(&t.events, RuleId::ExitWhileRunPending, at, &[enter]);
    assert_eq!(a.severity, Severity::Error);
    assert!(a.message.contains("discards the event L1 injected"), "{a}");
    let (fixed, ..) = build(true);
    assert_clean(&fixed.events);
}

/// How many decidable instances `rule` had in `t`'s events.
fn checks_of(t: &EventBuilder, rule: RuleId) -> u64 {
    let mut m = Model::default();
    m.run(&t.events);
    m.summary().rules.iter().find(|r| r.rule == rule).map_or(0, |r| match r.status {
        vmxray_replay::RuleStatus::Checked { checks, .. } => checks,
        vmxray_replay::RuleStatus::NotCheckable { .. } => 0,
    })
}

/// Blind bug x1: L2's fetch faults in EPT12 (an upper level R|W, no X); L1 gets the EPT
/// violation with qualification `qual`.
fn ept_violation_reflected(qual: u64) -> (EventBuilder, u64) {
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    t.exit_full(EPT_VIOLATION, 0xa000, 0x184, 0);
    t.nested_vmexit_full(EPT_VIOLATION, 0xa000, 0x184, 0);
    let at = t.inject_full(EPT_VIOLATION, qual, 0);
    t.entry(0x200);
    (t, at)
}

#[test]
fn ept_violation_permitted_access() {
    // 0780516a18f8 undone: a fetch reported with W and X allowed (bits 5:3 = 0b110).
    let (t, at) = ept_violation_reflected(0x184 | 0b110 << 3);
    let a = assert_one(&t.events, RuleId::EptViolationPermittedAccess, at, &[]);
    assert_eq!(a.severity, Severity::Error);
    assert!(a.message.contains("fetch") && a.message.contains("-WX"), "{a}");
    assert!(a.message.contains("0780516a18f8"), "{a}");
    // The fix: R and W allowed, not X.
    let (fixed, _) = ept_violation_reflected(0x184 | 0b011 << 3);
    assert_clean(&fixed.events);
    // Not present in EPT12 (no permission at all), and a write to a read-only page.
    assert_clean(&ept_violation_reflected(0x184).0.events);
    assert_clean(&ept_violation_reflected(0x182 | 0b101 << 3).0.events);
    // A read reported as readable is as wrong as the fetch.
    let (t, at) = ept_violation_reflected(0x181 | 0b001 << 3);
    assert_one(&t.events, RuleId::EptViolationPermittedAccess, at, &[]);
}

#[test]
fn ept_violation_permitted_access_is_checked_only_on_reflected_ept_violations() {
    let (t, _) = ept_violation_reflected(0x19c);
    assert_eq!(checks_of(&t, RuleId::EptViolationPermittedAccess), 1);
    let mut other = EventBuilder::new();
    other.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    other.reflect(CPUID, 0xa000, 0x200);
    assert_eq!(checks_of(&other, RuleId::EptViolationPermittedAccess), 0);
}

/// Blind bug x2: VMLAUNCH of a PAE L2 whose CR3 holds no valid PDPTEs; `ept` is vmcs12's
/// nested EPT setting. KVM's consistency check fails and L1 resumes at HOST_RIP.
fn pae_entry_failure(ept: bool) -> (EventBuilder, u64, u64) {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(VMLAUNCH, 0x100);
    let vmenter = t.vmenter(A, 0xa000, ept, if ept { EPTP } else { 0x9000 });
    let failed = t.vmenter_failed("!load_pdptrs(vcpu, cr3)", 0);
    t.entry(0x200);
    (t, vmenter, failed)
}

#[test]
fn pae_pdptes_from_cr3() {
    let (t, vmenter, failed) = pae_entry_failure(true);
    let a = assert_one(&t.events, RuleId::PaePdptesFromCr3, failed, &[vmenter]);
    assert_eq!(a.severity, Severity::Error);
    assert!(a.message.contains("7ca29de21362") && a.message.contains("load_pdptrs"), "{a}");
    // Without nested EPT the CPU does read the PDPTEs at CR3: the failure is L1's.
    let (t, ..) = pae_entry_failure(false);
    assert!(of(&run(&t.events), RuleId::PaePdptesFromCr3).is_empty());
    // Another consistency check with nested EPT is not this one.
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(A, 0xa000, true, EPTP);
    t.vmenter_failed("!nested_guest_cr0_valid(vcpu, vmcs12->guest_cr0)", 0);
    t.entry(0x200);
    assert!(of(&run(&t.events), RuleId::PaePdptesFromCr3).is_empty());
    // The fixed kernel enters the PAE L2.
    let mut fixed = EventBuilder::new();
    fixed.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    fixed.reflect(IO_INSTRUCTION, 0xa005, 0x200);
    assert_clean(&fixed.events);
    assert_eq!(checks_of(&fixed, RuleId::PaePdptesFromCr3), 1);
}

/// A `trace_printk` VMCS-field record (the format of `vmxray_events::vmcs::record`).
fn field_record(t: &mut EventBuilder, vmcs: u64, field: &str, value: u64) -> u64 {
    let mut fields = vmxray_events::Fields::new();
    let line = format!("l1: 0 0 0 vmcs12@{vmcs:#x} write {field} {value:#x}\n");
    fields.push("buf", vmxray_events::FieldValue::Str(line.into()));
    t.push(vmxray_events::EventKind::untyped("ftrace".into(), "print".into(), fields))
}

/// Blind bug x3: L1 owns CR0.TS and MP (shadow TS clear, 0x31); L2's lmsw sets TS (source
/// 0x39). `reflected`: KVM gives the exit to L1; else L0 handles it and L2 goes on. `known`:
/// the trace has vmcs12's mask and shadow as VMCS-field records.
fn lmsw(reflected: bool, known: bool) -> (EventBuilder, u64) {
    let mut t = EventBuilder::new();
    t.establish_l1();
    if known {
        field_record(&mut t, A, "CR0_GUEST_HOST_MASK", 0xa);
        field_record(&mut t, A, "CR0_READ_SHADOW", 0x31);
    }
    t.enter_l2(VMLAUNCH, 0x100, A, 0xa000, true, EPTP);
    // Qualification: LMSW (type 3 in bits 5:4), source 0x39 in bits 31:16, GPR field 0.
    let qual = 0x39 << 16 | 3 << 4;
    let exit = t.exit_full(CR_ACCESS, 0xa010, qual, 0);
    t.nested_vmexit_full(CR_ACCESS, 0xa010, qual, 0);
    if reflected {
        t.inject_full(CR_ACCESS, qual, 0);
        t.entry(0x200);
    } else {
        t.cr(true, 0, 0x8000_0039);
        t.entry(0xa013);
    }
    (t, exit)
}

#[test]
fn lmsw_exit_routing() {
    // e1d39b17e044 undone: RAX agreed with the shadow, so L0 handled an lmsw L1 owns.
    let (t, _) = lmsw(false, true);
    let found = of(&run(&t.events), RuleId::LmswExitRouting);
    assert_eq!(found.len(), 1, "{found:#?}");
    let a = &found[0];
    assert_eq!(a.severity, Severity::Error);
    assert!(a.message.contains("handled by L0") && a.message.contains("e1d39b17e044"), "{a}");
    assert!(a.evidence.iter().any(|e| e.0 == lmsw(false, true).1), "{a:?}");
    // The fix reflects it.
    let (fixed, _) = lmsw(true, true);
    assert_clean(&fixed.events);
    assert_eq!(checks_of(&fixed, RuleId::LmswExitRouting), 1);
    // Without vmcs12's mask and shadow the trace cannot tell: not checkable, silent.
    let (blind, _) = lmsw(false, false);
    assert_clean(&blind.events);
    assert_eq!(checks_of(&blind, RuleId::LmswExitRouting), 0);
}
