//! The model's state at any event, for browsers: keep a [`Model`] snapshot every `interval`
//! events while replaying once, then rebuild the state at event `i` by cloning the nearest
//! snapshot at or before `i` and stepping forward (at most `interval - 1` events).
//!
//! ```
//! use vmxray_events::{Entry, Event, EventKind};
//! use vmxray_replay::checkpoints::Checkpoints;
//! use vmxray_replay::{EventIndex, Model};
//!
//! let events: Vec<Event> = (0..100u64)
//!     .map(|ts| Event { ts, cpu: 0, pid: 1, tgid: None, comm: None, kind: EventKind::KvmEntry(Entry {
//!         vcpu_id: 0, rip: Some(ts), immediate_exit: None, intr_info: None, error_code: None,
//!     }) })
//!     .collect();
//! let mut model = Model::default();
//! let mut checkpoints = Checkpoints::new(16);
//! for e in &events {
//!     checkpoints.observe(&model);
//!     model.step(e);
//! }
//! // The state just before event 42.
//! let at_42 = checkpoints.model_at(EventIndex(42), |i| &events[i.0 as usize]).unwrap();
//! assert_eq!(at_42.next_index(), EventIndex(42));
//! ```

use crate::anomaly::EventIndex;
use crate::model::Model;
use vmxray_events::Event;

/// Snapshots of a model taken every `interval` events.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    interval: u64,
    snapshots: Vec<Model>,
}

impl Checkpoints {
    /// Snapshots every `interval` events (at least 1).
    pub fn new(interval: u64) -> Self {
        Self { interval: interval.max(1), snapshots: Vec::new() }
    }

    /// Call before stepping each event: keeps a snapshot when the model is at a multiple of the
    /// interval.
    pub fn observe(&mut self, model: &Model) {
        let next = model.next_index().0;
        if next.is_multiple_of(self.interval) && next / self.interval == self.snapshots.len() as u64
        {
            self.snapshots.push(model.snapshot());
        }
    }

    /// How many snapshots are kept.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// Whether no snapshot was kept.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// The model as it was just before event `at` (its [`Model::next_index`] is `at`), rebuilt
    /// from the nearest snapshot and the events `event(i)` after it. None when `at` lies beyond
    /// the observed range.
    pub fn model_at<'e>(
        &self,
        at: EventIndex,
        event: impl Fn(EventIndex) -> &'e Event,
    ) -> Option<Model> {
        let slot = usize::try_from(at.0 / self.interval).ok()?;
        let mut model = self.snapshots.get(slot)?.snapshot();
        while model.next_index() < at {
            let i = model.next_index();
            model.step(event(i));
        }
        Some(model)
    }
}
