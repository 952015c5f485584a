//! `vmxray fields`, `vmxray replay --fields` and `vmxray record --profile vmcs`, driven as a
//! user runs them.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-cli-fields-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn muen_trace() -> PathBuf {
    let path = dir().join("muen.txt");
    if !path.exists() {
        let st = Command::new(BIN)
            .args(["simulate", "muen", "--kvm", "buggy", "--kernel", "6.1", "-o"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
    }
    path
}

#[test]
fn fields_prints_histories_and_changes() {
    let out = Command::new(BIN)
        .args(["fields"])
        .arg(muen_trace())
        .args(["--vmcs", "12@0x8001000", "--field", "GUEST_CR3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("vmcs12@0x8001000"), "{text}");
    // The stale CR3 of the other subject, with the value it replaced.
    assert!(text.contains("0x100f9000") && text.contains("(was 0x101f9000)"), "{text}");
    assert!(!text.contains("vmcs01"), "{text}");
}

#[test]
fn jsonl_follows_the_wire_format() {
    let out = Command::new(BIN)
        .arg("fields")
        .arg(muen_trace())
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &lines[0];
    assert_eq!(first["type"], "field");
    for key in [
        "event", "ts", "vcpu", "vmcs", "field", "encoding", "value", "mask", "learned", "source",
        "changed",
    ] {
        assert!(first.get(key).is_some(), "{key}: {first}");
    }
    assert_eq!(lines.last().unwrap()["type"], "summary");
}

#[test]
fn bad_record_files_name_the_line_or_are_counted_with_permissive() {
    let recs = dir().join("bad.txt");
    std::fs::write(
        &recs,
        "# ok\n10 0 0 vmcs02 read GUEST_RIP 0x1000\n10 0 0 vmcs02 read GUEST_RIP\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["fields", "--fields"]).arg(&recs).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.txt") && err.contains("Line 3") && err.contains("found 6"), "{err}");
    let out =
        Command::new(BIN).args(["fields", "--permissive", "--fields"]).arg(&recs).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "skipped lines make the status 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 field record lines skipped") && err.contains("line 3"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("GUEST_RIP") && text.contains("read"), "{text}");
}

#[test]
fn replay_with_fields_reports_a_change_given_only_as_a_record() {
    // A fixed-KVM trace, and the user's record of a stale write into the halted subject.
    let fixed = dir().join("muen-fixed.txt");
    let st = Command::new(BIN)
        .args(["simulate", "muen", "--kvm", "fixed", "--kernel", "6.1", "-o"])
        .arg(&fixed)
        .status()
        .unwrap();
    assert!(st.success());
    let recs = dir().join("stale.txt");
    // With this seed, vmcs12@0x8001000 enters at 3836.443364 (event 249; HLT path: it never
    // runs) and its synthesized exit is at 3836.443802 (event 328); the text trace has µs
    // stamps, so the record goes at the last ns of the entry's µs. Subject 0x8000000's CR3
    // 0x100f9000 is what the buggy KVM syncs into it.
    std::fs::write(&recs, "3836443364999 0 0 vmcs12@0x8001000 write GUEST_CR3 0x100f9000\n")
        .unwrap();
    let out = Command::new(BIN)
        .args(["replay", "--rules", "changed_subject_cr3", "--severity", "critical"])
        .arg(&fixed)
        .arg("--fields")
        .arg(&recs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("vmcs12@0x8001000 GUEST_CR3: 0x101f9000 → 0x100f9000")
            && text.contains("the L2 that last ran on hardware"),
        "{text}"
    );
}

/// On a kernel without probe events on kernel functions (the development machines) the profile
/// refuses to start and says what is missing; nothing is left behind.
#[test]
fn vmcs_profile_fails_clearly_without_probe_support() {
    let Some(root) = vmxray_record::Tracefs::find() else {
        vmxray_events::test_util::skip("tracefs not mounted");
        return;
    };
    let support = vmxray_record::probes::ProbeSupport::detect(&root, "/sys".as_ref());
    if support.plan().is_some() {
        vmxray_events::test_util::skip("this kernel supports the vmcs probes");
        return;
    }
    let instances = |r: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(r.join("instances"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let dynamic = |r: &std::path::Path| std::fs::read_to_string(r.join("dynamic_events")).ok();
    let dyn_before = dynamic(&root);
    let path = dir().join("vmcs.dat");
    let child = Command::new(BIN)
        .args(["record", "-q", "--profile", "vmcs", "--duration", "1s", "-o"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its instance would be `vmxray-<pid>` (other tests record at the same time: their
    // instances come and go).
    let own = format!("vmxray-{}", child.id());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("The vmcs profile needs dynamic probes"), "{err}");
    for m in support.missing() {
        assert!(err.contains(&m), "{m} not in {err}");
    }
    assert!(!path.exists(), "no file is written");
    let left: Vec<String> = instances(&root)
        .into_iter()
        .filter(|n| *n == own || n.starts_with(&format!("{own}-")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(dynamic(&root), dyn_before);
}

#[test]
fn trace_printk_lines_in_a_trace_are_picked_up() {
    let path = dir().join("printk.txt");
    std::fs::write(
        &path,
        "# tracer: nop\n#\n           <...>-35514   [000] .....  3836.444022: bprint:               my_hook: 3836444022999 0 0 vmcs12@0x8001000 write GUEST_CR3 0x100f7000\n           <...>-35514   [000] .....  3836.444023: print:                tracing_mark_write: hello\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("fields").arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("vmcs12@0x8001000") && text.contains("written  bprint"), "{text}");
    assert!(text.contains("2 events, 1 field observations"), "{text}");
}
