//! Real KVM with a historical nested-VMX bug put back (`samples/vmx/bugs/`, recorded in the
//! real-VMX lab, `samples/real/vmx/bugs/`): replay finds each reproduced bug with the rule that
//! checks its fix, and nothing at warning or above on the stock module's recording of the same
//! scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/real/vmx/bugs")
}

/// `rule:severity` → count, of the anomalies at warning or above.
fn findings(file: &str) -> BTreeMap<String, usize> {
    let path = dir().join(file);
    let out = Command::new(env!("CARGO_BIN_EXE_vmxray"))
        .args(["replay", "--format", "jsonl", "--severity", "warning"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}: {out:?}", path.display());
    let mut found = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "anomaly" {
            let key =
                format!("{}:{}", v["rule"].as_str().unwrap(), v["severity"].as_str().unwrap());
            *found.entry(key).or_default() += 1;
        }
    }
    found
}

#[test]
fn each_reproduced_bug_is_found_by_its_rule_and_stock_kvm_is_clean() {
    // (bug, recording stem, the rules that must fire on the buggy module)
    let cases: &[(&str, &str, &[&str])] = &[
        ("a", "a", &["changed_subject_cr3:error", "hlt_cancelled_exit_state:error"]),
        ("a", "a-vmcs", &["changed_subject_cr3:error", "hlt_cancelled_exit_state:error"]),
        ("b", "b", &["late_vmfail_l1_cr3:error"]),
        ("b", "b-host", &["late_vmfail_l1_cr3:error"]),
        ("c", "c", &["guest_mmu_root_not_reacquired:warning"]),
        ("d", "d", &["reset_root_role:error"]),
        ("x1", "x1", &["ept_violation_permitted_access:error"]),
        ("x2", "x2", &["pae_pdptes_from_cr3:error"]),
    ];
    let mut checked = 0;
    for (bug, stem, rules) in cases {
        for kernel in ["6.1", "6.12"] {
            let buggy = format!("{stem}-buggy-{kernel}.dat");
            if !dir().join(&buggy).exists() {
                continue;
            }
            let found = findings(&buggy);
            let expected: BTreeMap<String, usize> =
                rules.iter().map(|r| ((*r).to_owned(), 1)).collect();
            assert_eq!(found, expected, "bug ({bug}): {buggy}");
            let stock = format!("{stem}-stock-{kernel}.dat");
            assert_eq!(findings(&stock), BTreeMap::new(), "{stock}");
            checked += 1;
        }
    }
    assert!(
        checked >= 13,
        "expected the a, b, c, d, x1 and x2 recordings on both kernels, and a-vmcs"
    );
}

