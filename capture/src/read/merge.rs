//! Per-CPU record streams decoded in parallel and merged into one time-ordered event stream.
//!
//! Each CPU's buffer is already in time order; the merged stream repeatedly takes the CPU whose
//! next event is earliest (ties: the lower CPU first, as `trace-cmd report` does):
//!
//! ```text
//!  CPU0 jobs: [j0 j1 j2 ...] --decode--> batch (events of one job) --.
//!  CPU1 jobs: [j0 j1 ...]    --decode--> batch ---------------------+--> earliest by
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
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::ordered::Ordered;
use crate::read::{ReadError, ReadStats};
use vmxray_events::event::{Event, EventKind, KnownEvent, KnownSet};

/// A decoded item: an event or a problem. The problem is boxed: it is rare, and inline it
/// made every item 104 bytes where an event takes 96 (each written by a decoding thread and
/// read by two others).
pub(crate) type Item = Result<Event, Box<ReadError>>;

/// One decoded chunk of a CPU's stream.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Events and problems, in stream order (a `Vec` while decoding, whose push is cheaper
    /// than a `VecDeque`'s; the merge takes it over as a `VecDeque` without copying).
    pub items: Vec<Item>,
    /// Records whose id no format describes, by id.
    pub unknown: BTreeMap<String, u64>,
    /// Records of the kinds the reader only counts, by [`KnownEvent`] discriminant.
    pub counted: [u64; KnownSet::CAPACITY],
    /// Records of untyped events the reader only counts, by format id (with the name).
    pub counted_other: HashMap<u32, (Arc<str>, u64), foldhash::fast::FixedState>,
    /// Where those records were, for the stream index of the events around them.
    pub skips: Vec<Skip>,
    /// Problems among the items ([`Batch::problem`]): a batch without any may be shared
    /// ([`SharedBatch`]).
    pub problems: u32,
}

impl Batch {
    /// Appends a problem in stream order.
    pub(crate) fn problem(&mut self, error: ReadError) {
        self.items.push(Err(Box::new(error)));
        self.problems = self.problems.saturating_add(1);
    }
}

/// A record counted instead of decoded ([`crate::ReadOptions::count_only`]): its time, and the
/// position in the batch's items of the item it comes before.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Skip {
    pub ts: u64,
    pub before: u32,
}

/// Emptied batch buffers, reused so that each job does not allocate (and page-fault) a fresh
/// few hundred KiB.
static RECYCLED: Mutex<Recycled> = Mutex::new(Recycled { buffers: Vec::new(), room: 0 });

/// How many emptied buffers are kept with no merger open, and on top of what open mergers
/// claim.
const RECYCLED_FLOOR: usize = 16;

/// Batches a consumer of shared batches holds besides the merger's own: the statistics stage
/// keeps ~12 while it works through its queue (4 lanes, measured on a 100 M-event trace).
const CONSUMER_HOLD: usize = 16;

/// The pool of emptied buffers. It keeps as many as the open mergers can have in use at once
/// (`room`, claimed in [`Merger::new`] and given back when it drops): a fixed number fewer
/// than that freed buffers on every job while others were allocated fresh, each of them
/// page-faulted anew (a few % of a pass's time on a 4-CPU trace).
struct Recycled {
    buffers: Vec<(Vec<Item>, Vec<Skip>)>,
    room: usize,
}

impl Recycled {
    /// The buffers a merger of `lanes` lanes may hold at once: per lane the batch being merged
    /// and those decoded ahead, plus what a consumer keeps of shared batches.
    fn claim(lanes: usize) -> usize {
        lanes.saturating_mul(LOOKAHEAD + 1).saturating_add(CONSUMER_HOLD)
    }

    /// Adds a merger's claim.
    fn open(&mut self, lanes: usize) {
        self.room = self.room.saturating_add(Self::claim(lanes));
    }

