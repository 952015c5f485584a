//! `vmxray record` and `vmxray lab` driven as a user would: the built executable.
//! Tests that need /dev/kvm, tracefs and root print `SKIP: <reason>` without them (and fail
//! under `CI=true`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

fn out(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn lab_unavailable() -> Option<&'static str> {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Some("/dev/kvm cannot be opened");
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root =
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return Some("recording needs root");
    }
    None
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["record", "--flight-recorder", "4M"][..],
        &["record", "--trigger", "shutdown"],
        &["record", "--flight-recorder", "4M", "--trigger", "reboot"],
        &["record", "--duration", "soon"],
        &["lab", "no-such-guest"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn record_a_command_then_stop() {
    if let Some(reason) = lab_unavailable() {
        vmxray_events::test_util::skip(reason);
        return;
    }
    let path = out("command.dat");
    let output = Command::new(BIN)
        .args(["record", "-q", "-o"])
        .arg(&path)
        .args(["--", BIN, "lab", "io-loop=250", "--no-record"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("wrote"), "{stderr}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The recording is system-wide: at least the command's 250 IO exits are in it.
    let reader = vmxray_capture::open(&path, vmxray_capture::ReadOptions::default()).unwrap();
    let io = reader
        .filter_map(Result::ok)
        .filter(|e| {
            matches!(e.kind, vmxray_events::EventKind::KvmUserspaceExit { reason, .. }
            if reason == vmxray_events::codes::UserspaceExitReason::IO)
        })
        .count();
    assert!(io >= 250, "{io} IO exits");
}

#[test]
fn lab_writes_a_trace() {
    if let Some(reason) = lab_unavailable() {
        vmxray_events::test_util::skip(reason);
        return;
    }
    let path = out("lab-triple-fault.dat");
    let output = Command::new(BIN).args(["lab", "triple-fault", "-o"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("last Shutdown"), "{stderr}");
    assert!(path.exists());
}
