//! Blocks of whole lines, parsed ahead on the rayon pool and handed back in input order.
//!
//! ```text
//!  input ──read──> [carry | block_size bytes] ──cut after the last \n──> block k
//!                                      (the unfinished line is carried into block k+1)
//!  block k ──job on the pool (a LineParser each)──> ParsedBlock: plain events in one queue,
//!                                                   other lines (headers, markers, errors)
//!                                                   beside it, each placed among the events
//!  Ordered queue, at most `ahead` blocks in flight ──pop in order──> TextReader, which applies
//!                                                                    them line by line
//! ```
//!
//! Everything order-dependent (line numbers, the trace's meta, counts, lost markers waiting for
//! their CPU's next event, strict mode stopping at the first error) stays with the consumer,
//! which applies the outcomes exactly as if it had parsed the lines itself; memory is bounded
//! by the blocks in flight, not by the input.
//!
//! Line boundaries follow [`super::lines::LineReader`] byte for byte: a line is what lies
//! between two `\n` (a `\r` before the `\n` dropped), the input's last line needs no `\n`, a
//! line of more than [`MAX_LINE`] bytes is skipped and reported as too long, and a read error
//! comes after the whole lines read before it (the unfinished line it interrupts is dropped).
//!
//! The one piece of parser state that can change what a line means is the layout hint (see
//! [`Layout`]): a job does not know the hint its block starts with. So until its lines stop
//! depending on it, the job follows all three possible entry hints side by side; a line read
//! differently under different hints is kept once per entry hint ([`BlockLine::ByHint`]), and
//! the job reports the hint its block ends with for each entry hint. In practice the three
//! agree on the first event line of every block.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ordered::Ordered;
use vmxray_events::event::Event;

use super::lines::{MAX_LINE, trim_cr};
use super::parser::{LineParser, Outcome, Seen, as_text};
use super::prefix::{Layout, classify_hinted};

/// Bytes read per block: large enough that the per-block costs (a job, a buffer hand-over,
/// fresh interned names) vanish, small enough that the blocks in flight and their parsed
/// events stay in the caches (a 159 MB `trace-cmd report` on 2 cores: 128 KiB blocks
/// 0.153 s, 256 KiB–1 MiB 0.146–0.150 s, 4 MiB 0.155 s; with glibc's allocator rather than
/// mimalloc, 4 MiB blocks were 35 % slower).
pub(crate) const DEFAULT_BLOCK_SIZE: usize = 512 << 10;

/// Bytes allowed for a carried line start in a new block buffer (trace lines are a few
/// hundred bytes; a longer one only costs a reallocation).
const CARRY_ROOM: usize = 4096;

/// Whole lines, as read.
struct Block {
    /// A line longer than [`MAX_LINE`] comes before `text` (its bytes were skipped).
    too_long_first: bool,
    /// Lines, each ending in `\n` except the input's last.
    text: Vec<u8>,
}

/// A line of a parsed block that is not a plain event.
#[derive(Debug)]
enum BlockLine {
    /// What the line means whatever the layout hint at the block's start.
    One(Outcome),
    /// What it means by the hint at the block's start, in [`Layout::index`] order.
    ByHint(Box<[Outcome; 3]>),
}

/// A line of a parsed block that is not a plain event, placed among the events.
#[derive(Debug)]
struct Special {
    /// How many of the block's plain events come before it.
    events_before: usize,
    /// Its index among the block's lines.
    line: u64,
    what: BlockLine,
}

/// A block's lines, parsed. Plain events (no lost marker to place, no count to make) are
/// most lines and need nothing but to be handed on, so they travel apart from the rest.
struct ParsedBlock {
    events: VecDeque<Event>,
    /// What the first plain event line says about the trace (later ones cannot change what
    /// an earlier event line has settled).
    first_seen: Option<Seen>,
    specials: VecDeque<Special>,
    /// Lines in the block.
    lines: u64,
    /// The layout hint after the block, by the hint before it ([`Layout::index`] order).
    exit: [Layout; 3],
}

impl Default for ParsedBlock {
    /// No lines, and the layout hint unchanged.
    fn default() -> Self {
        Self {
            events: VecDeque::new(),
            first_seen: None,
            specials: VecDeque::new(),
            lines: 0,
            exit: Layout::ALL,
        }
    }
}

