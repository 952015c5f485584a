//! The loaded trace as the views see it: an index, not the events. The loader's one pass
//! leaves the [`Store`]'s blocks (where each block of events is in the file), the anomalies,
//! crashes and lost-event gaps by event index, model checkpoints, the lanes' [`Lanes`]
//! summaries and the statistics report; the events on screen are decoded on demand (an LRU of
//! decoded blocks) and their [`EventTag`]s (actor, level, markers) come from replaying the
//! model from the nearest checkpoint through their block.
//!
//! ```text
//!  event(i) ──► block of i ──► LRU hit? ──► decode the block (trace.dat pages / text lines)
//!  tag(i)   ──► block of i ──► tag LRU hit? ──► checkpoint ≤ block, step the model through
//!                                               the blocks up to it (each block's tags kept)
//! ```
//!
//! Everything here is filled by [`crate::loader`] messages ([`Trace::apply`]); nothing here
//! parses, models or counts beyond replaying the model for what is shown.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vmxray_analyze::pass::Stepped;
use vmxray_analyze::stats::StatsReport;
use vmxray_capture::printfmt::PrintCatalog;
use vmxray_capture::render::format_ts;
use vmxray_capture::{Clock, ReadStats, TraceMeta};
use vmxray_events::{Event, EventKind};
use vmxray_replay::{
    Actor, Anomaly, CrashKind, Level, Model, Severity, TraceSummary, Transition, VcpuState, triage,
};

use crate::loader::{Batch, LoadMsg};
use crate::store::{Block, Lru, Store};
use crate::summary::Lanes;

/// Decoded blocks whose tags are kept.
const TAG_CACHE_BLOCKS: usize = 64;

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
    /// The tier of `kind` for an actor the model puts at `level` after it: hardware exits
    /// are L0's, the rest runs at the actor's level.
    #[inline]
    pub fn of(kind: &EventKind, level: Option<Level>) -> Self {
        match kind {
            EventKind::KvmExit(_) | EventKind::KvmNestedVmexit(_) => Self::L0Exit,
            _ => match level {
                Some(Level::L1) => Self::L1,
                Some(Level::L2) => Self::L2,
                None => Self::Unknown,
            },
        }
    }

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
        /// How much of the input the pass has read (0–1), when the input says.
        fraction: Option<f64>,
        /// Events the pass has read.
        events: u64,
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
    store: Store,
    /// Every actor, in first-seen order (tags point here).
    pub actors: Vec<Actor>,
    actor_ids: HashMap<Actor, u16>,
    /// Every anomaly, in event order.
    pub anomalies: Vec<Anomaly>,
    /// Indices into `anomalies` per severity, most severe first (the Anomalies view's order).
    by_severity: [Vec<u32>; 4],
    /// Fatal events, in event order.
    pub crashes: Vec<(u64, CrashKind)>,
    /// Lost-event markers, in event order.
    pub lost: Vec<u64>,
    /// Model snapshots at block starts, by event index. Boxed: a ~900-byte model inline made
    /// each growth of the list copy them all into fresh pages (page faults on the UI thread,
    /// seen in profiles of the load).
    checkpoints: Vec<(u64, Box<Model>)>,
    /// The lanes' summaries.
    pub lanes: Lanes,
    /// The statistics report (`vmxray stats`), once everything is read.
    pub stats: Option<Box<StatsReport>>,
    /// The model's summary, once everything is read.
    pub summary: Option<Box<TraceSummary>>,
    /// What reading counted (lost, skipped, unknown), once everything is read.
    pub read: Option<Box<ReadStats>>,
    /// Loading progress.
    pub progress: Progress,
    /// From a saved index: the model checkpoints are being rebuilt, this far (0–1).
    pub rebuilding: Option<f64>,
    /// From a saved index: how long the checkpoints' replay has run.
    pub rebuild_elapsed: Duration,
    /// Where the index was saved or loaded from.
    pub note: Option<String>,
    tags: RefCell<Lru<Vec<EventTag>>>,
    /// The model at the start of a block, left by the last tags replay (so that walking the
    /// blocks in order replays each once).
    replay: RefCell<Option<(usize, Model)>>,
    /// The trace's print fmts (binary inputs): the detail view renders untyped events with
    /// them, as `trace-cmd report -N` does.
    pub print: Option<Arc<PrintCatalog>>,
    /// Host context of exits by the `kvm_exit`'s index (traces with host events only).
    pub contexts: std::collections::HashMap<u64, vmxray_analyze::context::ExitContext>,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            meta: None,
            store: Store::default(),
            actors: Vec::new(),
            actor_ids: HashMap::new(),
            anomalies: Vec::new(),
            by_severity: Default::default(),
            crashes: Vec::new(),
            lost: Vec::new(),
            checkpoints: Vec::new(),
            print: None,
            lanes: Lanes::default(),
            contexts: std::collections::HashMap::new(),
            stats: None,
            summary: None,
            read: None,
            progress: Progress::Loading { elapsed: Duration::ZERO, fraction: None, events: 0 },
            rebuilding: None,
            rebuild_elapsed: Duration::ZERO,
            note: None,
            tags: RefCell::new(Lru::new(TAG_CACHE_BLOCKS)),
            replay: RefCell::new(None),
        }
    }
}

