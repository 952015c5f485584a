//! The MMIO tracepoints, typed: `kvm_mmio` (`include/trace/events/kvm.h`: an emulated MMIO
//! access, or one completed by userspace) and `vcpu_match_mmio` (`arch/x86/kvm/trace.h`: the
//! emulator matched an access against the vCPU's cached MMIO GVA/GPA). Both layouts are the
//! same in every kernel generation the repository has format files for (6.1, 6.12, 6.18) and
//! in the older `trace.h`/`kvm.h` read for this module.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codes::{code_table, display_named};
use crate::event::{DecodeError, KnownEvent};
use crate::fields::FieldLookup;
use crate::kernel_fields::{Field, Sink, dec, flag, hex};
use crate::required::Required;

code_table! {
    /// `kvm_mmio.type` (`kvm_trace_symbol_mmio`).
    MmioKind(u32) {
        UNSATISFIED_READ = 0 => "unsatisfied-read",
        READ = 1 => "read",
        WRITE = 2 => "write",
    }
}

display_named!(MmioKind);

/// The MMIO events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "tracepoint", rename_all = "snake_case")]
#[allow(missing_docs)] // The fields are the kernel's, described in the variant docs.
pub enum MmioEvent {
    /// `kvm_mmio`: `len` bytes at `gpa`. An `unsatisfied-read` goes to userspace
    /// (`KVM_EXIT_MMIO`) and comes back as a `read` with the value.
    Access { kind: MmioKind, len: u32, gpa: u64, val: u64 },
    /// `vcpu_match_mmio`: the access at `gva`/`gpa` hit the vCPU's MMIO cache, matched by GPA
    /// (`gpa_match`) or by GVA.
    VcpuMatch { gva: u64, gpa: u64, write: bool, gpa_match: bool },
}

impl MmioEvent {
    /// The tracepoints of this family, in [`KnownEvent`] order.
    pub const TRACEPOINTS: [KnownEvent; 2] = [KnownEvent::KvmMmio, KnownEvent::VcpuMatchMmio];

    /// Decodes `known`, one of [`MmioEvent::TRACEPOINTS`] (the others are refused).
    pub(crate) fn decode(
        known: KnownEvent,
        f: &impl FieldLookup,
    ) -> Result<MmioEvent, DecodeError> {
        let r = Required { f, event: known.name() };
        Ok(match known {
            KnownEvent::KvmMmio => Self::Access {
                kind: MmioKind(r.u32("type")?),
                len: r.u32("len")?,
                gpa: r.u64("gpa")?,
                val: r.u64("val")?,
            },
            KnownEvent::VcpuMatchMmio => Self::VcpuMatch {
                gva: r.u64("gva")?,
                gpa: r.u64("gpa")?,
                write: r.flag("write")?,
                gpa_match: r.flag("gpa_match")?,
            },
            other => return Err(DecodeError { event: other.name(), field: "(not an MMIO event)" }),
        })
    }

    /// The tracepoint this is.
    pub(crate) fn known(&self) -> KnownEvent {
        match self {
            Self::Access { .. } => KnownEvent::KvmMmio,
            Self::VcpuMatch { .. } => KnownEvent::VcpuMatchMmio,
        }
    }

    /// The fields under the kernel's names, in the kernel's order.
    pub(crate) fn kernel_fields<'a>(&'a self, out: &mut Sink<impl FnMut(Field<'a>)>) {
        match self {
            Self::Access { kind, len, gpa, val } => {
                out.extend([dec("type", u64::from(kind.0)), dec("len", u64::from(*len))]);
                out.extend([hex("gpa", *gpa), hex("val", *val)]);
            }
            Self::VcpuMatch { gva, gpa, write, gpa_match } => {
                out.extend([hex("gva", *gva), hex("gpa", *gpa)]);
                out.extend([flag("write", *write), flag("gpa_match", *gpa_match)]);
            }
        }
    }

    /// The human decodings of [`crate::EventKind::decoded`], in the kernel's wording.
    pub(crate) fn for_each_decoded(&self, f: &mut dyn FnMut(&'static str, &dyn fmt::Display)) {
        match self {
            Self::Access { kind, .. } => f("access", kind),
            Self::VcpuMatch { write, gpa_match, .. } => {
                f("access", &if *write { "Write" } else { "Read" });
                f("match", &if *gpa_match { "GPA" } else { "GVA" });
            }
        }
    }
}
