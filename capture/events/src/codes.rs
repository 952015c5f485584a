//! Open newtypes for the codes KVM puts in its tracepoints.
//!
//! Every code is a transparent wrapper around the raw integer, with named constants for the
//! values the kernel tables know. A value outside the tables stays representable and prints as
//! `UNKNOWN(0x..)`, so a newer kernel's code never breaks decoding. The tables come from
//! `uapi/asm/vmx.h` (`VMX_EXIT_REASONS`), `uapi/asm/svm.h` (`SVM_EXIT_REASONS`), `uapi/linux/kvm.h`
//! (`KVM_EXIT_*`), the SDM (interruption information, CR-access qualification) and
//! `union kvm_mmu_page_role` in `arch/x86/include/asm/kvm_host.h`.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! code_table {
    ($(#[$meta:meta])* $ty:ident($raw:ty) { $($(#[$cmeta:meta])* $name:ident = $val:expr => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(pub $raw);

        #[allow(missing_docs)]
        impl $ty {
            $($(#[$cmeta])* pub const $name: Self = Self($val);)*

            /// Every named value, in table order.
            pub const ALL: &'static [(Self, &'static str)] = &[$((Self($val), $text),)*];

            /// The kernel's name for this value, if the table has one.
            pub fn name(self) -> Option<&'static str> {
                Self::ALL.iter().find(|(code, _)| *code == self).map(|(_, name)| *name)
            }

            /// The value whose kernel name is `name` (case-sensitive, as the kernel prints it).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().find(|(_, n)| *n == name).map(|(code, _)| *code)
            }
        }
    };
}
pub(crate) use code_table;

code_table! {
    /// A VMX basic exit reason (`exit_reason & 0xffff`), as in the SDM's appendix C.
    VmxBasicReason(u16) {
        EXCEPTION_NMI = 0 => "EXCEPTION_NMI",
        EXTERNAL_INTERRUPT = 1 => "EXTERNAL_INTERRUPT",
        TRIPLE_FAULT = 2 => "TRIPLE_FAULT",
        INIT_SIGNAL = 3 => "INIT_SIGNAL",
        SIPI_SIGNAL = 4 => "SIPI_SIGNAL",
        INTERRUPT_WINDOW = 7 => "INTERRUPT_WINDOW",
        NMI_WINDOW = 8 => "NMI_WINDOW",
        TASK_SWITCH = 9 => "TASK_SWITCH",
        CPUID = 10 => "CPUID",
        HLT = 12 => "HLT",
        INVD = 13 => "INVD",
        INVLPG = 14 => "INVLPG",
        RDPMC = 15 => "RDPMC",
        RDTSC = 16 => "RDTSC",
        VMCALL = 18 => "VMCALL",
        VMCLEAR = 19 => "VMCLEAR",
        VMLAUNCH = 20 => "VMLAUNCH",
        VMPTRLD = 21 => "VMPTRLD",
        VMPTRST = 22 => "VMPTRST",
        VMREAD = 23 => "VMREAD",
        VMRESUME = 24 => "VMRESUME",
        VMWRITE = 25 => "VMWRITE",
        VMOFF = 26 => "VMOFF",
        VMON = 27 => "VMON",
        CR_ACCESS = 28 => "CR_ACCESS",
        DR_ACCESS = 29 => "DR_ACCESS",
        IO_INSTRUCTION = 30 => "IO_INSTRUCTION",
        MSR_READ = 31 => "MSR_READ",
        MSR_WRITE = 32 => "MSR_WRITE",
        INVALID_STATE = 33 => "INVALID_STATE",
        MSR_LOAD_FAIL = 34 => "MSR_LOAD_FAIL",
        MWAIT_INSTRUCTION = 36 => "MWAIT_INSTRUCTION",
        MONITOR_TRAP_FLAG = 37 => "MONITOR_TRAP_FLAG",
        MONITOR_INSTRUCTION = 39 => "MONITOR_INSTRUCTION",
        PAUSE_INSTRUCTION = 40 => "PAUSE_INSTRUCTION",
        MCE_DURING_VMENTRY = 41 => "MCE_DURING_VMENTRY",
        TPR_BELOW_THRESHOLD = 43 => "TPR_BELOW_THRESHOLD",
        APIC_ACCESS = 44 => "APIC_ACCESS",
        EOI_INDUCED = 45 => "EOI_INDUCED",
        GDTR_IDTR = 46 => "GDTR_IDTR",
        LDTR_TR = 47 => "LDTR_TR",
        EPT_VIOLATION = 48 => "EPT_VIOLATION",
        EPT_MISCONFIG = 49 => "EPT_MISCONFIG",
        INVEPT = 50 => "INVEPT",
        RDTSCP = 51 => "RDTSCP",
        PREEMPTION_TIMER = 52 => "PREEMPTION_TIMER",
        INVVPID = 53 => "INVVPID",
        WBINVD = 54 => "WBINVD",
        XSETBV = 55 => "XSETBV",
        APIC_WRITE = 56 => "APIC_WRITE",
        RDRAND = 57 => "RDRAND",
        INVPCID = 58 => "INVPCID",
        VMFUNC = 59 => "VMFUNC",
        ENCLS = 60 => "ENCLS",
        RDSEED = 61 => "RDSEED",
        PML_FULL = 62 => "PML_FULL",
        XSAVES = 63 => "XSAVES",
        XRSTORS = 64 => "XRSTORS",
        UMWAIT = 67 => "UMWAIT",
        TPAUSE = 68 => "TPAUSE",
        BUS_LOCK = 74 => "BUS_LOCK",
        NOTIFY = 75 => "NOTIFY",
        TDCALL = 77 => "TDCALL",
        MSR_READ_IMM = 84 => "MSR_READ_IMM",
        MSR_WRITE_IMM = 85 => "MSR_WRITE_IMM",
    }
}

