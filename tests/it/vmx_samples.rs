//! The committed real-VMX samples (samples/real/vmx/, made by scripts/vmx-lab.sh: lab guests
//! under a real kvm_intel in Bochs, Debian 6.1 and 6.12): each reads to its end, comes from the
//! kernel its name says, holds the hardware exits its guest must cause, and replays with no
//! anomaly at warning or above.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use vmxray_samples::lab::vmx::{self, TraceSummary};

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples/real/vmx")
}

/// `uname -r` prefix of each kernel generation's pinned package.
const KERNELS: [(&str, &str); 2] = [("6.1", "6.1.0-"), ("6.12", "6.12.")];

/// An exit reason and its exact count, or `None` for "at least once".
type Exits = Vec<(&'static str, Option<u64>)>;

/// What each single-level guest must show: (scenario, ept, its exits).
fn expected() -> Vec<(&'static str, bool, Exits)> {
    vec![
        // With EPT a guest CR3 load does not exit; with shadow paging each one is a CR_ACCESS
        // (3 cycles over 4 roots) and the guest's page walks fault (#PF: EXCEPTION_NMI).
        (
            "cr3-switch",
            true,
            vec![("EPT_VIOLATION", None), ("IO_INSTRUCTION", Some(1)), ("HLT", Some(1))],
        ),
        (
            "cr3-switch",
            false,
            vec![
                ("CR_ACCESS", Some(12)),
                ("EXCEPTION_NMI", None),
                ("IO_INSTRUCTION", Some(1)),
                ("HLT", Some(1)),
            ],
        ),
        // #UD cannot be delivered through an empty IDT: #DF, then the triple fault exit. The
        // #UD itself is not intercepted with EPT, it is (EXCEPTION_NMI) with shadow paging.
        ("triple-fault", true, vec![("IO_INSTRUCTION", Some(1)), ("TRIPLE_FAULT", Some(1))]),
        (
            "triple-fault",
            false,
            vec![("CR_ACCESS", None), ("IO_INSTRUCTION", Some(1)), ("TRIPLE_FAULT", Some(1))],
        ),
        ("pf-triple-fault", true, vec![("IO_INSTRUCTION", Some(1)), ("TRIPLE_FAULT", Some(1))]),
        (
            "pf-triple-fault",
            false,
            vec![("EXCEPTION_NMI", None), ("IO_INSTRUCTION", Some(1)), ("TRIPLE_FAULT", Some(1))],
        ),
        ("io-loop-200", true, vec![("IO_INSTRUCTION", Some(200)), ("EPT_VIOLATION", None)]),
        ("io-loop-200", false, vec![("IO_INSTRUCTION", Some(200))]),
        ("multi-vcpu-50", true, vec![("IO_INSTRUCTION", Some(100))]),
        ("multi-vcpu-50", false, vec![("IO_INSTRUCTION", Some(100))]),
        // The unbacked GPA: EPT violation on first touch, then KVM's MMIO SPTE misconfig.
        (
            "mmio",
            true,
            vec![("EPT_MISCONFIG", None), ("IO_INSTRUCTION", Some(2)), ("HLT", Some(1))],
        ),
        (
            "mmio",
            false,
            vec![("EXCEPTION_NMI", None), ("IO_INSTRUCTION", Some(2)), ("HLT", Some(1))],
        ),
    ]
}

fn summary_of(name: &str) -> TraceSummary {
    let path = dir().join(name);
    vmx::summarize(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn single_level_samples_hold_their_guests_hardware_exits() {
    for (kernel, release) in KERNELS {
        for (scenario, ept, reasons) in expected() {
            let name = format!("{scenario}-{}-{kernel}.dat", if ept { "ept" } else { "shadow" });
            let summary = summary_of(&name);
            assert_eq!(summary.lost, 0, "{name}");
            assert!(
                summary.kernel.as_deref().is_some_and(|k| k.starts_with(release)),
                "{name}: kernel {:?}",
                summary.kernel
            );
            for (reason, count) in reasons {
                let got = summary.exit_reasons.get(reason).copied().unwrap_or(0);
                match count {
                    Some(n) => assert_eq!(got, n, "{name}: {reason} in {:?}", summary.exit_reasons),
                    None => assert!(got > 0, "{name}: no {reason} in {:?}", summary.exit_reasons),
                }
            }
            if !ept {
                assert!(!summary.exit_reasons.contains_key("EPT_VIOLATION"), "{name}");
            }
            // Every exit is followed by an entry, except the last one (shutdown, hlt, or the
            // recording's end).
            let entries = summary.by_name.get("kvm_entry").copied().unwrap_or(0);
            let exits: u64 = summary.exit_reasons.values().sum();
            assert!(
                entries + 1 >= exits && entries <= exits + 1,
                "{name}: {entries} entries, {exits} exits"
            );
        }
    }
}

#[test]
fn nested_samples_show_l1_running_l2() {
    for ((kernel, release), ept) in KERNELS.into_iter().flat_map(|k| [(k, true), (k, false)]) {
        let name = format!("linux-l1-{}-{kernel}.dat", if ept { "ept" } else { "shadow" });
        let summary = summary_of(&name);
        if !ept {
            // L0 shadows L1's page tables: CR accesses and #PF exits, no EPT exit.
            for reason in ["CR_ACCESS", "EXCEPTION_NMI"] {
                assert!(
                    summary.exit_reasons.contains_key(reason),
                    "{name}: {:?}",
                    summary.exit_reasons
                );
            }
            assert!(!summary.exit_reasons.contains_key("EPT_VIOLATION"), "{name}");
        }
        assert!(summary.kernel.as_deref().is_some_and(|k| k.starts_with(release)), "{name}");
        for event in ["kvm_nested_vmenter", "kvm_nested_vmexit", "kvm_nested_vmexit_inject"] {
            assert!(
                summary.by_name.contains_key(event),
                "{name}: no {event}: {:?}",
                summary.by_name
            );
        }
        // L1's VMX instructions exit to L0; L2's port IO exits reach L1 through L0.
        for reason in ["VMRESUME", "IO_INSTRUCTION"] {
            assert!(
                summary.exit_reasons.contains_key(reason),
                "{name}: {:?}",
                summary.exit_reasons
            );
        }
        assert!(
            summary.nested_exit_reasons.contains_key("IO_INSTRUCTION"),
            "{name}: {:?}",
            summary.nested_exit_reasons
        );
    }
}

#[test]
fn real_vmx_samples_replay_without_warnings() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    assert!(files.len() >= 28, "{} traces in {}", files.len(), dir().display());
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let out = Command::new(BIN)
            .args(["replay", "--fail-on", "warning", "--severity", "warning", "--format", "jsonl"])
            .arg(file)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["type"] == "anomaly" {
                rules.entry(file.display().to_string()).or_default().push(line.to_owned());
            }
        }
        assert!(
            out.status.success() || rules.contains_key(&file.display().to_string()),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(rules.is_empty(), "anomalies at warning or above on real VMX traces: {rules:#?}");
}

/// `vmxray lab --vms N` under the real kvm_intel: N VMs at once, each its own process with the
/// same vCPU ids, in one host trace. Each VM is told apart by its process (the recorder's
/// identity lines), replays clean, and `stats --vm` counts exactly its own guest's exits.
#[test]
fn several_real_vms_in_one_host_trace_stay_apart() {
    // (file, VMs, vCPUs per VM, IO_INSTRUCTION exits per VM)
    let hosts = [
        ("vms4-io-loop-100-6.1.dat", 4, vec![0u64], 100u64),
        ("vms3-multi-vcpu-20-6.1.dat", 3, vec![0, 1], 40),
    ];
    for (name, vms, vcpus, io_per_vm) in hosts {
        let file = dir().join(name);
        let out = Command::new(BIN)
            .args(["replay", "--fail-on", "warning", "--format", "jsonl"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["type"] == "summary")
            .unwrap();
        let found = summary["vms"].as_array().unwrap();
        assert_eq!(found.len(), vms, "{name}: {found:?}");
        let mut tgids = Vec::new();
        for vm in found {
            assert_eq!(vm["inferred"], false, "{name}: the recorder named every VM's process");
            tgids.push(vm["tgid"].as_i64().unwrap());
            let mut ids: Vec<u64> =
                vm["vcpus"].as_array().unwrap().iter().map(|v| v[0].as_u64().unwrap()).collect();
            ids.sort_unstable();
            assert_eq!(ids, vcpus, "{name}: {vm}");
        }
        tgids.sort_unstable();
        tgids.dedup();
        assert_eq!(tgids.len(), vms, "{name}: one process per VM");
        for tgid in tgids {
            let out = Command::new(BIN)
                .args(["stats", "--format", "json", "--vm", &tgid.to_string()])
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let io = stats["exits"]["by_reason"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["reason"]["name"] == "IO_INSTRUCTION")
                .map_or(0, |r| r["count"].as_u64().unwrap());
            assert_eq!(io, io_per_vm, "{name}: VM pid {tgid}");
        }
    }
}
