//! The built `vmxray` executable: exit statuses and messages of `replay` and `triage`.

use std::process::Command;

fn vmxray(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmxray")).args(args).output().expect("runs vmxray")
}

#[test]
fn unreadable_inputs_exit_2_with_the_file_named() {
    for cmd in ["replay", "triage"] {
        let out = vmxray(&[cmd, "/nonexistent/trace.dat"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/nonexistent/trace.dat"), "{err}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    let out = vmxray(&["replay", "--rules", "no_such_rule", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed_subject_cr3"));
    let out = vmxray(&["replay", "--fail-on", "loud", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn list_rules() {
    let out = vmxray(&["replay", "--list-rules"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("guest_mmu_root_not_reacquired") && text.contains("f8aa7e3958bc"));
}