impl ParsedBlock {
    /// Empties the block, keeping its queues' memory.
    fn clear(&mut self) {
        self.events.clear();
        self.first_seen = None;
        self.specials.clear();
        self.lines = 0;
        self.exit = Layout::ALL;
    }

    fn push(&mut self, outcome: Outcome) {
        match outcome {
            // A loose event (no time, or a QEMU line) is no plain event: it settles nothing.
            Outcome::Event { event, seen, unknown: None, truncated: None } if !seen.loose => {
                if self.events.is_empty() {
                    self.first_seen = Some(seen);
                }
                self.events.push_back(event);
            }
            other => self.push_special(BlockLine::One(other)),
        }
        self.lines += 1;
    }

    fn push_by_hint(&mut self, by_hint: [Outcome; 3]) {
        self.push_special(BlockLine::ByHint(Box::new(by_hint)));
        self.lines += 1;
    }

    fn push_special(&mut self, what: BlockLine) {
        let events_before = self.events.len();
        self.specials.push_back(Special { events_before, line: self.lines, what });
    }
}

/// What the ordered queue yields: a parsed block (with its buffer, handed back for a later
/// block), or the read error that ended the input.
enum Chunk {
    Parsed(ParsedBlock, Vec<u8>),
    Failed(io::Error),
}

/// What [`Blocks::next`] found.
pub(crate) enum Next {
    /// A plain event, with what its line says about the trace when that may matter.
    Event(Event, Option<Seen>),
    /// Another line's outcome, and its line number.
    Line(Outcome, u64),
    /// The input ended.
    End,
    /// Reading failed; the line number where.
    Failed(io::Error, u64),
}

/// Parsers not in use, shared by the jobs of one reader: each running job takes one (and
/// its buffers and tables, already grown).
type Parsers = Arc<Mutex<Vec<LineParser>>>;

fn lock(parsers: &Parsers) -> MutexGuard<'_, Vec<LineParser>> {
    // A panic inside a job would poison the lock; parsers are caches, still usable.
    parsers.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads `input` in blocks, parses them ahead and returns their lines' outcomes in order.
pub(crate) struct Blocks<R> {
    input: R,
    block_size: usize,
    /// The start of a line whose end is not read yet.
    carry: Vec<u8>,
    /// Inside a line longer than [`MAX_LINE`], dropping its bytes up to its newline.
    skipping: bool,
    /// No more bytes will be read (end of input, or a read error kept in `error`).
    eof: bool,
    error: Option<io::Error>,
    /// Every block (and the error, if any) has been queued.
    input_done: bool,
    jobs: Ordered<Chunk>,
    /// Blocks queued ahead of the one being consumed.
    ahead: usize,
    parsers: Parsers,
    /// Set when the reader stops early: queued jobs then return at once.
    cancelled: Arc<AtomicBool>,
    spare_text: Vec<Vec<u8>>,
    spare_blocks: Vec<ParsedBlock>,
    /// The block being consumed.
    current: ParsedBlock,
    /// Plain events of `current` already returned.
    taken: usize,
    /// Lines before `current`.
    base: u64,
    /// The layout hint at the start of `current`.
    entry: Layout,
}

impl<R: BufRead> Blocks<R> {
    /// Blocks of about `block_size` bytes (at least 1), parsed on the rayon pool when
    /// `parallel`, else on the consumer's thread as they are needed.
    pub(crate) fn new(input: R, block_size: usize, parallel: bool) -> Self {
        Self {
            input,
            block_size: block_size.max(1),
            carry: Vec::new(),
            skipping: false,
            eof: false,
            error: None,
            input_done: false,
            jobs: Ordered::new(parallel),
            ahead: if parallel { rayon::current_num_threads() + 1 } else { 1 },
            parsers: Arc::default(),
            cancelled: Arc::default(),
            spare_text: Vec::new(),
            spare_blocks: Vec::new(),
            current: ParsedBlock::default(),
            taken: 0,
            base: 0,
            entry: Layout::default(),
        }
    }

    /// Peeks at the start of the input without consuming it (for format detection).
    pub(crate) fn peek(&mut self) -> io::Result<&[u8]> {
        self.input.fill_buf()
    }

