//! VMCS fields as first-class observations.
//!
//! Upstream KVM has no "VMCS field written" tracepoint, yet a trace reveals many fields: the
//! nested tracepoints carry vmcs12 values, `kvm_exit` carries the exit fields of the running
//! VMCS, `kvm_cr` the guest CRs. This module is the vocabulary for "VMCS *V*'s field *F* held
//! value *X* at event *N*, and this is how we know":
//!
//! - [`VmcsRef`]: which VMCS (`vmcs01`, `vmcs02`, `vmcs12@<gpa>`, `vmcs12@evmcs`);
//! - [`FieldEncoding`]: the field, as its SDM encoding (Appendix B), an open newtype;
//! - [`VmcsField`]: one observation, with its [`Learned`] provenance (an explicit `write` or
//!   `read` record, or `derived` from a tracepoint) and the index of the event it came from.
//!
//! The derivation from tracepoints lives in `vmxray-replay` (`fields`), because it needs the
//! model's level and current-vmcs12 tracking. This module owns what vmxray's own records mean:
//! the [`record`] text format for explicit records (files, or `trace_printk` lines inside a
//! trace) and the events of the [`probe`]s the recorder's `vmcs` profile installs.
//!
//! ```
//! use vmxray_events::vmcs::{FieldEncoding, VmcsRef, record};
//!
//! let rec = record::parse_line("1500 0 0 vmcs12@0x7000 write GUEST_CR3 0x10ff9000").unwrap().unwrap();
//! assert_eq!(rec.vmcs, VmcsRef::Vmcs12 { gpa: 0x7000 });
//! assert_eq!(rec.field, FieldEncoding::GUEST_CR3);
//! assert_eq!(FieldEncoding(0x6830).to_string(), "UNKNOWN(0x6830)");
//! ```

pub mod encoding;
pub mod probe;
pub mod record;

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

pub use encoding::{FieldEncoding, FieldKind, FieldWidth};

/// Which VMCS a field belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmcsRef {
    /// The hardware VMCS that runs L1.
    Vmcs01,
    /// The hardware VMCS L0 builds to run L2 (one per vCPU, shared by every vmcs12).
    Vmcs02,
    /// The VMCS L1 sees, by its guest-physical address (`current_vmptr`).
    Vmcs12 {
        /// Its GPA.
        gpa: u64,
    },
    /// A vmcs12 reached through an enlightened VMCS (Hyper-V): `current_vmptr` is -1, so the
    /// trace does not say which one.
    Evmcs,
}

impl VmcsRef {
    /// The vmcs12 named by a `kvm_nested_vmenter.vmcs` value (all ones: eVMCS).
    pub fn vmcs12(vmptr: u64) -> Self {
        if vmptr == u64::MAX { Self::Evmcs } else { Self::Vmcs12 { gpa: vmptr } }
    }

    /// The GPA the model keys vmcs12 records by (all ones for an eVMCS), None for vmcs01/02.
    pub fn vmptr(self) -> Option<u64> {
        match self {
            Self::Vmcs12 { gpa } => Some(gpa),
            Self::Evmcs => Some(u64::MAX),
            Self::Vmcs01 | Self::Vmcs02 => None,
        }
    }
}

impl fmt::Display for VmcsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmcs01 => f.write_str("vmcs01"),
            Self::Vmcs02 => f.write_str("vmcs02"),
            Self::Vmcs12 { gpa } => write!(f, "vmcs12@{gpa:#x}"),
            Self::Evmcs => f.write_str("vmcs12@evmcs"),
        }
    }
}

impl Serialize for VmcsRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A VMCS name that is none of `vmcs01`, `vmcs02`, `vmcs12@<gpa>`, `vmcs12@evmcs` (or the
/// short forms `01`, `02`, `12@<gpa>`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown VMCS `{0}` (expected vmcs01, vmcs02, vmcs12@<gpa> or vmcs12@evmcs)")]
pub struct UnknownVmcs(pub String);

impl FromStr for VmcsRef {
    type Err = UnknownVmcs;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let short = t.strip_prefix("vmcs").unwrap_or(t);
        match short {
            "01" => return Ok(Self::Vmcs01),
            "02" => return Ok(Self::Vmcs02),
            _ => {}
        }
        let gpa = short.strip_prefix("12@").ok_or_else(|| UnknownVmcs(s.to_owned()))?;
        if gpa.eq_ignore_ascii_case("evmcs") || gpa == "-1" {
            return Ok(Self::Evmcs);
        }
        parse_u64(gpa).map(Self::vmcs12).ok_or_else(|| UnknownVmcs(s.to_owned()))
    }
}

/// Parses `0x…` hexadecimal or decimal.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && !hex.starts_with('+') => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.starts_with('+') => s.parse().ok(),
        None => None,
    }
}

/// An explicit record's access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The value was read (VMREAD, a dump).
    Read,
    /// The value was written (VMWRITE, KVM's own `vmcs_write*`, a sync into vmcs12).
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// How an observation was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Learned {
    /// An explicit record said the field was written (import file, `trace_printk` line, probe).
    Written,
    /// An explicit record said the field was read.
    Read,
    /// Derived from a tracepoint that carries the value (see `vmxray_replay::fields`).
    Derived,
}

impl Learned {
    /// True for explicit records (written or read).
    pub fn is_explicit(self) -> bool {
        matches!(self, Self::Written | Self::Read)
    }

    /// The provenance name (`written`, `read`, `derived`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Read => "read",
            Self::Derived => "derived",
        }
    }
}

impl From<Access> for Learned {
    fn from(a: Access) -> Self {
        match a {
            Access::Read => Self::Read,
            Access::Write => Self::Written,
        }
    }
}

/// One observation of one VMCS field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmcsField {
    /// The trace timestamp of the event it came from.
    pub ts: u64,
    /// The vCPU, when known.
    pub vcpu: Option<u32>,
    /// Which VMCS.
    pub vmcs: VmcsRef,
    /// Which field.
    pub field: FieldEncoding,
    /// The value it held (for a derived observation: the value the tracepoint showed; for a
    /// `write`: the value written).
    pub value: u64,
    /// The bits of `value` the source knows: all ones, except for roots, which reveal only the
    /// address bits 51:12 of a CR3 / EPTP ([`probe::ADDRESS_MASK`]).
    pub mask: u64,
    /// How it was learned.
    pub learned: Learned,
    /// The index of the event it came from (the tracepoint, or the explicit record's place in
    /// the merged stream).
    pub event: u64,
    /// The tracepoint (or `vmcs_field` for an explicit record) it came from.
    pub source: &'static str,
}

/// The system and name of the synthetic event an explicit record becomes when it is merged into
/// a trace (see [`record::FieldRecord::to_event`]).
pub const RECORD_SYSTEM: &str = "vmxray";
/// See [`RECORD_SYSTEM`].
pub const RECORD_EVENT: &str = "vmcs_field";
