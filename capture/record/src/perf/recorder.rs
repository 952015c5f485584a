//! `vmxray record --backend perf`: a [`Session`]'s batches into perf.data, trace.dat or the
//! flight recorder.
//!
//! - **perf.data**: the kernel's records are written as they come ([`PerfDataWriter`]), after
//!   a `PERF_RECORD_COMM` for every thread that existed before (as `perf record` synthesizes
//!   them). A `PERF_RECORD_FINISHED_ROUND` is written once every CPU delivered a batch since
//!   the previous one and at least [`ROUND`] passed: readers drain every [`super::POLL`] at
//!   the latest, so a record written after a round is never older than what preceded the
//!   round before it, which is what perf's ordering needs.
//! - **trace.dat**: each CPU's tracepoint payloads are packed into ring-buffer pages
//!   ([`CpuPacker`]), the lost counts become flagged pages, and the comms the cmdlines. The
//!   identity lines of VMM threads ([`crate::identity`]) are written as `ftrace:print` records
//!   of the first CPU, as the tracefs backend's `trace_marker` writes put them there.
//! - **flight recorder** (trace.dat): the same pages go to the tracefs backend's flight
//!   recorder (per-CPU rings, trigger scan, dumps); open pages are closed every
//!   [`FLIGHT_FLUSH`] so that a trigger is seen promptly.
//!
//! Either file is made consistent every `checkpoint_every` (one second by default): a
//! recording killed with SIGKILL keeps every event up to its last checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmxray_capture::bin::format::{EventFormat, PageLayout};
use vmxray_capture::write::convert::CpuPacker;
use vmxray_capture::write::perfdata::{PerfDataMeta, PerfDataWriter, comm_record};
use vmxray_capture::write::{Metadata, TraceDatWriter};
use vmxray_events::identity::ThreadIdentity;

use super::{
    Batch, RecordKind, SAMPLE_ID_WORDS, Sample, Session, clock_now, comm, kind_of, lost, records,
};
use crate::{
    CpuReport, CpuStats, Flight, NATIVE, OutputFormat, RecordError, RecordOptions, RecordReport,
    SignalGuard, process_cpu_time,
};

/// The least time between two `FINISHED_ROUND` records.
pub const ROUND: Duration = Duration::from_millis(250);
/// How often the flight recorder's open pages are closed.
pub const FLIGHT_FLUSH: Duration = Duration::from_millis(100);

/// Counters shared with the waiting thread.
#[derive(Debug, Default)]
struct Shared {
    samples: AtomicU64,
    lost: AtomicU64,
    file_bytes: AtomicU64,
    flight_done: AtomicBool,
}

/// A running perf recording.
pub struct PerfRecorder {
    opts: RecordOptions,
    session: Option<Session>,
    consumer: Option<JoinHandle<Result<ConsumerOut, RecordError>>>,
    shared: Arc<Shared>,
    started: Instant,
    cpu_at_start: Duration,
    report: RecordReport,
    /// Declared last: signals stay caught while the rest is dropped.
    signals: SignalGuard,
}

