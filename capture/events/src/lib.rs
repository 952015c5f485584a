//! # vmxray-events: the vocabulary every vmxray crate speaks
//!
//! One [`Event`] per tracepoint hit, with what it says typed as an [`EventKind`]: one variant
//! per KVM tracepoint (every kernel generation's layout decoded into the same variant), typed
//! variants for vmxray's own records (explicit VMCS field records, the `vmcs` profile's probe
//! events), and [`EventKind::Other`] with every field for anything else — nothing is dropped.
//! Codes are open newtypes ([`codes`]): a value no table names is still representable and
//! prints as `UNKNOWN(0x..)`.
//!
//! This crate owns the vocabulary and nothing else: no I/O, no reader, no state. Readers
//! (`vmxray-capture`) hand it named field values ([`Fields`], [`FieldLookup`]) and it decodes
//! them, once, at the edge ([`EventKind::decode`]); the model (`vmxray-replay`) matches on its
//! variants and never on strings.
//!
//! ```
//! use vmxray_events::{EventKind, Fields, FieldValue, codes::VmxBasicReason};
//!
//! let mut f = Fields::new();
//! for (name, v) in [("exit_reason", 48), ("guest_rip", 0xfff0), ("isa", 1), ("info1", 0x181), ("info2", 0)] {
//!     f.push(name, FieldValue::U64(v));
//! }
//! let kind = EventKind::decode("kvm", "kvm_exit", &f).unwrap();
//! assert_eq!(kind.exit_reason().unwrap().vmx_basic(), Some(VmxBasicReason::EPT_VIOLATION));
//! ```
//!
//! - [`actor`]: who an event belongs to ([`Actor`]) and the one thread → vCPU
//!   [`Attribution`];
//! - [`event`]: [`Event`], [`EventKind`] and the table of typed tracepoints ([`KnownEvent`]);
//! - [`context`]: the host's scheduler, interrupt, softirq and timer tracepoints, typed for
//!   the host-context analysis;
//! - [`codes`]: exit reasons (VMX and SVM), interruption info, exception vectors, MMU roles, …;
//! - [`fields`]: named field values, the currency between readers and the vocabulary;
//! - [`identity`]: which VM a thread belongs to, as the recorder writes it into its traces;
//! - [`insn`]: the x86 instruction decoder for `kvm_emulate_insn` bytes;
//! - [`irq`], [`mmio`], [`spte`]: the interrupt-controller, MMIO and kvmmmu fast-path/SPTE
//!   tracepoints ([`EventKind::Irq`], [`EventKind::Mmio`], [`EventKind::Spte`]);
//! - [`qualification`]: exit qualifications and page-fault error codes broken into what they
//!   say (EPT violations, nested page faults, `#PF`, CR access, IDT-vectoring);
//! - [`kernel_fields`]: typed events back under the kernel's field names, and the human
//!   decodings (code names, interruption info, qualifications, mnemonics) every renderer
//!   shows;
//! - [`vmcs`]: VMCS field encodings, which VMCS a value belongs to, explicit field records and
//!   what the recorder's probe events mean.
//!
//! With the `test-util` feature, `test_util` gives every crate's tests one [`Event`] builder
//! and the SKIP rule for tests that need the machine.

#![forbid(unsafe_code)]

pub mod actor;
pub mod codes;
pub mod context;
pub mod event;
pub mod fields;
pub mod identity;
pub mod insn;
pub mod irq;
pub mod kernel_fields;
pub mod mmio;
pub mod qualification;
mod required;
pub mod spte;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod vmcs;

pub use actor::{Actor, Attributed, Attribution, CPU_HINTS, Vcpu, Vm, VmId};
pub use event::{
    Comm, DecodeError, Entry, Event, EventKind, ExitFields, ExitInfo, IdentityEvent, InsnBytes,
    KnownEvent, KnownSet, MmuPage, NestedVmenter, OtherEvent, PrintkEvent, ProbeHit,
    ROLE_KNOWN_FIELD, SegmentReason, VmFailKind, VmcsFieldEvent,
};
pub use fields::{FieldLookup, FieldName, FieldValue, Fields};
