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

#[test]
fn stats_prints_perf_kvm_stat_tables_and_the_host_context() {
    let mmio = "samples/real/vmx/mmio-ept-6.1.dat";
    let out = vmxray(&["stats", mmio, "--event", "mmio", "--key", "time"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("\n\nAnalyze events for all VMs, all VCPUs:"), "{text}");
    assert!(text.contains("0x200000:R          1    50.00%    67.24%    270.76us"), "{text}");
    assert!(!text.contains("kvm_exit on"), "perf's table only: {text}");
    let out = vmxray(&["stats", mmio, "--vcpu", "0", "--pid", "1,2", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kvm_stat"]["event"], "vmexit");
    assert_eq!(json["kvm_stat"]["pids"], serde_json::json!([1, 2]));
    assert!(json.get("host_context").is_none(), "no host events in that recording");
    let busy = "samples/real/vmx/context-busy-io-loop-ept-6.1.dat";
    let out = vmxray(&["stats", busy]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("503 exits attributed, 0 not"), "{text}");
    assert!(
        text.contains(
            "exit #5830 IO_INSTRUCTION 24.2 ms: 23.9 ms scheduled out (busyloop pid 197 ran"
        ),
        "{text}"
    );
    let bad = vmxray(&["stats", mmio, "--event", "disk"]);
    assert_eq!(bad.status.code(), Some(2));
}
