//! `vmxray scan PATH...`: batch anomaly scan of many traces in parallel.
//!
//! Inputs are files, directories (walked recursively) and globs, in any format the readers
//! support. Each trace is streamed through decode → replay → per-exit rows → tables on one of
//! `--jobs` threads. With `--out DIR` the five tables (`exits`, `events`, `anomalies`,
//! `summary`, `traces`; schema in `vmxray_analyze::scan`) are written as a hive-style dataset
//! (`DIR/table=T/trace=ID/part-N.parquet`, zstd); without it the cross-trace anomaly table and
//! the per-trace × reason summary are printed.
//!
//! Exit status: 2 when some input failed (unless `--permissive`), else 1 when an anomaly at or
//! above `--fail-on` was found, else 0.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use vmxray_analyze::scan::polars::prelude::{Column, DataFrame};
use vmxray_analyze::scan::{
    self, AnomalyRecord, Chunk, Collector, DatasetWriter, DiscoverOptions, OutputFormat,
    ScanOptions, ScanProgress, Shard, SummaryRecord, TableSink, TraceLabels, TraceOutcome,
};
use vmxray_replay::{ModelConfig, RuleId, RuleSet, Severity};

/// Dataset file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Parquet (zstd).
    Parquet,
    /// CSV with a header row.
    Csv,
    /// JSON Lines.
    Jsonl,
}

/// Arguments of `vmxray scan`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trace files, directories (recursive) and globs (quoted, e.g. 'fleet/*/trace.dat').
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Write the tables as a dataset into this directory (hive layout) instead of printing.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Dataset file format (with --out).
    #[arg(long, value_enum, default_value = "parquet", requires = "out")]
    pub format: Format,
    /// Traces scanned in parallel (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub jobs: usize,
    /// Scan only shard K of N (1-based) of the input list, split by a stable hash of each
    /// trace's id, so that N machines given the same arguments scan disjoint parts.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Exit with status 1 when an anomaly at or above this severity is found.
    #[arg(long, default_value = "warning", value_parser = parse_severity)]
    pub fail_on: Severity,
    /// Only these rules (comma-separated names; default: all).
    #[arg(long, value_delimiter = ',', value_parser = parse_rule)]
    pub rules: Vec<RuleId>,
    /// Skip unreadable records (counted in `traces.parse_errors`), and do not turn failed
    /// inputs into exit status 2.
    #[arg(long)]
    pub permissive: bool,
    /// Files skipped while walking directories, by name or by path below the argument
    /// (`excerpts/*`), in addition to the defaults (*.json, *.jsonl, *.md, *.toml, *.rs, *.py,
    /// *.sh, *.parquet, *.csv, hidden files).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<glob::Pattern>,
    /// Rows buffered per trace and table before a part file is written.
    #[arg(long, default_value_t = 1 << 16)]
    pub chunk_rows: usize,
    /// Rows handed to the table printer per table (without --out); polars shows up to 10 of
    /// them (first and last) unless POLARS_FMT_MAX_ROWS is set, and cuts strings at 30 characters
    /// unless POLARS_FMT_STR_LEN is.
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also write SVG plots of the fleet's exits into this directory: a latency histogram per
    /// exit reason and level, exits per second per host over time (from each trace's start),
    /// and a time × latency heatmap.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

fn parse_rule(s: &str) -> Result<RuleId, String> {
    s.parse().map_err(|e: vmxray_replay::UnknownRule| {
        let names: Vec<&str> = RuleId::ALL.iter().map(|r| r.name()).collect();
        format!("{e}; rules: {}", names.join(", "))
    })
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse().map_err(|e: vmxray_replay::UnknownSeverity| e.to_string())
}

