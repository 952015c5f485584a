#![cfg(target_os = "linux")]
//! `vmxray record`: capture KVM tracepoints from a private tracefs instance into trace.dat v7.
//!
//! ```text
//!   tracefs instances/vmxray-<pid>          one thread per CPU              consumer thread
//!   per_cpu/cpu0/trace_pipe_raw ──read(page)──▶ reader 0 ──┐
//!   per_cpu/cpu1/trace_pipe_raw ──read(page)──▶ reader 1 ──┼─▶ (cpu, page) ─▶ stream: TraceDatWriter
//!   ...                                                    ┘                 (chunks, checkpoint 1/s)
//!                                                                            flight: per-CPU page rings,
//!                                                                            trigger scan, dumps
//! ```
//!
//! Readers do page-sized non-blocking reads and hand whole pages over; they never look inside
//! a page. The consumer reads each page's header (lost-event flags), compresses and writes; in
//! flight-recorder mode it keeps the newest pages per CPU and scans only the pages that can hold
//! a trigger ([`trigger::Detector`]).
//!
//! **Clock.** The default is `mono`: one clock for all CPUs (the kernel's NMI-safe fast
//! monotonic clock), so per-CPU streams merge into one correctly ordered stream and stamps
//! compare with `CLOCK_MONOTONIC` in user space (VMM logs). `local`, the kernel's default, is
//! per-CPU and may disagree across CPUs by more than the gap between a vCPU's events on two
//! CPUs after a migration; `global` is ordered too but serializes every event on one
//! cache line. The clock is stored in the file (TRACECLOCK option and the BUFFER option).
//!
//! **Cleanup.** Nothing global is changed: events, filters, clock, buffer size and the pid
//! filter live in the instance, which [`TracefsRecorder::finish`], its `Drop` (errors,
//! panics) and SIGINT/SIGTERM (a flag the wait loop polls) all remove. A recording killed with
//! SIGKILL cannot clean up: a watcher process ([`reaper`]) removes its instance within 200 ms,
//! and the next recording removes instances whose process is gone in case the watcher could
//! not run.
//!
//! **Backends.** The diagram is the tracefs backend ([`TracefsRecorder`]). The [`perf`]
//! backend records the same events through `perf_event_open` (for hosts where tracefs is
//! read-only) into perf.data or trace.dat; [`Recorder`] runs either, and `Backend::Auto`
//! falls back to perf when no tracefs instance can be created or written. [`live`] feeds
//! `vmxray top` from either backend.

pub mod backend;
pub mod identity;
pub mod live;
pub mod perf;
pub mod pool;
pub mod probes;
pub mod reaper;
pub mod tracefs;
pub mod trigger;

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use vmxray_capture::bin::Endian;
use vmxray_capture::bin::format::{EventFormats, FormatError, PageLayout};
use vmxray_capture::bin::page::PageHeader;
use vmxray_capture::write::{Metadata, TraceDatWriter, WriteError, WriteSummary, WriterOptions};

pub use backend::{Backend, OutputFormat, Recorder};
pub use tracefs::{CpuStats, Instance, Tracefs};
pub use trigger::{Detector, Fired, TriggerParseError, TriggerSpec};

/// Which events to record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// VM exits and what explains them (default).
    #[default]
    Exits,
    /// `exits` plus every `kvmmmu` event.
    Mmu,
    /// Every `kvm` and `kvmmmu` event.
    All,
    /// `exits` plus dynamic probes on KVM's nested CR3/EPTP/exit paths that record VMCS field
    /// values (see [`crate::probes`]); fails on a kernel without dynamic probe events.
    Vmcs,
    /// `exits` plus what the host did meanwhile ([`CONTEXT_EVENTS`]): the scheduler,
    /// interrupt, softirq and timer events that `vmxray stats` attributes each exit's time to,
    /// and `kvm_pio`/`kvm_mmio` for perf's ioport and mmio tables.
    Context,
}

/// The `context` profile's events beside `exits` (`sched_stat_*` exist only with
/// `CONFIG_SCHEDSTATS` and fire only with `kernel.sched_schedstats=1`; a kernel without them
/// reports them missing).
pub const CONTEXT_EVENTS: &[(&str, &str)] = &[
    ("sched", "sched_switch"),
    ("sched", "sched_wakeup"),
    ("sched", "sched_wakeup_new"),
    ("sched", "sched_stat_wait"),
    ("sched", "sched_stat_sleep"),
    ("sched", "sched_stat_iowait"),
    ("sched", "sched_stat_blocked"),
    ("irq", "irq_handler_entry"),
    ("irq", "irq_handler_exit"),
    ("irq", "softirq_entry"),
    ("irq", "softirq_exit"),
    ("timer", "hrtimer_expire_entry"),
    ("timer", "hrtimer_expire_exit"),
    ("kvm", "kvm_pio"),
    ("kvm", "kvm_mmio"),
];

/// The `exits` profile's events.
pub const EXITS_EVENTS: &[(&str, &str)] = &[
    ("kvm", "kvm_exit"),
    ("kvm", "kvm_entry"),
    ("kvm", "kvm_cr"),
    ("kvm", "kvm_nested_vmenter"),
    ("kvm", "kvm_nested_vmrun"),
    ("kvm", "kvm_nested_vmexit"),
    ("kvm", "kvm_nested_vmexit_inject"),
    ("kvm", "kvm_nested_vmenter_failed"),
    ("kvm", "kvm_nested_intr_vmexit"),
    ("kvm", "kvm_inj_exception"),
    ("kvm", "kvm_inj_virq"),
    ("kvm", "kvm_page_fault"),
    ("kvm", "kvm_userspace_exit"),
    ("kvm", "kvm_smm_transition"),
    ("kvmmmu", "kvm_mmu_get_page"),
    ("kvmmmu", "kvm_mmu_prepare_zap_page"),
];

