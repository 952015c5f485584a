//! `vmxray stats`: exit statistics of one trace (counts, exit→entry latency percentiles per exit
//! reason, vCPU and L1/L2 level), or, for a trace without `kvm_exit`, what it does contain.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use vmxray_analyze::stats::{ExitStats, Format, StatsReport, write_report};
use vmxray_capture::{Event, ReadError, ReadOptions, ReadStats, TraceMeta};

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
    let mut reader = vmxray_capture::open(&args.file, ReadOptions { permissive: args.permissive })?;
    let stats = accumulate(reader.by_ref())?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    write_stats(stats, Some(reader.meta()), Some(reader.stats()), args.format, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Feeds every event to the statistics; the first read error stops (with `--permissive` the
/// reader only yields errors it cannot skip).
pub fn accumulate(
    events: impl IntoIterator<Item = Result<Event, ReadError>>,
) -> Result<ExitStats, ReadError> {
    let mut stats = ExitStats::new();
    for event in events {
        stats.push(&event?);
    }
    Ok(stats)
}

/// Finishes the statistics and writes the report; returns it for callers that want the data.
pub fn write_stats(
    stats: ExitStats,
    meta: Option<&TraceMeta>,
    read: Option<&ReadStats>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> anyhow::Result<StatsReport> {
    let report = stats.finish(meta, read);
    write_report(&report, format.into(), out).context("Cannot write the report")?;
    out.flush().context("Cannot write the report")?;
    Ok(report)
}
