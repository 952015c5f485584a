//! Opening a trace and reporting what reading it lost or skipped, shared by every command.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use vmxray_capture::{CountOnly, EventReader, ReadOptions, ReadStats, TraceMeta};

/// Opens `path` (`-` for stdin) with the format detected from its bytes.
pub fn open(path: &Path, permissive: bool) -> anyhow::Result<Box<dyn EventReader>> {
    open_counting(path, permissive, CountOnly::NONE)
}

/// [`open`] for a consumer that only counts the `count_only` events
/// ([`ReadOptions::count_only`]).
pub fn open_counting(
    path: &Path,
    permissive: bool,
    count_only: CountOnly,
) -> anyhow::Result<Box<dyn EventReader>> {
    vmxray_capture::open(path, ReadOptions { permissive, count_only })
        .with_context(|| format!("Cannot open {}", path.display()))
}

/// The exit status once a command's own work is done: like ripgrep, records skipped under
/// `--permissive` turn the status into 2 (input error) after all output was written, so a
/// script never mistakes a partial read for a clean one. Lost events are part of the trace,
/// reported but not an error.
pub fn exit_status(stats: &ReadStats, otherwise: ExitCode) -> ExitCode {
    if stats.skipped > 0 { ExitCode::from(super::EXIT_ERROR) } else { otherwise }
}

/// Writes the end-of-read summary: lost events per CPU, skipped records with their first
/// locations, events no format described, records of text cut short, lines of prose skipped and
/// the captures of an excerpt. Nothing is said when the read was clean and the input one complete trace.
pub fn write_read_summary(
    out: &mut impl Write,
    meta: &TraceMeta,
    stats: &ReadStats,
) -> std::io::Result<()> {
    if stats.non_trace_lines > 0 || stats.segments > 0 {
        writeln!(
            out,
            "{}: {}",
            meta.input,
            super::replay::trace_kind(meta.excerpt, stats.segments, stats.non_trace_lines, 0)
        )?;
    }
    if stats.is_clean() {
        return Ok(());
    }
    for (cpu, lost) in &stats.lost {
        let uncounted = if lost.uncounted_markers > 0 {
            format!(" (+{} losses of unknown size)", lost.uncounted_markers)
        } else {
            String::new()
        };
        writeln!(
            out,
            "{}: CPU {cpu}: {} events lost in {} gaps{uncounted}",
            meta.input, lost.events, lost.markers
        )?;
    }
    if stats.skipped > 0 {
        writeln!(out, "{}: {} bad records skipped (--permissive):", meta.input, stats.skipped)?;
        for problem in vmxray_analyze::problem_lines(&stats.problems) {
            writeln!(out, "  {problem}")?;
        }
        if stats.skipped > stats.problems.len() as u64 {
            writeln!(out, "  ... and {} more", stats.skipped - stats.problems.len() as u64)?;
        }
    }
    for (what, count) in &stats.unknown_events {
        writeln!(out, "{}: {count} records of unknown event {what} (no format)", meta.input)?;
    }
    if stats.truncated > 0 {
        writeln!(
            out,
            "{}: {} records lack fields every rendering of their event prints (cut short, \
             wrapped without their continuation, or trimmed): read with what they show, the \
             rest unknown:",
            meta.input, stats.truncated
        )?;
        for r in &stats.truncated_records {
            let at = if r.line > 0 { format!("line {}", r.line) } else { "a line".to_owned() };
            writeln!(out, "  {at}: {} without {}", r.event, r.missing)?;
        }
        let listed = stats.truncated_records.len() as u64;
        if stats.truncated > listed {
            writeln!(out, "  ... and {} more", stats.truncated - listed)?;
        }
    }
    Ok(())
}

/// Lists the lines skipped as no trace text, with their line numbers (`--show-skipped`).
pub fn write_non_trace_lines(
    out: &mut impl Write,
    meta: &TraceMeta,
    stats: &ReadStats,
) -> std::io::Result<()> {
    writeln!(out, "{}: {} non-trace lines skipped:", meta.input, stats.non_trace_lines)?;
    for line in &stats.non_trace {
        writeln!(out, "{:>6}: {}", line.line, line.text)?;
    }
    let listed = stats.non_trace.len() as u64;
    if stats.non_trace_lines > listed {
        writeln!(out, "  ... and {} more", stats.non_trace_lines - listed)?;
    }
    Ok(())
}
