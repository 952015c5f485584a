//! Readers for trace **text**: ftrace `trace` / `trace_pipe`, `trace-cmd report` and
//! `perf script`, recognized line by line and read as a stream (memory does not grow with the
//! input; any [`BufRead`], stdin included). When the rayon pool has more than one thread,
//! blocks of lines are parsed ahead in parallel (see [Parallel reading](#parallel-reading)).
//!
//! ```
//! use vmxray_capture::{ReadOptions, read::text::TextReader};
//! use vmxray_events::EventKind;
//!
//! let text = "cpus=2\n\
//!     CPU 0/KVM-4242 [001]  1000.000001234: kvm_cr:               cr_write 3 = 0x5000\n";
//! let mut reader = TextReader::new("<example>", text.as_bytes(), ReadOptions::default());
//! let event = reader.next().unwrap().unwrap();
//! assert_eq!((event.ts, event.cpu, event.pid), (1_000_000_001_234, 1, 4242));
//! assert_eq!(event.comm.as_deref(), Some("CPU 0/KVM"));
//! assert_eq!(event.kind, EventKind::KvmCr { write: true, cr: 3, val: 0x5000 });
//! ```
//!
//! # What each line becomes
//!
//! - **Event lines** (every column layout: ftrace with or without irq-info and record-tgid,
//!   trace-cmd default / `-l` / `-t` / `--ts-diff` / `-R` / `-N`, perf script default / `--ns`
//!   / `pid/tid` (5 or 7 wide) / minimal / ip,sym; comms are found by column, never by
//!   splitting on whitespace, so `qemu vcpu-0 x` or `CPU 0/KVM` are kept whole): the body is
//!   turned into fields with the kernel's field names and the typed [`vmxray_events::EventKind`] is built by
//!   [`vmxray_events::KnownEvent::decode`]; every print-format generation of the typed events is
//!   understood, and trace-cmd's kvm plugin renderings too (see `body.rs`). Other tracepoints
//!   become [`vmxray_events::EventKind::Other`] with their `name=value` fields, or one field `text`
//!   holding the body.
//! - **Timestamps**: `secs.usecs` / `secs.nsecs` are nanoseconds ([`Clock::Nanoseconds`]);
//!   integer stamps (ftrace's `counter`, `uptime`, `x86-tsc` clocks) are raw clock units
//!   ([`Clock::Raw`]: the text does not name the clock).
//! - **Lost-event markers** (`CPU:1 [LOST 330608 EVENTS]`, `CPU:1 [12 EVENTS DROPPED]`,
//!   `CPU:1 [EVENTS DROPPED]`) are counted with [`ReadStats::note_lost`] when read, and
//!   yielded as [`vmxray_events::EventKind::Lost`] on that CPU **immediately before the next event of
//!   that CPU, with that event's timestamp** (the loss happened before it; this keeps the stream
//!   time-ordered). A marker with no later event on its CPU is yielded at the end of the input
//!   with the CPU's last timestamp (0 if it had none); so is the oldest of more than 1024
//!   markers still waiting. Lost events have pid −1 and no comm.
//! - **Headers** (`# ...`, `cpus=2` → [`TraceMeta::cpus`], `#P:2`, `version = 6`,
//!   `CPU 0 is empty`, blank lines) are skipped.
//! - **Refused, with an explanation** ([`TextError`]): ftrace text with `context-info` off
//!   (no CPU, pid or time: cannot be placed) and ftrace `latency-format` text (relative
//!   microseconds only). Any other unrecognized line is an error naming its line number; with
//!   [`ReadOptions::permissive`] it is counted ([`ReadStats::note_skipped`]) and skipped.
//! - ftrace's `raw` / `hex` options print only pid, CPU, timestamp and the numeric event type:
//!   such events are kept as [`vmxray_events::EventKind::Other`] named `type_<id>` with one field
//!   `common_type`, and counted in [`ReadStats::unknown_events`] (the id → name mapping is in
//!   the tracefs `format` files, not in the text).
//! - Layouts without a pid (perf script minimal) give pid −1; without a CPU, CPU 0.
//!   `trace-cmd report -l` cuts comms to 8 characters; they are kept as printed.
//!
//! Known losses of the renderings themselves (the text cannot say more): trace-cmd's plugin
//! prints `kvm_emulate_insn` without its mode (`flags` decodes as 0), and
//! `kvm_mmu_prepare_zap_page` / `sync_page` / `unsync_page` without the gfn (such events stay
//! untyped and are counted in [`ReadStats::unknown_events`]); kvmmmu role words are rebuilt
//! from the printed bits only; ftrace's `fields` option prints `insn=<INVALID-SIZE>`.
//!
//! # Parallel reading
//!
//! What a line means hardly depends on the lines before it (only through the layout tried
//! first, for the rare line that fits two layouts); its effects on the stream do. So
//! [`TextReader::new`] reads the input in blocks of whole lines (512 KiB), parses them a few
//! blocks ahead on the rayon pool, and applies the per-line outcomes in input order: the
//! events, their order, line numbers, the meta, [`ReadStats`], lost markers and strict /
//! permissive handling are exactly those of a line-by-line read ([`TextReader::one_thread`]),
//! whatever the block size (`blocks.rs` says how). Memory stays bounded by the blocks in
//! flight.

