//! Batch scans: many traces in parallel (one thread per job; polars' own rayon pool encodes the
//! files), each streamed through decode → replay → per-exit rows →
//! tables, written to a [`TableSink`] (a Parquet/CSV/JSON Lines dataset, or memory).
//!
//! ```no_run
//! use vmxray_analyze::scan::{self, DatasetWriter, DiscoverOptions, OutputFormat, ScanOptions};
//!
//! let inputs = scan::discover(&["fleet/".into()], &DiscoverOptions::default()).unwrap();
//! let sink = DatasetWriter::new("out", OutputFormat::Parquet);
//! let outcomes = scan::scan(&inputs, &ScanOptions::default(), &sink, &|_| {});
//! let failed = outcomes.iter().filter(|o| o.record.status == "failed").count();
//! # let _ = failed;
//! ```
//!
//! # Memory
//!
//! Each job holds one reader (its buffers), one [`crate::pass::Pass`] (the replay model and an
//! [`ExitStats`], both bounded by the number of vCPUs / exit-reason groups, not by the trace
//! length), the event-name
//! counts, and at most [`ScanOptions::chunk_rows`] pending `exits` rows and as many `anomalies`
//! rows, which are handed to the sink as a `part-N` file whenever they fill up. Peak memory is
//! therefore about `jobs × (reader + chunk)`, whatever the size or number of traces (the list of
//! inputs and one `traces` row per input excepted). Printing (no `--out`) keeps every anomaly
//! and summary row in memory instead.
//!
//! # Dataset layout
//!
//! `DIR/table=<table>/trace=<id>/part-<N>.<parquet|csv|jsonl>`; `<id>` is the `trace` column with
//! each byte outside `[A-Za-z0-9._-]` escaped as `%XX`. Every file also holds the `trace` column
//! itself, so read the dataset **without** hive partition discovery (DuckDB
//! `hive_partitioning = false`, Spark `recursiveFileLookup`, polars `hive_partitioning=False`)
//! and filter on the column. A trace's old parts are removed before its new ones are written, so
//! re-running a scan (or a shard) into the same directory replaces its traces.
//!
//! # Tables
//!
//! Every table starts with `trace` (String, the input's path relative to the argument it was
//! found under), `host` and `vm` (String, nullable: the `host=NAME` / `vm=NAME` component of the
//! id or argument path, if any). A host trace holds many VMs: `exits` and `anomalies` rows say
//! which in `vm_id`/`vm_label`, taken from the trace itself. Timestamps (`*_ts`, `ts`) are in the trace clock's units, and so
//! are the `*_ns` columns: nanoseconds unless `traces.time_unit` is `raw` (`x86-tsc`, `counter`
//! clocks). Event indices (`event`, `evidence`) are 0-based positions in the input's time order,
//! as `vmxray dump` numbers them.
//!
//! **exits** — one row per `kvm_exit`, in the order exits complete:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | vcpu | UInt32? | vCPU id; null when only the thread is known |
//! | thread | Int32? | the pid, when vcpu is null |
//! | vm_id | UInt32? | the vCPU's VM: its index in the trace (first seen first) |
//! | vm_label | String? | the VM's name, `pid N` (the VMM process), or `vmK` (inferred) |
//! | level | String | `L2` when a `kvm_nested_vmexit` followed the exit, else `L1` |
//! | ts | UInt64? | exit timestamp; null when the input did not say it (text without its timestamps) |
//! | event | UInt64 | event index of the `kvm_exit` |
//! | segment | UInt32 | the capture it belongs to, in an input holding several (0, 1, ...) |
//! | reason | String | `EPT_VIOLATION`, `npf`, `UNKNOWN(0x4e)` |
//! | reason_code | UInt64 | raw exit reason / exit code |
//! | rip | UInt64? | guest RIP |
//! | qualification | UInt64? | exit qualification (VMX) / exit_info_1 (SVM) |
//! | qualification_decoded | String? | the qualification decoded for the reason, as `vmxray dump`'s `qual=`: EPT violations (`write, not present, final translation`), #NPF and #PF error codes, CR accesses (`mov cr3, rax`) |
//! | fault_access | String? | EPT violation, #NPF, #PF: `read`, `write`, `fetch` (joined with `+` when several bits are set) |
//! | fault_present | Boolean? | EPT violation, #NPF, #PF: the translation was present (a permission fault) |
//! | fault_final | Boolean? | EPT violation, #NPF: the access was to the final translation (true) or to a guest paging-structure entry during the guest's walk (false); null when the qualification does not say |
//! | vectoring_vector | UInt32? | the event being delivered when the exit happened (VMX IDT-vectoring information, SVM EXITINTINFO): its vector |
//! | vectoring_type | String? | its type: `external interrupt`, `NMI`, `hardware exception`, `software interrupt`, `privileged software exception`, `software exception` |
//! | vectoring_error_code | Boolean? | its error code was being delivered too |
//! | latency_ns | UInt64? | exit → next `kvm_entry` of the same vCPU |
//! | no_latency | String? | why latency_ns is null: `trace_end`, `lost_events`, `next_exit`, `clock_backwards`, `unknown_time` |
//! | reflected | Boolean? | L2 exits: reflected to L1 (true) or handled by L0 (false) |
//! | vmcs12 | UInt64? | L2 exits: GPA of the vmcs12 current at the exit (replay model), when known |
//! | host_in_kvm_ns | UInt64? | host context ([`crate::context`]; null when the trace has no host scheduler/irq events or the exit has no latency): of latency_ns, the vCPU thread ran on its CPU |
//! | host_scheduled_out_ns | UInt64? | of latency_ns, the thread was off its CPU |
//! | host_blocked_ns | UInt64? | of host_scheduled_out_ns, it was blocked (asleep until woken) |
//! | host_irq_ns | UInt64? | of latency_ns, hard interrupt handlers ran on its CPU |
//! | host_softirq_ns | UInt64? | of latency_ns, softirqs ran on its CPU |
//! | host_ran | String? | the thread that ran longest while it was scheduled out (`comm pid N`) |
//!
//! **events** — one row per event name:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | event | String | the tracepoint's name |
//! | count | UInt64 | events of that name |
//! | first_ts | UInt64? | the first one's timestamp (null when none has one) |
//! | last_ts | UInt64? | the last one's timestamp |
//!
//! **anomalies** — one row per anomaly of the replay model:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | rule | String | the rule's name |
//! | severity | String | `info` < `warning` < `error` < `critical` |
//! | severity_rank | UInt32 | 0 (info) to 3 (critical) |
//! | vcpu | UInt32? | vCPU id; null when only the thread is known |
//! | thread | Int32? | the pid, when vcpu is null |
//! | vm_id | UInt32? | the vCPU's VM: its index in the trace (first seen first) |
//! | vm_label | String? | the VM's name, `pid N` (the VMM process), or `vmK` (inferred) |
//! | ts | UInt64? | timestamp of the event where the divergence became certain (null: unknown) |
//! | event | UInt64 | that event's index |
//! | segment | UInt32 | the capture that event belongs to (0, 1, ...; the model starts afresh in each) |
//! | message | String | what diverged, with the values |
//! | evidence | String | indices of the proving events, comma-separated, oldest first |
//! | commit | String | the KVM commit the rule encodes |
//!
//! **summary** — one row per exit reason × level, exactly the `by_reason_level` rows of
//! `vmxray stats --format json` (its `by_reason` rows, level `all`, when the trace has no
//! `kvm_nested_vmexit`). Percentiles are nearest-rank within 0.39 % (see the crate docs); the
//! latency columns are null when no exit of the row has a latency.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | reason | String | exit reason name |
//! | reason_code | UInt64 | raw exit reason / exit code |
//! | isa | String | `vmx`, `svm`, `unknown` |
//! | level | String | `all`, `L1`, `L2` |
//! | count | UInt64 | exits |
//! | share | Float64 | of the trace's exits, 0–1 |
//! | time_share | Float64 | of the trace's summed latency, 0–1 |
//! | without_latency | UInt64 | exits without a latency |
//! | l0_handled | UInt64 | L2 exits L0 handled |
//! | reflected | UInt64 | L2 exits reflected to L1 |
//! | latency_count | UInt64 | exits with a latency |
//! | total_ns | UInt64? | summed latency |
//! | min_ns | UInt64? | |
//! | p50_ns | UInt64? | |
//! | p90_ns | UInt64? | |
//! | p99_ns | UInt64? | |
//! | p999_ns | UInt64? | |
//! | max_ns | UInt64? | |
//! | mean_ns | Float64? | |
//! | stddev_ns | Float64? | population standard deviation |
//!
//! **traces** — one row per input, failed ones included:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | path | String | the input's path |
//! | status | String | `ok`, `failed` |
//! | error | String? | the error with its causes |
//! | format | String? | the detected input format |
//! | clock | String? | the trace clock |
//! | time_unit | String | `ns`, `raw` |
//! | kernel | String? | `uname -r`, when the input says it |
//! | kernel_at_least | String? | from the tracepoint layouts |
//! | cpus | UInt32? | CPUs, when the input says it |
//! | vcpus | UInt32 | vCPUs seen (over every VM) |
//! | vms | UInt32 | VMs seen: VMM processes, or inferred from vCPU ids running at once |
//! | vms_inferred | Boolean | the trace carries no tgid: which vCPUs share a VM is a guess |
//! | events | UInt64 | events read |
//! | exits | UInt64 | `kvm_exit` events |
//! | lost_events | UInt64 | events the trace lost |
//! | lost_markers | UInt64 | lost-events markers |
//! | parse_errors | UInt64 | records/lines skipped under `--permissive` |
//! | unknown_events | UInt64 | records no format described |
//! | non_trace_lines | UInt64 | lines of prose around an excerpt, skipped |
//! | excerpt | Boolean | an excerpt (pasted text with gaps), not a complete trace |
//! | segments | UInt32 | captures after the first in the input |
//! | first_ts | UInt64? | first timestamp |
//! | last_ts | UInt64? | last timestamp |
//! | duration_ns | UInt64? | last − first |
//! | anomalies_info | UInt64 | anomalies per severity |
//! | anomalies_warning | UInt64 | |
//! | anomalies_error | UInt64 | |
//! | anomalies_critical | UInt64 | |
//! | bytes | UInt64 | input size |
//!
//! A trace that fails part-way keeps the rows it produced before the error (its `traces.status`
//! is `failed`); one that cannot be opened has a `traces` row only.