/// The tag of an event the model just stepped (the loader's pass and the replays for the views
/// tag the same way).
#[inline(always)]
pub fn tag_of(s: &Stepped<'_>, actor_id: Option<u16>) -> EventTag {
    let event = s.event;
    let tier = Tier::of(&event.kind, s.level());
    let lost = matches!(event.kind, EventKind::Lost { .. });
    let crash = triage::fatal(&event.kind).is_some();
    EventTag::new(
        actor_id.unwrap_or(EventTag::NO_ACTOR),
        tier,
        !s.step().anomalies.is_empty(),
        crash,
        lost,
    )
}

/// The Anomalies view lists the worst first: its slot is the severity's rank reversed.
fn severity_rank(s: Severity) -> usize {
    Severity::ALL.len() - 1 - s.rank()
}

impl Trace {
    fn add_checkpoints(&mut self, snapshots: Vec<(u64, Model)>) {
        self.checkpoints.extend(snapshots.into_iter().map(|(at, m)| (at, Box::new(m))));
    }

    /// Applies one loader message.
    pub fn apply(&mut self, msg: LoadMsg) {
        match msg {
            LoadMsg::Opened { meta, backing } => {
                self.meta = Some(meta);
                self.store.set_backing(backing);
            }
            LoadMsg::Batch(batch) => self.append(batch),
            LoadMsg::Print(catalog) => self.print = Some(catalog),
            LoadMsg::Done { stats, summary, read, elapsed } => {
                self.stats = Some(stats);
                self.summary = summary;
                self.read = Some(read);
                self.progress = Progress::Done { elapsed };
            }
            LoadMsg::Failed(error) => self.progress = Progress::Failed { error },
            LoadMsg::Checkpoints { snapshots, fraction, elapsed } => {
                self.add_checkpoints(snapshots);
                self.rebuilding = (fraction < 1.0).then_some(fraction);
                self.rebuild_elapsed = elapsed;
            }
            LoadMsg::Note(note) => self.note = Some(note),
            LoadMsg::Lanes(lanes) => self.lanes = lanes,
        }
    }

    fn append(&mut self, batch: Batch) {
        let Batch {
            blocks,
            buckets,
            anomalies,
            crashes,
            lost,
            snapshots,
            actors,
            events,
            fraction,
            contexts,
            elapsed,
        } = batch;
        self.contexts.extend(contexts.into_iter().map(|c| (c.index, c)));
        self.add_checkpoints(snapshots);
        for actor in actors {
            let id = u16::try_from(self.actors.len()).unwrap_or(EventTag::NO_ACTOR);
            self.actor_ids.insert(actor, id);
            self.actors.push(actor);
        }
        for a in anomalies {
            let slot = severity_rank(a.severity);
            self.by_severity[slot].push(u32::try_from(self.anomalies.len()).unwrap_or(u32::MAX));
            self.anomalies.push(a);
        }
        self.crashes.extend(crashes);
        self.lost.extend(lost);
        self.store.extend(blocks);
        for b in buckets {
            self.lanes.push(b);
        }
        if let Progress::Loading { .. } = self.progress {
            self.progress = Progress::Loading { elapsed, fraction, events };
        }
    }

    /// Events loaded so far (in whole blocks).
    pub fn len(&self) -> u64 {
        self.store.len()
    }

    /// No event loaded yet.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Whether loading finished (successfully or not).
    pub fn is_complete(&self) -> bool {
        !matches!(self.progress, Progress::Loading { .. })
    }

    /// The blocks of the index.
    pub fn blocks(&self) -> &[Block] {
        self.store.blocks()
    }

    /// The block holding event `index`.
    pub fn block_of(&self, index: u64) -> Option<usize> {
        self.store.block_of(index)
    }

    /// The events of block `b`, decoded on demand.
    pub fn block_events(&self, b: usize) -> Option<Arc<Vec<Event>>> {
        self.store.events(b)
    }

    /// The event at `index` (decoded on demand: a copy).
    pub fn event(&self, index: u64) -> Option<Event> {
        let b = self.block_of(index)?;
        let first = self.store.blocks().get(b)?.first;
        let events = self.store.events(b)?;
        events.get(usize::try_from(index - first).ok()?).cloned()
    }

