//! Reading, replaying and counting a trace on a background thread, building the index the
//! views browse (see [`crate::trace`]).
//!
//! The loader runs the one pass of every command (`vmxray_analyze::pass::Pass`: the replay
//! model; the exit statistics and the host context on a second thread,
//! `vmxray_analyze::stage::StatsStage`, fed with the stepped events) with a sink that cuts the
//! stream into [`Block`]s and records where each starts in the file, keeps a model snapshot at
//! every few blocks, numbers the actors and collects the anomalies. The lanes' [`Bucket`]s,
//! crashes and lost markers are counted on the statistics thread too ([`crate::tally`]): the
//! loader's thread is the one the load waits for. A trace.dat's events are read where the
//! decoder wrote them, by the model and then by the statistics thread, which gets the decoded
//! batch itself and a note per event (`vmxray_capture::read::SharedBatch`): the loader's
//! thread copies no event. The events themselves are dropped after the
//! pass (except for inputs that cannot be read twice: stdin, perf.data, tracefs copies, the
//! bundled sample, events in memory, whose blocks keep their events). The UI thread never
//! waits on it: it drains the channel between frames.
//!
//! ```text
//!  loader thread                                      UI thread
//!  open ─► Opened { meta, backing } ───────────────►  Trace::apply
//!  for each event:                                    loop {
//!    block start: positions (trace.dat: lane chunk      drain channel ─► Trace::apply
//!      and skip; text: byte offset), snapshot           draw visible rows only (decoded
//!    Pass::step (model) ─► actor number, anomalies,       on demand from the file)
//!      note (level, worst anomaly)                      poll keys/mouse (50 ms)
//!    event (or its place) + note ─► StatsStage (stats thread:
//!      ExitStats, HostContext, Tally: buckets,
//!      crashes, lost; they and the exit contexts
//!      join the next Batch) ── Batch every 100 ms ──mpsc──►
//!  finish ─► Done { stats, summary } ──────────────►  }
//! ```

use std::collections::HashMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use vmxray_analyze::context::{ExitContext, HostContext};
use vmxray_analyze::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use vmxray_analyze::stage::StatsStage;
use vmxray_analyze::stats::{ExitStats, StatsReport};
use vmxray_capture::printfmt::PrintCatalog;
use vmxray_capture::read::open::{InputKind, Magic, detect};
use vmxray_capture::read::text::TextReader;
use vmxray_capture::read::tracedat::{ChunkCounts, LanePos, TraceDat, TraceDatReader};
use vmxray_capture::read::{SharedBatch, Taken};
use vmxray_capture::{
    Clock, EventReader, InputFormat, ReadError, ReadOptions, ReadStats, TraceMeta,
};
use vmxray_events::{CPU_HINTS, Event};
use vmxray_replay::{Actor, Anomaly, CrashKind, Model, TraceSummary, triage};

use crate::sidecar::{self, Sidecar};
use crate::store::{BLOCK_EVENTS, Backing, Block, BlockPos, Store, TEXT_BLOCK_BYTES};
use crate::summary::{Bucket, Lanes};
use crate::tally::{Found, Note, Tally};
use crate::trace::{EventTag, Trace};

/// The sample opened by `vmxray tui` without a file: the simulated Muen-like separation kernel
/// on a KVM with the 04f11ef45810 bug (stale vmcs02.GUEST_CR3), which shows a critical
/// `changed_subject_cr3`, `hlt_cancelled_exit_state` and stale guest_mmu roots. It is embedded
/// in the binary so that an installed `vmxray` needs no file beside it.
pub const BUNDLED_SAMPLE: &str = include_str!("../../samples/sim/muen-buggy-6.1.txt");
/// How the bundled sample is named on screen.
pub const BUNDLED_NAME: &str = "muen-buggy-6.1.txt (bundled sample)";

/// Blocks between two model snapshots (trace.dat and in-memory traces; every text block has
/// one): the State view and the tags replay at most this many blocks.
pub const CHECKPOINT_BLOCKS: u64 = 8;

/// What to browse.
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
    /// Events produced as the loader takes them (a generator, a feed; tests hold one back to
    /// see what is on screen before the index is complete), kept in memory like
    /// [`Source::Events`].
    Stream {
        /// How the trace is named on screen.
        name: String,
        /// The events' clock.
        clock: Clock,
        /// The events, in time order.
        events: Box<dyn Iterator<Item = Event> + Send>,
        /// How many events to expect, for the progress bar (percent and time left).
        expected: Option<u64>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Bundled => f.write_str("Bundled"),
            Self::Events { name, events, .. } => {
                f.debug_struct("Events").field("name", name).field("events", &events.len()).finish()
            }
            Self::Stream { name, expected, .. } => {
                f.debug_struct("Stream").field("name", name).field("expected", expected).finish()
            }
        }
    }
}

/// What the pass found in a stretch of the trace.
#[derive(Debug, Default)]
pub struct Batch {
    /// Completed blocks.
    pub blocks: Vec<Block>,
    /// Completed lane buckets ([`crate::summary::FINE_EVENTS`] events each).
    pub buckets: Vec<Bucket>,
    /// Anomalies reported on these events.
    pub anomalies: Vec<Anomaly>,
    /// Fatal events among them.
    pub crashes: Vec<(u64, CrashKind)>,
    /// Lost-event markers among them.
    pub lost: Vec<u64>,
    /// Model snapshots at block starts, by event index.
    pub snapshots: Vec<(u64, Model)>,
    /// Actors first seen in this stretch (actor numbers continue the earlier ones).
    pub actors: Vec<Actor>,
    /// Events read so far.
    pub events: u64,
    /// How much of the input is read (0–1), when known.
    pub fraction: Option<f64>,
    /// Host context of the exits whose entry came in this chunk (traces with host events).
    pub contexts: Vec<ExitContext>,
    /// Time since the loader started.
    pub elapsed: Duration,
}

impl Batch {
    /// Joins what the tally found.
    fn add(&mut self, found: Found) {
        self.buckets.extend(found.buckets);
        self.crashes.extend(found.crashes);
        self.lost.extend(found.lost);
    }
}

