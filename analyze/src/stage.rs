//! The exit statistics and the host context on a second thread: what only reads the stepped
//! events, taken off the thread that merges the trace and steps the model.
//!
//! A pass's consumer thread is the one the whole load waits for when its work is most of the
//! load's (the TUI's pass runs every rule and builds the index). [`ExitStats`] and
//! [`HostContext`] need each event with its actor and, for a `kvm_nested_vmexit`, the vmcs12
//! the model held current; nothing the pass does later depends on them. So the consumer notes
//! each event with those in a batch and a second thread counts the batches:
//!
//! ```text
//!  consumer:  merge ─► Model::step ─► index ─► batch [note; BATCH] ──────send──┐
//!                                    ▲                                        ▼
//!                                    └──── emptied batches (recycled) ◄── stage: ExitStats,
//!                                                                   HostContext, StageWork
//!                                   exit contexts (take_contexts) ◄──────────┘
//! ```
//!
//! The consumer moves an event it owns into the batch ([`StatsStage::push`]). An event read in
//! place in a reader's [`SharedBatch`] stays there: the consumer hands the stage the shared
//! batch once, with its first event, and then only a note per event naming the batch's lane
//! ([`StatsStage::push_placed`]); the stage reads the event where the decoder wrote it. On
//! the consumer's thread a note is a ~40-byte write, where a copy of the event was ~130.
//!
//! A caller may run work of its own there ([`StageWork`]): each event comes with a note the
//! consumer attached (what only it knows then), and the work hands its results back itself
//! (the TUI counts its timeline lanes this way).
//!
//! The stage sees the events in the pass's order, so its statistics and contexts are the ones
//! the pass would have built itself; only the exit contexts arrive later (a batch or a few).
//! Memory: at most [`IN_FLIGHT`] batches of [`BATCH`] events queued, plus the recycled ones.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use vmxray_capture::read::SharedBatch;
use vmxray_events::{Actor, Event};

use crate::context::{ExitContext, HostContext};
use crate::stats::ExitStats;

/// Events per batch handed to the stage.
pub const BATCH: usize = 4096;

/// Batches queued for the stage before the consumer waits for it. On two cores the stage
/// thread waits its turn behind the decoding threads for milliseconds at a time (scheduler
/// traces of the TUI's pass); with four batches queued the consumer then stopped too, 0.15 s
/// over 10 M events. Sixteen (~8 MiB) carry it over those waits.
pub const IN_FLIGHT: usize = 16;

/// Work of the caller's own that runs on the stage thread beside the statistics: per event,
/// with a note the consumer attaches to it (what only the consumer knows then, say the
/// model's level), and once per batch, to hand over what it found (through its own channel).
/// The TUI counts its timeline lanes this way.
pub trait StageWork: Send + 'static {
    /// What the consumer attaches to each event.
    type Note: Copy + Send + 'static;

    /// One event with its actor and note, in the pass's order.
    fn event(&mut self, event: &Event, actor: Option<Actor>, note: Self::Note);

    /// The events of one batch are all counted.
    fn batch_done(&mut self) {}
}

/// No work beside the statistics.
#[derive(Debug, Default)]
pub struct NoWork;

impl StageWork for NoWork {
    type Note = ();

    #[inline]
    fn event(&mut self, _event: &Event, _actor: Option<Actor>, _note: ()) {}
}

/// One stepped event as the stage needs it: where the event is (`lane`: in that lane's shared
/// batch, or [`OWNED`]: the next of the batch's own events), its actor and, for a
/// `kvm_nested_vmexit`, the vmcs12 (a value and whether there is one: an `Option<u64>` takes
/// 16 bytes), and the caller's note.
#[derive(Clone, Copy, Debug)]
struct Deferred<N> {
    lane: u32,
    actor: Option<Actor>,
    vmcs12: u64,
    has_vmcs12: bool,
    note: N,
}

/// [`Deferred::lane`] of an event the batch holds itself.
const OWNED: u32 = u32::MAX;

impl<N> Deferred<N> {
    fn vmcs12(&self) -> Option<u64> {
        self.has_vmcs12.then_some(self.vmcs12)
    }
}

/// A batch of stepped events for the stage: the notes in the pass's order, the events moved
/// in (in the order of their notes), and the shared batches, each with the number of the note
/// of its first event.
#[derive(Debug)]
struct Batch<N> {
    notes: Vec<Deferred<N>>,
    owned: Vec<Event>,
    shared: Vec<(usize, u32, Arc<SharedBatch>)>,
}