impl VmxBasicReason {
    /// Kernels before 5.x printed reason 7 as `PENDING_INTERRUPT`.
    pub fn from_name_any(name: &str) -> Option<Self> {
        match name {
            "PENDING_INTERRUPT" => Some(Self::INTERRUPT_WINDOW),
            _ => Self::from_name(name),
        }
    }
}

/// A full VMX exit reason: the basic reason in bits 15:0 plus the flag bits above it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExitReason(pub u32);

#[allow(missing_docs)]
impl ExitReason {
    pub const FAILED_VMENTRY: u32 = 0x8000_0000;
    pub const SMI_FROM_VMX_ROOT: u32 = 1 << 29;
    pub const SMI_PENDING_MTF: u32 = 1 << 28;
    pub const ENCLAVE_MODE: u32 = 1 << 27;
    pub const BUS_LOCK_DETECTED: u32 = 1 << 26;

    /// The basic exit reason (bits 15:0).
    pub fn basic(self) -> VmxBasicReason {
        VmxBasicReason((self.0 & 0xffff) as u16)
    }

    /// Bit 31: the VM-entry itself failed (SDM 26.8).
    pub fn failed_vmentry(self) -> bool {
        self.0 & Self::FAILED_VMENTRY != 0
    }

    /// A reason with the given basic value and no flags.
    pub fn from_basic(basic: VmxBasicReason) -> Self {
        Self(u32::from(basic.0))
    }
}