/// A message from the loader.
#[derive(Debug)]
pub enum LoadMsg {
    /// The input is open: what it says about itself, and where the blocks' events are.
    Opened {
        /// The input's metadata.
        meta: TraceMeta,
        /// The file behind the blocks.
        backing: Backing,
    },
    /// The print fmts the input carries (binary traces), for the detail view's text.
    Print(Arc<PrintCatalog>),
    /// More of the index.
    Batch(Batch),
    /// Everything is read.
    Done {
        /// The `vmxray stats` report.
        stats: Box<StatsReport>,
        /// The model's summary (None when the index came from a saved `.vmxidx`).
        summary: Option<Box<TraceSummary>>,
        /// What reading counted.
        read: Box<ReadStats>,
        /// Total loading time.
        elapsed: Duration,
    },
    /// Reading stopped on an error (the events before it stay browsable).
    Failed(String),
    /// The index came from a saved `.vmxidx`: model snapshots rebuilt by a background replay
    /// (the State view and the rows' levels appear as they arrive).
    Checkpoints {
        /// Snapshots at block starts, by event index.
        snapshots: Vec<(u64, Model)>,
        /// How far the replay got (0–1).
        fraction: f64,
        /// Time since the replay started.
        elapsed: Duration,
    },
    /// Where the index was saved or loaded from (or why it was not saved).
    Note(String),
    /// The lanes' summaries all at once (from a saved index).
    Lanes(Lanes),
}

/// How the loader treats the saved index of a trace file (`FILE.vmxidx`, [`crate::sidecar`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Open from a valid saved index instead of reading the trace.
    pub use_index: bool,
    /// Save the index after a full read (trace.dat and text files).
    pub save_index: bool,
}

impl LoadOptions {
    /// What `vmxray tui` does: use and save the index.
    pub const INDEXED: Self = Self { use_index: true, save_index: true };
    /// Always read the trace, save nothing (tests).
    pub const READ_ONLY: Self = Self { use_index: false, save_index: false };
}

/// Starts the loader thread (using and saving the index); the UI drains the returned channel.
pub fn spawn(source: Source) -> Receiver<LoadMsg> {
    spawn_with(source, LoadOptions::INDEXED)
}

/// Starts the loader thread with these options.
pub fn spawn_with(source: Source, opts: LoadOptions) -> Receiver<LoadMsg> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("vmxray-loader".into()).spawn({
        let tx = tx.clone();
        move || load_with(source, &tx, opts)
    });
    if let Err(e) = spawned {
        let _ = tx.send(LoadMsg::Failed(format!("Cannot start the loader thread: {e}")));
    }
    rx
}

/// Loads a whole trace on the calling thread, neither using nor saving an index (tests,
/// examples).
pub fn load_all(source: Source) -> Trace {
    load_all_with(source, LoadOptions::READ_ONLY)
}

/// Loads a whole trace on the calling thread with these options.
pub fn load_all_with(source: Source, opts: LoadOptions) -> Trace {
    let (tx, rx) = mpsc::channel();
    load_with(source, &tx, opts);
    drop(tx);
    let mut trace = Trace::default();
    for msg in rx {
        trace.apply(msg);
    }
    trace
}

/// A batch is sent when this much time passed since the last one (the first one as soon as a
/// block is complete, so that the first screen comes at once).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Runs the loader (using and saving the index): opens `source`, sends everything to `tx`.
/// Stops early when the receiver is gone (the UI quit).
pub fn load(source: Source, tx: &Sender<LoadMsg>) {
    load_with(source, tx, LoadOptions::INDEXED);
}

/// Whether the text file at `path` is read whole through the excerpt reader, as
/// `vmxray_capture::open` reads it ([`vmxray_capture::read::text::read_as_excerpt`]).
fn maybe_excerpt(path: &Path) -> bool {
    use std::io::Read as _;
    let Ok(file) = std::fs::File::open(path) else { return false };
    let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
    // The first line is enough to tell a tool's file.
    let mut head = Vec::new();
    file.take(256).read_to_end(&mut head).is_ok()
        && vmxray_capture::read::text::read_as_excerpt(len, &head)
}

/// Runs the loader with these options.
pub fn load_with(source: Source, tx: &Sender<LoadMsg>, index: LoadOptions) {
    let started = Instant::now();
    let opts = ReadOptions { permissive: true, ..ReadOptions::default() };
    match source {
        Source::File(path) if path.as_os_str() != "-" => match detect(&path) {
            Ok(InputKind::Binary(Magic::TraceDat)) => load_dat(&path, tx, started, index),
            // Small text may be a pasted excerpt: read whole, through the excerpt reader's
            // joins and segments (what `vmxray_capture::open` does); larger text is indexed.
            Ok(InputKind::Text) if maybe_excerpt(&path) => {
                load_reader(vmxray_capture::open(&path, opts), &path, tx, started);
            }
            Ok(InputKind::Text) => load_text(&path, tx, started, index),
            Ok(_) => load_reader(vmxray_capture::open(&path, opts), &path, tx, started),
            Err(e) => {
                let _ = tx.send(LoadMsg::Failed(format!("Cannot open {}: {e}", path.display())));
            }
        },
        Source::File(path) => load_reader(vmxray_capture::open(&path, opts), &path, tx, started),
        Source::Bundled => {
            let reader = TextReader::new(BUNDLED_NAME, BUNDLED_SAMPLE.as_bytes(), opts);
            resident(Box::new(reader), tx, started);
        }
        Source::Events { name, clock, events } => {
            let expected = Some(events.len() as u64);
            in_memory(&name, clock, events.into_iter(), expected, tx, started);
        }
        Source::Stream { name, clock, events, expected } => {
            in_memory(&name, clock, events, expected, tx, started);
        }
    }
}

/// Events handed to the loader (kept resident): `expected` of them, when known.
fn in_memory(
    name: &str,
    clock: Clock,
    events: impl Iterator<Item = Event>,
    expected: Option<u64>,
    tx: &Sender<LoadMsg>,
    started: Instant,
) {
    let meta = TraceMeta {
        input: Arc::from(name),
        format: InputFormat::FtraceText,
        clock,
        cpus: None,
        kernel: None,
        excerpt: false,
    };
    if tx.send(LoadMsg::Opened { meta: meta.clone(), backing: Backing::Memory }).is_err() {
        return;
    }
    let mut pipeline = Pipeline::new(tx, started, Positions::Resident, InputFacts::IN_MEMORY);
    for (k, event) in events.enumerate() {
        let fraction = expected.filter(|n| *n > 0).map(|n| (k as f64 / n as f64).min(1.0));
        if !pipeline.push(event, fraction) {
            return;
        }
    }
    pipeline.finish(&meta, &ReadStats::default());
}

fn load_reader(
    reader: Result<Box<dyn EventReader>, ReadError>,
    path: &Path,
    tx: &Sender<LoadMsg>,
    started: Instant,
) {
    match reader {
        Ok(reader) => resident(reader, tx, started),
        Err(e) => {
            let _ = tx.send(LoadMsg::Failed(format!("Cannot open {}: {e}", path.display())));
        }
    }
}

