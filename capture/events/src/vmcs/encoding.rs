//! VMCS field encodings (Intel SDM Vol. 3, Appendix B "Field Encoding in VMCS").
//!
//! An encoding is a 32-bit value whose bits say what the field is (SDM §25.11.2):
//!
//! ```text
//!  bit 0      access type: 0 full, 1 high (the upper 32 bits of a 64-bit field)
//!  bits 9:1   index
//!  bits 11:10 type: 0 control, 1 VM-exit information (read-only data), 2 guest state, 3 host state
//!  bits 14:13 width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural width
//! ```
//!
//! So width and type come from the encoding itself; the table only names the fields.
//! [`FieldEncoding`] is an open newtype: a field the table does not know (a future SDM
//! revision, a typo in a user's record) is still representable and prints `UNKNOWN(0x..)`.

use std::fmt;

use serde::{Serialize, Serializer};

/// A VMCS field encoding (SDM Appendix B).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldEncoding(pub u32);

/// The width of a field (encoding bits 14:13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldWidth {
    /// 16-bit.
    Bits16,
    /// 64-bit (the "high" access of such a field is 32 bits wide).
    Bits64,
    /// 32-bit.
    Bits32,
    /// Natural width (64 bits on a 64-bit processor).
    Natural,
}

impl FieldWidth {
    /// The number of value bits (natural width counted as 64).
    pub fn bits(self) -> u32 {
        match self {
            Self::Bits16 => 16,
            Self::Bits32 => 32,
            Self::Bits64 | Self::Natural => 64,
        }
    }
}

/// The kind of a field (encoding bits 11:10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// VM-execution, VM-exit and VM-entry controls.
    Control,
    /// VM-exit information (read-only data fields).
    ExitInfo,
    /// Guest-state area.
    Guest,
    /// Host-state area.
    Host,
}

macro_rules! vmcs_fields {
    ($($name:ident = $enc:literal),* $(,)?) => {
        impl FieldEncoding {
            $(
                #[doc = concat!("`", stringify!($name), "` (", stringify!($enc), ").")]
                pub const $name: Self = Self($enc);
            )*
            /// Every named field of the table, with its name, in encoding order by group.
            pub const ALL: &'static [(FieldEncoding, &'static str)] =
                &[$((Self::$name, stringify!($name))),*];
        }
    };
}