code_table! {
    /// An SVM exit code (`SVM_EXIT_*`, the VMCB `EXITCODE`; 64 bits since late 2025).
    SvmExitCode(u64) {
        READ_CR0 = 0x000 => "read_cr0",
        READ_CR2 = 0x002 => "read_cr2",
        READ_CR3 = 0x003 => "read_cr3",
        READ_CR4 = 0x004 => "read_cr4",
        READ_CR8 = 0x008 => "read_cr8",
        WRITE_CR0 = 0x010 => "write_cr0",
        WRITE_CR2 = 0x012 => "write_cr2",
        WRITE_CR3 = 0x013 => "write_cr3",
        WRITE_CR4 = 0x014 => "write_cr4",
        WRITE_CR8 = 0x018 => "write_cr8",
        READ_DR0 = 0x020 => "read_dr0",
        READ_DR1 = 0x021 => "read_dr1",
        READ_DR2 = 0x022 => "read_dr2",
        READ_DR3 = 0x023 => "read_dr3",
        READ_DR4 = 0x024 => "read_dr4",
        READ_DR5 = 0x025 => "read_dr5",
        READ_DR6 = 0x026 => "read_dr6",
        READ_DR7 = 0x027 => "read_dr7",
        WRITE_DR0 = 0x030 => "write_dr0",
        WRITE_DR1 = 0x031 => "write_dr1",
        WRITE_DR2 = 0x032 => "write_dr2",
        WRITE_DR3 = 0x033 => "write_dr3",
        WRITE_DR4 = 0x034 => "write_dr4",
        WRITE_DR5 = 0x035 => "write_dr5",
        WRITE_DR6 = 0x036 => "write_dr6",
        WRITE_DR7 = 0x037 => "write_dr7",
        EXCP_DE = 0x040 => "DE excp",
        EXCP_DB = 0x041 => "DB excp",
        EXCP_BP = 0x043 => "BP excp",
        EXCP_OF = 0x044 => "OF excp",
        EXCP_BR = 0x045 => "BR excp",
        EXCP_UD = 0x046 => "UD excp",
        EXCP_NM = 0x047 => "NM excp",
        EXCP_DF = 0x048 => "DF excp",
        EXCP_TS = 0x04a => "TS excp",
        EXCP_NP = 0x04b => "NP excp",
        EXCP_SS = 0x04c => "SS excp",
        EXCP_GP = 0x04d => "GP excp",
        EXCP_PF = 0x04e => "PF excp",
        EXCP_MF = 0x050 => "MF excp",
        EXCP_AC = 0x051 => "AC excp",
        EXCP_MC = 0x052 => "MC excp",
        EXCP_XF = 0x053 => "XF excp",
        INTR = 0x060 => "interrupt",
        NMI = 0x061 => "nmi",
        SMI = 0x062 => "smi",
        INIT = 0x063 => "init",
        VINTR = 0x064 => "vintr",
        CR0_SEL_WRITE = 0x065 => "cr0_sel_write",
        IDTR_READ = 0x066 => "read_idtr",
        GDTR_READ = 0x067 => "read_gdtr",
        LDTR_READ = 0x068 => "read_ldtr",
        TR_READ = 0x069 => "read_rt",
        IDTR_WRITE = 0x06a => "write_idtr",
        GDTR_WRITE = 0x06b => "write_gdtr",
        LDTR_WRITE = 0x06c => "write_ldtr",
        TR_WRITE = 0x06d => "write_rt",
        RDTSC = 0x06e => "rdtsc",
        RDPMC = 0x06f => "rdpmc",
        PUSHF = 0x070 => "pushf",
        POPF = 0x071 => "popf",
        CPUID = 0x072 => "cpuid",
        RSM = 0x073 => "rsm",
        IRET = 0x074 => "iret",
        SWINT = 0x075 => "swint",
        INVD = 0x076 => "invd",
        PAUSE = 0x077 => "pause",
        HLT = 0x078 => "hlt",
        INVLPG = 0x079 => "invlpg",
        INVLPGA = 0x07a => "invlpga",
        IOIO = 0x07b => "io",
        MSR = 0x07c => "msr",
        TASK_SWITCH = 0x07d => "task_switch",
        FERR_FREEZE = 0x07e => "ferr_freeze",
        SHUTDOWN = 0x07f => "shutdown",
        VMRUN = 0x080 => "vmrun",
        VMMCALL = 0x081 => "hypercall",
        VMLOAD = 0x082 => "vmload",
        VMSAVE = 0x083 => "vmsave",
        STGI = 0x084 => "stgi",
        CLGI = 0x085 => "clgi",
        SKINIT = 0x086 => "skinit",
        RDTSCP = 0x087 => "rdtscp",
        ICEBP = 0x088 => "icebp",
        WBINVD = 0x089 => "wbinvd",
        MONITOR = 0x08a => "monitor",
        MWAIT = 0x08b => "mwait",
        XSETBV = 0x08d => "xsetbv",
        EFER_WRITE_TRAP = 0x08f => "write_efer_trap",
        CR0_WRITE_TRAP = 0x090 => "write_cr0_trap",
        CR4_WRITE_TRAP = 0x094 => "write_cr4_trap",
        CR8_WRITE_TRAP = 0x098 => "write_cr8_trap",
        INVPCID = 0x0a2 => "invpcid",
        BUS_LOCK = 0x0a5 => "buslock",
        IDLE_HLT = 0x0a6 => "idle-halt",
        NPF = 0x400 => "npf",
        AVIC_INCOMPLETE_IPI = 0x401 => "avic_incomplete_ipi",
        AVIC_UNACCELERATED_ACCESS = 0x402 => "avic_unaccelerated_access",
        VMGEXIT = 0x403 => "vmgexit",
        VMGEXIT_MMIO_READ = 0x8000_0001 => "vmgexit_mmio_read",
        VMGEXIT_MMIO_WRITE = 0x8000_0002 => "vmgexit_mmio_write",
        VMGEXIT_NMI_COMPLETE = 0x8000_0003 => "vmgexit_nmi_complete",
        VMGEXIT_AP_HLT_LOOP = 0x8000_0004 => "vmgexit_ap_hlt_loop",
        VMGEXIT_AP_JUMP_TABLE = 0x8000_0005 => "vmgexit_ap_jump_table",
        VMGEXIT_PSC = 0x8000_0010 => "vmgexit_page_state_change",
        VMGEXIT_GUEST_REQUEST = 0x8000_0011 => "vmgexit_guest_request",
        VMGEXIT_EXT_GUEST_REQUEST = 0x8000_0012 => "vmgexit_ext_guest_request",
        VMGEXIT_AP_CREATION = 0x8000_0013 => "vmgexit_ap_creation",
        VMGEXIT_HV_FEATURES = 0x8000_fffd => "vmgexit_hypervisor_feature",
        ERR = 0xffff_ffff => "invalid_guest_state",
    }
}