/// An input read once: its blocks keep their events.
fn resident(mut reader: Box<dyn EventReader>, tx: &Sender<LoadMsg>, started: Instant) {
    let meta = reader.meta().clone();
    if tx.send(LoadMsg::Opened { meta, backing: Backing::Memory }).is_err() {
        return;
    }
    if let Some(formats) = reader.event_formats()
        && tx.send(LoadMsg::Print(Arc::new(PrintCatalog::new(formats)))).is_err()
    {
        return;
    }
    let facts = InputFacts::of(&*reader);
    let mut pipeline = Pipeline::new(tx, started, Positions::Resident, facts);
    if pipeline.push_all(&mut reader, || None) {
        let meta = reader.meta().clone();
        pipeline.finish(&meta, reader.stats());
    }
}

/// A trace.dat: blocks of [`BLOCK_EVENTS`] events, each with where every CPU lane's next event
/// is, found from the chunk counts the reader keeps as it decodes.
fn load_dat(path: &Path, tx: &Sender<LoadMsg>, started: Instant, index: LoadOptions) {
    if let Some(saved) = index.use_index.then(|| sidecar::load(path)).flatten() {
        match TraceDat::open_salvaging(path) {
            Ok(td) => {
                let td = Arc::new(td);
                let meta = td.meta(0);
                return from_sidecar(path, saved, meta, Backing::Dat(td), tx, started);
            }
            Err(e) => {
                let _ = tx.send(LoadMsg::Failed(format!("Cannot open {}: {e}", path.display())));
                return;
            }
        }
    }
    let opened = TraceDat::open_salvaging(path).map(Arc::new).and_then(|td| {
        let (reader, counts) =
            td.events_counted(0, ReadOptions { permissive: true, ..ReadOptions::default() })?;
        Ok((td, reader, counts))
    });
    let (td, reader, counts) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(LoadMsg::Failed(format!("Cannot open {}: {e}", path.display())));
            return;
        }
    };
    let lanes = td.lanes(0);
    let mut lane_of_cpu: Vec<(u32, usize)> =
        lanes.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    lane_of_cpu.sort_unstable();
    lane_of_cpu.dedup_by_key(|(cpu, _)| *cpu);
    if lane_of_cpu.len() != lanes.len() {
        // A CPU with several data runs: positions by CPU would be ambiguous.
        return resident(Box::new(reader), tx, started);
    }
    let meta = reader.meta().clone();
    let backing = Backing::Dat(Arc::clone(&td));
    if tx.send(LoadMsg::Opened { meta, backing }).is_err() {
        return;
    }
    if tx.send(LoadMsg::Print(Arc::new(PrintCatalog::new(&td.formats)))).is_err() {
        return;
    }
    let cursor = DatCursor::new(lanes.len(), counts);
    let lane_of_cpu = LaneOfCpu::new(lane_of_cpu);
    let positions = Positions::Dat { cursor, lane_of_cpu };
    let mut pipeline = Pipeline::new(tx, started, positions, InputFacts::of(&reader));
    pipeline.save_to = index.save_index.then(|| path.to_path_buf());
    let mut reader = reader.sharing();
    if pipeline.push_shared(&mut reader) {
        let meta = reader.meta().clone();
        pipeline.finish(&meta, reader.stats());
    }
}

/// Opens a trace from its saved index. What the first screen shows goes first and needs no
/// decoding: the blocks, anomalies, actors and lanes, and the model at the first event (the
/// first page's levels). The rest follows behind it: the crashes' kinds (read again from their
/// events, which may be anywhere in the file), then the model checkpoints rebuilt by a replay
/// (decode and model only).
///
/// ```text
///  sidecar ─► Opened, Print ─► Batch (blocks, anomalies, …) ─► Lanes ─► Checkpoints [0]
///    ─► Batch (crashes) ─► Done ─► Checkpoints … (the replay, with its progress)
/// ```
fn from_sidecar(
    path: &Path,
    saved: Sidecar,
    meta: TraceMeta,
    backing: Backing,
    tx: &Sender<LoadMsg>,
    started: Instant,
) {
    if tx.send(LoadMsg::Opened { meta, backing: backing.clone() }).is_err() {
        return;
    }
    if let Backing::Dat(td) = &backing
        && tx.send(LoadMsg::Print(Arc::new(PrintCatalog::new(&td.formats)))).is_err()
    {
        return;
    }
    let _ = tx.send(LoadMsg::Note(format!("Index loaded from {}", path.display())));
    let mut store = Store::default();
    store.set_backing(backing);
    store.extend(saved.blocks.iter().cloned());
    let lanes = Lanes::from_buckets(saved.buckets, saved.fine_per_bucket);
    let checkpoints: Vec<(u64, bool)> = {
        let text = saved.blocks.first().is_some_and(|b| matches!(b.pos, BlockPos::Text { .. }));
        saved
            .blocks
            .iter()
            .enumerate()
            .map(|(k, b)| (b.first, text || (k as u64).is_multiple_of(CHECKPOINT_BLOCKS)))
            .collect()
    };
    let batch = Batch {
        blocks: saved.blocks,
        buckets: Vec::new(),
        anomalies: saved.anomalies,
        crashes: Vec::new(),
        lost: saved.lost,
        snapshots: Vec::new(),
        actors: saved.actors,
        events: saved.events,
        fraction: Some(0.0),
        // The saved index keeps no host context: a breakdown needs a fresh open.
        contexts: Vec::new(),
        elapsed: started.elapsed(),
    };
    let first_checkpoint = LoadMsg::Checkpoints {
        snapshots: vec![(0, Model::default())],
        fraction: 0.0,
        elapsed: Duration::ZERO,
    };
    if tx.send(LoadMsg::Batch(batch)).is_err()
        || tx.send(LoadMsg::Lanes(lanes)).is_err()
        || tx.send(first_checkpoint).is_err()
    {
        return;
    }
    // The crashes' kinds, read again from their events.
    let crashes = saved
        .crashes
        .iter()
        .filter_map(|at| {
            let b = store.block_of(*at)?;
            let first = store.blocks().get(b)?.first;
            let events = store.events(b)?;
            let e = events.get(usize::try_from(at - first).ok()?)?;
            Some((*at, triage::fatal(&e.kind)?))
        })
        .collect();
    let crashes = Batch {
        crashes,
        events: saved.events,
        fraction: Some(1.0),
        elapsed: started.elapsed(),
        ..Batch::default()
    };
    if tx.send(LoadMsg::Batch(crashes)).is_err() {
        return;
    }
    let stats = saved.stats.unwrap_or_else(|| ExitStats::new().finish(None, None));
    if tx
        .send(LoadMsg::Done {
            stats: Box::new(stats),
            summary: None,
            read: Box::new(saved.read),
            elapsed: started.elapsed(),
        })
        .is_err()
    {
        return;
    }
    rebuild_checkpoints(&store, &checkpoints, saved.events, tx);
}

