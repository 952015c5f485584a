//! `vmxray top`: the live view of a running host (or `--pid`), or one line per interval
//! (`--batch`, like `kvm_stat -l`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vmxray_analyze::live::{BATCH_HEADER, LiveConfig, LiveStats, StuckConfig, batch_line};
use vmxray_analyze::pass::{Pass, PassConfig, StatsMode};
use vmxray_events::Event;
use vmxray_record::live::{LiveCapture, LiveOptions};
use vmxray_record::{Backend, RecordOptions, SignalGuard, process_cpu_time};
use vmxray_tui::live::{Feed, TopConfig};

use super::record::{BackendArg, ProfileArg, parse_duration, parse_size};

/// Arguments of `vmxray top`.
#[derive(clap::Args)]
#[command(
    after_help = "Views (Tab, 1-5): Exits (kvm_exit reasons, L1/L2), vCPUs (VMs and vCPUs), \
    Latency (exit→entry percentiles over --window), Anomalies (the replay model's, as they \
    happen, and stuck vCPUs), Events (every event name; userspace exits). Keys: j/k scroll, \
    w writes the last --dump-last of trace to DIR/vmxray-top-<time>.dat (for vmxray tui and \
    triage), p pauses the display, ? help, q quits.\n\nExamples:\n  \
    vmxray top\n  vmxray top --pid $(pidof qemu-system-x86_64) --backend perf\n  \
    vmxray top --batch --interval 2s --count 30 >> kvm.log"
)]
pub struct Args {
    /// How to record: tracefs, perf, or auto (tracefs, else perf).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Follow this process's threads (a VMM) and their future children. Repeatable.
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Event profile (as `vmxray record`).
    #[arg(long, value_enum, default_value_t = ProfileArg::Exits)]
    pub profile: ProfileArg,
    /// An extra event, SYS:EVENT (or SYS:*). Repeatable.
    #[arg(short = 'e', long = "event", value_name = "SYS:EVENT")]
    pub events: Vec<String>,
    /// A filter, EVENT:EXPR or SYS:EVENT:EXPR (the kernel's filter syntax).
    #[arg(long, value_name = "EVENT:EXPR")]
    pub filter: Vec<String>,
    /// The refresh interval: rates are per interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// The latency percentiles' sliding window.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub window: Duration,
    /// How much trace `w` (or --dump-at-exit) writes.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub dump_last: Duration,
    /// Where dumps go.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dump_dir: PathBuf,
    /// Per-CPU kernel buffer size.
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    pub buffer_size: u64,
    /// A stuck vCPU: at least this many exits per second ...
    #[arg(long, default_value_t = 200)]
    pub stuck_min: usize,
    /// ... with at most this many distinct ones (same reason, RIP, address, value).
    #[arg(long, default_value_t = 2)]
    pub stuck_distinct: usize,
    /// Print one line per interval instead of the screen (like `kvm_stat -l`).
    #[arg(long)]
    pub batch: bool,
    /// With --batch: one JSON object per interval (the snapshot) instead of a text line.
    #[arg(long, requires = "batch")]
    pub json: bool,
    /// With --batch: stop after this many intervals.
    #[arg(long, requires = "batch")]
    pub count: Option<u64>,
    /// With --batch: write the last --dump-last to a trace.dat when stopping.
    #[arg(long, requires = "batch")]
    pub dump_at_exit: bool,
}

/// The binary's adapter of a live capture to the TUI's feed.
struct CaptureFeed {
    capture: LiveCapture,
    describe: String,
    dump_dir: PathBuf,
}

impl CaptureFeed {
    fn dump_path(&self) -> PathBuf {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.dump_dir.join(format!("vmxray-top-{now}.dat"))
    }
}

impl Feed for CaptureFeed {
    fn poll(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for mut batch in self.capture.drain() {
            out.append(&mut batch.events);
            self.capture.recycle(batch.events);
        }
        out
    }

    fn recycle(&mut self, events: Vec<Event>) {
        self.capture.recycle(events);
    }

