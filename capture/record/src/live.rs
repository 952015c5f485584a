//! A live capture for `vmxray top`: decoded events as they happen, from either backend, in
//! time order, with the newest seconds kept so that they can be written to a trace.dat on
//! request (the flight recorder of a live view).
//!
//! ```text
//!  tracefs: per_cpu/cpuN/trace_pipe_raw ──page──┐                          ┌──▶ LiveBatch (events
//!          (reader N: idle ⇒ watermark)         ├─▶ consumer "vmxray-live" ┤     in time order)
//!  perf:   CPU N's ring ──records + watermark───┘   decode, merge,         └──◀ Dump requests
//!                                                   history of pages            (trace.dat)
//! ```
//!
//! **Order.** Each CPU's events come in time order; the consumer releases an event once every
//! CPU is known to have delivered everything up to its time. A CPU's *watermark* is the clock's
//! time taken just before a read that found its buffer empty (every event stamped earlier was
//! committed and delivered), or the time of its newest event. Events at or before the lowest
//! watermark are sorted and released every [`TICK`]; a reader that stops answering holds them
//! back at most [`HOLDBACK`]. The session clock is `mono` (`CLOCK_MONOTONIC`), which both
//! backends offer and user space reads.
//!
//! **History.** The consumer keeps each CPU's pages (tracefs: as read; perf: the payloads
//! packed as the kernel's ftrace buffer would hold them) for [`LiveOptions::keep`]; a dump
//! writes those of the last N seconds, with the recording's formats, as trace.dat v7.

use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmxray_capture::bin::format::{EventFormat, EventFormats, PageLayout};
use vmxray_capture::bin::page::{PageItem, PageRecords};
use vmxray_capture::write::convert::CpuPacker;
use vmxray_capture::write::{Metadata, TraceDatWriter, WriteSummary};
use vmxray_events::event::{Comm, Event, EventKind};

use crate::backend::{Backend, error_chain};
use crate::perf::{self, RecordKind, Sample, Session};
use crate::pool::BufferPool;
use crate::{Instance, NATIVE, RecordError, RecordOptions, Tracefs};

/// How often ordered events are released.
pub const TICK: Duration = Duration::from_millis(100);
/// The longest an event waits for a silent CPU's reader before it is released anyway.
pub const HOLDBACK: Duration = Duration::from_millis(1000);
/// `CLOCK_MONOTONIC`, the session clock.
const MONO: i32 = 1;
/// tracefs: how long a reader whose buffer was empty waits before reading it again (the
/// kernel wakes a poller of `trace_pipe_raw` only once a share of the buffer is full). Its
/// watermark is that old at most: a [`TICK`] keeps events waiting no longer than they wait
/// for the tick anyway, and halves an idle capture's wakeups compared to 50 ms.
const IDLE_POLL: Duration = TICK;
/// tracefs: pages pruned from the history kept for the readers (8 MiB of 4 KiB pages, more
/// than a [`TICK`] of pages at a million events/s).
const PAGES_KEPT: usize = 2048;

/// Keeps this process's new memory in 4 KiB pages (`PR_SET_THP_DISABLE`), for a process that
/// runs a live capture for long.
///
/// The allocator asks for transparent huge pages; the first touch of each 2 MiB then zeroes
/// it whole, and on a host whose memory is fragmented the kernel compacts memory to find one,
/// in the faulting thread. A live capture grows its history of pages for seconds and its
/// decoder touches fresh memory all along: with huge pages, faults and compaction were a
/// fifth to a third of `vmxray top`'s CPU time (perf profiles of `scripts/bench-top.sh`), and
/// 0.3–0.5 % of a core per 100k events/s more than with small pages.
pub fn prefer_small_pages() -> io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true).map_err(io::Error::from)
}

/// What a live capture records and keeps.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Backend, profile, `-e`, filters, pids, buffer size (the output, flight and clock
    /// settings are not used: the clock is `mono`).
    pub record: RecordOptions,
    /// How much of the newest trace time is kept for dumps.
    pub keep: Duration,
}