/// Replays the model over the whole trace, sending a snapshot at each checkpointed block
/// start (the same places the full pass takes them; the one at event 0 went with the index).
/// A trace.dat is read by one streaming reader (decoding ahead on the pool, as the full pass
/// does); a text file block by block, as its blocks were cut.
fn rebuild_checkpoints(store: &Store, blocks: &[(u64, bool)], total: u64, tx: &Sender<LoadMsg>) {
    let started = Instant::now();
    let mut model = Model::default();
    let mut pending = Vec::new();
    let mut last = Instant::now();
    let mut next_block = 0;
    let mut index = 0u64;
    // Steps one event; false once the UI is gone.
    let mut step = |event: &Event, last_event: bool| -> bool {
        while let Some((first, checkpoint)) = blocks.get(next_block)
            && *first == index
        {
            if *checkpoint && index > 0 {
                pending.push((index, model.snapshot()));
            }
            next_block += 1;
        }
        model.step(event);
        index += 1;
        if last_event || (index & 0x3ff == 0 && last.elapsed() >= FLUSH_EVERY) {
            last = Instant::now();
            let fraction = if total == 0 || last_event { 1.0 } else { index as f64 / total as f64 };
            let msg = LoadMsg::Checkpoints {
                snapshots: std::mem::take(&mut pending),
                fraction,
                elapsed: started.elapsed(),
            };
            return tx.send(msg).is_ok();
        }
        true
    };
    if let Some(td) = store.dat() {
        let Ok(reader) = td.events(0, ReadOptions { permissive: true, ..ReadOptions::default() })
        else {
            return;
        };
        let mut events = reader.filter_map(Result::ok).take(usize::try_from(total).unwrap_or(0));
        let mut next = events.next();
        while let Some(event) = next {
            next = events.next();
            if !step(&event, next.is_none()) {
                return;
            }
        }
        return;
    }
    for b in 0..blocks.len() {
        let Some(events) = store.events(b) else { break };
        let n = events.len();
        for (k, event) in events.iter().enumerate() {
            if !step(event, b + 1 == blocks.len() && k + 1 == n) {
                return;
            }
        }
    }
}

/// Per lane: how many of its events the pass has read, and where that is in its chunks.
struct DatCursor {
    counts: Arc<ChunkCounts>,
    /// Events read per lane.
    ordinal: Vec<u64>,
    /// Per lane: the chunk holding the next event, and the events of the chunks before it.
    chunk: Vec<(usize, u64)>,
}

impl DatCursor {
    fn new(lanes: usize, counts: Arc<ChunkCounts>) -> Self {
        Self { counts, ordinal: vec![0; lanes], chunk: vec![(0, 0); lanes] }
    }

    /// Where every lane's next event is. A chunk is counted before its first event is read,
    /// so the chunks behind each lane's position are known.
    fn positions(&mut self) -> Box<[LanePos]> {
        let mut out = Vec::with_capacity(self.ordinal.len());
        for (lane, ordinal) in self.ordinal.iter().enumerate() {
            let (chunk, before) = &mut self.chunk[lane];
            while let Some(n) = self.counts.count(lane, *chunk) {
                if *before + u64::from(n) > *ordinal {
                    break;
                }
                *before += u64::from(n);
                *chunk += 1;
            }
            out.push(LanePos {
                lane: u32::try_from(lane).unwrap_or(u32::MAX),
                chunk: u32::try_from(*chunk).unwrap_or(u32::MAX),
                skip: u32::try_from(*ordinal - *before).unwrap_or(u32::MAX),
            });
        }
        out.into_boxed_slice()
    }

    fn fraction(&self) -> Option<f64> {
        let (done, total) = self.counts.progress();
        (total > 0).then(|| done as f64 / total as f64)
    }
}

