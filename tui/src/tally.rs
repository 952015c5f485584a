//! The timeline's counts of a loading trace, taken on the statistics thread: per event, its
//! lane bucket, and whether it is fatal or a lost-events marker.
//!
//! The loader's thread (merge, model, rules) is the one the whole load waits for, so what
//! only needs facts it already has travels with the event to the statistics stage
//! ([`vmxray_analyze::stage::StatsStage`]) as a [`Note`]: the event's actor number, its level
//! and the worst anomaly it raised. The stage thread counts them ([`Tally`]) and sends what a
//! batch completed ([`Found`]) back to the loader, which joins it to its next batch for the UI:
//!
//! ```text
//!  loader:  Model::step ─► Note { actor number, level, worst } ─► stage batch ─┐
//!  stage:   Tally::event (bucket, crash?, lost?) ◄──────────────────────────────┘
//!           after each batch: Found ──channel──► loader ─► Batch (buckets, crashes, lost)
//! ```
//!
//! The actor numbers stay on the loader's thread: a new actor is announced in the same batch
//! as the first block holding it, so the rows on screen always name their vCPU. The counts
//! arrive a stage batch or two later than their blocks.

use std::sync::mpsc::Sender;

use vmxray_analyze::stage::StageWork;
use vmxray_events::{Actor, Event, EventKind};
use vmxray_replay::{CrashKind, Level, Severity, triage};

use crate::summary::{Bucket, FINE_EVENTS};
use crate::trace::Tier;

/// What the loader's thread knows of an event after the model stepped it, for the tally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Note {
    /// The actor's number (None: no actor, a lost marker).
    pub actor: Option<u16>,
    /// The model's level for the actor after the event.
    pub level: Option<Level>,
    /// The worst anomaly the event raised.
    pub worst: Option<Severity>,
}

/// What the tally completed since it last handed over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Completed lane buckets ([`FINE_EVENTS`] events each; the last one may be shorter).
    pub buckets: Vec<Bucket>,
    /// Fatal events: index and kind.
    pub crashes: Vec<(u64, CrashKind)>,
    /// Lost-event markers: index.
    pub lost: Vec<u64>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.crashes.is_empty() && self.lost.is_empty()
    }
}

/// Counts every event of the pass, in its order.
#[derive(Debug, Default)]
pub struct Tally {
    /// The index of the next event.
    next: u64,
    bucket: Bucket,
    found: Found,
    /// Where each batch's findings go (None: they wait for [`Tally::take`]).
    to_loader: Option<Sender<Found>>,
}

impl Tally {
    /// A tally that sends what each stage batch completed to `to_loader`.
    pub fn sending(to_loader: Sender<Found>) -> Self {
        Self { to_loader: Some(to_loader), ..Self::default() }
    }

    /// Counts the next event.
    #[inline]
    pub fn count(&mut self, event: &Event, note: Note) {
        let index = self.next;
        self.next += 1;
        let tier = Tier::of(&event.kind, note.level);
        if let Some(kind) = triage::fatal(&event.kind) {
            self.found.crashes.push((index, kind));
        }
        if let EventKind::Lost { .. } = event.kind {
            self.found.lost.push(index);
        }
        if self.bucket.len == 0 {
            self.bucket.first = index;
        }
        self.bucket.add(note.actor, tier, note.worst);
        if self.bucket.len == FINE_EVENTS {
            self.found.buckets.push(std::mem::take(&mut self.bucket));
        }
    }

    /// What was completed since the last call (not the bucket being filled).
    pub fn take(&mut self) -> Found {
        std::mem::take(&mut self.found)
    }

    /// Everything not handed over yet, with the last bucket however full.
    pub fn finish(mut self) -> Found {
        if self.bucket.len > 0 {
            self.found.buckets.push(std::mem::take(&mut self.bucket));
        }
        self.found
    }
}

impl StageWork for Tally {
    type Note = Note;

    #[inline]
    fn event(&mut self, event: &Event, _actor: Option<Actor>, note: Note) {
        self.count(event, note);
    }

    fn batch_done(&mut self) {
        if let Some(tx) = &self.to_loader
            && !self.found.is_empty()
        {
            // The loader gone (the UI quit): nothing more to hand over.
            if tx.send(std::mem::take(&mut self.found)).is_err() {
                self.to_loader = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmxray_events::test_util::EventBuilder;

    #[test]
    fn buckets_crashes_and_lost_markers_at_their_indices() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        for i in 0..FINE_EVENTS {
            t.l1_exit(10, 0x1000 + i);
        }
        let mut events = t.events;
        let lost_at = events.len() as u64;
        events.push(Event { kind: EventKind::Lost { count: Some(3) }, ..events[0].clone() });
        let mut tally = Tally::default();
        for (k, e) in events.iter().enumerate() {
            let worst = (k == 5).then_some(Severity::Error);
            tally.count(e, Note { actor: Some(0), level: Some(Level::L1), worst });
        }
        let early = tally.take();
        assert_eq!(
            early.buckets.len(),
            usize::try_from(events.len() as u64 / FINE_EVENTS).unwrap()
        );
        let found = tally.finish();
        // The marker completes no bucket: handed over with the completed ones, the last bucket
        // only at the end.
        assert_eq!((early.lost.clone(), found.lost.clone()), (vec![lost_at], vec![]));
        assert_eq!(found.buckets.len(), 1);
        let all: Vec<Bucket> = early.buckets.into_iter().chain(found.buckets).collect();
        assert_eq!(all.iter().map(|b| b.len).sum::<u64>(), events.len() as u64);
        assert_eq!(all[0].first, 0);
        assert_eq!(all[1].first, FINE_EVENTS);
        let first = &all[0].actors[0];
        assert_eq!(first.worst(), Some(Severity::Error));
        // Exits count as L0 exits, the rest at the noted level.
        let exits = events.iter().take(1024).filter(|e| matches!(e.kind, EventKind::KvmExit(_)));
        assert_eq!(u64::from(first.count(Tier::L0Exit)), exits.count() as u64);
        assert_eq!(first.count(Tier::L0Exit) + first.count(Tier::L1), 1024);
    }
}