    fn dump(&mut self, last: Duration) -> Result<String, String> {
        let path = self.dump_path();
        match self.capture.dump(&path, last) {
            Ok(r) => Ok(format!(
                "wrote {} ({:.1}s of trace, {} pages, {:.1} KB): vmxray tui {0}",
                r.path.display(),
                r.span.1.saturating_sub(r.span.0) as f64 / 1e9,
                r.summary.pages.iter().sum::<u64>(),
                r.summary.file_bytes as f64 / 1e3
            )),
            Err(e) => Err(vmxray_analyze::error_chain(&e)),
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn ended(&self) -> bool {
        self.capture.ended()
    }
}

/// Runs `vmxray top`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.dump_dir.is_dir() {
        bail!("No directory {} for the dumps", args.dump_dir.display());
    }
    if !args.batch && !std::io::stdout().is_terminal() {
        bail!("The live view needs a terminal on stdout (use --batch for one line per interval)");
    }
    let mut record = RecordOptions::new(PathBuf::new());
    record.backend = args.backend.backend();
    record.profile = args.profile.profile();
    record.extra_events = args.events.clone();
    record.filters = args.filter.clone();
    record.pids = args.pid.clone();
    record.buffer_size_kb = Some(args.buffer_size.div_ceil(1024));
    let keep = args.dump_last.max(args.window);
    // Not fatal: huge pages only cost time (see the function).
    let _ = vmxray_record::live::prefer_small_pages();
    let signals = SignalGuard::install(args.batch).context("Cannot install signal handlers")?;
    let capture =
        LiveCapture::start(&LiveOptions { record, keep }).context("Cannot start the capture")?;
    if let Some(why) = capture.fallback() {
        eprintln!("vmxray top: tracefs cannot be used ({why}); recording with perf instead");
    }
    for missing in capture.missing_events() {
        eprintln!("vmxray top: this kernel has no event {missing}; skipped");
    }
    let backend = match capture.backend() {
        Backend::Perf => "perf",
        Backend::Tracefs | Backend::Auto => "tracefs",
    };
    let target = if args.pid.is_empty() {
        "host".to_owned()
    } else {
        format!("pid {}", args.pid.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
    };
    let describe = format!("{target} · {backend} · {} events", capture.events().len());
    let live = LiveConfig {
        window: args.window,
        stuck: StuckConfig {
            min_events: args.stuck_min,
            max_distinct: args.stuck_distinct,
            ..StuckConfig::default()
        },
        ..LiveConfig::default()
    };
    let feed = CaptureFeed { capture, describe, dump_dir: args.dump_dir.clone() };
    if args.batch {
        return batch(feed, &args, live, &signals);
    }
    let config = TopConfig { interval: args.interval, live, dump_last: args.dump_last };
    vmxray_tui::live::run(feed, config).context("Terminal error")?;
    Ok(ExitCode::SUCCESS)
}

/// `--batch`: one line (or JSON object) per interval on stdout; the recorder's own CPU time
/// at the end on stderr.
fn batch(
    mut feed: CaptureFeed,
    args: &Args,
    live: LiveConfig,
    signals: &SignalGuard,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let cpu_at_start = process_cpu_time();
    let mut pass = Pass::new(PassConfig { stats: StatsMode::Off, ..PassConfig::default() });
    let mut stats = LiveStats::new(live);
    let mut out = std::io::stdout().lock();
    eprintln!("vmxray top: {} (interval {:.1}s)", feed.describe, args.interval.as_secs_f64());
    if !args.json {
        writeln!(out, "{BATCH_HEADER}")?;
    }
    let mut lines = 0u64;
    let mut events = 0u64;
    let mut last = Instant::now();
    while args.count.is_none_or(|n| lines < n) && !signals.interrupted() && !feed.ended() {
        let deadline = last + args.interval;
        while Instant::now() < deadline && !signals.interrupted() {
            // Batches come every 100 ms at most; the cap bounds how late a signal is seen.
            let wait =
                deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
            if let Some(batch) = feed.capture.recv(wait) {
                events += batch.events.len() as u64;
                for e in &batch.events {
                    let _ = pass.step(e, &mut stats);
                }
                feed.capture.recycle(batch.events);
            }
        }
        let elapsed = last.elapsed();
        last = Instant::now();
        let snap = stats.tick(elapsed, pass.model());
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&snap)?)?;
        } else {
            writeln!(out, "{}", batch_line(&snap))?;
        }
        out.flush()?;
        lines += 1;
    }
    if args.dump_at_exit {
        match feed.dump(args.dump_last) {
            Ok(msg) => eprintln!("vmxray top: {msg}"),
            Err(e) => eprintln!("vmxray top: dump failed: {e}"),
        }
    }
    let cpu = process_cpu_time().saturating_sub(cpu_at_start);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let rate = events as f64 / secs;
    eprintln!(
        "vmxray top: {events} events in {secs:.1}s ({rate:.0}/s); CPU {:.3}s = {:.2}% of a core{}",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / secs,
        if rate > 0.0 {
            format!(
                " = {:.2}% of a core per 100k events/s",
                100.0 * cpu.as_secs_f64() / secs / (rate / 100_000.0)
            )
        } else {
            String::new()
        }
    );
    feed.capture.finish().context("Cannot stop the capture")?;
    Ok(ExitCode::SUCCESS)
}
