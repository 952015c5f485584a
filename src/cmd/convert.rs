//! `vmxray convert`: any input whose event formats are known → trace.dat v7 (zstd).

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use vmxray_capture::write::convert::{self, ConvertOptions, Method};

use super::input;

/// Arguments of `vmxray convert`.
#[derive(clap::Args)]
#[command(after_help = "trace.dat (v6, v7 none/zlib/zstd) and tracefs copies (a tree with \
    per_cpu/cpuN/trace_pipe_raw, or *.bin page dumps beside a tracefs/ tree) are copied page by \
    page with their own format files; perf.data tracepoint samples are packed into new pages. \
    Text (ftrace, trace-cmd report, perf script, vmxray simulate) has no format files: convert \
    the trace.dat or perf.data it came from, or give --formats (a tracefs copy of the kernel's \
    events/) to encode its events field by field.\n\nExamples:\n  \
    vmxray convert old-v6.dat -o new.dat\n  \
    vmxray convert perf.data -o trace.dat && trace-cmd report trace.dat\n  \
    vmxray convert sim.txt --formats /sys/kernel/tracing -o sim.dat")]
pub struct Args {
    /// The input (`-` for stdin): trace.dat, perf.data or a tracefs directory.
    pub input: PathBuf,
    /// The trace.dat to write (v7, zstd), mode 0600; replaced only once complete.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Leave out bad pages (perf.data: bad samples), count them and go on instead of stopping.
    #[arg(long)]
    pub permissive: bool,
    /// For text input: a tracefs tree (root or `events/` directory) whose format files encode
    /// the events (fields the text lacks are written as 0 and reported).
    #[arg(long, value_name = "DIR")]
    pub formats: Option<PathBuf>,
}

/// Runs `vmxray convert`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = ConvertOptions {
        permissive: args.permissive,
        formats: args.formats,
        ..ConvertOptions::default()
    };
    let summary = convert::convert(&args.input, &args.output, &opts).with_context(|| {
        format!("Cannot convert {} to {}", args.input.display(), args.output.display())
    })?;
    let how = match summary.method {
        Method::PagesCopied => "pages copied",
        Method::PagesBuilt => "pages built from perf samples",
        Method::RecordsEncoded => "records encoded from fields with the given formats",
    };
    let pages: u64 = summary.written.pages.iter().sum();
    eprintln!(
        "{} -> {}: {} events, {pages} pages ({how}), {} bytes",
        summary.meta.input,
        args.output.display(),
        summary.stats.events,
        summary.written.file_bytes,
    );
    for what in &summary.not_converted {
        eprintln!("{}: not converted: {what}", summary.meta.input);
    }
    if summary.comm_changes > 0 {
        eprintln!(
            "{}: {} comm changes during the capture; each pid keeps its last comm",
            summary.meta.input, summary.comm_changes
        );
    }
    for (field, count) in &summary.fields_zeroed {
        eprintln!(
            "{}: {field} not in the input, written as 0 in {count} events",
            summary.meta.input
        );
    }
    if !summary.fields_zeroed.is_empty() {
        eprintln!(
            "{}: the output states those zeros as values: replaying it is not replaying the text",
            summary.meta.input
        );
    }
    input::write_read_summary(&mut io::stderr(), &summary.meta, &summary.stats)?;
    Ok(input::exit_status(&summary.stats, ExitCode::SUCCESS))
}
