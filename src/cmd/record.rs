//! `vmxray record`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use vmxray_record::{
    self as record, Backend, FlightOptions, OutputFormat, Profile, RecordOptions, RecordReport,
    Recorder, TriggerSpec,
};

/// Arguments of `vmxray record`.
#[derive(clap::Args)]
#[command(
    after_help = "The file is made consistent once a second: a recording killed with SIGKILL \
    keeps every event up to its last second (and leaves its tracefs instance, which the next \
    recording removes); SIGINT and SIGTERM stop it cleanly. Lost events are counted from the \
    pages and the per-CPU stats, stored in the file, and printed.\n\nExamples:\n  \
    vmxray record -o vm.dat --duration 10s\n  \
    vmxray record -o crash.dat --flight-recorder 4M --trigger shutdown --pid $(pidof qemu-system-x86_64)\n  \
    vmxray record -o run.dat -- ./my-vmm --kernel bzImage"
)]
pub struct Args {
    /// The file to write: trace.dat v7 (zstd), or perf.data when the name ends in .data (perf
    /// backend). Created with mode 0600.
    #[arg(short, long, default_value = "trace.dat")]
    pub output: PathBuf,
    /// How to record: tracefs (a private instance), perf (perf_event_open on each tracepoint;
    /// tracefs is only read), auto (tracefs, or perf when no tracefs instance can be created
    /// or written).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// The file format: by the output's name (.data: perf.data), or dat / perf explicitly.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub output_format: FormatArg,
    /// Event profile: exits (VM exits and their context), mmu (+ every kvmmmu event), all,
    /// vmcs (exits + probes recording VMCS field values).
    #[arg(long, value_enum, default_value_t = ProfileArg::Exits)]
    pub profile: ProfileArg,
    /// An extra event, SYS:EVENT (or SYS:* for a system). Repeatable.
    #[arg(short = 'e', long = "event", value_name = "SYS:EVENT")]
    pub events: Vec<String>,
    /// An instance filter, EVENT:EXPR or SYS:EVENT:EXPR (the kernel's filter syntax).
    #[arg(long, value_name = "EVENT:EXPR")]
    pub filter: Vec<String>,
    /// Stop after this long (10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Per-CPU kernel buffer size (4M, 512K).
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    pub buffer_size: u64,
    /// The trace clock. The default, mono, is one clock for every CPU, so per-CPU streams
    /// merge in order and stamps compare with CLOCK_MONOTONIC.
    #[arg(long, default_value = record::DEFAULT_CLOCK)]
    pub clock: String,
    /// Follow this process's threads (a VMM) and their future children. Repeatable.
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Keep only the newest SIZE of pages per CPU in memory; write when a trigger fires.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub flight_recorder: Option<u64>,
    /// What fires a flight-recorder dump: shutdown, internal-error, fail-entry, triple-fault,
    /// exit-reason=NAME, event=SYS:NAME. Repeatable.
    #[arg(long, value_name = "TRIGGER")]
    pub trigger: Vec<TriggerSpec>,
    /// Trace time kept after the trigger event.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub post_trigger: Duration,
    /// Dumps before the recording ends (re-armed after each; later dumps go to FILE.2, ...).
    #[arg(long, default_value_t = 1)]
    pub max_dumps: u32,
    /// Exit with status 1 when events were lost.
    #[arg(long)]
    pub warn_lost: bool,
    /// No progress line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Record while this command runs, then stop. The recording is kept whatever the command
    /// does; when it fails, `record` exits with the command's status (128 + the signal when
    /// a signal ended it), as `time` and `strace` do, so that a script notices.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `--backend` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BackendArg {
    /// tracefs, falling back to perf when tracefs cannot be used.
    Auto,
    /// A private tracefs instance.
    Tracefs,
    /// perf_event_open on each tracepoint.
    Perf,
}

impl BackendArg {
    /// The library's value.
    pub fn backend(self) -> Backend {
        match self {
            Self::Auto => Backend::Auto,
            Self::Tracefs => Backend::Tracefs,
            Self::Perf => Backend::Perf,
        }
    }
}

/// `--output-format` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// By the output's name.
    Auto,
    /// trace.dat v7.
    Dat,
    /// perf.data (perf backend).
    Perf,
}

impl FormatArg {
    /// The format for `output`.
    pub fn format(self, output: &std::path::Path) -> OutputFormat {
        match self {
            Self::Auto => OutputFormat::for_path(output),
            Self::Dat => OutputFormat::TraceDat,
            Self::Perf => OutputFormat::PerfData,
        }
    }
}

/// `--profile` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProfileArg {
    /// VM exits and what explains them.
    Exits,
    /// exits + every kvmmmu event.
    Mmu,
    /// Every kvm and kvmmmu event.
    All,
    /// exits + dynamic probes recording VMCS field values (nested CR3/EPTP loads, nested exits);
    /// needs kprobe or fprobe events and kvm_intel.
    Vmcs,
    /// exits + the host's scheduler, irq, softirq and hrtimer events, kvm_pio and kvm_mmio:
    /// where each exit's time went on the host (`vmxray stats`), perf's ioport/mmio tables.
    Context,
}

