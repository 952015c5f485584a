//! `vmxray stats`: exit statistics of one trace (counts, exit→entry latency percentiles per exit
//! reason, vCPU and L1/L2 level), or, for a trace without `kvm_exit`, what it does contain.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use std::ops::ControlFlow;

use anyhow::Context as _;
use vmxray_analyze::context::HostContext;
use vmxray_analyze::kvm_stat::{KvmStat, KvmStatConfig, KvmStatEvent, SortKey};
use vmxray_analyze::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use vmxray_analyze::stats::{ExitStats, Format, StatsReport, write_report};
use vmxray_capture::{EventReader, ReadError, ReadStats, TraceMeta};
use vmxray_replay::ModelConfig;

/// Arguments of `vmxray stats`.
#[derive(clap::Args)]
pub struct Args {
    /// The trace (`-` for stdin).
    pub file: PathBuf,
    /// Output format: `text` tables, one `json` document (schema `vmxray-stats/1`), or `csv`
    /// with one row per (reason, level, vCPU) group.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Skip records or lines that cannot be read (counted and shown at the end) instead of
    /// stopping at the first one.
    #[arg(long)]
    pub permissive: bool,
    /// Only this VM's exits (a host trace): its VMM process id, its name, or `vmK` (like
    /// `perf kvm stat --pid`).
    #[arg(long)]
    pub vm: Option<String>,
    /// Also write SVG plots into this directory: a latency histogram per exit reason and
    /// level, exits per second per vCPU over time, and a time × latency heatmap.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Print `perf kvm stat report`'s table of these events instead (its pairing rules and
    /// units: µs): `vmexit` by reason, `ioport` by port and direction (kvm_pio → kvm_entry),
    /// `mmio` by address and direction (kvm_mmio write → kvm_entry, kvm_exit → kvm_mmio read).
    /// `--key`, `--vcpu` and `--pid` imply it (`vmexit` unless given).
    #[arg(long, value_enum)]
    pub event: Option<KvmEvent>,
    /// perf's `--key`: sort that table by `sample` count (default) or mean `time`.
    #[arg(long, value_enum)]
    pub key: Option<KvmKey>,
    /// perf's `--vcpu`: only this vCPU's events in that table.
    #[arg(long)]
    pub vcpu: Option<u32>,
    /// perf's `--pid`: only these processes' events in that table (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<i32>,
}

/// `--event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvmEvent {
    /// VM exits by reason.
    Vmexit,
    /// Port I/O by port and direction.
    Ioport,
    /// MMIO by guest physical address and direction.
    Mmio,
}

/// `--key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvmKey {
    /// Samples, most first.
    Sample,
    /// Mean time, longest first.
    Time,
}

impl Args {
    /// perf's table, when any of its options is given.
    fn kvm_stat(&self) -> Option<KvmStatConfig> {
        let asked = self.event.is_some()
            || self.key.is_some()
            || self.vcpu.is_some()
            || !self.pid.is_empty();
        asked.then(|| KvmStatConfig {
            event: match self.event {
                None | Some(KvmEvent::Vmexit) => KvmStatEvent::Vmexit,
                Some(KvmEvent::Ioport) => KvmStatEvent::Ioport,
                Some(KvmEvent::Mmio) => KvmStatEvent::Mmio,
            },
            key: match self.key {
                None | Some(KvmKey::Sample) => SortKey::Sample,
                Some(KvmKey::Time) => SortKey::Time,
            },
            vcpu: self.vcpu,
            pids: self.pid.clone(),
        })
    }
}

/// What a statistics pass keeps beside the exit statistics: the host context of exits, and
/// perf's table when asked for.
#[derive(Debug)]
pub struct Accumulated {
    /// The pass (its statistics).
    pub pass: Pass,
    /// The consumers run with it.
    pub extra: Extra,
}

/// The pass's consumers.
#[derive(Debug)]
pub struct Extra {
    /// None when the input cannot hold a host event ([`HostContext::possible_in`]).
    context: Option<HostContext>,
    kvm_stat: Option<KvmStat>,
}

