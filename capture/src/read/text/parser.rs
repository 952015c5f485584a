//! The work one line needs on its own: classify it, parse its body, decode the typed event,
//! intern its names. Nothing here depends on the other lines of the input (the layout hint
//! and the interning tables only make the next line faster), so several [`LineParser`]s can
//! read the blocks of one input at once; the ordered effects of a line (the trace's meta,
//! counts, lost markers, line numbers) are applied afterwards from its [`Outcome`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::read::{InputFormat, ReadErrorKind};
use vmxray_events::event::{Comm, Event, EventKind, KnownEvent, OtherEvent};
use vmxray_events::fields::{FieldValue, Fields};

use super::body::{self, Parsed};
use super::error::{Snippet, TextError};
use super::fields::{FieldBuf, View, eq_short};
use super::prefix::{self, Layout, LineKind, Prefix};

/// What one line means, found without looking at any other line.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A header or blank line, with what it says about the trace.
    Header { cpus: Option<u32>, format: Option<InputFormat> },
    /// A lost-events marker.
    Lost { cpu: u32, count: Option<u64> },
    /// An event; `unknown` names it in [`crate::ReadStats::unknown_events`] when it stays
    /// untyped for a known reason; `truncated` says what its text lacks when the record was
    /// cut ([`body::truncation`]).
    Event { event: Event, seen: Seen, unknown: Option<String>, truncated: Option<&'static str> },
    /// An event line whose body cannot be read (its format and clock still count for the
    /// meta, as the event would have).
    BadEvent { seen: Seen, error: ReadErrorKind },
    /// A line of prose (or anything else that is no trace text), as read: skipped and
    /// counted.
    NonTrace(Box<str>),
    /// A line that looks like trace text but is not.
    Bad(ReadErrorKind),
}

impl Outcome {
    /// A line longer than [`super::lines::MAX_LINE`].
    pub(crate) fn too_long() -> Self {
        Self::Bad(TextError::LineTooLong { max: super::lines::MAX_LINE }.into())
    }
}

/// What an event line says about the whole trace: the text's format and the clock's kind.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub(crate) format: InputFormat,
    /// `sec.frac` stamps (nanoseconds) rather than raw clock units.
    pub(crate) ns: bool,
    /// The line says nothing about the trace's format and clock (event text without its
    /// columns, a QEMU trace-event line).
    pub(crate) loose: bool,
}

/// The line as text: as is when it is UTF-8, else with replacement characters (kept in
/// `lossy`).
pub(crate) fn as_text<'a>(bytes: &'a [u8], lossy: &'a mut String) -> &'a str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => {
            *lossy = String::from_utf8_lossy(bytes).into_owned();
            lossy
        }
    }
}

/// The interning tables' map: foldhash's fast hasher with a fixed seed (short keys, not
/// attacker-chosen in a way that matters: a trace with many distinct names only makes them
/// slower).
pub(crate) type FxMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

const NAME_CACHE: usize = 64;

/// Bounds that keep memory independent of the input, whatever it holds: distinct event and
/// field names interned, distinct pids remembered.
pub(crate) const MAX_INTERNED: usize = 4096;
const MAX_COMMS: usize = 65_536;

/// The cache slot of an event name: its length and last bytes, mixed.
fn name_slot(name: &[u8]) -> usize {
    let mut tail = [0u8; 8];
    let n = name.len().min(8);
    tail[..n].copy_from_slice(&name[name.len() - n..]);
    let mixed = (u64::from_le_bytes(tail) ^ name.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 58) as usize % NAME_CACHE
}

#[derive(Clone)]
struct EventInfo {
    system: Arc<str>,
    name: Arc<str>,
    known: Option<KnownEvent>,
}

/// Turns lines into [`Outcome`]s. Its state is a try-first layout and caches: two parsers
/// give equal outcomes for equal lines (up to the layout hint, see [`Layout`]).
pub(crate) struct LineParser {
    /// The layout tried first (the last one that matched).
    pub(crate) layout: Layout,
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
}

impl Default for LineParser {
    fn default() -> Self {
        Self {
            layout: Layout::default(),
            buf: FieldBuf::default(),
            events: FxMap::default(),
            infos: Vec::new(),
            name_cache: vec![None; NAME_CACHE],
            field_names: FxMap::default(),
            comms: FxMap::default(),
            last_comm: None,
            text_name: "text".into(),
        }
    }
}

impl LineParser {
    /// Forgets every interned name. A parser working ahead of the consumer calls this at each
    /// block: the consumer drops the events' `Arc`s while the parser clones them, and sharing
    /// one `Arc` across the two threads costs a contended atomic per event (most of a
    /// consumer's time, measured); per-block copies cost a few allocations per block.
    pub(crate) fn start_block(&mut self) {
        self.events.clear();
        self.infos.clear();
        self.name_cache.iter_mut().for_each(|slot| *slot = None);
        self.field_names.clear();
        self.comms.clear();
        self.last_comm = None;
        self.text_name = "text".into();
    }

