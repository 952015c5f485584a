//! A host runs many VMs (issue 20): several simulated VMs, each with vCPUs 0 and 1,
//! interleaved in one host trace. Replayed as a whole, the correct VMs are clean and the buggy
//! VM's anomalies are exactly those it has alone, on its own vCPUs — with the tgid in the trace
//! (the VMs are the processes) and without (the model tells them apart by their threads).
//! In memory, through the ftrace text (with and without the `record-tgid` column), and through
//! `vmxray replay` and `vmxray stats`.

use std::collections::BTreeMap;

use vmxray_capture::read::text::TextReader;
use vmxray_capture::{ReadOptions, open};
use vmxray_events::{Actor, Event};
use vmxray_replay::{Anomaly, Model, Severity};
use vmxray_samples::sim::host::{HostSimulation, simulate_host};
use vmxray_samples::sim::{self, Bug, KernelVersion, KvmFlavour, Scenario, SimConfig};

fn vm(scenario: Scenario, kvm: KvmFlavour, seed: u64) -> SimConfig {
    SimConfig::new(scenario).kvm(kvm).kernel(KernelVersion::V6_1).seed(seed).vcpus(2)
}

/// Four VMs, all with vCPUs 0 and 1; the second is buggy when `buggy`.
fn host(buggy: bool) -> HostSimulation {
    let muen = if buggy { KvmFlavour::Buggy(Bug::HltStaleCr3) } else { KvmFlavour::Fixed };
    simulate_host(&[
        vm(Scenario::SepKernel, KvmFlavour::Fixed, 11),
        vm(Scenario::Muen, muen, 7),
        vm(Scenario::Invept, KvmFlavour::Fixed, 5),
        vm(Scenario::SepKernelNoEpt, KvmFlavour::Fixed, 3),
    ])
    .unwrap()
}

fn loud(anomalies: &[Anomaly]) -> Vec<&Anomaly> {
    anomalies.iter().filter(|a| a.severity > Severity::Info).collect()
}

fn replay(events: &[Event]) -> (Vec<Anomaly>, Model) {
    let mut model = Model::default();
    let anomalies = model.run(events);
    (anomalies, model)
}

/// The host's events as read back from its ftrace text.
fn through_text(h: &HostSimulation, tgid: bool) -> Vec<Event> {
    let text = sim::text::render_trace(&h.events, &h.text_options(tgid));
    let reader = TextReader::new("host.txt", text.as_bytes(), ReadOptions::default());
    reader.map(Result::unwrap).collect()
}

/// What the buggy VM reports alone, as (rule, host event index).
fn alone(h: &HostSimulation, k: usize) -> Vec<(&'static str, usize)> {
    let (anomalies, _) = replay(&h.vms[k].simulation.events);
    loud(&anomalies)
        .iter()
        .map(|a| (a.rule.name(), h.index_of(k, usize::try_from(a.at.0).unwrap()).unwrap()))
        .collect()
}

#[test]
fn four_correct_vms_with_equal_vcpu_ids_replay_clean() {
    let h = host(false);
    for k in 0..4 {
        assert!(loud(&replay(&h.vms[k].simulation.events).0).is_empty(), "VM {k} alone");
    }
    for (what, events) in [
        ("in memory, tgid", h.events.clone()),
        (
            "in memory, no tgid",
            h.events.iter().map(|e| Event { tgid: None, ..e.clone() }).collect(),
        ),
        ("text with the tgid column", through_text(&h, true)),
        ("text without tgid", through_text(&h, false)),
    ] {
        let (anomalies, model) = replay(&events);
        assert!(loud(&anomalies).is_empty(), "{what}: {:#?}", loud(&anomalies));
        let summary = model.summary();
        assert_eq!(summary.vms.len(), 4, "{what}: {:?}", summary.vms);
        assert_eq!(summary.vcpus, [0, 1, 0, 1, 0, 1, 0, 1], "{what}");
    }
}

#[test]
fn the_buggy_vm_and_only_it_reports_what_it_reports_alone() {
    let h = host(true);
    let expected = alone(&h, 1);
    assert!(!expected.is_empty(), "the buggy Muen VM reports its bug alone");
    let muen_tgid = h.vms[1].tgid;
    for (what, events, with_tgid) in [
        ("in memory, tgid", h.events.clone(), true),
        (
            "in memory, no tgid",
            h.events.iter().map(|e| Event { tgid: None, ..e.clone() }).collect(),
            false,
        ),
        ("text with the tgid column", through_text(&h, true), true),
        ("text without tgid", through_text(&h, false), false),
    ] {
        let (anomalies, model) = replay(&events);
        let got: Vec<(&str, usize)> = loud(&anomalies)
            .iter()
            .map(|a| (a.rule.name(), usize::try_from(a.at.0).unwrap()))
            .collect();
        assert_eq!(got, expected, "{what}");
        // Every one is on a vCPU of the Muen VM's process.
        let vms = model.vms();
        for a in loud(&anomalies) {
            let Actor::Vcpu(v) = a.vcpu else { panic!("{what}: {a:?}") };
            let vm = &vms[v.vm.0 as usize];
            let pids: Vec<i32> = vm.vcpus.iter().map(|(_, pid)| *pid).collect();
            assert!(
                pids.iter().all(|p| (muen_tgid..muen_tgid + 1000).contains(p)),
                "{what}: {a:?} on {vm:?}"
            );
            assert_eq!(vm.tgid, with_tgid.then_some(muen_tgid), "{what}");
            assert_eq!(vm.inferred, !with_tgid, "{what}");
        }
    }
}

#[test]
fn replay_and_stats_show_the_vms_apart() {
    let h = host(true);
    let dir = std::env::temp_dir().join(format!("vmxray-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.txt");
    std::fs::write(&path, sim::text::render_trace(&h.events, &h.text_options(true))).unwrap();
    let bin = env!("CARGO_BIN_EXE_vmxray");
    let replay = std::process::Command::new(bin).arg("replay").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(1), "{text}");
    assert!(text.contains("4 VMs:"), "{text}");
    assert!(text.contains(&format!("pid {}", h.vms[1].tgid)), "{text}");
    assert!(text.contains("vm1 vcpu"), "the anomalies name the second VM: {text}");
    let stats = std::process::Command::new(bin)
        .args(["stats", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let by_vm = report["exits"]["by_vm"].as_array().expect("by_vm rows");
    assert_eq!(by_vm.len(), 4, "{by_vm:?}");
    let total: u64 = by_vm.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(total, report["exits"]["total"].as_u64().unwrap());
    // The per-vCPU rows keep each VM's vCPU 0 apart.
    let vcpu0: Vec<&serde_json::Value> = report["exits"]["by_vcpu"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["vcpu"]["id"] == 0)
        .collect();
    assert_eq!(vcpu0.len(), 4, "{vcpu0:?}");
    // dump --vm keeps one VM's events.
    let dump = std::process::Command::new(bin)
        .args(["dump", "--vm", &h.vms[2].tgid.to_string()])
        .arg(&path)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&dump.stdout);
    let expected = h.vms[2].simulation.events.len();
    assert_eq!(lines.lines().count(), expected, "{}", String::from_utf8_lossy(&dump.stderr));
    let mut by_vm: BTreeMap<u32, usize> = BTreeMap::new();
    let mut reader = open(&path, ReadOptions::default()).unwrap();
    let mut model = Model::default();
    for e in reader.by_ref() {
        let step = model.step(&e.unwrap());
        if let Some(vm) = step.actor.and_then(Actor::vm) {
            *by_vm.entry(vm.0).or_default() += 1;
        }
    }
    assert_eq!(by_vm.len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