vmcs_fields! {
    // 16-bit control fields.
    VIRTUAL_PROCESSOR_ID = 0x0000,
    POSTED_INTR_NV = 0x0002,
    EPTP_INDEX = 0x0004,
    // 16-bit guest-state fields.
    GUEST_ES_SELECTOR = 0x0800,
    GUEST_CS_SELECTOR = 0x0802,
    GUEST_SS_SELECTOR = 0x0804,
    GUEST_DS_SELECTOR = 0x0806,
    GUEST_FS_SELECTOR = 0x0808,
    GUEST_GS_SELECTOR = 0x080a,
    GUEST_LDTR_SELECTOR = 0x080c,
    GUEST_TR_SELECTOR = 0x080e,
    GUEST_INTR_STATUS = 0x0810,
    GUEST_PML_INDEX = 0x0812,
    GUEST_UINV = 0x0814,
    // 16-bit host-state fields.
    HOST_ES_SELECTOR = 0x0c00,
    HOST_CS_SELECTOR = 0x0c02,
    HOST_SS_SELECTOR = 0x0c04,
    HOST_DS_SELECTOR = 0x0c06,
    HOST_FS_SELECTOR = 0x0c08,
    HOST_GS_SELECTOR = 0x0c0a,
    HOST_TR_SELECTOR = 0x0c0c,
    // 64-bit control fields.
    IO_BITMAP_A = 0x2000,
    IO_BITMAP_B = 0x2002,
    MSR_BITMAP = 0x2004,
    VM_EXIT_MSR_STORE_ADDR = 0x2006,
    VM_EXIT_MSR_LOAD_ADDR = 0x2008,
    VM_ENTRY_MSR_LOAD_ADDR = 0x200a,
    EXECUTIVE_VMCS_POINTER = 0x200c,
    PML_ADDRESS = 0x200e,
    TSC_OFFSET = 0x2010,
    VIRTUAL_APIC_PAGE_ADDR = 0x2012,
    APIC_ACCESS_ADDR = 0x2014,
    POSTED_INTR_DESC_ADDR = 0x2016,
    VM_FUNCTION_CONTROL = 0x2018,
    EPT_POINTER = 0x201a,
    EOI_EXIT_BITMAP0 = 0x201c,
    EOI_EXIT_BITMAP1 = 0x201e,
    EOI_EXIT_BITMAP2 = 0x2020,
    EOI_EXIT_BITMAP3 = 0x2022,
    EPTP_LIST_ADDRESS = 0x2024,
    VMREAD_BITMAP = 0x2026,
    VMWRITE_BITMAP = 0x2028,
    VE_INFORMATION_ADDRESS = 0x202a,
    XSS_EXIT_BITMAP = 0x202c,
    ENCLS_EXITING_BITMAP = 0x202e,
    SPP_TABLE_POINTER = 0x2030,
    TSC_MULTIPLIER = 0x2032,
    TERTIARY_VM_EXEC_CONTROL = 0x2034,
    ENCLV_EXITING_BITMAP = 0x2036,
    LOW_PASID_DIRECTORY_ADDRESS = 0x2038,
    HIGH_PASID_DIRECTORY_ADDRESS = 0x203a,
    SHARED_EPT_POINTER = 0x203c,
    PCONFIG_EXITING_BITMAP = 0x203e,
    HLAT_POINTER = 0x2040,
    PID_POINTER_TABLE = 0x2042,
    SECONDARY_VM_EXIT_CONTROLS = 0x2044,
    IA32_SPEC_CTRL_MASK = 0x204a,
    IA32_SPEC_CTRL_SHADOW = 0x204c,
    // 64-bit read-only data fields.
    GUEST_PHYSICAL_ADDRESS = 0x2400,
    // 64-bit guest-state fields.
    VMCS_LINK_POINTER = 0x2800,
    GUEST_IA32_DEBUGCTL = 0x2802,
    GUEST_IA32_PAT = 0x2804,
    GUEST_IA32_EFER = 0x2806,
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808,
    GUEST_PDPTR0 = 0x280a,
    GUEST_PDPTR1 = 0x280c,
    GUEST_PDPTR2 = 0x280e,
    GUEST_PDPTR3 = 0x2810,
    GUEST_BNDCFGS = 0x2812,
    GUEST_IA32_RTIT_CTL = 0x2814,
    GUEST_IA32_LBR_CTL = 0x2816,
    GUEST_IA32_PKRS = 0x2818,
    // 64-bit host-state fields.
    HOST_IA32_PAT = 0x2c00,
    HOST_IA32_EFER = 0x2c02,
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2c04,
    HOST_IA32_PKRS = 0x2c06,
    // 32-bit control fields.
    PIN_BASED_VM_EXEC_CONTROL = 0x4000,
    CPU_BASED_VM_EXEC_CONTROL = 0x4002,
    EXCEPTION_BITMAP = 0x4004,
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006,
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008,
    CR3_TARGET_COUNT = 0x400a,
    VM_EXIT_CONTROLS = 0x400c,
    VM_EXIT_MSR_STORE_COUNT = 0x400e,
    VM_EXIT_MSR_LOAD_COUNT = 0x4010,
    VM_ENTRY_CONTROLS = 0x4012,
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014,
    VM_ENTRY_INTR_INFO_FIELD = 0x4016,
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018,
    VM_ENTRY_INSTRUCTION_LEN = 0x401a,
    TPR_THRESHOLD = 0x401c,
    SECONDARY_VM_EXEC_CONTROL = 0x401e,
    PLE_GAP = 0x4020,
    PLE_WINDOW = 0x4022,
    NOTIFY_WINDOW = 0x4024,
    // 32-bit read-only data fields.
    VM_INSTRUCTION_ERROR = 0x4400,
    VM_EXIT_REASON = 0x4402,
    VM_EXIT_INTR_INFO = 0x4404,
    VM_EXIT_INTR_ERROR_CODE = 0x4406,
    IDT_VECTORING_INFO_FIELD = 0x4408,
    IDT_VECTORING_ERROR_CODE = 0x440a,
    VM_EXIT_INSTRUCTION_LEN = 0x440c,
    VMX_INSTRUCTION_INFO = 0x440e,
    // 32-bit guest-state fields.
    GUEST_ES_LIMIT = 0x4800,
    GUEST_CS_LIMIT = 0x4802,
    GUEST_SS_LIMIT = 0x4804,
    GUEST_DS_LIMIT = 0x4806,
    GUEST_FS_LIMIT = 0x4808,
    GUEST_GS_LIMIT = 0x480a,
    GUEST_LDTR_LIMIT = 0x480c,
    GUEST_TR_LIMIT = 0x480e,
    GUEST_GDTR_LIMIT = 0x4810,
    GUEST_IDTR_LIMIT = 0x4812,
    GUEST_ES_AR_BYTES = 0x4814,
    GUEST_CS_AR_BYTES = 0x4816,
    GUEST_SS_AR_BYTES = 0x4818,
    GUEST_DS_AR_BYTES = 0x481a,
    GUEST_FS_AR_BYTES = 0x481c,
    GUEST_GS_AR_BYTES = 0x481e,
    GUEST_LDTR_AR_BYTES = 0x4820,
    GUEST_TR_AR_BYTES = 0x4822,
    GUEST_INTERRUPTIBILITY_INFO = 0x4824,
    GUEST_ACTIVITY_STATE = 0x4826,
    GUEST_SMBASE = 0x4828,
    GUEST_SYSENTER_CS = 0x482a,
    VMX_PREEMPTION_TIMER_VALUE = 0x482e,
    // 32-bit host-state field.
    HOST_IA32_SYSENTER_CS = 0x4c00,
    // Natural-width control fields.
    CR0_GUEST_HOST_MASK = 0x6000,
    CR4_GUEST_HOST_MASK = 0x6002,
    CR0_READ_SHADOW = 0x6004,
    CR4_READ_SHADOW = 0x6006,
    CR3_TARGET_VALUE0 = 0x6008,
    CR3_TARGET_VALUE1 = 0x600a,
    CR3_TARGET_VALUE2 = 0x600c,
    CR3_TARGET_VALUE3 = 0x600e,
    // Natural-width read-only data fields.
    EXIT_QUALIFICATION = 0x6400,
    IO_RCX = 0x6402,
    IO_RSI = 0x6404,
    IO_RDI = 0x6406,
    IO_RIP = 0x6408,
    GUEST_LINEAR_ADDRESS = 0x640a,
    // Natural-width guest-state fields.
    GUEST_CR0 = 0x6800,
    GUEST_CR3 = 0x6802,
    GUEST_CR4 = 0x6804,
    GUEST_ES_BASE = 0x6806,
    GUEST_CS_BASE = 0x6808,
    GUEST_SS_BASE = 0x680a,
    GUEST_DS_BASE = 0x680c,
    GUEST_FS_BASE = 0x680e,
    GUEST_GS_BASE = 0x6810,
    GUEST_LDTR_BASE = 0x6812,
    GUEST_TR_BASE = 0x6814,
    GUEST_GDTR_BASE = 0x6816,
    GUEST_IDTR_BASE = 0x6818,
    GUEST_DR7 = 0x681a,
    GUEST_RSP = 0x681c,
    GUEST_RIP = 0x681e,
    GUEST_RFLAGS = 0x6820,
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822,
    GUEST_SYSENTER_ESP = 0x6824,
    GUEST_SYSENTER_EIP = 0x6826,
    GUEST_S_CET = 0x6828,
    GUEST_SSP = 0x682a,
    GUEST_INTR_SSP_TABLE = 0x682c,
    // Natural-width host-state fields.
    HOST_CR0 = 0x6c00,
    HOST_CR3 = 0x6c02,
    HOST_CR4 = 0x6c04,
    HOST_FS_BASE = 0x6c06,
    HOST_GS_BASE = 0x6c08,
    HOST_TR_BASE = 0x6c0a,
    HOST_GDTR_BASE = 0x6c0c,
    HOST_IDTR_BASE = 0x6c0e,
    HOST_IA32_SYSENTER_ESP = 0x6c10,
    HOST_IA32_SYSENTER_EIP = 0x6c12,
    HOST_RSP = 0x6c14,
    HOST_RIP = 0x6c16,
    HOST_S_CET = 0x6c18,
    HOST_SSP = 0x6c1a,
    HOST_INTR_SSP_TABLE = 0x6c1c,
}

