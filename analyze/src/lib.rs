//! # vmxray-analyze: tables over events and anomalies
//!
//! This crate owns everything numeric: exit statistics (counts, exit→entry latency percentiles
//! per reason, vCPU and level), batch scans of many traces in parallel, and their tables written
//! as Parquet/CSV/JSON for any engine to aggregate.
//!
//! It does **not** parse trace bytes (that is `vmxray-capture`) nor model KVM (`vmxray-replay`).
//!
//! ```
//! use vmxray_analyze::stats::{ExitStats, Format, write_report};
//! use vmxray_events::codes::{ExitCode, ExitReason, Isa};
//! use vmxray_events::{Entry, Event, EventKind, ExitFields, ExitInfo};
//!
//! let exit = |ts, reason| Event { ts, cpu: 0, pid: 100, tgid: None, comm: None, kind: EventKind::KvmExit(ExitInfo::from(ExitFields {
//!     reason: ExitCode::Vmx(ExitReason(reason)), isa: Some(Isa::Vmx), guest_rip: None, info1: None,
//!     info2: None, intr_info: None, error_code: None, vcpu_id: Some(0), requests: None })) };
//! let entry = |ts| Event { ts, cpu: 0, pid: 100, tgid: None, comm: None, kind: EventKind::KvmEntry(Entry {
//!     vcpu_id: 0, rip: None, immediate_exit: None, intr_info: None, error_code: None }) };
//!
//! let mut stats = ExitStats::new();
//! for event in [entry(0), exit(1_000, 48), entry(1_700), exit(2_000, 48), entry(2_900)] {
//!     stats.push(&event);
//! }
//! let report = stats.finish(None, None);
//! let exits = report.exits.as_ref().unwrap();
//! let ept = &exits.by_reason[0];
//! assert_eq!(ept.reason.as_ref().unwrap().name, "EPT_VIOLATION");
//! let latency = ept.latency.as_ref().unwrap();
//! assert_eq!((latency.count, latency.min, latency.max, latency.mean), (2, 700, 900, 800.0));
//!
//! let mut csv = Vec::new();
//! write_report(&report, Format::Csv, &mut csv).unwrap();
//! assert!(String::from_utf8(csv).unwrap().starts_with("reason,reason_code,isa,level,vcpu,"));
//! ```
//!
//! ## One pass ([`pass`])
//!
//! [`pass::Pass`] is the loop every command and the TUI loader run: reader → replay model →
//! statistics → the command's [`pass::Sink`], with one attribution of each event to a vCPU and
//! one decision of an exit's level.
//!
//! ## Batch scans (`scan`, feature `scan`)
//!
//! [`scan::scan`] runs many traces in parallel (one thread per job, one trace at a time per job), each streamed through
//! its reader, the replay model and [`stats::ExitStats`] (whose exit log gives the per-exit
//! rows, so `exits` and `summary` count exactly what `vmxray stats` counts), into five polars
//! tables — `exits`, `events`, `anomalies`, `summary`, `traces` — handed to a
//! [`scan::TableSink`] in bounded chunks: a hive-layout Parquet (zstd) / CSV / JSON Lines dataset
//! ([`scan::DatasetWriter`]) or memory ([`scan::Collector`]). The table schemas, units and the
//! memory bound are documented in [`scan`].
//!
//! ## Host context ([`context`]) and perf's tables ([`kvm_stat`])
//!
//! [`context::HostContext`] (a [`pass::Sink`]) splits each exit's latency into time in KVM,
//! scheduled out (and which threads ran), hard irqs and softirqs, from the host's scheduler
//! and interrupt tracepoints; [`kvm_stat::KvmStat`] gives `perf kvm stat report`'s vmexit,
//! ioport and mmio tables with its `--key`, `--vcpu` and `--pid` selections.
//!
//! [`stage::StatsStage`] runs [`stats::ExitStats`] and [`context::HostContext`] on a thread of
//! their own, fed in batches of stepped events, for a pass whose own thread is the one the
//! load waits for (the TUI's loader).
//!
//! ## Exit statistics ([`stats`])
//!
//! [`stats::ExitStats`] is fed one [`vmxray_capture::Event`] at a time and keeps memory
//! proportional to the number of (reason, level, vCPU) groups, never to the trace length.
//!
//! **vCPU.** An event's vCPU is its `vcpu_id` field; for an event without one
//! (`kvm_nested_vmexit_inject`, and `kvm_exit` before ~5.3) it is the vCPU its thread (pid) last
//! showed in an event that had one, or else the thread itself, reported as `tid:N`
//! (nested-vmx-model.md §0, "vCPU attribution").
//!
//! **Latency.** The latency of a `kvm_exit` is the time from it to the **next `kvm_entry` of the
//! same vCPU**: the time KVM (and userspace, for exits that go there) spent handling the exit.
//! Times are in nanoseconds, or in the clock's raw units when the trace clock is not a ns clock
//! (`x86-tsc`, `counter`): the report says which (`time_unit`). An exit gets **no latency**, but
//! is still counted (column `without_latency`, `NO-LAT` in text), when:
//! - the trace ends before that vCPU's next entry (`trace_end`);
//! - a lost-events marker comes first (`lost_events`): the entry may be among the lost events,
//!   on any CPU since vCPU threads migrate, so every pending exit is closed this way;
//! - the same vCPU exits again first (`next_exit`): its entry is missing from the trace;
//! - the entry's timestamp is earlier than the exit's (`clock_backwards`: the per-CPU `local`
//!   clock is not synchronized between CPUs and the thread migrated);
//! - the exit's or the entry's time is unknown (`unknown_time`: text pasted without its
//!   timestamp column).
//!
//! At a segment marker (another capture of the same input starts), the pending exits close as
//! at the trace's end (`trace_end`).
//!
//! Count, total, min, max and mean are exact; stddev is the population standard deviation
//! computed from exact integer sums; p50/p90/p99/p99.9 are nearest-rank percentiles (the value
//! of rank ⌈n·p⌉ in sorted order) read from a [`histogram::LogHistogram`], within a relative
//! error of 1/256 (0.39 %), exact below 256 units and always within [min, max].
//!
//! **L1 vs L2.** An exit is an **L2 exit** when the same vCPU's `kvm_exit` is followed by a
//! `kvm_nested_vmexit` before its next `kvm_entry`: KVM traces `kvm_nested_vmexit` as the first
//! statement of `nested_vmx_reflect_vmexit()`, which runs for every hardware exit while L2 is
//! active and repeats the `kvm_exit` (nested-vmx-model.md §1.3; SVM: `svm_handle_exit()` in
//! guest mode). An L2 exit is **reflected to L1** when a `kvm_nested_vmexit_inject` with the same
//! reason follows before the next entry (§1.4: "L1 now sees a VM-Exit"; trace order in §2.3),
//! and **handled by L0** otherwise. Exception: EXTERNAL_INTERRUPT and NMI exits are always kept
//! by L0 (`nested_vmx_l0_wants_exit`, §2.3), so an inject after them is an interrupt or NMI
//! L0 synthesized for L1. Every inject that reflects no L2 exit is listed under
//! `synthesized_nested_exits` (L1's preemption timer, INIT, interrupts, ...). When the trace has
//! no `kvm_nested_vmexit` at all, exits are not split and their level is `all`.
//!
//! **Traces without `kvm_exit`** (a backend that runs the guest through the instruction
//! emulator, like this project's PVM machine): `exits` is `null` and the text output says so,
//! then shows what is there: events per name, emulated instructions by bytes with a mnemonic
//! for common ones, injected exceptions by vector, userspace exits by `KVM_EXIT_*` reason, port
//! I/O.
//!
//! ## JSON wire format (`vmxray stats --format json`, schema `vmxray-stats/1`)
//!
//! One object, [`stats::StatsReport`] serialized with serde (field names as in the Rust types):
//!
//! ```text
//! {
//!   "schema": "vmxray-stats/1",
//!   "input": null | {"name": str, "format": str, "clock": str, "cpus": u32|null, "kernel": str|null,
//!                    "excerpt": bool, "segments": u32},
//!   "time_unit": "ns" | "raw",
//!   "events_total": u64,
//!   "events_by_name": [{"name": str, "count": u64}],            // most frequent first
//!   "exits": null | {                                          // null: no kvm_exit in the trace
//!     "total": u64, "with_latency": u64,
//!     "without_latency": {"trace_end": u64, "lost_events": u64, "next_exit": u64, "clock_backwards": u64,
//!                         "unknown_time": u64},
//!     "nested": bool,
//!     "levels": null | {"l1": u64, "l2": u64, "l2_l0_handled": u64, "l2_reflected": u64},
//!     "overall": ROW, "by_reason": [ROW], "by_reason_level": [ROW], "by_vcpu": [ROW], "groups": [ROW],
//!     "synthesized_nested_exits": [{"name": str, "count": u64}],
//!     "orphan_nested_vmexits": u64,
//!     "slowest": [{"latency": u64, "exit_ts": u64, "vcpu": {"id": u32} | {"thread": i32},
//!                  "reason": {...as in ROW}, "level": "all" | "l1" | "l2"}]   // ≤ 10, slowest first
//!   },
//!   "emulated_instructions": {"total": u64, "failed": u64, "other": u64,
//!       "by_insn": [{"bytes": "0f 22 d8", "mnemonic": "mov cr3, rax" | null, "count": u64, "failed": u64}]},
//!   "injected_exceptions": [{"vector": u8, "name": "#UD", "count": u64, "with_error_code": u64, "reinjected": u64}],
//!   "userspace_exits": [{"reason": "KVM_EXIT_IO", "code": u32, "count": u64, "errors": u64}],
//!   "pio": [{"direction": "in" | "out", "port": u32, "size": u32, "count": u64}],
//!   "losses": {"lost": [{"cpu": u32, "markers": u64, "events": u64, "uncounted_markers": u64}],
//!              "skipped": u64, "non_trace_lines": u64, "problems": [str],
//!              "unknown_events": [{"name": str, "count": u64}]},
//!   "notes": [str],
//!   "host_context": {                                          // absent: no host events (or not run)
//!     "sources": {"sched_switch": bool, "sched_wakeup": bool, "irq": bool, "softirq": bool, "hrtimer": bool},
//!     "attributed": u64, "unattributed": u64, "overall": PARTS,
//!     "by_reason": [{"reason": {...}, "count": u64, "latency": u64, "parts": PARTS}],   // most time first
//!     "outliers": [{"index": u64, "ts": u64, "vcpu": str, "reason": {...}, "latency": u64, "parts": PARTS,
//!                   "ran": [{"pid": i32|null, "comm": str, "time": u64}],
//!                   "irqs": [{"name": str, "time": u64}], "softirqs": [{"name": str, "time": u64}]}]
//!   },
//!   "kvm_stat": {                                              // absent unless --event/--key/--vcpu/--pid
//!     "event": "vmexit" | "ioport" | "mmio", "key": "sample" | "time", "vcpu": u32|null, "pids": [i32],
//!     "rows": [{"key": str, "samples": u64, "samples_percent": f64, "time_percent": f64, "total": u64,
//!               "min": u64, "max": u64, "mean": f64, "rel_stddev_percent": f64}],
//!     "total_samples": u64, "total_time": u64
//!   }
//! }
//! PARTS = {"in_kvm": u64, "scheduled_out": u64, "blocked": u64, "irq": u64, "softirq": u64}
//!         // in_kvm + scheduled_out + irq + softirq = the latency; blocked ⊂ scheduled_out
//! ROW = {
//!   "reason": null | {"name": "EPT_VIOLATION", "code": u64, "isa": "vmx" | "svm" | "unknown"},
//!   "level": "all" | "l1" | "l2",
//!   "vcpu": null | {"id": u32} | {"thread": i32},
//!   "count": u64, "percent": f64,          // percent of all kvm_exit
//!   "time_percent": f64,                   // share of the summed latency of all exits
//!   "without_latency": u64, "l0_handled": u64, "reflected": u64,   // the last two: L2 rows only
//!   "latency": null | {"count": u64, "total": u64, "min": u64, "max": u64, "mean": f64,
//!                      "stddev": f64, "p50": u64, "p90": u64, "p99": u64, "p999": u64,
//!                      "histogram": [{"lo": u64, "hi": u64, "count": u64}]}
//! }
//! ```
//! `histogram`: at most 16 bins, ascending and contiguous (`hi + 1` is the next bin's `lo`,
//! both inclusive), the first `lo` is `min` and the last `hi` is `max`, log-spaced (edges are
//! bucket edges of the `LogHistogram`: exact below 256, within 1/256 above); counts are exact
//! and sum to `count`, interior bins may be 0. Older reports without the key read back as `[]`.
//! `null` reason/vCPU means "summed over". Times are in `time_unit`.
//!
//! **CSV** (`--format csv`): one row per `groups` entry, header
//! `reason,reason_code,isa,level,vcpu,count,percent,without_latency,l0_handled,reflected,`
//! `latency_count,time_percent,total,min,p50,p90,p99,p999,max,mean,stddev,time_unit`; the latency columns
//! are empty when the group has none; `vcpu` is the id or `tid:N`. A trace without `kvm_exit`
//! gives the header alone.

