//! Readers for trace **text**: ftrace `trace` / `trace_pipe`, `trace-cmd report` and
//! `perf script`, recognized line by line and read as a stream (memory does not grow with the
//! input; any [`BufRead`], stdin included).
//!
//! ```
//! use vmxray_capture::{EventKind, ReadOptions, text::TextReader};
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
//!   turned into fields with the kernel's field names and the typed [`crate::EventKind`] is built by
//!   [`crate::KnownEvent::decode`]; every print-format generation of the typed events is
//!   understood, and trace-cmd's kvm plugin renderings too (see `body.rs`). Other tracepoints
//!   become [`crate::EventKind::Other`] with their `name=value` fields, or one field `text`
//!   holding the body.
//! - **Timestamps**: `secs.usecs` / `secs.nsecs` are nanoseconds ([`Clock::Nanoseconds`]);
//!   integer stamps (ftrace's `counter`, `uptime`, `x86-tsc` clocks) are raw clock units
//!   ([`Clock::Raw`]: the text does not name the clock).
//! - **Lost-event markers** (`CPU:1 [LOST 330608 EVENTS]`, `CPU:1 [12 EVENTS DROPPED]`,
//!   `CPU:1 [EVENTS DROPPED]`) are counted with [`ReadStats::note_lost`] when read, and
//!   yielded as [`crate::EventKind::Lost`] on that CPU **immediately before the next event of
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
//!   such events are kept as [`crate::EventKind::Other`] named `type_<id>` with one field
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

mod body;
mod error;
mod fields;
mod lines;
mod prefix;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::BufRead;
use std::sync::Arc;

use crate::event::{Comm, Event, EventKind, KnownEvent, OtherEvent};
use crate::fields::{FieldValue, Fields};
use crate::reader::{
    Clock, EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, ReadStats,
    TraceMeta,
};

pub use error::{Snippet, TextError};

use body::Parsed;
use fields::{FieldBuf, View, eq_short};
use lines::{Line, LineReader};
use prefix::{Layout, LineKind, Prefix};

