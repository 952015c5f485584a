//! Kernel versions and the tracepoint field sets each one has (reference §1.1–§1.15).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use vmxray_events::codes::{ExitCode, ExitReason, IntrInfo, Isa, SvmExitCode};
use vmxray_events::{Entry, EventKind, ExitFields, ExitInfo};

/// The host kernel whose tracepoint layouts the simulator reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelVersion {
    /// 5.10: `kvm_entry` has `rip`; `kvm_exit`/`kvm_nested_vmexit` share the layout with
    /// `intr_info`/`error_code`; no `kvm_nested_vmenter` (nested entry is only visible as a
    /// VMLAUNCH/VMRESUME `kvm_exit` followed by an L2 `kvm_entry`).
    V5_10,
    /// 6.1: adds `kvm_nested_vmenter` with `guest_pgd`/`tdp_enabled`; `kvm_page_fault` carries
    /// `vcpu_id`/`guest_rip`; `kvm_entry` has `immediate_exit` as in Debian's 6.1.192 (upstream
    /// added it in 6.9; the recordings in `samples/real/vmx/*-6.1.dat` have it). The 6.12
    /// recordings show the same layout for every event the simulator emits, so 6.1 stands for
    /// both.
    V6_1,
    /// 6.14: `kvm_entry` gains `intr_info`, `error_code`; `kvm_exit` gains `requests`.
    V6_14,
}

/// A version string `vmxray simulate --kernel` does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown kernel version `{0}` (expected 5.10, 6.1 or 6.14)")]
pub struct UnknownKernel(pub String);

impl KernelVersion {
    /// Every simulated version, oldest first.
    pub const ALL: [KernelVersion; 3] = [Self::V5_10, Self::V6_1, Self::V6_14];

    /// `"5.10"`, `"6.1"`, `"6.14"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_14 => "6.14",
        }
    }

    /// `kvm_nested_vmenter` exists (6.1+).
    pub fn has_nested_vmenter(self) -> bool {
        self >= Self::V6_1
    }

    /// `kvm_entry` has `intr_info`/`error_code` (6.14+).
    pub fn entry_has_intr_info(self) -> bool {
        self >= Self::V6_14
    }

    /// `kvm_entry` has `immediate_exit` (6.9+ upstream; the 6.1 stable kernel recorded in
    /// `samples/real/vmx/` carries it too).
    pub fn entry_has_immediate_exit(self) -> bool {
        self >= Self::V6_1
    }

    /// `kvm_exit`/`kvm_nested_vmexit` have `requests` (6.14+).
    pub fn exit_has_requests(self) -> bool {
        self >= Self::V6_14
    }

    /// `kvm_page_fault` has `vcpu_id`/`guest_rip` and u64 fields (6.1+: the real 6.1 and 6.12
    /// recordings and a 2023 report from a 6.1 host print `vcpu %u rip 0x%lx address …`).
    pub fn page_fault_has_vcpu(self) -> bool {
        self >= Self::V6_1
    }

    /// `kvm_inj_exception` has `reinjected` and the `%s%s%s%s%s` print (5.19+), and
    /// `kvm_inj_virq` has `soft`/`reinjected`.
    pub fn injection_has_reinjected(self) -> bool {
        self >= Self::V6_1
    }

    /// Bit 4 of the MMU role word is `gpte_is_8_bytes` (5.10) rather than `has_4_byte_gpte`.
    pub fn role_bit4_is_8_byte(self) -> bool {
        self < Self::V6_1
    }

    /// The irq-info column has the migrate-disable character (5 flags, not 4).
    pub fn has_migrate_disable_flag(self) -> bool {
        self >= Self::V6_1
    }

    /// The fastpath handles L0's own VMX preemption-timer exit while L2 runs, so that exit has
    /// a `kvm_exit` but no `kvm_nested_vmexit` (reference §1.2, "Gaps"). Older kernels skipped
    /// the fastpath in guest mode.
    pub fn l2_preemption_timer_fastpath(self) -> bool {
        self >= Self::V6_14
    }

    /// Builds `kvm_exit` (or, with `nested`, `kvm_nested_vmexit`) with this kernel's fields.
    pub(crate) fn exit_event(
        self,
        nested: bool,
        vcpu: u32,
        x: &HwExit,
        requests: u64,
    ) -> EventKind {
        let info = ExitInfo::from(ExitFields {
            reason: ExitCode::Vmx(ExitReason(x.reason)),
            isa: Some(Isa::Vmx),
            guest_rip: Some(x.rip),
            info1: Some(x.qual),
            info2: Some(x.idt_vectoring),
            intr_info: Some(IntrInfo(x.intr_info)),
            error_code: Some(x.error_code),
            vcpu_id: Some(vcpu),
            requests: self.exit_has_requests().then_some(requests),
        });
        if nested { EventKind::KvmNestedVmexit(info) } else { EventKind::KvmExit(info) }
    }

    /// Builds an SVM `kvm_exit` (or, with `nested`, `kvm_nested_vmexit`): isa 2, the exit code,
    /// and `exit_info_1`, `exit_info_2`, `exit_int_info`, `exit_int_info_err` in the four info
    /// fields (reference §1.2).
    pub(crate) fn svm_exit_event(self, nested: bool, vcpu: u32, x: &SvmExit) -> EventKind {
        let info = ExitInfo::from(ExitFields {
            reason: ExitCode::Svm(SvmExitCode(x.code)),
            isa: Some(Isa::Svm),
            guest_rip: Some(x.rip),
            info1: Some(x.info1),
            info2: Some(x.info2),
            intr_info: Some(IntrInfo(x.int_info)),
            error_code: Some(x.int_info_err),
            vcpu_id: Some(vcpu),
            requests: self.exit_has_requests().then_some(0),
        });
        if nested { EventKind::KvmNestedVmexit(info) } else { EventKind::KvmExit(info) }
    }

    /// Builds `kvm_entry` with this kernel's fields (`immediate`: KVM forces an exit right
    /// after the entry, to handle a pending event it could not inject before it).
    pub(crate) fn entry_event(
        self,
        vcpu: u32,
        rip: u64,
        inj: IntrInfo,
        err: u32,
        immediate: bool,
    ) -> EventKind {
        let newer = self.entry_has_intr_info();
        EventKind::KvmEntry(Entry {
            vcpu_id: vcpu,
            rip: Some(rip),
            immediate_exit: self.entry_has_immediate_exit().then_some(immediate),
            intr_info: newer.then_some(inj),
            error_code: newer.then_some(if inj.valid() && inj.error_code_valid() {
                err
            } else {
                0
            }),
        })
    }

    /// Builds `kvm_page_fault` with this kernel's fields.
    pub(crate) fn page_fault_event(self, vcpu: u32, rip: u64, addr: u64, err: u64) -> EventKind {
        let newer = self.page_fault_has_vcpu();
        EventKind::KvmPageFault {
            vcpu_id: newer.then_some(vcpu),
            guest_rip: newer.then_some(rip),
            fault_address: addr,
            error_code: err,
        }
    }
}