#![forbid(unsafe_code)]

pub mod context;
pub mod histogram;
pub mod kvm_stat;
pub mod live;
pub mod pass;
#[cfg(feature = "plot")]
pub mod plot;
#[cfg(feature = "scan")]
pub mod scan;
mod slots;
pub mod stage;
pub mod stats;

/// The hash map of the per-event paths (statistics, host context): keyed by vCPUs, CPUs and
/// event names, looked up several times per event, so hashed with foldhash rather than
/// SipHash (whose cost was a tenth of `vmxray stats`). Nothing iterates one of these maps into
/// output without sorting it first, as with std's randomly seeded hasher.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// An error and its causes on one line, each said once.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The read problems as messages, one per problem, except that a run of lines skipped for
/// the same reason is one message naming the lines (a text trace in a format vmxray does not
/// read fails on every line the same way: one message, not one per line).
pub fn problem_lines(problems: &[std::sync::Arc<vmxray_capture::ReadError>]) -> Vec<String> {
    use vmxray_capture::Location;
    let mut out = Vec::new();
    let mut k = 0;
    while let Some(first) = problems.get(k) {
        let reason = crate::error_chain(&first.kind);
        let mut lines = Vec::new();
        if let Location::Line(n) = first.at {
            lines.push(n);
            while let Some(next) = problems.get(k + lines.len())
                && let Location::Line(m) = next.at
                && next.input == first.input
                && crate::error_chain(&next.kind) == reason
            {
                lines.push(m);
            }
        }
        match lines.as_slice() {
            [] | [_] => {
                out.push(crate::error_chain(first.as_ref()));
                k += 1;
            }
            [from, .., to] => {
                let n = lines.len();
                let place = if to.checked_sub(*from) == Some(n as u64 - 1) {
                    format!(":{from}-{to}")
                } else {
                    format!(": {n} lines from {from} to {to}")
                };
                out.push(format!("{}{place}: {reason} ({n} lines)", first.input));
                k += n;
            }
        }
    }
    out
}