impl ProfileArg {
    /// The library's value.
    pub fn profile(self) -> Profile {
        match self {
            Self::Exits => Profile::Exits,
            Self::Mmu => Profile::Mmu,
            Self::All => Profile::All,
            Self::Vmcs => Profile::Vmcs,
            Self::Context => Profile::Context,
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    record::parse_duration(s)
        .ok_or_else(|| format!("expected a duration such as 10s or 500ms, got {s:?}"))
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    record::parse_size(s).ok_or_else(|| format!("expected a size such as 4M or 512K, got {s:?}"))
}

/// Runs `vmxray record`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let flight = match (args.flight_recorder, args.trigger.is_empty()) {
        (Some(size), false) => Some(FlightOptions {
            size,
            triggers: args.trigger.clone(),
            post_trigger: args.post_trigger,
            max_dumps: args.max_dumps.max(1),
        }),
        (Some(_), true) => bail!("--flight-recorder needs at least one --trigger"),
        (None, false) => bail!("--trigger needs --flight-recorder SIZE"),
        (None, true) => None,
    };
    let mut opts = RecordOptions::new(args.output.clone());
    opts.profile = args.profile.profile();
    opts.extra_events = args.events;
    opts.filters = args.filter;
    opts.buffer_size_kb = Some(args.buffer_size.div_ceil(1024));
    opts.clock = args.clock;
    opts.pids = args.pid;
    opts.flight = flight;
    opts.progress = !args.quiet;
    opts.handle_signals = true;
    opts.backend = args.backend.backend();
    opts.output_format = args.output_format.format(&args.output);

    let mut recorder = Recorder::start(opts).context("Cannot start recording")?;
    if let Some(why) = recorder.fallback() {
        eprintln!("vmxray record: tracefs cannot be used ({why}); recording with perf instead");
    }
    for missing in recorder.missing_events() {
        eprintln!("vmxray record: this kernel has no event {missing}; skipped");
    }
    let mut child = match args.command.split_first() {
        Some((program, rest)) => Some(
            Command::new(program)
                .args(rest)
                .spawn()
                .with_context(|| format!("Cannot run {program}"))?,
        ),
        None => None,
    };
    let mut child_status = None;
    recorder.wait(args.duration, || match &mut child {
        Some(c) => match c.try_wait() {
            Ok(Some(status)) => {
                child_status = Some(status);
                true
            }
            Ok(None) => false,
            Err(_) => true,
        },
        None => false,
    });
    let report = recorder.finish().context("Recording failed")?;
    print_report(&report);
    if let Some(status) = child_status
        && !status.success()
    {
        eprintln!("vmxray record: the command exited with {status}");
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    if args.warn_lost && report.lost_anything() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &RecordReport) {
    let unit = if r.backend == "perf" { "batches" } else { "pages" };
    eprintln!(
        "vmxray record: {} events in {:.1}s, {} {unit}, {:.2} MB raw -> {:.2} MB written (clock {}, backend {})",
        r.events_read(),
        r.elapsed.as_secs_f64(),
        r.cpus.iter().map(|c| c.pages_read).sum::<u64>(),
        r.raw_bytes as f64 / 1e6,
        r.file_bytes as f64 / 1e6,
        r.clock,
        r.backend
    );
    if r.descriptors > 0 {
        eprintln!("vmxray record: {} perf event descriptors, all closed", r.descriptors);
    }
    let events = r.events_read();
    if events > 0 {
        eprintln!(
            "vmxray record: recorder CPU {:.3}s = {:.3}s per million events ({:.2}% of a core at {:.0} events/s)",
            r.cpu_time.as_secs_f64(),
            r.cpu_time.as_secs_f64() * 1e6 / events as f64,
            100.0 * r.cpu_time.as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9),
            events as f64 / r.elapsed.as_secs_f64().max(1e-9),
        );
    }
    for t in &r.dead_triggers {
        eprintln!("vmxray record: trigger {t} can never fire here (its events are missing)");
    }
    if r.trigger_pages.1 > 0 {
        eprintln!(
            "vmxray record: trigger scan decoded {} of {} pages",
            r.trigger_pages.0, r.trigger_pages.1
        );
    }
    for f in &r.fired {
        eprintln!("vmxray record: trigger {} fired on {} at {}", f.trigger, f.event, f.ts);
    }
    if r.files.is_empty() {
        eprintln!("vmxray record: no trigger fired; nothing written");
    }
    for file in &r.files {
        eprintln!("vmxray record: wrote {}", file.display());
    }
    for c in &r.cpus {
        let lost = c.stats.lost();
        if (lost > 0 || c.lost_marks > 0) && r.backend == "perf" {
            eprintln!(
                "vmxray record: CPU {}: {} events lost in {} PERF_RECORD_LOST records",
                c.cpu, lost, c.lost_marks
            );
        } else if lost > 0 || c.lost_marks > 0 {
            eprintln!(
                "vmxray record: CPU {}: {} events lost (overrun {}, dropped {}), {} pages flagged",
                c.cpu, lost, c.stats.overrun, c.stats.dropped, c.lost_marks
            );
        }
    }
    if !r.lost_anything() {
        eprintln!("vmxray record: no events lost");
    }
}