    /// The next line when it is a plain event; `None` when it is not (or the block is done).
    #[inline]
    pub(crate) fn next_plain_event(&mut self) -> Option<Event> {
        let block = &mut self.current;
        if block.specials.front().is_some_and(|s| s.events_before <= self.taken) {
            return None;
        }
        let event = block.events.pop_front()?;
        self.taken += 1;
        Some(event)
    }

    /// The next plain event or other line.
    #[inline]
    pub(crate) fn next(&mut self) -> Next {
        loop {
            let block = &mut self.current;
            let special_due = block
                .specials
                .front()
                .is_some_and(|s| s.events_before <= self.taken || block.events.is_empty());
            if !special_due && let Some(event) = block.events.pop_front() {
                self.taken += 1;
                return Next::Event(event, block.first_seen.take());
            }
            if let Some(special) = block.specials.pop_front() {
                let outcome = match special.what {
                    BlockLine::One(outcome) => outcome,
                    BlockLine::ByHint(by_hint) => {
                        let [dash, latency, perf] = *by_hint;
                        match self.entry {
                            Layout::Dash => dash,
                            Layout::Latency => latency,
                            Layout::Perf => perf,
                        }
                    }
                };
                return Next::Line(outcome, self.base + special.line + 1);
            }
            if let Some(next) = self.next_block() {
                return next;
            }
        }
    }

    /// Moves on to the next parsed block; returns what ends the lines instead, if anything.
    fn next_block(&mut self) -> Option<Next> {
        let mut done = std::mem::take(&mut self.current);
        // The next block starts with the hint this one ended with.
        self.entry = done.exit[self.entry.index()];
        self.base += done.lines;
        self.taken = 0;
        if self.spare_blocks.len() <= self.ahead {
            done.clear();
            self.spare_blocks.push(done);
        }
        self.fill();
        match self.jobs.pop() {
            None => return Some(Next::End),
            Some(Chunk::Failed(e)) => return Some(Next::Failed(e, self.base + 1)),
            Some(Chunk::Parsed(block, text)) => {
                if self.spare_text.len() <= self.ahead {
                    self.spare_text.push(text);
                }
                self.current = block;
            }
        }
        // Keep the pool busy while this block is consumed.
        self.fill();
        None
    }