impl<N> Batch<N> {
    fn new() -> Self {
        Self { notes: Vec::with_capacity(BATCH), owned: Vec::new(), shared: Vec::new() }
    }

    fn clear(&mut self) {
        self.notes.clear();
        self.owned.clear();
        self.shared.clear();
    }
}

/// Where the stage reads the events of the lanes' shared batches: each lane's current batch
/// and the position of its next event.
#[derive(Default)]
struct Lanes(Vec<Option<(Arc<SharedBatch>, usize)>>);

impl Lanes {
    /// Lane `lane`'s events are in `batch` from now on.
    fn start(&mut self, lane: u32, batch: Arc<SharedBatch>) {
        let lane = lane as usize;
        if self.0.len() <= lane {
            self.0.resize_with(lane + 1, || None);
        }
        if let Some(slot) = self.0.get_mut(lane) {
            *slot = Some((batch, 0));
        }
    }

    /// Lane `lane`'s next event.
    #[inline]
    fn next(&mut self, lane: u32) -> Option<&Event> {
        let (batch, pos) = self.0.get_mut(lane as usize)?.as_mut()?;
        batch.next_event(pos)
    }
}

/// What the stage hands back at the end.
#[derive(Debug)]
pub struct StageEnd<W = NoWork> {
    /// The statistics of every event pushed.
    pub stats: ExitStats,
    /// The host context of every event pushed (its log emptied into `contexts`), when the
    /// stage was given one.
    pub context: Option<HostContext>,
    /// The exit contexts not yet taken with [`StatsStage::take_contexts`].
    pub contexts: Vec<ExitContext>,
    /// The caller's work, after every event.
    pub work: W,
}

/// What the stage thread returns.
type Built<W> = (ExitStats, Option<HostContext>, W);

/// [`ExitStats`], [`HostContext`] and the caller's [`StageWork`] run on a second thread, fed
/// in batches.
#[derive(Debug)]
pub struct StatsStage<W: StageWork = NoWork> {
    batch: Batch<W::Note>,
    to_stage: Option<SyncSender<Batch<W::Note>>>,
    recycled: Receiver<Batch<W::Note>>,
    contexts: Receiver<Vec<ExitContext>>,
    worker: Option<JoinHandle<Built<W>>>,
}

impl StatsStage {
    /// Starts the stage thread with the statistics and the host context to feed (none for an
    /// input that cannot hold a host event: [`HostContext::possible_in`]). With a host
    /// context built by [`HostContext::with_exit_log`], the exit contexts of traces with host
    /// events come back through [`StatsStage::take_contexts`].
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(stats: ExitStats, context: Option<HostContext>) -> std::io::Result<Self> {
        Self::start_with(stats, context, NoWork)
    }

    /// One event the pass stepped, with its actor (`Step::actor`) and, for a
    /// `kvm_nested_vmexit`, the vmcs12 the model holds current after it.
    #[inline]
    pub fn push(&mut self, event: Event, actor: Option<Actor>, vmcs12: Option<u64>) {
        self.push_noted(event, actor, vmcs12, ());
    }
}

