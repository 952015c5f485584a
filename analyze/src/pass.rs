//! One pass over a trace: reader → model → statistics → sinks, the loop every command and the
//! TUI loader run.
//!
//! ```text
//!  reader ──Event──► Model::step ──► attribution (one Actor per event), level, anomalies,
//!                                    transitions, VMCS fields: the Step
//!                        │
//!                        ├──► ExitStats::push_attributed (the same Actor; the vmcs12 the model
//!                        │    holds current at a kvm_nested_vmexit)
//!                        └──► Sink::event (replay's printer, triage, the fields table, the
//!                             scan's rows, the TUI's chunks) with the event, the step and a
//!                             read-only view of the model
//! ```
//!
//! The model attributes every event once ([`vmxray_events::Attribution`]), resynchronizes
//! after lost events, and its state says the level; the statistics take the model's
//! attribution rather than their own, and an exit's L1/L2 level is decided in one place
//! ([`crate::stats`]: a `kvm_nested_vmexit` follows), with the vmcs12 of an L2 exit read from
//! the model at that moment. A [`Sink`] sees each event after the model stepped it and before
//! the next one; [`Sink::before`] runs before the model steps (the TUI keeps model snapshots
//! there).
//!
//! ```
//! use vmxray_analyze::pass::{Pass, PassConfig, Stepped, Sink};
//! use vmxray_events::test_util::EventBuilder;
//!
//! struct Count(usize);
//! impl Sink for Count {
//!     fn event(&mut self, s: &Stepped<'_>) -> std::ops::ControlFlow<()> {
//!         self.0 += s.step().anomalies.len();
//!         std::ops::ControlFlow::Continue(())
//!     }
//! }
//!
//! let mut t = EventBuilder::new();
//! t.l1_exit(10, 0x1000); // CPUID, then the entry
//! t.entry(0x1003);       // a second entry with no exit between: an anomaly
//! let mut pass = Pass::new(PassConfig::default());
//! let mut sink = Count(0);
//! let events = t.events.into_iter().map(Ok::<_, std::convert::Infallible>);
//! pass.run(events, &mut sink).unwrap();
//! assert_eq!(sink.0, 1);
//! let end = pass.finish(None, None);
//! assert_eq!(end.summary.events, 3);
//! assert_eq!(end.stats.unwrap().exits.unwrap().total, 1);
//! ```

use std::ops::ControlFlow;

use vmxray_capture::{ReadStats, TraceMeta};
use vmxray_events::{Event, EventKind};
use vmxray_replay::{Anomaly, Level, Model, ModelConfig, Step, TraceSummary};

use crate::stats::{ExitStats, StatsReport};

/// Which statistics a pass keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatsMode {
    /// None (replay, triage, fields).
    Off,
    /// The exit statistics (stats, the TUI).
    #[default]
    Report,
    /// The statistics and every closed exit, taken in chunks (the scan's `exits` table).
    ExitLog,
}

/// How a pass runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassConfig {
    /// The model's rules and thresholds.
    pub model: ModelConfig,
    /// The statistics kept.
    pub stats: StatsMode,
}

/// One event as a sink sees it.
#[derive(Clone, Copy)]
pub struct Stepped<'a> {
    /// The event.
    pub event: &'a Event,
    /// The model after the step (states, summary so far).
    pub model: &'a Model,
}