/// A text file: blocks of [`TEXT_BLOCK_BYTES`] of whole lines, each read by its own text
/// reader (one reader from a line boundary reads the same events as one over the whole file;
/// a lost-events marker whose CPU's next event is in the next block is yielded at the end of
/// its block instead).
fn load_text(path: &Path, tx: &Sender<LoadMsg>, started: Instant, index: LoadOptions) {
    let name: Arc<str> = path.display().to_string().into();
    if let Some(saved) = index.use_index.then(|| sidecar::load(path)).flatten() {
        // The meta comes from the first lines, as a full read would find it.
        let mut head = Vec::new();
        let _ = std::fs::File::open(path).and_then(|f| f.take(1 << 20).read_to_end(&mut head));
        let cut = head.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
        head.truncate(cut);
        let reader = TextReader::new(
            Arc::clone(&name),
            std::io::Cursor::new(head),
            ReadOptions { permissive: true, ..ReadOptions::default() },
        );
        let meta = reader.meta().clone();
        let backing = Backing::Text { path: path.to_path_buf(), name };
        return from_sidecar(path, saved, meta, backing, tx, started);
    }
    let fail = |e: std::io::Error| {
        let _ = tx.send(LoadMsg::Failed(format!("Cannot read {}: {e}", path.display())));
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut offset = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut read = ReadStats::default();
    let mut meta: Option<TraceMeta> = None;
    let mut pipeline: Option<Pipeline<'_>> = None;
    loop {
        // The next block: the carried partial line plus up to TEXT_BLOCK_BYTES, cut after the
        // last newline (a line longer than a block stays whole).
        let mut bytes = std::mem::take(&mut carry);
        let want = usize::try_from(TEXT_BLOCK_BYTES).unwrap_or(1 << 22);
        let mut chunk = Vec::with_capacity(want);
        if let Err(e) = (&mut file).take(TEXT_BLOCK_BYTES).read_to_end(&mut chunk) {
            return fail(e);
        }
        let eof = chunk.is_empty();
        bytes.extend_from_slice(&chunk);
        if !eof {
            match bytes.iter().rposition(|b| *b == b'\n') {
                Some(at) => carry = bytes.split_off(at + 1),
                None => {
                    carry = bytes;
                    continue;
                }
            }
        }
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len() as u64;
        let block_offset = offset;
        offset += len;
        let mut reader = TextReader::new(
            Arc::clone(&name),
            std::io::Cursor::new(bytes),
            ReadOptions { permissive: true, ..ReadOptions::default() },
        );
        if meta.is_none() {
            let m = reader.meta().clone();
            let backing = Backing::Text { path: path.to_path_buf(), name: Arc::clone(&name) };
            if tx.send(LoadMsg::Opened { meta: m.clone(), backing }).is_err() {
                return;
            }
            meta = Some(m);
            let mut p = Pipeline::new(tx, started, Positions::Text, InputFacts::of(&reader));
            p.save_to = index.save_index.then(|| path.to_path_buf());
            pipeline = Some(p);
        }
        let Some(p) = pipeline.as_mut() else { return };
        p.text_block(block_offset, len);
        if !p.push_all(&mut reader, || (size > 0).then(|| block_offset as f64 / size as f64)) {
            return;
        }
        merge_read_stats(&mut read, reader.stats());
        if let Some(m) = &mut meta
            && m.cpus.is_none()
        {
            m.cpus = reader.meta().cpus;
        }
        if eof {
            break;
        }
    }
    if let (Some(p), Some(meta)) = (pipeline, meta) {
        p.finish(&meta, &read);
    }
}

/// Adds what one block's reader counted to the whole file's counts.
fn merge_read_stats(into: &mut ReadStats, from: &ReadStats) {
    into.events += from.events;
    for (cpu, l) in &from.lost {
        let e = into.lost.entry(*cpu).or_default();
        e.markers += l.markers;
        e.events += l.events;
        e.uncounted_markers += l.uncounted_markers;
    }
    into.skipped += from.skipped;
    for p in &from.problems {
        if into.problems.len() < ReadStats::MAX_PROBLEMS {
            into.problems.push(Arc::clone(p));
        }
    }
    for (k, n) in &from.unknown_events {
        *into.unknown_events.entry(k.clone()).or_default() += n;
    }
}

/// What the pass needs to know of its input before its first event.
#[derive(Clone, Copy, Debug)]
struct InputFacts {
    /// The reader recognised pasted text: the model reports absences the cuts explain at info,
    /// as `vmxray replay` does.
    excerpt: bool,
    /// The input may hold host events ([`HostContext::possible_in`]); else no host context is
    /// built.
    host: bool,
}

impl InputFacts {
    /// Events handed to the loader in memory: no excerpt, host events possible.
    const IN_MEMORY: Self = Self { excerpt: false, host: true };

    fn of(reader: &dyn EventReader) -> Self {
        Self { excerpt: reader.meta().excerpt, host: HostContext::possible_in(reader) }
    }
}

/// How blocks find their events again.
enum Positions {
    /// The events are kept.
    Resident,
    /// trace.dat lanes.
    Dat { cursor: DatCursor, lane_of_cpu: LaneOfCpu },
    /// Text blocks, opened by [`Pipeline::text_block`].
    Text,
}

/// The trace.dat lane of each CPU, looked up for every event: a table indexed by the CPU for
/// the usual CPU numbers (a binary search's mispredicted branches, as events of different CPUs
/// interleave, showed in profiles of the load), a search beyond them.
struct LaneOfCpu {
    /// `by_cpu[cpu]`: the lane, `usize::MAX` for none; empty when a CPU number is too large.
    by_cpu: Vec<usize>,
    /// (CPU, lane), sorted by CPU.
    sorted: Vec<(u32, usize)>,
}

impl LaneOfCpu {
    /// CPU numbers indexed directly when every CPU of the trace is below it.
    const TABLE_CPUS: usize = 4096;

    /// From (CPU, lane) pairs sorted by CPU, one per CPU.
    fn new(sorted: Vec<(u32, usize)>) -> Self {
        let len = sorted.last().map_or(0, |(cpu, _)| *cpu as usize + 1);
        let mut by_cpu = Vec::new();
        if len <= Self::TABLE_CPUS {
            by_cpu = vec![usize::MAX; len];
            for &(cpu, lane) in &sorted {
                by_cpu[cpu as usize] = lane;
            }
        }
        Self { by_cpu, sorted }
    }

    #[inline]
    fn get(&self, cpu: u32) -> Option<usize> {
        if self.by_cpu.is_empty() {
            let at = self.sorted.binary_search_by_key(&cpu, |(c, _)| *c).ok()?;
            return Some(self.sorted[at].1);
        }
        self.by_cpu.get(cpu as usize).copied().filter(|&lane| lane != usize::MAX)
    }
}

/// The block being filled.
struct OpenBlock {
    first: u64,
    first_ts: Option<u64>,
    pos: Option<BlockPos>,
    events: Vec<Event>,
}

/// The pass, the sink, and the batch being filled.
struct Pipeline<'a> {
    tx: &'a Sender<LoadMsg>,
    started: Instant,
    pass: Pass,
    indexer: Indexer,
    positions: Positions,
    block: Option<OpenBlock>,
    /// Blocks opened so far.
    blocks_opened: u64,
    last_flush: Instant,
    /// A batch with blocks was sent.
    sent_blocks: bool,
    fraction: Option<f64>,
    /// The receiver is gone.
    closed: bool,
    /// Save the index beside this trace at the end.
    save_to: Option<PathBuf>,
    /// What is saved (copies of what the batches carried).
    saved: Sidecar,
    saved_lanes: Lanes,
}

/// The pass's sink: numbers each event's actor, notes what the tally needs of it
/// ([`crate::tally`]), collects anomalies; the tally (on the statistics thread when it runs)
/// counts the lanes' buckets, crashes and lost markers.
struct Indexer {
    /// Actor numbers, looked up for every event whose actor is not its CPU's last event's:
    /// foldhash, not SipHash (which showed in profiles of the load).
    actor_ids: HashMap<Actor, u16, foldhash::fast::RandomState>,
    /// The first [`FEW_ACTORS`] actors, by number: a trace's vCPUs, mostly. The merge
    /// interleaves them, so the previous event's actor is often not the next one's, and a
    /// scan of a few finds it for less than the hash (which showed in profiles of the pass).
    first_actors: Vec<Actor>,
    /// Per CPU (modulo [`CPU_HINTS`]), the actor of its last event and its number: a vCPU
    /// stays on its CPU for long, while the merge interleaves the CPUs' events.
    by_cpu: [Option<(Actor, u16)>; CPU_HINTS],
    batch: Batch,
    /// The exit statistics, where each exit's time went on the host (the detail view's
    /// breakdown), and the tally.
    counting: Counting,
    /// The last event's actor, for a `kvm_nested_vmexit` the vmcs12 current after it, and its
    /// note: what the stats stage gets with an event moved to it after the step.
    stepped: (Option<Actor>, Option<u64>, Note),
    /// Where the event being stepped lies in its lane's shared batch (its lane, and the batch
    /// when it is the batch's first event): the stage is told of it as the event is stepped,
    /// from the values in hand. (Read back just after the step, `stepped` was loaded in words
    /// that straddled the stores that had just written it, which the CPU cannot forward: the
    /// load waited for them to reach the cache, ~5 % of the replaying thread's samples.)
    placed: Option<(u32, Option<Arc<SharedBatch>>)>,
}