    /// Gives a merger's claim back, freeing the buffers beyond what is still claimed.
    fn close(&mut self, lanes: usize) {
        self.room = self.room.saturating_sub(Self::claim(lanes));
        self.buffers.truncate(self.room.saturating_add(RECYCLED_FLOOR));
    }

    /// Keeps an emptied buffer if there is room (else it is freed).
    fn keep(&mut self, buffers: (Vec<Item>, Vec<Skip>)) {
        if self.buffers.len() < self.room.saturating_add(RECYCLED_FLOOR) {
            self.buffers.push(buffers);
        }
    }

    /// Runs `f` on the process's pool.
    fn with<R>(f: impl FnOnce(&mut Recycled) -> R) -> Option<R> {
        RECYCLED.lock().ok().map(|mut pool| f(&mut pool))
    }
}

impl Default for Batch {
    fn default() -> Self {
        let (items, skips) =
            Recycled::with(|pool| pool.buffers.pop()).flatten().unwrap_or_default();
        Self {
            items,
            unknown: BTreeMap::new(),
            counted: [0; KnownSet::CAPACITY],
            counted_other: HashMap::default(),
            skips,
            problems: 0,
        }
    }
}

fn recycle(mut items: VecDeque<Item>, mut skips: Vec<Skip>) {
    items.clear();
    skips.clear();
    // Empty, the deque starts at its buffer's start: this takes the buffer without moving.
    let items = Vec::from(items);
    if items.capacity() == 0 && skips.capacity() == 0 {
        return;
    }
    Recycled::with(|pool| pool.keep((items, skips)));
}

/// A lane's decoded events, read in place by the merge's consumer and by a second thread the
/// consumer hands the batch to (the statistics stage), in the same order: each event is
/// written once, by the decoder, where moving it out of the batch and copying it again for the
/// other thread wrote it twice more (~100 bytes each, on the merging thread, the pass's
/// busiest). Only a batch without problems is shared. Its buffer is recycled when the last
/// holder drops it.
#[derive(Debug)]
pub struct SharedBatch {
    items: Vec<Item>,
}

impl SharedBatch {
    /// The event at `*pos` or after it, moving `pos` past it.
    #[inline]
    pub fn next_event(&self, pos: &mut usize) -> Option<&Event> {
        while let Some(item) = self.items.get(*pos) {
            *pos += 1;
            if let Ok(event) = item {
                return Some(event);
            }
        }
        None
    }
}

impl Drop for SharedBatch {
    fn drop(&mut self) {
        recycle(VecDeque::from(std::mem::take(&mut self.items)), Vec::new());
    }
}

/// An event of the merged stream as [`crate::read::tracedat::TraceDatReader::next_shared`] gives
/// it.
#[derive(Debug)]
pub enum Taken<'a> {
    /// Read in place in a shared batch of lane `lane` (the merge's lane number). `batch` is
    /// that batch when this is the first event taken from it: the consumer hands it on before
    /// the event, and the lane's later events are in it until the next batch comes.
    Placed {
        /// The event.
        event: &'a Event,
        /// The lane it came from.
        lane: u32,
        /// The lane's new batch, with its first event.
        batch: Option<Arc<SharedBatch>>,
    },
    /// Moved out of a batch that is not shared (one that holds a problem).
    Owned(Event),
}

/// A lane's items being merged: its own, moved out one by one, or shared with the consumer
/// and read in place ([`Merger::next_shared`]).
enum Items {
    Owned(VecDeque<Item>),
    Shared { batch: Arc<SharedBatch>, next: usize },
}