/// A small, fast hasher for the reader's interning tables (short keys, not attacker-chosen
/// in a way that matters: a trace with many distinct names only makes them slower).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }
    fn write_i32(&mut self, v: i32) {
        self.write(&v.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

const NAME_CACHE: usize = 64;

/// Bounds that keep memory independent of the input, whatever it holds: distinct event and
/// field names (and CPUs ≥ 1024) interned, distinct pids remembered, lost markers waiting for
/// their CPU's next event.
const MAX_INTERNED: usize = 4096;
const MAX_COMMS: usize = 65_536;
const MAX_PENDING_LOST: usize = 1024;

/// The cache slot of an event name: its length and last bytes, mixed.
fn name_slot(name: &[u8]) -> usize {
    let mut tail = [0u8; 8];
    let n = name.len().min(8);
    tail[..n].copy_from_slice(&name[name.len() - n..]);
    let mixed = (u64::from_le_bytes(tail) ^ name.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 58) as usize % NAME_CACHE
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Clone)]
struct EventInfo {
    system: Arc<str>,
    name: Arc<str>,
    known: Option<KnownEvent>,
}

/// Everything but the line source, so that a line borrowed from it can be processed.
struct State {
    meta: TraceMeta,
    stats: ReadStats,
    opts: ReadOptions,
    layout: Layout,
    format_from_header: bool,
    clock_known: bool,
    buf: FieldBuf,
    /// Printed event name → index in `infos`.
    events: FxMap<Box<str>, usize>,
    infos: Vec<EventInfo>,
    name_cache: Vec<Option<(Box<str>, usize)>>,
    field_names: FxMap<Box<str>, Arc<str>>,
    comms: FxMap<i32, Comm>,
    last_comm: Option<(i32, Comm)>,
    /// The name of the field holding an unparsed body.
    text_name: Arc<str>,
    /// Events waiting to be yielded, in order (lost markers and the event that follows them).
    queue: VecDeque<Event>,
    pending_lost: Vec<(u32, Option<u64>)>,
    /// Last timestamp per CPU (for lost markers at the end of the input).
    last_ts: FxMap<u32, u64>,
    /// The same for CPUs below 1024.
    last_ts_small: Vec<Option<u64>>,
}

/// Reads ftrace / `trace-cmd report` / `perf script` text; see the [module docs](self).
pub struct TextReader<R> {
    lines: LineReader<R>,
    st: State,
    line_no: u64,
    done: bool,
}

impl<R: BufRead> TextReader<R> {
    /// A reader over `input`, named `name` in messages.
    pub fn new(name: impl Into<Arc<str>>, input: R, opts: ReadOptions) -> Self {
        let mut reader = Self {
            lines: LineReader::new(input),
            st: State {
                meta: TraceMeta {
                    input: name.into(),
                    format: InputFormat::FtraceText,
                    clock: Clock::Nanoseconds,
                    cpus: None,
                    kernel: None,
                },
                stats: ReadStats::default(),
                opts,
                layout: Layout::default(),
                format_from_header: false,
                clock_known: false,
                buf: FieldBuf::default(),
                events: FxMap::default(),
                infos: Vec::new(),
                name_cache: vec![None; NAME_CACHE],
                field_names: FxMap::default(),
                comms: FxMap::default(),
                last_comm: None,
                text_name: "text".into(),
                queue: VecDeque::new(),
                pending_lost: Vec::new(),
                last_ts: FxMap::default(),
                last_ts_small: Vec::new(),
            },
            line_no: 0,
            done: false,
        };
        reader.sniff();
        reader
    }

    /// Fills [`TraceMeta`] from the buffered start of the input (format, clock kind, CPUs),
    /// without consuming anything.
    fn sniff(&mut self) {
        let Ok(head) = self.lines.peek() else { return };
        let head = String::from_utf8_lossy(head);
        let mut layout = Layout::default();
        // Only complete lines (the buffer may end inside one), unless there is just one.
        let complete = head.rfind('\n').map_or(&*head, |at| &head[..at]);
        for line in complete.lines().take(64) {
            match prefix::classify(line, &mut layout) {
                LineKind::Header { cpus, format } => self.st.header(cpus, format),
                LineKind::Event(p) => {
                    self.st.first_event(p.format, p.ts.ns);
                    break;
                }
                LineKind::RawType { .. } => {
                    self.st.first_event(InputFormat::FtraceText, false);
                    break;
                }
                LineKind::Lost { .. } | LineKind::Bad(_) => {}
            }
        }
        // The first real event re-decides the clock; the sniff only fills the meta early.
        self.st.clock_known = false;
    }

    /// Reads one line; returns the event to yield now, if any (others wait in the queue).
    fn step(&mut self) -> Result<Option<Event>, ReadError> {
        let line = match self.lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                self.st.flush_lost_at_end();
                self.done = true;
                return Ok(None);
            }
            Err(e) => {
                self.done = true;
                return Err(ReadError::new(
                    &self.st.meta.input,
                    Location::Line(self.line_no + 1),
                    e,
                ));
            }
        };
        self.line_no += 1;
        let at = Location::Line(self.line_no);
        match line {
            Line::Text(bytes) => {
                self.st.line(bytes).map_err(|kind| ReadError::new(&self.st.meta.input, at, kind))
            }
            Line::TooLong => Err(ReadError::new(
                &self.st.meta.input,
                at,
                TextError::LineTooLong { max: lines::MAX_LINE },
            )),
        }
    }
}

impl State {
    fn header(&mut self, cpus: Option<u32>, format: Option<InputFormat>) {
        if cpus.is_some() {
            self.meta.cpus = cpus;
        }
        if let Some(format) = format {
            self.meta.format = format;
            self.format_from_header = true;
        }
    }

