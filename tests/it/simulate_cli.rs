//! `vmxray simulate` driven as a user runs it.

use std::process::Command;

fn vmxray() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmxray"))
}

#[test]
fn list_has_one_scenario_per_line_name_first() {
    let out = vmxray().args(["simulate", "--list"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert!(
        names.contains(&"muen") && names.contains(&"dirty-log") && names.contains(&"sepkernel")
    );
    assert!(text.lines().any(|l| l.starts_with("invept ") && l.contains("invept-no-reload(c)")));
}

#[test]
fn writes_the_committed_sample_and_its_truth() {
    let dir = std::env::temp_dir().join(format!("vmxray-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (txt, json) = (dir.join("t.txt"), dir.join("t.json"));
    let status = vmxray()
        .args(["simulate", "muen", "--kvm", "buggy", "--kernel", "6.1", "--seed", "1", "-o"])
        .arg(&txt)
        .arg("--truth")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success());
    let root = env!("CARGO_MANIFEST_DIR");
    let committed = std::fs::read(format!("{root}/samples/sim/muen-buggy-6.1.txt")).unwrap();
    assert_eq!(std::fs::read(&txt).unwrap(), committed);
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(truth["bug"]["bug"], "hlt-stale-cr3");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flavour_is_a_usage_error() {
    let out = vmxray().args(["simulate", "smm", "--kvm", "buggy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no bug to inject"));
}
