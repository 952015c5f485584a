//! Triage of a hand-built copy of the real triple-fault sample
//! (`shared/samples/real/text/triple-fault.report.txt`): six CR3 switches through the emulator,
//! an `out`, `lidt` of an empty IDT, `ud2` → `#UD` that cannot be delivered → KVM_EXIT_SHUTDOWN.

use crate::common::*;
use vmxray_replay::triage::{ChainLink, ContextChange, CrashKind, TriageConfig, triage};
use vmxray_replay::{Actor, Severity, Transition};

const MOV_CR3_RAX: [u8; 3] = [0x0f, 0x22, 0xd8];

fn walk3(t: &mut EventBuilder, addr: u64) {
    t.walk(addr, 0x10);
    for (pte, level) in [(0x3023u64, 4u32), (0x4023, 3), (0xa3, 2)] {
        t.push(vmxray_events::EventKind::KvmMmuPagingElement { pte, level });
    }
}

/// The events of `triple-fault.report.txt`, vCPU thread python3-23323, in order.
pub fn triple_fault_sample() -> EventBuilder {
    let mut t = EventBuilder::new();
    t.pid = 23323;
    t.other("kvm_update_master_clock");
    t.other("kvm_fpu");
    t.get_page(2, ROLE_L1, true);
    walk3(&mut t, 0x1000);
    let mut rip = 0x1000u64;
    for (i, cr3) in [0x5000u64, 0x6000, 0x2000, 0x5000, 0x6000, 0x2000].into_iter().enumerate() {
        let imm = cr3.to_le_bytes();
        t.emulate(rip, &[0x48, 0xc7, 0xc0, imm[0], imm[1], imm[2], imm[3]], false);
        rip += 7;
        walk3(&mut t, rip);
        t.emulate(rip, &MOV_CR3_RAX, false);
        if i < 2 {
            // New shadow roots for 0x5000 and 0x6000; later switches hit prev_roots.
            t.get_page(cr3 >> 12, ROLE_L1, true);
        }
        rip += 3;
        walk3(&mut t, rip);
    }
    t.emulate(0x105a, &[0xe6, 0x10], false);
    t.push(vmxray_events::EventKind::KvmPio {
        write: true,
        port: 0x10,
        size: 1,
        count: 1,
        val: Some(0),
    });
    t.userspace_exit(2);
    walk3(&mut t, 0x105c);
    t.emulate(0x105c, &[0x0f, 0x01, 0x1c, 0x25, 0x00, 0x70, 0x00, 0x00], false);
    t.walk(0x7000, 0);
    t.walk(0x7002, 0);
    walk3(&mut t, 0x1064);
    t.emulate(0x1064, &[0x0f, 0x0b], false);
    t.emulate(0x1064, &[0x0f, 0x0b], true);
    t.walk(0x1064, 0);
    t.inj_exception(6);
    t.other("kvm_fpu");
    t.userspace_exit(8);
    // Teardown: MMU notifier and the NX-recovery kthread.
    t.other("kvm_unmap_hva_range");
    t.pid = 23364;
    t.push(vmxray_events::EventKind::KvmMmuPrepareZapPage {
        page: vmxray_events::MmuPage {
            mmu_valid_gen: Some(0),
            gfn: 2,
            role: vmxray_events::codes::MmuPageRole(ROLE_L1),
            role_known: u32::MAX,
            root_count: 1,
            unsync: false,
        },
    });
    t
}

