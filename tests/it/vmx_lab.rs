//! The real-VMX lab end to end: `vmxray lab --vmx` boots a Debian kernel in Bochs (an emulated
//! Intel CPU with VMX), runs a lab guest under its real `kvm_intel` with EPT and with shadow
//! paging, brings the traces back, and they hold real hardware exit reasons — read by
//! vmxray's reader and by `trace-cmd report`.
//!
//! One boot (about 2 minutes of wall time on an idle 2-core machine; the image is cached under
//! target/vmxlab/ after the first run, which downloads the pinned kernel). Without Bochs it
//! prints `SKIP: <reason>`, except under `CI=true` (scripts/setup.sh installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmxray_events::test_util::skip;
use vmxray_samples::lab::vmx;

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-vmx-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `trace-cmd report` of a trace: its `kvm_exit` reasons as trace-cmd prints them.
fn trace_cmd_exit_reasons(path: &Path) -> Option<BTreeMap<String, u64>> {
    if !vmx::on_path("trace-cmd") {
        return None;
    }
    let out = Command::new("trace-cmd").arg("report").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut reasons = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        // "... kvm_exit: reason EPT_VIOLATION rip 0x1000 info 82 0" (trace-cmd's kvm plugin)
        // or "... kvm_exit: vcpu 0 reason EPT_VIOLATION rip ..." (the kernel's print format).
        if let Some(rest) = line.split_once(" kvm_exit:").map(|(_, r)| r)
            && let Some(reason) = rest.split_once("reason ").map(|(_, r)| r)
        {
            let reason = reason.split_whitespace().next().unwrap_or("").to_owned();
            *reasons.entry(reason).or_default() += 1;
        }
    }
    Some(reasons)
}

#[test]
fn mmio_guest_on_real_vmx_with_ept_and_shadow_paging() {
    if let Err(e) = vmx::check_tools() {
        skip(&format!("the real-VMX lab cannot run here: {e}"));
        return;
    }
    let _bochs = crate::BOCHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = out_dir();
    let output = Command::new(BIN)
        .args(["lab", "--vmx", "mmio", "--ept", "both", "--kernel", "6.1", "--profile", "all"])
        .arg("-o")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "vmxray lab --vmx failed:\n{stderr}");
    assert!(stderr.contains("nested=Y ept=Y"), "{stderr}");
    assert!(stderr.contains("nested=Y ept=N"), "{stderr}");

    // With EPT: the first touch of each page is an EPT violation, the unbacked GPA becomes an
    // MMIO SPTE (EPT misconfig on the second access), port IO and HLT exit as such.
    let ept = dir.join("mmio-ept-6.1.dat");
    let summary = vmx::summarize(&ept).unwrap();
    assert_eq!(summary.lost, 0);
    assert!(summary.kernel.as_deref().is_some_and(|k| k.starts_with("6.1.")), "{summary:?}");
    for reason in ["EPT_VIOLATION", "EPT_MISCONFIG", "IO_INSTRUCTION", "HLT"] {
        assert!(summary.exit_reasons.contains_key(reason), "{reason} missing: {summary:?}");
    }
    assert_eq!(summary.exit_reasons.get("IO_INSTRUCTION"), Some(&2), "{summary:?}");
    assert!(summary.by_name.get("kvm_mmio").is_some_and(|n| *n >= 2), "{summary:?}");
    assert!(summary.by_name.contains_key("kvm_entry"), "{summary:?}");

    // Shadow paging: guest page faults are intercepted (EXCEPTION_NMI), no EPT exits.
    let shadow = dir.join("mmio-shadow-6.1.dat");
    let summary_shadow = vmx::summarize(&shadow).unwrap();
    assert!(summary_shadow.exit_reasons.contains_key("EXCEPTION_NMI"), "{summary_shadow:?}");
    assert!(!summary_shadow.exit_reasons.contains_key("EPT_VIOLATION"), "{summary_shadow:?}");
    assert!(summary_shadow.by_name.contains_key("kvm_page_fault"), "{summary_shadow:?}");

    // trace-cmd reads the same exits.
    for (path, ours) in [(&ept, &summary), (&shadow, &summary_shadow)] {
        match trace_cmd_exit_reasons(path) {
            Some(theirs) => assert_eq!(&theirs, &ours.exit_reasons, "{}", path.display()),
            None => skip("trace-cmd is not installed"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