fn truth(file: &str) -> Value {
    let path = dir().join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The L1's `log` texts of a truth file.
fn logs(t: &Value) -> Vec<&str> {
    t["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "log")
        .filter_map(|r| r["text"].as_str())
        .collect()
}

/// The CR3 in the L1's "CR3 0x... before the VMLAUNCH" line.
fn cr3_before(t: &Value) -> u64 {
    let line = logs(t)
        .into_iter()
        .find(|l| l.ends_with("before the VMLAUNCH"))
        .expect("the L1 logs its CR3 before the VMLAUNCH");
    let hex = line.split_whitespace().nth(1).unwrap().trim_start_matches("0x");
    u64::from_str_radix(hex, 16).unwrap()
}

/// Bug (b), `vmx-late-vmfail` with kvm_intel ept=0: on stock KVM the VMLAUNCH fails late
/// (VMfailValid, error 7, only the CPU checks TPR threshold against VTPR), L1 reads back the
/// CR3 it had and goes on; on the buggy set L1 never runs again after the VM-Fail (shutdown),
/// and the trace's L1 CR3 at the VMLAUNCH is the one the L1 logged.
#[test]
fn late_vmfail_truth_agrees_with_the_traces() {
    let mut checked = 0;
    for kernel in ["6.1", "6.12"] {
        let stock = format!("b-stock-{kernel}.dat.truth.json");
        if !dir().join(&stock).exists() {
            continue;
        }
        let t = truth(&stock);
        assert_eq!(t["scenario"], "vmx-late-vmfail");
        assert_eq!(t["vcpus"][0]["end"], "done", "{stock}");
        let records = t["records"].as_array().unwrap();
        let launch = records
            .iter()
            .find(|r| r["kind"] == "vmx_op" && r["op"] == "vmlaunch")
            .expect("the late-failing VMLAUNCH");
        assert_eq!((launch["result"].as_u64(), launch["error"].as_u64()), (Some(2), Some(7)));
        let cr3 = records
            .iter()
            .find(|r| r["what"] == "L1's CR3 after the late VM-Fail is its CR3 before")
            .expect("the CR3 check");
        assert_eq!(cr3["ok"], true, "{stock}");
        assert_eq!(cr3["expected"].as_u64(), Some(cr3_before(&t)));
        assert!(records.iter().all(|r| r["kind"] != "check" || r["ok"] == true), "{stock}");

        let buggy_file = format!("b-buggy-{kernel}.dat.truth.json");
        let b = truth(&buggy_file);
        assert_eq!(b["vcpus"][0]["end"], "shutdown", "{buggy_file}");
        let before = cr3_before(&b);
        assert_eq!(before, cr3_before(&t), "the same L1 CR3 on both sets");
        // Nothing after the VMLAUNCH: no vmx_op of it, no check.
        let b_records = b["records"].as_array().unwrap();
        assert!(!b_records.iter().any(|r| r["op"] == "vmlaunch" || r["kind"] == "check"));
        // The trace's anomaly names that CR3 as L1's.
        let out = Command::new(env!("CARGO_BIN_EXE_vmxray"))
            .args(["replay", "--format", "jsonl", "--severity", "error"])
            .arg(dir().join(format!("b-buggy-{kernel}.dat")))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("late_vmfail_l1_cr3") && text.contains(&format!("{before:#x}")),
            "{text}"
        );
        checked += 1;
    }
    assert!(checked >= 2, "expected the (b) recordings on 6.1 and 6.12");
}

/// A real-VMX host of four VMs with the same vCPU ids, one of them (our L1 running
/// `vmx-late-vmfail`) meeting bug (b), three `io-loop` guests beside it, all recorded together
/// (`VMXBUGS_HOST` in samples/vmx/bugs/guest-step.sh): the bug is reported on that VM alone,
/// each VM named by its process; on the stock module nothing is.
#[test]
fn a_host_with_one_buggy_vm_reports_that_vm_alone() {
    for (kind, want) in [("buggy", 1), ("stock", 0)] {
        let path = dir().join(format!("b-host-{kind}-6.1.dat"));
        let out = Command::new(env!("CARGO_BIN_EXE_vmxray"))
            .args(["replay", "--format", "jsonl", "--severity", "warning"])
            .arg(&path)
            .output()
            .unwrap();
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary = lines.iter().find(|v| v["type"] == "summary").unwrap();
        let vms = summary["vms"].as_array().unwrap();
        assert_eq!(vms.len(), 4, "{kind}: {vms:?}");
        assert!(vms.iter().all(|vm| vm["tgid"].is_i64() && vm["inferred"] == false), "{vms:?}");
        assert!(vms.iter().all(|vm| vm["vcpus"][0][0] == 0), "every VM has its vCPU 0");
        let anomalies: Vec<&Value> = lines.iter().filter(|v| v["type"] == "anomaly").collect();
        assert_eq!(anomalies.len(), want, "{kind}: {anomalies:?}");
        if let Some(a) = anomalies.first() {
            assert_eq!(a["rule"], "late_vmfail_l1_cr3");
            // The VM of the anomaly is the one whose vCPU took the late VM-Fail.
            let dump = Command::new(env!("CARGO_BIN_EXE_vmxray"))
                .args(["dump", "--event", "kvm_nested_vmenter_failed", "--vm"])
                .arg(format!("vm{}", a["vm"]))
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&dump.stdout);
            assert_eq!(text.matches("kvm_nested_vmenter_failed").count(), 1, "{text}");
        }
    }
}

/// The checks of a truth file: `what` → (expected, actual, ok).
fn checks(t: &Value) -> BTreeMap<String, (u64, u64, bool)> {
    t["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "check")
        .map(|r| {
            let what = r["what"].as_str().unwrap().to_owned();
            let v = (r["expected"].as_u64().unwrap(), r["actual"].as_u64().unwrap());
            (what, (v.0, v.1, r["ok"] == true))
        })
        .collect()
}

/// The JSON lines of `vmxray replay --format jsonl [ARGS] FILE`.
fn replay_lines(file: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_vmxray"))
        .args(["replay", "--format", "jsonl"])
        .args(args)
        .arg(dir().join(file))
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{file}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A rule's status line in the summary of `lines`.
fn rule_status<'a>(lines: &'a [Value], rule: &str) -> &'a Value {
    let summary = lines.iter().find(|v| v["type"] == "summary").unwrap();
    summary["rules"].as_array().unwrap().iter().find(|r| r["rule"] == rule).unwrap()
}