impl<W: StageWork> StatsStage<W> {
    /// [`StatsStage::start`], with `work` fed every event after the statistics.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start_with(
        stats: ExitStats,
        context: Option<HostContext>,
        work: W,
    ) -> std::io::Result<Self> {
        let (to_stage, batches) = sync_channel::<Batch<W::Note>>(IN_FLIGHT);
        let (give_back, recycled) = sync_channel::<Batch<W::Note>>(IN_FLIGHT + 2);
        let (send_contexts, contexts) = std::sync::mpsc::channel::<Vec<ExitContext>>();
        let worker = std::thread::Builder::new().name("vmxray-stats".into()).spawn(move || {
            let (mut stats, mut context, mut work) = (stats, context, work);
            let mut lanes = Lanes::default();
            for mut batch in batches {
                // Read in place, then dropped at once: moving each ~100-byte event out of the
                // batch showed as a copy per event in profiles.
                let mut owned = batch.owned.iter();
                let mut shared = batch.shared.drain(..);
                // The note of the next shared batch's first event (none: past the last note).
                let mut next = shared.next();
                let mut start_at = next.as_ref().map_or(usize::MAX, |(at, ..)| *at);
                for (i, d) in batch.notes.iter().enumerate() {
                    while i == start_at {
                        if let Some((_, lane, first)) = next.take() {
                            lanes.start(lane, first);
                        }
                        next = shared.next();
                        start_at = next.as_ref().map_or(usize::MAX, |(at, ..)| *at);
                    }
                    let event = if d.lane == OWNED { owned.next() } else { lanes.next(d.lane) };
                    // Always there: the consumer hands an event, or its batch, with its note.
                    let Some(event) = event else { continue };
                    stats.push_attributed(event, d.actor, d.vmcs12());
                    if let Some(context) = &mut context {
                        context.push_stepped(event, d.actor);
                    }
                    work.event(event, d.actor, d.note);
                }
                drop(shared);
                batch.clear();
                work.batch_done();
                if let Some(context) = &mut context {
                    // Without host events the log holds in-KVM-only rows nobody shows.
                    let rows = context.take_attributed();
                    if context.has_host_events() && !rows.is_empty() {
                        let _ = send_contexts.send(rows);
                    }
                }
                // A full queue of emptied batches: this one is dropped instead.
                let _ = give_back.try_send(batch);
            }
            (stats, context, work)
        })?;
        Ok(Self {
            batch: Batch::new(),
            to_stage: Some(to_stage),
            recycled,
            contexts,
            worker: Some(worker),
        })
    }

    /// [`StatsStage::push`] with the note the work gets with the event.
    #[inline]
    pub fn push_noted(
        &mut self,
        event: Event,
        actor: Option<Actor>,
        vmcs12: Option<u64>,
        note: W::Note,
    ) {
        self.batch.owned.push(event);
        self.note(OWNED, actor, vmcs12, note);
    }

    /// [`StatsStage::push_noted`] for an event the consumer read in place in lane `lane`'s
    /// shared batch (the stage reads it there). `batch` is the lane's new batch, given with its
    /// first event ([`vmxray_capture::read::Taken::Placed`]).
    #[inline]
    pub fn push_placed(
        &mut self,
        lane: u32,
        batch: Option<Arc<SharedBatch>>,
        actor: Option<Actor>,
        vmcs12: Option<u64>,
        note: W::Note,
    ) {
        if let Some(batch) = batch {
            self.batch.shared.push((self.batch.notes.len(), lane, batch));
        }
        self.note(lane, actor, vmcs12, note);
    }

    #[inline]
    fn note(&mut self, lane: u32, actor: Option<Actor>, vmcs12: Option<u64>, note: W::Note) {
        let (has_vmcs12, vmcs12) = (vmcs12.is_some(), vmcs12.unwrap_or(0));
        self.batch.notes.push(Deferred { lane, actor, vmcs12, has_vmcs12, note });
        if self.batch.notes.len() >= BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        let fresh = self.recycled.try_recv().unwrap_or_else(|_| Batch::new());
        let full = std::mem::replace(&mut self.batch, fresh);
        if let Some(to_stage) = &self.to_stage
            && to_stage.send(full).is_err()
        {
            // The stage thread is gone (it panicked): [`StatsStage::finish`] reports it.
            self.to_stage = None;
        }
    }

    /// The exit contexts the stage has produced since the last call, in the order their entries
    /// came (without waiting for the events still queued).
    pub fn take_contexts(&mut self) -> Vec<ExitContext> {
        let mut out = Vec::new();
        loop {
            match self.contexts.try_recv() {
                Ok(rows) => out.extend(rows),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Hands the stage the last events, waits for it, and returns what it built; `None` when
    /// the stage thread panicked.
    pub fn finish(mut self) -> Option<StageEnd<W>> {
        if !self.batch.notes.is_empty() {
            self.send();
        }
        // Closing the channel ends the stage's loop.
        self.to_stage = None;
        let (stats, context, work) = self.worker.take()?.join().ok()?;
        let contexts = self.take_contexts();
        Some(StageEnd { stats, context, contexts, work })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
    use std::ops::ControlFlow;
    use vmxray_events::EventKind;
    use vmxray_events::test_util::EventBuilder;

    /// Feeds the stage from a pass's sink, as the TUI's loader does.
    struct Feed<'a> {
        stage: &'a mut StatsStage,
    }

    impl Sink for Feed<'_> {
        fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
            let vmcs12 = match s.event.kind {
                EventKind::KvmNestedVmexit(_) => s.current_vmcs12(),
                _ => None,
            };
            self.stage.push(s.event.clone(), s.step().actor, vmcs12);
            ControlFlow::Continue(())
        }
    }

    /// What the loader notes of a stepped event: its actor and, for a `kvm_nested_vmexit`, the
    /// vmcs12.
    #[derive(Default)]
    struct Noted(Option<Actor>, Option<u64>);

    impl Sink for Noted {
        fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
            let vmcs12 = match s.event.kind {
                EventKind::KvmNestedVmexit(_) => s.current_vmcs12(),
                _ => None,
            };
            *self = Self(s.step().actor, vmcs12);
            ControlFlow::Continue(())
        }
    }

    #[test]
    fn events_read_in_place_give_the_statistics_moved_events_give() {
        use std::path::Path;
        use std::sync::Arc;
        use vmxray_capture::ReadOptions;
        use vmxray_capture::read::Taken;
        use vmxray_capture::read::tracedat::TraceDat;

        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/real");
        // Real VMX exits of an L1 Linux and its nested guest, then a trace with host events.
        let traces = ["vmx/linux-l1-shadow-6.1.dat", "tracedat/context-io-loop-v7-zstd.dat"];
        let open =
            |name: &str| Arc::new(TraceDat::open(Path::new(&format!("{root}/{name}"))).unwrap());

        let mut inline = Pass::new(PassConfig::default());
        let mut context = HostContext::new();
        for name in traces {
            for e in open(name).events(0, ReadOptions::default()).unwrap() {
                let _ = inline.step(&e.unwrap(), &mut context);
            }
        }
        let want = inline.finish(None, None).stats.expect("statistics");

        let mut stage =
            StatsStage::start(ExitStats::new(), Some(HostContext::new())).expect("thread");
        let mut pass = Pass::new(PassConfig { stats: StatsMode::Off, ..PassConfig::default() });
        let mut noted = Noted::default();
        // The first trace read in place, the second moved.
        let mut reader = open(traces[0]).events(0, ReadOptions::default()).unwrap().sharing();
        let mut placed = 0;
        while let Some(taken) = reader.next_shared() {
            match taken.unwrap() {
                Taken::Placed { event, lane, batch } => {
                    let _ = pass.step(event, &mut noted);
                    stage.push_placed(lane, batch, noted.0, noted.1, ());
                    placed += 1;
                }
                Taken::Owned(event) => {
                    let _ = pass.step(&event, &mut noted);
                    stage.push(event, noted.0, noted.1);
                }
            }
        }
        assert!(placed > BATCH, "several of the stage's batches read in place: {placed}");
        for e in open(traces[1]).events(0, ReadOptions::default()).unwrap() {
            let _ = pass.step(&e.unwrap(), &mut Feed { stage: &mut stage });
        }
        let end = stage.finish().expect("the stage ran");
        let got = end.stats.finish(None, None);
        assert_eq!(
            serde_json::to_value(&got).expect("json"),
            serde_json::to_value(&want).expect("json")
        );
        assert!(got.exits.as_ref().is_some_and(|x| x.total > 1000), "real exits counted");
    }

    #[test]
    fn a_note_with_a_small_caller_note_stays_within_40_bytes() {
        // The consumer writes one per event: what it writes instead of the ~100-byte event.
        assert!(std::mem::size_of::<Deferred<()>>() <= 40);
        assert!(std::mem::size_of::<Deferred<[u8; 6]>>() <= 40);
    }

    #[test]
    fn the_stage_builds_the_statistics_the_pass_builds_itself() {
        let mut t = EventBuilder::new();
        // More than two batches of L1 exits and of L2 exits reflected to L1.
        t.establish_l1();
        for i in 0..(BATCH as u64) {
            t.l1_exit(10, 0x1000 + i);
            t.enter_l2(24, 0x3000, 0x5000, 0x2000 + i, true, 0x7000);
            t.reflect(30, 0x2000 + i, 0x3005);
        }
        let events = t.events;

        let mut inline = Pass::new(PassConfig::default());
        let mut context = HostContext::new();
        for e in &events {
            let _ = inline.step(e, &mut context);
        }
        let want = inline.finish(None, None).stats.expect("statistics");

        let mut stage =
            StatsStage::start(ExitStats::new(), Some(HostContext::new())).expect("thread");
        let mut pass = Pass::new(PassConfig { stats: StatsMode::Off, ..PassConfig::default() });
        for e in &events {
            let _ = pass.step(e, &mut Feed { stage: &mut stage });
        }
        let end = stage.finish().expect("the stage ran");
        assert!(end.contexts.is_empty(), "no host events: no exit contexts");
        assert!(end.context.and_then(HostContext::finish).is_none());
        let got = end.stats.finish(None, None);
        assert_eq!(
            serde_json::to_value(&got).expect("json"),
            serde_json::to_value(&want).expect("json")
        );
        assert_eq!(got.exits.as_ref().map(|x| x.total), Some(3 * BATCH as u64 + 1));
    }
}