impl Items {
    #[inline]
    fn front(&self) -> Option<&Item> {
        match self {
            Self::Owned(items) => items.front(),
            Self::Shared { batch, next } => batch.items.get(*next),
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.front().is_none()
    }

    /// The next item, moved out (a shared batch's event is cloned: [`Merger::next`] on a
    /// merger that shares, which its consumer does not do).
    #[inline]
    fn pop(&mut self) -> Option<Item> {
        match self {
            Self::Owned(items) => items.pop_front(),
            Self::Shared { batch, next } => {
                let event = batch.next_event(next)?;
                Some(Ok(event.clone()))
            }
        }
    }
}

/// One unit of a CPU's work: decodes a few chunks of pages into a batch. Independent of the
/// other units of the same CPU (every page carries its own absolute timestamp), so several
/// decode at once.
pub(crate) type Job = crate::ordered::Job<Batch>;

/// A CPU's jobs, in stream order.
pub(crate) type Jobs = Box<dyn Iterator<Item = Job> + Send>;

/// A lane's first ready counted record in [`Merger`]'s `ready` heap: its merge key (time,
/// CPU), the lane, and its number in the lane.
type ReadySkip = ((u64, u32), usize, u64);

/// How many batches of one CPU may be decoded ahead of the merge.
const LOOKAHEAD: usize = 3;

struct Lane {
    cpu: u32,
    jobs: Jobs,
    slots: Ordered<Batch>,
    items: Items,
    /// Batches without problems become shared ([`Merger::share`]).
    share: bool,
    /// The shared batch has not been handed to the consumer yet.
    fresh: bool,
    last_ts: u64,
    /// Items taken from this lane so far: the lane position of its next item.
    taken: u64,
    /// Items of the batches before the current one, and of the current one.
    pushed: u64,
    loaded: u64,
    /// Records counted instead of decoded that the merged order has not reached yet: their
    /// time, the lane position of the item they come before, and their number in the lane.
    skips: VecDeque<PendingSkip>,
    skips_seen: u64,
}

#[derive(Clone, Copy, Debug)]
struct PendingSkip {
    ts: u64,
    before: u64,
    id: u64,
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
    #[inline]
    fn refill(&mut self, stats: &mut ReadStats, parallel: bool) -> bool {
        // Asked before every event: the check inlined, the refill (once a batch) not.
        !self.items.is_empty() || self.refill_empty(stats, parallel)
    }

    /// [`Lane::refill`] once the batch is empty.
    #[inline(never)]
    fn refill_empty(&mut self, stats: &mut ReadStats, parallel: bool) -> bool {
        while self.items.is_empty() {
            self.fill_slots(parallel);
            let Some(batch) = self.slots.pop() else { return false };
            for (k, n) in batch.unknown {
                *stats.unknown_events.entry(k).or_default() += n;
            }
            // `counted` is indexed by discriminant, as the first rows of `ALL` are.
            for (known, &n) in KnownEvent::ALL.iter().zip(&batch.counted) {
                if n > 0 {
                    stats.note_counted(known.0.name(), n);
                }
            }
            for (name, n) in batch.counted_other.values() {
                stats.note_counted(name, *n);
            }
            self.pushed += self.loaded;
            self.loaded = batch.items.len() as u64;
            for skip in &batch.skips {
                self.skips.push_back(PendingSkip {
                    ts: skip.ts,
                    before: self.pushed + u64::from(skip.before),
                    id: self.skips_seen,
                });
                self.skips_seen += 1;
            }
            let next = if self.share && batch.problems == 0 {
                self.fresh = true;
                Items::Shared { batch: Arc::new(SharedBatch { items: batch.items }), next: 0 }
            } else {
                Items::Owned(VecDeque::from(batch.items))
            };
            match std::mem::replace(&mut self.items, next) {
                Items::Owned(items) => recycle(items, batch.skips),
                // The consumer holds the batch (or dropped it, which recycled it).
                Items::Shared { .. } => recycle(VecDeque::new(), batch.skips),
            }
            self.fill_slots(parallel);
        }
        true
    }

