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
        ("c", "c", &["guest_mmu_root_not_reacquired:warning"]),
        ("d", "d", &["reset_root_role:error"]),
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
    assert!(checked >= 7, "expected the a, a-vmcs, c and d recordings on both kernels");
}
