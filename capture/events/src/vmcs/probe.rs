//! The dynamic probes of `vmxray record --profile vmcs`, and what their events mean.
//!
//! KVM has no "VMCS field written" tracepoint, but the kernel can probe the functions that are
//! about to load the values we care about (Documentation/trace/kprobetrace.rst and
//! fprobetrace.rst, written to `dynamic_events` or `kprobe_events`):
//!
//! | event | function | arguments recorded | field observations |
//! |---|---|---|---|
//! | `vmcs_load_cr3` | `nested_vmx_load_cr3(vcpu, cr3, nested_ept, …)` | `cr3`, `nested_ept`, `hflags` (BTF) | current vmcs12 `GUEST_CR3` (entry: `prepare_vmcs02`, guest mode) or `HOST_CR3` (exit: `load_vmcs12_host_state`) |
//! | `vmcs_load_mmu_pgd_ept` / `_shadow` | `vmx_load_mmu_pgd(vcpu, root_hpa, root_level)` | `root_hpa`, `root_level`, `hflags` (BTF) | `EPT_POINTER` (L0 EPT) or `GUEST_CR3` (shadow paging) of the loaded VMCS — vmcs02 in guest mode, else vmcs01 — address bits only |
//! | `vmcs_nested_vmexit` | `nested_vmx_vmexit(vcpu, reason, intr_info, qual)` | the three | current vmcs12 `VM_EXIT_REASON`, `VM_EXIT_INTR_INFO`, `EXIT_QUALIFICATION` (not for reason -1, the silent exit) |
//!
//! With BTF for `kvm_intel` (`/sys/kernel/btf/kvm_intel`) and `dynamic_events`, fprobe events
//! fetch arguments by name and `vcpu->arch.hflags` (bit 0 `HF_GUEST_MASK` says guest mode);
//! without, kprobe events fetch `$argN` and the replay model's level decides guest or host.
//! Whether L0 uses EPT (`/sys/module/kvm_intel/parameters/ept`) is read once and put in the
//! event's name, so the reader knows which field `vmx_load_mmu_pgd` writes.
//!
//! **Naming.** Probes live in the group `vmxray_<pid>` (the recorder's pid: the event system in
//! the trace), so that they never collide with a user's probes and the reader recognizes them
//! by the `vmxray` prefix ([`decode`]).
//!
//! Installing them (and removing them on every exit path) is the recorder's job
//! (`vmxray_record::probes`); every reader types their events as
//! [`crate::EventKind::VmcsProbe`] through [`decode`].

use serde::Serialize;

use super::FieldEncoding;

/// Bits 51:12 of a CR3 / EPTP / root HPA: the address part a root reveals.
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// `HF_GUEST_MASK` in `vcpu->arch.hflags` (arch/x86/include/asm/kvm_host.h).
pub const HF_GUEST_MASK: u64 = 1;

/// The event names (see the module table).
pub const LOAD_CR3: &str = "vmcs_load_cr3";
/// See the module table.
pub const LOAD_MMU_PGD_EPT: &str = "vmcs_load_mmu_pgd_ept";
/// See the module table.
pub const LOAD_MMU_PGD_SHADOW: &str = "vmcs_load_mmu_pgd_shadow";
/// See the module table.
pub const NESTED_VMEXIT: &str = "vmcs_nested_vmexit";

/// Where a probe's facts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeTarget {
    /// The current vmcs12 (the model knows which).
    CurrentVmcs12,
    /// The hardware VMCS being loaded: vmcs02 in guest mode, vmcs01 otherwise.
    LoadedVmcs,
}

/// One field value a probe event shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeFact {
    /// Which VMCS.
    pub target: ProbeTarget,
    /// The field when the vCPU is in guest mode.
    pub in_guest: FieldEncoding,
    /// The field otherwise.
    pub in_host: FieldEncoding,
    /// The value.
    pub value: u64,
    /// The bits of `value` the probe knows.
    pub mask: u64,
    /// KVM writes the field (else it reads it: `nested_vmx_load_cr3` reads vmcs12's CR3).
    pub write: bool,
}