mod inputs;
mod output;
mod tables;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use vmxray_capture::ReadOptions;
use vmxray_events::codes::IntrInfo;
use vmxray_events::qualification::Qualification;
use vmxray_events::{Event, EventKind, Vm};
use vmxray_replay::{Actor, Anomaly, Model, ModelConfig};

use crate::context::{ExitContext, HostContext};
use crate::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use crate::stats::{ClosedExit, ExitStats, StatsReport};

pub use inputs::{
    BadShard, DEFAULT_EXCLUDES, DiscoverOptions, InputError, ScanInput, Shard, discover, fnv1a64,
};
pub use output::{
    Collector, DatasetWriter, OutputFormat, SinkError, TableSink, escape, write_frame, write_jsonl,
};
pub use tables::{
    AnomalyRecord, Chunk, EventRecord, ExitRecord, LatencyFigures, SummaryRecord, Table,
    TraceLabels, TraceRecord,
};

/// How a scan runs.
#[derive(Clone, Copy, Debug)]
pub struct ScanOptions {
    /// Readers skip bad records (counted in `traces.parse_errors`) instead of failing the trace.
    pub permissive: bool,
    /// Traces scanned at once (0: one per core).
    pub jobs: usize,
    /// Rows of `exits` (and of `anomalies`) buffered per trace before they are written as a part.
    pub chunk_rows: usize,
    /// The replay model's configuration.
    pub model: ModelConfig,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { permissive: false, jobs: 0, chunk_rows: 1 << 16, model: ModelConfig::default() }
    }
}