/// Which hardware virtualization extension produced an exit (`isa` field: 1 VMX, 2 SVM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// Intel VMX (`KVM_ISA_VMX` = 1).
    Vmx,
    /// AMD SVM (`KVM_ISA_SVM` = 2).
    Svm,
}

impl Isa {
    /// The `isa` field value as the kernel stores it; other values are not an ISA.
    pub fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            1 => Some(Self::Vmx),
            2 => Some(Self::Svm),
            _ => None,
        }
    }

    /// The raw `isa` value.
    pub fn raw(self) -> u32 {
        match self {
            Self::Vmx => 1,
            Self::Svm => 2,
        }
    }
}

/// An exit code as a tracepoint carries it: VMX exit reason, SVM exit code, or a raw value whose
/// ISA the trace does not say (old kernels had no `isa` field and their text shows only a name).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "isa", content = "code", rename_all = "lowercase")]
pub enum ExitCode {
    /// An Intel VMX exit reason.
    Vmx(ExitReason),
    /// An AMD SVM exit code.
    Svm(SvmExitCode),
    /// A raw code of unknown ISA.
    Raw(u64),
}

impl ExitCode {
    /// Builds the code from the raw field and the optional `isa` field.
    pub fn from_raw(raw: u64, isa: Option<Isa>) -> Self {
        match isa {
            Some(Isa::Vmx) => match u32::try_from(raw) {
                Ok(r) => Self::Vmx(ExitReason(r)),
                Err(_) => Self::Raw(raw),
            },
            Some(Isa::Svm) => Self::Svm(SvmExitCode(raw)),
            None => Self::Raw(raw),
        }
    }

    /// Resolves a name printed by the kernel (`EPT_VIOLATION`, `INVALID_STATE FAILED_VMENTRY`,
    /// `npf`, ...) into a code. VMX names are upper case, SVM names lower case, so the two tables
    /// never collide.
    pub fn from_name(name: &str) -> Option<Self> {
        let mut words = name.split_whitespace();
        let first = words.next()?;
        if let Some(basic) = VmxBasicReason::from_name_any(first) {
            let mut raw = u32::from(basic.0);
            for flag in words {
                match flag {
                    "FAILED_VMENTRY" => raw |= ExitReason::FAILED_VMENTRY,
                    _ => return None,
                }
            }
            return Some(Self::Vmx(ExitReason(raw)));
        }
        // SVM names may contain a space ("PF excp").
        SvmExitCode::from_name(name.trim()).map(Self::Svm)
    }

    /// The VMX basic reason, when this is a VMX code.
    pub fn vmx_basic(self) -> Option<VmxBasicReason> {
        match self {
            Self::Vmx(r) => Some(r.basic()),
            Self::Svm(_) | Self::Raw(_) => None,
        }
    }

    /// The raw integer, as the kernel stored it.
    pub fn raw(self) -> u64 {
        match self {
            Self::Vmx(r) => u64::from(r.0),
            Self::Svm(c) => c.0,
            Self::Raw(r) => r,
        }
    }

    /// True for a VMX exit whose basic reason is `basic`.
    pub fn is_vmx(self, basic: VmxBasicReason) -> bool {
        self.vmx_basic() == Some(basic)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.basic().name() {
            Some(name) => f.write_str(name)?,
            None => write!(f, "UNKNOWN(0x{:x})", self.basic().0)?,
        }
        if self.failed_vmentry() {
            f.write_str(" FAILED_VMENTRY")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExitReason({self} = 0x{:x})", self.0)
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmx(r) => r.fmt(f),
            Self::Svm(c) => c.fmt(f),
            Self::Raw(r) => write!(f, "UNKNOWN(0x{r:x})"),
        }
    }
}

impl fmt::Debug for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! display_named {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "UNKNOWN(0x{:x})", self.0),
                }
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({} = 0x{:x})", stringify!($ty), self, self.0)
            }
        }
    )*};
}
pub(crate) use display_named;

display_named!(
    VmxBasicReason,
    SvmExitCode,
    ExceptionVector,
    UserspaceExitReason,
    VmInstructionError
);