mod blocks;
mod body;
mod body_devices;
mod error;
mod excerpt;
mod fields;
mod lines;
mod loose;
mod parser;
mod prefix;
pub mod qemu_dump;

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::sync::Arc;

use crate::read::{
    Clock, EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, ReadStats,
    TraceMeta,
};
use vmxray_events::event::{Event, EventKind};

pub use error::{Snippet, TextError};
pub use excerpt::{
    MAX_EXCERPT_BYTES, TIME_BACK_TOLERANCE, TIME_JUMP, read_as_excerpt, starts_with_tool_header,
};

use blocks::Blocks;
use lines::{Line, LineReader};
use parser::{FxMap, LineParser, MAX_INTERNED, Outcome, Seen};
use prefix::{Layout, LineKind};

/// Lost markers waiting for their CPU's next event, at most (a bound that keeps memory
/// independent of the input).
const MAX_PENDING_LOST: usize = 1024;

/// How much of the input's start the format sniff looks at.
const SNIFF_BYTES: usize = 256 * 1024;

/// The stream's ordered state: what the lines read so far have established.
struct Stream {
    meta: TraceMeta,
    stats: ReadStats,
    opts: ReadOptions,
    format_from_header: bool,
    clock_known: bool,
    /// Events waiting to be yielded, in order (lost markers and the event that follows them).
    queue: VecDeque<Event>,
    pending_lost: Vec<(u32, Option<u64>)>,
    /// What the lines say about the input being an excerpt ([`TraceMeta::excerpt`]).
    evidence: excerpt::Evidence,
    /// Last timestamp per CPU (for lost markers at the end of the input).
    last_ts: FxMap<u32, u64>,
    /// The same for CPUs below 1024.
    last_ts_small: Vec<Option<u64>>,
}

/// Where lines come from, and who parses them.
enum Source<R> {
    /// Line by line, parsed on the reader's thread.
    Lines { lines: LineReader<R>, parser: LineParser, line_no: u64 },
    /// Blocks of lines parsed ahead (see `blocks.rs`).
    Blocks(Blocks<R>),
    /// A small input read whole, normalized, joined and segmented (see `excerpt.rs`).
    Excerpt(excerpt::Items),
}

/// Reads ftrace / `trace-cmd report` / `perf script` text; see the [module docs](self).
pub struct TextReader<R> {
    source: Source<R>,
    st: Stream,
    done: bool,
}

