//! The rows of the scan tables and their conversion to polars [`DataFrame`]s. The schema of each
//! table is documented in the [module root](super).

use polars::prelude::*;

/// The five tables of a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// One row per `kvm_exit`.
    Exits,
    /// One row per trace × event name.
    Events,
    /// One row per anomaly.
    Anomalies,
    /// One row per trace × exit reason × level.
    Summary,
    /// One row per input.
    Traces,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] =
        [Self::Exits, Self::Events, Self::Anomalies, Self::Summary, Self::Traces];

    /// The name used in the output layout (`table=NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Exits => "exits",
            Self::Events => "events",
            Self::Anomalies => "anomalies",
            Self::Summary => "summary",
            Self::Traces => "traces",
        }
    }
}

/// Who a row belongs to: the trace and its labels, repeated on every row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceLabels {
    /// The trace id.
    pub trace: String,
    /// `host=` label.
    pub host: Option<String>,
    /// `vm=` label.
    pub vm: Option<String>,
}

/// A row of `exits`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitRecord {
    /// vCPU id (None: attributed to a thread only).
    pub vcpu: Option<u32>,
    /// The thread, when the vCPU is unknown.
    pub thread: Option<i32>,
    /// The vCPU's VM: its index in the trace, and its label.
    pub vm_id: Option<u32>,
    /// See `vm_id`.
    pub vm_label: Option<String>,
    /// `L1` or `L2`.
    pub level: &'static str,
    /// Timestamp (None: the input did not say it).
    pub ts: Option<u64>,
    /// 0-based event index.
    pub event: u64,
    /// The capture (segment) of the input the exit belongs to.
    pub segment: u32,
    /// Reason name.
    pub reason: String,
    /// Raw reason code.
    pub reason_code: u64,
    /// Guest RIP.
    pub rip: Option<u64>,
    /// Exit qualification / exit_info_1.
    pub qualification: Option<u64>,
    /// The qualification decoded for the reason, as `vmxray dump` shows it.
    pub qualification_decoded: Option<String>,
    /// EPT violation / #NPF / #PF: `read`, `write`, `fetch` (joined with `+`).
    pub fault_access: Option<String>,
    /// EPT violation / #NPF / #PF: the translation was present (a permission fault).
    pub fault_present: Option<bool>,
    /// EPT violation / #NPF: the access was to the final translation (true) or to a guest
    /// paging structure during the guest's walk (false).
    pub fault_final: Option<bool>,
    /// The event being delivered when the exit happened: its vector.
    pub vectoring_vector: Option<u32>,
    /// Its type (`external interrupt`, `hardware exception`, …).
    pub vectoring_type: Option<String>,
    /// Its error code was being delivered too.
    pub vectoring_error_code: Option<bool>,
    /// Exit → next entry of that vCPU.
    pub latency_ns: Option<u64>,
    /// Why no latency.
    pub no_latency: Option<&'static str>,
    /// L2 exits: reflected to L1.
    pub reflected: Option<bool>,
    /// L2 exits: the vmcs12 (GPA) current at the exit, when the model knows it.
    pub vmcs12: Option<u64>,
    /// Host context: the vCPU thread ran on its CPU.
    pub host_in_kvm_ns: Option<u64>,
    /// Host context: the thread was off its CPU.
    pub host_scheduled_out_ns: Option<u64>,
    /// Host context: of that, blocked.
    pub host_blocked_ns: Option<u64>,
    /// Host context: hard interrupt handlers on its CPU.
    pub host_irq_ns: Option<u64>,
    /// Host context: softirqs on its CPU.
    pub host_softirq_ns: Option<u64>,
    /// Host context: the thread that ran longest meanwhile.
    pub host_ran: Option<String>,
}

/// A row of `events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Event name.
    pub event: String,
    /// Occurrences.
    pub count: u64,
    /// First timestamp (None when none of them has one).
    pub first_ts: Option<u64>,
    /// Last timestamp.
    pub last_ts: Option<u64>,
}

