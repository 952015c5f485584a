//! Real traces of a correct KVM (the emulator-only PVM backend of this project's machines: no
//! kvm_exit/kvm_entry/kvm_cr) must replay with zero anomalies above info, whatever their
//! format, and every nested rule must say why it was not checkable.

use std::path::{Path, PathBuf};

use vmxray_capture::ReadOptions;
use vmxray_events::EventKind;
use vmxray_replay::{Model, RuleId, RuleStatus, Severity};

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// Every real and lab trace committed under samples/ (binary and text forms).
fn real_traces() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["real/tracedat", "real/perf", "lab"] {
        let entries = std::fs::read_dir(samples().join(dir)).expect("samples folder");
        out.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dat" || x == "data")),
        );
    }
    out.push(samples().join("real/text/tc_reportR.txt"));
    out.push(samples().join("real/text/triple-fault.report.txt"));
    out.sort();
    out
}

fn replay(path: &Path) -> Model {
    let reader =
        vmxray_capture::open(path, ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut model = Model::default();
    for event in reader {
        let event = event.unwrap_or_else(|e| panic!("{e}"));
        let step = model.step(&event);
        let loud: Vec<_> = step.anomalies.iter().filter(|a| a.severity > Severity::Info).collect();
        assert!(loud.is_empty(), "{}: {loud:#?}", path.display());
    }
    model
}

#[test]
fn real_traces_replay_clean() {
    let traces = real_traces();
    assert!(traces.len() >= 14, "{traces:?}");
    for path in &traces {
        let model = replay(path);
        let summary = model.summary();
        assert!(summary.events > 0, "{}", path.display());
        assert!(
            !summary.features.kvm_exit,
            "{}: these samples come from an emulator-only KVM",
            path.display()
        );
    }
}

#[test]
fn nested_rules_are_not_checkable_on_a_trace_without_exits() {
    let model = replay(&samples().join("real/text/tc_reportR.txt"));
    let summary = model.summary();
    assert!(summary.features.emulator);
    assert!(summary.events > 50);
    // Every rule but the stuck-vCPU detector (which reads any event stream) needs exits.
    assert!(
        summary
            .rules
            .iter()
            .filter(|r| r.rule != RuleId::Livelock)
            .all(|r| matches!(r.status, RuleStatus::NotCheckable { .. })),
        "{:?}",
        summary.rules
    );
    // The emulator-only trace still shows the MMU side: new shadow roots.
    let reader =
        vmxray_capture::open(&samples().join("real/text/tc_reportR.txt"), ReadOptions::default())
            .unwrap();
    assert!(
        reader.flatten().any(|e| matches!(e.kind, EventKind::KvmMmuGetPage { created: true, .. }))
    );
}