/// The kernels the blind bugs x1–x3 were recorded on.
const BLIND_KERNELS: [&str; 2] = ["6.1", "6.12"];

/// Blind bug x1, `vmx-ept-upper-nox` (an EPT12 PDE R|W over RWX leaves): the L1 got the EPT
/// violation of L2's fetch with permissions R,W (0x19c) on stock and W,X (0x1b4) on the
/// buggy set, and the anomaly quotes the qualification the L1 read.
#[test]
fn blind_bug_x1_truth_agrees_with_the_traces() {
    let what = "the EPT violation's permissions are R,W, not X (bits 5:3 = 0b011)";
    for (kind, permitted, qual, kernel) in [("stock", 3, 0x19c), ("buggy", 6, 0x1b4)]
        .into_iter()
        .flat_map(|(k, p, q)| BLIND_KERNELS.map(|kernel| (k, p, q, kernel)))
    {
        let t = truth(&format!("x1-{kind}-{kernel}.dat.truth.json"));
        assert_eq!(t["scenario"], "vmx-ept-upper-nox");
        assert_eq!(checks(&t)[what], (3, permitted, permitted == 3), "{kind} {kernel}");
        let exit = t["records"].as_array().unwrap().iter().find(|r| r["kind"] == "exit").unwrap();
        assert_eq!(
            (exit["reason"].as_u64(), exit["qualification"].as_u64()),
            (Some(48), Some(qual)),
            "{kind} {kernel}"
        );
        let lines = replay_lines(&format!("x1-{kind}-{kernel}.dat"), &[]);
        assert_eq!(
            rule_status(&lines, "ept_violation_permitted_access")["checks"],
            1,
            "{kind} {kernel}"
        );
        let anomalies: Vec<&Value> = lines.iter().filter(|v| v["type"] == "anomaly").collect();
        if kind == "buggy" {
            assert_eq!(anomalies.len(), 1, "{anomalies:?}");
            assert!(anomalies[0]["message"].as_str().unwrap().contains("0x1b4"));
        } else {
            assert!(anomalies.is_empty(), "{anomalies:?}");
        }
    }
}

/// Blind bug x2, `vmx-pae-pdpte` (a PAE L2 under nested EPT, CR3 at 0xff bytes): stock enters
/// L2 (its `out`s and HLT reach the L1, PDPTR0 read back as written); the buggy set fails the
/// entry with qualification 2 (ENTRY_FAIL_PDPTE), the failure the anomaly reports.
#[test]
fn blind_bug_x2_truth_agrees_with_the_traces() {
    for kernel in BLIND_KERNELS {
        let stock = truth(&format!("x2-stock-{kernel}.dat.truth.json"));
        assert_eq!(stock["scenario"], "vmx-pae-pdpte");
        let c = checks(&stock);
        assert!(c.values().all(|v| v.2), "{kernel}: {c:?}");
        assert!(c["GUEST_PDPTR0 after the exit is the one L1 wrote"].2);
        let buggy = truth(&format!("x2-buggy-{kernel}.dat.truth.json"));
        let exit =
            buggy["records"].as_array().unwrap().iter().find(|r| r["kind"] == "exit").unwrap();
        assert_eq!(
            (exit["reason"].as_u64(), exit["qualification"].as_u64()),
            (Some(0x8000_0021), Some(2)),
            "{kernel}"
        );
        let lines = replay_lines(&format!("x2-buggy-{kernel}.dat"), &[]);
        let a = lines.iter().find(|v| v["type"] == "anomaly").unwrap();
        assert_eq!(a["rule"], "pae_pdptes_from_cr3");
        assert!(a["message"].as_str().unwrap().contains("load_pdptrs"));
        let stock_lines = replay_lines(&format!("x2-stock-{kernel}.dat"), &[]);
        assert!(rule_status(&stock_lines, "pae_pdptes_from_cr3")["checks"].as_u64() >= Some(1));
        // Triage tells the failed entry's story with the rule's verdict, not L1's fault.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmxray"))
            .args(["triage", "--format", "json"])
            .arg(dir().join(format!("x2-buggy-{kernel}.dat")))
            .output()
            .unwrap();
        let triage: Value = serde_json::from_slice(&out.stdout).unwrap();
        let story = triage["crashes"][0]["what_happened"][0].as_str().unwrap();
        assert!(story.contains("The check itself is at fault here, not L1's vmcs12"), "{story}");
        assert!(!story.contains("L1 wrote into the vmcs12 is invalid"), "{story}");
    }
}