/// A row of `anomalies`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnomalyRecord {
    /// Rule name.
    pub rule: &'static str,
    /// `info` … `critical`.
    pub severity: &'static str,
    /// 0 info, 1 warning, 2 error, 3 critical.
    pub severity_rank: u32,
    /// vCPU id.
    pub vcpu: Option<u32>,
    /// Thread, when not attributed to a vCPU.
    pub thread: Option<i32>,
    /// The vCPU's VM: its index in the trace, and its label.
    pub vm_id: Option<u32>,
    /// See `vm_id`.
    pub vm_label: Option<String>,
    /// Timestamp of the event where it became certain (None: the input did not say it).
    pub ts: Option<u64>,
    /// Its 0-based index.
    pub event: u64,
    /// The capture (segment) of the input that event belongs to.
    pub segment: u32,
    /// What is wrong.
    pub message: String,
    /// Indices of the proving events, comma separated.
    pub evidence: String,
    /// The KVM commit the rule encodes.
    pub commit: &'static str,
}

/// A row of `summary`.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRecord {
    /// Reason name.
    pub reason: String,
    /// Raw code.
    pub reason_code: u64,
    /// `vmx`, `svm`, `unknown`.
    pub isa: String,
    /// `all`, `L1`, `L2`.
    pub level: &'static str,
    /// Exits.
    pub count: u64,
    /// Share of the trace's exits, 0..1.
    pub share: f64,
    /// Share of the trace's summed latency, 0..1.
    pub time_share: f64,
    /// Exits without a latency.
    pub without_latency: u64,
    /// L2 rows: handled by L0.
    pub l0_handled: u64,
    /// L2 rows: reflected to L1.
    pub reflected: u64,
    /// Exits with a latency.
    pub latency_count: u64,
    /// Latency figures (None when no exit of the group has one).
    pub latency: Option<LatencyFigures>,
}

/// Latency figures of a summary row, in the trace's time unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyFigures {
    /// Sum.
    pub total: u64,
    /// Minimum.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub stddev: f64,
}

/// The row of `traces`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// The path read.
    pub path: String,
    /// `ok` or `failed`.
    pub status: &'static str,
    /// The error (with its causes) when it failed.
    pub error: Option<String>,
    /// Detected format.
    pub format: Option<String>,
    /// Trace clock.
    pub clock: Option<String>,
    /// `ns` or `raw`.
    pub time_unit: &'static str,
    /// Kernel release, when the input says it.
    pub kernel: Option<String>,
    /// The oldest kernel the events' layouts allow.
    pub kernel_at_least: Option<String>,
    /// CPUs, when the input says it.
    pub cpus: Option<u32>,
    /// vCPUs seen.
    pub vcpus: u32,
    /// VMs seen.
    pub vms: u32,
    /// The VMs were inferred (no tgid in the trace).
    pub vms_inferred: bool,
    /// Events read.
    pub events: u64,
    /// `kvm_exit` events.
    pub exits: u64,
    /// Events lost (ring-buffer overruns).
    pub lost_events: u64,
    /// Lost-event markers.
    pub lost_markers: u64,
    /// Records or lines skipped (`--permissive`).
    pub parse_errors: u64,
    /// Records of events no format describes.
    pub unknown_events: u64,
    /// Lines of prose skipped.
    pub non_trace_lines: u64,
    /// An excerpt, not a complete trace.
    pub excerpt: bool,
    /// Captures after the first.
    pub segments: u32,
    /// First timestamp.
    pub first_ts: Option<u64>,
    /// Last timestamp.
    pub last_ts: Option<u64>,
    /// Anomalies per severity (info, warning, error, critical).
    pub anomalies: [u64; 4],
    /// Input size in bytes.
    pub bytes: u64,
}

/// Rows of one table for one trace, ready to become a [`DataFrame`].
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// `exits` rows.
    Exits(Vec<ExitRecord>),
    /// `events` rows.
    Events(Vec<EventRecord>),
    /// `anomalies` rows.
    Anomalies(Vec<AnomalyRecord>),
    /// `summary` rows.
    Summary(Vec<SummaryRecord>),
    /// The `traces` row.
    Traces(Vec<TraceRecord>),
}

fn col<T, P>(name: &str, values: T) -> Column
where
    Series: NamedFrom<T, P>,
    P: ?Sized,
{
    Column::new(name.into(), values)
}

fn labels(l: &TraceLabels, n: usize) -> Vec<Column> {
    vec![
        col("trace", vec![l.trace.as_str(); n]),
        col("host", vec![l.host.as_deref(); n]),
        col("vm", vec![l.vm.as_deref(); n]),
    ]
}

