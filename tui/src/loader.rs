//! Reading, replaying and counting a trace on a background thread.
//!
//! The loader opens the input with `vmxray_capture` and runs the one pass of every command
//! (`vmxray_analyze::pass::Pass`: the replay model and the exit statistics) with a sink that
//! keeps a model snapshot every [`CHECKPOINT_INTERVAL`] events and tags each event, and sends
//! the events to the UI in [`Chunk`]s. The first
//! chunk is small so that the first screen appears at once; later chunks grow to
//! [`CHUNK_LEN`] events. The UI thread never waits on it: it drains the channel between frames.
//!
//! ```text
//!  loader thread                                   UI thread
//!  open ─► for each event:                         loop {
//!            snapshot every 2048 ─┐                  drain channel ─► Trace::apply
//!            Pass::step (model,   ├─ Chunk ──mpsc──► draw visible rows only
//!            stats) + tags ───────┘                  poll keys/mouse (50 ms)
//!          finish ─► Done { stats, summary }       }
//! ```

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use vmxray_analyze::pass::{Pass, PassConfig, Sink, Stepped};
use vmxray_analyze::stats::{ExitStats, StatsReport};
use vmxray_capture::printfmt::PrintCatalog;
use vmxray_capture::read::text::TextReader;
use vmxray_capture::{Clock, EventReader, InputFormat, ReadOptions, ReadStats, TraceMeta};
use vmxray_events::{Event, EventKind};
use vmxray_replay::{Actor, Anomaly, CrashKind, Level, Model, TraceSummary, triage};

use crate::trace::{CHECKPOINT_INTERVAL, CHUNK_LEN, EventTag, Tier, Trace};

/// The sample opened by `vmxray tui` without a file: the simulated Muen-like separation kernel
/// on a KVM with the 04f11ef45810 bug (stale vmcs02.GUEST_CR3), which shows a critical
/// `changed_subject_cr3`, `hlt_cancelled_exit_state` and stale guest_mmu roots. It is embedded
/// in the binary so that an installed `vmxray` needs no file beside it.
pub const BUNDLED_SAMPLE: &str = include_str!("../../samples/sim/muen-buggy-6.1.txt");
/// How the bundled sample is named on screen.
pub const BUNDLED_NAME: &str = "muen-buggy-6.1.txt (bundled sample)";

/// What to browse.
#[derive(Debug)]
pub enum Source {
    /// A trace file in any format `vmxray_capture::open` recognizes (`-` for stdin).
    File(PathBuf),
    /// The bundled sample ([`BUNDLED_SAMPLE`]).
    Bundled,
    /// Events already in memory (benchmarks, generated traces).
    Events {
        /// How the trace is named on screen.
        name: String,
        /// The events' clock.
        clock: Clock,
        /// The events, in time order.
        events: Vec<Event>,
    },
}

/// One batch of loaded events with what the model and the crash detector said about them.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The events.
    pub events: Vec<Event>,
    /// One tag per event.
    pub tags: Vec<EventTag>,
    /// Anomalies reported on these events.
    pub anomalies: Vec<Anomaly>,
    /// Fatal events among them.
    pub crashes: Vec<(u64, CrashKind)>,
    /// Lost-event markers among them.
    pub lost: Vec<u64>,
    /// Model snapshots taken before events at multiples of [`CHECKPOINT_INTERVAL`].
    pub snapshots: Vec<Model>,
    /// Actors first seen in this chunk (tags index the concatenation).
    pub actors: Vec<Actor>,
    /// Time since the loader started.
    pub elapsed: Duration,
}

/// A message from the loader.
#[derive(Debug)]
pub enum LoadMsg {
    /// The input is open.
    Meta(TraceMeta),
    /// The print fmts the input carries (binary traces), for the detail view's text.
    Print(Arc<PrintCatalog>),
    /// More events.
    Chunk(Chunk),
    /// Everything is read.
    Done {
        /// The `vmxray stats` report.
        stats: Box<StatsReport>,
        /// The model's summary.
        summary: Box<TraceSummary>,
        /// What reading counted.
        read: Box<ReadStats>,
        /// Total loading time.
        elapsed: Duration,
    },
    /// Reading stopped on an error (the events before it were sent).
    Failed(String),
}