impl<R: BufRead> TextReader<R> {
    /// A reader over `input`, named `name` in messages: blocks of lines are parsed ahead in
    /// parallel when the rayon pool has more than one thread, else line by line.
    pub fn new(name: impl Into<Arc<str>>, input: R, opts: ReadOptions) -> Self {
        if rayon::current_num_threads() > 1 {
            Self::with_block_size(name, input, opts, blocks::DEFAULT_BLOCK_SIZE)
        } else {
            Self::one_thread(name, input, opts)
        }
    }

    /// A reader that parses line by line on the calling thread.
    pub fn one_thread(name: impl Into<Arc<str>>, input: R, opts: ReadOptions) -> Self {
        let parser = LineParser::default();
        let lines = LineReader::new(input);
        Self::with_source(name, Source::Lines { lines, parser, line_no: 0 }, opts)
    }

    /// A reader that parses blocks of about `block_bytes` bytes of whole lines ahead, on the
    /// rayon pool when it has more than one thread. The events, errors, meta and stats are
    /// those of [`TextReader::one_thread`] whatever the block size; small blocks are for tests.
    pub fn with_block_size(
        name: impl Into<Arc<str>>,
        input: R,
        opts: ReadOptions,
        block_bytes: usize,
    ) -> Self {
        let parallel = rayon::current_num_threads() > 1;
        Self::with_source(name, Source::Blocks(Blocks::new(input, block_bytes, parallel)), opts)
    }

    fn with_source(name: impl Into<Arc<str>>, source: Source<R>, opts: ReadOptions) -> Self {
        let mut reader = Self {
            source,
            st: Stream {
                meta: TraceMeta {
                    input: name.into(),
                    format: InputFormat::FtraceText,
                    clock: Clock::Nanoseconds,
                    cpus: None,
                    kernel: None,
                    excerpt: false,
                },
                stats: ReadStats::default(),
                opts,
                format_from_header: false,
                clock_known: false,
                queue: VecDeque::new(),
                pending_lost: Vec::new(),
                evidence: excerpt::Evidence::default(),
                last_ts: FxMap::default(),
                last_ts_small: Vec::new(),
            },
            done: false,
        };
        reader.sniff();
        reader
    }

    /// Fills [`TraceMeta`] from the buffered start of the input (format, clock kind, CPUs),
    /// without consuming anything.
    fn sniff(&mut self) {
        let head = match &mut self.source {
            Source::Lines { lines, .. } => lines.peek(),
            Source::Blocks(blocks) => blocks.peek(),
            Source::Excerpt(items) => {
                // The outcomes are known: the first header and event lines say it all.
                for (outcome, _) in items.items.as_slice() {
                    match outcome {
                        Outcome::Header { cpus, format } => self.st.header(*cpus, *format),
                        Outcome::Event { seen, .. } if !seen.loose => {
                            self.st.first_event(*seen);
                            break;
                        }
                        _ => {}
                    }
                }
                self.st.clock_known = false;
                return;
            }
        };
        let Ok(head) = head else { return };
        let head = String::from_utf8_lossy(&head[..head.len().min(SNIFF_BYTES)]);
        let mut layout = Layout::default();
        // Only complete lines (the buffer may end inside one), unless there is just one.
        let complete = head.rfind('\n').map_or(&*head, |at| &head[..at]);
        for line in complete.lines().take(64) {
            match prefix::classify(line, &mut layout) {
                LineKind::Header { cpus, format } => self.st.header(cpus, format),
                LineKind::Event(p) if !p.loose => {
                    self.st.first_event(Seen { format: p.format, ns: p.ts.ns, loose: false });
                    break;
                }
                LineKind::Event(_) => {}
                LineKind::RawType { .. } => {
                    let seen = Seen { format: InputFormat::FtraceText, ns: false, loose: false };
                    self.st.first_event(seen);
                    break;
                }
                LineKind::Lost { .. } | LineKind::NonTrace(_) | LineKind::Bad(_) => {}
            }
        }
        // The first real event re-decides the clock; the sniff only fills the meta early.
        self.st.clock_known = false;
    }