    /// The next item, an event, as [`Merger::next_shared`] gives it: read in place in a shared
    /// batch (the batch with its first event), moved out of an owned one. `i` is the lane's
    /// number.
    #[inline]
    fn take(&mut self, i: usize) -> Option<Result<Taken<'_>, ReadError>> {
        match &mut self.items {
            Items::Owned(items) => {
                items.pop_front().map(|item| item.map(Taken::Owned).map_err(|e| *e))
            }
            Items::Shared { batch, next } => {
                let fresh = std::mem::take(&mut self.fresh).then(|| Arc::clone(batch));
                let event = batch.next_event(next)?;
                let lane = u32::try_from(i).unwrap_or(u32::MAX);
                Some(Ok(Taken::Placed { event, lane, batch: fresh }))
            }
        }
    }

    /// The merge key of the next item: its timestamp (problems sort at the last timestamp,
    /// so they surface where they occurred) and the CPU.
    #[inline]
    fn key(&self) -> Option<(u64, u32)> {
        match self.items.front()? {
            Ok(ev) => Some((ev.ts, self.cpu)),
            Err(_) => Some((self.last_ts, self.cpu)),
        }
    }
}

/// The lanes other than the current one, by the merge key of their next item (then by lane):
/// a short list with its earliest entry known, for the few CPUs of most traces, else a heap.
enum Waiting {
    /// At most [`FEW_LANES`] entries; `earliest` indexes the smallest. A change rescans the
    /// list (a few comparisons of keys side by side), where a heap's sift mispredicts.
    Few {
        lanes: Vec<((u64, u32), usize)>,
        earliest: usize,
    },
    Many(BinaryHeap<Reverse<((u64, u32), usize)>>),
}

/// Lanes up to which [`Waiting`] is a list.
const FEW_LANES: usize = 8;

impl Waiting {
    fn new(lanes: usize) -> Self {
        if lanes <= FEW_LANES {
            Self::Few { lanes: Vec::with_capacity(lanes), earliest: 0 }
        } else {
            Self::Many(BinaryHeap::with_capacity(lanes))
        }
    }

    fn push(&mut self, key: (u64, u32), lane: usize) {
        match self {
            Self::Few { lanes, earliest } => {
                lanes.push((key, lane));
                *earliest = Self::earliest_of(lanes);
            }
            Self::Many(heap) => heap.push(Reverse((key, lane))),
        }
    }

    /// When a lane waits with an earlier key than `key`, the earliest such lane leaves and
    /// `lane` (with `key`) waits in its place: one update, where a push and a pop would take
    /// two.
    #[inline]
    fn swap_if_earlier(&mut self, key: (u64, u32), lane: usize) -> Option<usize> {
        match self {
            Self::Few { lanes, earliest } => {
                let slot = lanes.get_mut(*earliest)?;
                if slot.0 >= key {
                    return None;
                }
                let next = std::mem::replace(slot, (key, lane)).1;
                *earliest = Self::earliest_of(lanes);
                Some(next)
            }
            Self::Many(heap) => match heap.peek_mut() {
                Some(mut top) if top.0.0 < key => {
                    Some(std::mem::replace(&mut *top, Reverse((key, lane))).0.1)
                }
                _ => None,
            },
        }
    }

    /// The earliest waiting lane, which stops waiting.
    fn pop(&mut self) -> Option<usize> {
        match self {
            Self::Few { lanes, earliest } => {
                if *earliest >= lanes.len() {
                    return None;
                }
                let (_, lane) = lanes.swap_remove(*earliest);
                *earliest = Self::earliest_of(lanes);
                Some(lane)
            }
            Self::Many(heap) => heap.pop().map(|Reverse((_, lane))| lane),
        }
    }

    /// The index of the smallest entry (0 for none).
    #[inline]
    fn earliest_of(lanes: &[((u64, u32), usize)]) -> usize {
        let mut best = 0;
        for (i, entry) in lanes.iter().enumerate().skip(1) {
            if lanes.get(best).is_some_and(|b| entry < b) {
                best = i;
            }
        }
        best
    }
}

