//! The stuck-vCPU detector (`livelock`): each loop kind the reports show, found at its third
//! cycle with the cycle spelled out and the totals in the summary; the loops that are progress
//! (a guest's own loop over I/O, an MSR probe, a memset under dirty logging) stay clean.

use vmxray_events::EventKind;
use vmxray_events::codes::UserspaceExitReason;
use vmxray_replay::{LoopKind, Model, ModelConfig, RuleId, Severity};

use crate::common::*;

const MSR_READ: u32 = 31;

fn virq(t: &mut EventBuilder, vector: u32, reinjected: bool) -> u64 {
    t.push(EventKind::KvmInjVirq { vector, soft: Some(false), reinjected: Some(reinjected) })
}

fn run_error(t: &mut EventBuilder) -> u64 {
    t.push(EventKind::KvmUserspaceExit { reason: UserspaceExitReason(0), errno: Some(-14) })
}

/// The 6.1 mmu_seq hang: the same EPT violation at one RIP and GPA, IRQ 0xec re-injected.
fn ept_livelock(rounds: u64, same_gpa: bool) -> EventBuilder {
    let mut t = EventBuilder::new();
    for i in 0..rounds {
        t.exit_full(EPT_VIOLATION, 0xffff_8000_0010_2000, 0x683, 0);
        t.page_fault(if same_gpa { 0xfee0_0000 } else { 0x1000 * i }, 0x683);
        virq(&mut t, 0xec, true);
        t.entry(0xffff_8000_0010_2000);
        if i % 2 == 1 {
            // Asynchronous exits in between are not progress.
            t.exit(EXTERNAL_INTERRUPT, 0xffff_8000_0010_2000);
            t.entry(0xffff_8000_0010_2000);
        }
    }
    t
}

#[test]
fn page_fault_livelock_is_found_at_the_third_cycle_and_counted_to_the_end() {
    let t = ept_livelock(50, true);
    // Cycle: exit, page fault, virq, entry (4 signatures); the third ends at event index 11
    // with one asynchronous exit/entry pair in between (events 8 and 9 of round 1).
    let a = assert_one(&t.events, RuleId::Livelock, 13, &[0]);
    assert_eq!(a.severity, Severity::Warning);
    assert!(
        a.message.starts_with("page-fault livelock: a cycle of events repeated 3 times"),
        "{}",
        a.message
    );
    assert!(
        a.message.contains("EPT_VIOLATION rip 0xffff800000102000 qualification 0x683"),
        "{}",
        a.message
    );
    assert!(a.message.contains("kvm_inj_virq 0xec (reinjected)"), "{}", a.message);

    let mut model = Model::default();
    model.run(&t.events);
    let loops = model.summary().loops;
    assert_eq!(loops.len(), 1);
    assert_eq!(loops[0].kind, LoopKind::PageFault);
    assert_eq!(loops[0].repeats, 50);
    assert_eq!(loops[0].cycle.len(), 4);
    assert!(loops[0].ongoing);
}

#[test]
fn faults_that_move_on_are_progress() {
    // Each round faults on another page: a memset under dirty logging, all at one RIP.
    assert_clean(&ept_livelock(50, false).events);
    // The same fault twice (a write after a read-only mapping) is not a loop.
    assert_clean(&ept_livelock(2, true).events);
}

#[test]
fn an_exception_kvm_intercepts_and_reinjects_every_round_is_a_delivery_loop() {
    // SVM-style #GP interception re-injected forever (VMware backdoor, 2019), as VMX exits:
    // EXCEPTION_NMI #GP (intr_info 0x80000b0d), emulation, #GP injected, back at the RIP.
    let mut t = EventBuilder::new();
    for _ in 0..4 {
        t.exit_full(EXCEPTION_NMI, 0x4015c2, 0, 0x8000_0b0d);
        t.emulate(0x4015c2, &[0x0f, 0x32], false);
        t.inj_exception(13);
        t.entry(0x4015c2);
    }
    let a = assert_one(&t.events, RuleId::Livelock, 11, &[0]);
    assert!(a.message.starts_with("exception-delivery loop"), "{}", a.message);
}

#[test]
fn a_guest_probing_msrs_or_looping_on_io_is_not_stuck() {
    // rdmsr_safe over unknown MSRs: #GP injected after each MSR_READ exit at one RIP (real:
    // samples/real/vmx/linux-l1-ept-6.1.dat, Linux probing MSRs).
    let mut t = EventBuilder::new();
    for _ in 0..20 {
        t.exit(MSR_READ, 0xffff_ffff_8107_e783);
        t.inj_exception(13);
        t.entry(0xffff_ffff_8107_e783);
    }
    assert_clean(&t.events);
    // A guest loop of port writes at one RIP: every instruction completes.
    let mut t = EventBuilder::new();
    for _ in 0..200 {
        t.exit(IO_INSTRUCTION, 0x1000);
        t.entry(0x1002);
    }
    assert_clean(&t.events);
}