impl Extra {
    /// The host-context analysis (of one VM's exits with `vm`) unless `host_events` is false,
    /// and perf's table if `kvm`.
    pub fn new(vm: Option<&str>, kvm: Option<KvmStatConfig>, host_events: bool) -> Self {
        let context = host_events.then(|| match vm {
            Some(vm) => HostContext::new().of_vm(vm),
            None => HostContext::new(),
        });
        Self { context, kvm_stat: kvm.map(KvmStat::new) }
    }
}

impl Sink for Extra {
    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        let _ = self.context.event(stepped);
        if let Some(kvm) = &mut self.kvm_stat {
            kvm.push(stepped.event);
        }
        ControlFlow::Continue(())
    }

    fn counted_before(&mut self, total: u64) {
        self.context.counted_before(total);
    }
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Readable tables.
    Text,
    /// One JSON document.
    Json,
    /// CSV, one row per (reason, level, vCPU) group.
    Csv,
}

impl From<OutputFormat> for Format {
    fn from(format: OutputFormat) -> Self {
        match format {
            OutputFormat::Text => Self::Text,
            OutputFormat::Json => Self::Json,
            OutputFormat::Csv => Self::Csv,
        }
    }
}

/// Runs `vmxray stats`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The pass reads no field of the kinds it only counts: the reader counts them itself.
    let mut reader =
        super::input::open_counting(&args.file, args.permissive, ExitStats::COUNT_ONLY)?;
    let kvm = args.kvm_stat();
    let perf_table_only = kvm.is_some() && args.format == OutputFormat::Text;
    let stats = match &args.plot {
        Some(dir) => {
            let meta = reader.meta();
            let mut plots =
                vmxray_analyze::plot::ExitPlots::new(meta.input.to_string(), meta.clock.is_ns());
            let stats = super::plot::accumulate_with_plots(
                &mut *reader,
                args.vm.as_deref(),
                &mut plots,
                kvm,
            )?;
            super::plot::write(&plots, dir)?;
            stats
        }
        None => accumulate_with(&mut *reader, args.vm.as_deref(), kvm)?,
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    if perf_table_only {
        let report = finish(stats, Some(reader.meta()), Some(reader.stats()))?;
        if let Some(table) = &report.kvm_stat {
            out.write_all(table.render_text().as_bytes()).context("Cannot write the report")?;
            out.flush().context("Cannot write the report")?;
        }
        return Ok(super::input::exit_status(reader.stats(), ExitCode::SUCCESS));
    }
    write_stats(stats, Some(reader.meta()), Some(reader.stats()), args.format, &mut out)?;
    Ok(super::input::exit_status(reader.stats(), ExitCode::SUCCESS))
}

/// Feeds every event through a statistics pass (the model only attributes events to vCPUs);
/// the first read error stops (with `--permissive` the reader only yields errors it cannot
/// skip).
#[cfg(test)]
pub fn accumulate(
    events: impl IntoIterator<Item = Result<vmxray_events::Event, ReadError>>,
    vm: Option<&str>,
) -> Result<Accumulated, ReadError> {
    let mut pass = stats_pass(vm);
    let mut extra = Extra::new(vm, None, true);
    pass.run(events, &mut extra)?;
    Ok(Accumulated { pass, extra })
}

/// The statistics pass of `vmxray stats` (of one VM with `vm`): the model only attributes
/// events to vCPUs.
fn stats_pass(vm: Option<&str>) -> Pass {
    let pass =
        Pass::new(PassConfig { model: ModelConfig::attribution_only(), stats: StatsMode::Report });
    match vm {
        Some(vm) => pass.stats_of_vm(vm),
        None => pass,
    }
}

/// Feeds every event of `reader` through a statistics pass with the host-context analysis
/// (when the input can hold host events), and perf's table when `kvm` says which. The records
/// the reader counted instead of yielding ([`ExitStats::COUNT_ONLY`]) keep their place in the
/// exits' stream indices.
pub fn accumulate_with(
    reader: &mut dyn EventReader,
    vm: Option<&str>,
    kvm: Option<KvmStatConfig>,
) -> Result<Accumulated, ReadError> {
    let mut pass = stats_pass(vm);
    let mut extra = Extra::new(vm, kvm, HostContext::possible_in(reader));
    pass.run_counted(reader, |r| r.counted_before(), &mut extra)?;
    Ok(Accumulated { pass, extra })
}