    /// The tags of block `b`: replayed from the nearest checkpoint at or before it. None while
    /// no checkpoint covers it.
    pub fn block_tags(&self, b: usize) -> Option<Arc<Vec<EventTag>>> {
        if let Some(hit) = self.tags.borrow_mut().get(b) {
            return Some(hit);
        }
        let first = self.store.blocks().get(b)?.first;
        let cp = self.checkpoints.partition_point(|(at, _)| *at <= first).checked_sub(1)?;
        let (cp_at, snapshot) = &self.checkpoints[cp];
        let cp_block = self.store.block_of(*cp_at)?;
        // Continue the last replay when it stopped between the checkpoint and this block.
        let resumed =
            self.replay.borrow_mut().take().filter(|(next, _)| (cp_block..=b).contains(next));
        let (from, mut model) = match resumed {
            Some((next, model)) => (next, model),
            None => (cp_block, snapshot.snapshot()),
        };
        self.store.prefetch(from, b);
        let mut out = None;
        for blk in from..=b {
            let events = self.store.events(blk)?;
            let mut tags = Vec::with_capacity(events.len());
            for event in events.iter() {
                model.step(event);
                let stepped = Stepped { event, model: &model };
                let actor_id = stepped.step().actor.and_then(|a| self.actor_ids.get(&a).copied());
                tags.push(tag_of(&stepped, actor_id));
            }
            let tags = Arc::new(tags);
            self.tags.borrow_mut().put(blk, Arc::clone(&tags));
            out = Some(tags);
        }
        *self.replay.borrow_mut() = Some((b + 1, model));
        out
    }

    /// The tag of the event at `index`.
    pub fn tag(&self, index: u64) -> Option<EventTag> {
        let b = self.block_of(index)?;
        let first = self.store.blocks().get(b)?.first;
        let tags = self.block_tags(b)?;
        tags.get(usize::try_from(index - first).ok()?).copied()
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

    /// The first event at or after `ts` (events are in time order; in an excerpt, whose
    /// captures each start their own clock and whose events may have no time, the first event
    /// with a time at or after `ts`).
    pub fn index_at_time(&self, ts: u64) -> u64 {
        if self.meta.as_ref().is_some_and(|m| m.excerpt) {
            // Excerpts are small: a scan of their blocks.
            for (b, block) in self.store.blocks().iter().enumerate() {
                let Some(events) = self.store.events(b) else { continue };
                if let Some(i) = events.iter().position(|e| e.time().is_some_and(|t| t >= ts)) {
                    return block.first + i as u64;
                }
            }
            return self.len().saturating_sub(1);
        }
        let blocks = self.store.blocks();
        // The last block starting at or before ts holds the answer (or its successor).
        let b = blocks.partition_point(|blk| blk.first_ts < ts).saturating_sub(1);
        let Some(block) = blocks.get(b) else { return 0 };
        match self.store.events(b) {
            Some(events) => {
                let i = events.partition_point(|e| e.ts < ts) as u64;
                (block.first + i).min(self.len().saturating_sub(1))
            }
            None => block.first,
        }
    }

    /// The replay model's state at event `index`: the state after the event, what it changed
    /// and what it violated. None while the checkpoints do not reach the event yet.
    pub fn state_at(&self, index: u64) -> Option<StateAt> {
        if index >= self.len() {
            return None;
        }
        let cp = self.checkpoints.partition_point(|(at, _)| *at <= index).checked_sub(1)?;
        let (cp_at, snapshot) = &self.checkpoints[cp];
        let from = self.store.block_of(*cp_at)?;
        let to = self.store.block_of(index)?;
        self.store.prefetch(from, to);
        let mut model: Model = snapshot.snapshot();
        for b in from..=to {
            let block_first = self.store.blocks().get(b)?.first;
            let events = self.store.events(b)?;
            for (k, event) in events.iter().enumerate() {
                let at = block_first + k as u64;
                if at < model.next_index().0 {
                    continue;
                }
                if at == index {
                    let step = model.step(event);
                    let actor = step.actor;
                    let transitions = step.transitions.to_vec();
                    let anomalies = step.anomalies.to_vec();
                    let state = actor.and_then(|a| model.state(a)).cloned();
                    let others = model
                        .states()
                        .filter(|(a, _)| Some(*a) != actor)
                        .map(|(a, s)| (a, s.clone()))
                        .collect();
                    return Some(StateAt {
                        at: index,
                        actor,
                        state,
                        transitions,
                        anomalies,
                        others,
                    });
                }
                model.step(event);
            }
        }
        None
    }

    /// Counts of anomalies per severity (critical, error, warning, info).
    pub fn severity_counts(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.by_severity[i].len())
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
