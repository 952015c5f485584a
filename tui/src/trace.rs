//! The loaded trace as the views see it: the events (in fixed-size chunks, so appending never
//! copies what is already there), one 4-byte [`EventTag`] per event (actor, level, markers), the
//! anomalies, crashes and lost-event gaps by event index, the model checkpoints that rebuild the
//! state at any event, and the statistics report once the whole trace is read.
//!
//! Everything here is filled by [`crate::loader`] messages ([`Trace::apply`]); nothing here
//! parses, models or counts: it stores what the other crates computed and answers index queries.

use std::sync::Arc;
use std::time::Duration;

use vmxray_analyze::stats::StatsReport;
use vmxray_capture::printfmt::PrintCatalog;
use vmxray_capture::render::format_ts;
use vmxray_capture::{Clock, ReadStats, TraceMeta};
use vmxray_events::Event;
use vmxray_replay::checkpoints::Checkpoints;
use vmxray_replay::{
    Actor, Anomaly, CrashKind, EventIndex, Model, Severity, TraceSummary, Transition, VcpuState,
};

use crate::loader::{Chunk, LoadMsg};

/// Events per storage chunk (a power of two: index arithmetic is a shift and a mask).
pub const CHUNK_SHIFT: u32 = 16;
/// Events per storage chunk.
pub const CHUNK_LEN: usize = 1 << CHUNK_SHIFT;
/// Events between two model snapshots: the state pane steps at most this many events.
pub const CHECKPOINT_INTERVAL: u64 = 2048;

/// The level an event ran at, as the replay model knew it after the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// A hardware exit into L0 (`kvm_exit`, `kvm_nested_vmexit`).
    L0Exit,
    /// L1 (or a non-nested guest) runs.
    L1,
    /// L2 runs (or a nested entry is pending).
    L2,
    /// The model has not established the level.
    Unknown,
}

impl Tier {
    /// Short label for the timeline column.
    pub fn label(self) -> &'static str {
        match self {
            Self::L0Exit => "L0",
            Self::L1 => "L1",
            Self::L2 => "L2",
            Self::Unknown => "--",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::L1 => 1,
            Self::L2 => 2,
            Self::L0Exit => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        match code & 3 {
            1 => Self::L1,
            2 => Self::L2,
            3 => Self::L0Exit,
            _ => Self::Unknown,
        }
    }
}

/// Per-event facts the views need without touching the event: 4 bytes per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTag {
    /// Index into [`Trace::actors`]; [`EventTag::NO_ACTOR`] for lost-event markers.
    pub actor: u16,
    bits: u8,
    _pad: u8,
}

impl EventTag {
    /// No actor (a `Lost` marker concerns every vCPU).
    pub const NO_ACTOR: u16 = u16::MAX;
    const ANOMALY: u8 = 1 << 2;
    const CRASH: u8 = 1 << 3;
    const LOST: u8 = 1 << 4;

    /// A tag.
    pub fn new(actor: u16, tier: Tier, anomaly: bool, crash: bool, lost: bool) -> Self {
        let bits = tier.code()
            | if anomaly { Self::ANOMALY } else { 0 }
            | if crash { Self::CRASH } else { 0 }
            | if lost { Self::LOST } else { 0 };
        Self { actor, bits, _pad: 0 }
    }

    /// The level.
    pub fn tier(self) -> Tier {
        Tier::from_code(self.bits)
    }

    /// The model reported an anomaly at this event.
    pub fn anomaly(self) -> bool {
        self.bits & Self::ANOMALY != 0
    }

    /// A fatal event (shutdown, triple fault, failed entry).
    pub fn crash(self) -> bool {
        self.bits & Self::CRASH != 0
    }

    /// A lost-events marker.
    pub fn lost(self) -> bool {
        self.bits & Self::LOST != 0
    }
}

/// Where loading stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Reading and replaying; `elapsed` since the start.
    Loading {
        /// Time since the loader started.
        elapsed: Duration,
    },
    /// Everything read, replayed and counted.
    Done {
        /// How long it took.
        elapsed: Duration,
    },
    /// The input could not be read further (what was read stays browsable).
    Failed {
        /// The error, with its location.
        error: String,
    },
}

/// The state of one actor at one event, rebuilt from the checkpoints.
#[derive(Clone, Debug)]
pub struct StateAt {
    /// The event.
    pub at: u64,
    /// Who the event was attributed to.
    pub actor: Option<Actor>,
    /// Its state after the event.
    pub state: Option<VcpuState>,
    /// What the event changed.
    pub transitions: Vec<Transition>,
    /// What the event violated.
    pub anomalies: Vec<Anomaly>,
    /// Every other actor with its level after the event.
    pub others: Vec<(Actor, VcpuState)>,
}