    fn first_event(&mut self, format: InputFormat, ns: bool) {
        if !self.format_from_header {
            self.meta.format = format;
            self.format_from_header = true;
        }
        if !self.clock_known {
            self.meta.clock = if ns { Clock::Nanoseconds } else { Clock::Raw };
            self.clock_known = true;
        }
    }

    #[inline]
    fn line(&mut self, bytes: &[u8]) -> Result<Option<Event>, ReadErrorKind> {
        let lossy;
        let text: &str = match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => {
                lossy = String::from_utf8_lossy(bytes);
                match &lossy {
                    Cow::Borrowed(s) => s,
                    Cow::Owned(s) => s,
                }
            }
        };
        match prefix::classify(text, &mut self.layout) {
            LineKind::Header { cpus, format } => self.header(cpus, format),
            LineKind::Lost { cpu, count } => {
                self.stats.note_lost(cpu, count);
                if self.pending_lost.len() >= MAX_PENDING_LOST {
                    // Markers whose CPU never shows up again: yield the oldest now.
                    let (old_cpu, old_count) = self.pending_lost.remove(0);
                    let ts = self.cpu_last_ts(old_cpu);
                    self.queue.push_back(lost(old_cpu, ts, old_count));
                }
                self.pending_lost.push((cpu, count));
            }
            LineKind::RawType { pid, cpu, ts, type_id } => {
                self.first_event(InputFormat::FtraceText, false);
                let at = self.event_info(&format!("type_{type_id}"));
                let info = self.infos[at].clone();
                *self.stats.unknown_events.entry(format!("type {type_id}")).or_default() += 1;
                let mut fields = Fields::new();
                fields.push(self.field_name("common_type"), FieldValue::U64(u64::from(type_id)));
                let kind = EventKind::Other(Box::new(OtherEvent {
                    system: info.system,
                    name: info.name,
                    fields,
                }));
                return Ok(self.emit(Event { ts, cpu, pid, comm: None, kind }));
            }
            LineKind::Event(p) => {
                let event = self.event(&p)?;
                return Ok(self.emit(event));
            }
            LineKind::Bad(e) => return Err(e.into()),
        }
        Ok(None)
    }

    #[inline]
    fn event(&mut self, p: &Prefix<'_>) -> Result<Event, ReadErrorKind> {
        self.first_event(p.format, p.ts.ns);
        let info_at = self.event_info(p.name);
        let comm = p.comm.map(|c| self.comm(p.pid, c));
        self.buf.clear();
        let kind = match self.infos[info_at].known {
            Some(known) => match body::parse_known(known, p.body, &mut self.buf) {
                Ok(Parsed::Fields) => known.decode(&View { body: p.body, buf: &self.buf })?,
                Ok(Parsed::Incomplete(why)) => {
                    let info = &self.infos[info_at];
                    let key = format!("{}:{} ({why})", info.system, info.name);
                    *self.stats.unknown_events.entry(key).or_default() += 1;
                    self.other(info_at, p.body)
                }
                Err(expected) => {
                    return Err(TextError::Body {
                        event: known.name(),
                        expected,
                        found: Snippet::new(p.body),
                    }
                    .into());
                }
            },
            None => {
                if !body::parse_other(p.body, &mut self.buf) {
                    self.buf.clear();
                }
                self.other(info_at, p.body)
            }
        };
        Ok(Event { ts: p.ts.value, cpu: p.cpu, pid: p.pid, comm, kind })
    }

    fn other(&mut self, info_at: usize, body: &str) -> EventKind {
        let mut fields = Fields(Vec::with_capacity(self.buf.items.len().max(1)));
        if self.buf.items.is_empty() {
            let text = Arc::clone(&self.text_name);
            fields.push(text, FieldValue::Str(body.into()));
        } else {
            let view = View { body, buf: &self.buf };
            for (n, v) in &self.buf.items {
                let name = view.name(*n);
                let name = match self.field_names.get(name) {
                    Some(a) => Arc::clone(a),
                    None => {
                        if self.field_names.len() >= MAX_INTERNED {
                            self.field_names.clear();
                        }
                        let a: Arc<str> = name.into();
                        self.field_names.insert(name.into(), Arc::clone(&a));
                        a
                    }
                };
                fields.push(name, view.value(*v));
            }
        }
        let info = &self.infos[info_at];
        EventKind::Other(Box::new(OtherEvent {
            system: Arc::clone(&info.system),
            name: Arc::clone(&info.name),
            fields,
        }))
    }

    fn field_name(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.field_names.get(name) {
            return Arc::clone(a);
        }
        let a: Arc<str> = name.into();
        self.field_names.insert(name.into(), Arc::clone(&a));
        a
    }

    /// The index in `infos` of the event printed as `printed`.
    fn event_info(&mut self, printed: &str) -> usize {
        // A direct-mapped cache in front of the map: a trace uses a handful of events.
        let slot = name_slot(printed.as_bytes());
        if let Some((name, at)) = &self.name_cache[slot]
            && eq_short(name, printed)
        {
            return *at;
        }
        let at = self.event_info_slow(printed);
        self.name_cache[slot] = Some((printed.into(), at));
        at
    }

    fn event_info_slow(&mut self, printed: &str) -> usize {
        if let Some(&at) = self.events.get(printed) {
            return at;
        }
        let (system, name) = printed.split_once(':').unwrap_or(("", printed));
        let known = KnownEvent::lookup(system, name);
        let system = match (system, known) {
            ("", Some(k)) => {
                KnownEvent::ALL.iter().find(|(kk, _, _)| *kk == k).map_or("", |(_, sys, _)| *sys)
            }
            (s, _) => s,
        };
        if self.infos.len() >= MAX_INTERNED {
            // Interning is a cache: forget it rather than grow with a hostile input.
            self.events.clear();
            self.infos.clear();
            self.name_cache.iter_mut().for_each(|slot| *slot = None);
        }
        self.infos.push(EventInfo { system: system.into(), name: name.into(), known });
        self.events.insert(printed.into(), self.infos.len() - 1);
        self.infos.len() - 1
    }

    fn comm(&mut self, pid: i32, comm: &str) -> Comm {
        if let Some((last_pid, last)) = &self.last_comm
            && *last_pid == pid
            && eq_short(last, comm)
        {
            return Arc::clone(last);
        }
        let c = self.comm_slow(pid, comm);
        self.last_comm = Some((pid, Arc::clone(&c)));
        c
    }

    fn comm_slow(&mut self, pid: i32, comm: &str) -> Comm {
        match self.comms.get(&pid) {
            Some(c) if &**c == comm => Arc::clone(c),
            _ => {
                if self.comms.len() >= MAX_COMMS {
                    self.comms.clear();
                }
                let c: Comm = comm.into();
                self.comms.insert(pid, Arc::clone(&c));
                c
            }
        }
    }

    /// Returns the event when it can be yielded at once, else queues it behind lost markers.
    #[inline]
    fn emit(&mut self, event: Event) -> Option<Event> {
        if !self.pending_lost.is_empty() {
            let (cpu, ts) = (event.cpu, event.ts);
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
        self.note_ts(event.cpu, event.ts);
        if self.queue.is_empty() {
            Some(event)
        } else {
            self.queue.push_back(event);
            None
        }
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
    Event { ts, cpu, pid: -1, comm: None, kind: EventKind::Lost { count } }
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
            match self.step() {
                Ok(Some(event)) => {
                    self.st.stats.events += 1;
                    return Some(Ok(event));
                }
                Ok(None) => {}
                Err(e) => {
                    let recoverable = !matches!(e.kind, ReadErrorKind::Io(_));
                    if self.st.opts.permissive && recoverable {
                        self.st.stats.note_skipped(e);
                    } else {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
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