/// Events released in one go, in time order.
#[derive(Clone, Debug, Default)]
pub struct LiveBatch {
    /// The events.
    pub events: Vec<Event>,
    /// Events the kernel reported lost since the previous batch.
    pub lost: u64,
}

/// What a dump wrote.
#[derive(Clone, Debug)]
pub struct DumpReport {
    /// The file.
    pub path: PathBuf,
    /// The trace time it covers (first and last page).
    pub span: (u64, u64),
    /// The writer's summary.
    pub summary: WriteSummary,
}

enum Raw {
    /// A page of a tracefs CPU buffer.
    Page { cpu: u32, page: Vec<u8> },
    /// A tracefs CPU buffer was empty at `watermark`.
    Idle { cpu: u32, watermark: u64 },
    /// Records of a perf ring.
    Perf(perf::Batch),
}

enum Command {
    Dump { path: PathBuf, last: Duration, reply: Sender<Result<DumpReport, RecordError>> },
}

enum Source {
    Tracefs {
        instance: Option<Instance>,
        reaper: Option<crate::reaper::Reaper>,
        readers: Vec<JoinHandle<()>>,
        stop: Arc<AtomicBool>,
        identity: Option<crate::identity::Writer>,
    },
    Perf(Box<Session>),
}

/// A running live capture.
pub struct LiveCapture {
    source: Source,
    events_rx: Receiver<LiveBatch>,
    /// Emptied batches going back to the consumer ([`LiveCapture::recycle`]).
    spare_tx: Sender<Vec<Event>>,
    commands: Option<Sender<Command>>,
    consumer: Option<JoinHandle<()>>,
    events: Vec<String>,
    missing: Vec<String>,
    fallback: Option<String>,
}

impl LiveCapture {
    /// Starts capturing with `opts.record.backend` (`Auto`: tracefs, or perf when tracefs
    /// cannot be used, see [`LiveCapture::fallback`]).
    pub fn start(opts: &LiveOptions) -> Result<Self, RecordError> {
        let mut record = opts.record.clone();
        record.clock = "mono".into();
        match record.backend {
            Backend::Tracefs => Self::tracefs(&record, opts.keep),
            Backend::Perf => Self::perf(&record, opts.keep, None),
            Backend::Auto => match Self::tracefs(&record, opts.keep) {
                Ok(c) => Ok(c),
                Err(e) if e.tracefs_unusable() => {
                    Self::perf(&record, opts.keep, Some(error_chain(&e)))
                }
                Err(e) => Err(e),
            },
        }
    }

