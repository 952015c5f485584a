//! One own-L1 nested scenario end to end under Bochs (issue 13): the L1 hypervisor is built
//! from `samples/vmx/l1` with gcc, `vmxray lab vmx-rr=3 --profile vmcs` runs it inside the
//! emulated VMX host (Debian 6.1, kvm_intel nested=1, through the lab harness
//! `vmxray_samples::lab::vmx`), and the recording comes back out and is checked against the
//! ground truth the L1 reported while it ran: the L1's checks, every `kvm_nested_vmenter`
//! (VMCS, GUEST_RIP, EPTP), the GUEST_CR3/EPT_POINTER/HOST_CR3 values `vmxray fields`
//! reconstructs per vmcs12 (the probes included), `trace-cmd report` reading the file, and
//! replay with nothing above info.
//!
//! About 3 minutes on an idle 2-core host (one boot). Prints `SKIP: <reason>` when Bochs or
//! gcc is missing, except under `CI=true` (then `scripts/setup.sh` must have installed them).

use crate::l1common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmxray_samples::lab::vmx::{self, ExtraFile, Kernel, Plan, Step};

/// Builds the L1 image into `dir` with the project's Makefile; `None` without gcc/make.
fn build_l1(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/vmx/l1");
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("O={}", dir.display()))
        .status()
        .ok()?;
    assert!(status.success(), "make -C {} failed: {status}", src.display());
    Some(dir.join("l1.bin"))
}

#[test]
fn l1_round_robin_with_vmcs_probes_under_bochs() {
    if let Err(e) = vmx::check_tools() {
        vmxray_events::test_util::skip(&format!("the VMX lab cannot run here: {e}"));
        return;
    }
    let _bochs = crate::BOCHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let work = vmx::new_work_dir("l1-e2e");
    std::fs::create_dir_all(&work).unwrap();
    let Some(image) = build_l1(&work.join("l1")) else {
        vmxray_events::test_util::skip("cannot run make/gcc to build the L1 image");
        return;
    };
    let mut plan = Plan::new(Kernel::V6_1, env!("CARGO_BIN_EXE_vmxray").into(), work.clone());
    plan.extra_files.push(ExtraFile { host: image, guest: "/lib/vmxray/l1.bin".into() });
    plan.steps.push(Step {
        name: "l1-rr".into(),
        kvm_intel: vec!["nested=1".into(), "ept=1".into()],
        argv: [
            "env",
            "VMXRAY_L1_IMAGE=/lib/vmxray/l1.bin",
            "vmxray",
            "lab",
            "vmx-rr=3",
            "--profile",
            "vmcs",
            "-o",
            "{out}/trace.dat",
        ]
        .map(String::from)
        .to_vec(),
        timeout: Duration::from_secs(300),
    });
    let run = vmx::run(&plan, &mut |p| eprintln!("vmx lab: {p:?}")).expect("the lab run");
    let step = run.steps.first().expect("the step ran");
    assert_eq!(step.status, Some(0), "vmxray lab vmx-rr=3 inside: {}", step.stderr);
    assert_eq!(step.module_param("kvm_intel", "nested"), Some("Y"), "{}", step.params);
    let trace = step.dir.join("trace.dat");
    let truth = l1common::read_truth(&trace);
    l1common::check_l1_passed(&trace, &truth);
    l1common::check_vmenters(&trace, &truth);
    l1common::check_fields(&trace, &truth);
    l1common::check_probes(&trace, &truth);
    assert!(l1common::anomalies_above_info(&trace).is_empty(), "{}", trace.display());
    if let Some(report) = vmx::trace_cmd_report(&trace) {
        let report = report.expect("trace-cmd report reads the recording");
        eprintln!("trace-cmd report: {report:?}");
    }
    std::fs::remove_dir_all(&work).ok();
}
