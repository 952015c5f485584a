//! The committed recordings of our own L1 hypervisor (`samples/real/vmx/l1-*.dat`, made by
//! `vmxray lab vmx-*` under a real KVM with nested VMX, see samples/README.md) checked
//! against the ground truth the L1 reported while it ran (`<trace>.truth.json`):
//!
//! - the L1 itself saw what it expected (every check it made held, every vCPU ended as planned);
//! - every `kvm_nested_vmenter` L0 traced names a VMCS the L1 made current, with the GUEST_RIP
//!   and GUEST_CR3/EPT_POINTER the L1 had given that VMCS (or that its last exit left), in the
//!   order the L1 entered them;
//! - every GUEST_CR3/EPT_POINTER/HOST_CR3 value `vmxray fields` reconstructs for a vmcs12
//!   equals what the L1 wrote there; in the `--profile vmcs` recordings the probes reveal
//!   GUEST_CR3 and HOST_CR3 of every vmcs12;
//! - replay finds nothing at warning or above.

use crate::l1common;

use std::path::{Path, PathBuf};

use vmxray_samples::lab::l1::Truth;

fn samples() -> Vec<(PathBuf, Truth)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/real/vmx");
    let mut out: Vec<(PathBuf, Truth)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = name(p);
                    name.starts_with("l1-") && name.ends_with(".dat")
                })
                .map(|p| {
                    let truth = l1common::read_truth(&p);
                    (p, truth)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no l1-*.dat sample under {}", dir.display());
    out
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn the_l1_saw_what_it_expected() {
    for (path, truth) in samples() {
        l1common::check_l1_passed(&path, &truth);
    }
}

#[test]
fn every_nested_vmenter_carries_what_the_l1_wrote() {
    for (path, truth) in samples() {
        l1common::check_vmenters(&path, &truth);
    }
}

#[test]
fn fields_of_each_vmcs12_equal_what_the_l1_wrote() {
    for (path, truth) in samples() {
        l1common::check_fields(&path, &truth);
    }
}

#[test]
fn explain_states_every_vmcs12_the_l1_entered() {
    for (path, truth) in samples() {
        l1common::check_explain(&path, &truth);
    }
}

#[test]
fn vmcs_profile_probes_reveal_every_subjects_cr3() {
    let mut recordings = 0;
    for (path, truth) in samples() {
        if name(&path).contains("-vmcs-") {
            l1common::check_probes(&path, &truth);
            recordings += 1;
        }
    }
    assert!(recordings > 0, "no l1-*-vmcs-*.dat recording");
}

#[test]
fn replay_finds_nothing_above_info() {
    // The l1-vmfail-* traces once showed l2_entry_mismatch and unexplained_vmenter: the model
    // expected a kvm_nested_vmexit_inject after a failed guest-state check, which real KVM
    // does not trace (samples/README.md, "Model discrepancies found by these traces").
    for (path, _) in samples() {
        let found = l1common::anomalies_above_info(&path);
        assert!(found.is_empty(), "{}: {found:?}", path.display());
    }
}
