//! Per-CPU record streams decoded in parallel and merged into one time-ordered event stream.
//!
//! Each CPU's buffer is already in time order; the merged stream repeatedly takes the CPU whose
//! next event is earliest (ties: the lower CPU first, as `trace-cmd report` does):
//!
//! ```text
//!  CPU0 jobs: [j0 j1 j2 ...] --decode--> batch (events of one job) --.
//!  CPU1 jobs: [j0 j1 ...]    --decode--> batch ---------------------+--> min-heap on
//!  CPUn ...                                                         |    (ts, cpu) --> Event
//!     up to LOOKAHEAD next jobs per CPU decoded at once on the rayon pool '
//!     (a job: ~256 KiB of pages, i.e. several of trace-cmd's compressed chunks)
//!
//!  e.g.  CPU0: 10 20 30 | 40 ...     merged: 10(0) 15(1) 20(0) 20(1) 25(1) 30(0) 40(0) ...
//!        CPU1: 15 20 25 | 50 ...     (a tie goes to the lower CPU)
//! ```
//!
//! Every page carries its own absolute timestamp, so the jobs of one CPU decode independently
//! and several can decode at once. Memory is bounded by jobs, not by the file: each lane holds
//! the batch being merged plus at most `LOOKAHEAD` batches decoded ahead (their buffers are
//! recycled). The look-ahead is an [`Ordered`] queue: when the merger needs a batch whose job
//! has not started (say the pool is busy with other traces), it decodes it inline, so a busy
//! pool can never deadlock the merge.
//!
//! Lost-event markers ([`EventKind::Lost`]) ride in the stream with the page timestamp, pid -1
//! and no comm, and are counted per CPU in [`ReadStats::lost`] as they are yielded.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Mutex;

use crate::ordered::Ordered;
use crate::read::{ReadError, ReadStats};
use vmxray_events::event::{Event, EventKind};

/// A decoded item: an event or a problem.
pub(crate) type Item = Result<Event, ReadError>;

/// One decoded chunk of a CPU's stream.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Events and problems, in stream order.
    pub items: VecDeque<Item>,
    /// Records whose id no format describes, by id.
    pub unknown: BTreeMap<String, u64>,
}

/// Emptied batch buffers, reused so that each chunk does not allocate (and page-fault) a
/// fresh few hundred KiB.
static RECYCLED: Mutex<Vec<VecDeque<Item>>> = Mutex::new(Vec::new());
const RECYCLED_MAX: usize = 16;

impl Default for Batch {
    fn default() -> Self {
        let items = RECYCLED.lock().ok().and_then(|mut v| v.pop()).unwrap_or_default();
        Self { items, unknown: BTreeMap::new() }
    }
}

fn recycle(mut items: VecDeque<Item>) {
    items.clear();
    if items.capacity() == 0 {
        return;
    }
    if let Ok(mut v) = RECYCLED.lock()
        && v.len() < RECYCLED_MAX
    {
        v.push(items);
    }
}

/// One unit of a CPU's work: decodes a few chunks of pages into a batch. Independent of the
/// other units of the same CPU (every page carries its own absolute timestamp), so several
/// decode at once.
pub(crate) type Job = crate::ordered::Job<Batch>;

/// A CPU's jobs, in stream order.
pub(crate) type Jobs = Box<dyn Iterator<Item = Job> + Send>;

/// How many batches of one CPU may be decoded ahead of the merge.
const LOOKAHEAD: usize = 3;

struct Lane {
    cpu: u32,
    jobs: Jobs,
    slots: Ordered<Batch>,
    batch: VecDeque<Item>,
    last_ts: u64,
}

impl Lane {
    /// Queues jobs until `LOOKAHEAD` are in flight (on the rayon pool when `parallel`).
    fn fill_slots(&mut self, parallel: bool) {
        let want = if parallel { LOOKAHEAD } else { 1 };
        while self.slots.len() < want {
            let Some(job) = self.jobs.next() else { return };
            self.slots.push(job);
        }
    }

