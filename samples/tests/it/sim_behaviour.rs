//! Structural properties of the simulated KVM behaviour, per scenario, flavour and kernel, and
//! the §3 signature of each bug at the ground-truth index.

use std::collections::BTreeMap;

use vmxray_events::codes::VmxBasicReason;
use vmxray_events::{Event, EventKind, ExitInfo};
use vmxray_samples::sim::{
    Bug, KernelVersion, KvmFlavour, Scenario, SimConfig, Simulation, Vmcs12Field, Writer, simulate,
};

fn run(scenario: Scenario, kvm: KvmFlavour, kernel: KernelVersion, seed: u64) -> Simulation {
    simulate(&SimConfig::new(scenario).kvm(kvm).kernel(kernel).seed(seed)).expect("valid config")
}

fn flavours(scenario: Scenario) -> Vec<KvmFlavour> {
    let mut f = vec![KvmFlavour::Fixed];
    f.extend(scenario.bugs().iter().map(|b| KvmFlavour::Buggy(*b)));
    f
}

/// Every (scenario, flavour, kernel) for a couple of seeds.
fn all_runs() -> Vec<(Scenario, KvmFlavour, KernelVersion, u64, Simulation)> {
    let mut out = Vec::new();
    for scenario in Scenario::ALL.iter().copied() {
        for kvm in flavours(scenario) {
            for kernel in KernelVersion::ALL {
                for seed in [1, 42] {
                    out.push((scenario, kvm, kernel, seed, run(scenario, kvm, kernel, seed)));
                }
            }
        }
    }
    out
}

fn basic(info: &ExitInfo) -> Option<VmxBasicReason> {
    info.reason().vmx_basic()
}

/// The events of each thread, in order, with their global index.
fn per_thread(events: &[Event]) -> BTreeMap<i32, Vec<(usize, &Event)>> {
    let mut m: BTreeMap<i32, Vec<(usize, &Event)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        m.entry(e.pid).or_default().push((i, e));
    }
    m
}

/// The names of the events of `idx`'s thread from `before` events before it to `after` after.
fn thread_window(events: &[Event], idx: usize, before: usize, after: usize) -> Vec<&str> {
    let pid = events[idx].pid;
    let thread: Vec<usize> = (0..events.len()).filter(|&i| events[i].pid == pid).collect();
    let pos = thread.iter().position(|&i| i == idx).unwrap();
    thread[pos - before..=pos + after].iter().map(|&i| events[i].name()).collect()
}

#[test]
fn timestamps_are_monotonic_per_cpu_and_threads_stay_on_their_cpu() {
    for (sc, kvm, kernel, seed, sim) in all_runs() {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for e in &sim.events {
            let prev = last.insert(e.cpu, e.ts).unwrap_or(0);
            assert!(
                e.ts >= prev,
                "{sc} {kvm} {kernel} seed {seed}: time goes back on CPU {}",
                e.cpu
            );
            let thread = sim.truth.vcpus.iter().find(|t| t.pid == e.pid).expect("known thread");
            assert_eq!(thread.cpu, e.cpu);
            assert_eq!(e.comm.as_deref(), Some(thread.comm.as_str()));
        }
        assert!(!sim.events.is_empty());
    }
}

#[test]
fn nested_vmexit_repeats_the_preceding_kvm_exit_while_in_l2() {
    for (sc, kvm, kernel, seed, sim) in all_runs() {
        for (_, evs) in per_thread(&sim.events) {
            for w in evs.windows(2) {
                if let EventKind::KvmNestedVmexit(nested) = &w[1].1.kind {
                    let EventKind::KvmExit(exit) = &w[0].1.kind else {
                        panic!(
                            "{sc} {kvm} {kernel} {seed}: kvm_nested_vmexit at {} without kvm_exit",
                            w[1].0
                        )
                    };
                    assert_eq!(exit, nested, "{sc} {kvm} {kernel} {seed}: at {}", w[1].0);
                }
            }
        }
    }
}