code_table! {
    /// An x86 exception vector (`#UD` = 6, `#DF` = 8, `#PF` = 14, ...).
    ExceptionVector(u8) {
        DE = 0 => "#DE",
        DB = 1 => "#DB",
        NMI = 2 => "NMI",
        BP = 3 => "#BP",
        OF = 4 => "#OF",
        BR = 5 => "#BR",
        UD = 6 => "#UD",
        NM = 7 => "#NM",
        DF = 8 => "#DF",
        TS = 10 => "#TS",
        NP = 11 => "#NP",
        SS = 12 => "#SS",
        GP = 13 => "#GP",
        PF = 14 => "#PF",
        MF = 16 => "#MF",
        AC = 17 => "#AC",
        MC = 18 => "#MC",
        XM = 19 => "#XM",
        VE = 20 => "#VE",
        CP = 21 => "#CP",
        HV = 28 => "#HV",
        VC = 29 => "#VC",
        SX = 30 => "#SX",
    }
}

impl ExceptionVector {
    /// Whether the architecture pushes an error code for this vector (SDM 6.3.1; #CP too).
    pub fn has_error_code(self) -> bool {
        matches!(self.0, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
    }

    /// Contributory exceptions, whose nesting leads to #DF (SDM table 6-4).
    pub fn is_contributory(self) -> bool {
        matches!(self.0, 0 | 10 | 11 | 12 | 13)
    }
}

code_table! {
    /// A `KVM_EXIT_*` reason a vCPU run returns to userspace (`kvm_userspace_exit.reason`).
    UserspaceExitReason(u32) {
        UNKNOWN = 0 => "KVM_EXIT_UNKNOWN",
        EXCEPTION = 1 => "KVM_EXIT_EXCEPTION",
        IO = 2 => "KVM_EXIT_IO",
        HYPERCALL = 3 => "KVM_EXIT_HYPERCALL",
        DEBUG = 4 => "KVM_EXIT_DEBUG",
        HLT = 5 => "KVM_EXIT_HLT",
        MMIO = 6 => "KVM_EXIT_MMIO",
        IRQ_WINDOW_OPEN = 7 => "KVM_EXIT_IRQ_WINDOW_OPEN",
        SHUTDOWN = 8 => "KVM_EXIT_SHUTDOWN",
        FAIL_ENTRY = 9 => "KVM_EXIT_FAIL_ENTRY",
        INTR = 10 => "KVM_EXIT_INTR",
        SET_TPR = 11 => "KVM_EXIT_SET_TPR",
        TPR_ACCESS = 12 => "KVM_EXIT_TPR_ACCESS",
        S390_SIEIC = 13 => "KVM_EXIT_S390_SIEIC",
        S390_RESET = 14 => "KVM_EXIT_S390_RESET",
        DCR = 15 => "KVM_EXIT_DCR",
        NMI = 16 => "KVM_EXIT_NMI",
        INTERNAL_ERROR = 17 => "KVM_EXIT_INTERNAL_ERROR",
        OSI = 18 => "KVM_EXIT_OSI",
        PAPR_HCALL = 19 => "KVM_EXIT_PAPR_HCALL",
        S390_UCONTROL = 20 => "KVM_EXIT_S390_UCONTROL",
        WATCHDOG = 21 => "KVM_EXIT_WATCHDOG",
        S390_TSCH = 22 => "KVM_EXIT_S390_TSCH",
        EPR = 23 => "KVM_EXIT_EPR",
        SYSTEM_EVENT = 24 => "KVM_EXIT_SYSTEM_EVENT",
        S390_STSI = 25 => "KVM_EXIT_S390_STSI",
        IOAPIC_EOI = 26 => "KVM_EXIT_IOAPIC_EOI",
        HYPERV = 27 => "KVM_EXIT_HYPERV",
        ARM_NISV = 28 => "KVM_EXIT_ARM_NISV",
        X86_RDMSR = 29 => "KVM_EXIT_X86_RDMSR",
        X86_WRMSR = 30 => "KVM_EXIT_X86_WRMSR",
        DIRTY_RING_FULL = 31 => "KVM_EXIT_DIRTY_RING_FULL",
        AP_RESET_HOLD = 32 => "KVM_EXIT_AP_RESET_HOLD",
        X86_BUS_LOCK = 33 => "KVM_EXIT_X86_BUS_LOCK",
        XEN = 34 => "KVM_EXIT_XEN",
        RISCV_SBI = 35 => "KVM_EXIT_RISCV_SBI",
        RISCV_CSR = 36 => "KVM_EXIT_RISCV_CSR",
        NOTIFY = 37 => "KVM_EXIT_NOTIFY",
        LOONGARCH_IOCSR = 38 => "KVM_EXIT_LOONGARCH_IOCSR",
        MEMORY_FAULT = 39 => "KVM_EXIT_MEMORY_FAULT",
    }
}

code_table! {
    /// A VM-instruction error number (SDM 31.4; `kvm_nested_vmenter_failed.err`).
    VmInstructionError(u32) {
        VMCALL_IN_VMX_ROOT = 1 => "VMCALL_IN_VMX_ROOT_OPERATION",
        VMCLEAR_INVALID_ADDRESS = 2 => "VMCLEAR_INVALID_ADDRESS",
        VMCLEAR_VMXON_POINTER = 3 => "VMCLEAR_VMXON_POINTER",
        VMLAUNCH_NONCLEAR_VMCS = 4 => "VMLAUNCH_NONCLEAR_VMCS",
        VMRESUME_NONLAUNCHED_VMCS = 5 => "VMRESUME_NONLAUNCHED_VMCS",
        VMRESUME_AFTER_VMXOFF = 6 => "VMRESUME_AFTER_VMXOFF",
        ENTRY_INVALID_CONTROL_FIELD = 7 => "VMENTRY_INVALID_CONTROL_FIELD",
        ENTRY_INVALID_HOST_STATE_FIELD = 8 => "VMENTRY_INVALID_HOST_STATE_FIELD",
        VMPTRLD_INVALID_ADDRESS = 9 => "VMPTRLD_INVALID_ADDRESS",
        VMPTRLD_VMXON_POINTER = 10 => "VMPTRLD_VMXON_POINTER",
        VMPTRLD_INCORRECT_REVISION = 11 => "VMPTRLD_INCORRECT_VMCS_REVISION_ID",
        UNSUPPORTED_VMCS_COMPONENT = 12 => "UNSUPPORTED_VMCS_COMPONENT",
        VMWRITE_READ_ONLY = 13 => "VMWRITE_READ_ONLY_VMCS_COMPONENT",
        VMXON_IN_VMX_ROOT = 15 => "VMXON_IN_VMX_ROOT_OPERATION",
        ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26 => "VMENTRY_EVENTS_BLOCKED_BY_MOV_SS",
        INVALID_INVEPT_INVVPID_OPERAND = 28 => "INVALID_OPERAND_TO_INVEPT_INVVPID",
    }
}

/// The type field (bits 10:8) of VMX interruption information (SDM 25.8.3, 26.9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 1: reserved.
    Reserved,
    /// 2: NMI.
    Nmi,
    /// 3: hardware exception (#PF, #GP, #UD, ...).
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (ICEBP / INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (MTF on entry).
    Other,
}

impl fmt::Display for IntrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ExternalInterrupt => "external interrupt",
            Self::Reserved => "reserved",
            Self::Nmi => "NMI",
            Self::HardwareException => "hardware exception",
            Self::SoftwareInterrupt => "software interrupt",
            Self::PrivilegedSoftwareException => "privileged software exception",
            Self::SoftwareException => "software exception",
            Self::Other => "other",
        })
    }
}