/// Starts the loader thread; the UI drains the returned channel.
pub fn spawn(source: Source) -> Receiver<LoadMsg> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("vmxray-loader".into()).spawn({
        let tx = tx.clone();
        move || load(source, &tx)
    });
    if let Err(e) = spawned {
        let _ = tx.send(LoadMsg::Failed(format!("Cannot start the loader thread: {e}")));
    }
    rx
}

/// Loads a whole trace on the calling thread (tests, examples).
pub fn load_all(source: Source) -> Trace {
    let (tx, rx) = mpsc::channel();
    load(source, &tx);
    drop(tx);
    let mut trace = Trace::default();
    for msg in rx {
        trace.apply(msg);
    }
    trace
}

/// The first chunk is small (first screen fast), later ones grow to a full storage chunk.
const FIRST_BATCH: usize = 2048;
/// A partial chunk is sent when this much time passed since the last one.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Runs the loader: opens `source`, sends everything to `tx`. Stops early when the receiver
/// is gone (the UI quit).
pub fn load(source: Source, tx: &Sender<LoadMsg>) {
    let started = Instant::now();
    let opts = ReadOptions { permissive: true };
    match source {
        Source::File(path) => match vmxray_capture::open(&path, opts) {
            Ok(reader) => run_reader(reader, tx, started),
            Err(e) => {
                let _ = tx.send(LoadMsg::Failed(format!("Cannot open {}: {e}", path.display())));
            }
        },
        Source::Bundled => {
            let reader =
                TextReader::new(BUNDLED_NAME, Cursor::new(BUNDLED_SAMPLE.as_bytes()), opts);
            run_reader(Box::new(reader), tx, started);
        }
        Source::Events { name, clock, events } => {
            let meta = TraceMeta {
                input: Arc::from(name.as_str()),
                format: InputFormat::FtraceText,
                clock,
                cpus: None,
                kernel: None,
            };
            let mut pipeline = Pipeline::new(tx, started);
            if tx.send(LoadMsg::Meta(meta.clone())).is_err() {
                return;
            }
            for event in events {
                if !pipeline.push(event) {
                    return;
                }
            }
            pipeline.finish(&meta, &ReadStats::default());
        }
    }
}

fn run_reader(mut reader: Box<dyn EventReader>, tx: &Sender<LoadMsg>, started: Instant) {
    if tx.send(LoadMsg::Meta(reader.meta().clone())).is_err() {
        return;
    }
    if let Some(formats) = reader.event_formats()
        && tx.send(LoadMsg::Print(Arc::new(PrintCatalog::new(formats)))).is_err()
    {
        return;
    }
    let mut pipeline = Pipeline::new(tx, started);
    for item in reader.by_ref() {
        match item {
            Ok(event) => {
                if !pipeline.push(event) {
                    return;
                }
            }
            Err(e) => {
                pipeline.flush();
                let _ = tx.send(LoadMsg::Failed(e.to_string()));
                return;
            }
        }
    }
    let meta = reader.meta().clone();
    pipeline.finish(&meta, reader.stats());
}

/// The pass (model and statistics) and the chunk being filled.
struct Pipeline<'a> {
    tx: &'a Sender<LoadMsg>,
    started: Instant,
    pass: Pass,
    tagger: Tagger,
    batch: usize,
    /// Flush at this many events: the batch size, cut at the storage-chunk boundary so that
    /// every message after the first storage chunk is one whole chunk the UI keeps as is.
    limit: usize,
    last_flush: Instant,
    /// The receiver is gone.
    closed: bool,
}

/// The pass's sink: tags each event, collects anomalies, crashes, lost markers and model
/// snapshots into the chunk being filled.
#[derive(Default)]
struct Tagger {
    actor_ids: HashMap<Actor, u16>,
    chunk: Chunk,
}