/// Names KVM's `vmx.h` (and older SDM revisions) use for fields the table names otherwise.
const ALIASES: &[(&str, FieldEncoding)] = &[
    ("VM_ENTRY_INTR_INFO", FieldEncoding::VM_ENTRY_INTR_INFO_FIELD),
    ("IDT_VECTORING_INFO", FieldEncoding::IDT_VECTORING_INFO_FIELD),
    ("GUEST_INTERRUPTIBILITY_STATE", FieldEncoding::GUEST_INTERRUPTIBILITY_INFO),
    ("EPTP", FieldEncoding::EPT_POINTER),
    ("SECONDARY_EXEC_CONTROL", FieldEncoding::SECONDARY_VM_EXEC_CONTROL),
    ("PREEMPTION_TIMER_VALUE", FieldEncoding::VMX_PREEMPTION_TIMER_VALUE),
    ("SPPT_POINTER", FieldEncoding::SPP_TABLE_POINTER),
    ("GUEST_SYSENTER_CS", FieldEncoding::GUEST_SYSENTER_CS),
    ("HOST_SYSENTER_CS", FieldEncoding::HOST_IA32_SYSENTER_CS),
    ("HOST_SYSENTER_ESP", FieldEncoding::HOST_IA32_SYSENTER_ESP),
    ("HOST_SYSENTER_EIP", FieldEncoding::HOST_IA32_SYSENTER_EIP),
];

