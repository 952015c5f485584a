//! Where a trace's events are, and how the views get them back: the loader's pass cuts the
//! stream into [`Block`]s and records, for each, where its events start in the file; the views
//! decode the blocks they show, on demand, through a small LRU of decoded blocks. Memory
//! therefore follows the screen and the index, not the trace.
//!
//! ```text
//!  trace.dat  block = 4096 events; where each CPU lane's next event is (chunk, skip)
//!             → TraceDat::events_from(lanes) merges the lanes from there
//!  text file  block = one 4 MiB run of whole lines; its byte range
//!             → a TextReader over those bytes
//!  other      (stdin, perf.data, tracefs copies, events in memory) the events themselves,
//!             4096 per block, kept in memory as before
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use vmxray_capture::read::text::TextReader;
use vmxray_capture::read::tracedat::{LanePos, TraceDat};
use vmxray_capture::{EventReader, ReadOptions};
use vmxray_events::Event;

/// Events per block for trace.dat and in-memory traces.
pub const BLOCK_EVENTS: u64 = 4096;
/// Bytes of whole lines per block of a text file.
pub const TEXT_BLOCK_BYTES: u64 = 4 << 20;
/// Decoded blocks kept (about 400 KiB each).
const CACHE_BLOCKS: usize = 48;

/// Where a block's events are.
#[derive(Clone, Debug)]
pub enum BlockPos {
    /// trace.dat: where each lane's next event is at the block's first event.
    Dat(Box<[LanePos]>),
    /// Text: the block's bytes in the file (whole lines).
    Text {
        /// Offset of the first line.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The events themselves.
    Resident(Arc<Vec<Event>>),
}

/// One block of the index.
#[derive(Clone, Debug)]
pub struct Block {
    /// Index of its first event.
    pub first: u64,
    /// Its events.
    pub len: u32,
    /// Timestamp of its first event.
    pub first_ts: u64,
    /// Where its events are.
    pub pos: BlockPos,
}

impl Block {
    /// One past its last event's index.
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.len)
    }
}

/// The file the blocks point into.
#[derive(Clone, Debug)]
pub enum Backing {
    /// Nothing (resident blocks carry their events).
    Memory,
    /// A trace.dat, its top buffer.
    Dat(Arc<TraceDat>),
    /// A text file.
    Text {
        /// The file.
        path: PathBuf,
        /// Its name in messages.
        name: Arc<str>,
    },
}

/// A tiny LRU of shared values by block number.
#[derive(Debug)]
pub struct Lru<T> {
    map: HashMap<usize, (Arc<T>, u64)>,
    tick: u64,
    capacity: usize,
}

impl<T> Lru<T> {
    /// Keeps at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Self { map: HashMap::new(), tick: 0, capacity: capacity.max(1) }
    }

    /// The value of block `b`, marked as used.
    pub fn get(&mut self, b: usize) -> Option<Arc<T>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&b).map(|(v, t)| {
            *t = tick;
            Arc::clone(v)
        })
    }

    /// Stores the value of block `b`, evicting the least recently used one when full.
    pub fn put(&mut self, b: usize, value: Arc<T>) {
        self.tick += 1;
        if self.map.len() >= self.capacity
            && !self.map.contains_key(&b)
            && let Some(old) = self.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
        {
            self.map.remove(&old);
        }
        self.map.insert(b, (value, self.tick));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// The blocks and their decoder.
#[derive(Debug)]
pub struct Store {
    blocks: Vec<Block>,
    backing: Backing,
    cache: RefCell<Lru<Vec<Event>>>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            backing: Backing::Memory,
            cache: RefCell::new(Lru::new(CACHE_BLOCKS)),
        }
    }
}

impl Store {
    /// Sets what the blocks point into.
    pub fn set_backing(&mut self, backing: Backing) {
        self.backing = backing;
        self.cache.borrow_mut().clear();
    }

    /// Appends blocks (in order).
    pub fn extend(&mut self, blocks: impl IntoIterator<Item = Block>) {
        self.blocks.extend(blocks);
    }