/// Where the exit statistics, the host context and the tally are built.
enum Counting {
    /// On their own thread, fed by [`Pipeline::push`]: they only read the stepped events, and
    /// the loader's thread (merge, model, index) is the one the load waits for. The tally's
    /// findings come back through the receiver.
    Staged(StatsStage<Tally>, Receiver<Found>),
    /// On the loader's thread (the stage's thread could not start): the statistics in the
    /// pass, the host context and the tally here.
    Inline(Box<HostContext>, Box<Tally>),
}

impl Indexer {
    /// An indexer whose statistics run on their own thread when `staged` and the thread
    /// starts; the pass keeps them itself when [`Indexer::statistics_in_pass`]. The host
    /// context runs on the stage only when the input may hold host events (`host`).
    fn new(staged: bool, host: bool) -> Self {
        let (found_tx, found_rx) = mpsc::channel();
        let stage = staged.then(|| {
            let context = host.then(HostContext::with_exit_log);
            StatsStage::start_with(ExitStats::new(), context, Tally::sending(found_tx))
        });
        let counting = match stage {
            Some(Ok(stage)) => Counting::Staged(stage, found_rx),
            Some(Err(_)) | None => {
                Counting::Inline(Box::new(HostContext::with_exit_log()), Box::default())
            }
        };
        Self {
            actor_ids: HashMap::default(),
            first_actors: Vec::with_capacity(FEW_ACTORS),
            by_cpu: [None; CPU_HINTS],
            batch: Batch::default(),
            counting,
            stepped: (None, None, Note::default()),
            placed: None,
        }
    }

    fn statistics_in_pass(&self) -> bool {
        matches!(self.counting, Counting::Inline(..))
    }
}