/// The loaded trace.
#[derive(Debug)]
pub struct Trace {
    /// What the input says about itself (None until the loader opened it).
    pub meta: Option<TraceMeta>,
    chunks: Vec<Vec<Event>>,
    tags: Vec<Vec<EventTag>>,
    len: u64,
    /// Every actor, in first-seen order (tags point here).
    pub actors: Vec<Actor>,
    /// Every anomaly, in event order.
    pub anomalies: Vec<Anomaly>,
    /// Indices into `anomalies` per severity, most severe first (the Anomalies view's order).
    by_severity: [Vec<u32>; 4],
    /// Fatal events, in event order.
    pub crashes: Vec<(u64, CrashKind)>,
    /// Lost-event markers, in event order.
    pub lost: Vec<u64>,
    checkpoints: Checkpoints,
    /// The statistics report (`vmxray stats`), once everything is read.
    pub stats: Option<Box<StatsReport>>,
    /// The model's summary, once everything is read.
    pub summary: Option<Box<TraceSummary>>,
    /// What reading counted (lost, skipped, unknown), once everything is read.
    pub read: Option<Box<ReadStats>>,
    /// Loading progress.
    pub progress: Progress,
    /// The trace's print fmts (binary inputs): the detail view renders untyped events with
    /// them, as `trace-cmd report -N` does.
    pub print: Option<Arc<PrintCatalog>>,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            meta: None,
            chunks: Vec::new(),
            tags: Vec::new(),
            len: 0,
            actors: Vec::new(),
            anomalies: Vec::new(),
            by_severity: Default::default(),
            crashes: Vec::new(),
            lost: Vec::new(),
            checkpoints: Checkpoints::new(CHECKPOINT_INTERVAL),
            print: None,
            stats: None,
            summary: None,
            read: None,
            progress: Progress::Loading { elapsed: Duration::ZERO },
        }
    }
}

/// The Anomalies view lists the worst first: its slot is the severity's rank reversed.
fn severity_rank(s: Severity) -> usize {
    Severity::ALL.len() - 1 - s.rank()
}

impl Trace {
    /// Applies one loader message.
    pub fn apply(&mut self, msg: LoadMsg) {
        match msg {
            LoadMsg::Meta(meta) => self.meta = Some(meta),
            LoadMsg::Print(catalog) => self.print = Some(catalog),
            LoadMsg::Chunk(chunk) => self.append(chunk),
            LoadMsg::Done { stats, summary, read, elapsed } => {
                self.stats = Some(stats);
                self.summary = Some(summary);
                self.read = Some(read);
                self.progress = Progress::Done { elapsed };
            }
            LoadMsg::Failed(error) => self.progress = Progress::Failed { error },
        }
    }

    fn append(&mut self, chunk: Chunk) {
        let Chunk { events, tags, anomalies, crashes, lost, snapshots, actors, elapsed } = chunk;
        for model in &snapshots {
            self.checkpoints.observe(model);
        }
        self.actors.extend(actors);
        for a in anomalies {
            let slot = severity_rank(a.severity);
            self.by_severity[slot].push(u32::try_from(self.anomalies.len()).unwrap_or(u32::MAX));
            self.anomalies.push(a);
        }
        self.crashes.extend(crashes);
        self.lost.extend(lost);
        self.len += tags.len() as u64;
        push_chunked(&mut self.tags, tags);
        push_chunked(&mut self.chunks, events);
        if let Progress::Loading { .. } = self.progress {
            self.progress = Progress::Loading { elapsed };
        }
    }

    /// Events loaded so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No event loaded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether loading finished (successfully or not).
    pub fn is_complete(&self) -> bool {
        !matches!(self.progress, Progress::Loading { .. })
    }

    /// The event at `index`.
    pub fn event(&self, index: u64) -> Option<&Event> {
        let i = usize::try_from(index).ok()?;
        self.chunks.get(i >> CHUNK_SHIFT)?.get(i & (CHUNK_LEN - 1))
    }

    /// The tag of the event at `index`.
    pub fn tag(&self, index: u64) -> Option<EventTag> {
        let i = usize::try_from(index).ok()?;
        self.tags.get(i >> CHUNK_SHIFT)?.get(i & (CHUNK_LEN - 1)).copied()
    }

    /// The actor of an event.
    pub fn actor(&self, index: u64) -> Option<Actor> {
        let tag = self.tag(index)?;
        self.actors.get(usize::from(tag.actor)).copied()
    }

    /// The trace clock (decides how timestamps print).
    pub fn clock(&self) -> Clock {
        self.meta.as_ref().map_or(Clock::Nanoseconds, |m| m.clock.clone())
    }

    /// A timestamp as the trace prints it.
    pub fn format_ts(&self, ts: u64) -> String {
        format_ts(ts, &self.clock())
    }