impl FieldEncoding {
    /// The "high" access bit (bit 0).
    pub const HIGH: u32 = 1;

    /// The width, from bits 14:13.
    pub fn width(self) -> FieldWidth {
        match (self.0 >> 13) & 3 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }

    /// The kind, from bits 11:10.
    pub fn kind(self) -> FieldKind {
        match (self.0 >> 10) & 3 {
            0 => FieldKind::Control,
            1 => FieldKind::ExitInfo,
            2 => FieldKind::Guest,
            _ => FieldKind::Host,
        }
    }

    /// True for the "high" access of a 64-bit field (bit 0 set).
    pub fn is_high(self) -> bool {
        self.width() == FieldWidth::Bits64 && self.0 & Self::HIGH != 0
    }

    /// The bits a value of this access can hold (32 for a "high" access).
    pub fn value_bits(self) -> u32 {
        if self.is_high() { 32 } else { self.width().bits() }
    }

    /// True when the encoding sets no bit the SDM reserves (bits 31:15 and bit 12), and bit 0
    /// only for 64-bit fields.
    pub fn is_well_formed(self) -> bool {
        self.0 & !0x6fff == 0 && (self.0 & 1 == 0 || self.width() == FieldWidth::Bits64)
    }

    /// The table's name; for a "high" access, the name of the full field (use `Display` for
    /// `NAME_HIGH`).
    pub fn name(self) -> Option<&'static str> {
        let full = if self.is_high() { Self(self.0 & !Self::HIGH) } else { self };
        Self::ALL.iter().find(|(e, _)| *e == full).map(|(_, n)| *n)
    }

    /// Looks a field up by name (case-insensitive; `NAME_HIGH` for the high access of a 64-bit
    /// field; KVM's aliases such as `VM_ENTRY_INTR_INFO` accepted).
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        let lookup = |n: &str| {
            Self::ALL
                .iter()
                .find(|(_, known)| *known == n)
                .map(|(e, _)| *e)
                .or_else(|| ALIASES.iter().find(|(a, _)| *a == n).map(|(_, e)| *e))
        };
        if let Some(e) = lookup(&upper) {
            return Some(e);
        }
        let base = upper.strip_suffix("_HIGH")?;
        lookup(base).filter(|e| e.width() == FieldWidth::Bits64).map(|e| Self(e.0 | Self::HIGH))
    }

    /// Parses a name or a number (`0x6802`, `26626`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let number = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) => s.parse().ok(),
            None => None,
        };
        number.map(Self).or_else(|| Self::from_name(s))
    }
}