impl Sink for Tagger {
    fn before(&mut self, model: &Model) {
        if model.next_index().0.is_multiple_of(CHECKPOINT_INTERVAL) {
            self.chunk.snapshots.push(model.snapshot());
        }
    }

    fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
        let event = s.event;
        let index = s.step.at.0;
        let crash = triage::fatal(&event.kind);
        let lost = matches!(event.kind, EventKind::Lost { .. });
        let hw_exit = matches!(event.kind, EventKind::KvmExit(_) | EventKind::KvmNestedVmexit(_));
        let anomaly = !s.step.anomalies.is_empty();
        if anomaly {
            self.chunk.anomalies.extend_from_slice(s.step.anomalies);
        }
        let tier = if hw_exit {
            Tier::L0Exit
        } else {
            match s.level() {
                Some(Level::L1) => Tier::L1,
                Some(Level::L2) => Tier::L2,
                None => Tier::Unknown,
            }
        };
        let actor_id = s.step.actor.map_or(EventTag::NO_ACTOR, |a| self.actor_id(a));
        if let Some(kind) = crash {
            self.chunk.crashes.push((index, kind));
        }
        if lost {
            self.chunk.lost.push(index);
        }
        self.chunk.tags.push(EventTag::new(actor_id, tier, anomaly, crash.is_some(), lost));
        ControlFlow::Continue(())
    }

    /// The anomalies of the trace's end join the last chunk.
    fn end(&mut self, anomalies: &[vmxray_replay::Anomaly], _model: &Model) {
        self.chunk.anomalies.extend_from_slice(anomalies);
    }
}

impl Tagger {
    fn actor_id(&mut self, actor: Actor) -> u16 {
        let next = self.actor_ids.len();
        *self.actor_ids.entry(actor).or_insert_with(|| {
            self.chunk.actors.push(actor);
            u16::try_from(next).unwrap_or(EventTag::NO_ACTOR)
        })
    }
}

impl<'a> Pipeline<'a> {
    fn new(tx: &'a Sender<LoadMsg>, started: Instant) -> Self {
        Self {
            tx,
            started,
            pass: Pass::new(PassConfig::default()),
            tagger: Tagger::default(),
            batch: FIRST_BATCH,
            limit: FIRST_BATCH,
            last_flush: Instant::now(),
            closed: false,
        }
    }

    /// Steps one event; false once the UI is gone.
    fn push(&mut self, event: Event) -> bool {
        let _ = self.pass.step(&event, &mut self.tagger);
        self.tagger.chunk.events.push(event);
        if self.tagger.chunk.events.len() >= self.limit || self.last_flush.elapsed() >= FLUSH_EVERY
        {
            self.batch = (self.batch * 4).min(CHUNK_LEN);
            self.flush();
        }
        !self.closed
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.tagger.chunk.events.is_empty() && self.tagger.chunk.anomalies.is_empty() {
            return;
        }
        let mut chunk = std::mem::take(&mut self.tagger.chunk);
        chunk.elapsed = self.started.elapsed();
        let next = usize::try_from(self.pass.model().next_index().0).unwrap_or(0);
        self.limit = self.batch.min(CHUNK_LEN - next % CHUNK_LEN);
        self.tagger.chunk.events = Vec::with_capacity(self.limit);
        self.tagger.chunk.tags = Vec::with_capacity(self.limit);
        if self.tx.send(LoadMsg::Chunk(chunk)).is_err() {
            self.closed = true;
        }
    }

    fn finish(mut self, meta: &TraceMeta, read: &ReadStats) {
        self.pass.end(&mut self.tagger);
        self.flush();
        let end = self.pass.finish(Some(meta), Some(read));
        // The TUI's pass keeps statistics (PassConfig::default is StatsMode::Report).
        let report = end.stats.unwrap_or_else(|| ExitStats::new().finish(Some(meta), Some(read)));
        let _ = self.tx.send(LoadMsg::Done {
            stats: Box::new(report),
            summary: Box::new(end.summary),
            read: Box::new(read.clone()),
            elapsed: self.started.elapsed(),
        });
    }
}
