//! Property test: any scenario, flavour, kernel, seed and knobs within range simulate without
//! panicking and give a well-formed stream.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vmxray_events::EventKind;
use vmxray_samples::sim::{KernelVersion, KvmFlavour, Scenario, SimConfig, simulate, text};

fn config() -> impl Strategy<Value = SimConfig> {
    (
        0..Scenario::ALL.len(),
        any::<bool>(),
        0..KernelVersion::ALL.len(),
        any::<u64>(),
        1u32..6,
        1u32..6,
        1u32..8,
    )
        .prop_map(|(sc, buggy, k, seed, vcpus, subjects, iterations)| {
            let scenario = Scenario::ALL[sc];
            let kvm = match (buggy, scenario.bugs().first()) {
                (true, Some(bug)) => KvmFlavour::Buggy(*bug),
                _ => KvmFlavour::Fixed,
            };
            SimConfig::new(scenario)
                .kvm(kvm)
                .kernel(KernelVersion::ALL[k])
                .seed(seed)
                .vcpus(vcpus)
                .subjects(subjects)
                .iterations(iterations)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_config_gives_a_well_formed_stream(cfg in config()) {
        let sim = simulate(&cfg).expect("valid knobs");
        prop_assert!(!sim.events.is_empty());
        let mut last_ts: BTreeMap<u32, u64> = BTreeMap::new();
        let mut last_of_thread: BTreeMap<i32, &EventKind> = BTreeMap::new();
        for (i, e) in sim.events.iter().enumerate() {
            let prev = last_ts.insert(e.cpu, e.ts).unwrap_or(0);
            prop_assert!(e.ts >= prev, "time goes back at {}", i);
            if let EventKind::KvmNestedVmexit(n) = &e.kind {
                let before = last_of_thread.get(&e.pid);
                prop_assert!(matches!(before, Some(EventKind::KvmExit(x)) if x == n), "nested_vmexit at {} without its kvm_exit", i);
            }
            // Before 6.1 only SVM traced nested entries (`kvm_nested_vmrun`).
            if let EventKind::KvmNestedVmenter(n) = &e.kind {
                prop_assert!(cfg.kernel.has_nested_vmenter() || n.isa == Some(vmxray_events::codes::Isa::Svm));
            }
            last_of_thread.insert(e.pid, &e.kind);
        }
        for site in &sim.truth.occurrences {
            prop_assert!(site.divergence < sim.events.len());
            prop_assert!(site.trigger <= site.first_difference && site.first_difference <= site.divergence);
        }
        for w in &sim.truth.vmcs12_writes {
            prop_assert!(w.before_event <= sim.events.len());
        }
        let rendered = text::render_trace(&sim.events, &sim.text_options());
        prop_assert_eq!(rendered.lines().count(), sim.events.len() + if cfg.kernel.has_migrate_disable_flag() { 12 } else { 11 });
    }
}