#[test]
fn kvm_run_failing_after_the_same_fault_is_a_run_error_loop() {
    let mut t = EventBuilder::new();
    for _ in 0..3 {
        t.entry(0x5600_b39c_8132);
        t.exit_full(EPT_VIOLATION, 0x5600_b39c_8132, 0x181, 0);
        t.page_fault(0x3fef_4281_2000, 0x181);
        run_error(&mut t);
    }
    let a = assert_one(&t.events, RuleId::Livelock, 11, &[0]);
    assert!(a.message.starts_with("KVM_RUN error loop"), "{}", a.message);
    assert!(a.message.contains("kvm_userspace_exit error (14)"), "{}", a.message);
}

#[test]
fn an_excerpt_that_is_one_loop_twice_is_stuck_at_its_end() {
    let t = ept_livelock(2, true);
    let config = ModelConfig { excerpt: true, ..ModelConfig::default() };
    let mut model = Model::new(config);
    let found = of(&model.run(&t.events), RuleId::Livelock);
    assert_eq!(found.len(), 1, "{found:#?}");
    // Named at the last event of the loop (the asynchronous exit and entry after it are not
    // part of it).
    assert_eq!(found[0].at.0, t.next() - 3);
    assert!(!model.summary().loops.is_empty());

    // Other events of the vCPU before it: two identical rounds are still the loop the poster
    // cut (an excerpt needs 2 repeats, a whole trace 3).
    let mut t2 = EventBuilder::new();
    t2.exit(CPUID, 0x100);
    t2.entry(0x102);
    let mut rest = ept_livelock(2, true);
    t2.events.append(&mut rest.events);
    let mut model = Model::new(config);
    assert_eq!(of(&model.run(&t2.events), RuleId::Livelock).len(), 1);
    assert!(of(&Model::default().run(&t2.events), RuleId::Livelock).is_empty());
}

/// A guest's first instruction walking its page tables under EPT: one EPT violation per
/// paging-structure page (qualification 0x82: a write of an accessed bit, guest-linear address
/// valid, not the final translation), each at the same RIP with the same qualification, the
/// address not traced (`perf kvm stat record` records no `kvm_page_fault`). Up to one per level
/// of a 5-level walk is progress; more is a livelock. The same repeats on the final
/// translation (0x182) are one at the third round.
#[test]
fn a_page_walk_faulting_once_per_level_is_progress() {
    let walk = |rounds: u64, qual: u64| {
        let mut t = EventBuilder::new();
        for _ in 0..rounds {
            t.entry(0x1000);
            t.exit_full(EPT_VIOLATION, 0x1000, qual, 0);
        }
        t.entry(0x1000);
        t.exit(IO_INSTRUCTION, 0x1000);
        t
    };
    let stuck = |t: &EventBuilder| {
        let mut model = Model::default();
        model.run(&t.events).iter().filter(|a| a.rule == RuleId::Livelock).count()
    };
    for levels in 1..=5 {
        assert_eq!(stuck(&walk(levels, 0x82)), 0, "{levels} walk faults");
    }
    assert_eq!(stuck(&walk(12, 0x82)), 1, "twelve walk faults at one RIP");
    assert_eq!(stuck(&walk(3, 0x182)), 1, "the final translation faulting three times");
}

/// A guest's own loop is told apart once and then followed cheaply; a stuck loop that
/// follows it is still found, with its own cycle spelled out and its repeats counted.
#[test]
fn a_livelock_after_a_long_guest_loop_is_found_with_its_own_cycle() {
    let mut t = EventBuilder::new();
    for _ in 0..500 {
        t.exit(IO_INSTRUCTION, 0x1000);
        t.entry(0x1002);
    }
    let first = t.next();
    for _ in 0..30 {
        t.exit_full(EPT_VIOLATION, 0x2000, 0x683, 0);
        t.page_fault(0xfee0_0000, 0x683);
        virq(&mut t, 0xec, true);
        t.entry(0x2000);
    }
    let a = assert_one(&t.events, RuleId::Livelock, first + 11, &[first]);
    assert!(a.message.starts_with("page-fault livelock"), "{}", a.message);
    assert!(!a.message.contains("IO_INSTRUCTION"), "{}", a.message);
    assert!(a.message.contains("EPT_VIOLATION rip 0x2000 qualification 0x683"), "{}", a.message);
    let mut model = Model::default();
    model.run(&t.events);
    let loops = model.summary().loops;
    assert_eq!((loops.len(), loops[0].repeats, loops[0].cycle.len()), (1, 30, 4));
}
