//! # vmxray-capture: trace bytes to typed KVM events
//!
//! This crate owns everything about trace bytes: it turns every form a KVM trace takes (tracefs
//! ring-buffer pages, trace-cmd's trace.dat v6/v7, perf.data, and the text of ftrace, `trace-cmd
//! report` and `perf script`) into one time-ordered stream of typed [`Event`]s, and writes and
//! records traces. It owns the KVM vocabulary ([`EventKind`], the code newtypes in [`codes`]).
//!
//! It does **not** interpret the stream: no nested-VMX state, no statistics, no anomalies (those
//! are `vmxray-replay` and `vmxray-analyze`).
//!
//! ```
//! use vmxray_capture::{EventKind, Fields, FieldValue, codes::VmxBasicReason};
//!
//! // Whatever the input, a reader ends with named fields; the vocabulary types them.
//! let mut f = Fields::new();
//! for (name, v) in [("exit_reason", 48), ("guest_rip", 0xfff0), ("isa", 1), ("info1", 0x181), ("info2", 0)] {
//!     f.push(name, FieldValue::U64(v));
//! }
//! let kind = EventKind::decode("kvm", "kvm_exit", &f).unwrap();
//! assert_eq!(kind.exit_reason().unwrap().vmx_basic(), Some(VmxBasicReason::EPT_VIOLATION));
//! ```
//!
//! Writing and recording: [`write::TraceDatWriter`] writes trace.dat v7 with zstd chunks from
//! raw ring-buffer pages (readable while it is being written, see [`mod@write`]);
//! [`record::Recorder`] (Linux) captures from a private tracefs instance into it, or keeps a
//! flight recorder that writes only when a trigger fires.
//!
//! VMCS fields: [`vmcs`] names every SDM field encoding ([`vmcs::FieldEncoding`]), the VMCS
//! it belongs to and how a value was learned ([`vmcs::VmcsField`]); [`vmcs::import`] reads
//! explicit field records (files, `trace_printk` lines) and merges them into a trace;
//! [`vmcs::probes`] are the dynamic probes of `record --profile vmcs`.
//!
//! [`convert::convert`] turns any input whose event formats are known (trace.dat, perf.data, a
//! tracefs copy; text with format files) into trace.dat v7 (zstd) for trace-cmd and KernelShark.

#![forbid(unsafe_code)]

//! ## Binary readers
//!
//! [`open()`] recognizes trace.dat and perf.data by their magic and copied tracefs trees by their
//! layout; each reader is also usable directly:
//!
//! - [`format`](mod@format): format files, `header_page`/`header_event`, format-driven field decoding
//!   ([`format::EventFormats`], [`format::Record`] implements [`FieldLookup`]);
//! - [`page`]: ring-buffer pages ([`page::PageRecords`], [`page::PageStream`],
//!   [`page::PageBuilder`] for tests);
//! - [`tracefs`]: a copied tracefs tree with `trace_pipe_raw` dumps ([`tracefs::TracefsReader`]);
//! - [`tracedat`]: trace.dat v6/v7, every buffer ([`tracedat::TraceDat::events`]);
//! - [`perfdata`]: perf.data tracepoint samples ([`perfdata::PerfDataReader`]).
//!
//! ```
//! use std::path::Path;
//! use vmxray_capture::{EventKind, ReadOptions, open};
//!
//! let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/tracedat/lm-v7-zstd.dat");
//! let mut reader = open(&file, ReadOptions::default()).unwrap();
//! let pio = reader.by_ref().filter_map(Result::ok).filter(|e| matches!(e.kind, EventKind::KvmPio { .. })).count();
//! assert!(pio > 0);
//! assert_eq!(reader.meta().kernel.as_deref(), Some("6.18.44-fc-v669"));
//! assert!(reader.stats().is_clean());
//! ```

pub mod bin_util;
pub mod codes;
pub mod convert;
mod decode;
pub mod event;
pub mod fields;
pub mod filter;
pub mod format;
pub mod insn;
mod merge;
pub mod open;
mod ordered;
pub mod page;
pub mod perfdata;
pub mod reader;
#[cfg(target_os = "linux")]
pub mod record;
pub mod render;
pub mod testenv;
pub mod text;
pub mod tracedat;
pub mod tracefs;
pub mod vmcs;
pub mod write;

pub use event::{
    Comm, DecodeError, Entry, Event, EventKind, ExitFields, ExitInfo, InsnBytes, KnownEvent,
    MmuPage, NestedVmenter, OtherEvent, ROLE_KNOWN_FIELD,
};
pub use fields::{FieldLookup, FieldName, FieldValue, Fields};
pub use open::{open, open_bytes};
pub use reader::{
    Clock, EventReader, InputFormat, Location, LostOnCpu, ReadError, ReadErrorKind, ReadOptions,
    ReadStats, TraceMeta,
};