    /// Anomalies in the Anomalies view's order (most severe first, then by event).
    pub fn anomaly_by_rank(&self, rank: usize) -> Option<&Anomaly> {
        let mut rank = rank;
        for list in &self.by_severity {
            if rank < list.len() {
                return self.anomalies.get(usize::try_from(list[rank]).ok()?);
            }
            rank -= list.len();
        }
        None
    }

    /// Anomalies whose event is `index`.
    pub fn anomalies_at(&self, index: u64) -> &[Anomaly] {
        let from = self.anomalies.partition_point(|a| a.at.0 < index);
        let to = self.anomalies.partition_point(|a| a.at.0 <= index);
        &self.anomalies[from..to]
    }

    /// The first anomaly after (`forward`) or before `index`, as its event index.
    pub fn next_anomaly(&self, index: u64, forward: bool) -> Option<u64> {
        next_in(&self.anomalies, |a| a.at.0, index, forward)
    }

    /// The next crash after `index` (wrapping to the first).
    pub fn next_crash(&self, index: u64) -> Option<u64> {
        let i = self.crashes.partition_point(|(at, _)| *at <= index);
        self.crashes.get(i).or(self.crashes.first()).map(|(at, _)| *at)
    }

    /// The first event at or after `ts` (events are in time order).
    pub fn index_at_time(&self, ts: u64) -> u64 {
        // Binary search over the chunks, then inside the chunk.
        let chunk = self.chunks.partition_point(|c| c.last().is_some_and(|e| e.ts < ts));
        match self.chunks.get(chunk) {
            Some(c) => ((chunk << CHUNK_SHIFT) + c.partition_point(|e| e.ts < ts)) as u64,
            None => self.len().saturating_sub(1),
        }
    }

    /// The replay model's state at event `index`: the state after the event, what it changed
    /// and what it violated. None while the checkpoints do not reach the event yet.
    pub fn state_at(&self, index: u64) -> Option<StateAt> {
        if index >= self.len() {
            return None;
        }
        let event = |i: EventIndex| -> &Event {
            // model_at only asks for events before `index`, which are loaded.
            self.event(i.0).unwrap_or_else(|| unreachable!("event {i} is loaded"))
        };
        let mut model: Model = self.checkpoints.model_at(EventIndex(index), event)?;
        let step = model.step(self.event(index)?);
        let actor = step.actor;
        let transitions = step.transitions.to_vec();
        let anomalies = step.anomalies.to_vec();
        let state = actor.and_then(|a| model.state(a)).cloned();
        let others = model
            .states()
            .filter(|(a, _)| Some(*a) != actor)
            .map(|(a, s)| (a, s.clone()))
            .collect();
        Some(StateAt { at: index, actor, state, transitions, anomalies, others })
    }

    /// Counts of anomalies per severity (critical, error, warning, info).
    pub fn severity_counts(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.by_severity[i].len())
    }
}

/// Appends `items` to storage split in [`CHUNK_LEN`] chunks. The loader cuts its messages at
/// chunk boundaries, so a message that starts a new chunk becomes that chunk without a copy
/// (the common case: whole 64K chunks); otherwise the items fill the last chunk, then new ones.
/// A full chunk never reallocates: memory is the items plus at most one chunk of slack.
fn push_chunked<T>(chunks: &mut Vec<Vec<T>>, items: Vec<T>) {
    let last_full = chunks.last().is_none_or(|c| c.len() == CHUNK_LEN);
    if last_full && !items.is_empty() && items.len() <= CHUNK_LEN {
        let mut items = items;
        items.reserve_exact(CHUNK_LEN - items.len());
        chunks.push(items);
        return;
    }
    let mut items = items.into_iter();
    while items.len() > 0 {
        let room = match chunks.last() {
            Some(last) if last.len() < CHUNK_LEN => CHUNK_LEN - last.len(),
            _ => {
                chunks.push(Vec::with_capacity(CHUNK_LEN));
                CHUNK_LEN
            }
        };
        if let Some(last) = chunks.last_mut() {
            last.extend(items.by_ref().take(room));
        }
    }
}

fn next_in<T>(sorted: &[T], key: impl Fn(&T) -> u64, index: u64, forward: bool) -> Option<u64> {
    if forward {
        let i = sorted.partition_point(|t| key(t) <= index);
        sorted.get(i).map(&key)
    } else {
        let i = sorted.partition_point(|t| key(t) < index);
        i.checked_sub(1).and_then(|i| sorted.get(i)).map(&key)
    }
}

impl Trace {
    /// The Anomalies-view rank of `anomalies[index]`.
    pub fn rank_of(&self, index: usize) -> Option<usize> {
        let anomaly = self.anomalies.get(index)?;
        let slot = severity_rank(anomaly.severity);
        let before: usize = self.by_severity[..slot].iter().map(Vec::len).sum();
        let list = &self.by_severity[slot];
        let pos = list.partition_point(|&i| (i as usize) < index);
        Some(before + pos)
    }
}