impl<'a> Stepped<'a> {
    /// What the model made of the event.
    ///
    /// Read from the model when asked, not copied for every event into a `Stepped` that each
    /// sink then reads right back: the copy's stores (the actor in 8 + 4 bytes) and the reads
    /// that followed them (4 + 8) did not line up, and a load that straddles stores still in
    /// flight waits until they reach the cache: ~5 % of the replaying thread's time in the
    /// TUI's pass, on the load of the actor.
    #[inline]
    pub fn step(&self) -> Step<'a> {
        self.model.last_step()
    }

    /// The level the event's actor is at after it, when the model knows.
    #[inline]
    pub fn level(&self) -> Option<Level> {
        let actor = self.step().actor?;
        self.model.state(actor)?.level()
    }

    /// The vmcs12 the actor has current after the event, when the model knows.
    #[inline]
    pub fn current_vmcs12(&self) -> Option<u64> {
        let actor = self.step().actor?;
        self.model.state(actor)?.current_vmptr
    }

    /// The vmcs12 [`ExitStats::push_attributed`] takes with this event: the one current after
    /// a `kvm_nested_vmexit` (the exit it reflects belongs to it), none for other events.
    #[inline]
    pub fn nested_exit_vmcs12(&self) -> Option<u64> {
        match self.event.kind {
            EventKind::KvmNestedVmexit(_) => self.current_vmcs12(),
            _ => None,
        }
    }
}

/// What consumes a pass.
pub trait Sink {
    /// Called before the model steps an event (the model as it was after the previous one).
    fn before(&mut self, _model: &Model) {}

    /// One event; `Break` stops the pass (the consumer is gone).
    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()>;

    /// Before the next event: the reader counted `total` records in all instead of yielding
    /// them ([`vmxray_capture::ReadOptions::count_only`], [`Pass::run_counted`]). A sink that
    /// numbers events in the stream counts them too.
    fn counted_before(&mut self, _total: u64) {}

    /// The end of the trace: anomalies only the whole trace shows (a vCPU stuck in a loop
    /// from its first event to the last of an excerpt), each at the event it names.
    fn end(&mut self, _anomalies: &[Anomaly], _model: &Model) {}
}

/// A sink that takes nothing (a pass for its statistics and summary only).
impl Sink for () {
    fn event(&mut self, _: &Stepped<'_>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// A sink lent to a pass (so that two sinks owned elsewhere can be paired).
impl<S: Sink + ?Sized> Sink for &mut S {
    fn before(&mut self, model: &Model) {
        (**self).before(model);
    }

    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        (**self).event(stepped)
    }

    fn counted_before(&mut self, total: u64) {
        (**self).counted_before(total);
    }

    fn end(&mut self, anomalies: &[Anomaly], model: &Model) {
        (**self).end(anomalies, model);
    }
}

/// A sink that may be absent (an analysis the input cannot feed).
impl<S: Sink> Sink for Option<S> {
    fn before(&mut self, model: &Model) {
        if let Some(s) = self {
            s.before(model);
        }
    }

    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        match self {
            Some(s) => s.event(stepped),
            None => ControlFlow::Continue(()),
        }
    }

    fn counted_before(&mut self, total: u64) {
        if let Some(s) = self {
            s.counted_before(total);
        }
    }

    fn end(&mut self, anomalies: &[Anomaly], model: &Model) {
        if let Some(s) = self {
            s.end(anomalies, model);
        }
    }
}

/// Two sinks in turn.
impl<A: Sink, B: Sink> Sink for (A, B) {
    fn before(&mut self, model: &Model) {
        self.0.before(model);
        self.1.before(model);
    }

    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        self.0.event(stepped)?;
        self.1.event(stepped)
    }

    fn counted_before(&mut self, total: u64) {
        self.0.counted_before(total);
        self.1.counted_before(total);
    }

    fn end(&mut self, anomalies: &[Anomaly], model: &Model) {
        self.0.end(anomalies, model);
        self.1.end(anomalies, model);
    }
}

/// How a pass ended.
#[derive(Clone, Debug)]
pub struct PassEnd {
    /// The model's summary.
    pub summary: TraceSummary,
    /// The statistics report, unless [`StatsMode::Off`].
    pub stats: Option<StatsReport>,
}

/// One pass: the model, the statistics, and the loop that feeds them and the sinks.
#[derive(Debug)]
pub struct Pass {
    model: Model,
    stats: Option<ExitStats>,
    /// Statistics of one VM only (`Vm::matches`).
    stats_vm: Option<String>,
}

