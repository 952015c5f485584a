//! Checks shared by the tests of our own L1 hypervisor's recordings (`l1_samples.rs` over the
//! committed ones, `l1_bochs.rs` end to end under Bochs): a trace against the ground truth
//! the L1 reported while it was being recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use vmxray_samples::lab::l1::{Record, Truth};

/// The vmcs12 fields whose values the L1 reports and traces reveal.
pub const FIELDS: [&str; 3] = ["GUEST_CR3", "EPT_POINTER", "HOST_CR3"];

/// Reads `<trace>.truth.json`.
pub fn read_truth(trace: &Path) -> Truth {
    let path = vmxray_samples::lab::l1::truth_path(trace);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JSON lines `vmxray ARGS PATH` prints (its exit status must be 0 or 1).
pub fn vmxray_jsonl(args: &[&str], path: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_vmxray")).args(args).arg(path).output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "vmxray {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The L1 itself saw what it expected: every check held, every vCPU ended as planned, and
/// it handled at least one VM exit.
pub fn check_l1_passed(path: &Path, truth: &Truth) {
    assert!(
        truth.passed(),
        "{}: failed checks {:?}, vCPUs {:?}",
        path.display(),
        truth.failed_checks(),
        truth.vcpus
    );
    assert!(
        truth.records.iter().any(|r| matches!(r, Record::Exit { .. })),
        "{}: the L1 handled no VM exit",
        path.display()
    );
}

/// What the L1's records say each nested VM entry that reached KVM's `kvm_nested_vmenter`
/// carried: per vCPU, in order, `(vmcs, GUEST_RIP, EPTP or else GUEST_CR3)`. Every entry
/// that got past KVM's VMfail checks ended in an exit the L1 recorded; the entry carried the
/// values the L1 last wrote, or, for GUEST_RIP, what the previous exit left.
pub fn expected_vmenters(truth: &Truth) -> BTreeMap<u32, Vec<(u64, u64, u64)>> {
    #[derive(Default, Clone, Copy)]
    struct Vmcs {
        rip: u64,
        cr3: u64,
        eptp: u64,
    }
    let mut state: BTreeMap<(u32, u64), Vmcs> = BTreeMap::new();
    let mut out: BTreeMap<u32, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for r in &truth.records {
        match r {
            Record::Vmwrite { vcpu, vmcs, field, value, .. } => {
                let s = state.entry((*vcpu, *vmcs)).or_default();
                match field.as_str() {
                    "GUEST_RIP" => s.rip = *value,
                    "GUEST_CR3" => s.cr3 = *value,
                    "EPT_POINTER" => s.eptp = *value,
                    _ => {}
                }
            }
            Record::Exit { vcpu, vmcs, guest_rip, .. } => {
                let s = state.entry((*vcpu, *vmcs)).or_default();
                let pgd = if s.eptp != 0 { s.eptp } else { s.cr3 };
                out.entry(*vcpu).or_default().push((*vmcs, s.rip, pgd));
                s.rip = *guest_rip;
            }
            _ => {}
        }
    }
    out
}

/// Every `kvm_nested_vmenter` L0 traced names the VMCS the L1 entered, with the GUEST_RIP and
/// GUEST_CR3/EPT_POINTER the L1 had given it, in the L1's order, per vCPU (by thread).
pub fn check_vmenters(path: &Path, truth: &Truth) {
    let vmenters =
        vmxray_jsonl(&["dump", "--format", "jsonl", "--event", "kvm_nested_vmenter"], path);
    let tid_to_vcpu: BTreeMap<u64, u32> =
        truth.vcpus.iter().map(|v| (u64::from(v.tid), v.vcpu)).collect();
    let mut got: BTreeMap<u32, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for e in &vmenters {
        let pid = e["pid"].as_u64().unwrap();
        let vcpu = *tid_to_vcpu
            .get(&pid)
            .unwrap_or_else(|| panic!("{}: vmenter from thread {pid}", path.display()));
        let f = &e["fields"];
        got.entry(vcpu).or_default().push((
            f["vmcb"].as_u64().unwrap(),
            f["nested_rip"].as_u64().unwrap(),
            f["guest_pgd"].as_u64().unwrap(),
        ));
    }
    let want = expected_vmenters(truth);
    assert!(!want.is_empty(), "{}: no entries in the truth", path.display());
    assert_eq!(got, want, "{}: kvm_nested_vmenter vs the L1's records", path.display());
}

/// Every GUEST_CR3/EPT_POINTER/HOST_CR3 value `vmxray fields` reconstructs for a vmcs12
/// equals one the L1 wrote there (on the bits its source reveals).
pub fn check_fields(path: &Path, truth: &Truth) {
    let mut written: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    for field in FIELDS {
        for (vmcs, value) in truth.writes(field) {
            written
                .entry((format!("vmcs12@{vmcs:#x}"), field.to_owned()))
                .or_default()
                .insert(value);
        }
    }
    let mut checked = 0;
    for o in vmxray_jsonl(&["fields", "--format", "jsonl", "--all"], path) {
        if o["type"] != "field" {
            continue;
        }
        let vmcs = o["vmcs"].as_str().unwrap();
        let field = o["field"].as_str().unwrap();
        if !vmcs.starts_with("vmcs12@") || !FIELDS.contains(&field) {
            continue;
        }
        let (value, mask) = (o["value"].as_u64().unwrap(), o["mask"].as_u64().unwrap());
        let Some(values) = written.get(&(vmcs.to_owned(), field.to_owned())) else {
            panic!("{}: {vmcs} {field} = {value:#x} but the L1 never wrote it", path.display())
        };
        assert!(
            values.iter().any(|w| w & mask == value & mask),
            "{}: {vmcs} {field} = {value:#x} (mask {mask:#x}, from {}), the L1 wrote {values:x?}",
            path.display(),
            o["source"]
        );
        checked += 1;
    }
    assert!(checked > 0, "{}: no vmcs12 GUEST_CR3/EPT_POINTER observed", path.display());
}

/// A `--profile vmcs` recording: the probes on `nested_vmx_load_cr3` revealed GUEST_CR3 and
/// HOST_CR3 of every vmcs12 the L1 set up (also under nested EPT, where
/// `kvm_nested_vmenter` shows only the EPTP); [`check_fields`] checks their values.
pub fn check_probes(path: &Path, truth: &Truth) {
    let mut revealed: BTreeSet<(String, String)> = BTreeSet::new();
    for o in vmxray_jsonl(&["fields", "--format", "jsonl", "--all"], path) {
        if o["type"] == "field" && o["source"] == "vmxray_probe" {
            revealed.insert((
                o["vmcs"].as_str().unwrap().to_owned(),
                o["field"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for r in &truth.records {
        if let Record::Subject { vmcs, .. } = r {
            for field in ["GUEST_CR3", "HOST_CR3"] {
                let key = (format!("vmcs12@{vmcs:#x}"), field.to_owned());
                assert!(revealed.contains(&key), "{}: no probe revealed {key:?}", path.display());
            }
        }
    }
}

/// Replay's anomalies at warning or above, counted by rule.
pub fn anomalies_above_info(path: &Path) -> BTreeMap<String, usize> {
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for a in vmxray_jsonl(&["replay", "--format", "jsonl"], path) {
        if a["type"] == "anomaly" && a["severity"] != "info" {
            *by_rule.entry(a["rule"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    by_rule
}

/// `vmxray replay --explain` states what the L1's records say: every vmcs12 the L1 entered and
/// no other, as many nested VM-Enters as reached `kvm_nested_vmenter`, and for each vmcs12 the
/// GUEST_RIP and (with nested EPT) the EPTP of its last entry.
pub fn check_explain(path: &Path, truth: &Truth) {
    let want = expected_vmenters(truth);
    let lines = vmxray_jsonl(&["replay", "--explain", "--format", "jsonl"], path);
    let explain = lines
        .iter()
        .find(|l| l["type"] == "explain")
        .unwrap_or_else(|| panic!("{}: no explain line", path.display()));
    let vcpus = explain["vcpus"].as_array().unwrap();
    let entries: u64 = vcpus
        .iter()
        .flat_map(|v| v["nested_entries"].as_array().unwrap())
        .map(|pair| pair[1].as_u64().unwrap())
        .sum();
    let want_entries: usize = want.values().map(Vec::len).sum();
    assert_eq!(entries, want_entries as u64, "{}: nested VM-Enters", path.display());
    // The last entry of each vmcs12 that only one vCPU used.
    let mut owners: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (vcpu, list) in &want {
        for &(vmcs, rip, pgd) in list {
            owners.entry(vmcs).or_default().insert(*vcpu);
            last.insert(vmcs, (rip, pgd));
        }
    }
    let mut listed = BTreeSet::new();
    for v in vcpus {
        for r in v["vmcs12"].as_array().unwrap() {
            let vmptr = r["vmptr"].as_u64().unwrap();
            listed.insert(vmptr);
            let Some(&(rip, pgd)) = last.get(&vmptr) else { continue };
            if owners[&vmptr].len() > 1 {
                continue;
            }
            assert_eq!(r["guest_rip"].as_u64(), Some(rip), "{}: {vmptr:#x}", path.display());
            if r["nested_ept"] == true {
                assert_eq!(r["eptp"].as_u64(), Some(pgd), "{}: {vmptr:#x}", path.display());
            }
        }
    }
    let entered: BTreeSet<u64> = owners.keys().copied().collect();
    assert_eq!(listed, entered, "{}: the vmcs12s explained", path.display());
}
