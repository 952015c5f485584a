//! Exit qualifications and page-fault error codes broken into what they say.
//!
//! The exit tracepoints carry raw words: `kvm_exit.info1` is the exit qualification on VMX and
//! `exit_info_1` on SVM, `info2` the IDT-vectoring information on VMX, `intr_info` the
//! `EXITINTINFO` on SVM. What the bits mean depends on the exit reason, so the accessors on
//! [`ExitInfo`] pick the decoding the reason calls for ([`ExitInfo::qualification`]):
//!
//! - an EPT violation's qualification, [`EptViolation`] (SDM Vol. 3C, table "Exit
//!   Qualification for EPT Violations"; reference `nested-vmx-model.md` §4.4);
//! - the error code of an SVM nested page fault (`#NPF`, `exit_info_1`) and of a `#PF`
//!   (the VMX exit interruption error code, SVM `exit_info_1`), [`PfErrorCode`]: the x86 page
//!   fault bits plus the ones AMD and KVM define above bit 31 (`PFERR_*` in
//!   `arch/x86/include/asm/kvm_host.h`);
//! - a CR access, [`CrAccessQual`];
//! - the event being delivered when the exit happened, [`ExitInfo::idt_vectoring`] (VMX
//!   IDT-vectoring information, SVM `EXITINTINFO`: the same layout, reference §4.5).
//!
//! Nothing here guesses: a bit that the architecture leaves undefined in a given case is
//! reported as unknown (`None`), not as its raw value.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codes::{CrAccessQual, ExitCode, IntrInfo, SvmExitCode, VmxBasicReason};
use crate::event::ExitInfo;

/// The exit qualification of a VMX EPT violation (exit reason 48, `kvm_exit.info1`; KVM also
/// traces it as `kvm_page_fault.error_code` on VMX with EPT).
///
/// Bits (SDM Vol. 3C, "Exit Qualification for EPT Violations"): 0 data read, 1 data write,
/// 2 instruction fetch; 3–5 the EPT entries' R/W/X permissions (logical AND over the walk;
/// all clear = the guest-physical address was not mapped); 6 user-mode executable (with
/// mode-based execute control); 7 the guest-linear-address field is valid; 8 (when 7 is set)
/// the access was to the final translation of a linear address rather than to a guest
/// paging-structure entry during the walk; 9–11 (when 7 and 8 are set, with the "advanced
/// VM-exit information for EPT violations" capability) user-mode linear address, writable
/// page, execute-disable page; 12 NMI unblocking due to IRET; 13 shadow-stack access.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EptViolation(pub u64);

#[allow(missing_docs)]
impl EptViolation {
    pub const READ: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const FETCH: u64 = 1 << 2;
    pub const READABLE: u64 = 1 << 3;
    pub const WRITABLE: u64 = 1 << 4;
    pub const EXECUTABLE: u64 = 1 << 5;
    pub const USER_EXECUTABLE: u64 = 1 << 6;
    pub const GLA_VALID: u64 = 1 << 7;
    pub const FINAL_TRANSLATION: u64 = 1 << 8;
    pub const LINEAR_USER: u64 = 1 << 9;
    pub const LINEAR_WRITABLE: u64 = 1 << 10;
    pub const LINEAR_XD: u64 = 1 << 11;
    pub const NMI_UNBLOCKING: u64 = 1 << 12;
    pub const SHADOW_STACK: u64 = 1 << 13;

    fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }

    /// Bit 0: the access was a data read.
    pub fn read(self) -> bool {
        self.has(Self::READ)
    }

    /// Bit 1: the access was a data write.
    pub fn write(self) -> bool {
        self.has(Self::WRITE)
    }

    /// Bit 2: the access was an instruction fetch.
    pub fn fetch(self) -> bool {
        self.has(Self::FETCH)
    }

    /// Bits 5:3 as `rwx` with `-` for a missing permission (`---`: not mapped).
    pub fn permissions(self) -> [bool; 3] {
        [self.has(Self::READABLE), self.has(Self::WRITABLE), self.has(Self::EXECUTABLE)]
    }

    /// Any of bits 5:3: the guest-physical address was mapped, the access lacked a permission
    /// (KVM sets `PFERR_PRESENT` from exactly these bits in `__vmx_handle_ept_violation`).
    pub fn present(self) -> bool {
        self.0 & (Self::READABLE | Self::WRITABLE | Self::EXECUTABLE) != 0
    }

    /// Bit 7: the exit's guest-linear address is valid (clear only for the PDPTE loads of a
    /// `MOV CR` in PAE paging).
    pub fn gla_valid(self) -> bool {
        self.has(Self::GLA_VALID)
    }

    /// Bit 8, defined when bit 7 is set: `Some(true)` when the access was to the final
    /// translation of the linear address, `Some(false)` when it was to a guest paging-structure
    /// entry during the guest's own walk (KVM: `PFERR_GUEST_FINAL` vs `PFERR_GUEST_PAGE`).
    pub fn final_translation(self) -> Option<bool> {
        self.gla_valid().then(|| self.has(Self::FINAL_TRANSLATION))
    }

    /// Bits 9–11 (user-mode address, writable page, execute-disable page), defined only when
    /// bits 7 and 8 are set and the processor reports advanced EPT-violation information;
    /// `None` when undefined.
    pub fn linear_attributes(self) -> Option<[bool; 3]> {
        (self.final_translation() == Some(true)).then(|| {
            [
                self.has(Self::LINEAR_USER),
                self.has(Self::LINEAR_WRITABLE),
                self.has(Self::LINEAR_XD),
            ]
        })
    }

    /// Bit 12: NMI unblocking due to IRET.
    pub fn nmi_unblocking(self) -> bool {
        self.has(Self::NMI_UNBLOCKING)
    }

    /// Bit 13: a shadow-stack access.
    pub fn shadow_stack(self) -> bool {
        self.has(Self::SHADOW_STACK)
    }

    /// The access: `read`, `write`, `fetch`, joined with `+` when several bits are set (a
    /// read-modify-write may set both read and write), `none` when no access bit is set.
    pub fn access(self) -> Access {
        Access { read: self.read(), write: self.write(), fetch: self.fetch() }
    }
}