    /// Stops: jobs still queued return without parsing.
    pub(crate) fn stop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.input_done = true;
    }

    /// Queues blocks until `ahead` are in flight or the input is all queued.
    fn fill(&mut self) {
        while !self.input_done && self.jobs.len() < self.ahead {
            self.read_block();
        }
    }

    /// Reads the next block of whole lines and queues its parse (then the read error, when
    /// reading failed).
    fn read_block(&mut self) {
        let mut text = self.spare_text.pop().unwrap_or_else(|| {
            // Room for a carried line start too, so that the first read does not reallocate.
            Vec::with_capacity(self.block_size.saturating_add(CARRY_ROOM))
        });
        text.clear();
        let mut too_long_first = false;
        if self.skipping {
            if !self.skip_rest(&mut text) {
                return self.end_inside_long_line(text);
            }
            too_long_first = true;
        } else {
            text.extend_from_slice(&self.carry);
            self.carry.clear();
        }
        // `text[..scanned]` holds no newline.
        let mut scanned = 0;
        loop {
            if let Some(at) = memchr::memrchr(b'\n', &text[scanned..]) {
                let cut = scanned + at + 1;
                self.carry.extend_from_slice(&text[cut..]);
                text.truncate(cut);
                return self.queue(Block { too_long_first, text });
            }
            scanned = text.len();
            if text.len() > MAX_LINE {
                // One unfinished line, already too long.
                text.clear();
                self.skipping = true;
                if too_long_first {
                    // The previous over-long line goes first, in a block of its own.
                    return self.queue(Block { too_long_first, text });
                }
                if !self.skip_rest(&mut text) {
                    return self.end_inside_long_line(text);
                }
                too_long_first = true;
                scanned = 0;
                continue;
            }
            if self.eof {
                self.input_done = true;
                match self.error.take() {
                    Some(e) => {
                        // As a line reader: the line the error interrupts is not a line.
                        if too_long_first {
                            text.clear();
                            self.queue(Block { too_long_first, text });
                        }
                        self.jobs.push(Box::new(move || Chunk::Failed(e)));
                    }
                    None if !text.is_empty() || too_long_first => {
                        self.queue(Block { too_long_first, text });
                    }
                    None => {}
                }
                return;
            }
            self.read_more(&mut text);
        }
    }

    /// The input ended (or failed) inside a line longer than [`MAX_LINE`].
    fn end_inside_long_line(&mut self, text: Vec<u8>) {
        self.input_done = true;
        self.skipping = false;
        match self.error.take() {
            Some(e) => self.jobs.push(Box::new(move || Chunk::Failed(e))),
            None => self.queue(Block { too_long_first: true, text }),
        }
    }

    /// Reads and drops the rest of an over-long line: true when its newline was found (what
    /// follows it is left in `text`), false when the input ended or failed first.
    fn skip_rest(&mut self, text: &mut Vec<u8>) -> bool {
        loop {
            if let Some(at) = memchr::memchr(b'\n', text) {
                text.drain(..=at);
                self.skipping = false;
                return true;
            }
            text.clear();
            if self.eof {
                return false;
            }
            self.read_more(text);
        }
    }

    /// Appends up to one block's worth of input to `text`.
    fn read_more(&mut self, text: &mut Vec<u8>) {
        let want = self.block_size;
        text.reserve(want);
        // `read_to_end` on a `Take` fills the spare capacity without zeroing it, retries
        // interrupted reads, and keeps what it read before an error.
        match (&mut self.input).take(want as u64).read_to_end(text) {
            Ok(n) if n < want => self.eof = true,
            Ok(_) => {}
            Err(e) => {
                self.error = Some(e);
                self.eof = true;
            }
        }
    }

    fn queue(&mut self, block: Block) {
        let parsers = Arc::clone(&self.parsers);
        let cancelled = Arc::clone(&self.cancelled);
        let mut parsed = self.spare_blocks.pop().unwrap_or_default();
        self.jobs.push(Box::new(move || {
            if !cancelled.load(Ordering::Relaxed) {
                let mut parser = lock(&parsers).pop().unwrap_or_default();
                parse_block(&mut parser, &block, &mut parsed);
                lock(&parsers).push(parser);
            }
            Chunk::Parsed(parsed, block.text)
        }));
    }
}

impl<R> Drop for Blocks<R> {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Parses every line of `block` into `out`, with the layout hint after the block by the hint
/// before it.
fn parse_block(parser: &mut LineParser, block: &Block, out: &mut ParsedBlock) {
    parser.start_block();
    if block.too_long_first {
        out.push(Outcome::too_long());
    }
    let bytes = &block.text[..];
    // One UTF-8 check for the whole block (lines split at an ASCII `\n` stay valid) instead of
    // one per line.
    let whole = std::str::from_utf8(bytes).ok();
    let mut lossy = String::new();
    // The hint under each possible entry hint, until the three agree.
    let mut hints = Some(Layout::ALL);
    let mut start = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |at| start + at);
        let range = start..end;
        start = end + 1;
        if range.len() > MAX_LINE {
            out.push(Outcome::too_long());
            continue;
        }
        let line = match whole.and_then(|text| text.get(range.clone())) {
            Some(line) => line.strip_suffix('\r').unwrap_or(line),
            None => as_text(trim_cr(&bytes[range]), &mut lossy),
        };
        let Some(h) = &mut hints else {
            out.push(parser.line_text(line));
            continue;
        };
        let (first, hinted) = classify_hinted(line, &mut h[0]);
        if !hinted {
            // Decided without any layout: the same under every hint, which it leaves alone.
            out.push(parser.outcome(first));
            continue;
        }
        let (second, _) = classify_hinted(line, &mut h[1]);
        let (third, _) = classify_hinted(line, &mut h[2]);
        if first == second && second == third {
            out.push(parser.outcome(first));
        } else {
            out.push_by_hint([
                parser.outcome(first),
                parser.outcome(second),
                parser.outcome(third),
            ]);
        }
        if h[0] == h[1] && h[1] == h[2] {
            parser.layout = h[0];
            hints = None;
        }
    }
    out.exit = hints.unwrap_or([parser.layout; 3]);
}