/// What a scan reports while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanProgress {
    /// This many more events were processed (sent every [`PROGRESS_EVENTS`]).
    Events(u64),
    /// A trace is done.
    TraceDone,
}

/// How many events a job processes between two [`ScanProgress::Events`].
pub const PROGRESS_EVENTS: u64 = 1 << 16;

/// Stack size of each scan thread (the readers and the model keep sizeable state on the stack
/// in debug builds; 2 MiB, the default for spawned threads, is not enough there).
pub const JOB_STACK_BYTES: usize = 8 << 20;

/// The outcome of one trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceOutcome {
    /// The trace and its labels.
    pub labels: TraceLabels,
    /// Its `traces` row.
    pub record: TraceRecord,
}

/// Scans `inputs` in parallel on `opts.jobs` threads (largest first, for balance) and returns
/// one outcome per input, in the order of `inputs`. A trace that cannot be read, or whose
/// tables cannot be written, is a `failed` outcome; it never stops the others.
///
/// The jobs are plain threads taking the next trace from a shared counter, **not** a rayon
/// pool: polars encodes Parquet/CSV on its own rayon pool, and a rayon worker of another pool
/// that waits for it (`install` across pools) steals and starts the next trace on the same
/// stack, so traces nest and memory grows with their number (measured: +19 MB per trace).
/// With plain threads each job holds exactly one trace at a time.
pub fn scan(
    inputs: &[ScanInput],
    opts: &ScanOptions,
    sink: &dyn TableSink,
    progress: &(dyn Fn(ScanProgress) + Sync),
) -> Vec<TraceOutcome> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|&a, &b| inputs[b].bytes.cmp(&inputs[a].bytes).then(a.cmp(&b)));
    let jobs = match opts.jobs {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    }
    .min(inputs.len().max(1));
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<TraceOutcome>>> = Mutex::new(vec![None; inputs.len()]);
    let work = || {
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let outcome = scan_trace(&inputs[i], opts, sink, progress);
            done.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(outcome);
        }
    };
    std::thread::scope(|scope| {
        let spawned: Vec<_> = (0..jobs)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("vmxray-scan-{i}"))
                    .stack_size(JOB_STACK_BYTES)
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        // No thread could be started: do the work here.
        if spawned.is_empty() {
            work();
        }
    });
    done.into_inner().unwrap_or_else(PoisonError::into_inner).into_iter().flatten().collect()
}