impl fmt::Display for EptViolation {
    /// `read, not present, final translation`; `write, ept r-x, paging-structure access`;
    /// `read+write, not present, no linear address` … then `, user page`, `, writable page`,
    /// `, XD page`, `, NMI unblocking`, `, shadow stack` when those bits say so.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, ", self.access())?;
        if self.present() {
            let [r, w, x] = self.permissions();
            let bit = |on: bool, c: char| if on { c } else { '-' };
            write!(f, "ept {}{}{}", bit(r, 'r'), bit(w, 'w'), bit(x, 'x'))?;
        } else {
            f.write_str("not present")?;
        }
        match self.final_translation() {
            Some(true) => f.write_str(", final translation")?,
            Some(false) => f.write_str(", paging-structure access")?,
            None => f.write_str(", no linear address")?,
        }
        if let Some([user, writable, xd]) = self.linear_attributes() {
            for (on, what) in [(user, "user page"), (writable, "writable page"), (xd, "XD page")] {
                if on {
                    write!(f, ", {what}")?;
                }
            }
        }
        if self.nmi_unblocking() {
            f.write_str(", NMI unblocking")?;
        }
        if self.shadow_stack() {
            f.write_str(", shadow stack")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EptViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptViolation({:#x}: {self})", self.0)
    }
}

/// Which kinds of access a fault describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Access {
    /// A data read.
    pub read: bool,
    /// A data write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (on, what) in [(self.read, "read"), (self.write, "write"), (self.fetch, "fetch")] {
            if on {
                if !first {
                    f.write_str("+")?;
                }
                f.write_str(what)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A page-fault error code: the guest's `#PF` error code, the `exit_info_1` of an SVM nested
/// page fault, or KVM's internal `PFERR_*` word (`fast_page_fault.error_code`,
/// `kvm_mmu_pagetable_walk.pferr`).
///
/// Bits 0–6 and 15 are the architectural ones (P, W/R, U/S, RSVD, I/D, PK, SS, SGX); AMD's
/// nested page fault adds bit 31 (RMP check), 32 (the fault was on the final guest-physical
/// address) and 33 (on a guest page-table access during the walk); KVM uses 48 (implicit
/// supervisor access) and 49 (private memory access) internally.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PfErrorCode(pub u64);

#[allow(missing_docs)]
impl PfErrorCode {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const RSVD: u64 = 1 << 3;
    pub const FETCH: u64 = 1 << 4;
    pub const PK: u64 = 1 << 5;
    pub const SS: u64 = 1 << 6;
    pub const SGX: u64 = 1 << 15;
    pub const GUEST_RMP: u64 = 1 << 31;
    pub const GUEST_FINAL: u64 = 1 << 32;
    pub const GUEST_PAGE: u64 = 1 << 33;
    pub const IMPLICIT_ACCESS: u64 = 1 << 48;
    pub const PRIVATE_ACCESS: u64 = 1 << 49;

    /// The names `kvmmmu` prints with `__print_flags` (`kvm_mmu_trace_pferr_flags`, 6.x: the
    /// order of the kernel's table), for [`PfErrorCode::flags`].
    pub const FLAG_NAMES: [(u64, &'static str); 8] = [
        (Self::PRESENT, "P"),
        (Self::WRITE, "W"),
        (Self::USER, "U"),
        (Self::PK, "PK"),
        (Self::SS, "SS"),
        (Self::SGX, "SGX"),
        (Self::RSVD, "RSVD"),
        (Self::FETCH, "F"),
    ];

    fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }

    /// Bit 0: the page was present (a protection fault), else not present.
    pub fn present(self) -> bool {
        self.has(Self::PRESENT)
    }

    /// Bit 1: a write.
    pub fn write(self) -> bool {
        self.has(Self::WRITE)
    }

    /// Bit 2: a user-mode access.
    pub fn user(self) -> bool {
        self.has(Self::USER)
    }

    /// Bit 3: a reserved bit was set in a paging-structure entry.
    pub fn reserved_bit(self) -> bool {
        self.has(Self::RSVD)
    }

    /// Bit 4: an instruction fetch.
    pub fn fetch(self) -> bool {
        self.has(Self::FETCH)
    }

    /// Bits 32/33 of a nested page fault: `Some(true)` for the final guest-physical address,
    /// `Some(false)` for a guest page-table access during the walk, `None` when neither (or
    /// both) is set — a guest `#PF` error code never has them.
    pub fn final_translation(self) -> Option<bool> {
        match (self.has(Self::GUEST_FINAL), self.has(Self::GUEST_PAGE)) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            (true, true) | (false, false) => None,
        }
    }

    /// The access: a fetch, else a write, else a read (x86 page faults have one kind).
    pub fn access(self) -> Access {
        Access { read: !self.write() && !self.fetch(), write: self.write(), fetch: self.fetch() }
    }

    /// The kernel's `__print_flags` rendering (`P|W|U`, empty for 0): the names of
    /// [`PfErrorCode::FLAG_NAMES`], then any other bits as one `0x…` value, as
    /// `trace_print_flags_seq` does.
    pub fn flags(self) -> PfFlags {
        PfFlags(self.0)
    }
}

impl fmt::Display for PfErrorCode {
    /// `write, not present, user`; `read, present, reserved bit`; then `, final translation`
    /// or `, page-table walk` for a nested page fault, and `, PK`, `, SS`, `, SGX`, `, RMP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.access(), if self.present() { "present" } else { "not present" })?;
        for (on, what) in [
            (self.user(), "user"),
            (self.reserved_bit(), "reserved bit"),
            (self.has(Self::PK), "PK"),
            (self.has(Self::SS), "SS"),
            (self.has(Self::SGX), "SGX"),
            (self.has(Self::GUEST_RMP), "RMP"),
        ] {
            if on {
                write!(f, ", {what}")?;
            }
        }
        match self.final_translation() {
            Some(true) => f.write_str(", final translation"),
            Some(false) => f.write_str(", page-table walk"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for PfErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PfErrorCode({:#x}: {self})", self.0)
    }
}

/// [`PfErrorCode::flags`]: the kernel's flag rendering of an error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfFlags(pub u64);

impl fmt::Display for PfFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut first = true;
        for (bit, name) in PfErrorCode::FLAG_NAMES {
            if rest & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                rest &= !bit;
                first = false;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "0x{rest:x}")?;
        }
        Ok(())
    }
}

impl PfFlags {
    /// Parses the kernel's rendering back: flag names and at most one `0x…` rest, joined by
    /// `|`; the empty string is 0. `None` for anything else.
    pub fn parse(text: &str) -> Option<u64> {
        if text.is_empty() {
            return Some(0);
        }
        let mut value = 0u64;
        for part in text.split('|') {
            if let Some((bit, _)) = PfErrorCode::FLAG_NAMES.iter().find(|(_, n)| *n == part) {
                value |= bit;
            } else {
                let hex = part.strip_prefix("0x")?;
                value |= u64::from_str_radix(hex, 16).ok()?;
            }
        }
        Some(value)
    }
}

/// An exit qualification decoded for the exit's reason ([`ExitInfo::qualification`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qualification {
    /// A VMX EPT violation.
    EptViolation(EptViolation),
    /// An SVM nested page fault's error code (`exit_info_1`).
    NestedPageFault(PfErrorCode),
    /// The error code of a `#PF` exit (VMX exception exit, SVM `PF excp`).
    PageFault(PfErrorCode),
    /// A VMX CR access.
    CrAccess(CrAccessQual),
}

impl Qualification {
    /// The access the fault describes (EPT violations, nested page faults and `#PF` exits).
    pub fn fault_access(self) -> Option<Access> {
        match self {
            Self::EptViolation(q) => Some(q.access()),
            Self::NestedPageFault(e) | Self::PageFault(e) => Some(e.access()),
            Self::CrAccess(_) => None,
        }
    }

