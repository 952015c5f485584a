//! `vmxray convert`: any input whose event formats are known → trace.dat v7 (zstd).

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use vmxray_capture::convert::{self, ConvertOptions, Method};

use super::input;

/// Arguments of `vmxray convert`.
#[derive(clap::Args)]
#[command(after_help = "trace.dat (v6, v7 none/zlib/zstd) and tracefs copies (a tree with \
    per_cpu/cpuN/trace_pipe_raw, or *.bin page dumps beside a tracefs/ tree) are copied page by \
    page with their own format files; perf.data tracepoint samples are packed into new pages. \
    Text (ftrace, trace-cmd report, perf script) has no format files and is refused: convert \
    the trace.dat or perf.data it came from.\n\nExamples:\n  \
    vmxray convert old-v6.dat -o new.dat\n  \
    vmxray convert perf.data -o trace.dat && trace-cmd report trace.dat")]
pub struct Args {
    /// The input (`-` for stdin): trace.dat, perf.data or a tracefs directory.
    pub input: PathBuf,
    /// The trace.dat to write (v7, zstd), mode 0600; replaced only once complete.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Leave out bad pages (perf.data: bad samples), count them and go on instead of stopping.
    #[arg(long)]
    pub permissive: bool,
}

/// Runs `vmxray convert`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = ConvertOptions { permissive: args.permissive, ..ConvertOptions::default() };
    let summary = convert::convert(&args.input, &args.output, &opts).with_context(|| {
        format!("Cannot convert {} to {}", args.input.display(), args.output.display())
    })?;
    let how = match summary.method {
        Method::PagesCopied => "pages copied",
        Method::PagesBuilt => "pages built from perf samples",
    };
    let pages: u64 = summary.written.pages.iter().sum();
    eprintln!(
        "{} -> {}: {} events, {pages} pages ({how}), {} bytes",
        summary.meta.input,
        args.output.display(),
        summary.stats.events,
        summary.written.file_bytes,
    );
    for name in &summary.dropped_buffers {
        eprintln!("{}: instance buffer {name:?} not converted", summary.meta.input);
    }
    if summary.comm_changes > 0 {
        eprintln!(
            "{}: {} comm changes during the capture; each pid keeps its last comm",
            summary.meta.input, summary.comm_changes
        );
    }
    input::write_read_summary(&mut io::stderr(), &summary.meta, &summary.stats)?;
    Ok(input::exit_status(&summary.stats, ExitCode::SUCCESS))
}