    /// No more lines will be read.
    fn stop(&mut self) {
        self.done = true;
        if let Source::Blocks(blocks) = &mut self.source {
            blocks.stop();
        }
    }
}

impl TextReader<io::Empty> {
    /// A reader of an excerpt held in memory (at most [`MAX_EXCERPT_BYTES`] is the intended
    /// use): text as people paste it, quoted, wrapped, with its columns cut, several captures
    /// in one (see `excerpt.rs`). Every line a streamed read accepts reads the same here.
    pub fn excerpt(name: impl Into<Arc<str>>, bytes: &[u8], opts: ReadOptions) -> Self {
        let items = excerpt::read(bytes);
        let excerpt = items.excerpt;
        let mut reader = Self::with_source(name, Source::Excerpt(items), opts);
        reader.st.meta.excerpt = excerpt;
        reader
    }
}

impl Stream {
    fn header(&mut self, cpus: Option<u32>, format: Option<InputFormat>) {
        self.evidence.header(cpus, format);
        if cpus.is_some() {
            self.meta.cpus = cpus;
        }
        if let Some(format) = format {
            self.meta.format = format;
            self.format_from_header = true;
        }
    }

    /// True when an event line was applied (later ones change nothing in the meta) and no
    /// lost marker waits: an event then only needs its timestamp noted.
    #[inline]
    fn settled(&self) -> bool {
        // The first event must have been noted too: a bad line before it (skipped under
        // --permissive) settles the format and clock but says nothing of the first event.
        self.format_from_header
            && self.clock_known
            && self.pending_lost.is_empty()
            && self.evidence.first_event_seen()
    }

    /// What an event line says about the trace, and why it stays untyped if it does.
    #[inline]
    fn event_line(
        &mut self,
        seen: Seen,
        unknown: Option<String>,
        truncated: Option<&'static str>,
        event: &Event,
        line: u64,
    ) {
        self.first_event(seen);
        if let Some(key) = unknown {
            *self.stats.unknown_events.entry(key).or_default() += 1;
        }
        if let Some(missing) = truncated {
            let name = event.kind.known().map_or("event", |k| k.name());
            self.stats.note_truncated(crate::read::TruncatedRecord { line, event: name, missing });
        }
    }

    fn first_event(&mut self, seen: Seen) {
        if seen.loose {
            // No columns: the line says nothing about the trace's format or clock.
            return;
        }
        if !self.format_from_header {
            self.meta.format = seen.format;
            self.format_from_header = true;
        }
        if !self.clock_known {
            self.meta.clock = if seen.ns { Clock::Nanoseconds } else { Clock::Raw };
            self.clock_known = true;
        }
    }

    /// Applies the outcome of a line that is not an event (those are taken apart by the
    /// iterator, see there).
    fn apply(&mut self, outcome: Outcome) -> Result<(), ReadErrorKind> {
        match outcome {
            Outcome::Header { cpus, format } => self.header(cpus, format),
            Outcome::Lost { cpu, count } => {
                self.stats.note_lost(cpu, count);
                if self.pending_lost.len() >= MAX_PENDING_LOST {
                    // Markers whose CPU never shows up again: yield the oldest now.
                    let (old_cpu, old_count) = self.pending_lost.remove(0);
                    let ts = self.cpu_last_ts(old_cpu);
                    self.queue.push_back(lost(old_cpu, ts, old_count));
                }
                self.pending_lost.push((cpu, count));
            }
            Outcome::Event { event, seen, unknown, truncated } => {
                self.event_line(seen, unknown, truncated, &event, 0);
                self.must_wait(event.cpu, event.ts);
                self.queue.push_back(event);
            }
            Outcome::BadEvent { seen, error } => {
                self.first_event(seen);
                return Err(error);
            }
            // Counted by the caller, which knows the line.
            Outcome::NonTrace(_) => {}
            Outcome::Bad(error) => return Err(error),
        }
        Ok(())
    }