    /// Whether the faulting translation was present (a permission fault) or not.
    pub fn fault_present(self) -> Option<bool> {
        match self {
            Self::EptViolation(q) => Some(q.present()),
            Self::NestedPageFault(e) | Self::PageFault(e) => Some(e.present()),
            Self::CrAccess(_) => None,
        }
    }

    /// For a fault on guest-physical memory: `Some(true)` when the access was to the final
    /// translation, `Some(false)` when it was to a guest paging structure during the guest's
    /// walk, `None` when the qualification does not say.
    pub fn final_translation(self) -> Option<bool> {
        match self {
            Self::EptViolation(q) => q.final_translation(),
            Self::NestedPageFault(e) => e.final_translation(),
            Self::PageFault(_) | Self::CrAccess(_) => None,
        }
    }
}

impl fmt::Display for Qualification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EptViolation(q) => q.fmt(f),
            Self::NestedPageFault(e) | Self::PageFault(e) => e.fmt(f),
            Self::CrAccess(q) => q.fmt(f),
        }
    }
}

impl ExitInfo {
    /// The EPT-violation qualification of a VMX EPT_VIOLATION exit.
    pub fn ept_violation(&self) -> Option<EptViolation> {
        self.info1()
            .filter(|_| self.reason().is_vmx(VmxBasicReason::EPT_VIOLATION))
            .map(EptViolation)
    }

    /// The error code of an SVM nested page fault (`npf`, `exit_info_1`; the faulting GPA is
    /// `exit_info_2`, [`ExitInfo::info2`]).
    pub fn nested_page_fault(&self) -> Option<PfErrorCode> {
        self.info1().filter(|_| self.reason() == ExitCode::Svm(SvmExitCode::NPF)).map(PfErrorCode)
    }

    /// The `#PF` error code of a page-fault exit: on VMX an EXCEPTION_NMI exit whose
    /// interruption information is a `#PF` with a valid error code (the linear address is the
    /// qualification, `info1`); on SVM a `PF excp` exit (`exit_info_1`; the address is
    /// `exit_info_2`).
    pub fn page_fault_error(&self) -> Option<PfErrorCode> {
        match self.reason() {
            ExitCode::Vmx(r) if r.basic() == VmxBasicReason::EXCEPTION_NMI => {
                let intr = self.intr_info()?;
                let is_pf = intr.exception() == Some(crate::codes::ExceptionVector::PF);
                (is_pf && intr.error_code_valid())
                    .then(|| self.error_code().map(|e| PfErrorCode(u64::from(e))))
                    .flatten()
            }
            ExitCode::Svm(SvmExitCode::EXCP_PF) => self.info1().map(PfErrorCode),
            ExitCode::Vmx(_) | ExitCode::Svm(_) | ExitCode::Raw(_) => None,
        }
    }

    /// The qualification of a VMX CR_ACCESS exit.
    pub fn cr_access(&self) -> Option<CrAccessQual> {
        self.info1().filter(|_| self.reason().is_vmx(VmxBasicReason::CR_ACCESS)).map(CrAccessQual)
    }

    /// The exit's qualification decoded as its reason calls for, if vmxray decodes that
    /// reason's qualification.
    pub fn qualification(&self) -> Option<Qualification> {
        if let Some(q) = self.ept_violation() {
            return Some(Qualification::EptViolation(q));
        }
        if let Some(e) = self.nested_page_fault() {
            return Some(Qualification::NestedPageFault(e));
        }
        if let Some(e) = self.page_fault_error() {
            return Some(Qualification::PageFault(e));
        }
        self.cr_access().map(Qualification::CrAccess)
    }