/// Blind bug x3, `vmx-lmsw` (L1 owns CR0.TS/MP; L2's lmsw sets TS, RAX leaves it clear): the
/// trace alone cannot tell an LMSW L0 rightly handles from one it should have reflected, so
/// `lmsw_exit_routing` is not checkable without vmcs12's CR0 mask and read shadow; with the
/// L1's values as VMCS-field records (`x3-*.dat.fields`) it catches the buggy set and passes
/// stock.
#[test]
fn blind_bug_x3_needs_the_l1s_cr0_mask_and_is_caught_with_it() {
    let what = "L2's lmsw setting CR0.TS (owned by L1) exits to L1 (CR_ACCESS)";
    for (kind, reason, anomalies, kernel) in [("stock", 28, 0), ("buggy", 30, 1)]
        .into_iter()
        .flat_map(|(k, r, a)| BLIND_KERNELS.map(|kernel| (k, r, a, kernel)))
    {
        let file = format!("x3-{kind}-{kernel}.dat");
        let t = truth(&format!("{file}.truth.json"));
        assert_eq!(t["scenario"], "vmx-lmsw");
        assert_eq!(checks(&t)[what], (28, reason, reason == 28), "{file}");
        // The trace alone: silent, and says why.
        let blind = replay_lines(&file, &["--severity", "warning"]);
        assert!(blind.iter().all(|v| v["type"] != "anomaly"), "{file}: {blind:?}");
        assert_eq!(rule_status(&blind, "lmsw_exit_routing")["status"], "not_checkable");
        // With the L1's CR0 mask and read shadow.
        let fields = dir().join(format!("{file}.fields"));
        let lines =
            replay_lines(&file, &["--severity", "warning", "--fields", fields.to_str().unwrap()]);
        assert_eq!(rule_status(&lines, "lmsw_exit_routing")["checks"], 1, "{file}");
        let found: Vec<&Value> = lines.iter().filter(|v| v["type"] == "anomaly").collect();
        assert_eq!(found.len(), anomalies, "{file}: {found:?}");
        assert!(found.iter().all(|a| a["rule"] == "lmsw_exit_routing" && a["severity"] == "error"));
    }
}

/// Bug (f), `vmx-dirty` on the Bochs model with PML (`corei7_skylake_x`), kvm_intel
/// `pml=1 eptad=1`: the lab's VMM logs the dirty pages of the L1's memory while L2 writes
/// 1024 L2 pages onto four L1 frames. Stock KVM puts every frame in the log every round; with
/// PML left on in vmcs02 the frames are missing from round 1 on (the CPU logged L2 GPAs) and
/// PML_FULL exits happen while L2 runs, which `pml_full_in_l2` reports; stock is clean with
/// the rule checked.
#[test]
fn bug_f_pml_in_vmcs02_loses_l2_writes_and_fills_pml_in_l2() {
    let what = "every frame L2 wrote in this round is in L0's dirty log";
    let mut checked = 0;
    for kernel in ["6.1", "6.12"] {
        if !dir().join(format!("f-buggy-{kernel}.dat")).exists() {
            continue;
        }
        for (kind, per_round) in [("stock", [4, 4, 4]), ("buggy", [4, 0, 0])] {
            let file = format!("f-{kind}-{kernel}.dat");
            let t = truth(&format!("{file}.truth.json"));
            assert_eq!(t["scenario"], "vmx-dirty");
            let dirty: Vec<u64> = t["records"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["kind"] == "check" && r["what"] == what)
                .map(|r| r["actual"].as_u64().unwrap())
                .collect();
            assert_eq!(dirty, per_round, "{file}");
            let lines = replay_lines(&file, &["--severity", "warning"]);
            assert!(rule_status(&lines, "pml_full_in_l2")["checks"].as_u64() >= Some(1));
            let found: Vec<&Value> = lines.iter().filter(|v| v["type"] == "anomaly").collect();
            if kind == "stock" {
                assert!(found.is_empty(), "{file}: {found:?}");
            } else {
                assert!(!found.is_empty(), "{file}");
                assert!(
                    found.iter().all(|a| a["rule"] == "pml_full_in_l2" && a["severity"] == "error"),
                    "{file}: {found:?}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 2, "expected the (f) recordings on 6.1 and 6.12");
}