    fn tracefs(opts: &RecordOptions, keep: Duration) -> Result<Self, RecordError> {
        let tracefs = Tracefs::find_or_mount()?;
        tracefs.remove_stale_instances();
        let instance = Instance::create(&tracefs)?;
        let reaper = crate::reaper::Reaper::spawn(instance.dir());
        instance.write("trace_clock", "mono")?;
        if let Some(kb) = opts.buffer_size_kb {
            instance.write("buffer_size_kb", &kb.to_string())?;
        }
        let mut report = crate::RecordReport::default();
        let enabled =
            crate::select_events(&instance.dir().join("events"), "enable", opts, &mut report)?;
        crate::apply_filters(&instance, &opts.filters, &enabled)?;
        crate::apply_task_filter(&instance, opts)?;
        let meta = crate::read_metadata(&instance, &enabled)?;
        for (sys, ev) in &enabled {
            instance.write(&format!("events/{sys}/{ev}/enable"), "1")?;
        }
        let (raw_tx, raw_rx) = mpsc::sync_channel::<Raw>(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        let page_size = meta.page_size as usize;
        let pages = BufferPool::new(PAGES_KEPT);
        for cpu in crate::tracefs::tracefs_cpus(&instance) {
            let path = instance.dir().join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"));
            let tx = raw_tx.clone();
            let stop = Arc::clone(&stop);
            let pages = pages.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vmxray-cpu{cpu}"))
                .spawn(move || read_pages(cpu, &path, page_size, &tx, &stop, &pages))
                .map_err(RecordError::Thread)?;
            readers.push(handle);
        }
        drop(raw_tx);
        let (spare_tx, spare_rx) = mpsc::channel();
        let consumer = Consumer::new(meta, keep, None, None, spare_rx, pages)?;
        let (events_tx, events_rx) = mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("vmxray-live".into())
            .spawn(move || consumer.run(&raw_rx, |r| r, &cmd_rx, &events_tx))
            .map_err(RecordError::Thread)?;
        instance.write("tracing_on", "1")?;
        let marker = instance.dir().join("trace_marker");
        let identity = crate::identity::Writer::start(marker, opts.pids.clone(), true).ok();
        Ok(Self {
            source: Source::Tracefs {
                instance: Some(instance),
                reaper: Some(reaper),
                readers,
                stop,
                identity,
            },
            events_rx,
            spare_tx,
            commands: Some(cmd_tx),
            consumer: Some(handle),
            events: enabled.iter().map(|(s, e)| format!("{s}:{e}")).collect(),
            missing: report.missing_events,
            fallback: None,
        })
    }

    fn perf(
        opts: &RecordOptions,
        keep: Duration,
        fallback: Option<String>,
    ) -> Result<Self, RecordError> {
        let mut session = Session::open(opts)?;
        let batches = session.start()?;
        let (spare_tx, spare_rx) = mpsc::channel();
        let consumer = Consumer::new(
            session.meta.clone(),
            keep,
            Some(opts.pids.clone()),
            Some(session.cpus.clone()),
            spare_rx,
            session.pool(),
        )?;
        let (events_tx, events_rx) = mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("vmxray-live".into())
            .spawn(move || consumer.run(&batches, Raw::Perf, &cmd_rx, &events_tx))
            .map_err(RecordError::Thread)?;
        Ok(Self {
            events: session.events.clone(),
            missing: session.missing_events.clone(),
            source: Source::Perf(Box::new(session)),
            events_rx,
            spare_tx,
            commands: Some(cmd_tx),
            consumer: Some(handle),
            fallback,
        })
    }

    /// The backend capturing.
    pub fn backend(&self) -> Backend {
        match self.source {
            Source::Tracefs { .. } => Backend::Tracefs,
            Source::Perf(_) => Backend::Perf,
        }
    }

    /// Why `Auto` did not use tracefs, if it did not.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The events enabled (`sys:event`).
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Selected events this kernel lacks.
    pub fn missing_events(&self) -> &[String] {
        &self.missing
    }

    /// The next batch of ordered events, waiting at most `timeout`; `None` on timeout or once
    /// the capture ended.
    pub fn recv(&self, timeout: Duration) -> Option<LiveBatch> {
        self.events_rx.recv_timeout(timeout).ok()
    }

    /// Every batch waiting now.
    pub fn drain(&self) -> Vec<LiveBatch> {
        self.events_rx.try_iter().collect()
    }

    /// Gives a batch's vector back once its events were used: the next batches are built in
    /// memory already faulted in. Freeing each batch and allocating the next one afresh made
    /// the kernel zero new pages for every batch (a quarter of `vmxray top`'s CPU time).
    /// The events in it are dropped by the capture's thread, which allocated their fields:
    /// memory freed by the thread that allocated it is reused at once, while memory freed by
    /// another thread is not, and the decoder kept asking for fresh pages.
    pub fn recycle(&self, events: Vec<Event>) {
        let _ = self.spare_tx.send(events);
    }

    /// True once the capture's threads ended (an error, or a panic).
    pub fn ended(&self) -> bool {
        self.consumer.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Writes the kept pages of the last `last` of trace time to `path` (trace.dat v7).
    pub fn dump(&self, path: &Path, last: Duration) -> Result<DumpReport, RecordError> {
        let (reply, answer) = mpsc::channel();
        let sent = self.commands.as_ref().is_some_and(|c| {
            c.send(Command::Dump { path: path.to_path_buf(), last, reply }).is_ok()
        });
        if !sent {
            return Err(RecordError::WriterPanicked);
        }
        answer.recv().unwrap_or(Err(RecordError::WriterPanicked))
    }

    /// Stops capturing and releases everything (instance, descriptors, threads).
    pub fn finish(mut self) -> Result<(), RecordError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), RecordError> {
        let mut result = Ok(());
        match &mut self.source {
            Source::Tracefs { instance, reaper, readers, stop, identity } => {
                drop(identity.take());
                if let Some(i) = instance.as_ref() {
                    i.stop_tracing();
                }
                stop.store(true, Ordering::Relaxed);
                for h in readers.drain(..) {
                    let _ = h.join();
                }
                if let Some(i) = instance.take() {
                    result = i.remove();
                }
                drop(reaper.take());
            }
            Source::Perf(session) => {
                let _ = session.stop();
            }
        }
        drop(self.commands.take());
        if let Some(h) = self.consumer.take() {
            let _ = h.join();
        }
        result
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A tracefs reader that says when its buffer was empty. Pages come from `pages` (those the
/// consumer is done with) when it has some.
fn read_pages(
    cpu: u32,
    path: &Path,
    page_size: usize,
    tx: &SyncSender<Raw>,
    stop: &AtomicBool,
    pages: &BufferPool,
) {
    let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
    let Ok(mut file) = OpenOptions::new().read(true).custom_flags(nonblock).open(path) else {
        return;
    };
    let mut buf = pages.take_zeroed(page_size);
    loop {
        let watermark = perf::clock_now(MONO);
        match file.read(&mut buf) {
            Ok(n) if n > 0 => {
                let page = std::mem::replace(&mut buf, pages.take_zeroed(page_size));
                if tx.send(Raw::Page { cpu, page }).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => {
                if tx.send(Raw::Idle { cpu, watermark }).is_err() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut fds = [rustix::event::PollFd::new(&file, rustix::event::PollFlags::IN)];
                let timeout = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: i64::from(IDLE_POLL.subsec_nanos()),
                };
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
            }
        }
    }
}

/// One CPU's kept pages: (newest time in the page, page).
#[derive(Default)]
struct History {
    pages: VecDeque<(u64, Vec<u8>)>,
}

struct Consumer {
    meta: Metadata,
    layout: PageLayout,
    formats: Arc<EventFormats>,
    keep: u64,
    history: BTreeMap<u32, History>,
    /// perf: payloads packed into pages for the history.
    packers: Option<BTreeMap<u32, CpuPacker>>,
    /// perf: identity lines (tracefs writes them through `trace_marker`).
    identity_only: Option<Vec<u32>>,
    print: Option<EventFormat>,
    last_identity: Option<Instant>,
    scanner: crate::identity::Scanner,
    watermarks: BTreeMap<u32, u64>,
    /// Decoded events not yet released, per CPU (each in time order).
    pending: BTreeMap<u32, VecDeque<Event>>,
    /// Threads seen (their comms go into a dump's cmdlines), and the last one added.
    pids: std::collections::HashSet<i32>,
    last_pid: i32,
    lost: u64,
    comms: BTreeMap<i32, Option<Comm>>,
    newest: u64,
    /// Batch vectors given back ([`LiveCapture::recycle`]).
    spare_rx: Receiver<Vec<Event>>,
    /// Where the readers take their buffers (tracefs pages, perf batches): the consumer gives
    /// them back once done with them.
    buffers: BufferPool,
}

impl Consumer {
    fn new(
        meta: Metadata,
        keep: Duration,
        perf_pids: Option<Vec<u32>>,
        perf_cpus: Option<Vec<u32>>,
        spare_rx: Receiver<Vec<Event>>,
        buffers: BufferPool,
    ) -> Result<Self, RecordError> {
        let layout = PageLayout::parse(&meta.header_page, Some(&meta.header_event), NATIVE)
            .map_err(|source| RecordError::Format { path: "events/header_page".into(), source })?;
        let mut formats = EventFormats::new(layout.endian, layout.long_size());
        for (sys, texts) in &meta.event_formats {
            for t in texts {
                formats.add_text(sys, t).map_err(|source| RecordError::Format {
                    path: PathBuf::from("events").join(sys),
                    source,
                })?;
            }
        }
        let print = meta
            .ftrace_formats
            .iter()
            .filter_map(|t| EventFormat::parse("ftrace", t, layout.long_size()).ok())
            .find(|f| &*f.name == "print");
        for t in &meta.ftrace_formats {
            let _ = formats.add_text("ftrace", t);
        }
        let watermarks =
            perf_cpus.map(|c| c.into_iter().map(|cpu| (cpu, 0)).collect()).unwrap_or_default();
        Ok(Self {
            meta,
            layout,
            formats: Arc::new(formats),
            keep: u64::try_from(keep.as_nanos()).unwrap_or(u64::MAX),
            history: BTreeMap::new(),
            packers: perf_pids.is_some().then(BTreeMap::new),
            identity_only: perf_pids,
            print,
            last_identity: None,
            scanner: crate::identity::Scanner::default(),
            watermarks,
            pending: BTreeMap::new(),
            pids: std::collections::HashSet::new(),
            last_pid: 0,
            lost: 0,
            comms: BTreeMap::new(),
            newest: 0,
            spare_rx,
            buffers,
        })
    }

    /// Reads `input` (tracefs readers' pages, or the perf session's batches as they come: no
    /// thread in between) until it ends.
    fn run<T>(
        mut self,
        input: &Receiver<T>,
        raw: impl Fn(T) -> Raw,
        commands: &Receiver<Command>,
        out: &Sender<LiveBatch>,
    ) {
        let mut last_tick = Instant::now();
        loop {
            // Nothing to do before the next tick unless input or a command comes: sleeping
            // until then (rather than waking every 20 ms) is most of an idle capture's cost.
            // A dump waits at most a tick; readers send at least every 100 ms anyway.
            let until_tick = TICK.saturating_sub(last_tick.elapsed()).max(Duration::from_millis(1));
            match input.recv_timeout(until_tick) {
                Ok(r) => self.raw(raw(r)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.release(u64::MAX, out);
                    // Answer dumps until the capture is dropped.
                    while let Ok(cmd) = commands.recv() {
                        self.command(cmd);
                    }
                    return;
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                self.command(cmd);
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.identity();
                let low = self.watermarks.values().copied().min().unwrap_or(0);
                let stale = perf::clock_now(MONO)
                    .saturating_sub(u64::try_from(HOLDBACK.as_nanos()).unwrap_or(0));
                if !self.release(low.max(stale), out) {
                    return;
                }
                self.prune();
            }
        }
    }

    fn raw(&mut self, raw: Raw) {
        match raw {
            Raw::Idle { cpu, watermark } => {
                let w = self.watermarks.entry(cpu).or_default();
                *w = (*w).max(watermark);
            }
            Raw::Page { cpu, page } => self.page(cpu, page),
            Raw::Perf(batch) => {
                self.perf(&batch);
                self.buffers.give(batch.records);
            }
        }
    }

    fn page(&mut self, cpu: u32, page: Vec<u8>) {
        let Ok(records) = PageRecords::new(&self.layout, &page) else {
            self.buffers.give(page);
            return;
        };
        let mut newest = None;
        for item in records {
            match item {
                Ok(PageItem::Event { ts, payload, .. }) => {
                    newest = Some(ts);
                    let pid = self.formats.pid(payload).unwrap_or(-1);
                    let kind = match self.formats.decode(payload) {
                        Ok(k) => k,
                        Err(_) => continue,
                    };
                    self.seen(pid);
                    self.push(Event { ts, cpu, pid, tgid: None, comm: None, kind });
                }
                Ok(PageItem::Lost { ts, count }) => {
                    self.lost += count.unwrap_or(1);
                    self.push(Event {
                        ts,
                        cpu,
                        pid: -1,
                        tgid: None,
                        comm: None,
                        kind: EventKind::Lost { count },
                    });
                }
                Err(_) => break,
            }
        }
        if let Some(ts) = newest {
            let w = self.watermarks.entry(cpu).or_default();
            *w = (*w).max(ts);
            self.newest = self.newest.max(ts);
            self.history.entry(cpu).or_default().pages.push_back((ts, page));
        } else {
            self.buffers.give(page);
        }
    }

    fn perf(&mut self, batch: &perf::Batch) {
        let cpu = batch.cpu;
        // The CPU's queue and packer are taken out for the batch (one map lookup per batch,
        // not three per event) and put back after it.
        let mut queue = self.pending.remove(&cpu).unwrap_or_default();
        let layout = self.layout;
        let mut packer =
            self.packers.as_mut().map(|p| p.remove(&cpu).unwrap_or_else(|| CpuPacker::new(layout)));
        let mut newest = None;
        for rec in perf::records(&batch.records) {
            match perf::kind_of(rec.kind) {
                RecordKind::Sample => {
                    let Some(s) = Sample::parse(rec.body()) else { continue };
                    let Ok(kind) = self.formats.decode(s.raw) else { continue };
                    self.seen(s.tid);
                    queue.push_back(Event {
                        ts: s.time,
                        cpu,
                        pid: s.tid,
                        tgid: Some(s.pid).filter(|p| *p > 0),
                        comm: None,
                        kind,
                    });
                    if let Some(p) = packer.as_mut() {
                        let open_newest = p.newest();
                        if let (Ok(Some(page)), Some(open_newest)) =
                            (p.event(s.time, s.raw), open_newest)
                        {
                            self.keep_page(cpu, open_newest, page);
                        }
                    }
                    newest = newest.max(Some(s.time));
                }
                RecordKind::Lost => {
                    let Some((ts, n)) = perf::lost(rec.body()) else { continue };
                    self.lost += n;
                    queue.push_back(Event {
                        ts,
                        cpu,
                        pid: -1,
                        tgid: None,
                        comm: None,
                        kind: EventKind::Lost { count: Some(n) },
                    });
                    if let Some(p) = packer.as_mut() {
                        let open_newest = p.newest();
                        if let (Some(page), Some(open_newest)) = (p.lost(ts, Some(n)), open_newest)
                        {
                            self.keep_page(cpu, open_newest, page);
                        }
                    }
                }
                RecordKind::Comm => {
                    if let Some((tid, name)) = perf::comm(rec.body()) {
                        self.comms.insert(tid, Some(Comm::from(name)));
                    }
                }
                RecordKind::Other => {}
            }
        }
        self.pending.insert(cpu, queue);
        if let (Some(packers), Some(p)) = (self.packers.as_mut(), packer) {
            packers.insert(cpu, p);
        }
        if let Some(ts) = newest {
            self.newest = self.newest.max(ts);
        }
        if let Some(w) = newest.max(batch.watermark) {
            let e = self.watermarks.entry(cpu).or_default();
            *e = (*e).max(w);
        }
    }

    fn pack(&mut self, cpu: u32, ts: u64, payload: &[u8]) {
        let layout = self.layout;
        let Some(packers) = self.packers.as_mut() else { return };
        let packer = packers.entry(cpu).or_insert_with(|| CpuPacker::new(layout));
        let newest = packer.newest();
        if let (Ok(Some(page)), Some(newest)) = (packer.event(ts, payload), newest) {
            self.keep_page(cpu, newest, page);
        }
        self.newest = self.newest.max(ts);
    }

    /// perf: keeps a packed page whose newest record is at `newest` (the packer's, known
    /// without parsing the page again).
    fn keep_page(&mut self, cpu: u32, newest: u64, page: Vec<u8>) {
        self.history.entry(cpu).or_default().pages.push_back((newest, page));
    }

    /// Notes a thread for the dump's cmdlines (events carry no comm: nothing downstream of
    /// the live view needs one, and resolving it per event would cost more than the rest).
    fn seen(&mut self, pid: i32) {
        if pid != self.last_pid {
            self.last_pid = pid;
            self.pids.insert(pid);
        }
    }

    fn push(&mut self, event: Event) {
        self.pending.entry(event.cpu).or_default().push_back(event);
    }

    /// perf: the identity lines of VMM threads, as `ftrace:print` events (and in the history).
    fn identity(&mut self) {
        let Some(only) = &self.identity_only else { return };
        if self.last_identity.is_some_and(|t| t.elapsed() < crate::identity::RESCAN) {
            return;
        }
        self.last_identity = Some(Instant::now());
        let found = self.scanner.scan(Path::new("/proc"), only);
        let ts = perf::clock_now(MONO);
        let cpu = 0;
        for id in found {
            let Some(payload) = self.print_record(&id.to_line()) else { continue };
            if let Ok(kind) = self.formats.decode(&payload) {
                self.push(Event { ts, cpu, pid: -1, tgid: None, comm: None, kind });
            }
            self.pack(cpu, ts, &payload);
        }
    }

    fn print_record(&self, line: &str) -> Option<Vec<u8>> {
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        perf::print_payload(self.print.as_ref()?, line, pid)
    }

    /// Sends the events at or before `upto`, merged in time order (each CPU's are in order
    /// already); false when the receiver is gone.
    fn release(&mut self, upto: u64, out: &Sender<LiveBatch>) -> bool {
        // Sized once: growing it by doubling moved and faulted in fresh memory at every release
        // (a fifth of `vmxray top`'s CPU time at 500k events/s); and a vector given back when
        // there is one, whose memory is already faulted in.
        // The largest vector given back is reused, the others freed; the events still in them
        // are dropped here, on the thread that allocated their fields.
        let wanted = self.pending.values().map(VecDeque::len).sum();
        let mut events = self.spare_rx.try_iter().max_by_key(Vec::capacity).unwrap_or_default();
        events.clear();
        events.reserve(wanted);
        merge_upto(&mut self.pending, upto, &mut events);
        if events.is_empty() && self.lost == 0 {
            return true;
        }
        let lost = std::mem::take(&mut self.lost);
        out.send(LiveBatch { events, lost }).is_ok()
    }

    fn prune(&mut self) {
        let oldest = self.newest.saturating_sub(self.keep);
        for h in self.history.values_mut() {
            while h.pages.len() > 1 && h.pages.front().is_some_and(|(ts, _)| *ts < oldest) {
                // tracefs pages go back to the readers (perf's are packed here, and its pool
                // holds batch buffers).
                if let Some((_, page)) = h.pages.pop_front()
                    && self.packers.is_none()
                {
                    self.buffers.give(page);
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Dump { path, last, reply } => {
                let _ = reply.send(self.dump(&path, last));
            }
        }
    }

    fn dump(&mut self, path: &Path, last: Duration) -> Result<DumpReport, RecordError> {
        // perf: close the open pages so the dump has everything received.
        if let Some(packers) = self.packers.as_mut() {
            let open: Vec<(u32, u64, Vec<u8>)> = packers
                .iter_mut()
                .filter_map(|(cpu, p)| {
                    let newest = p.newest()?;
                    Some((*cpu, newest, p.flush()?))
                })
                .collect();
            for (cpu, newest, page) in open {
                self.keep_page(cpu, newest, page);
            }
        }
        let from = self.newest.saturating_sub(u64::try_from(last.as_nanos()).unwrap_or(u64::MAX));
        let mut meta = self.meta.clone();
        meta.trace_id ^= self.newest;
        let mut writer = TraceDatWriter::create(path, meta, Default::default())?;
        let mut span = (u64::MAX, 0u64);
        for (cpu, h) in &self.history {
            for (ts, page) in &h.pages {
                if *ts < from {
                    continue;
                }
                writer.write_page(*cpu, page)?;
                span = (span.0.min(*ts), span.1.max(*ts));
            }
        }
        let mut pids: Vec<i32> = self.pids.iter().copied().filter(|p| *p > 0).collect();
        pids.sort_unstable();
        let cmdlines: String = pids
            .into_iter()
            .filter_map(|pid| {
                let known = self.comms.get(&pid).cloned().flatten();
                let comm = known.map(|c| c.to_string()).or_else(|| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .ok()
                        .map(|c| c.trim_end().to_string())
                })?;
                Some(format!("{pid} {comm}\n"))
            })
            .collect();
        let summary = writer.finish(Some(cmdlines.as_bytes()), &[])?;
        if span.0 == u64::MAX {
            span = (0, 0);
        }
        Ok(DumpReport { path: path.to_path_buf(), span, summary })
    }
}

/// Moves the events at or before `upto` out of the per-CPU queues (each in time order) into
/// `out`, merged in time order; ties go to the lower CPU, as trace.dat readers order them.
///
/// The CPU whose next event is the oldest gives a run of events, up to the next event of the
/// others: a CPU's events come in runs, and looking for the oldest front per event was a
/// twentieth of `vmxray top`'s CPU time.
fn merge_upto(pending: &mut BTreeMap<u32, VecDeque<Event>>, upto: u64, out: &mut Vec<Event>) {
    loop {
        // The oldest eligible front (ts, cpu), and the oldest of the other CPUs'.
        let mut first: Option<(u64, u32)> = None;
        let mut second: Option<(u64, u32)> = None;
        for (cpu, q) in pending.iter() {
            let Some(front) = q.front().map(|e| (e.ts, *cpu)) else { continue };
            if front.0 > upto {
                continue;
            }
            if first.is_none_or(|f| front < f) {
                second = first;
                first = Some(front);
            } else if second.is_none_or(|s| front < s) {
                second = Some(front);
            }
        }
        let Some((_, cpu)) = first else { return };
        let Some(queue) = pending.get_mut(&cpu) else { return };
        while let Some(ts) = queue.front().map(|e| e.ts) {
            if ts > upto || second.is_some_and(|s| (ts, cpu) > s) {
                break;
            }
            if let Some(e) = queue.pop_front() {
                out.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: u64, cpu: u32) -> Event {
        Event { ts, cpu, pid: 1, tgid: None, comm: None, kind: EventKind::Lost { count: None } }
    }

    /// The merge one event at a time (the oldest front first, ties to the lower CPU).
    fn merge_one_by_one(pending: &mut BTreeMap<u32, VecDeque<Event>>, upto: u64) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let next = pending
                .iter()
                .filter_map(|(cpu, q)| Some((q.front()?.ts, *cpu)))
                .filter(|(ts, _)| *ts <= upto)
                .min();
            let Some((_, cpu)) = next else { return out };
            out.extend(pending.get_mut(&cpu).and_then(VecDeque::pop_front));
        }
    }

    #[test]
    fn runs_merge_as_one_event_at_a_time_would() {
        // Runs, ties across CPUs, a CPU with nothing, and events past `upto` left queued.
        let per_cpu: [&[u64]; 4] =
            [&[1, 2, 3, 10, 11, 20, 30], &[3, 4, 5, 6, 10, 25, 31], &[], &[0, 10, 10, 29, 40]];
        for upto in [0, 3, 10, 29, 30, 100] {
            let build = || -> BTreeMap<u32, VecDeque<Event>> {
                (0u32..)
                    .zip(per_cpu)
                    .map(|(cpu, ts)| (cpu, ts.iter().map(|t| event(*t, cpu)).collect()))
                    .collect()
            };
            let (mut a, mut b) = (build(), build());
            let mut runs = Vec::new();
            merge_upto(&mut a, upto, &mut runs);
            let single = merge_one_by_one(&mut b, upto);
            let key = |v: &[Event]| v.iter().map(|e| (e.ts, e.cpu)).collect::<Vec<_>>();
            assert_eq!(key(&runs), key(&single), "upto {upto}");
            assert!(runs.windows(2).all(|w| (w[0].ts, w[0].cpu) <= (w[1].ts, w[1].cpu)));
            let left =
                |m: &BTreeMap<u32, VecDeque<Event>>| m.values().map(VecDeque::len).sum::<usize>();
            assert_eq!(left(&a), left(&b));
            assert_eq!(runs.len() + left(&a), per_cpu.iter().map(|c| c.len()).sum::<usize>());
        }
    }
}