/// Scans one trace (streamed) into `sink`. Never panics on bad input: a panic inside a reader
/// or the model is caught and reported as the trace's error.
pub fn scan_trace(
    input: &ScanInput,
    opts: &ScanOptions,
    sink: &dyn TableSink,
    progress: &(dyn Fn(ScanProgress) + Sync),
) -> TraceOutcome {
    let labels =
        TraceLabels { trace: input.trace.clone(), host: input.host.clone(), vm: input.vm.clone() };
    let base = TraceRecord {
        path: input.path.display().to_string(),
        status: "failed",
        time_unit: "ns",
        bytes: input.bytes,
        ..TraceRecord::default()
    };
    let record = match catch_unwind(AssertUnwindSafe(|| {
        TraceScan::new(input, &labels, opts, sink, progress).run(base.clone())
    })) {
        Ok(record) => record,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            TraceRecord { error: Some(format!("Internal error (panic): {what}")), ..base }
        }
    };
    // The `traces` row always reaches the sink, even when the trace failed.
    let mut record = record;
    if sink.wants(Table::Traces)
        && let Err(e) = sink.write(&labels, 0, Chunk::Traces(vec![record.clone()]))
        && record.error.is_none()
    {
        record.status = "failed";
        record.error = Some(crate::error_chain(&e));
    }
    progress(ScanProgress::TraceDone);
    TraceOutcome { labels, record }
}

/// The per-trace pipeline state.
struct TraceScan<'a> {
    input: &'a ScanInput,
    labels: &'a TraceLabels,
    opts: &'a ScanOptions,
    sink: &'a dyn TableSink,
    progress: &'a (dyn Fn(ScanProgress) + Sync),
    exits_part: u32,
    anomalies_part: u32,
    anomalies: Vec<AnomalyRecord>,
    /// Where the trace's segments after the first start (event indices), for exit rows.
    segment_starts: Vec<u64>,
    sink_error: Option<SinkError>,
}

impl<'a> TraceScan<'a> {
    fn new(
        input: &'a ScanInput,
        labels: &'a TraceLabels,
        opts: &'a ScanOptions,
        sink: &'a dyn TableSink,
        progress: &'a (dyn Fn(ScanProgress) + Sync),
    ) -> Self {
        Self {
            input,
            labels,
            opts,
            sink,
            progress,
            segment_starts: Vec::new(),
            exits_part: 0,
            anomalies_part: 0,
            anomalies: Vec::new(),
            sink_error: None,
        }
    }

    fn emit(&mut self, part: u32, chunk: Chunk) {
        if self.sink_error.is_none()
            && self.sink.wants(chunk.table())
            && let Err(e) = self.sink.write(self.labels, part, chunk)
        {
            self.sink_error = Some(e);
        }
    }