impl Serialize for KernelVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KernelVersion {
    type Err = UnknownKernel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "5.10" => Ok(Self::V5_10),
            "6.1" => Ok(Self::V6_1),
            "6.14" => Ok(Self::V6_14),
            other => Err(UnknownKernel(other.to_owned())),
        }
    }
}

/// What an SVM #VMEXIT reports (the `kvm_exit` fields on SVM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvmExit {
    /// The exit code (`SVM_EXIT_*`).
    pub(crate) code: u64,
    pub(crate) rip: u64,
    pub(crate) info1: u64,
    pub(crate) info2: u64,
    pub(crate) int_info: u32,
    pub(crate) int_info_err: u32,
}

/// What the hardware reports at a VM-exit (the `kvm_exit` fields on VMX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HwExit {
    pub(crate) reason: u32,
    pub(crate) rip: u64,
    /// Exit qualification (`info1`).
    pub(crate) qual: u64,
    /// IDT-vectoring information (`info2`).
    pub(crate) idt_vectoring: u64,
    /// VM-exit interruption information.
    pub(crate) intr_info: u32,
    pub(crate) error_code: u32,
}

impl HwExit {
    pub(crate) fn new(reason: u32, rip: u64) -> Self {
        Self { reason, rip, ..Self::default() }
    }

    pub(crate) fn qual(mut self, qual: u64) -> Self {
        self.qual = qual;
        self
    }

    pub(crate) fn intr(mut self, intr_info: u32, error_code: u32) -> Self {
        self.intr_info = intr_info;
        self.error_code = error_code;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!("6.1".parse::<KernelVersion>().unwrap(), KernelVersion::V6_1);
        assert!("4.19".parse::<KernelVersion>().is_err());
        assert!(!KernelVersion::V5_10.has_nested_vmenter());
        assert!(KernelVersion::V6_14.exit_has_requests());
        let e = KernelVersion::V5_10.entry_event(0, 0x1000, IntrInfo(0), 0, false);
        let EventKind::KvmEntry(entry) = e else { panic!() };
        assert_eq!((entry.intr_info, entry.immediate_exit), (None, None));
    }
}