    /// Notes an event on its way out, where that can matter (not for the plain events of a
    /// parallel read: their input has settled its format, and they have a time).
    #[inline]
    fn noted(&mut self, event: &Event) {
        if self.stats.events == 0 {
            self.evidence.first_event(event);
        }
        if event.ts == Event::TS_UNKNOWN {
            self.evidence.unknown_time();
        }
    }

    /// Queues the lost markers waiting for this event's CPU, and notes its timestamp; true
    /// when the event must wait behind queued events (it is not moved here: each move of an
    /// event is a copy of its 96 bytes, measured as the largest cost of handing events on).
    /// An event without a time takes the CPU's last time for its markers.
    #[inline]
    fn must_wait(&mut self, cpu: u32, ts: u64) -> bool {
        let ts = if ts == Event::TS_UNKNOWN { self.cpu_last_ts(cpu) } else { ts };
        if !self.pending_lost.is_empty() {
            let mut i = 0;
            while i < self.pending_lost.len() {
                if self.pending_lost[i].0 == cpu {
                    let (_, count) = self.pending_lost.remove(i);
                    self.queue.push_back(lost(cpu, ts, count));
                } else {
                    i += 1;
                }
            }
        }
        self.note_ts(cpu, ts);
        !self.queue.is_empty()
    }

    fn note_ts(&mut self, cpu: u32, ts: u64) {
        match self.last_ts_small.get_mut(cpu as usize) {
            Some(slot) => *slot = Some(ts),
            None if (cpu as usize) < 1024 => {
                self.last_ts_small.resize(cpu as usize + 1, None);
                self.last_ts_small[cpu as usize] = Some(ts);
            }
            None if self.last_ts.len() < MAX_INTERNED || self.last_ts.contains_key(&cpu) => {
                self.last_ts.insert(cpu, ts);
            }
            None => {}
        }
    }

    /// The last timestamp seen on `cpu` (0 if none is known).
    fn cpu_last_ts(&self, cpu: u32) -> u64 {
        let small = self.last_ts_small.get(cpu as usize).copied().flatten();
        small.or_else(|| self.last_ts.get(&cpu).copied()).unwrap_or(0)
    }

    fn flush_lost_at_end(&mut self) {
        for (cpu, count) in std::mem::take(&mut self.pending_lost) {
            let ts = self.cpu_last_ts(cpu);
            self.queue.push_back(lost(cpu, ts, count));
        }
    }
}

fn lost(cpu: u32, ts: u64, count: Option<u64>) -> Event {
    Event { ts, cpu, pid: -1, tgid: None, comm: None, kind: EventKind::Lost { count } }
}

impl<R: BufRead> TextReader<R> {
    /// Applies a line that is not an event; returns the error to yield, if any.
    #[cold]
    fn other_line(&mut self, outcome: Outcome, line_no: u64) -> Option<ReadError> {
        if let Outcome::NonTrace(text) = outcome {
            self.st.stats.note_non_trace(line_no, || text.into());
            self.st.evidence.gap(self.st.stats.events);
            return None;
        }
        let kind = self.st.apply(outcome).err()?;
        let e = ReadError::new(&self.st.meta.input, Location::Line(line_no), kind);
        let recoverable = !matches!(e.kind, ReadErrorKind::Io(_));
        if self.st.opts.permissive && recoverable {
            self.st.stats.note_skipped(e);
            self.st.evidence.gap(self.st.stats.events);
            None
        } else {
            self.stop();
            Some(e)
        }
    }

    /// The input ended: markers still waiting come out.
    #[cold]
    fn end(&mut self) {
        self.st.flush_lost_at_end();
        let events = self.st.stats.events + self.st.queue.len() as u64;
        self.st.meta.excerpt |= self.st.evidence.verdict(events);
        self.stop();
    }