/// What a probe event says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeEvent {
    /// Guest mode at the probe, when the probe fetched `hflags`.
    pub guest_mode: Option<bool>,
    /// The facts.
    pub facts: Vec<ProbeFact>,
}

/// Decodes one of our probe events (system `vmxray_*`), given a field lookup.
pub fn decode(system: &str, name: &str, f: &impl crate::FieldLookup) -> Option<ProbeEvent> {
    if !system.starts_with("vmxray") {
        return None;
    }
    let guest_mode = f.uint("hflags").map(|h| h & HF_GUEST_MASK != 0);
    let fact = |target, in_guest, in_host, value, mask| ProbeFact {
        target,
        in_guest,
        in_host,
        value,
        mask,
        write: name != LOAD_CR3,
    };
    let facts = match name {
        LOAD_CR3 => vec![fact(
            ProbeTarget::CurrentVmcs12,
            FieldEncoding::GUEST_CR3,
            FieldEncoding::HOST_CR3,
            f.uint("cr3")?,
            u64::MAX,
        )],
        LOAD_MMU_PGD_EPT | LOAD_MMU_PGD_SHADOW => {
            let field = if name == LOAD_MMU_PGD_EPT {
                FieldEncoding::EPT_POINTER
            } else {
                FieldEncoding::GUEST_CR3
            };
            vec![fact(ProbeTarget::LoadedVmcs, field, field, f.uint("root_hpa")?, ADDRESS_MASK)]
        }
        NESTED_VMEXIT => {
            let reason = f.uint("reason")?;
            if reason & 0xffff_ffff == 0xffff_ffff {
                // The silent exit (SMI, leave_nested): prepare_vmcs12 does not run.
                Vec::new()
            } else {
                let c = ProbeTarget::CurrentVmcs12;
                let mut v = vec![fact(
                    c,
                    FieldEncoding::VM_EXIT_REASON,
                    FieldEncoding::VM_EXIT_REASON,
                    reason & 0xffff_ffff,
                    u64::MAX,
                )];
                if let Some(intr) = f.uint("intr_info") {
                    v.push(fact(
                        c,
                        FieldEncoding::VM_EXIT_INTR_INFO,
                        FieldEncoding::VM_EXIT_INTR_INFO,
                        intr & 0xffff_ffff,
                        u64::MAX,
                    ));
                }
                if let Some(qual) = f.uint("qual") {
                    v.push(fact(
                        c,
                        FieldEncoding::EXIT_QUALIFICATION,
                        FieldEncoding::EXIT_QUALIFICATION,
                        qual,
                        u64::MAX,
                    ));
                }
                v
            }
        }
        _ => return None,
    };
    Some(ProbeEvent { guest_mode, facts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{FieldValue, Fields};

    #[test]
    fn probe_events_decode_to_fields() {
        let mut f = Fields::new();
        f.push("__probe_ip", FieldValue::U64(0xffff_ffff_a000_0000));
        f.push("cr3", FieldValue::U64(0x10ff9000));
        f.push("nested_ept", FieldValue::U64(0));
        f.push("hflags", FieldValue::U64(1));
        let p = decode("vmxray_42", LOAD_CR3, &f).unwrap();
        assert_eq!(p.guest_mode, Some(true));
        assert_eq!(p.facts[0].in_guest, FieldEncoding::GUEST_CR3);
        assert_eq!(p.facts[0].in_host, FieldEncoding::HOST_CR3);
        assert_eq!(p.facts[0].value, 0x10ff9000);
        assert_eq!(decode("kprobes", LOAD_CR3, &f), None);
        let mut x = Fields::new();
        x.push("reason", FieldValue::U64(0xffff_ffff));
        assert!(decode("vmxray_1", NESTED_VMEXIT, &x).unwrap().facts.is_empty());
    }
}