impl Sink for Indexer {
    fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
        let step = s.step();
        let actor = step.actor.map(|a| self.actor_id(a, s.event.cpu));
        let mut worst = None;
        if !step.anomalies.is_empty() {
            self.batch.anomalies.extend_from_slice(step.anomalies);
            worst = step.anomalies.iter().map(|a| a.severity).max();
        }
        let note = Note { actor, level: s.level(), worst };
        match &mut self.counting {
            Counting::Staged(stage, _) => match self.placed.take() {
                Some((lane, batch)) => {
                    stage.push_placed(lane, batch, step.actor, s.nested_exit_vmcs12(), note);
                }
                None => self.stepped = (step.actor, s.nested_exit_vmcs12(), note),
            },
            Counting::Inline(context, tally) => {
                tally.count(s.event, note);
                let _ = context.event(s);
                if context.has_host_events() {
                    self.batch.contexts.extend(context.take_attributed());
                } else {
                    // Without host events the log holds in-KVM-only rows nobody shows.
                    let _ = context.take_attributed();
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// The anomalies of the trace's end join the last chunk.
    fn end(&mut self, anomalies: &[vmxray_replay::Anomaly], _model: &Model) {
        self.batch.anomalies.extend_from_slice(anomalies);
    }
}

impl Indexer {
    fn actor_id(&mut self, actor: Actor, cpu: u32) -> u16 {
        let hint = cpu as usize % CPU_HINTS;
        if let Some((a, id)) = self.by_cpu[hint]
            && a == actor
        {
            return id;
        }
        let next = self.actor_ids.len();
        let known = match self.first_actors.iter().position(|a| *a == actor) {
            Some(i) => Some(u16::try_from(i).unwrap_or(EventTag::NO_ACTOR)),
            // Every actor so far is among the first: this one is new.
            None if next < FEW_ACTORS => None,
            None => self.actor_ids.get(&actor).copied(),
        };
        let id = known.unwrap_or_else(|| {
            let id = u16::try_from(next).unwrap_or(EventTag::NO_ACTOR);
            self.actor_ids.insert(actor, id);
            if next < FEW_ACTORS {
                self.first_actors.push(actor);
            }
            self.batch.actors.push(actor);
            id
        });
        self.by_cpu[hint] = Some((actor, id));
        id
    }
}

/// Actors found by a scan before the hash ([`Indexer::actor_id`]).
const FEW_ACTORS: usize = 8;

impl<'a> Pipeline<'a> {
    /// A pipeline for one input.
    fn new(
        tx: &'a Sender<LoadMsg>,
        started: Instant,
        positions: Positions,
        facts: InputFacts,
    ) -> Self {
        Self::counting(tx, started, positions, facts, true)
    }

    /// [`Pipeline::new`], with the statistics on their own thread only when `staged` (else as
    /// when that thread cannot start).
    fn counting(
        tx: &'a Sender<LoadMsg>,
        started: Instant,
        positions: Positions,
        facts: InputFacts,
        staged: bool,
    ) -> Self {
        let mut config = PassConfig::default();
        config.model.excerpt = facts.excerpt;
        let indexer = Indexer::new(staged, facts.host);
        if !indexer.statistics_in_pass() {
            config.stats = StatsMode::Off;
        }
        Self {
            tx,
            started,
            pass: Pass::new(config),
            indexer,
            positions,
            block: None,
            blocks_opened: 0,
            last_flush: Instant::now(),
            sent_blocks: false,
            fraction: None,
            closed: false,
            save_to: None,
            saved: Sidecar::default(),
            saved_lanes: Lanes::default(),
        }
    }

    fn next_index(&self) -> u64 {
        self.pass.model().next_index().0
    }

    /// Closes the open block (if it has events) into the batch.
    fn close_block(&mut self) {
        let Some(b) = self.block.take() else { return };
        let len = self.next_index() - b.first;
        if len == 0 {
            return;
        }
        let pos = match b.pos {
            Some(pos) => pos,
            None => BlockPos::Resident(Arc::new(b.events)),
        };
        self.indexer.batch.blocks.push(Block {
            first: b.first,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            first_ts: b.first_ts.unwrap_or(0),
            pos,
        });
    }

    /// Opens a block at the next event, with a model snapshot when `checkpoint`.
    fn open_block(&mut self, pos: Option<BlockPos>, checkpoint: bool) {
        let first = self.next_index();
        if checkpoint {
            self.indexer.batch.snapshots.push((first, self.pass.model().snapshot()));
        }
        let events = if pos.is_none() {
            Vec::with_capacity(usize::try_from(BLOCK_EVENTS).unwrap_or(4096))
        } else {
            Vec::new()
        };
        self.block = Some(OpenBlock { first, first_ts: None, pos, events });
        self.blocks_opened += 1;
    }

    /// A text block starts at `offset` (`len` bytes).
    fn text_block(&mut self, offset: u64, len: u64) {
        self.close_block();
        self.open_block(Some(BlockPos::Text { offset, len }), true);
    }

    /// Steps one event; false once the UI is gone.
    #[inline(always)]
    fn push(&mut self, event: Event, fraction: Option<f64>) -> bool {
        let resident = self.step(&event, fraction);
        // The stage takes the event itself unless the block keeps it.
        let (actor, vmcs12, note) = self.indexer.stepped;
        let kept = match &mut self.indexer.counting {
            Counting::Staged(stage, _) if !resident => {
                stage.push_noted(event, actor, vmcs12, note);
                None
            }
            Counting::Staged(stage, _) => {
                stage.push_noted(event.clone(), actor, vmcs12, note);
                Some(event)
            }
            Counting::Inline(..) => Some(event),
        };
        if resident
            && let Some(event) = kept
            && let Some(b) = &mut self.block
        {
            b.events.push(event);
        }
        self.pushed()
    }

    /// [`Pipeline::push`] for an event of a trace.dat, read in place when its batch is shared:
    /// the statistics stage then reads it there too ([`StatsStage::push_placed`]). (A
    /// trace.dat's progress comes from its chunk counts, not from the reader.)
    #[inline(always)]
    fn push_taken(&mut self, taken: Taken<'_>) -> bool {
        let (event, lane, batch) = match taken {
            Taken::Placed { event, lane, batch } => (event, lane, batch),
            Taken::Owned(event) => return self.push(event, None),
        };
        if let Counting::Staged(..) = self.indexer.counting {
            self.indexer.placed = Some((lane, batch));
        }
        let resident = self.step(event, None);
        if resident && let Some(b) = &mut self.block {
            b.events.push(event.clone());
        }
        self.pushed()
    }

    /// Steps `event` through the positions, the model and the index; true when the open block
    /// keeps its events.
    #[inline(always)]
    fn step(&mut self, event: &Event, fraction: Option<f64>) -> bool {
        let index = self.next_index();
        match &mut self.positions {
            Positions::Text => {}
            Positions::Resident => {
                if index.is_multiple_of(BLOCK_EVENTS) {
                    self.close_block();
                    let checkpoint = self.blocks_opened.is_multiple_of(CHECKPOINT_BLOCKS);
                    self.open_block(None, checkpoint);
                }
            }
            Positions::Dat { cursor, lane_of_cpu } => {
                let start = index.is_multiple_of(BLOCK_EVENTS).then(|| {
                    self.fraction = cursor.fraction();
                    BlockPos::Dat(cursor.positions())
                });
                if let Some(lane) = lane_of_cpu.get(event.cpu)
                    && let Some(o) = cursor.ordinal.get_mut(lane)
                {
                    *o += 1;
                }
                if let Some(pos) = start {
                    self.close_block();
                    let checkpoint = self.blocks_opened.is_multiple_of(CHECKPOINT_BLOCKS);
                    self.open_block(Some(pos), checkpoint);
                }
            }
        }
        if fraction.is_some() {
            self.fraction = fraction;
        }
        let _ = self.pass.step(event, &mut self.indexer);
        let resident = self.block.as_ref().is_some_and(|b| b.pos.is_none());
        if let Some(b) = &mut self.block {
            b.first_ts.get_or_insert(event.ts);
        }
        resident
    }

    /// After an event: hands the batch on when it is time; false once the UI is gone.
    #[inline(always)]
    fn pushed(&mut self) -> bool {
        let index = self.next_index().saturating_sub(1);
        // The first block goes out as soon as it is complete (the first screen), then a batch
        // every FLUSH_EVERY.
        let first = !self.sent_blocks && !self.indexer.batch.blocks.is_empty();
        if first || (index & 0x3ff == 0 && self.last_flush.elapsed() >= FLUSH_EVERY) {
            self.sent_blocks |= !self.indexer.batch.blocks.is_empty();
            self.flush();
        }
        !self.closed
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        let batch = &mut self.indexer.batch;
        match &mut self.indexer.counting {
            Counting::Staged(stage, found) => {
                batch.contexts.extend(stage.take_contexts());
                while let Ok(more) = found.try_recv() {
                    batch.add(more);
                }
            }
            Counting::Inline(_, tally) => batch.add(tally.take()),
        }
        let mut batch = std::mem::take(&mut self.indexer.batch);
        if self.save_to.is_some() {
            let s = &mut self.saved;
            s.blocks.extend(batch.blocks.iter().cloned());
            for b in &batch.buckets {
                self.saved_lanes.push(b.clone());
            }
            s.anomalies.extend(batch.anomalies.iter().cloned());
            s.crashes.extend(batch.crashes.iter().map(|(at, _)| *at));
            s.lost.extend(batch.lost.iter().copied());
            s.actors.extend(batch.actors.iter().copied());
        }
        batch.events = self.next_index();
        batch.fraction = self.fraction;
        batch.elapsed = self.started.elapsed();
        if self.tx.send(LoadMsg::Batch(batch)).is_err() {
            self.closed = true;
        }
    }

    /// Pushes every event `reader` yields, `fraction` saying how far through the trace it is;
    /// false when the loading stops there (a read error, reported, or nobody listening).
    fn push_all<R>(&mut self, reader: &mut R, fraction: impl Fn() -> Option<f64>) -> bool
    where
        R: Iterator<Item = Result<Event, ReadError>> + ?Sized,
    {
        for item in reader {
            match item {
                Ok(event) => {
                    if !self.push(event, fraction()) {
                        return false;
                    }
                }
                Err(e) => {
                    self.fail(e.to_string());
                    return false;
                }
            }
        }
        true
    }

    /// [`Pipeline::push_all`] for a trace.dat reader that shares its batches.
    fn push_shared(&mut self, reader: &mut TraceDatReader) -> bool {
        while let Some(item) = reader.next_shared() {
            match item {
                Ok(taken) => {
                    if !self.push_taken(taken) {
                        return false;
                    }
                }
                Err(e) => {
                    self.fail(e.to_string());
                    return false;
                }
            }
        }
        true
    }

    fn fail(&mut self, error: String) {
        self.close_block();
        // The counts of the events before the error: what the tally has not handed over.
        let _ = self.end_counting();
        self.flush();
        let _ = self.tx.send(LoadMsg::Failed(error));
    }

    /// Ends the statistics and the tally (waiting for their thread): the statistics when they
    /// ran on their own thread, and the host context. The tally's last findings and the exit
    /// contexts not taken yet join the batch.
    fn end_counting(&mut self) -> (Option<ExitStats>, HostContext) {
        let counting = std::mem::replace(
            &mut self.indexer.counting,
            Counting::Inline(Box::default(), Box::default()),
        );
        match counting {
            Counting::Staged(stage, found) => {
                let end = stage.finish();
                // What the stage sent before it ended comes first.
                while let Ok(more) = found.try_recv() {
                    self.indexer.batch.add(more);
                }
                match end {
                    Some(end) => {
                        self.indexer.batch.contexts.extend(end.contexts);
                        self.indexer.batch.add(end.work.finish());
                        (Some(end.stats), end.context.unwrap_or_default())
                    }
                    None => {
                        let note = "Statistics incomplete: their thread stopped".to_owned();
                        let _ = self.tx.send(LoadMsg::Note(note));
                        (None, HostContext::new())
                    }
                }
            }
            Counting::Inline(context, tally) => {
                self.indexer.batch.add(tally.finish());
                (None, *context)
            }
        }
    }

    fn finish(mut self, meta: &TraceMeta, read: &ReadStats) {
        self.close_block();
        self.pass.end(&mut self.indexer);
        let (staged, context) = self.end_counting();
        self.fraction = Some(1.0);
        self.flush();
        let events = self.next_index();
        let end = self.pass.finish(Some(meta), Some(read));
        // The statistics come from the stage, or from the pass when they ran in it.
        let mut report = match (staged, end.stats) {
            (Some(stats), _) => stats.finish(Some(meta), Some(read)),
            (None, Some(report)) => report,
            (None, None) => ExitStats::new().finish(Some(meta), Some(read)),
        };
        report.host_context = context.finish();
        if let Some(path) = self.save_to.take() {
            let mut saved = std::mem::take(&mut self.saved);
            saved.events = events;
            saved.fine_per_bucket = self.saved_lanes.fine_per_bucket();
            saved.buckets = self.saved_lanes.buckets().to_vec();
            saved.read = read.clone();
            saved.stats = Some(report.clone());
            let note = match sidecar::Identity::of(&path)
                .and_then(|id| sidecar::save(&path, id, &saved))
            {
                Ok(at) => format!("Index saved to {}", at.display()),
                Err(e) => format!("Index not saved: {e}"),
            };
            let _ = self.tx.send(LoadMsg::Note(note));
        }
        let _ = self.tx.send(LoadMsg::Done {
            stats: Box::new(report),
            summary: Some(Box::new(end.summary)),
            read: Box::new(read.clone()),
            elapsed: self.started.elapsed(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `path` as a resident trace, the statistics on their own thread or not.
    fn load_counting(path: &Path, staged: bool) -> Trace {
        let (tx, rx) = mpsc::channel();
        let opts = ReadOptions { permissive: true, ..ReadOptions::default() };
        let mut reader = vmxray_capture::open(path, opts).expect("opens");
        let facts = InputFacts::of(&*reader);
        let meta = reader.meta().clone();
        tx.send(LoadMsg::Opened { meta: meta.clone(), backing: Backing::Memory }).expect("sends");
        let mut pipeline =
            Pipeline::counting(&tx, Instant::now(), Positions::Resident, facts, staged);
        assert!(pipeline.push_all(&mut reader, || None));
        pipeline.finish(&meta, reader.stats());
        drop(tx);
        let mut trace = Trace::default();
        for msg in rx {
            trace.apply(msg);
        }
        trace
    }

    #[test]
    fn statistics_counted_on_the_loader_thread_are_those_of_their_own_thread() {
        // What the loader falls back to when the statistics thread cannot start (the tally
        // then runs on the loader's thread too). A real VMX
        // host with host events: the exit statistics and every exit's host context.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../samples/real/vmx/context-busy-io-loop-ept-6.1.dat");
        let (staged, inline) = (load_counting(&path, true), load_counting(&path, false));
        let stats = staged.stats.as_ref().expect("statistics");
        assert!(stats.exits.as_ref().is_some_and(|e| e.total > 500), "{:?}", stats.exits);
        assert!(stats.host_context.as_ref().is_some_and(|h| h.attributed > 500));
        assert_eq!(staged.stats, inline.stats);
        assert!(staged.contexts.len() > 500, "{}", staged.contexts.len());
        assert_eq!(staged.contexts, inline.contexts);
        assert_eq!(staged.anomalies, inline.anomalies);
        // The tally (lanes, crashes, lost markers) is counted on either thread alike.
        assert!(!staged.lanes.buckets().is_empty());
        assert_eq!(staged.lanes.buckets(), inline.lanes.buckets());
        assert_eq!((&staged.crashes, &staged.lost), (&inline.crashes, &inline.lost));
        assert_eq!(staged.actors, inline.actors);
    }

    #[test]
    fn lane_of_cpu_by_table_and_by_search_agree() {
        let small = LaneOfCpu::new(vec![(0, 2), (1, 0), (5, 1)]);
        assert!(!small.by_cpu.is_empty());
        let huge = LaneOfCpu::new(vec![(0, 2), (1, 0), (5, 1), (u32::MAX, 3)]);
        assert!(huge.by_cpu.is_empty(), "a huge CPU number is searched, not tabled");
        for cpu in [0, 1, 2, 4, 5, 6, 4095, 4096, u32::MAX - 1] {
            assert_eq!(small.get(cpu), huge.get(cpu), "cpu {cpu}");
        }
        assert_eq!((small.get(0), small.get(1), small.get(5)), (Some(2), Some(0), Some(1)));
        assert_eq!((small.get(2), small.get(6)), (None, None));
        assert_eq!(huge.get(u32::MAX), Some(3));
        assert_eq!(LaneOfCpu::new(Vec::new()).get(0), None);
    }

    #[test]
    fn actors_are_numbered_in_first_seen_order_past_those_found_by_a_scan() {
        let mut indexer = Indexer::new(false, false);
        // Threads first seen in order 0..20, then seen again interleaved, as the merge of a
        // host trace's CPUs sees them, on CPUs whose last actor is another one or the same:
        // the first FEW_ACTORS by the scan, the rest by the hash.
        let actors: Vec<Actor> = (0..20).map(|t| Actor::Thread(1000 + t)).collect();
        for (n, a) in actors.iter().enumerate() {
            assert_eq!(usize::from(indexer.actor_id(*a, [0, 1, 2][n % 3])), n, "{a:?}, new");
        }
        for round in 0..3 {
            for (n, a) in actors.iter().enumerate().rev().step_by(3 - round) {
                let cpu = [0, 1, 2, 3, 4][(n + round) % 5];
                assert_eq!(usize::from(indexer.actor_id(*a, cpu)), n, "{a:?}, again");
                assert_eq!(usize::from(indexer.actor_id(*a, cpu)), n, "{a:?}, on the same CPU");
            }
        }
        assert_eq!(indexer.batch.actors, actors, "each actor announced once, in order");
        assert!(actors.len() > FEW_ACTORS);
    }
}