    /// Makes sure the batch has a next item, refilling from the jobs when it is empty;
    /// false when the lane is exhausted.
    fn refill(&mut self, stats: &mut ReadStats, parallel: bool) -> bool {
        while self.batch.is_empty() {
            self.fill_slots(parallel);
            let Some(batch) = self.slots.pop() else { return false };
            for (k, n) in batch.unknown {
                *stats.unknown_events.entry(k).or_default() += n;
            }
            recycle(std::mem::replace(&mut self.batch, batch.items));
            self.fill_slots(parallel);
        }
        true
    }

    /// The merge key of the next item: its timestamp (problems sort at the last timestamp,
    /// so they surface where they occurred) and the CPU.
    #[inline]
    fn key(&self) -> Option<(u64, u32)> {
        match self.batch.front()? {
            Ok(ev) => Some((ev.ts, self.cpu)),
            Err(_) => Some((self.last_ts, self.cpu)),
        }
    }
}

/// Merges per-CPU producers into one ordered stream; counts losses and skipped problems.
///
/// The lane that yielded last stays `current` outside the heap while its next key is still
/// the smallest, so a run of events from one CPU costs one comparison each, not a heap update.
pub(crate) struct Merger {
    lanes: Vec<Lane>,
    heap: BinaryHeap<Reverse<((u64, u32), usize)>>,
    current: Option<usize>,
    parallel: bool,
    permissive: bool,
    failed: bool,
}

impl Merger {
    /// Starts merging `(cpu, jobs)` lanes; with `parallel`, batches are decoded ahead on
    /// the rayon pool.
    pub(crate) fn new(
        producers: Vec<(u32, Jobs)>,
        parallel: bool,
        permissive: bool,
        stats: &mut ReadStats,
    ) -> Self {
        let mut lanes: Vec<Lane> = producers
            .into_iter()
            .map(|(cpu, jobs)| Lane {
                cpu,
                jobs,
                slots: Ordered::new(parallel),
                batch: VecDeque::new(),
                last_ts: 0,
            })
            .collect();
        for lane in &mut lanes {
            lane.fill_slots(parallel);
        }
        let mut heap = BinaryHeap::with_capacity(lanes.len());
        for (i, lane) in lanes.iter_mut().enumerate() {
            if lane.refill(stats, parallel)
                && let Some(k) = lane.key()
            {
                heap.push(Reverse((k, i)));
            }
        }
        Self { lanes, heap, current: None, parallel, permissive, failed: false }
    }

    /// Picks the lane holding the earliest next item.
    #[inline]
    fn pick(&mut self, stats: &mut ReadStats) -> Option<usize> {
        if let Some(i) = self.current.take() {
            let lane = self.lanes.get_mut(i)?;
            if lane.refill(stats, self.parallel)
                && let Some(k) = lane.key()
            {
                match self.heap.peek() {
                    Some(Reverse((top, _))) if *top < k => self.heap.push(Reverse((k, i))),
                    _ => return Some(i),
                }
            }
        }
        let Reverse((_, i)) = self.heap.pop()?;
        Some(i)
    }

    /// The next event in time order (problems are counted in permissive mode, or returned once
    /// in strict mode, after which the stream ends).
    pub(crate) fn next(&mut self, stats: &mut ReadStats) -> Option<Result<Event, ReadError>> {
        if self.failed {
            return None;
        }
        loop {
            let i = self.pick(stats)?;
            self.current = Some(i);
            let lane = self.lanes.get_mut(i)?;
            // Look at the item in place and move it out once, straight into the return value:
            // an event is ~100 bytes, and extra copies of it cost more than the merge itself.
            match lane.batch.front()? {
                Ok(ev) => {
                    lane.last_ts = ev.ts;
                    if let EventKind::Lost { count } = ev.kind {
                        stats.note_lost(ev.cpu, count);
                    }
                    stats.events += 1;
                    return lane.batch.pop_front();
                }
                Err(_) if self.permissive => {
                    if let Some(Err(err)) = lane.batch.pop_front() {
                        stats.note_skipped(err);
                    }
                }
                Err(_) => {
                    self.failed = true;
                    return lane.batch.pop_front();
                }
            }
        }
    }
}