/// VMX interruption information: `VM_EXIT_INTR_INFO`, `IDT_VECTORING_INFO`,
/// `VM_ENTRY_INTR_INFO_FIELD` (and `kvm_nested_vmenter.event_inj`, `kvm_entry.intr_info`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IntrInfo(pub u32);

impl IntrInfo {
    /// Bit 31: the information is valid.
    pub fn valid(self) -> bool {
        self.0 & 0x8000_0000 != 0
    }

    /// Bits 7:0: the vector.
    pub fn vector(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// Bits 10:8: the event type.
    pub fn kind(self) -> IntrType {
        match (self.0 >> 8) & 7 {
            0 => IntrType::ExternalInterrupt,
            1 => IntrType::Reserved,
            2 => IntrType::Nmi,
            3 => IntrType::HardwareException,
            4 => IntrType::SoftwareInterrupt,
            5 => IntrType::PrivilegedSoftwareException,
            6 => IntrType::SoftwareException,
            _ => IntrType::Other,
        }
    }

    /// Bit 11: an error code is delivered.
    pub fn error_code_valid(self) -> bool {
        self.0 & 0x800 != 0
    }

    /// Bit 12: NMI unblocking due to IRET (exit information only).
    pub fn nmi_unblocking(self) -> bool {
        self.0 & 0x1000 != 0
    }

    /// The exception vector, when this describes a valid exception.
    pub fn exception(self) -> Option<ExceptionVector> {
        (self.valid()
            && matches!(
                self.kind(),
                IntrType::HardwareException
                    | IntrType::SoftwareException
                    | IntrType::PrivilegedSoftwareException
            ))
        .then(|| ExceptionVector(self.vector()))
    }
}

impl fmt::Display for IntrInfo {
    /// `#PF +ec` for an exception (`+ec`: an error code is delivered), `external interrupt
    /// 0xec`, `NMI 0x2`, `none(0x…)` when not valid.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.valid() {
            return write!(f, "none(0x{:08x})", self.0);
        }
        let kind = self.kind();
        match self.exception() {
            Some(v) => write!(f, "{v}")?,
            None => write!(f, "{kind} 0x{:x}", self.vector())?,
        }
        if self.error_code_valid() {
            f.write_str(" +ec")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IntrInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntrInfo(0x{:08x} {self})", self.0)
    }
}

