//! # vmxray-capture: trace bytes to typed KVM events, and back
//!
//! This crate turns every form a KVM trace takes (tracefs ring-buffer pages, trace-cmd's
//! trace.dat v6/v7, perf.data, and the text of ftrace, `trace-cmd report` and `perf script`)
//! into one time-ordered stream of typed [`Event`]s in the vocabulary of `vmxray-events`, and
//! writes trace.dat v7 (zstd) that trace-cmd and KernelShark read. Its modules follow the job:
//!
//! - [`bin`]: binary primitives: byte order and bounds-checked reads, ring-buffer [`bin::page`]s,
//!   event [`bin::format`] files and format-driven record decoding;
//! - [`read`]: every reader behind one [`EventReader`] interface and one format detection
//!   ([`open()`]): [`read::tracedat`], [`read::perfdata`], [`read::tracefs_tree`] (a copied
//!   tracefs tree or loose page dumps), [`read::text`], plus explicit VMCS field records from a
//!   file ([`read::fields_file`]);
//! - [`write`](mod@write): the trace.dat v7 writer ([`write::TraceDatWriter`]) and [`write::convert`] (any
//!   input whose event formats are known to trace.dat);
//! - [`printfmt`]: any event rendered through its format's `print fmt:` as `trace-cmd report
//!   -N` renders it (a `nom` parser and an evaluator of the kernel's C expressions);
//! - [`render`] and [`filter`]: the documented one-line and JSON Lines rendering of events and
//!   the event filters of `vmxray dump`.
//!
//! It does **not** interpret the stream (no nested-VMX state, statistics or anomalies: those
//! are `vmxray-replay` and `vmxray-analyze`) and does not record (`vmxray-record`).
//!
//! ```
//! use std::path::Path;
//! use vmxray_capture::{ReadOptions, open};
//! use vmxray_events::EventKind;
//!
//! let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/tracedat/lm-v7-zstd.dat");
//! let mut reader = open(&file, ReadOptions::default()).unwrap();
//! let pio = reader.by_ref().filter_map(Result::ok).filter(|e| matches!(e.kind, EventKind::KvmPio { .. })).count();
//! assert!(pio > 0);
//! assert_eq!(reader.meta().kernel.as_deref(), Some("6.18.44-fc-v669"));
//! assert!(reader.stats().is_clean());
//! ```

#![forbid(unsafe_code)]

pub mod bin;
pub mod filter;
mod ordered;
pub mod printfmt;
pub mod read;
pub mod render;
pub mod write;

pub use read::open::{InputKind, detect, open, open_bytes};
pub use read::{
    Clock, CountOnly, EventReader, InputFormat, Location, LostOnCpu, ReadError, ReadErrorKind,
    ReadOptions, ReadStats, TraceMeta, TruncatedRecord,
};
pub use vmxray_events::Event;