#[test]
fn triage_names_the_undeliverable_ud_and_the_shutdown() {
    let t = triple_fault_sample();
    let shutdown_at = t.events.iter().rposition(|e| matches!(e.kind, vmxray_events::EventKind::KvmUserspaceExit { reason, .. } if reason.0 == 8)).unwrap() as u64;
    let report = triage(&t.events, TriageConfig::default());
    assert_eq!(report.crashes.len(), 1, "{report:#?}");
    let crash = &report.crashes[0];
    assert_eq!(crash.kind, CrashKind::Shutdown);
    assert_eq!(crash.vcpu, Actor::Thread(23323));
    assert_eq!(crash.at.0, shutdown_at);
    assert_eq!(crash.last_events.last().unwrap().at.0, shutdown_at);
    assert!(crash.last_events.len() <= TriageConfig::default().window);

    // The undelivered exception is the #UD, injected after the emulation of ud2 failed.
    match &crash.undelivered {
        Some(ChainLink::Injected { vector, .. }) => assert_eq!(vector.0, 6),
        other => panic!("{other:?}"),
    }
    let chain = &crash.exception_chain;
    assert!(matches!(chain.last(), Some(ChainLink::Injected { .. })));
    assert!(chain.iter().any(|l| matches!(l, ChainLink::EmulationFailed { rip: 0x1064, insn, .. } if insn == &[0x0f, 0x0b])));

    // The CR3 switches, root loads and the lidt are in the context changes.
    let emulated: Vec<&str> = crash
        .context_changes
        .iter()
        .filter_map(|c| match c {
            ContextChange::Emulated { insn, .. } => Some(insn.as_str()),
            ContextChange::Model { .. } | ContextChange::CrWrite { .. } => None,
        })
        .collect();
    assert!(emulated.contains(&"lidt [0x7000]"), "{emulated:?}");
    assert!(emulated.iter().filter(|i| **i == "mov cr3, rax").count() >= 5, "{emulated:?}");
    let roots: Vec<u64> = crash
        .context_changes
        .iter()
        .filter_map(|c| match c {
            ContextChange::Model { transition: Transition::RootLoaded(r), .. } => Some(r.gfn),
            ContextChange::Model { .. }
            | ContextChange::CrWrite { .. }
            | ContextChange::Emulated { .. } => None,
        })
        .collect();
    assert_eq!(roots, [2, 5, 6]);

    // A real PVM trace: nothing above info, and no rule had anything to decide.
    assert_eq!(report.summary.by_severity[1..].iter().sum::<u64>(), 0);
    assert!(crash.anomalies.iter().all(|a| a.severity == Severity::Info));
}

#[test]
fn triage_one_crash_per_fatal_chain_in_l2() {
    // L2 triple-faults: kvm_exit TRIPLE_FAULT, nested exit, inject TRIPLE_FAULT: one crash.
    let mut t = EventBuilder::new();
    t.enter_l2(VMLAUNCH, 0x100, 0xa0, 0xa000, true, EPT_EPTP);
    t.exit_full(EXCEPTION_NMI, 0xa010, 0x5000, 0x8000_0b0e);
    t.nested_vmexit_full(EXCEPTION_NMI, 0xa010, 0x5000, 0x8000_0b0e);
    t.page_fault(0x5000, 2);
    t.inj_exception(14);
    t.entry(0xa010);
    t.exit(2, 0xa010);
    t.nested_vmexit_full(2, 0xa010, 0, 0);
    let inject = t.inject(2);
    t.entry(0x200);
    let report = triage(&t.events, TriageConfig::default());
    assert_eq!(report.crashes.len(), 1, "{:#?}", report.crashes);
    let crash = &report.crashes[0];
    assert_eq!(crash.kind, CrashKind::TripleFaultExit);
    assert!(
        crash
            .exception_chain
            .iter()
            .any(|l| matches!(l, ChainLink::PageFault { address: 0x5000, .. }))
    );
    assert!(crash.at.0 < inject);
}

const EPT_EPTP: u64 = EPTP;

#[test]
fn triage_failed_vmentry_keeps_the_failed_check() {
    let mut t = EventBuilder::new();
    t.exit(VMLAUNCH, 0x100);
    t.vmenter(0xa0, 0xa000, true, EPTP);
    // Real KVM traces no kvm_nested_vmexit_inject here (vmentry_fail_vmexit).
    let check = t.vmenter_failed("!nested_guest_cr0_valid(vcpu, vmcs12->guest_cr0)", 0);
    t.entry(0x200);
    let report = triage(&t.events, TriageConfig::default());
    assert_eq!(report.crashes.len(), 1);
    let crash = &report.crashes[0];
    assert_eq!(crash.kind, CrashKind::FailedVmentry);
    assert_eq!(crash.vmcs12.as_ref().map(|r| r.vmptr), Some(0xa0));
    assert!(crash.exception_chain.iter().any(
        |l| matches!(l, ChainLink::VmenterFailed { at, msg, .. } if at.0 == check && msg.contains("guest_cr0"))
    ));
}
