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

/// A failing command's status is `record`'s (as with `time` or `strace`), and the recording
/// is still written.
#[test]
fn a_failing_command_gives_record_its_status() {
    if let Some(reason) = lab_unavailable() {
        vmxray_events::test_util::skip(reason);
        return;
    }
    let path = out("failing.dat");
    let output = Command::new(BIN)
        .args(["record", "-q", "-o"])
        .arg(&path)
        .args(["--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("the command exited with"), "{stderr}");
    assert!(path.exists(), "{stderr}");
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
    assert!(stderr.contains("last KVM_EXIT_SHUTDOWN"), "{stderr}");
    assert!(path.exists());
}

/// `vmxray lab --vms 3`: three guests, each its own process (its own VM), run together and
/// recorded into one trace that names each VM's process before its guest runs.
#[test]
fn lab_runs_several_vms_into_one_trace() {
    if let Some(reason) = lab_unavailable() {
        vmxray_events::test_util::skip(reason);
        return;
    }
    let path = out("lab-vms.dat");
    let output = Command::new(BIN)
        .args(["lab", "io-loop=50", "--vms", "3", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("its own process): exit status: 0").count(), 3, "{stderr}");
    let dump = Command::new(BIN).arg("dump").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    // Threads with KVM events, and the process each identity line names (the recorder names
    // every VMM of the host, other tests' guests too).
    let kvm_threads: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" kvm:"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let mut processes: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut id = l.split("vmxray_identity: pid=").nth(1)?.split(' ');
            let pid = id.next()?;
            kvm_threads.contains(&pid).then(|| id.next())?
        })
        .collect();
    processes.sort_unstable();
    processes.dedup();
    assert_eq!(processes.len(), 3, "one identity per VM process: {processes:?}");
    assert!(text.contains("task:task_newtask"), "threads created meanwhile are recorded");
}

/// Two real VMs at once (two `vmxray lab` processes, each a VMM with vCPUs 0 and 1) recorded by
/// one `vmxray record`: the recording says which process each vCPU thread belongs to (trace.dat
/// records carry no tgid), so replay keeps the two vCPU 0s apart, and scan counts two VMs.
#[test]
fn two_vms_at_once_stay_apart() {
    if let Some(reason) = lab_unavailable() {
        vmxray_events::test_util::skip(reason);
        return;
    }
    let path = out("two-vms.dat");
    let guests = format!(
        "{BIN} lab multi-vcpu=60000 --no-record & {BIN} lab multi-vcpu=60000 --no-record & wait"
    );
    let output = Command::new(BIN)
        .args(["record", "-q", "-o"])
        .arg(&path)
        .args(["--", "sh", "-c", &guests])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let replay =
        Command::new(BIN).args(["replay", "--format", "jsonl"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(0), "{stdout}");
    let summary: serde_json::Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "summary")
        .unwrap();
    let vms = summary["vms"].as_array().unwrap();
    let guests: Vec<&serde_json::Value> =
        vms.iter().filter(|vm| vm["vcpus"].as_array().is_some_and(|v| v.len() == 2)).collect();
    assert_eq!(guests.len(), 2, "{vms:#?}");
    for vm in &guests {
        assert!(vm["tgid"].as_i64().is_some() && vm["inferred"] == false, "{vm}");
        let ids: Vec<u64> =
            vm["vcpus"].as_array().unwrap().iter().map(|v| v[0].as_u64().unwrap()).collect();
        assert_eq!(ids, [0, 1], "{vm}");
    }
    assert_ne!(guests[0]["tgid"], guests[1]["tgid"]);
    let _ = std::fs::remove_file(&path);
}