    /// The event that was being delivered when the exit happened, when one was: VMX
    /// IDT-vectoring information (`info2`), SVM `EXITINTINFO` (`intr_info`, 5.10+). Only a
    /// valid word is returned. An exit whose ISA the trace does not say gives `None`.
    pub fn idt_vectoring(&self) -> Option<IntrInfo> {
        let raw = match self.reason() {
            ExitCode::Vmx(_) => self.info2().and_then(|v| u32::try_from(v).ok()).map(IntrInfo),
            ExitCode::Svm(_) => self.intr_info(),
            ExitCode::Raw(_) => None,
        };
        raw.filter(|v| v.valid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{ExitReason, Isa};
    use crate::event::ExitFields;

    fn exit(
        reason: ExitCode,
        info1: u64,
        info2: u64,
        intr: Option<u32>,
        err: Option<u32>,
    ) -> ExitInfo {
        let isa = match reason {
            ExitCode::Vmx(_) => Some(Isa::Vmx),
            ExitCode::Svm(_) => Some(Isa::Svm),
            ExitCode::Raw(_) => None,
        };
        ExitInfo::from(ExitFields {
            reason,
            isa,
            guest_rip: Some(0x1000),
            info1: Some(info1),
            info2: Some(info2),
            intr_info: intr.map(IntrInfo),
            error_code: err,
            vcpu_id: Some(0),
            requests: None,
        })
    }

    fn ept(q: u64) -> EptViolation {
        exit(ExitCode::Vmx(ExitReason(48)), q, 0, Some(0), Some(0)).ept_violation().unwrap()
    }

    /// The values of the real excerpts: `ept-qualification-question-trace-cmd-session.txt`
    /// (0x181, 0x182), `ept-violation-livelock-mmu-seq.txt` (0x683 with IDT-vectoring
    /// 0x800000ec; 0x200000006 on AMD), and the 0x781 / 0x784.
    #[test]
    fn ept_violation_corpus_values() {
        let q = ept(0x181);
        assert!(q.read() && !q.write() && !q.fetch() && !q.present());
        assert_eq!((q.gla_valid(), q.final_translation()), (true, Some(true)));
        assert_eq!(q.linear_attributes(), Some([false, false, false]));
        assert_eq!(q.to_string(), "read, not present, final translation");
        assert_eq!(ept(0x182).to_string(), "write, not present, final translation");

        // Bit 8 clear: the write hit a guest paging-structure entry; bits 9/10 are undefined
        // then and are not reported.
        let q = ept(0x683);
        assert!(q.read() && q.write() && !q.present());
        assert_eq!(q.final_translation(), Some(false));
        assert_eq!(q.linear_attributes(), None);
        assert_eq!(q.to_string(), "read+write, not present, paging-structure access");

        let q = ept(0x781);
        assert_eq!(q.linear_attributes(), Some([true, true, false]));
        assert_eq!(q.to_string(), "read, not present, final translation, user page, writable page");
        let q = ept(0x784);
        assert!(q.fetch() && !q.read());
        assert_eq!(
            q.to_string(),
            "fetch, not present, final translation, user page, writable page"
        );

        // Present with a missing permission (a write to a read/execute mapping).
        let q = ept(0x1aa);
        assert!(q.present() && q.write());
        assert_eq!(q.permissions(), [true, false, true]);
        assert_eq!(q.to_string(), "write, ept r-x, final translation");
        // No guest-linear address (PDPTE load), with NMI unblocking.
        assert_eq!(ept(0x1001).to_string(), "read, not present, no linear address, NMI unblocking");
        assert_eq!(ept(0x1001).final_translation(), None);
    }

    #[test]
    fn only_the_reason_that_defines_a_qualification_decodes_it() {
        let io = exit(ExitCode::Vmx(ExitReason(30)), 0x181, 0, Some(0), Some(0));
        assert_eq!(io.qualification(), None);
        assert_eq!(io.ept_violation(), None);
        let cr = exit(ExitCode::Vmx(ExitReason(28)), 0x3, 0, Some(0), Some(0));
        assert_eq!(cr.qualification(), Some(Qualification::CrAccess(CrAccessQual(3))));
        assert_eq!(cr.qualification().unwrap().to_string(), "mov cr3, rax");
        // A failed VM-entry with basic reason 48 is not an EPT violation of a running guest,
        // but the basic reason is what the SDM keys the qualification on.
        let raw = exit(ExitCode::Raw(48), 0x181, 0, None, None);
        assert_eq!(raw.qualification(), None);
    }

    #[test]
    fn nested_page_fault_corpus_values() {
        // `ept-violation-livelock-mmu-seq.txt`: `reason EXIT_NPF ... info 200000006 f88eb2ff8`.
        let npf = exit(ExitCode::Svm(SvmExitCode::NPF), 0x2_0000_0006, 0xf_88eb_2ff8, None, None);
        let e = npf.nested_page_fault().unwrap();
        assert!(e.write() && e.user() && !e.present() && !e.fetch());
        assert_eq!(e.final_translation(), Some(false));
        assert_eq!(e.to_string(), "write, not present, user, page-table walk");
        let q = npf.qualification().unwrap();
        assert_eq!(q.final_translation(), Some(false));
        assert_eq!(q.fault_present(), Some(false));
        assert_eq!(q.fault_access().unwrap().to_string(), "write");

        let e = PfErrorCode(0x1_0000_0004);
        assert_eq!(e.final_translation(), Some(true));
        assert_eq!(e.to_string(), "read, not present, user, final translation");
        let e = PfErrorCode(0x1_0000_0015);
        assert_eq!(e.to_string(), "fetch, present, user, final translation");
    }

    #[test]
    fn page_fault_exits_on_both_isas() {
        // VMX: EXCEPTION_NMI with #PF (0x80000b0e) and error code 2 (write, not present).
        let vmx = exit(ExitCode::Vmx(ExitReason(0)), 0xdead_b000, 0, Some(0x8000_0b0e), Some(2));
        assert_eq!(vmx.page_fault_error(), Some(PfErrorCode(2)));
        assert_eq!(vmx.qualification().unwrap().to_string(), "write, not present");
        // A #UD exit has no error code to decode.
        let ud = exit(ExitCode::Vmx(ExitReason(0)), 0, 0, Some(0x8000_0306), Some(0));
        assert_eq!(ud.page_fault_error(), None);
        // SVM `PF excp`: exit_info_1 is the error code.
        let svm = exit(ExitCode::Svm(SvmExitCode::EXCP_PF), 0x7, 0x1000, Some(0), Some(0));
        assert_eq!(svm.page_fault_error(), Some(PfErrorCode(7)));
        assert_eq!(PfErrorCode(7).to_string(), "write, present, user");
    }

    #[test]
    fn idt_vectoring_on_both_isas() {
        // `ept-violation-livelock-mmu-seq.txt`: `info 683 800000ec` — an EPT violation while
        // delivering external interrupt 0xec.
        let vmx = exit(ExitCode::Vmx(ExitReason(48)), 0x683, 0x8000_00ec, None, None);
        let v = vmx.idt_vectoring().unwrap();
        assert_eq!((v.vector(), v.kind()), (0xec, crate::codes::IntrType::ExternalInterrupt));
        assert!(!v.error_code_valid());
        assert_eq!(exit(ExitCode::Vmx(ExitReason(48)), 0x181, 0, None, None).idt_vectoring(), None);
        // SVM: EXITINTINFO is `intr_info`; `info2` is exit_info_2 (a GPA), never vectoring.
        let svm = exit(ExitCode::Svm(SvmExitCode::NPF), 4, 0x8000_0b0e, Some(0x8000_0b0e), Some(0));
        assert_eq!(svm.idt_vectoring(), Some(IntrInfo(0x8000_0b0e)));
        let svm = exit(ExitCode::Svm(SvmExitCode::NPF), 4, 0x8000_0b0e, Some(0), Some(0));
        assert_eq!(svm.idt_vectoring(), None);
    }

    #[test]
    fn pferr_flags_render_and_parse_as_the_kernel_does() {
        assert_eq!(PfErrorCode(0x4).flags().to_string(), "U");
        assert_eq!(PfErrorCode(0x1b).flags().to_string(), "P|W|RSVD|F");
        assert_eq!(PfErrorCode(0x27).flags().to_string(), "P|W|U|PK");
        assert_eq!(PfErrorCode(0x1_0000_0002).flags().to_string(), "W|0x100000000");
        assert_eq!(PfErrorCode(0).flags().to_string(), "");
        for v in [0u64, 4, 0x1b, 0x27, 0x1_0000_0002, 0x8040, u64::MAX] {
            assert_eq!(PfFlags::parse(&PfErrorCode(v).flags().to_string()), Some(v), "{v:#x}");
        }
        assert_eq!(PfFlags::parse("Q"), None);
        assert_eq!(PfFlags::parse("P||W"), None);
    }
}