#[test]
fn field_sets_follow_the_kernel_version() {
    for (sc, kvm, kernel, seed, sim) in all_runs() {
        let ctx = format!("{sc} {kvm} {kernel} {seed}");
        for e in &sim.events {
            match &e.kind {
                EventKind::KvmNestedVmenter(n) => {
                    // Before 6.1 only SVM traced nested entries (`kvm_nested_vmrun`).
                    assert!(
                        kernel.has_nested_vmenter()
                            || n.isa == Some(vmxray_events::codes::Isa::Svm),
                        "{ctx}: VMX kvm_nested_vmenter before 6.1"
                    )
                }
                EventKind::KvmEntry(entry) => {
                    assert!(entry.rip.is_some(), "{ctx}");
                    assert_eq!(entry.intr_info.is_some(), kernel == KernelVersion::V6_14, "{ctx}");
                    // 6.1 as Debian's 6.1.192 recorded in samples/real/vmx/ (upstream: 6.9).
                    assert_eq!(
                        entry.immediate_exit.is_some(),
                        kernel >= KernelVersion::V6_1,
                        "{ctx}"
                    );
                }
                EventKind::KvmExit(x) | EventKind::KvmNestedVmexit(x) => {
                    assert_eq!(x.requests().is_some(), kernel == KernelVersion::V6_14, "{ctx}");
                    assert!(x.intr_info().is_some() && x.vcpu_id().is_some(), "{ctx}");
                }
                EventKind::KvmPageFault { vcpu_id, .. } => {
                    assert_eq!(vcpu_id.is_some(), kernel >= KernelVersion::V6_1, "{ctx}")
                }
                EventKind::KvmInjException { reinjected, .. } => {
                    assert_eq!(reinjected.is_some(), kernel >= KernelVersion::V6_1, "{ctx}")
                }
                _ => {}
            }
        }
        // Each thread's first event comes before each thread's first kvm_entry ordering rule:
        // two kvm_entry of one thread have a kvm_exit (or a late VM-Fail) between them.
        for (_, evs) in per_thread(&sim.events) {
            let mut since_entry: Option<bool> = None;
            for (i, e) in evs {
                match &e.kind {
                    EventKind::KvmEntry(_) => {
                        assert_ne!(
                            since_entry,
                            Some(false),
                            "{ctx}: two kvm_entry without an exit at {i}"
                        );
                        since_entry = Some(false);
                    }
                    EventKind::KvmExit(_) | EventKind::KvmNestedVmenterFailed { .. } => {
                        since_entry = Some(true)
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Reconstructs, per thread, whether the vCPU is in L2 from the events alone (kvm_nested_vmenter
/// on 6.1+, VMLAUNCH/VMRESUME followed by kvm_entry on 5.10) and checks that L0 never sees a
/// hardware PML_FULL in L2 and always reacquires the guest_mmu root after INVEPT, in the fixed
/// flavour. The buggy flavour must violate it exactly where the truth says.
#[test]
fn fixed_kvm_never_shows_a_bug_signature() {
    for (sc, kvm, kernel, seed, sim) in all_runs() {
        let ctx = format!("{sc} {kvm} {kernel} {seed}");
        let flagged = signature_hits(&sim.events);
        match kvm {
            KvmFlavour::Fixed => {
                assert!(flagged.is_empty(), "{ctx}: fixed KVM shows {flagged:?}");
                assert!(sim.truth.bug.is_none(), "{ctx}");
            }
            KvmFlavour::Buggy(bug) => {
                let site =
                    sim.truth.bug.as_ref().unwrap_or_else(|| panic!("{ctx}: bug never triggered"));
                assert_eq!(site.bug, bug);
                assert!(site.trigger <= site.first_difference, "{ctx}");
                assert!(site.first_difference <= site.divergence, "{ctx}");
                let visible_alone = matches!(
                    bug,
                    Bug::LateVmFailCr3
                        | Bug::InveptNoRootReload
                        | Bug::InitMmuNotReset
                        | Bug::PmlInL2
                );
                if visible_alone {
                    assert_eq!(
                        flagged.first(),
                        Some(&(site.divergence, bug)),
                        "{ctx}: first signature hit"
                    );
                } else {
                    assert!(flagged.is_empty(), "{ctx}: {flagged:?}");
                }
            }
        }
    }
}

/// Independent, reference-derived checks for the signatures that are visible in the trace
/// alone: (b) L1 root gfn after a late VM-Fail ≠ last L1 CR3 write; (c) L2 kvm_entry after
/// INVEPT without root reacquisition; (d) entry after INIT/SIPI without a direct root; (f) a
/// PML_FULL nested exit.
fn signature_hits(events: &[Event]) -> Vec<(usize, Bug)> {
    let mut hits = Vec::new();
    for (_, evs) in per_thread(events) {
        let mut l1_cr3 = None;
        let mut after_late_fail = false;
        let mut invept_pending = false;
        let mut root_reacquired = false;
        let mut in_vmenter = false;
        let mut sipi_wait = false;
        let mut halted_paging = false;
        let mut wakeups = 0;
        let mut last_exit = 0;
        for (i, e) in evs {
            match &e.kind {
                EventKind::KvmCr { write: true, cr: 3, val } if !in_vmenter => l1_cr3 = Some(*val),
                EventKind::KvmNestedVmenterFailed { msg, .. } if msg.starts_with("hardware") => {
                    after_late_fail = true
                }
                EventKind::KvmMmuGetPage { page, .. } => {
                    if after_late_fail {
                        if l1_cr3.is_some_and(|c| c >> 12 != page.gfn) {
                            hits.push((i, Bug::LateVmFailCr3));
                        }
                        after_late_fail = false;
                    }
                    if in_vmenter {
                        root_reacquired = true;
                    }
                    if sipi_wait && page.role.direct() {
                        sipi_wait = false;
                        halted_paging = false;
                    }
                }
                EventKind::KvmExit(x) => {
                    in_vmenter = false;
                    last_exit = i;
                    wakeups = 0;
                    match basic(x) {
                        Some(VmxBasicReason::INVEPT) => invept_pending = true,
                        Some(VmxBasicReason::VMRESUME) | Some(VmxBasicReason::VMLAUNCH) => {
                            in_vmenter = true;
                            root_reacquired = false;
                        }
                        Some(VmxBasicReason::PML_FULL) => {}
                        Some(VmxBasicReason::HLT) => halted_paging = true,
                        _ => {}
                    }
                }
                EventKind::KvmNestedVmexit(x) => {
                    halted_paging = false;
                    if basic(x) == Some(VmxBasicReason::PML_FULL) {
                        hits.push((last_exit, Bug::PmlInL2));
                    }
                }
                EventKind::KvmEntry(_) => {
                    if in_vmenter && invept_pending {
                        if !root_reacquired {
                            hits.push((i, Bug::InveptNoRootReload));
                        }
                        invept_pending = false;
                    }
                    if sipi_wait {
                        hits.push((i, Bug::InitMmuNotReset));
                        sipi_wait = false;
                    }
                    in_vmenter = false;
                    halted_paging = false;
                }
                EventKind::Other(o) if &*o.name == "kvm_vcpu_wakeup" && halted_paging => {
                    // Woken from the offline HLT by INIT, then by SIPI: the next entry needs a
                    // direct root.
                    wakeups += 1;
                    sipi_wait = wakeups == 2;
                }
                _ => {}
            }
        }
    }
    hits.sort();
    hits
}

#[test]
fn bug_a_stale_cr3_signature() {
    for kernel in KernelVersion::ALL {
        for scenario in [Scenario::Muen, Scenario::MuenEpt] {
            for seed in 1..6 {
                let sim = run(scenario, KvmFlavour::Buggy(Bug::HltStaleCr3), kernel, seed);
                let site = sim.truth.bug.clone().expect("triggered");
                // The trigger is a synthesized PREEMPTION_TIMER exit right after an
                // HLT-cancelled vmenter: no kvm_entry between vmenter and inject.
                let EventKind::KvmNestedVmexitInject(x) = &sim.events[site.trigger].kind else {
                    panic!("trigger is not an inject: {:?}", sim.events[site.trigger])
                };
                assert_eq!(basic(x), Some(VmxBasicReason::PREEMPTION_TIMER));
                let thread: Vec<&Event> = sim.events[..site.trigger]
                    .iter()
                    .filter(|e| e.pid == sim.events[site.trigger].pid)
                    .collect();
                let before: Vec<&str> = thread.iter().rev().take(3).map(|e| e.name()).collect();
                if kernel.has_nested_vmenter() {
                    assert_eq!(before, ["kvm_vcpu_wakeup", "kvm_nested_vmenter", "kvm_exit"]);
                } else {
                    assert_eq!(before, ["kvm_vcpu_wakeup", "kvm_exit", "kvm_entry"]);
                }
                let flagged = &sim.events[site.divergence];
                if kernel.has_nested_vmenter() && scenario == Scenario::Muen {
                    // The halted subject's vmcs12 now holds another subject's CR3.
                    let EventKind::KvmNestedVmenter(n) = &flagged.kind else {
                        panic!("{flagged:?}")
                    };
                    let l1_written: Vec<u64> = sim
                        .truth
                        .field_history(n.vmcs, Vmcs12Field::GuestCr3)
                        .into_iter()
                        .filter(|(_, _, w)| *w == Writer::L1)
                        .map(|(_, v, _)| v)
                        .collect();
                    assert!(!l1_written.contains(&n.guest_cr3().unwrap()));
                    let others: Vec<u64> = sim
                        .truth
                        .vmcs12_writes
                        .iter()
                        .filter(|w| w.field == Vmcs12Field::GuestCr3 && w.vmcs12 != n.vmcs)
                        .map(|w| w.value)
                        .collect();
                    assert!(others.contains(&n.guest_cr3().unwrap()), "another subject's CR3");
                } else {
                    // Only the consequence is visible: the subject faults on foreign page tables.
                    let EventKind::KvmExit(x) = &flagged.kind else { panic!("{flagged:?}") };
                    assert_eq!(basic(x), Some(VmxBasicReason::EXCEPTION_NMI));
                    assert_eq!(x.intr_info().unwrap().0, 0x8000_0b0e);
                }
            }
        }
    }
}

#[test]
fn bug_b_e_signatures() {
    for kernel in KernelVersion::ALL {
        let sim = run(Scenario::LateVmFail, KvmFlavour::Buggy(Bug::LateVmFailCr3), kernel, 3);
        let site = sim.truth.bug.clone().unwrap();
        let names = thread_window(&sim.events, site.divergence, 2, 1);
        assert_eq!(
            names,
            ["kvm_entry", "kvm_nested_vmenter_failed", "kvm_mmu_get_page", "kvm_entry"]
        );
        let EventKind::KvmMmuGetPage { page, created } = &sim.events[site.divergence].kind else {
            panic!()
        };
        assert!(*created && page.gfn == 0x10_a3c5 && !page.role.guest_mode());
        assert!(sim.events.iter().any(|e| matches!(e.kind, EventKind::KvmUserspaceExit { .. })));

        let sim = run(Scenario::EvmcsRestore, KvmFlavour::Buggy(Bug::EvmcsStaleExit), kernel, 3);
        let site = sim.truth.bug.clone().unwrap();
        assert_eq!(
            thread_window(&sim.events, site.trigger, 0, 1),
            ["kvm_nested_vmexit_inject", "kvm_entry"]
        );
        if kernel.has_nested_vmenter() {
            let EventKind::KvmNestedVmenter(n) = &sim.events[0].kind else { panic!() };
            assert!(n.is_evmcs() && n.rip == 0xfff0);
        }
        assert_eq!(thread_window(&sim.events, site.divergence, 0, 1), ["kvm_exit", "kvm_msr"]);
        let msr = sim.events[site.divergence..].iter().find(|e| e.name() == "kvm_msr").unwrap();
        assert!(matches!(msr.kind, EventKind::KvmMsr { index: 0x4000_0100, .. }));
    }
}

/// The ground truth's first difference is where the buggy run's thread first differs from the
/// fixed run's thread (same seed and knobs).
#[test]
fn first_difference_matches_a_diff_against_the_fixed_flavour() {
    for scenario in Scenario::ALL.iter().copied() {
        for bug in scenario.bugs() {
            for kernel in KernelVersion::ALL {
                for seed in [1, 2, 3, 99] {
                    let fixed = run(scenario, KvmFlavour::Fixed, kernel, seed);
                    let buggy = run(scenario, KvmFlavour::Buggy(*bug), kernel, seed);
                    let site = buggy.truth.bug.clone().expect("triggered");
                    let pid = buggy.events[site.divergence].pid;
                    let f: Vec<(usize, &Event)> =
                        fixed.events.iter().enumerate().filter(|(_, e)| e.pid == pid).collect();
                    let b: Vec<(usize, &Event)> =
                        buggy.events.iter().enumerate().filter(|(_, e)| e.pid == pid).collect();
                    let first =
                        f.iter().zip(&b).position(|(x, y)| x.1 != y.1).expect("streams differ");
                    assert_eq!(
                        b[first].0, site.first_difference,
                        "{scenario} {bug} {kernel} seed {seed}"
                    );
                }
            }
        }
    }
}

#[test]
fn same_seed_same_events_other_seed_other_events() {
    for scenario in Scenario::ALL.iter().copied() {
        let a = run(scenario, KvmFlavour::Fixed, KernelVersion::V6_1, 5);
        let b = run(scenario, KvmFlavour::Fixed, KernelVersion::V6_1, 5);
        let c = run(scenario, KvmFlavour::Fixed, KernelVersion::V6_1, 6);
        assert_eq!(a, b);
        assert_ne!(a.events, c.events);
    }
}

#[test]
fn ground_truth_tracks_vmcs12_fields() {
    let sim = run(Scenario::SepKernel, KvmFlavour::Fixed, KernelVersion::V6_1, 8);
    // Every nested_eptp shown by kvm_nested_vmenter is the EPTP L1 wrote for that vmcs12, and
    // every nested_rip is the last GUEST_RIP written (by L1 or L0) before the event.
    for (i, e) in sim.events.iter().enumerate() {
        if let EventKind::KvmNestedVmenter(n) = &e.kind {
            let last = |field| {
                sim.truth
                    .vmcs12_writes
                    .iter()
                    .rfind(|w| w.vmcs12 == n.vmcs && w.field == field && w.before_event <= i)
                    .map(|w| w.value)
            };
            assert_eq!(last(Vmcs12Field::EptPointer), n.nested_tdp_root());
            assert_eq!(last(Vmcs12Field::GuestRip), Some(n.nested_rip));
        }
    }
    assert!(
        sim.truth
            .vmcs12_writes
            .iter()
            .any(|w| w.writer == Writer::L0Exit && w.field == Vmcs12Field::GuestCr3)
    );
}

#[test]
fn knobs_and_flavours_are_validated() {
    let bad = SimConfig::new(Scenario::SepKernel).kvm(KvmFlavour::Buggy(Bug::PmlInL2));
    assert!(simulate(&bad).is_err());
    assert!(simulate(&SimConfig::new(Scenario::Muen).vcpus(0)).is_err());
    assert!(SimConfig::resolve(Scenario::Smm, None).is_err());
    assert_eq!(
        SimConfig::resolve(Scenario::Invept, None).unwrap(),
        KvmFlavour::Buggy(Bug::InveptNoRootReload)
    );
    assert_eq!(
        vmxray_samples::sim::parse_flavour("buggy:c").unwrap(),
        Some(KvmFlavour::Buggy(Bug::InveptNoRootReload))
    );
    assert!(vmxray_samples::sim::parse_flavour("broken").is_err());
}

#[test]
fn l2_preemption_timer_fastpath_has_no_nested_vmexit_on_6_14_only() {
    for kernel in KernelVersion::ALL {
        let sim = run(Scenario::Noise, KvmFlavour::Fixed, kernel, 4);
        let mut fast = 0;
        for (_, evs) in per_thread(&sim.events) {
            for w in evs.windows(2) {
                if let EventKind::KvmExit(x) = &w[0].1.kind
                    && basic(x) == Some(VmxBasicReason::PREEMPTION_TIMER)
                    && !matches!(w[1].1.kind, EventKind::KvmNestedVmexit(_))
                {
                    fast += 1;
                }
            }
        }
        assert_eq!(fast > 0, kernel == KernelVersion::V6_14, "{kernel}");
        // PML_FULL while L1 runs is how dirty logging of L1 works: never followed by
        // kvm_nested_vmexit.
        let l1_pml = sim.events.iter().filter(|e| matches!(&e.kind, EventKind::KvmExit(x) if basic(x) == Some(VmxBasicReason::PML_FULL))).count();
        let l2_pml = sim.events.iter().filter(|e| matches!(&e.kind, EventKind::KvmNestedVmexit(x) if basic(x) == Some(VmxBasicReason::PML_FULL))).count();
        assert!(l1_pml > 0 && l2_pml == 0, "{kernel}: {l1_pml} {l2_pml}");
    }
}

/// `enable_ept` is host-wide: with L0 shadow paging (late-vmfail, init) no vCPU ever has an
/// EPT violation or nested EPT, and every L2 CR3 load is an exit L0 handles.
#[test]
fn shadow_paging_scenarios_have_no_ept_anywhere() {
    for scenario in [Scenario::LateVmFail, Scenario::Init] {
        for kvm in flavours(scenario) {
            for seed in 1..12 {
                let sim = simulate(&SimConfig::new(scenario).kvm(kvm).seed(seed).vcpus(3)).unwrap();
                for e in &sim.events {
                    match &e.kind {
                        EventKind::KvmExit(x) => {
                            assert_ne!(basic(x), Some(VmxBasicReason::EPT_VIOLATION))
                        }
                        EventKind::KvmNestedVmenter(n) => assert_eq!(n.tdp_enabled, Some(false)),
                        _ => {}
                    }
                }
            }
        }
    }
}