/// Runs `vmxray scan`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut discover = DiscoverOptions::default();
    discover.exclude.extend(args.exclude.iter().cloned());
    let mut inputs = scan::discover(&args.paths, &discover)?;
    if let Some(shard) = args.shard {
        inputs.retain(|input| shard.contains(&input.trace));
    }
    let opts = ScanOptions {
        permissive: args.permissive,
        jobs: args.jobs,
        chunk_rows: args.chunk_rows.max(1),
        model: ModelConfig {
            rules: if args.rules.is_empty() {
                RuleSet::all()
            } else {
                args.rules.iter().copied().collect()
            },
            ..ModelConfig::default()
        },
    };
    let bar = progress_bar(inputs.len() as u64, args.quiet);
    let events = AtomicU64::new(0);
    let started = Instant::now();
    let progress = |p: ScanProgress| {
        let Some(bar) = &bar else { return };
        match p {
            ScanProgress::Events(n) => {
                let total = events.fetch_add(n, Ordering::Relaxed) + n;
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{} events, {}/s",
                    human(total as f64),
                    human(total as f64 / secs)
                ));
            }
            ScanProgress::TraceDone => bar.inc(1),
        }
    };

    let fleet = format!("fleet of {} traces", inputs.len());
    let tap_plots = |sink: &dyn TableSink| {
        let tap = super::plot::PlotTap::new(
            sink,
            vmxray_analyze::plot::ExitPlots::new(fleet.clone(), true),
        );
        let outcomes = scan::scan(&inputs, &opts, &tap, &progress);
        (outcomes, tap.into_plots())
    };
    let mut plots = None;
    let (outcomes, collected) = match &args.out {
        Some(dir) if args.plot.is_some() => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Cannot create {}", dir.display()))?;
            let sink = DatasetWriter::new(dir, dataset_format(args.format));
            let (outcomes, p) = tap_plots(&sink);
            plots = Some(p);
            (outcomes, None)
        }
        None if args.plot.is_some() => {
            let sink = Collector::new();
            let (outcomes, p) = tap_plots(&sink);
            plots = Some(p);
            (outcomes, Some(sink.into_chunks()))
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Cannot create {}", dir.display()))?;
            let format = match args.format {
                Format::Parquet => OutputFormat::Parquet,
                Format::Csv => OutputFormat::Csv,
                Format::Jsonl => OutputFormat::Jsonl,
            };
            let sink = DatasetWriter::new(dir, format);
            (scan::scan(&inputs, &opts, &sink, &progress), None)
        }
        None => {
            let sink = Collector::new();
            let outcomes = scan::scan(&inputs, &opts, &sink as &dyn TableSink, &progress);
            (outcomes, Some(sink.into_chunks()))
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let (Some(plots), Some(dir)) = (&plots, &args.plot) {
        super::plot::write(plots, dir)?;
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(chunks) = collected {
        print_tables(&mut out, chunks, args.limit)?;
    }
    let failed: Vec<&TraceOutcome> =
        outcomes.iter().filter(|o| o.record.status == "failed").collect();
    let flagged = outcomes
        .iter()
        .filter(|o| {
            Severity::ALL.iter().zip(o.record.anomalies).any(|(s, n)| *s >= args.fail_on && n > 0)
        })
        .count();
    let total_events: u64 = outcomes.iter().map(|o| o.record.events).sum();
    let elapsed = started.elapsed();
    writeln!(
        out,
        "{} traces scanned{}, {} events in {:.1} s ({}/s); {} with anomalies at or above {}; {} failed{}",
        outcomes.len(),
        args.shard.map(|s| format!(" (shard {s})")).unwrap_or_default(),
        total_events,
        elapsed.as_secs_f64(),
        human(total_events as f64 / elapsed.as_secs_f64().max(1e-3)),
        flagged,
        args.fail_on,
        failed.len(),
        args.out.as_ref().map(|d| format!("; tables in {}", d.display())).unwrap_or_default(),
    )?;
    out.flush()?;
    for o in &failed {
        eprintln!("vmxray: {}: {}", o.labels.trace, o.record.error.as_deref().unwrap_or("failed"));
    }
    Ok(if !failed.is_empty() && !args.permissive {
        ExitCode::from(super::EXIT_ERROR)
    } else if flagged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn dataset_format(format: Format) -> OutputFormat {
    match format {
        Format::Parquet => OutputFormat::Parquet,
        Format::Csv => OutputFormat::Csv,
        Format::Jsonl => OutputFormat::Jsonl,
    }
}

fn progress_bar(traces: u64, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(traces);
    let style =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} traces  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Prints the anomalies of every trace (most severe first) and the per-trace × reason summary
/// with polars' table printing.
fn print_tables(
    out: &mut impl Write,
    chunks: Vec<(TraceLabels, Chunk)>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut anomalies: Vec<(String, AnomalyRecord)> = Vec::new();
    let mut summary: Vec<(String, SummaryRecord)> = Vec::new();
    for (labels, chunk) in chunks {
        match chunk {
            Chunk::Anomalies(rows) => {
                anomalies.extend(rows.into_iter().map(|r| (labels.trace.clone(), r)));
            }
            Chunk::Summary(rows) => {
                summary.extend(rows.into_iter().map(|r| (labels.trace.clone(), r)));
            }
            Chunk::Exits(_) | Chunk::Events(_) | Chunk::Traces(_) => {}
        }
    }
    anomalies.sort_by(|(ta, a), (tb, b)| {
        b.severity_rank.cmp(&a.severity_rank).then_with(|| ta.cmp(tb)).then(a.event.cmp(&b.event))
    });
    summary.sort_by(|(ta, a), (tb, b)| ta.cmp(tb).then(b.count.cmp(&a.count)));

    let shown = anomalies.len().min(limit);
    let a = &anomalies[..shown];
    let frame = DataFrame::new(
        shown,
        vec![
            Column::new("severity".into(), a.iter().map(|(_, r)| r.severity).collect::<Vec<_>>()),
            Column::new("rule".into(), a.iter().map(|(_, r)| r.rule).collect::<Vec<_>>()),
            Column::new("trace".into(), a.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>()),
            Column::new("vcpu".into(), a.iter().map(|(_, r)| r.vcpu).collect::<Vec<_>>()),
            Column::new("ts".into(), a.iter().map(|(_, r)| r.ts).collect::<Vec<_>>()),
            Column::new("event".into(), a.iter().map(|(_, r)| r.event).collect::<Vec<_>>()),
            Column::new("segment".into(), a.iter().map(|(_, r)| r.segment).collect::<Vec<_>>()),
            Column::new(
                "message".into(),
                a.iter().map(|(_, r)| r.message.as_str()).collect::<Vec<_>>(),
            ),
        ],
    )?;
    writeln!(out, "Anomalies: {} (most severe first)", anomalies.len())?;
    if shown > 0 {
        writeln!(out, "{frame}")?;
    }
    if anomalies.len() > shown {
        writeln!(out, "... {} more (--limit, or --out for every row)", anomalies.len() - shown)?;
    }

    let shown = summary.len().min(limit);
    let s = &summary[..shown];
    let lat = |f: fn(&scan::LatencyFigures) -> u64| {
        s.iter().map(|(_, r)| r.latency.as_ref().map(f)).collect::<Vec<_>>()
    };
    let frame = DataFrame::new(
        shown,
        vec![
            Column::new("trace".into(), s.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>()),
            Column::new(
                "reason".into(),
                s.iter().map(|(_, r)| r.reason.as_str()).collect::<Vec<_>>(),
            ),
            Column::new("level".into(), s.iter().map(|(_, r)| r.level).collect::<Vec<_>>()),
            Column::new("count".into(), s.iter().map(|(_, r)| r.count).collect::<Vec<_>>()),
            Column::new("share".into(), s.iter().map(|(_, r)| r.share).collect::<Vec<_>>()),
            Column::new("p50_ns".into(), lat(|l| l.p50)),
            Column::new("p99_ns".into(), lat(|l| l.p99)),
            Column::new("max_ns".into(), lat(|l| l.max)),
        ],
    )?;
    writeln!(out, "\nExit summary: {} rows (trace × reason × level)", summary.len())?;
    if shown > 0 {
        writeln!(out, "{frame}")?;
    }
    if summary.len() > shown {
        writeln!(out, "... {} more (--limit, or --out for every row)", summary.len() - shown)?;
    }
    Ok(())
}