impl Pass {
    /// A pass with nothing seen.
    pub fn new(config: PassConfig) -> Self {
        let stats = match config.stats {
            StatsMode::Off => None,
            StatsMode::Report => Some(ExitStats::new()),
            StatsMode::ExitLog => Some(ExitStats::with_exit_log()),
        };
        Self { model: Model::new(config.model), stats, stats_vm: None }
    }

    /// Keeps statistics of one VM only (a host trace): `selector` is its VMM process id, its
    /// name or `vmK` (`vmxray_events::Vm::matches`). The model still sees every event.
    pub fn stats_of_vm(mut self, selector: impl Into<String>) -> Self {
        self.stats_vm = Some(selector.into());
        self
    }

    /// Steps one event through the model, the statistics and `sink`.
    pub fn step(&mut self, event: &Event, sink: &mut impl Sink) -> ControlFlow<()> {
        sink.before(&self.model);
        self.model.step(event);
        let stepped = Stepped { event, model: &self.model };
        let actor = stepped.step().actor;
        let wanted = match (&self.stats_vm, actor) {
            (None, _) => true,
            // Lost-events markers concern every VM.
            (Some(_), None) => true,
            (Some(vm), Some(actor)) => self.model.attribution().in_vm(actor, event.pid, vm),
        };
        if let Some(stats) = self.stats.as_mut().filter(|_| wanted) {
            stats.push_attributed(event, actor, stepped.nested_exit_vmcs12());
        }
        sink.event(&stepped)
    }

    /// Steps every event of a stream until it ends or the sink stops it (the sink knows why);
    /// the first read error stops the pass and is returned (with `--permissive` a reader yields
    /// only the errors it cannot skip).
    pub fn run<E>(
        &mut self,
        events: impl IntoIterator<Item = Result<Event, E>>,
        sink: &mut impl Sink,
    ) -> Result<(), E> {
        self.run_counted(&mut events.into_iter(), |_| 0, sink)
    }

    /// [`Pass::run`] over a reader's events, telling the sink of the records the reader
    /// counted instead of yielding before each ([`Sink::counted_before`]; `counted_before`
    /// reads it from the reader, e.g. [`vmxray_capture::EventReader::counted_before`]). The
    /// model numbers only the events it steps.
    pub fn run_counted<I, E>(
        &mut self,
        events: &mut I,
        counted_before: impl Fn(&I) -> u64,
        sink: &mut impl Sink,
    ) -> Result<(), E>
    where
        I: Iterator<Item = Result<Event, E>> + ?Sized,
    {
        let mut counted = 0;
        while let Some(event) = events.next() {
            let event = event?;
            let before = counted_before(events);
            if before != counted {
                counted = before;
                sink.counted_before(before);
            }
            if self.step(&event, sink).is_break() {
                return Ok(());
            }
        }
        self.end(sink);
        Ok(())
    }

    /// Ends the trace for the model and hands `sink` what only the whole trace shows
    /// ([`Sink::end`]). [`Pass::run`] calls it when the stream is exhausted; a caller that
    /// steps events itself calls it once after the last.
    pub fn end(&mut self, sink: &mut impl Sink) {
        let anomalies = self.model.finish().to_vec();
        sink.end(&anomalies, &self.model);
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The statistics, unless [`StatsMode::Off`] (the scan takes closed exits from it).
    pub fn stats_mut(&mut self) -> Option<&mut ExitStats> {
        self.stats.as_mut()
    }

    /// The model and the statistics together (the scan labels closed exits with their VM).
    pub fn model_and_stats(&mut self) -> (&Model, Option<&mut ExitStats>) {
        (&self.model, self.stats.as_mut())
    }

    /// Ends the pass: the model's summary and the statistics report. `meta` and `read` come
    /// from the reader once it is exhausted.
    pub fn finish(self, meta: Option<&TraceMeta>, read: Option<&ReadStats>) -> PassEnd {
        PassEnd { summary: self.model.summary(), stats: self.stats.map(|s| s.finish(meta, read)) }
    }
}