    /// Reads one line (without its newline), trying the parser's layout first.
    #[inline]
    pub(crate) fn line(&mut self, bytes: &[u8]) -> Outcome {
        // Empty unless the line is not UTF-8 (then it is allocated, rarely).
        let mut lossy = String::new();
        self.line_text(as_text(bytes, &mut lossy))
    }

    /// [`LineParser::line`] for a line already known to be text.
    #[inline]
    pub(crate) fn line_text(&mut self, text: &str) -> Outcome {
        let kind = prefix::classify(text, &mut self.layout);
        self.outcome(kind)
    }

    /// What a classified line means.
    #[inline]
    pub(crate) fn outcome(&mut self, kind: LineKind<'_>) -> Outcome {
        match kind {
            LineKind::Header { cpus, format } => Outcome::Header { cpus, format },
            LineKind::Lost { cpu, count } => Outcome::Lost { cpu, count },
            LineKind::RawType { pid, cpu, ts, type_id } => {
                let at = self.event_info(&format!("type_{type_id}"));
                let info = &self.infos[at];
                let (system, name) = (Arc::clone(&info.system), Arc::clone(&info.name));
                let mut fields = Fields::new();
                fields.push(self.field_name("common_type"), FieldValue::U64(u64::from(type_id)));
                let kind = EventKind::Other(Box::new(OtherEvent { system, name, fields }));
                Outcome::Event {
                    event: Event { ts, cpu, pid, tgid: None, comm: None, kind },
                    seen: Seen { format: InputFormat::FtraceText, ns: false, loose: false },
                    unknown: Some(format!("type {type_id}")),
                    truncated: None,
                }
            }
            LineKind::Event(p) => self.event(&p),
            LineKind::NonTrace(line) => Outcome::NonTrace(line.into()),
            LineKind::Bad(e) => Outcome::Bad(e.into()),
        }
    }

    #[inline]
    fn event(&mut self, p: &Prefix<'_>) -> Outcome {
        let seen = Seen { format: p.format, ns: p.ts.ns, loose: p.loose };
        let info_at = match p.system {
            Some(system) => self.event_info_in(system, p.name),
            None => self.event_info(p.name),
        };
        let comm = p.comm.map(|c| self.comm(p.pid, c));
        self.buf.clear();
        let mut unknown = None;
        let mut truncated = None;
        let kind = match self.infos[info_at].known {
            Some(known) => match body::parse_known(known, p.body, &mut self.buf) {
                Ok(Parsed::Fields) => match known.decode(&View { body: p.body, buf: &self.buf }) {
                    Ok(kind) => {
                        truncated = body::truncation(known, p.body, &self.buf);
                        kind
                    }
                    Err(e) => {
                        if let Some(clean) = super::loose::without_cant_find_field(p.body) {
                            return self.event(&Prefix { body: &clean, ..*p });
                        }
                        let error = TextError::MissingField {
                            event: e.event,
                            field: e.field,
                            found: Snippet::new(p.body),
                        };
                        return Outcome::BadEvent { seen, error: error.into() };
                    }
                },
                Ok(Parsed::Incomplete(why)) => {
                    let info = &self.infos[info_at];
                    unknown = Some(format!("{}:{} ({why})", info.system, info.name));
                    self.other(info_at, p.body)
                }
                Err(expected) => {
                    if let Some(clean) = super::loose::without_cant_find_field(p.body) {
                        return self.event(&Prefix { body: &clean, ..*p });
                    }
                    let error = TextError::Body {
                        event: known.name(),
                        expected,
                        found: Snippet::new(p.body),
                    };
                    return Outcome::BadEvent { seen, error: error.into() };
                }
            },
            None => {
                if !body::parse_other(p.body, &mut self.buf) {
                    self.buf.clear();
                }
                self.other(info_at, p.body)
            }
        };
        Outcome::Event {
            event: Event { ts: p.ts.value, cpu: p.cpu, pid: p.pid, tgid: p.tgid, comm, kind },
            seen,
            unknown,
            truncated,
        }
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
        EventKind::untyped(Arc::clone(&info.system), Arc::clone(&info.name), fields)
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

    /// [`LineParser::event_info`] for a name printed without the system the layout implies
    /// (QEMU's trace events): interned as `system:name`.
    fn event_info_in(&mut self, system: &str, name: &str) -> usize {
        let printed = format!("{system}:{name}");
        self.event_info_slow(&printed)
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
            return last.clone();
        }
        let c = self.comm_slow(pid, comm);
        self.last_comm = Some((pid, c.clone()));
        c
    }

    fn comm_slow(&mut self, pid: i32, comm: &str) -> Comm {
        match self.comms.get(&pid) {
            Some(c) if &**c == comm => c.clone(),
            _ => {
                if self.comms.len() >= MAX_COMMS {
                    self.comms.clear();
                }
                let c: Comm = comm.into();
                self.comms.insert(pid, c.clone());
                c
            }
        }
    }
}