    /// Reading failed before line `line_no`.
    #[cold]
    fn failed(&mut self, e: io::Error, line_no: u64) -> ReadError {
        self.stop();
        ReadError::new(&self.st.meta.input, Location::Line(line_no), e)
    }
}

impl<R: BufRead> Iterator for TextReader<R> {
    type Item = Result<Event, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.st.queue.pop_front() {
                self.st.stats.events += 1;
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            // Events are taken apart here, not behind a helper returning them: each move of an
            // event through a return value is a copy of its 96 bytes, and such copies were the
            // largest cost of handing events on.
            let event = match &mut self.source {
                Source::Lines { lines, parser, line_no } => {
                    let bytes = match lines.next_line() {
                        Ok(Some(Line::Text(bytes))) => bytes,
                        Ok(Some(Line::TooLong)) => {
                            *line_no += 1;
                            let at = *line_no;
                            match self.other_line(Outcome::too_long(), at) {
                                Some(e) => return Some(Err(e)),
                                None => continue,
                            }
                        }
                        Ok(None) => {
                            self.end();
                            continue;
                        }
                        Err(e) => {
                            let at = *line_no + 1;
                            return Some(Err(self.failed(e, at)));
                        }
                    };
                    *line_no += 1;
                    match parser.line(bytes) {
                        Outcome::Event { event, seen, unknown, truncated } => {
                            self.st.event_line(seen, unknown, truncated, &event, *line_no);
                            self.st.noted(&event);
                            event
                        }
                        other => {
                            let at = *line_no;
                            match self.other_line(other, at) {
                                Some(e) => return Some(Err(e)),
                                None => continue,
                            }
                        }
                    }
                }
                Source::Blocks(blocks) => {
                    // Most lines of a parallel read are events with no effect on the stream
                    // but their timestamp (the trace's format and clock are settled by the
                    // first event line, no lost marker waits for them).
                    if self.st.settled()
                        && let Some(event) = blocks.next_plain_event()
                    {
                        self.st.note_ts(event.cpu, event.ts);
                        self.st.stats.events += 1;
                        return Some(Ok(event));
                    }
                    match blocks.next() {
                        blocks::Next::Event(event, seen) => {
                            if let Some(seen) = seen {
                                self.st.first_event(seen);
                            }
                            self.st.noted(&event);
                            event
                        }
                        blocks::Next::Line(
                            Outcome::Event { event, seen, unknown, truncated },
                            at,
                        ) => {
                            self.st.event_line(seen, unknown, truncated, &event, at);
                            self.st.noted(&event);
                            event
                        }
                        blocks::Next::Line(other, at) => match self.other_line(other, at) {
                            Some(e) => return Some(Err(e)),
                            None => continue,
                        },
                        blocks::Next::End => {
                            self.end();
                            continue;
                        }
                        blocks::Next::Failed(e, at) => return Some(Err(self.failed(e, at))),
                    }
                }
                Source::Excerpt(items) => match items.items.next() {
                    Some((Outcome::Event { event, seen, unknown, truncated }, at)) => {
                        if let EventKind::Segment { .. } = event.kind {
                            self.st.stats.segments += 1;
                            self.st.evidence.segment();
                        }
                        self.st.event_line(seen, unknown, truncated, &event, at);
                        self.st.noted(&event);
                        event
                    }
                    Some((other, at)) => match self.other_line(other, at) {
                        Some(e) => return Some(Err(e)),
                        None => continue,
                    },
                    None => {
                        self.end();
                        continue;
                    }
                },
            };
            if self.st.must_wait(event.cpu, event.ts) {
                self.st.queue.push_back(event);
            } else {
                self.st.stats.events += 1;
                return Some(Ok(event));
            }
        }
    }
}

impl<R: BufRead + Send> EventReader for TextReader<R> {
    fn meta(&self) -> &TraceMeta {
        &self.st.meta
    }

    fn stats(&self) -> &ReadStats {
        &self.st.stats
    }
}