/// The report of a statistics pass, with the host context and perf's table.
fn finish(
    acc: Accumulated,
    meta: Option<&TraceMeta>,
    read: Option<&ReadStats>,
) -> anyhow::Result<StatsReport> {
    // A statistics pass always has its report.
    let Some(mut report) = acc.pass.finish(meta, read).stats else {
        anyhow::bail!("Internal error: a statistics pass without statistics");
    };
    report.host_context = acc.extra.context.and_then(HostContext::finish);
    report.kvm_stat = acc.extra.kvm_stat.map(KvmStat::finish);
    Ok(report)
}

/// Finishes the statistics and writes the report; returns it for callers that want the data.
pub fn write_stats(
    acc: Accumulated,
    meta: Option<&TraceMeta>,
    read: Option<&ReadStats>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> anyhow::Result<StatsReport> {
    let report = finish(acc, meta, read)?;
    write_report(&report, format.into(), out).context("Cannot write the report")?;
    out.flush().context("Cannot write the report")?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vmxray_capture::{Clock, InputFormat, Location, ReadErrorKind};
    use vmxray_events::codes::{ExitCode as KvmExitCode, ExitReason, Isa};
    use vmxray_events::{Entry, Event, EventKind, ExitFields, ExitInfo, InsnBytes};

    use super::*;

    fn ev(ts: u64, pid: i32, kind: EventKind) -> Result<Event, ReadError> {
        Ok(Event { ts, cpu: 0, pid, tgid: None, comm: None, kind })
    }

    fn exit(ts: u64, vcpu: u32, reason: u32) -> Result<Event, ReadError> {
        ev(
            ts,
            100 + i32::try_from(vcpu).unwrap(),
            EventKind::KvmExit(ExitInfo::from(ExitFields {
                reason: KvmExitCode::Vmx(ExitReason(reason)),
                isa: Some(Isa::Vmx),
                guest_rip: None,
                info1: None,
                info2: None,
                intr_info: None,
                error_code: None,
                vcpu_id: Some(vcpu),
                requests: None,
            })),
        )
    }

    fn entry(ts: u64, vcpu: u32) -> Result<Event, ReadError> {
        ev(
            ts,
            100 + i32::try_from(vcpu).unwrap(),
            EventKind::KvmEntry(Entry {
                vcpu_id: vcpu,
                rip: None,
                immediate_exit: None,
                intr_info: None,
                error_code: None,
            }),
        )
    }

    fn meta() -> TraceMeta {
        TraceMeta {
            input: Arc::from("test.dat"),
            format: InputFormat::TraceDat,
            clock: Clock::Mono,
            cpus: Some(2),
            kernel: None,
            excerpt: false,
        }
    }

    /// Two vCPUs: EPT_VIOLATION latencies 1000 and 3000 on vCPU 0, HLT 50000 on vCPU 1, and a
    /// last exit the trace ends on.
    fn events() -> Vec<Result<Event, ReadError>> {
        vec![
            exit(10_000, 0, 48),
            exit(10_500, 1, 12),
            entry(11_000, 0),
            exit(20_000, 0, 48),
            entry(23_000, 0),
            entry(60_500, 1),
            exit(70_000, 1, 30),
        ]
    }

    fn render(format: OutputFormat) -> (StatsReport, String) {
        let mut out = Vec::new();
        let stats = accumulate(events(), None).unwrap();
        let report = write_stats(stats, Some(&meta()), None, format, &mut out).unwrap();
        (report, String::from_utf8(out).unwrap())
    }

    #[test]
    fn text_report() {
        let (_, text) = render(OutputFormat::Text);
        for expected in [
            "vmxray stats: test.dat (trace-dat, clock mono, 2 CPUs, complete trace)",
            "4 kvm_exit on 2 vCPU(s): 3 with a latency, 1 without.",
            "Latency = time from a kvm_exit to the next kvm_entry of the same vCPU, in ns",
            "Lost events: none.",
            "Skipped records/lines: 0.",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // EPT_VIOLATION: 2 exits of 4 = 50 %, latencies 1000 and 3000: total 4000 of 54000 ns
        // = 7.41 % of the time, mean 2000, stddev 1000, p50 = rank 1 → 1000 (the minimum),
        // p90 = p99 = p99.9 = rank 2 → 3000.
        let ept = text.lines().find(|l| l.trim_start().starts_with("EPT_VIOLATION")).unwrap();
        let cells: Vec<&str> = ept.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "EPT_VIOLATION",
                "2",
                "50.00%",
                "0",
                "7.41%",
                "4000",
                "1000",
                "1000",
                "3000",
                "3000",
                "3000",
                "3000",
                "2000.0",
                "1000.0"
            ]
        );
    }

    #[test]
    fn json_parses_back() {
        let (report, json) = render(OutputFormat::Json);
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["schema"], "vmxray-stats/1");
        assert_eq!(back["input"]["clock"], "mono");
        assert_eq!(back["time_unit"], "ns");
        assert_eq!(back["exits"]["total"], 4);
        assert_eq!(back["exits"]["without_latency"]["trace_end"], 1);
        assert_eq!(back["exits"]["by_reason"][0]["reason"]["name"], "EPT_VIOLATION");
        assert_eq!(back["exits"]["by_reason"][0]["latency"]["max"], 3000);
        assert_eq!(back["exits"]["by_vcpu"][1]["vcpu"]["id"], 1);
        assert_eq!(report.exits.unwrap().groups.len(), 3);
    }

    #[test]
    fn csv_has_header_and_rows() {
        let (_, csv) = render(OutputFormat::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("reason,reason_code,isa,level,vcpu,count,percent,"));
        // Groups by reason code: HLT (12) vCPU 1, IO_INSTRUCTION (30) vCPU 1, EPT (48) vCPU 0.
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("HLT,12,vmx,all,1,1,25.0000,0,0,0,1,92.5926,50000,50000,"));
        assert!(lines[2].starts_with("IO_INSTRUCTION,30,vmx,all,1,1,25.0000,1,0,0,0,,"));
        assert!(
            lines[3]
                .starts_with("EPT_VIOLATION,48,vmx,all,0,2,50.0000,0,0,0,2,7.4074,4000,1000,1000,")
        );
        assert!(lines.iter().skip(1).all(|l| l.ends_with(",ns")));
    }

    #[test]
    fn no_kvm_exit_trace() {
        let events = vec![ev(
            5,
            7,
            EventKind::KvmEmulateInsn {
                rip: 0x1000,
                csbase: 0,
                insn: InsnBytes::new(&[0x0f, 0x22, 0xd8], 3),
                flags: 9,
                failed: false,
            },
        )];
        let mut out = Vec::new();
        let report = write_stats(
            accumulate(events, None).unwrap(),
            None,
            None,
            OutputFormat::Text,
            &mut out,
        )
        .unwrap();
        assert!(report.exits.is_none());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("No kvm_exit events"), "{text}");
        assert!(text.contains("1      0 0f 22 d8 mov cr3, rax"), "{text}");
    }

    #[test]
    fn read_error_stops_with_the_error() {
        let input: Arc<str> = Arc::from("bad.txt");
        let events = vec![
            exit(1, 0, 48),
            Err(ReadError::new(
                &input,
                Location::Line(7),
                ReadErrorKind::Truncated { expected: "a timestamp" },
            )),
            entry(2, 0),
        ];
        let err = accumulate(events, None).unwrap_err();
        assert_eq!(err.to_string(), "bad.txt:7: Truncated: expected a timestamp, the input ends");
    }

    #[test]
    fn missing_file_is_an_input_error() {
        let args = Args {
            file: PathBuf::from("/nonexistent/vmxray-stats-test"),
            format: OutputFormat::Text,
            permissive: false,
            vm: None,
            plot: None,
            event: None,
            key: None,
            vcpu: None,
            pid: Vec::new(),
        };
        let err = run(args).unwrap_err();
        assert_eq!(super::super::report_error(&err), ExitCode::from(super::super::EXIT_ERROR));
    }
}