    /// The trace.dat the blocks point into, if that is the backing.
    pub fn dat(&self) -> Option<&Arc<TraceDat>> {
        match &self.backing {
            Backing::Dat(td) => Some(td),
            Backing::Memory | Backing::Text { .. } => None,
        }
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Events in the blocks.
    pub fn len(&self) -> u64 {
        self.blocks.last().map_or(0, Block::end)
    }

    /// No block yet.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The block holding event `index`.
    pub fn block_of(&self, index: u64) -> Option<usize> {
        if index >= self.len() {
            return None;
        }
        Some(self.blocks.partition_point(|b| b.end() <= index))
    }

    /// The events of block `b` (decoded, or from the cache).
    pub fn events(&self, b: usize) -> Option<Arc<Vec<Event>>> {
        if let Some(hit) = self.cache.borrow_mut().get(b) {
            return Some(hit);
        }
        let block = self.blocks.get(b)?;
        let events = match &block.pos {
            BlockPos::Resident(events) => return Some(Arc::clone(events)),
            BlockPos::Dat(lanes) => {
                let Backing::Dat(td) = &self.backing else { return None };
                return self.decode_dat_run(td, b, lanes, b);
            }
            BlockPos::Text { offset, len } => {
                let Backing::Text { path, name } = &self.backing else { return None };
                Arc::new(decode_text(path, name, *offset, *len, block.len)?)
            }
        };
        self.cache.borrow_mut().put(b, Arc::clone(&events));
        Some(events)
    }

    /// Decodes blocks `from..=to` of a trace.dat with one reader (consecutive blocks continue
    /// where the previous one ended), caching each; returns block `to`.
    fn decode_dat_run(
        &self,
        td: &Arc<TraceDat>,
        from: usize,
        lanes: &[LanePos],
        to: usize,
    ) -> Option<Arc<Vec<Event>>> {
        let reader = td
            .events_from(0, ReadOptions { permissive: true, ..ReadOptions::default() }, lanes)
            .ok()?;
        let mut reader = reader.filter_map(Result::ok);
        let mut last = None;
        for b in from..=to {
            let n = usize::try_from(self.blocks.get(b)?.len).ok()?;
            let events: Vec<Event> = reader.by_ref().take(n).collect();
            let events = Arc::new(events);
            self.cache.borrow_mut().put(b, Arc::clone(&events));
            last = Some(events);
        }
        last
    }

    /// Makes sure blocks `from..=to` are decoded (one pass over the file for a trace.dat),
    /// so that walking them costs one decode.
    pub fn prefetch(&self, from: usize, to: usize) {
        let missing = (from..=to).any(|b| self.cache.borrow_mut().get(b).is_none());
        if !missing {
            return;
        }
        if let (Backing::Dat(td), Some(Block { pos: BlockPos::Dat(lanes), .. })) =
            (&self.backing, self.blocks.get(from))
        {
            let td = Arc::clone(td);
            let lanes = lanes.clone();
            self.decode_dat_run(&td, from, &lanes, to.min(self.blocks.len().saturating_sub(1)));
        }
    }
}

/// The events of `len` bytes of whole lines at `offset` of a text file.
fn decode_text(
    path: &std::path::Path,
    name: &Arc<str>,
    offset: u64,
    len: u64,
    expect: u32,
) -> Option<Vec<Event>> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
    file.take(len).read_to_end(&mut bytes).ok()?;
    let reader = TextReader::new(
        Arc::clone(name),
        std::io::Cursor::new(bytes),
        ReadOptions { permissive: true, ..ReadOptions::default() },
    );
    let mut events = Vec::with_capacity(expect as usize);
    events.extend(reader.filter_map(Result::ok));
    Some(events)
}

/// Reads a text block the way the loader's pass does, for the pass itself: the events and
/// what the reader counted.
pub fn read_text_block(
    name: &Arc<str>,
    bytes: Vec<u8>,
) -> (
    Vec<Result<Event, vmxray_capture::ReadError>>,
    vmxray_capture::ReadStats,
    vmxray_capture::TraceMeta,
) {
    let mut reader = TextReader::new(
        Arc::clone(name),
        std::io::Cursor::new(bytes),
        ReadOptions { permissive: true, ..ReadOptions::default() },
    );
    let items: Vec<_> = reader.by_ref().collect();
    (items, reader.stats().clone(), reader.meta().clone())
}