    fn flush_exits(&mut self, vms: &[Vm], stats: &mut ExitStats, context: &mut HostContext) {
        let closed = stats.take_closed_exits();
        // Both logs close an exit at the same entry: the contexts taken now are these exits'.
        let with_host = context.has_host_events();
        let mut contexts: HashMap<u64, ExitContext> =
            context.take_attributed().into_iter().map(|c| (c.index, c)).collect();
        if closed.is_empty() {
            return;
        }
        let rows = closed
            .iter()
            .map(|e| {
                let host = if with_host { contexts.remove(&e.index) } else { None };
                exit_record(e, vms, &self.segment_starts, host.as_ref())
            })
            .collect();
        let part = self.exits_part;
        self.exits_part += 1;
        self.emit(part, Chunk::Exits(rows));
    }

    fn flush_anomalies(&mut self) {
        if self.anomalies.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.anomalies);
        let part = self.anomalies_part;
        self.anomalies_part += 1;
        self.emit(part, Chunk::Anomalies(rows));
    }

    fn run(mut self, mut record: TraceRecord) -> TraceRecord {
        if let Err(e) = self.sink.begin(self.labels) {
            record.error = Some(crate::error_chain(&e));
            return record;
        }
        let mut reader = match vmxray_capture::open(
            &self.input.path,
            ReadOptions { permissive: self.opts.permissive, ..ReadOptions::default() },
        ) {
            Ok(reader) => reader,
            Err(e) => {
                record.error = Some(crate::error_chain(&e));
                return record;
            }
        };
        let want_exits = self.sink.wants(Table::Exits);
        let want_anomalies = self.sink.wants(Table::Anomalies);
        let excerpt = self.opts.model.excerpt || reader.meta().excerpt;
        let mut pass = Pass::new(PassConfig {
            model: ModelConfig { excerpt, ..self.opts.model },
            stats: if want_exits { StatsMode::ExitLog } else { StatsMode::Report },
        });
        self.segment_starts.clear();
        let mut rows = TraceRows {
            want_anomalies,
            anomalies: std::mem::take(&mut self.anomalies),
            events: HashMap::new(),
            first_ts: None,
            last_ts: None,
            segment_starts: Vec::new(),
        };
        let mut context =
            if want_exits { HostContext::with_exit_log() } else { HostContext::new() };
        let mut read_error = None;
        let mut unreported = 0u64;
        for item in reader.by_ref() {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    read_error = Some(crate::error_chain(&e));
                    break;
                }
            };
            let _ = pass.step(&event, &mut (&mut rows, &mut context));
            if rows.segment_starts.len() > self.segment_starts.len() {
                self.segment_starts.clone_from(&rows.segment_starts);
            }
            if let (model, Some(stats)) = pass.model_and_stats()
                && stats.closed_exits_pending() >= self.opts.chunk_rows
            {
                self.flush_exits(model.vms(), stats, &mut context);
            }
            if rows.anomalies.len() >= self.opts.chunk_rows {
                self.anomalies = std::mem::take(&mut rows.anomalies);
                self.flush_anomalies();
            }
            unreported += 1;
            if unreported == PROGRESS_EVENTS {
                (self.progress)(ScanProgress::Events(unreported));
                unreported = 0;
            }
        }
        if unreported > 0 {
            (self.progress)(ScanProgress::Events(unreported));
        }
        if read_error.is_none() {
            pass.end(&mut rows);
        }
        self.anomalies = std::mem::take(&mut rows.anomalies);
        let TraceRows { events, first_ts, last_ts, .. } = rows;
        if let (model, Some(stats)) = pass.model_and_stats() {
            stats.close_pending();
            self.flush_exits(model.vms(), stats, &mut context);
        }
        self.flush_anomalies();

        let meta = reader.meta().clone();
        let read = reader.stats().clone();
        let end = pass.finish(Some(&meta), Some(&read));
        let summary = end.summary;
        // The scan always keeps statistics (StatsMode::Report or ExitLog).
        let report = end.stats.unwrap_or_else(|| ExitStats::new().finish(Some(&meta), Some(&read)));
        let mut event_rows: Vec<EventRecord> = events.into_values().collect();
        event_rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.event.cmp(&b.event)));
        self.emit(0, Chunk::Events(event_rows));
        self.emit(0, Chunk::Summary(summary_records(&report)));

        let (lost_events, _) = read.lost_total();
        record.format =
            serde_json::to_value(meta.format).ok().and_then(|v| v.as_str().map(str::to_owned));
        record.clock = Some(meta.clock.to_string());
        record.time_unit = if meta.clock.is_ns() { "ns" } else { "raw" };
        record.kernel = meta.kernel.clone();
        record.kernel_at_least =
            (summary.events > 0).then(|| summary.features.kernel_at_least().to_owned());
        record.cpus = meta.cpus;
        record.vcpus = u32::try_from(summary.vcpus.len()).unwrap_or(u32::MAX);
        record.vms = u32::try_from(summary.vms.len()).unwrap_or(u32::MAX);
        record.vms_inferred = summary.vms.iter().any(|vm| vm.inferred);
        record.events = report.events_total;
        record.exits = report.exits.as_ref().map_or(0, |e| e.total);
        record.lost_events = lost_events.max(summary.lost_events);
        record.lost_markers =
            read.lost.values().map(|l| l.markers).sum::<u64>().max(summary.lost_markers);
        record.parse_errors = read.skipped;
        record.unknown_events = read.unknown_events.values().sum();
        record.non_trace_lines = read.non_trace_lines;
        record.excerpt = meta.excerpt;
        record.segments = read.segments;
        record.first_ts = first_ts;
        record.last_ts = last_ts;
        record.anomalies = summary.by_severity;
        record.error =
            read_error.or_else(|| self.sink_error.as_ref().map(|e| crate::error_chain(e)));
        record.status = if record.error.is_some() { "failed" } else { "ok" };
        record
    }
}