/// How a control register was accessed (CR-access qualification bits 5:4, SDM table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrAccessType {
    /// MOV to CR.
    MovTo,
    /// MOV from CR.
    MovFrom,
    /// CLTS.
    Clts,
    /// LMSW.
    Lmsw,
}

impl fmt::Display for CrAccessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MovTo => "mov to",
            Self::MovFrom => "mov from",
            Self::Clts => "clts",
            Self::Lmsw => "lmsw",
        })
    }
}

/// The exit qualification of a VMX CR_ACCESS exit (reason 28, `kvm_exit.info1`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CrAccessQual(pub u64);

impl CrAccessQual {
    /// Bits 3:0: the control register number (KVM's `handle_cr` masks with 15).
    pub fn cr(self) -> u8 {
        (self.0 & 0xf) as u8
    }

    /// Bits 5:4: the access type.
    pub fn access(self) -> CrAccessType {
        match (self.0 >> 4) & 3 {
            0 => CrAccessType::MovTo,
            1 => CrAccessType::MovFrom,
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw,
        }
    }

    /// Bits 11:8: the general-purpose register (0 RAX .. 15 R15).
    pub fn gpr(self) -> u8 {
        ((self.0 >> 8) & 0xf) as u8
    }

    /// The GPR's name.
    pub fn gpr_name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        NAMES[usize::from(self.gpr())]
    }

    /// Bits 31:16: LMSW source data.
    pub fn lmsw_source(self) -> u16 {
        ((self.0 >> 16) & 0xffff) as u16
    }
}

impl fmt::Display for CrAccessQual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.access() {
            CrAccessType::MovTo => write!(f, "mov cr{}, {}", self.cr(), self.gpr_name()),
            CrAccessType::MovFrom => write!(f, "mov {}, cr{}", self.gpr_name(), self.cr()),
            CrAccessType::Clts => f.write_str("clts"),
            CrAccessType::Lmsw => write!(f, "lmsw 0x{:x}", self.lmsw_source()),
        }
    }
}

impl fmt::Debug for CrAccessQual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CrAccessQual(0x{:x}: {self})", self.0)
    }
}

/// `union kvm_mmu_page_role` (6.x layout, `arch/x86/include/asm/kvm_host.h`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MmuPageRole(pub u32);

