//! Per-CPU record streams decoded in parallel and merged into one time-ordered event stream.
//!
//! Each CPU's buffer is already in time order; the merged stream repeatedly takes the CPU whose
//! next event is earliest (ties: the lower CPU first, as `trace-cmd report` does):
//!
//! ```text
//!  CPU0 chunks: [c0 c1 c2 ...] --decode--> batch (events of one chunk) --.
//!  CPU1 chunks: [c0 c1 ...]    --decode--> batch -----------------------+--> min-heap on
//!  CPUn ...                                                              |    (ts, cpu) --> Event
//!                 next batch decoded ahead on the rayon pool ------------'
//! ```
//!
//! Memory is bounded by chunks, not by the file: each lane holds the batch being merged plus at
//! most one batch decoded ahead. The look-ahead is a rayon job that *claims* its slot; when the
//! merger needs a batch whose job has not started (say the pool is busy with other traces), it
//! claims the slot and decodes inline, so a blocked pool can never deadlock the merge.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::event::{Event, EventKind};
use crate::reader::{ReadError, ReadStats};

/// One decoded chunk of a CPU's stream.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Events and problems, in stream order.
    pub items: Vec<Result<Event, ReadError>>,
    /// Records whose id no format describes, by id.
    pub unknown: BTreeMap<String, u64>,
}

/// Produces a CPU's batches in order; `None` when the CPU's data is exhausted.
pub(crate) trait Producer: Send + 'static {
    fn produce(&mut self) -> Option<Batch>;
}

#[derive(Default)]
struct SlotState {
    producer: Option<Box<dyn Producer>>,
    ready: Option<Option<Batch>>,
    running: bool,
}

struct Slot {
    state: Mutex<SlotState>,
    done: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while decoding would poison the lock; the state is still consistent (the
        // producer is simply missing, which ends the lane).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the producer once if nobody else is, storing the result.
    fn run_if_idle(&self) {
        let mut producer = {
            let mut st = self.lock();
            if st.ready.is_some() || st.running {
                return;
            }
            let Some(p) = st.producer.take() else { return };
            st.running = true;
            p
        };
        let batch = producer.produce();
        let mut st = self.lock();
        st.producer = Some(producer);
        st.ready = Some(batch);
        st.running = false;
        self.done.notify_all();
    }

    /// The next batch: taken if ready, awaited if being decoded, else decoded here.
    fn take(&self) -> Option<Batch> {
        loop {
            {
                let mut st = self.lock();
                loop {
                    if let Some(b) = st.ready.take() {
                        return b;
                    }
                    if !st.running {
                        break;
                    }
                    st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.producer.as_ref()?;
            }
            self.run_if_idle();
        }
    }
}

struct Lane {
    cpu: u32,
    slot: Arc<Slot>,
    batch: std::vec::IntoIter<Result<Event, ReadError>>,
    head: Option<Result<Event, ReadError>>,
    last_ts: u64,
    exhausted: bool,
}

impl Lane {
    fn prefetch(&self, parallel: bool) {
        if parallel && !self.exhausted {
            let slot = Arc::clone(&self.slot);
            rayon::spawn(move || slot.run_if_idle());
        }
    }

    /// Moves the next item into `head`, refilling from the producer when the batch is empty.
    fn advance(&mut self, stats: &mut ReadStats, parallel: bool) {
        loop {
            if let Some(item) = self.batch.next() {
                self.head = Some(item);
                return;
            }
            if self.exhausted {
                self.head = None;
                return;
            }
            match self.slot.take() {
                Some(batch) => {
                    for (k, n) in batch.unknown {
                        *stats.unknown_events.entry(k).or_default() += n;
                    }
                    self.batch = batch.items.into_iter();
                    self.prefetch(parallel);
                }
                None => self.exhausted = true,
            }
        }
    }

    fn key(&self) -> Option<u64> {
        match self.head.as_ref()? {
            Ok(ev) => Some(ev.ts),
            Err(_) => Some(self.last_ts),
        }
    }
}

/// Merges per-CPU producers into one ordered stream; counts losses and skipped problems.
pub(crate) struct Merger {
    lanes: Vec<Lane>,
    heap: BinaryHeap<Reverse<(u64, u32, usize)>>,
    parallel: bool,
    permissive: bool,
    failed: bool,
}

impl Merger {
    /// Starts merging `(cpu, producer)` lanes; with `parallel`, batches are decoded ahead on
    /// the rayon pool.
    pub(crate) fn new(
        producers: Vec<(u32, Box<dyn Producer>)>,
        parallel: bool,
        permissive: bool,
        stats: &mut ReadStats,
    ) -> Self {
        let mut lanes: Vec<Lane> = producers
            .into_iter()
            .map(|(cpu, producer)| Lane {
                cpu,
                slot: Arc::new(Slot {
                    state: Mutex::new(SlotState {
                        producer: Some(producer),
                        ready: None,
                        running: false,
                    }),
                    done: Condvar::new(),
                }),
                batch: Vec::new().into_iter(),
                head: None,
                last_ts: 0,
                exhausted: false,
            })
            .collect();
        for lane in &lanes {
            lane.prefetch(parallel);
        }
        let mut heap = BinaryHeap::with_capacity(lanes.len());
        for (i, lane) in lanes.iter_mut().enumerate() {
            lane.advance(stats, parallel);
            if let Some(k) = lane.key() {
                heap.push(Reverse((k, lane.cpu, i)));
            }
        }
        Self { lanes, heap, parallel, permissive, failed: false }
    }

    /// The next event in time order (problems are counted in permissive mode, or returned once
    /// in strict mode, after which the stream ends).
    pub(crate) fn next(&mut self, stats: &mut ReadStats) -> Option<Result<Event, ReadError>> {
        if self.failed {
            return None;
        }
        loop {
            let Reverse((_, _, i)) = self.heap.pop()?;
            let lane = self.lanes.get_mut(i)?;
            let item = lane.head.take()?;
            lane.advance(stats, self.parallel);
            if let Ok(ev) = &item {
                lane.last_ts = ev.ts;
            }
            if let Some(k) = lane.key() {
                self.heap.push(Reverse((k, lane.cpu, i)));
            }
            match item {
                Ok(ev) => {
                    if let EventKind::Lost { count } = ev.kind {
                        stats.note_lost(ev.cpu, count);
                    }
                    stats.events += 1;
                    return Some(Ok(ev));
                }
                Err(err) if self.permissive => stats.note_skipped(err),
                Err(err) => {
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
    }
}

/// A producer over a precomputed list of work items, each decoded by a function.
pub(crate) struct FnProducer<W, F> {
    pub work: std::vec::IntoIter<W>,
    pub decode: F,
}

impl<W, F> Producer for FnProducer<W, F>
where
    W: Send + 'static,
    F: FnMut(W) -> Batch + Send + 'static,
{
    fn produce(&mut self) -> Option<Batch> {
        let w = self.work.next()?;
        Some((self.decode)(w))
    }
}