/// What one trace's pass collects for the tables besides the statistics.
struct TraceRows {
    want_anomalies: bool,
    anomalies: Vec<AnomalyRecord>,
    events: HashMap<String, EventRecord>,
    first_ts: Option<u64>,
    last_ts: Option<u64>,
    /// The event index where each segment after the first starts.
    segment_starts: Vec<u64>,
}

impl Sink for TraceRows {
    fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
        let event = s.event;
        if let EventKind::Segment { .. } = event.kind {
            self.segment_starts.push(s.step().at.0);
        }
        if let Some(ts) = event.time() {
            self.first_ts.get_or_insert(ts);
            self.last_ts = Some(ts);
        }
        count_event(&mut self.events, event);
        if self.want_anomalies {
            self.push_anomalies(s.step().anomalies, event.time(), s.model);
        }
        ControlFlow::Continue(())
    }

    fn end(&mut self, anomalies: &[Anomaly], model: &Model) {
        if self.want_anomalies {
            self.push_anomalies(anomalies, self.last_ts, model);
        }
    }
}

impl TraceRows {
    fn push_anomalies(&mut self, anomalies: &[Anomaly], ts: Option<u64>, model: &Model) {
        let segment = u32::try_from(self.segment_starts.len()).unwrap_or(u32::MAX);
        for a in anomalies {
            let ActorColumns { vcpu, thread, vm_id, vm_label } = actor_columns(a.vcpu, model.vms());
            self.anomalies.push(AnomalyRecord {
                rule: a.rule.name(),
                severity: a.severity.name(),
                severity_rank: u32::try_from(a.severity.rank()).unwrap_or(0),
                vcpu,
                thread,
                vm_id,
                vm_label,
                ts,
                event: a.at.0,
                segment,
                message: a.message.clone(),
                evidence: a.evidence.iter().map(|i| i.0.to_string()).collect::<Vec<_>>().join(","),
                commit: a.rule.commit(),
            });
        }
    }
}

fn count_event(events: &mut HashMap<String, EventRecord>, event: &Event) {
    let name = event.name();
    match events.get_mut(name) {
        Some(row) => {
            row.count += 1;
            if let Some(ts) = event.time() {
                row.first_ts = Some(row.first_ts.map_or(ts, |f| f.min(ts)));
                row.last_ts = Some(row.last_ts.map_or(ts, |l| l.max(ts)));
            }
        }
        None => {
            events.insert(
                name.to_owned(),
                EventRecord {
                    event: name.to_owned(),
                    count: 1,
                    first_ts: event.time(),
                    last_ts: event.time(),
                },
            );
        }
    }
}