#[allow(missing_docs)]
impl MmuPageRole {
    /// How the kernel prints the access bits, indexed by [`MmuPageRole::access`]
    /// (mmutrace.h's `access_str[]`: w = ACC_WRITE, u = ACC_USER, x = ACC_EXEC).
    pub const ACCESS_NAMES: [&'static str; 8] =
        ["---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"];

    /// Bit 4: `has_4_byte_gpte` (6.x), `gpte_is_8_bytes` (5.x), `cr4_pae` (older).
    pub const BIT4: u32 = 1 << 4;

    /// A `role` word between a kernel's layout and the 6.x one this type reads: a kernel
    /// before 5.18 (`bit4_inverted`) gave bit 4 the opposite sense, so its words are read and
    /// written with bit 4 flipped (the same flip both ways); other kernels' words are kept.
    pub const fn bit4_to_or_from_6x(word: u64, bit4_inverted: bool) -> u64 {
        if bit4_inverted { word ^ Self::BIT4 as u64 } else { word }
    }
    pub const DIRECT: u32 = 1 << 7;
    pub const INVALID: u32 = 1 << 11;
    pub const EFER_NX: u32 = 1 << 12;
    pub const CR0_WP: u32 = 1 << 13;
    pub const AD_DISABLED: u32 = 1 << 16;
    pub const GUEST_MODE: u32 = 1 << 17;
    pub const PASSTHROUGH: u32 = 1 << 18;
    /// Bits 31:24, the SMM address space.
    pub const SMM_MASK: u32 = 0xff00_0000;

    pub fn level(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    pub fn has_4_byte_gpte(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    pub fn quadrant(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    pub fn direct(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// ACC_* bits: 1 exec, 2 write, 4 user.
    pub fn access(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    pub fn invalid(self) -> bool {
        self.0 & (1 << 11) != 0
    }
    pub fn efer_nx(self) -> bool {
        self.0 & (1 << 12) != 0
    }
    pub fn cr0_wp(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    pub fn smep_andnot_wp(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    pub fn smap_andnot_wp(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    pub fn ad_disabled(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    pub fn guest_mode(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    pub fn passthrough(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Bits 31:24: the SMM address space (non-zero inside SMM).
    pub fn smm(self) -> u8 {
        (self.0 >> 24) as u8
    }
}

impl fmt::Display for MmuPageRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "l{} {}-byte q{}{} {}{} {}nxe {}ad{}{}",
            self.level(),
            if self.has_4_byte_gpte() { 4 } else { 8 },
            self.quadrant(),
            if self.direct() { " direct" } else { "" },
            Self::ACCESS_NAMES[usize::from(self.access())],
            if self.invalid() { " invalid" } else { "" },
            if self.efer_nx() { "" } else { "!" },
            if self.ad_disabled() { "!" } else { "" },
            if self.guest_mode() { " guest_mode" } else { "" },
            if self.smm() != 0 { " smm" } else { "" },
        )
    }
}

impl fmt::Debug for MmuPageRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MmuPageRole(0x{:x}: {self})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reason_names_and_flags() {
        assert_eq!(ExitReason(48).to_string(), "EPT_VIOLATION");
        assert_eq!(ExitReason(0x8000_0021).to_string(), "INVALID_STATE FAILED_VMENTRY");
        assert_eq!(ExitReason(0x4e).to_string(), "UNKNOWN(0x4e)");
        assert!(ExitReason(0x8000_0021).failed_vmentry());
        assert_eq!(ExitReason(0x8000_0021).basic(), VmxBasicReason::INVALID_STATE);
    }

    #[test]
    fn exit_code_from_printed_names() {
        assert_eq!(
            ExitCode::from_name("INVALID_STATE FAILED_VMENTRY"),
            Some(ExitCode::Vmx(ExitReason(0x8000_0021)))
        );
        assert_eq!(ExitCode::from_name("npf"), Some(ExitCode::Svm(SvmExitCode::NPF)));
        assert_eq!(ExitCode::from_name("PF excp"), Some(ExitCode::Svm(SvmExitCode::EXCP_PF)));
        assert_eq!(ExitCode::from_name("PENDING_INTERRUPT"), Some(ExitCode::Vmx(ExitReason(7))));
        assert_eq!(ExitCode::from_name("NOT_A_REASON"), None);
        assert_eq!(ExitCode::Raw(0x1234).to_string(), "UNKNOWN(0x1234)");
    }

    #[test]
    fn intr_info_decodes_sdm_examples() {
        let pf = IntrInfo(0x8000_0b0e);
        assert!(pf.valid() && pf.error_code_valid());
        assert_eq!(pf.kind(), IntrType::HardwareException);
        assert_eq!(pf.exception(), Some(ExceptionVector::PF));
        assert_eq!(IntrInfo(0x8000_0306).exception(), Some(ExceptionVector::UD));
        assert_eq!(IntrInfo(0x8000_0202).kind(), IntrType::Nmi);
        assert_eq!(IntrInfo(0x8000_0020).kind(), IntrType::ExternalInterrupt);
        assert_eq!(IntrInfo(0x0000_0b0e).exception(), None);
    }

    #[test]
    fn cr_access_qualification() {
        assert_eq!(CrAccessQual(0x3).to_string(), "mov cr3, rax");
        assert_eq!(CrAccessQual(0x13).to_string(), "mov rax, cr3");
        assert_eq!(CrAccessQual(0x0b03).gpr_name(), "r11");
        assert_eq!(CrAccessQual(0x20).access(), CrAccessType::Clts);
    }

    #[test]
    fn mmu_role_matches_kernel_rendering() {
        // kvm_mmu_get_page in samples/real: role 0x1704 prints "l4 8-byte q0 wux nxe ad".
        let role = MmuPageRole(0x1704);
        assert_eq!(role.level(), 4);
        assert!(!role.direct() && role.efer_nx() && !role.ad_disabled() && !role.guest_mode());
        assert_eq!(role.to_string(), "l4 8-byte q0 wux nxe ad");
        assert!(MmuPageRole(0x0002_0000).guest_mode());
        assert_eq!(MmuPageRole(0x0100_0000).smm(), 1);
    }

    #[test]
    fn unknown_codes_print_as_unknown() {
        assert_eq!(UserspaceExitReason(8).to_string(), "KVM_EXIT_SHUTDOWN");
        assert_eq!(UserspaceExitReason(99).to_string(), "UNKNOWN(0x63)");
        assert_eq!(ExceptionVector(6).to_string(), "#UD");
        assert_eq!(ExceptionVector(9).to_string(), "UNKNOWN(0x9)");
        assert_eq!(SvmExitCode(0x7f).to_string(), "shutdown");
    }
}