impl PerfRecorder {
    /// Opens the events, creates the file, starts the readers and the writer, enables tracing.
    pub fn start(opts: RecordOptions) -> Result<Self, RecordError> {
        let signals = SignalGuard::install(opts.handle_signals)?;
        if let Some(dir) = opts.output.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(RecordError::OutputDir(dir.to_path_buf()));
        }
        if opts.flight.is_some() && opts.output_format == OutputFormat::PerfData {
            return Err(RecordError::Unsupported(
                "The flight recorder writes trace.dat: give an output name that does not end in .data",
            ));
        }
        let mut session = Session::open(&opts)?;
        let mut report = RecordReport {
            backend: "perf",
            clock: session.clock.0.clone(),
            events: session.events.clone(),
            missing_events: session.missing_events.clone(),
            descriptors: session.descriptors,
            ..RecordReport::default()
        };
        let meta = session.meta.clone();
        let layout = PageLayout::parse(&meta.header_page, Some(&meta.header_event), NATIVE)
            .map_err(|source| RecordError::Format { path: "events/header_page".into(), source })?;
        let threads = thread_comms(&opts);
        let out = match (&opts.flight, opts.output_format) {
            (None, OutputFormat::PerfData) => {
                let pmeta = perf_meta(&session, &meta);
                let cmdlines = cmdlines_text(&threads);
                let mut writer = PerfDataWriter::create(&opts.output, pmeta, &cmdlines)?;
                for (tid, (tgid, name)) in &threads {
                    writer.write_record(&comm_record(*tgid, *tid, name, SAMPLE_ID_WORDS))?;
                }
                report.files.push(opts.output.clone());
                Out::PerfData(Box::new(writer))
            }
            (None, OutputFormat::TraceDat) => {
                let writer = TraceDatWriter::create(&opts.output, meta.clone(), opts.writer)?;
                report.files.push(opts.output.clone());
                Out::Pages(Box::new(Pages::new(&meta, layout, PageSink::Stream(Box::new(writer)))))
            }
            (Some(flight), _) => {
                let tracefs_dir = crate::tracefs::Tracefs::find().unwrap_or_default();
                let flight = Flight::new(
                    flight,
                    &opts,
                    meta.clone(),
                    layout,
                    &tracefs_dir,
                    None,
                    &mut report,
                )?;
                Out::Pages(Box::new(Pages::new(&meta, layout, PageSink::Flight(Box::new(flight)))))
            }
        };
        let shared = Arc::new(Shared::default());
        let rx = session.start()?;
        let identity = (opts.identity && matches!(out, Out::Pages(_)))
            .then(|| IdentityState::new(opts.pids.clone(), opts.flight.is_some()));
        let consumer = Consumer {
            out,
            cpus: BTreeMap::new(),
            comms: threads.into_iter().map(|(tid, (_, name))| (tid, name)).collect(),
            stored_comms: None,
            identity,
            clockid: session.clock.1,
            started_at: session.started_at,
            checkpoint_every: opts.checkpoint_every,
            round_cpus: BTreeSet::new(),
            all_cpus: session.cpus.len(),
            shared: Arc::clone(&shared),
        };
        let handle = std::thread::Builder::new()
            .name("vmxray-writer".into())
            .spawn(move || consumer.run(&rx))
            .map_err(RecordError::Thread)?;
        Ok(Self {
            opts,
            session: Some(session),
            consumer: Some(handle),
            shared,
            started: Instant::now(),
            cpu_at_start: process_cpu_time(),
            report,
            signals,
        })
    }

    /// Selected events this kernel lacks.
    pub fn missing_events(&self) -> &[String] {
        &self.report.missing_events
    }

    /// True once SIGINT/SIGTERM arrived, the flight recorder wrote its last dump, or a thread
    /// ended early.
    pub fn should_stop(&self) -> bool {
        self.signals.interrupted()
            || self.shared.flight_done.load(Ordering::Relaxed)
            || self.session.as_ref().is_some_and(Session::reader_ended)
            || self.consumer.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Waits until `done()`, `duration` or [`Self::should_stop`], with the progress line when
    /// asked to.
    pub fn wait(&mut self, duration: Option<Duration>, mut done: impl FnMut() -> bool) {
        let tty = self.opts.progress && io::stderr().is_terminal();
        let mut last_progress = Instant::now();
        let mut last_samples = 0u64;
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
                let samples = self.shared.samples.load(Ordering::Relaxed);
                let rate = samples.saturating_sub(last_samples) as f64 / dt;
                last_samples = samples;
                let mb = self.shared.file_bytes.load(Ordering::Relaxed) as f64 / 1e6;
                let lost = self.shared.lost.load(Ordering::Relaxed);
                eprint!(
                    "\r\x1b[Kvmxray record (perf): {:>6.1}s  {rate:>9.0} events/s  {mb:>8.2} MB written  {lost} lost",
                    self.started.elapsed().as_secs_f64()
                );
                printed = true;
            }
        }
        if printed {
            eprintln!();
        }
    }

    /// Stops the events, drains the rings, completes the file(s), closes every descriptor.
    pub fn finish(mut self) -> Result<RecordReport, RecordError> {
        let mut first_error = None;
        let panicked = self.session.as_mut().map(Session::stop).unwrap_or_default();
        if let Some(&cpu) = panicked.first() {
            first_error = Some(RecordError::ReaderPanicked { cpu });
        }
        // The readers are gone with their rings (descriptors); then the probes, if any.
        drop(self.session.take());
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
        let mut report = std::mem::take(&mut self.report);
        report.elapsed = self.started.elapsed();
        report.cpu_time = process_cpu_time().saturating_sub(self.cpu_at_start);
        if let Some(out) = out {
            let cpustats: Vec<String> =
                out.cpus.iter().map(|(cpu, c)| format!("CPU: {cpu}\n{}", c.stats_text())).collect();
            let cmdlines = cmdlines_from(&out.comms);
            match out.out {
                Out::PerfData(writer) => {
                    let s = writer.finish()?;
                    report.raw_bytes = s.data_bytes;
                    report.file_bytes = s.file_bytes;
                }
                Out::Pages(pages) => match pages.sink {
                    PageSink::Stream(writer) => {
                        let s = writer.finish(Some(&cmdlines), &cpustats)?;
                        report.raw_bytes = s.raw_bytes;
                        report.file_bytes = s.file_bytes;
                    }
                    PageSink::Flight(mut flight) => {
                        flight.finish_dump(Some(&cmdlines), Some(&cpustats))?;
                        report.files = flight.files.clone();
                        report.fired = flight.fired.clone();
                        report.raw_bytes = flight.summaries.iter().map(|s| s.raw_bytes).sum();
                        report.file_bytes = flight.summaries.iter().map(|s| s.file_bytes).sum();
                        report.trigger_pages =
                            (flight.detector.pages_decoded, flight.detector.pages_seen);
                    }
                },
            }
            for (cpu, c) in &out.cpus {
                report.cpus.push(CpuReport {
                    cpu: *cpu,
                    pages_read: c.batches,
                    lost_marks: c.lost_records,
                    lost_in_pages: c.lost_events,
                    stats: CpuStats::parse(&c.stats_text()),
                });
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

impl Drop for PerfRecorder {
    fn drop(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = s.stop();
        }
        if let Some(h) = self.consumer.take() {
            let _ = h.join();
        }
    }
}

/// What one CPU delivered.
#[derive(Clone, Debug, Default)]
struct CpuCount {
    batches: u64,
    samples: u64,
    lost_records: u64,
    lost_events: u64,
}

impl CpuCount {
    /// In the layout of tracefs' `per_cpu/cpuN/stats`, which readers of CPUSTAT parse.
    fn stats_text(&self) -> String {
        format!(
            "entries: 0\noverrun: 0\ncommit overrun: 0\ndropped events: {}\nread events: {}\nperf lost records: {}\n",
            self.lost_events, self.samples, self.lost_records
        )
    }
}

enum Out {
    PerfData(Box<PerfDataWriter>),
    Pages(Box<Pages>),
}

enum PageSink {
    Stream(Box<TraceDatWriter>),
    Flight(Box<Flight>),
}

/// Tracepoint payloads packed into pages per CPU.
struct Pages {
    layout: PageLayout,
    packers: BTreeMap<u32, CpuPacker>,
    sink: PageSink,
    /// `ftrace:print`, for the identity lines.
    print: Option<EventFormat>,
    /// The newest time packed per CPU.
    last_ts: BTreeMap<u32, u64>,
    last_flush: Instant,
    oversize: u64,
}

impl Pages {
    fn new(meta: &Metadata, layout: PageLayout, sink: PageSink) -> Self {
        let print = meta
            .ftrace_formats
            .iter()
            .filter_map(|t| EventFormat::parse("ftrace", t, 8).ok())
            .find(|f| &*f.name == "print");
        Self {
            layout,
            packers: BTreeMap::new(),
            sink,
            print,
            last_ts: BTreeMap::new(),
            last_flush: Instant::now(),
            oversize: 0,
        }
    }

    fn page(&mut self, cpu: u32, page: Option<Vec<u8>>) -> Result<(), RecordError> {
        let Some(page) = page else { return Ok(()) };
        match &mut self.sink {
            PageSink::Stream(w) => w.write_page(cpu, &page)?,
            PageSink::Flight(f) => f.page(cpu, page)?,
        }
        Ok(())
    }

    fn event(&mut self, cpu: u32, ts: u64, payload: &[u8]) -> Result<(), RecordError> {
        let layout = self.layout;
        let packer = self.packers.entry(cpu).or_insert_with(|| CpuPacker::new(layout));
        let page = match packer.event(ts, payload) {
            Ok(page) => page,
            Err(_) => {
                self.oversize += 1;
                None
            }
        };
        let last = self.last_ts.entry(cpu).or_default();
        *last = (*last).max(ts);
        self.page(cpu, page)
    }

    fn lost(&mut self, cpu: u32, ts: u64, count: u64) -> Result<(), RecordError> {
        let layout = self.layout;
        let packer = self.packers.entry(cpu).or_insert_with(|| CpuPacker::new(layout));
        let page = packer.lost(ts, Some(count));
        self.page(cpu, page)
    }

    /// Closes every open page (a checkpoint must cover what was received).
    fn flush(&mut self) -> Result<(), RecordError> {
        let cpus: Vec<u32> = self.packers.keys().copied().collect();
        for cpu in cpus {
            let page = self.packers.get_mut(&cpu).and_then(CpuPacker::flush);
            self.page(cpu, page)?;
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// An identity line as the `ftrace:print` record a `trace_marker` write makes.
    fn print_record(&self, line: &str) -> Option<Vec<u8>> {
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        super::print_payload(self.print.as_ref()?, line, pid)
    }
}

/// Identity lines of the VMM threads, found again every [`crate::identity::RESCAN`].
struct IdentityState {
    only: Vec<u32>,
    repeat_all: bool,
    written: BTreeSet<(i32, i32)>,
    last_scan: Option<Instant>,
    scanner: crate::identity::Scanner,
}

impl IdentityState {
    fn new(only: Vec<u32>, repeat_all: bool) -> Self {
        Self {
            only,
            repeat_all,
            written: BTreeSet::new(),
            last_scan: None,
            scanner: crate::identity::Scanner::default(),
        }
    }

    /// The lines to write now, if a scan is due.
    fn due(&mut self) -> Vec<ThreadIdentity> {
        if self.last_scan.is_some_and(|t| t.elapsed() < crate::identity::RESCAN) {
            return Vec::new();
        }
        self.last_scan = Some(Instant::now());
        self.scanner
            .scan(Path::new("/proc"), &self.only)
            .into_iter()
            .filter(|id| self.written.insert((id.pid, id.tgid)) || self.repeat_all)
            .collect()
    }
}

struct ConsumerOut {
    out: Out,
    cpus: BTreeMap<u32, CpuCount>,
    comms: BTreeMap<i32, String>,
}

struct Consumer {
    out: Out,
    cpus: BTreeMap<u32, CpuCount>,
    comms: BTreeMap<i32, String>,
    stored_comms: Option<Vec<u8>>,
    identity: Option<IdentityState>,
    clockid: Option<i32>,
    started_at: Option<u64>,
    checkpoint_every: Duration,
    /// CPUs that delivered a batch since the last round.
    round_cpus: BTreeSet<u32>,
    all_cpus: usize,
    shared: Arc<Shared>,
}

impl Consumer {
    fn run(mut self, rx: &Receiver<Batch>) -> Result<ConsumerOut, RecordError> {
        let mut last_checkpoint = Instant::now();
        let mut last_round = Instant::now();
        self.identity_lines()?;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(batch) => self.batch(&batch)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Out::PerfData(w) = &mut self.out
                && self.round_cpus.len() >= self.all_cpus
                && last_round.elapsed() >= ROUND
            {
                w.finished_round()?;
                self.round_cpus.clear();
                last_round = Instant::now();
            }
            if last_checkpoint.elapsed() >= self.checkpoint_every {
                self.checkpoint()?;
                last_checkpoint = Instant::now();
            }
            self.identity_lines()?;
            if let Out::Pages(pages) = &mut self.out
                && let PageSink::Flight(_) = pages.sink
            {
                if pages.last_flush.elapsed() >= FLIGHT_FLUSH {
                    pages.flush()?;
                }
                if let PageSink::Flight(f) = &mut pages.sink
                    && f.dump.as_ref().is_some_and(|d| Instant::now() >= d.deadline)
                {
                    let cmdlines = cmdlines_from(&self.comms);
                    f.finish_dump(Some(&cmdlines), None)?;
                    if f.dumps >= f.opts.max_dumps {
                        self.shared.flight_done.store(true, Ordering::Relaxed);
                    }
                }
            }
            let written = match &self.out {
                Out::PerfData(w) => w.bytes_written(),
                Out::Pages(p) => match &p.sink {
                    PageSink::Stream(w) => w.bytes_written(),
                    PageSink::Flight(f) => {
                        f.summaries.iter().map(|s| s.file_bytes).sum::<u64>()
                            + f.dump.as_ref().map_or(0, |d| d.writer.bytes_written())
                    }
                },
            };
            self.shared.file_bytes.store(written, Ordering::Relaxed);
        }
        // Everything the readers drained is in: close the open pages.
        if let Out::Pages(pages) = &mut self.out {
            pages.flush()?;
        }
        Ok(ConsumerOut { out: self.out, cpus: self.cpus, comms: self.comms })
    }

    fn batch(&mut self, batch: &Batch) -> Result<(), RecordError> {
        self.round_cpus.insert(batch.cpu);
        let count = self.cpus.entry(batch.cpu).or_default();
        count.batches += 1;
        for rec in records(&batch.records) {
            let kind = kind_of(rec.kind);
            match kind {
                RecordKind::Sample => {
                    count.samples += 1;
                    self.shared.samples.fetch_add(1, Ordering::Relaxed);
                }
                RecordKind::Lost => {
                    let n = lost(rec.body()).map_or(0, |(_, n)| n);
                    count.lost_records += 1;
                    count.lost_events += n;
                    self.shared.lost.fetch_add(n, Ordering::Relaxed);
                }
                RecordKind::Comm => {
                    if let Some((tid, name)) = comm(rec.body()) {
                        self.comms.insert(tid, name);
                    }
                }
                RecordKind::Other => {}
            }
            match &mut self.out {
                Out::PerfData(w) => w.write_record(rec.bytes)?,
                Out::Pages(pages) => match kind {
                    RecordKind::Sample => {
                        if let Some(s) = Sample::parse(rec.body()) {
                            if let std::collections::btree_map::Entry::Vacant(e) =
                                self.comms.entry(s.tid)
                            {
                                let name = std::fs::read_to_string(format!("/proc/{}/comm", s.tid))
                                    .map(|c| c.trim_end().to_string())
                                    .unwrap_or_default();
                                if !name.is_empty() {
                                    e.insert(name);
                                }
                            }
                            pages.event(batch.cpu, s.time, s.raw)?;
                        }
                    }
                    RecordKind::Lost => {
                        if let Some((ts, n)) = lost(rec.body()) {
                            pages.lost(batch.cpu, ts, n)?;
                        }
                    }
                    RecordKind::Comm | RecordKind::Other => {}
                },
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), RecordError> {
        match &mut self.out {
            Out::PerfData(w) => w.checkpoint()?,
            Out::Pages(pages) => {
                if let PageSink::Stream(_) = pages.sink {
                    pages.flush()?;
                }
                if let PageSink::Stream(w) = &mut pages.sink {
                    let now = cmdlines_from(&self.comms);
                    let changed = self.stored_comms.as_ref() != Some(&now);
                    w.checkpoint(changed.then_some(now.as_slice()))?;
                    if changed {
                        self.stored_comms = Some(now);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the identity lines a scan found (trace.dat outputs), on the first CPU at the
    /// session clock's current time.
    fn identity_lines(&mut self) -> Result<(), RecordError> {
        let Some(state) = &mut self.identity else { return Ok(()) };
        let lines = state.due();
        if lines.is_empty() {
            return Ok(());
        }
        let Out::Pages(pages) = &mut self.out else { return Ok(()) };
        let cpu = 0;
        let newest = pages.last_ts.get(&cpu).copied().unwrap_or(0);
        let ts = match self.clockid {
            Some(id) => clock_now(id).max(newest),
            None => newest.max(self.started_at.unwrap_or(0)),
        };
        for id in lines {
            if let Some(p) = pages.print_record(&id.to_line()) {
                pages.event(cpu, ts, &p)?;
            }
        }
        Ok(())
    }
}

/// The metadata of the perf.data file.
fn perf_meta(session: &Session, meta: &Metadata) -> PerfDataMeta {
    let proc = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let online = u32::try_from(session.cpus.len()).unwrap_or(1);
    // As perf: the formats of the ftrace system only for its recorded events (none here; some
    // of them, e.g. ftrace:function, make perf's tracing-data parser give up).
    let mut tracing = meta.clone();
    tracing.ftrace_formats.clear();
    let (cpudesc, cpuid) = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_identity(&text))
        .unwrap_or_default();
    PerfDataMeta {
        attrs: session.attrs.clone(),
        tracing,
        hostname: proc("hostname"),
        osrelease: proc("osrelease"),
        version: format!("vmxray {}", env!("CARGO_PKG_VERSION")),
        arch: std::env::consts::ARCH.to_string(),
        cpus: (meta.cpus, online),
        cpudesc,
        cpuid,
        cmdline: std::env::args().collect(),
    }
}

/// perf's `HEADER_CPUDESC` and x86 `HEADER_CPUID` from the first processor of
/// `/proc/cpuinfo`: the model name with runs of blanks squeezed, and
/// `vendor,family,model,stepping` in decimal (the kernel's `cpu family` and `model` already
/// include the extended fields, as perf's `get_cpuid` computes them). `None` without a
/// `vendor_id` (not x86), where perf writes another format.
fn cpu_identity(cpuinfo: &str) -> Option<(String, String)> {
    let first = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let vendor = field("vendor_id")?;
    let number = |name: &str| field(name).and_then(|v| v.parse::<u32>().ok());
    let cpuid = format!(
        "{vendor},{},{},{}",
        number("cpu family")?,
        number("model")?,
        number("stepping").unwrap_or(0)
    );
    let desc = field("model name").unwrap_or_default();
    Some((desc.split_whitespace().collect::<Vec<_>>().join(" "), cpuid))
}

/// Threads that exist now (tid → (tgid, comm)): every thread, or those of the recorded
/// processes and threads.
fn thread_comms(opts: &RecordOptions) -> BTreeMap<i32, (i32, String)> {
    let mut out = BTreeMap::new();
    let mut add_process = |tgid: &str| {
        let Ok(tgid_n) = tgid.parse::<i32>() else { return };
        for tid in crate::list_dir(Path::new(&format!("/proc/{tgid}/task"))) {
            let Ok(tid_n) = tid.parse::<i32>() else { continue };
            let name = std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            out.insert(tid_n, (tgid_n, name));
        }
    };
    if opts.pids.is_empty() && opts.threads.is_empty() {
        for p in crate::list_dir(Path::new("/proc")) {
            add_process(&p);
        }
    } else {
        for p in &opts.pids {
            add_process(&p.to_string());
        }
        for t in &opts.threads {
            // A thread's process: `Tgid:` in its status.
            let status = std::fs::read_to_string(format!("/proc/{t}/status")).unwrap_or_default();
            let tgid = status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| t.to_string());
            add_process(&tgid);
        }
    }
    out
}

fn cmdlines_text(threads: &BTreeMap<i32, (i32, String)>) -> Vec<u8> {
    let comms: BTreeMap<i32, String> =
        threads.iter().map(|(tid, (_, name))| (*tid, name.clone())).collect();
    cmdlines_from(&comms)
}

/// The `saved_cmdlines` text (`pid comm` per line).
fn cmdlines_from(comms: &BTreeMap<i32, String>) -> Vec<u8> {
    let mut out = String::new();
    for (pid, name) in comms {
        if *pid > 0 && !name.is_empty() {
            out.push_str(&format!("{pid} {name}\n"));
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::cpu_identity;

    #[test]
    fn cpu_identity_is_perfs_x86_cpuid() {
        // Bochs' corei7_haswell_4770 as a Debian 6.1 guest shows it (abridged).
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 60\n\
                       model name\t: Intel(R) Core(TM)  i7-4770 CPU @ 3.40GHz\nstepping\t: 3\n\n\
                       processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n";
        let (desc, cpuid) = cpu_identity(cpuinfo).unwrap();
        assert_eq!(cpuid, "GenuineIntel,6,60,3");
        assert_eq!(desc, "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz");
        assert_eq!(cpu_identity("processor\t: 0\nCPU implementer\t: 0x41\n"), None);
    }
}