impl fmt::Display for FieldEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) if self.is_high() => write!(f, "{name}_HIGH"),
            Some(name) => f.write_str(name),
            None => write!(f, "UNKNOWN({:#x})", self.0),
        }
    }
}

impl fmt::Debug for FieldEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} ({:#06x})", self.0)
    }
}

impl Serialize for FieldEncoding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encodings_the_tools_rely_on() {
        for (enc, raw, name) in [
            (FieldEncoding::GUEST_CR3, 0x6802, "GUEST_CR3"),
            (FieldEncoding::GUEST_RIP, 0x681e, "GUEST_RIP"),
            (FieldEncoding::EPT_POINTER, 0x201a, "EPT_POINTER"),
            (FieldEncoding::VM_EXIT_REASON, 0x4402, "VM_EXIT_REASON"),
            (FieldEncoding::EXIT_QUALIFICATION, 0x6400, "EXIT_QUALIFICATION"),
            (FieldEncoding::VM_ENTRY_INTR_INFO_FIELD, 0x4016, "VM_ENTRY_INTR_INFO_FIELD"),
            (FieldEncoding::GUEST_ACTIVITY_STATE, 0x4826, "GUEST_ACTIVITY_STATE"),
            (FieldEncoding::HOST_RIP, 0x6c16, "HOST_RIP"),
        ] {
            assert_eq!(enc.0, raw);
            assert_eq!(enc.to_string(), name);
            assert_eq!(FieldEncoding::parse(name), Some(enc));
            assert_eq!(FieldEncoding::parse(&format!("{raw:#x}")), Some(enc));
        }
    }

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for (enc, name) in FieldEncoding::ALL {
            assert!(enc.is_well_formed(), "{name}");
            assert_eq!(enc.0 & 1, 0, "{name} is a full access");
            assert!(seen.insert(enc.0), "{name} duplicated");
            assert_eq!(FieldEncoding::from_name(name), Some(*enc));
            // The group comment in the table agrees with the encoding's bits.
            let want_width = if name.contains("SELECTOR")
                || matches!(*name, "VIRTUAL_PROCESSOR_ID" | "POSTED_INTR_NV" | "EPTP_INDEX")
            {
                Some(FieldWidth::Bits16)
            } else {
                None
            };
            if let Some(w) = want_width {
                assert_eq!(enc.width(), w, "{name}");
            }
        }
        assert!(FieldEncoding::ALL.len() > 160);
        assert_eq!(FieldEncoding::GUEST_CR3.width(), FieldWidth::Natural);
        assert_eq!(FieldEncoding::GUEST_CR3.kind(), FieldKind::Guest);
        assert_eq!(FieldEncoding::VM_EXIT_REASON.kind(), FieldKind::ExitInfo);
        assert_eq!(FieldEncoding::HOST_CR3.kind(), FieldKind::Host);
        assert_eq!(FieldEncoding::EPT_POINTER.width(), FieldWidth::Bits64);
        assert_eq!(FieldEncoding::VM_ENTRY_INTR_INFO_FIELD.width(), FieldWidth::Bits32);
    }

    #[test]
    fn unknown_and_high_accesses() {
        assert_eq!(FieldEncoding(0x6830).to_string(), "UNKNOWN(0x6830)");
        assert_eq!(FieldEncoding::parse("0x6830"), Some(FieldEncoding(0x6830)));
        let high = FieldEncoding(0x201b);
        assert!(high.is_high());
        assert_eq!(high.to_string(), "EPT_POINTER_HIGH");
        assert_eq!(FieldEncoding::parse("ept_pointer_high"), Some(high));
        assert_eq!(high.value_bits(), 32);
        assert_eq!(FieldEncoding::parse("GUEST_CR3_HIGH"), None);
        assert_eq!(FieldEncoding::parse("VM_ENTRY_INTR_INFO"), Some(FieldEncoding(0x4016)));
        assert_eq!(FieldEncoding::parse("nonsense"), None);
        assert!(!FieldEncoding(0x1_0000).is_well_formed());
    }
}
