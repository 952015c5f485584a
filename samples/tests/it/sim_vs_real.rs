//! The simulator against the real-VMX recordings, step by step (issue 13, "Fidelity,
//! measured"): for every recording with a simulated counterpart, each step label both traces
//! show (`L1 VMRESUME`, `L2 PREEMPTION_TIMER after [immediate exit]`, …) must have no simulated
//! signature the real KVM never produced, and the two must share at least the nested steps
//! that make the scenario what it is.
//!
//! `cargo run -p vmxray-samples --example sim_vs_real` prints the same comparison side by side.

use std::path::{Path, PathBuf};

use vmxray_capture::{ReadOptions, open};
use vmxray_events::Event;
use vmxray_samples::sim::compare::{COUNTERPARTS, Comparison, Level};
use vmxray_samples::sim::{self, KvmFlavour, SimConfig};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(path: &Path) -> Vec<Event> {
    open(path, ReadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.expect("the recording reads"))
        .collect()
}

#[test]
fn fixed_flavour_matches_every_comparable_recording_step_by_step() {
    let mut compared = 0;
    for pair in COUNTERPARTS {
        if pair.not_comparable.is_some() {
            continue;
        }
        let real = read(&workspace().join(pair.real));
        for seed in [1, 2, 3] {
            let config = SimConfig::new(pair.scenario)
                .kvm(KvmFlavour::Fixed)
                .kernel(pair.kernel)
                .subjects(pair.subjects)
                .vcpus(1)
                .seed(seed);
            let simulation = sim::simulate(&config).expect("simulate");
            let comparison = Comparison::new(&simulation.events, &real);
            let mismatches = comparison.mismatches();
            assert!(
                mismatches.is_empty(),
                "{} vs {} seed {seed}: simulated steps real KVM never showed:\n{mismatches:#?}\n{comparison}",
                pair.real,
                pair.scenario
            );
            // Not vacuous: the nested steps both show agree on at least one signature each,
            // and there are several of them.
            let shared: Vec<_> = comparison
                .rows
                .iter()
                .filter(|(label, row)| {
                    label.level != Level::Start
                        && row.sim.keys().any(|sig| row.real.contains_key(sig))
                })
                .map(|(label, _)| label.to_string())
                .collect();
            for needed in ["L1 VMLAUNCH", "L1 VMRESUME", "L1 VMPTRLD"] {
                assert!(
                    shared.iter().any(|l| l == needed),
                    "{} vs {} seed {seed}: no shared `{needed}` step; shared: {shared:?}",
                    pair.real,
                    pair.scenario
                );
            }
            assert!(shared.len() >= 4, "{}: only {shared:?} shared", pair.real);
        }
        compared += 1;
    }
    assert!(compared >= 10, "only {compared} recordings compared");
}

#[test]
fn the_kernels_recorded_behave_alike_step_by_step() {
    // 6.1 and 6.12 show the same signatures for every step of the own-L1 scenarios, so the
    // simulator needs no 6.1/6.12 knob beyond the layouts (which are the same too).
    for name in ["l1-rr-3", "l1-hlt", "l1-hlt-shadow", "l1-invept", "l1-vmfail", "l1-triple-fault"]
    {
        let dir = workspace().join("samples/real/vmx");
        let a = read(&dir.join(format!("{name}-6.1.dat")));
        let b = read(&dir.join(format!("{name}-6.12.dat")));
        let vocabulary = a.iter().chain(&b).map(|e| e.name().to_owned()).collect();
        let comparison = Comparison::with_vocabulary(&a, &b, vocabulary);
        for (label, row) in &comparison.rows {
            assert!(
                row.sim_only().is_empty() && row.real_only().is_empty(),
                "{name}: 6.1 and 6.12 differ at {label}:\n{comparison}"
            );
        }
        assert!(comparison.layout_differences.is_empty(), "{name}: {comparison}");
    }
}

#[test]
fn a_wrong_simulator_is_caught() {
    // The comparison is not vacuous: a simulated trace of another scenario (nested EPT
    // against a recording without it) differs at the nested entries.
    let real = read(&workspace().join("samples/real/vmx/l1-hlt-6.1.dat"));
    let config = SimConfig::new(sim::Scenario::SepKernel)
        .subjects(3)
        .vcpus(1)
        .kernel(sim::KernelVersion::V6_1);
    let simulation = sim::simulate(&config).expect("simulate");
    let comparison = Comparison::new(&simulation.events, &real);
    let labels: Vec<String> =
        comparison.mismatches().iter().map(|(label, _)| label.to_string()).collect();
    assert!(labels.iter().any(|l| l == "L1 VMLAUNCH"), "{labels:?}\n{comparison}");
}