/// Merges per-CPU producers into one ordered stream; counts losses and skipped problems.
///
/// The lane that yielded last stays `current` outside the waiting lanes while its next key is
/// still the smallest, so a run of events from one CPU costs one comparison each, not an
/// update of the waiting set.
///
/// Records counted instead of decoded ([`crate::ReadOptions::count_only`]) are not merged, but
/// placed: when an event is yielded, the counted records the full merge would have put before
/// it are counted in [`Merger::counted_before`], so that the event's index in the whole stream
/// is known. A lane's counted records before its next item are "ready"; the first ready one of
/// each lane waits in `ready` by merge key.
pub(crate) struct Merger {
    lanes: Vec<Lane>,
    waiting: Waiting,
    current: Option<usize>,
    parallel: bool,
    permissive: bool,
    failed: bool,
    /// (merge key, lane, skip id) of the first ready counted record of lanes; an entry whose
    /// record was placed meanwhile (its lane yielded past it) is dropped when it surfaces.
    ready: BinaryHeap<Reverse<ReadySkip>>,
    counted: u64,
}

impl Drop for Merger {
    fn drop(&mut self) {
        Recycled::with(|pool| pool.close(self.lanes.len()));
    }
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
        Recycled::with(|pool| pool.open(producers.len()));
        let mut lanes: Vec<Lane> = producers
            .into_iter()
            .map(|(cpu, jobs)| Lane {
                cpu,
                jobs,
                slots: Ordered::new(parallel),
                items: Items::Owned(VecDeque::new()),
                share: false,
                fresh: false,
                last_ts: 0,
                taken: 0,
                pushed: 0,
                loaded: 0,
                skips: VecDeque::new(),
                skips_seen: 0,
            })
            .collect();
        for lane in &mut lanes {
            lane.fill_slots(parallel);
        }
        let mut waiting = Waiting::new(lanes.len());
        for (i, lane) in lanes.iter_mut().enumerate() {
            if lane.refill(stats, parallel)
                && let Some(k) = lane.key()
            {
                waiting.push(k, i);
            }
        }
        let mut merger = Self {
            lanes,
            waiting,
            current: None,
            parallel,
            permissive,
            failed: false,
            ready: BinaryHeap::new(),
            counted: 0,
        };
        for i in 0..merger.lanes.len() {
            merger.offer(i);
        }
        merger
    }

    /// Records counted instead of yielded that come before the last event yielded, in the
    /// order of the whole stream.
    pub(crate) fn counted_before(&self) -> u64 {
        self.counted
    }

    /// Puts lane `i`'s first counted record in `ready` when it comes before the lane's next
    /// item.
    #[inline]
    fn offer(&mut self, i: usize) {
        let Some(lane) = self.lanes.get(i) else { return };
        if let Some(skip) = lane.skips.front()
            && skip.before <= lane.taken
        {
            self.ready.push(Reverse(((skip.ts, lane.cpu), i, skip.id)));
        }
    }

    /// Counts the counted records the whole stream puts before the event of lane `i` with
    /// merge key `key` (the lane's next item): the lane's own before it, and the other lanes'
    /// ready ones with an earlier key.
    #[inline]
    fn place_skips(&mut self, i: usize, key: (u64, u32)) {
        if let Some(lane) = self.lanes.get_mut(i) {
            while lane.skips.front().is_some_and(|s| s.before <= lane.taken) {
                lane.skips.pop_front();
                self.counted += 1;
            }
        }
        while let Some(&Reverse((k, m, id))) = self.ready.peek()
            && k < key
        {
            self.ready.pop();
            let Some(lane) = self.lanes.get_mut(m) else { continue };
            if lane.skips.front().is_some_and(|s| s.id == id) {
                lane.skips.pop_front();
                self.counted += 1;
                self.offer(m);
            }
        }
    }

    /// Lane `i` gave its next item.
    #[inline]
    fn took(&mut self, i: usize) {
        if let Some(lane) = self.lanes.get_mut(i) {
            lane.taken += 1;
            if !lane.skips.is_empty() {
                self.offer(i);
            }
        }
    }

    /// Picks the lane holding the earliest next item.
    #[inline]
    fn pick(&mut self, stats: &mut ReadStats) -> Option<usize> {
        if let Some(i) = self.current.take() {
            let lane = self.lanes.get_mut(i)?;
            let refilled = lane.items.is_empty();
            let more = lane.refill(stats, self.parallel);
            if refilled && !lane.skips.is_empty() {
                self.offer(i);
            }
            let lane = self.lanes.get_mut(i)?;
            if more && let Some(k) = lane.key() {
                return Some(self.waiting.swap_if_earlier(k, i).unwrap_or(i));
            }
        }
        self.waiting.pop()
    }

    /// The next event in time order (problems are counted in permissive mode, or returned once
    /// in strict mode, after which the stream ends).
    pub(crate) fn next(&mut self, stats: &mut ReadStats) -> Option<Result<Event, ReadError>> {
        // Look at the item in place and move it out once, straight into the return value: an
        // event is ~100 bytes, and extra copies of it cost more than the merge itself.
        self.merged(
            stats,
            |lane, _| lane.items.pop().map(|item| item.map_err(|e| *e)),
            |event| event,
        )
    }

    /// [`Merger::next`] for a merger that shares its batches ([`Merger::share`]): the event is
    /// read in place in its lane's batch when the batch is shared.
    #[inline]
    pub(crate) fn next_shared(
        &mut self,
        stats: &mut ReadStats,
    ) -> Option<Result<Taken<'_>, ReadError>> {
        self.merged(stats, Lane::take, Taken::Owned)
    }

    /// The merge loop of [`Merger::next`] and [`Merger::next_shared`]: the lane holding the
    /// earliest item gives it, an event through `take` (with the lane's number), a problem
    /// skipped in permissive mode, else as the stream's last item (its event, if any, through
    /// `owned`).
    #[inline(always)]
    fn merged<'a, T>(
        &'a mut self,
        stats: &mut ReadStats,
        take: impl FnOnce(&'a mut Lane, usize) -> Option<Result<T, ReadError>>,
        owned: impl Fn(Event) -> T,
    ) -> Option<Result<T, ReadError>> {
        if self.failed {
            return None;
        }
        loop {
            let i = self.pick(stats)?;
            self.current = Some(i);
            if self.lanes.get(i)?.items.front()?.is_ok() {
                self.yielding(i, stats)?;
                return take(self.lanes.get_mut(i)?, i);
            }
            if let Some(stop) = self.problem(i, stats) {
                return stop.map(|item| item.map(&owned).map_err(|e| *e));
            }
        }
    }

    /// Shares the batches that hold no problem, the lanes' current ones and those to come
    /// ([`Merger::next_shared`]).
    pub(crate) fn share(&mut self) {
        for lane in &mut self.lanes {
            lane.share = true;
            if let Items::Owned(items) = &mut lane.items
                && !items.is_empty()
                && items.iter().all(Result::is_ok)
            {
                let items = Vec::from(std::mem::take(items));
                lane.items = Items::Shared { batch: Arc::new(SharedBatch { items }), next: 0 };
                lane.fresh = true;
            }
        }
    }

    /// Lane `i`'s next item, an event, is the one given: counts it (and its losses) and places
    /// the counted records before it.
    #[inline]
    fn yielding(&mut self, i: usize, stats: &mut ReadStats) -> Option<()> {
        let lane = self.lanes.get_mut(i)?;
        let Some(Ok(ev)) = lane.items.front() else { return None };
        lane.last_ts = ev.ts;
        if let EventKind::Lost { count } = ev.kind {
            stats.note_lost(ev.cpu, count);
        }
        stats.events += 1;
        let key = (ev.ts, lane.cpu);
        if !self.ready.is_empty() || !lane.skips.is_empty() {
            self.place_skips(i, key);
        }
        self.took(i);
        Some(())
    }

    /// Lane `i`'s next item is a problem: skipped and counted in permissive mode (`None`: the
    /// merge goes on), else the stream's last item.
    fn problem(&mut self, i: usize, stats: &mut ReadStats) -> Option<Option<Item>> {
        let permissive = self.permissive;
        let lane = self.lanes.get_mut(i)?;
        // A shared batch holds no problem: only an owned one gets here.
        let item = match &mut lane.items {
            Items::Owned(items) => items.pop_front(),
            Items::Shared { next, .. } => {
                *next += 1;
                None
            }
        };
        if permissive {
            if let Some(Err(err)) = item {
                stats.note_skipped(*err);
            }
            self.took(i);
            None
        } else {
            self.failed = true;
            Some(item)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_buffer_pool_keeps_what_open_mergers_can_hold_and_frees_the_rest_when_they_close() {
        let buffer = || (Vec::<Item>::with_capacity(8), Vec::<Skip>::new());
        let mut pool = Recycled { buffers: Vec::new(), room: 0 };
        // With no merger open, the floor.
        for _ in 0..RECYCLED_FLOOR + 5 {
            pool.keep(buffer());
        }
        assert_eq!(pool.buffers.len(), RECYCLED_FLOOR);
        // A 4-lane merger holds its 4 batches and 3 ahead of each, and its consumer some:
        // every one it gives back is kept for its next jobs.
        pool.open(4);
        let claim = 4 * (LOOKAHEAD + 1) + CONSUMER_HOLD;
        for _ in 0..claim + 5 {
            pool.keep(buffer());
        }
        assert_eq!(pool.buffers.len(), claim + RECYCLED_FLOOR);
        // Two mergers at once claim both.
        pool.open(64);
        for _ in 0..1000 {
            pool.keep(buffer());
        }
        assert_eq!(pool.buffers.len(), claim + Recycled::claim(64) + RECYCLED_FLOOR);
        // Closed, they leave the floor.
        pool.close(64);
        assert_eq!(pool.buffers.len(), claim + RECYCLED_FLOOR);
        pool.close(4);
        assert_eq!((pool.buffers.len(), pool.room), (RECYCLED_FLOOR, 0));
    }

    /// A merge key: small times and CPUs, so that keys tie now and then.
    fn key() -> impl Strategy<Value = (u64, u32)> {
        (0u64..16, 0u32..3)
    }

    proptest! {
        /// The list and the heap pick the same lanes, ties included: one merge step after
        /// another (the current lane's next key against the earliest waiting one; `None`: the
        /// current lane ran out).
        #[test]
        fn the_short_list_of_waiting_lanes_picks_as_the_heap_does(
            waiting in proptest::collection::vec(key(), 0..FEW_LANES),
            steps in proptest::collection::vec(prop_oneof![7 => key().prop_map(Some), 1 => Just(None)], 0..64),
        ) {
            let mut few = Waiting::new(waiting.len() + 1);
            let mut many = Waiting::Many(BinaryHeap::new());
            let is_list = matches!(few, Waiting::Few { .. });
            prop_assert!(is_list);
            for (lane, &k) in waiting.iter().enumerate() {
                few.push(k, lane + 1);
                many.push(k, lane + 1);
            }
            let mut current = Some(0);
            for step in steps {
                current = match (current, step) {
                    (Some(lane), Some(k)) => {
                        let (a, b) = (few.swap_if_earlier(k, lane), many.swap_if_earlier(k, lane));
                        prop_assert_eq!(a, b);
                        Some(a.unwrap_or(lane))
                    }
                    _ => {
                        let (a, b) = (few.pop(), many.pop());
                        prop_assert_eq!(a, b);
                        a
                    }
                };
                if current.is_none() {
                    break;
                }
            }
        }
    }
}