impl Chunk {
    /// Its table.
    pub fn table(&self) -> Table {
        match self {
            Self::Exits(_) => Table::Exits,
            Self::Events(_) => Table::Events,
            Self::Anomalies(_) => Table::Anomalies,
            Self::Summary(_) => Table::Summary,
            Self::Traces(_) => Table::Traces,
        }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        match self {
            Self::Exits(r) => r.len(),
            Self::Events(r) => r.len(),
            Self::Anomalies(r) => r.len(),
            Self::Summary(r) => r.len(),
            Self::Traces(r) => r.len(),
        }
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The DataFrame, with the columns of the table's schema in order.
    pub fn to_frame(&self, l: &TraceLabels) -> PolarsResult<DataFrame> {
        let n = self.len();
        let mut columns = labels(l, n);
        match self {
            Self::Exits(rows) => columns.extend([
                col("vcpu", rows.iter().map(|r| r.vcpu).collect::<Vec<_>>()),
                col("thread", rows.iter().map(|r| r.thread).collect::<Vec<_>>()),
                col("vm_id", rows.iter().map(|r| r.vm_id).collect::<Vec<_>>()),
                col("vm_label", rows.iter().map(|r| r.vm_label.as_deref()).collect::<Vec<_>>()),
                col("level", rows.iter().map(|r| r.level).collect::<Vec<_>>()),
                col("ts", rows.iter().map(|r| r.ts).collect::<Vec<_>>()),
                col("event", rows.iter().map(|r| r.event).collect::<Vec<_>>()),
                col("segment", rows.iter().map(|r| r.segment).collect::<Vec<_>>()),
                col("reason", rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>()),
                col("reason_code", rows.iter().map(|r| r.reason_code).collect::<Vec<_>>()),
                col("rip", rows.iter().map(|r| r.rip).collect::<Vec<_>>()),
                col("qualification", rows.iter().map(|r| r.qualification).collect::<Vec<_>>()),
                col(
                    "qualification_decoded",
                    rows.iter().map(|r| r.qualification_decoded.as_deref()).collect::<Vec<_>>(),
                ),
                col(
                    "fault_access",
                    rows.iter().map(|r| r.fault_access.as_deref()).collect::<Vec<_>>(),
                ),
                col("fault_present", rows.iter().map(|r| r.fault_present).collect::<Vec<_>>()),
                col("fault_final", rows.iter().map(|r| r.fault_final).collect::<Vec<_>>()),
                col(
                    "vectoring_vector",
                    rows.iter().map(|r| r.vectoring_vector).collect::<Vec<_>>(),
                ),
                col(
                    "vectoring_type",
                    rows.iter().map(|r| r.vectoring_type.as_deref()).collect::<Vec<_>>(),
                ),
                col(
                    "vectoring_error_code",
                    rows.iter().map(|r| r.vectoring_error_code).collect::<Vec<_>>(),
                ),
                col("latency_ns", rows.iter().map(|r| r.latency_ns).collect::<Vec<_>>()),
                col("no_latency", rows.iter().map(|r| r.no_latency).collect::<Vec<_>>()),
                col("reflected", rows.iter().map(|r| r.reflected).collect::<Vec<_>>()),
                col("vmcs12", rows.iter().map(|r| r.vmcs12).collect::<Vec<_>>()),
                col("host_in_kvm_ns", rows.iter().map(|r| r.host_in_kvm_ns).collect::<Vec<_>>()),
                col(
                    "host_scheduled_out_ns",
                    rows.iter().map(|r| r.host_scheduled_out_ns).collect::<Vec<_>>(),
                ),
                col("host_blocked_ns", rows.iter().map(|r| r.host_blocked_ns).collect::<Vec<_>>()),
                col("host_irq_ns", rows.iter().map(|r| r.host_irq_ns).collect::<Vec<_>>()),
                col("host_softirq_ns", rows.iter().map(|r| r.host_softirq_ns).collect::<Vec<_>>()),
                col("host_ran", rows.iter().map(|r| r.host_ran.as_deref()).collect::<Vec<_>>()),
            ]),
            Self::Events(rows) => columns.extend([
                col("event", rows.iter().map(|r| r.event.as_str()).collect::<Vec<_>>()),
                col("count", rows.iter().map(|r| r.count).collect::<Vec<_>>()),
                col("first_ts", rows.iter().map(|r| r.first_ts).collect::<Vec<_>>()),
                col("last_ts", rows.iter().map(|r| r.last_ts).collect::<Vec<_>>()),
            ]),
            Self::Anomalies(rows) => columns.extend([
                col("rule", rows.iter().map(|r| r.rule).collect::<Vec<_>>()),
                col("severity", rows.iter().map(|r| r.severity).collect::<Vec<_>>()),
                col("severity_rank", rows.iter().map(|r| r.severity_rank).collect::<Vec<_>>()),
                col("vcpu", rows.iter().map(|r| r.vcpu).collect::<Vec<_>>()),
                col("thread", rows.iter().map(|r| r.thread).collect::<Vec<_>>()),
                col("vm_id", rows.iter().map(|r| r.vm_id).collect::<Vec<_>>()),
                col("vm_label", rows.iter().map(|r| r.vm_label.as_deref()).collect::<Vec<_>>()),
                col("ts", rows.iter().map(|r| r.ts).collect::<Vec<_>>()),
                col("event", rows.iter().map(|r| r.event).collect::<Vec<_>>()),
                col("segment", rows.iter().map(|r| r.segment).collect::<Vec<_>>()),
                col("message", rows.iter().map(|r| r.message.as_str()).collect::<Vec<_>>()),
                col("evidence", rows.iter().map(|r| r.evidence.as_str()).collect::<Vec<_>>()),
                col("commit", rows.iter().map(|r| r.commit).collect::<Vec<_>>()),
            ]),
            Self::Summary(rows) => {
                let lat = |f: fn(&LatencyFigures) -> u64| {
                    rows.iter().map(|r| r.latency.as_ref().map(f)).collect::<Vec<_>>()
                };
                let latf = |f: fn(&LatencyFigures) -> f64| {
                    rows.iter().map(|r| r.latency.as_ref().map(f)).collect::<Vec<_>>()
                };
                columns.extend([
                    col("reason", rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>()),
                    col("reason_code", rows.iter().map(|r| r.reason_code).collect::<Vec<_>>()),
                    col("isa", rows.iter().map(|r| r.isa.as_str()).collect::<Vec<_>>()),
                    col("level", rows.iter().map(|r| r.level).collect::<Vec<_>>()),
                    col("count", rows.iter().map(|r| r.count).collect::<Vec<_>>()),
                    col("share", rows.iter().map(|r| r.share).collect::<Vec<_>>()),
                    col("time_share", rows.iter().map(|r| r.time_share).collect::<Vec<_>>()),
                    col(
                        "without_latency",
                        rows.iter().map(|r| r.without_latency).collect::<Vec<_>>(),
                    ),
                    col("l0_handled", rows.iter().map(|r| r.l0_handled).collect::<Vec<_>>()),
                    col("reflected", rows.iter().map(|r| r.reflected).collect::<Vec<_>>()),
                    col("latency_count", rows.iter().map(|r| r.latency_count).collect::<Vec<_>>()),
                    col("total_ns", lat(|l| l.total)),
                    col("min_ns", lat(|l| l.min)),
                    col("p50_ns", lat(|l| l.p50)),
                    col("p90_ns", lat(|l| l.p90)),
                    col("p99_ns", lat(|l| l.p99)),
                    col("p999_ns", lat(|l| l.p999)),
                    col("max_ns", lat(|l| l.max)),
                    col("mean_ns", latf(|l| l.mean)),
                    col("stddev_ns", latf(|l| l.stddev)),
                ]);
            }
            Self::Traces(rows) => {
                let sev = |i: usize| rows.iter().map(|r| r.anomalies[i]).collect::<Vec<_>>();
                columns.extend([
                    col("path", rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>()),
                    col("status", rows.iter().map(|r| r.status).collect::<Vec<_>>()),
                    col("error", rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>()),
                    col("format", rows.iter().map(|r| r.format.as_deref()).collect::<Vec<_>>()),
                    col("clock", rows.iter().map(|r| r.clock.as_deref()).collect::<Vec<_>>()),
                    col("time_unit", rows.iter().map(|r| r.time_unit).collect::<Vec<_>>()),
                    col("kernel", rows.iter().map(|r| r.kernel.as_deref()).collect::<Vec<_>>()),
                    col(
                        "kernel_at_least",
                        rows.iter().map(|r| r.kernel_at_least.as_deref()).collect::<Vec<_>>(),
                    ),
                    col("cpus", rows.iter().map(|r| r.cpus).collect::<Vec<_>>()),
                    col("vcpus", rows.iter().map(|r| r.vcpus).collect::<Vec<_>>()),
                    col("vms", rows.iter().map(|r| r.vms).collect::<Vec<_>>()),
                    col("vms_inferred", rows.iter().map(|r| r.vms_inferred).collect::<Vec<_>>()),
                    col("events", rows.iter().map(|r| r.events).collect::<Vec<_>>()),
                    col("exits", rows.iter().map(|r| r.exits).collect::<Vec<_>>()),
                    col("lost_events", rows.iter().map(|r| r.lost_events).collect::<Vec<_>>()),
                    col("lost_markers", rows.iter().map(|r| r.lost_markers).collect::<Vec<_>>()),
                    col("parse_errors", rows.iter().map(|r| r.parse_errors).collect::<Vec<_>>()),
                    col(
                        "unknown_events",
                        rows.iter().map(|r| r.unknown_events).collect::<Vec<_>>(),
                    ),
                    col(
                        "non_trace_lines",
                        rows.iter().map(|r| r.non_trace_lines).collect::<Vec<_>>(),
                    ),
                    col("excerpt", rows.iter().map(|r| r.excerpt).collect::<Vec<_>>()),
                    col("segments", rows.iter().map(|r| r.segments).collect::<Vec<_>>()),
                    col("first_ts", rows.iter().map(|r| r.first_ts).collect::<Vec<_>>()),
                    col("last_ts", rows.iter().map(|r| r.last_ts).collect::<Vec<_>>()),
                    col(
                        "duration_ns",
                        rows.iter()
                            .map(|r| Some(r.last_ts?.saturating_sub(r.first_ts?)))
                            .collect::<Vec<_>>(),
                    ),
                    col("anomalies_info", sev(0)),
                    col("anomalies_warning", sev(1)),
                    col("anomalies_error", sev(2)),
                    col("anomalies_critical", sev(3)),
                    col("bytes", rows.iter().map(|r| r.bytes).collect::<Vec<_>>()),
                ]);
            }
        }
        DataFrame::new(n, columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented schema of `table`: the `| column | type | meaning |` rows of its section
    /// in the `scan` module docs, after the three label columns every table starts with.
    fn documented(table: &str) -> Vec<(String, String)> {
        let docs = include_str!("mod.rs");
        let start = docs.find(&format!("//! **{table}**")).expect("a section per table");
        let mut out = vec![
            ("trace".to_owned(), "String".to_owned()),
            ("host".to_owned(), "String".to_owned()),
            ("vm".to_owned(), "String".to_owned()),
        ];
        let section = &docs[start..];
        let end = section[8..].find("//! **").map_or(section.len(), |e| e + 8);
        for line in section[..end].lines().take_while(|l| l.starts_with("//!")) {
            let cells: Vec<&str> =
                line.trim_start_matches("//!").split('|').map(str::trim).collect();
            if let [_, name, ty, ..] = cells[..]
                && name != "column"
                && !name.starts_with("---")
            {
                out.push((name.to_owned(), ty.trim_end_matches('?').to_owned()));
            }
        }
        out
    }

    fn type_name(dtype: &DataType) -> String {
        match dtype {
            DataType::String => "String".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn the_documented_schemas_are_the_tables_columns() {
        let labels = TraceLabels { trace: "t".into(), host: None, vm: None };
        for chunk in [
            Chunk::Exits(Vec::new()),
            Chunk::Events(Vec::new()),
            Chunk::Anomalies(Vec::new()),
            Chunk::Summary(Vec::new()),
            Chunk::Traces(vec![TraceRecord::default()]),
        ] {
            let table = chunk.table().name();
            let frame = chunk.to_frame(&labels).unwrap();
            let actual: Vec<(String, String)> = frame
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), type_name(c.dtype())))
                .collect();
            assert_eq!(actual, documented(table), "table {table}");
        }
    }
}