impl Profile {
    /// `(system, event)` pairs; `event` `None` means the whole system.
    pub fn events(self) -> Vec<(String, Option<String>)> {
        let list = |l: &[(&str, &str)]| {
            l.iter().map(|(s, e)| ((*s).to_string(), Some((*e).to_string()))).collect::<Vec<_>>()
        };
        match self {
            // The vmcs probes' group is added by `Recorder::start` once they are defined.
            Self::Exits | Self::Vmcs => list(EXITS_EVENTS),
            Self::Mmu => {
                let mut v = list(EXITS_EVENTS);
                v.push(("kvmmmu".into(), None));
                v
            }
            Self::All => vec![("kvm".into(), None), ("kvmmmu".into(), None)],
            Self::Context => {
                let mut v = list(EXITS_EVENTS);
                v.extend(list(CONTEXT_EVENTS));
                // Every system vector's entry and exit (local_timer, reschedule, ...).
                v.push(("irq_vectors".into(), None));
                v
            }
        }
    }
}

/// Flight-recorder mode.
#[derive(Clone, Debug)]
pub struct FlightOptions {
    /// Bytes of the newest pages kept per CPU.
    pub size: u64,
    /// What fires a dump.
    pub triggers: Vec<TriggerSpec>,
    /// Trace time kept after the trigger event.
    pub post_trigger: Duration,
    /// Dumps before the recording ends (the recorder re-arms after each dump).
    pub max_dumps: u32,
}

/// How to record.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The trace.dat to write (flight dumps after the first get `.2`, `.3`, ... appended).
    pub output: PathBuf,
    /// The event profile.
    pub profile: Profile,
    /// Extra events, `SYS:EVENT` (`SYS:*` for a whole system).
    pub extra_events: Vec<String>,
    /// Instance filters, `EVENT:EXPR` or `SYS:EVENT:EXPR`.
    pub filters: Vec<String>,
    /// Per-CPU kernel buffer size in KiB (`buffer_size_kb`); `None` keeps the instance default.
    pub buffer_size_kb: Option<u64>,
    /// The trace clock.
    pub clock: String,
    /// Only events of these processes' threads (and their future children).
    pub pids: Vec<u32>,
    /// Only events of exactly these threads (kernel tids) and their future children.
    pub threads: Vec<u32>,
    /// Flight-recorder mode.
    pub flight: Option<FlightOptions>,
    /// Print a progress line on stderr once a second (only when stderr is a terminal).
    pub progress: bool,
    /// Stop on SIGINT/SIGTERM instead of dying (the CLI; not for in-process use in tests).
    pub handle_signals: bool,
    /// How often the written file is made consistent (see [`vmxray_capture::write`]).
    pub checkpoint_every: Duration,
    /// The writer's options.
    pub writer: WriterOptions,
    /// Write which VM each VMM thread belongs to into the recording ([`identity`]), and record
    /// `task:task_newtask` so that threads created meanwhile are known too: on by default, so
    /// that a host's VMs stay apart in trace.dat, which carries no tgid.
    pub identity: bool,
    /// Which kernel interface records ([`Backend::Tracefs`] unless set).
    pub backend: Backend,
    /// The file format written (the perf backend writes both; tracefs writes trace.dat).
    pub output_format: OutputFormat,
}

impl RecordOptions {
    /// Defaults: the `exits` profile, the `mono` clock, no filter, stream mode.
    pub fn new(output: PathBuf) -> Self {
        Self {
            output,
            profile: Profile::Exits,
            extra_events: Vec::new(),
            filters: Vec::new(),
            buffer_size_kb: Some(DEFAULT_BUFFER_KB),
            clock: DEFAULT_CLOCK.into(),
            pids: Vec::new(),
            threads: Vec::new(),
            flight: None,
            progress: false,
            handle_signals: false,
            checkpoint_every: Duration::from_secs(1),
            writer: WriterOptions::default(),
            identity: true,
            backend: Backend::Tracefs,
            output_format: OutputFormat::TraceDat,
        }
    }
}

/// tracefs pages are in the byte order of the kernel, which is ours.
const NATIVE: Endian = if cfg!(target_endian = "big") { Endian::Big } else { Endian::Little };

/// The default clock (see the module documentation).
pub const DEFAULT_CLOCK: &str = "mono";
/// The default per-CPU kernel buffer (KiB): room for ~0.25 s of 500k events/s per CPU.
pub const DEFAULT_BUFFER_KB: u64 = 4096;

/// Recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// tracefs cannot be used.
    #[error("No tracefs: {reason}")]
    NoTracefs {
        /// Why.
        reason: &'static str,
    },
    /// Mounting tracefs failed.
    #[error("Cannot mount tracefs at {path}")]
    Mount {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A tracefs file could not be read or written.
    #[error("Cannot access {path}")]
    Tracefs {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The instance could not be created or removed.
    #[error("Cannot create or remove the tracefs instance {path}")]
    Instance {
        /// The instance directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The clock is not one this kernel offers.
    #[error("Unknown trace clock {clock:?}; this kernel offers: {available}")]
    Clock {
        /// The requested clock.
        clock: String,
        /// The `trace_clock` file.
        available: String,
    },
    /// `-e` was not `SYS:EVENT`.
    #[error("Expected SYS:EVENT (or SYS:*), got {0:?}")]
    EventSyntax(String),
    /// `--filter` was not `EVENT:EXPR`.
    #[error("Expected EVENT:EXPR or SYS:EVENT:EXPR, got {0:?}")]
    FilterSyntax(String),
    /// The filter names an event that is not recorded.
    #[error("Filter for {0}, which is not recorded")]
    FilterEvent(String),
    /// The kernel refused the filter.
    #[error("The kernel refused the filter {expr:?} for {event}")]
    Filter {
        /// The event.
        event: String,
        /// The expression.
        expr: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The output's directory does not exist.
    #[error("No directory {0} for the output")]
    OutputDir(PathBuf),
    /// `--pid` names no running process.
    #[error("No process {0}")]
    NoProcess(u32),
    /// None of the selected events exists.
    #[error("None of the selected events exists on this kernel (is the kvm module loaded?)")]
    NoEvents,
    /// A flight recorder without a trigger that can fire.
    #[error("No trigger can fire: this kernel lacks the events of {0}")]
    DeadTriggers(String),
    /// Reading a CPU's buffer failed.
    #[error("Cannot read the ring buffer of CPU {cpu}")]
    Read {
        /// The CPU.
        cpu: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A reader thread panicked.
    #[error("The reader of CPU {cpu} panicked")]
    ReaderPanicked {
        /// The CPU.
        cpu: u32,
    },
    /// The writer thread panicked.
    #[error("The writer thread panicked")]
    WriterPanicked,
    /// A thread could not be started.
    #[error("Cannot start a thread")]
    Thread(#[source] io::Error),
    /// Signal handlers could not be installed.
    #[error("Cannot install the SIGINT/SIGTERM handlers")]
    Signals(#[source] io::Error),
    /// A format file of this kernel did not parse.
    #[error("Cannot parse {path}")]
    Format {
        /// The format file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// Writing the trace failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The `vmcs` profile's probes.
    #[error(transparent)]
    Probes(#[from] crate::probes::ProbeError),
    /// The perf backend could not open or map its events.
    #[error(transparent)]
    Perf(crate::perf::sys::OpenError),
    /// The perf backend cannot write this combination.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl RecordError {
    /// True when the error says tracefs cannot be used for recording here (not mounted, not
    /// writable, no instance can be made): `--backend auto` then records with perf.
    pub fn tracefs_unusable(&self) -> bool {
        matches!(
            self,
            Self::NoTracefs { .. }
                | Self::Mount { .. }
                | Self::Instance { .. }
                | Self::Tracefs { .. }
        )
    }
}

/// Lost events on one CPU, as the pages and the stats file say.
#[derive(Clone, Debug, Default)]
pub struct CpuReport {
    /// The CPU.
    pub cpu: u32,
    /// Pages read from the kernel.
    pub pages_read: u64,
    /// Pages flagged `RB_MISSED_EVENTS`.
    pub lost_marks: u64,
    /// Events counted by those flags (when stored).
    pub lost_in_pages: u64,
    /// The `stats` file at the end.
    pub stats: CpuStats,
}

/// What a recording did.
#[derive(Clone, Debug, Default)]
pub struct RecordReport {
    /// The files written (none for a flight recorder whose trigger never fired).
    pub files: Vec<PathBuf>,
    /// The backend that recorded (`tracefs` or `perf`).
    pub backend: &'static str,
    /// The instance used (tracefs).
    pub instance: String,
    /// perf event descriptors held while recording (perf).
    pub descriptors: usize,
    /// The clock.
    pub clock: String,
    /// Events enabled (`sys:event`).
    pub events: Vec<String>,
    /// Selected events this kernel lacks (skipped).
    pub missing_events: Vec<String>,
    /// Triggers this kernel cannot fire (their events are missing).
    pub dead_triggers: Vec<TriggerSpec>,
    /// Triggers that fired, in order.
    pub fired: Vec<Fired>,
    /// Per-CPU figures.
    pub cpus: Vec<CpuReport>,
    /// Uncompressed bytes of CPU data written.
    pub raw_bytes: u64,
    /// Bytes written to files.
    pub file_bytes: u64,
    /// Wall time recorded.
    pub elapsed: Duration,
    /// CPU time this process used while recording (all its threads: the recorder's readers and
    /// writer, plus anything else the process ran meanwhile, e.g. an in-process lab guest).
    pub cpu_time: Duration,
    /// Pages the flight recorder's trigger scan walked / saw.
    pub trigger_pages: (u64, u64),
    /// Instances of killed recordings removed at start.
    pub stale_instances_removed: Vec<String>,
}

impl RecordReport {
    /// Events the kernel lost (from the stats files: overrun + dropped + commit overrun).
    pub fn lost_events(&self) -> u64 {
        self.cpus.iter().map(|c| c.stats.lost()).sum()
    }

    /// Events read out of the kernel buffers (`read events` in the stats files).
    pub fn events_read(&self) -> u64 {
        self.cpus.iter().map(|c| c.stats.read).sum()
    }

    /// True when pages were flagged or the stats count lost events.
    pub fn lost_anything(&self) -> bool {
        self.lost_events() > 0 || self.cpus.iter().any(|c| c.lost_marks > 0)
    }
}

/// Counters shared between the threads (progress line, report).
#[derive(Debug, Default)]
struct Shared {
    file_bytes: AtomicU64,
    flight_done: AtomicBool,
}

type Page = (u32, Vec<u8>);

/// A running tracefs recording: tracing is live between [`TracefsRecorder::start`] and
/// [`TracefsRecorder::finish`]. [`Recorder`] picks the backend.
pub struct TracefsRecorder {
    opts: RecordOptions,
    instance: Option<Instance>,
    /// The `vmcs` profile's probes: after `instance`, so they are removed once the instance
    /// that enabled them is gone (an enabled dynamic event cannot be removed).
    probes: Option<crate::probes::InstalledProbes>,
    /// Removes the instance if this process is killed (after `instance`: stopped once the
    /// instance is gone).
    reaper: Option<reaper::Reaper>,
    readers: Vec<(u32, JoinHandle<Result<u64, RecordError>>)>,
    consumer: Option<JoinHandle<Result<ConsumerOut, RecordError>>>,
    stop_readers: Arc<AtomicBool>,
    shared: Arc<Shared>,
    started: Instant,
    cpu_at_start: Duration,
    report: RecordReport,
    /// Writes the VMM threads' identity lines while tracing is on.
    identity: Option<identity::Writer>,
    /// Declared last: dropped after the instance, so signals stay caught during cleanup.
    signals: SignalGuard,
}

/// While it lives (and when asked to), SIGINT and SIGTERM set a flag instead of killing the
/// process, so that every exit path goes through the instance's removal (`vmxray top --batch`
/// uses it too).
pub struct SignalGuard {
    interrupted: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl SignalGuard {
    /// Catches SIGINT and SIGTERM until dropped (`enabled` false: a guard that catches nothing).
    pub fn install(enabled: bool) -> Result<Self, RecordError> {
        let mut guard = Self { interrupted: Arc::new(AtomicBool::new(false)), ids: Vec::new() };
        if enabled {
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let id = signal_hook::flag::register(sig, Arc::clone(&guard.interrupted))
                    .map_err(RecordError::Signals)?;
                guard.ids.push(id);
            }
        }
        Ok(guard)
    }

    /// True once SIGINT or SIGTERM arrived.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// CPU time used by this process so far (every thread).
pub fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

impl TracefsRecorder {
    /// Sets up the instance, starts one reader per CPU and the writer, and turns tracing on.
    pub fn start(mut opts: RecordOptions) -> Result<Self, RecordError> {
        // First: a signal during setup must not skip the cleanup either.
        let signals = SignalGuard::install(opts.handle_signals)?;
        // A flight recorder creates its file only when the trigger fires: check now that it can.
        if let Some(dir) = opts.output.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(RecordError::OutputDir(dir.to_path_buf()));
        }
        let tracefs = Tracefs::find_or_mount()?;
        let stale = tracefs.remove_stale_instances();
        // Dynamic events are global: define them before the instance (declared first, they
        // are dropped after it on an early return) and enable them only inside it.
        let probes = match opts.profile {
            Profile::Vmcs => Some(vmcs_probes(&tracefs)?),
            Profile::Exits | Profile::Mmu | Profile::All | Profile::Context => None,
        };
        if let Some(p) = &probes {
            opts.extra_events.push(format!("{}:*", p.group));
        }
        let instance = Instance::create(&tracefs)?;
        let reaper = reaper::Reaper::spawn(instance.dir());
        let mut report = RecordReport {
            instance: instance.name().to_string(),
            backend: "tracefs",
            stale_instances_removed: stale,
            ..RecordReport::default()
        };

        // Clock.
        let available = instance.read("trace_clock")?;
        let offered =
            available.split_whitespace().any(|c| c.trim_matches(['[', ']']) == opts.clock);
        if !offered {
            let available = available.trim().to_string();
            return Err(RecordError::Clock { clock: opts.clock.clone(), available });
        }
        instance.write("trace_clock", &opts.clock)?;
        report.clock = opts.clock.clone();
        if let Some(kb) = opts.buffer_size_kb {
            instance.write("buffer_size_kb", &kb.to_string())?;
        }

        let enabled = select_events(&instance.dir().join("events"), "enable", &opts, &mut report)?;
        if let Some(p) = &probes {
            // The profile must not silently record less than it promises.
            let absent: Vec<String> = p
                .probes()
                .iter()
                .filter(|d| !enabled.iter().any(|(s, e)| *s == p.group && *e == d.event))
                .map(|d| format!("the probe event {}:{} in the instance", p.group, d.event))
                .collect();
            if !absent.is_empty() {
                return Err(crate::probes::ProbeError::Unsupported { missing: absent }.into());
            }
        }
        apply_filters(&instance, &opts.filters, &enabled)?;
        apply_task_filter(&instance, &opts)?;

        // Metadata for the file and for the trigger scan.
        let meta = read_metadata(&instance, &enabled)?;
        let layout = PageLayout::parse(&meta.header_page, Some(&meta.header_event), NATIVE)
            .map_err(|source| RecordError::Format {
                path: instance.dir().join("events/header_page"),
                source,
            })?;

        for (sys, ev) in &enabled {
            instance.write(&format!("events/{sys}/{ev}/enable"), "1")?;
        }
        report.events = enabled.iter().map(|(s, e)| format!("{s}:{e}")).collect();

        let mode = match &opts.flight {
            None => {
                let writer = TraceDatWriter::create(&opts.output, meta, opts.writer)?;
                report.files.push(opts.output.clone());
                Mode::Stream { writer: Box::new(writer), last_checkpoint: Instant::now() }
            }
            Some(flight) => {
                let stats_dir = Some(instance.dir().to_path_buf());
                let flight = Flight::new(
                    flight,
                    &opts,
                    meta,
                    layout,
                    instance.dir(),
                    stats_dir,
                    &mut report,
                )?;
                Mode::Flight(Box::new(flight))
            }
        };

        let cpus = tracefs::tracefs_cpus(&instance);
        let page_size = mode.page_size();
        let shared = Arc::new(Shared::default());
        let stop_readers = Arc::new(AtomicBool::new(false));
        // Bounded: a stalled writer makes the readers wait, so the kernel's buffer (not our
        // memory) absorbs the burst, and losses show up in the stats.
        let (tx, rx) = mpsc::sync_channel::<Page>(1024);
        let mut recorder = Self {
            opts,
            instance: Some(instance),
            probes,
            reaper: Some(reaper),
            readers: Vec::new(),
            consumer: None,
            stop_readers: Arc::clone(&stop_readers),
            shared: Arc::clone(&shared),
            started: Instant::now(),
            cpu_at_start: process_cpu_time(),
            report,
            identity: None,
            signals,
        };
        let dir = recorder.instance.as_ref().map(|i| i.dir().to_path_buf()).unwrap_or_default();
        for &cpu in &cpus {
            let path = dir.join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"));
            let tx = tx.clone();
            let stop = Arc::clone(&stop_readers);
            let handle = std::thread::Builder::new()
                .name(format!("vmxray-cpu{cpu}"))
                .spawn(move || read_cpu(cpu, &path, page_size, &tx, &stop))
                .map_err(RecordError::Thread)?;
            recorder.readers.push((cpu, handle));
        }
        drop(tx);
        let checkpoint_every = recorder.opts.checkpoint_every;
        let tracefs_root = recorder.instance.as_ref().map(|i| i.tracefs().clone());
        let handle = std::thread::Builder::new()
            .name("vmxray-writer".into())
            .spawn(move || consume(mode, &rx, &shared, checkpoint_every, tracefs_root))
            .map_err(RecordError::Thread)?;
        recorder.consumer = Some(handle);
        if let Some(instance) = &recorder.instance {
            instance.write("tracing_on", "1")?;
            if recorder.opts.identity {
                // trace_marker takes writes only while tracing is on.
                let marker = instance.dir().join("trace_marker");
                let only = recorder.opts.pids.clone();
                let repeat = recorder.opts.flight.is_some();
                recorder.identity = identity::Writer::start(marker, only, repeat).ok();
            }
        }
        recorder.started = Instant::now();
        Ok(recorder)
    }

    /// The instance's name.
    pub fn instance_name(&self) -> &str {
        &self.report.instance
    }

    /// Selected events this kernel lacks.
    pub fn missing_events(&self) -> &[String] {
        &self.report.missing_events
    }

    /// True once SIGINT/SIGTERM arrived (with `handle_signals`), the flight recorder wrote its
    /// last dump, or a reader thread ended early (an error, or a panic).
    pub fn should_stop(&self) -> bool {
        self.signals.interrupted()
            || self.shared.flight_done.load(Ordering::Relaxed)
            || self.readers.iter().any(|(_, h)| h.is_finished())
            || self.consumer.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Waits until `done()` is true, `duration` has passed, or [`Self::should_stop`]; prints the
    /// progress line meanwhile when asked to.
    pub fn wait(&mut self, duration: Option<Duration>, mut done: impl FnMut() -> bool) {
        let tty = self.opts.progress && io::stderr().is_terminal();
        let mut last_progress = Instant::now();
        let mut last_read = 0u64;
        let mut printed = false;
        loop {
            if done() || self.should_stop() {
                break;
            }
            if duration.is_some_and(|d| self.started.elapsed() >= d) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            if tty && last_progress.elapsed() >= Duration::from_secs(1) {
                let dt = last_progress.elapsed().as_secs_f64();
                last_progress = Instant::now();
                let stats = self.read_stats();
                let read: u64 = stats.iter().map(|s| s.read).sum();
                let lost: u64 = stats.iter().map(CpuStats::lost).sum();
                let rate = (read.saturating_sub(last_read)) as f64 / dt;
                last_read = read;
                let mb = self.shared.file_bytes.load(Ordering::Relaxed) as f64 / 1e6;
                eprint!(
                    "\r\x1b[Kvmxray record: {:>6.1}s  {rate:>9.0} events/s  {mb:>8.2} MB written  {lost} lost",
                    self.started.elapsed().as_secs_f64()
                );
                printed = true;
            }
        }
        if printed {
            eprintln!();
        }
    }

    fn read_stats(&self) -> Vec<CpuStats> {
        let Some(instance) = &self.instance else { return Vec::new() };
        self.readers
            .iter()
            .map(|(cpu, _)| {
                instance
                    .read(&format!("per_cpu/cpu{cpu}/stats"))
                    .map(|t| CpuStats::parse(&t))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Stops tracing, drains the buffers, completes the file(s), removes the instance.
    pub fn finish(mut self) -> Result<RecordReport, RecordError> {
        let result = self.finish_inner();
        // Whatever happened, the instance goes.
        let removed = match self.instance.take() {
            Some(instance) => instance.remove(),
            None => Ok(()),
        };
        drop(self.reaper.take());
        // Then the probes it had enabled.
        let probes_left = self.probes.take().map(|p| (p.file_path(), p.remove()));
        let report = result?;
        removed?;
        if let Some((path, mut failed)) = probes_left
            && !failed.is_empty()
        {
            let (_, source) = failed.remove(0);
            return Err(RecordError::Tracefs { path, source });
        }
        Ok(report)
    }

    fn finish_inner(&mut self) -> Result<RecordReport, RecordError> {
        if let Some(writer) = self.identity.take() {
            writer.stop();
        }
        if let Some(instance) = &self.instance {
            instance.stop_tracing();
        }
        self.stop_readers.store(true, Ordering::Relaxed);
        let mut first_error = None;
        let mut pages_read = Vec::new();
        for (cpu, handle) in self.readers.drain(..) {
            match handle.join() {
                Ok(Ok(pages)) => pages_read.push((cpu, pages)),
                Ok(Err(e)) => {
                    pages_read.push((cpu, 0));
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    pages_read.push((cpu, 0));
                    first_error.get_or_insert(RecordError::ReaderPanicked { cpu });
                }
            }
        }
        let stats: Vec<(u32, CpuStats)> = match &self.instance {
            Some(instance) => pages_read
                .iter()
                .map(|(cpu, _)| {
                    let text =
                        instance.read(&format!("per_cpu/cpu{cpu}/stats")).unwrap_or_default();
                    (*cpu, CpuStats::parse(&text))
                })
                .collect(),
            None => Vec::new(),
        };
        let cpustats: Vec<String> =
            stats.iter().map(|(cpu, s)| format!("CPU: {cpu}\n{}", s.text)).collect();
        let out = match self.consumer.take().map(JoinHandle::join) {
            Some(Ok(Ok(out))) => Some(out),
            Some(Ok(Err(e))) => {
                first_error.get_or_insert(e);
                None
            }
            Some(Err(_)) => {
                first_error.get_or_insert(RecordError::WriterPanicked);
                None
            }
            None => None,
        };
        let cmdlines = self.instance.as_ref().and_then(|i| i.tracefs().read("saved_cmdlines").ok());
        let mut report = std::mem::take(&mut self.report);
        report.elapsed = self.started.elapsed();
        report.cpu_time = process_cpu_time().saturating_sub(self.cpu_at_start);
        if let Some(out) = out {
            let mut lost = out.lost;
            match out.mode {
                Mode::Stream { writer, .. } => {
                    let summary = writer.finish(cmdlines.as_deref(), &cpustats)?;
                    report.raw_bytes = summary.raw_bytes;
                    report.file_bytes = summary.file_bytes;
                }
                Mode::Flight(mut flight) => {
                    flight.finish_dump(cmdlines.as_deref(), Some(&cpustats))?;
                    report.files = flight.files.clone();
                    report.fired = flight.fired.clone();
                    report.raw_bytes = flight.summaries.iter().map(|s| s.raw_bytes).sum();
                    report.file_bytes = flight.summaries.iter().map(|s| s.file_bytes).sum();
                    report.trigger_pages =
                        (flight.detector.pages_decoded, flight.detector.pages_seen);
                }
            }
            for (cpu, pages) in &pages_read {
                let (marks, events) = lost.remove(cpu).unwrap_or((0, 0));
                let stats = stats.iter().find(|(c, _)| c == cpu).map(|(_, s)| s.clone());
                report.cpus.push(CpuReport {
                    cpu: *cpu,
                    pages_read: *pages,
                    lost_marks: marks,
                    lost_in_pages: events,
                    stats: stats.unwrap_or_default(),
                });
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

impl Drop for TracefsRecorder {
    fn drop(&mut self) {
        drop(self.identity.take());
        if let Some(instance) = &self.instance {
            instance.stop_tracing();
        }
        self.stop_readers.store(true, Ordering::Relaxed);
        for (_, handle) in self.readers.drain(..) {
            let _ = handle.join();
        }
        if let Some(handle) = self.consumer.take() {
            let _ = handle.join();
        }
        // `instance` drops last and removes itself.
    }
}

/// One CPU's reader: page-sized non-blocking reads of `trace_pipe_raw`, whole pages handed
/// to the writer. Returns the number of pages read.
fn read_cpu(
    cpu: u32,
    path: &Path,
    page_size: usize,
    tx: &SyncSender<Page>,
    stop: &AtomicBool,
) -> Result<u64, RecordError> {
    let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(path)
        .map_err(|source| RecordError::Read { cpu, source })?;
    let mut pages = 0u64;
    let mut buf = vec![0u8; page_size];
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                wait_readable(&file);
            }
            Ok(_) => {
                pages += 1;
                let page = std::mem::replace(&mut buf, vec![0u8; page_size]);
                if tx.send((cpu, page)).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                wait_readable(&file);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(RecordError::Read { cpu, source }),
        }
    }
    Ok(pages)
}

/// Waits until the buffer has data (the kernel wakes pollers at `buffer_percent`) or 50 ms
/// pass, whichever comes first; the timeout bounds the latency of partial pages and of stop.
fn wait_readable(file: &std::fs::File) {
    let mut fds = [rustix::event::PollFd::new(file, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    let _ = rustix::event::poll(&mut fds, Some(&timeout));
}

enum Mode {
    Stream { writer: Box<TraceDatWriter>, last_checkpoint: Instant },
    Flight(Box<Flight>),
}

impl Mode {
    fn page_size(&self) -> usize {
        match self {
            Self::Stream { writer, .. } => writer.metadata().page_size as usize,
            Self::Flight(f) => f.meta.page_size as usize,
        }
    }
}

struct ConsumerOut {
    mode: Mode,
    /// Per CPU: pages flagged lost, events they counted.
    lost: std::collections::BTreeMap<u32, (u64, u64)>,
}

fn consume(
    mut mode: Mode,
    rx: &mpsc::Receiver<Page>,
    shared: &Shared,
    checkpoint_every: Duration,
    tracefs: Option<Tracefs>,
) -> Result<ConsumerOut, RecordError> {
    let mut lost = std::collections::BTreeMap::new();
    let layout = match &mode {
        Mode::Stream { writer, .. } => {
            let m = writer.metadata();
            PageLayout::parse(&m.header_page, None, NATIVE).ok()
        }
        Mode::Flight(f) => Some(f.layout),
    };
    let cmdlines = || tracefs.as_ref().and_then(|t| t.read("saved_cmdlines").ok());
    // The pid→comm table as last stored: a checkpoint stores it again only when it changed.
    let mut stored_cmdlines: Option<Vec<u8>> = None;
    loop {
        let page = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(page) => Some(page),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some((cpu, bytes)) = page {
            if let Some(layout) = &layout
                && let Ok(h) = PageHeader::parse(layout, &bytes)
                && h.missed_events
            {
                let e: &mut (u64, u64) = lost.entry(cpu).or_default();
                e.0 += 1;
                e.1 += h.lost_count.unwrap_or(0);
            }
            match &mut mode {
                Mode::Stream { writer, .. } => writer.write_page(cpu, &bytes)?,
                Mode::Flight(f) => f.page(cpu, bytes)?,
            }
        }
        match &mut mode {
            Mode::Stream { writer, last_checkpoint } => {
                if last_checkpoint.elapsed() >= checkpoint_every {
                    let now = cmdlines();
                    let changed = now.is_some() && now != stored_cmdlines;
                    writer.checkpoint(if changed { now.as_deref() } else { None })?;
                    if changed {
                        stored_cmdlines = now;
                    }
                    *last_checkpoint = Instant::now();
                }
            }
            Mode::Flight(f) => {
                if f.dump.as_ref().is_some_and(|d| Instant::now() >= d.deadline) {
                    f.finish_dump(cmdlines().as_deref(), None)?;
                    if f.dumps >= f.opts.max_dumps {
                        shared.flight_done.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        let written = match &mode {
            Mode::Stream { writer, .. } => writer.bytes_written(),
            Mode::Flight(f) => {
                f.summaries.iter().map(|s| s.file_bytes).sum::<u64>()
                    + f.dump.as_ref().map_or(0, |d| d.writer.bytes_written())
            }
        };
        shared.file_bytes.store(written, Ordering::Relaxed);
    }
    Ok(ConsumerOut { mode, lost })
}

struct Dump {
    writer: TraceDatWriter,
    cutoff: u64,
    deadline: Instant,
}

struct Flight {
    rings: Vec<VecDeque<Vec<u8>>>,
    ring_pages: usize,
    detector: Detector,
    meta: Metadata,
    layout: PageLayout,
    opts: FlightOptions,
    output: PathBuf,
    writer_opts: WriterOptions,
    dump: Option<Dump>,
    dumps: u32,
    fired: Vec<Fired>,
    files: Vec<PathBuf>,
    summaries: Vec<WriteSummary>,
    /// The instance whose per-CPU `stats` a dump stores (none for perf).
    stats_dir: Option<PathBuf>,
}

/// After the post-trigger window, how long to keep taking pages of other CPUs that may still
/// hold events from before the cutoff.
const DUMP_DRAIN: Duration = Duration::from_millis(300);

impl Flight {
    fn new(
        flight: &FlightOptions,
        opts: &RecordOptions,
        meta: Metadata,
        layout: PageLayout,
        dir: &Path,
        stats_dir: Option<PathBuf>,
        report: &mut RecordReport,
    ) -> Result<Self, RecordError> {
        let mut formats = EventFormats::new(layout.endian, layout.long_size());
        for (sys, formats_text) in &meta.event_formats {
            for text in formats_text {
                formats.add_text(sys, text).map_err(|source| RecordError::Format {
                    path: dir.join("events").join(sys),
                    source,
                })?;
            }
        }
        let (detector, dead) = Detector::new(flight.triggers.clone(), formats, layout);
        if !dead.is_empty() {
            report.dead_triggers = dead.clone();
            if dead.len() == flight.triggers.len() {
                let names: Vec<String> = dead.iter().map(ToString::to_string).collect();
                return Err(RecordError::DeadTriggers(names.join(", ")));
            }
        }
        let ring_pages = usize::try_from(flight.size / u64::from(meta.page_size.max(1)))
            .unwrap_or(usize::MAX)
            .max(2);
        Ok(Self {
            rings: vec![VecDeque::new(); meta.cpus as usize],
            ring_pages,
            detector,
            meta,
            layout,
            opts: flight.clone(),
            output: opts.output.clone(),
            writer_opts: opts.writer,
            dump: None,
            dumps: 0,
            fired: Vec::new(),
            files: Vec::new(),
            summaries: Vec::new(),
            stats_dir,
        })
    }

    fn page(&mut self, cpu: u32, page: Vec<u8>) -> Result<(), RecordError> {
        if self.dumps >= self.opts.max_dumps {
            return Ok(());
        }
        if let Some(dump) = &mut self.dump {
            if let Some(cut) = trigger::truncate_page(&self.layout, &page, dump.cutoff) {
                dump.writer.write_page(cpu, &cut)?;
            }
            return Ok(());
        }
        let fired = self.detector.scan(&page);
        let ring = &mut self.rings[cpu as usize];
        ring.push_back(page);
        while ring.len() > self.ring_pages {
            ring.pop_front();
        }
        if let Some(fired) = fired {
            let path = if self.dumps == 0 {
                self.output.clone()
            } else {
                let mut p = self.output.clone().into_os_string();
                p.push(format!(".{}", self.dumps + 1));
                PathBuf::from(p)
            };
            let post = u64::try_from(self.opts.post_trigger.as_nanos()).unwrap_or(u64::MAX);
            let cutoff = fired.ts.saturating_add(post);
            let mut writer = TraceDatWriter::create(&path, self.meta.clone(), self.writer_opts)?;
            for (cpu, ring) in self.rings.iter_mut().enumerate() {
                let cpu = u32::try_from(cpu).unwrap_or(u32::MAX);
                for page in ring.drain(..) {
                    if let Some(cut) = trigger::truncate_page(&self.layout, &page, cutoff) {
                        writer.write_page(cpu, &cut)?;
                    }
                }
            }
            // Commit the history at once: if the machine dies during the post-trigger window
            // (the usual reason for a trigger), the file already holds everything before it.
            writer.checkpoint(None)?;
            self.files.push(path);
            self.fired.push(fired);
            self.dump = Some(Dump {
                writer,
                cutoff,
                deadline: Instant::now() + self.opts.post_trigger + DUMP_DRAIN,
            });
        }
        Ok(())
    }

    fn finish_dump(
        &mut self,
        cmdlines: Option<&[u8]>,
        cpustats: Option<&[String]>,
    ) -> Result<(), RecordError> {
        let Some(dump) = self.dump.take() else { return Ok(()) };
        let stats: Vec<String> = match cpustats {
            Some(s) => s.to_vec(),
            None => (0..self.meta.cpus)
                .filter_map(|cpu| {
                    let path = self.stats_dir.as_ref()?.join(format!("per_cpu/cpu{cpu}/stats"));
                    let text = tracefs::read_file(&path).unwrap_or_default();
                    let text = String::from_utf8_lossy(&text);
                    Some(format!("CPU: {cpu}\n{text}"))
                })
                .collect(),
        };
        let summary = dump.writer.finish(cmdlines, &stats)?;
        self.summaries.push(summary);
        self.dumps += 1;
        Ok(())
    }
}

/// The events to enable: the profile, `-e`, and what the triggers need; the ones this kernel
/// lacks go to `report.missing_events` (an older name whose successor exists is not reported).
///
/// `events_dir` is an instance's or tracefs' `events/`; an event exists when its directory
/// holds `marker` (`enable` in an instance, `id` for perf).
fn select_events(
    events_dir: &Path,
    marker: &str,
    opts: &RecordOptions,
    report: &mut RecordReport,
) -> Result<Vec<(String, String)>, RecordError> {
    let mut wanted = opts.profile.events();
    for e in &opts.extra_events {
        let (sys, ev) = e.split_once(':').ok_or_else(|| RecordError::EventSyntax(e.clone()))?;
        if sys.is_empty() || ev.is_empty() {
            return Err(RecordError::EventSyntax(e.clone()));
        }
        wanted.push((sys.to_string(), (ev != "*").then(|| ev.to_string())));
    }
    if opts.identity {
        // Threads created while recording (a VM started meanwhile, its vCPU threads): which
        // process each belongs to, for the identity lines' scan may come after they ran.
        wanted.push(("task".into(), Some("task_newtask".into())));
    }
    if let Some(flight) = &opts.flight {
        for t in &flight.triggers {
            wanted.extend(t.events().into_iter().map(|(s, e)| (s, Some(e))));
        }
    }
    let mut enabled: Vec<(String, String)> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for (sys, ev) in wanted {
        let names = match ev {
            Some(ev) => vec![ev],
            None => list_dir(&events_dir.join(&sys)),
        };
        if names.is_empty() {
            missing.push(format!("{sys}:*"));
        }
        for name in names {
            if enabled.iter().any(|(s, e)| *s == sys && *e == name) {
                continue;
            }
            if events_dir.join(&sys).join(&name).join(marker).exists() {
                enabled.push((sys.clone(), name));
            } else if !missing.contains(&format!("{sys}:{name}")) {
                missing.push(format!("{sys}:{name}"));
            }
        }
    }
    missing.retain(|m| {
        !RENAMED_EVENTS
            .iter()
            .any(|(old, new)| m == old && enabled.iter().any(|(s, e)| format!("{s}:{e}") == *new))
    });
    report.missing_events = missing;
    if enabled.is_empty() {
        return Err(RecordError::NoEvents);
    }
    Ok(enabled)
}

/// Tracepoints the kernel renamed: (old, new). The profiles list both.
const RENAMED_EVENTS: &[(&str, &str)] = &[("kvm:kvm_nested_vmrun", "kvm:kvm_nested_vmenter")];

/// Writes the `--filter` expressions into the instance's `events/<sys>/<event>/filter`.
fn apply_filters(
    instance: &Instance,
    filters: &[String],
    enabled: &[(String, String)],
) -> Result<(), RecordError> {
    for f in filters {
        let (sys, ev, expr) = parse_filter(f)?;
        let target = enabled
            .iter()
            .find(|(s, e)| *e == ev && sys.as_deref().is_none_or(|want| want == s))
            .ok_or_else(|| RecordError::FilterEvent(f.clone()))?;
        let path = format!("events/{}/{}/filter", target.0, target.1);
        instance.write(&path, &expr).map_err(|e| match e {
            RecordError::Tracefs { source, .. } => RecordError::Filter {
                event: format!("{}:{}", target.0, target.1),
                expr: expr.clone(),
                source,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// `--pid` / threads: every thread of each process now, the given threads, and their future
/// children (`options/event-fork`), in the instance's `set_event_pid`.
fn apply_task_filter(instance: &Instance, opts: &RecordOptions) -> Result<(), RecordError> {
    if opts.pids.is_empty() && opts.threads.is_empty() {
        return Ok(());
    }
    let mut tids: Vec<String> = opts.threads.iter().map(ToString::to_string).collect();
    for pid in &opts.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(RecordError::NoProcess(*pid));
        }
        tids.push(pid.to_string());
        tids.extend(list_dir(Path::new(&format!("/proc/{pid}/task"))));
    }
    tids.sort();
    tids.dedup();
    instance.write("options/event-fork", "1")?;
    instance.write("set_event_pid", &tids.join(" "))
}

/// Reads everything but the CPU data from tracefs.
fn read_metadata(
    instance: &Instance,
    enabled: &[(String, String)],
) -> Result<Metadata, RecordError> {
    let trace_clock = instance.read("trace_clock")?;
    let cpus = tracefs::tracefs_cpus(instance).last().map_or(1, |c| c + 1);
    read_metadata_in(instance.tracefs(), instance.dir(), enabled, trace_clock, cpus)
}

/// Reads everything but the CPU data from `dir` (an instance, or tracefs' top level, which the
/// perf backend only reads), with the given `trace_clock` text and CPU count.
fn read_metadata_in(
    tracefs: &Tracefs,
    dir: &Path,
    enabled: &[(String, String)],
    trace_clock: String,
    cpus: u32,
) -> Result<Metadata, RecordError> {
    let read = |rel: &str| -> Result<Vec<u8>, RecordError> {
        let path = dir.join(rel);
        tracefs::read_file(&path).map_err(|source| RecordError::Tracefs { path, source })
    };
    let header_page = read("events/header_page")?;
    let header_event = read("events/header_event")?;
    let layout = PageLayout::parse(&header_page, Some(&header_event), NATIVE)
        .map_err(|source| RecordError::Format { path: dir.join("events/header_page"), source })?;
    let mut ftrace_formats = Vec::new();
    for name in list_dir(&dir.join("events/ftrace")) {
        if let Ok(f) = read(&format!("events/ftrace/{name}/format")) {
            ftrace_formats.push(f);
        }
    }
    let mut event_formats: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (sys, ev) in enabled {
        let text = read(&format!("events/{sys}/{ev}/format"))?;
        match event_formats.iter_mut().find(|(s, _)| s == sys) {
            Some((_, list)) => list.push(text),
            None => event_formats.push((sys.clone(), vec![text])),
        }
    }
    let printk_formats = tracefs.read("printk_formats").unwrap_or_default();
    let proc = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let uname = format!(
        "{} {} {} {} {}",
        proc("ostype"),
        proc("hostname"),
        proc("osrelease"),
        proc("version"),
        std::env::consts::ARCH
    );
    let trace_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
        ^ u64::from(std::process::id());
    Ok(Metadata {
        page_size: layout.page_size,
        header_page,
        header_event,
        ftrace_formats,
        event_formats,
        kallsyms: Vec::new(),
        printk_formats,
        trace_clock,
        uname,
        version: format!("vmxray {}", env!("CARGO_PKG_VERSION")),
        cpus,
        trace_id,
    })
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `EVENT:EXPR` or `SYS:EVENT:EXPR` → (system, event, expression).
fn parse_filter(f: &str) -> Result<(Option<String>, String, String), RecordError> {
    let bad = || RecordError::FilterSyntax(f.to_string());
    let (first, rest) = f.split_once(':').ok_or_else(bad)?;
    if !is_ident(first) {
        return Err(bad());
    }
    if let Some((second, expr)) = rest.split_once(':')
        && is_ident(second)
        && !expr.trim().is_empty()
    {
        return Ok((Some(first.to_string()), second.to_string(), expr.to_string()));
    }
    if rest.trim().is_empty() {
        return Err(bad());
    }
    Ok((None, first.to_string(), rest.to_string()))
}

/// Parses a size such as `4M`, `512K`, `1G` or `4096` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix("iB").or_else(|| s.strip_suffix('B')).unwrap_or(s);
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1.5s` or `3` (seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let secs = match unit {
        "ns" => v / 1e9,
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Defines the `vmcs` profile's probes (group `vmxray_<pid>`), or says what the kernel lacks.
fn vmcs_probes(tracefs: &Tracefs) -> Result<crate::probes::InstalledProbes, RecordError> {
    use crate::probes::{DirProbeFs, InstalledProbes, ProbeSupport, group_for};
    let support = ProbeSupport::detect(tracefs.root(), Path::new("/sys"));
    let fs = Box::new(DirProbeFs { root: tracefs.root().to_path_buf() });
    if let Some((_, file)) = support.plan() {
        // Probes of recorders killed with SIGKILL (like their instances; same pid caveat).
        let listing = tracefs.read(file).map(|b| String::from_utf8_lossy(&b).into_owned());
        let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        for line in crate::probes::stale_removals(&listing.unwrap_or_default(), alive) {
            let _ = crate::probes::ProbeFs::append(&*fs, file, &line);
        }
    }
    Ok(InstalledProbes::install(fs, &support, &group_for(std::process::id()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2MB"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter("kvm_exit:exit_reason==30").unwrap(),
            (None, "kvm_exit".into(), "exit_reason==30".into())
        );
        assert_eq!(
            parse_filter("kvm:kvm_exit:exit_reason == 30").unwrap(),
            (Some("kvm".into()), "kvm_exit".into(), "exit_reason == 30".into())
        );
        assert!(parse_filter("kvm_exit").is_err());
        assert!(parse_filter("kvm_exit:").is_err());
    }

    #[test]
    fn profiles_nest() {
        let exits = Profile::Exits.events();
        assert!(exits.contains(&("kvm".into(), Some("kvm_userspace_exit".into()))));
        assert!(Profile::Mmu.events().contains(&("kvmmmu".into(), None)));
        assert_eq!(Profile::All.events().len(), 2);
        let context = Profile::Context.events();
        assert!(exits.iter().all(|e| context.contains(e)));
        for host in [("sched", "sched_switch"), ("irq", "irq_handler_entry"), ("kvm", "kvm_mmio")] {
            assert!(context.contains(&(host.0.into(), Some(host.1.into()))), "{host:?}");
        }
    }
}