/// The columns that say who a row concerns.
struct ActorColumns {
    vcpu: Option<u32>,
    thread: Option<i32>,
    vm_id: Option<u32>,
    vm_label: Option<String>,
}

fn actor_columns(actor: Actor, vms: &[Vm]) -> ActorColumns {
    match actor {
        Actor::Vcpu(v) => ActorColumns {
            vcpu: Some(v.id),
            thread: None,
            vm_id: Some(v.vm.0),
            vm_label: vms.get(v.vm.0 as usize).map(Vm::label),
        },
        Actor::Thread(pid) => {
            ActorColumns { vcpu: None, thread: Some(pid), vm_id: None, vm_label: None }
        }
    }
}

fn exit_record(
    exit: &ClosedExit,
    vms: &[Vm],
    segment_starts: &[u64],
    host: Option<&ExitContext>,
) -> ExitRecord {
    let ActorColumns { vcpu, thread, vm_id, vm_label } = actor_columns(exit.vcpu, vms);
    let part = |f: fn(&crate::context::Parts) -> u64| host.map(|h| f(&h.parts));
    let decoded = exit.info.qualification();
    let vectoring = exit.info.idt_vectoring();
    let segment = segment_starts.partition_point(|&start| start <= exit.index);
    ExitRecord {
        host_in_kvm_ns: part(|p| p.in_kvm),
        host_scheduled_out_ns: part(|p| p.scheduled_out),
        host_blocked_ns: part(|p| p.blocked),
        host_irq_ns: part(|p| p.irq),
        host_softirq_ns: part(|p| p.softirq),
        host_ran: host.and_then(|h| h.ran.first()).map(|r| match r.pid {
            Some(pid) => format!("{} pid {pid}", r.comm),
            None => r.comm.clone(),
        }),
        vcpu,
        thread,
        vm_id,
        vm_label,
        level: exit.level.label(),
        ts: (exit.ts != Event::TS_UNKNOWN).then_some(exit.ts),
        event: exit.index,
        segment: u32::try_from(segment).unwrap_or(u32::MAX),
        reason: exit.reason.to_string(),
        reason_code: exit.reason.raw(),
        rip: exit.rip,
        qualification: exit.qualification,
        qualification_decoded: decoded.map(|q| q.to_string()),
        fault_access: decoded.and_then(Qualification::fault_access).map(|a| a.to_string()),
        fault_present: decoded.and_then(Qualification::fault_present),
        fault_final: decoded.and_then(Qualification::final_translation),
        vectoring_vector: vectoring.map(|v| u32::from(v.vector())),
        vectoring_type: vectoring.map(|v| v.kind().to_string()),
        vectoring_error_code: vectoring.map(IntrInfo::error_code_valid),
        latency_ns: exit.latency.ok(),
        no_latency: exit.latency.err().map(crate::stats::NoLatency::name),
        reflected: exit.reflected,
        vmcs12: exit.vmcs12,
    }
}

/// The `summary` rows of one trace: `by_reason_level` of its stats report (`by_reason` when the
/// trace is not nested), so counts equal `vmxray stats`.
pub fn summary_records(report: &StatsReport) -> Vec<SummaryRecord> {
    let Some(exits) = &report.exits else { return Vec::new() };
    let rows = if exits.nested { &exits.by_reason_level } else { &exits.by_reason };
    rows.iter()
        .map(|row| {
            let reason = row.reason.clone().unwrap_or_else(|| crate::stats::Reason {
                name: String::new(),
                code: 0,
                isa: "unknown".into(),
            });
            SummaryRecord {
                reason: reason.name,
                reason_code: reason.code,
                isa: reason.isa,
                level: crate::stats::level_label(row.level),
                count: row.count,
                share: row.percent / 100.0,
                time_share: row.time_percent / 100.0,
                without_latency: row.without_latency,
                l0_handled: row.l0_handled,
                reflected: row.reflected,
                latency_count: row.latency.as_ref().map_or(0, |l| l.count),
                latency: row.latency.as_ref().map(|l| LatencyFigures {
                    total: l.total,
                    min: l.min,
                    p50: l.p50,
                    p90: l.p90,
                    p99: l.p99,
                    p999: l.p999,
                    max: l.max,
                    mean: l.mean,
                    stddev: l.stddev,
                }),
            }
        })
        .collect()
}

/// The polars this crate builds its tables with (re-exported so that callers use the same version and features).
pub use polars;
