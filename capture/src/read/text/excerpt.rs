//! Reading trace text as people paste it: excerpts in mails, bug reports and commit messages.
//!
//! A small text input (see [`crate::read::open`]) is read whole and goes through three stages
//! before the ordinary line reader sees it; the outcomes then flow exactly as a streamed
//! file's would (`mod.rs` applies them):
//!
//! ```text
//!  bytes ─► normalize ─► logical lines ─► join ─► one outcome per record ─► segment ─► items
//!           │ quoted-printable (=\n, =3D, =20, =C2=A0) decoded when the body shows it
//!           │ every Unicode blank and mojibake blank (U+00A0, U+2002…, `ï¿½`, U+FFFD) → ' '
//!           │ `>` / `> > >` quote markers and `A:` author markers before a trace line dropped
//!           │ annotation tails (`   <-------- [1]`) dropped
//!           │ each logical line keeps the number of the physical line it starts on
//!           ▼
//!         join: a record continued on the following lines (a mailer's or bugzilla's hard
//!           │ wrap, a line ending after the timestamp or the event name, fields over several
//!           │ indented lines, format=flowed soft breaks) becomes one line again
//!           ▼
//!         segment: a file holding several captures gets an `EventKind::Segment` marker before
//!                  the first event of each capture after the first
//! ```
//!
//! **Joins.** A line that is no trace text on its own (prose to the line reader) continues the
//! record above it when the joined text reads and the pieces alone do not:
//! - after a line that ends right after its timestamp (`… 1907374.582979:`), or right after
//!   its event name (`kvm:kvm_set_irq:`, `bprint:`, a print with its function only), the next
//!   line is the rest of the record;
//! - a typed event ([`vmxray_events::KnownEvent`]) takes the next line (or the next two, when
//!   the first holds only part of a label) when the joined text decodes to a different event
//!   than the text alone did: the continuation carried fields;
//! - an untyped event (IRQ/APIC events, MMIO, prints, kprobes: any text reads) takes the next
//!   line only when that line reads as field data (`level 0 source 0`, `gh_mask=fff…`), or as a
//!   print's message, and never when it reads as prose (`a0: The previous value was …`).
//!
//! Event text without its columns (`kvm_exit: …`) is a record of its own only with a
//! plausible tracepoint name, so a continuation such as `int_ctl: 0x0 event_inj: …` joins.
//!
//! **Segments.** A new segment starts at an event when, since the previous event, a tool's
//! header came again (`cpus=N`, `# tracer:`) or a separator line (`=====`); when its time
//! goes back by more than [`TIME_BACK_TOLERANCE`]; or, after lines of prose, when it repeats
//! an event read before (same time, CPU, thread and fields: a block pasted again), when the
//! threads up to the next prose are none of the segment's, or when the time jumps forward by
//! more than [`TIME_JUMP`]. The author's label lines (`L0's view:`, `Without idle halt
//! enabled`) are prose between two such captures.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use vmxray_events::event::{Event, EventKind, SegmentReason};

use super::lines::MAX_LINE;
use super::loose;
use super::parser::{LineParser, Outcome, Seen};

/// The largest input read whole (and through this module): excerpts are small, and a larger
/// text is a capture a tool wrote, streamed by the ordinary reader.
pub const MAX_EXCERPT_BYTES: usize = 16 << 20;

/// Whether `bytes` begin with a tool's header line (`cpus=N` of `trace-cmd report`,
/// `version = N` before it, `# tracer:` of ftrace's `trace` file): the text is a file a tool
/// wrote, not a paste, and the streaming reader reads it (the same events, several times
/// faster than reading it whole).
pub fn starts_with_tool_header(bytes: &[u8]) -> bool {
    let first = bytes.split(|&c| c == b'\n').next().unwrap_or_default();
    let digits_after = |prefix: &[u8]| {
        first.strip_prefix(prefix).is_some_and(|rest| {
            let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
            !rest.is_empty() && rest.iter().all(u8::is_ascii_digit)
        })
    };
    digits_after(b"cpus=") || digits_after(b"version = ") || first.starts_with(b"# tracer: ")
}

/// Whether a text input of `len` bytes beginning with `head` (its first line at least) is read
/// whole through the excerpt reader: small enough to be a paste and not a file a tool wrote
/// ([`starts_with_tool_header`]); anything else streams.
pub fn read_as_excerpt(len: u64, head: &[u8]) -> bool {
    len <= MAX_EXCERPT_BYTES as u64 && !starts_with_tool_header(head)
}

/// How far back the time may go between two events of one capture: merged per-CPU buffers
/// are sorted, but clocks of different CPUs may disagree by a little.
pub const TIME_BACK_TOLERANCE: u64 = 10_000_000;

/// A forward jump in time, after lines of prose, that starts a new capture (nanosecond clocks).
pub const TIME_JUMP: u64 = 10_000_000_000;

/// The most continuation lines tried at once for one step of a join.
const MAX_PIECES: usize = 4;

/// The jump in time that, with a set of threads the segment never showed, makes lines of
/// prose a boundary (nanosecond clocks).
const NEW_THREADS_JUMP: u64 = 1_000_000_000;

/// One line after normalization.
#[derive(Clone, Debug)]
struct Logical {
    /// The 1-based number of the physical line it starts on.
    line: u64,
    /// The text as the poster sees it (quoted-printable decoded), for the list of skipped
    /// lines.
    shown: String,
    /// The text the reader reads.
    text: String,
    /// Longer than the reader accepts.
    too_long: bool,
}

/// What the excerpt reader yields, in order: outcomes with their line numbers.
pub(crate) struct Items {
    pub(crate) items: std::vec::IntoIter<(Outcome, u64)>,
    /// The first event of the input is the start of the VM (or the input has a tool's
    /// header), the input has no prose between events and no event without its time:
    /// see [`crate::TraceMeta::excerpt`].
    pub(crate) excerpt: bool,
}

/// Reads the whole input: normalizes, joins, parses and segments it.
pub(crate) fn read(bytes: &[u8]) -> Items {
    let lines = normalize(bytes);
    let mut parser = LineParser::default();
    let mut items = join(&lines, &mut parser);
    segment(&mut items);
    let excerpt = is_excerpt(&items);
    Items { items: items.into_iter(), excerpt }
}

// ---------------------------------------------------------------------------------------------
// Normalization

/// The physical lines as logical lines: quoted-printable decoded when the input is, every
/// line normalized.
fn normalize(bytes: &[u8]) -> Vec<Logical> {
    let physical: Vec<&[u8]> = split_lines(bytes);
    let mut out = Vec::with_capacity(physical.len());
    if looks_quoted_printable(&physical) {
        let mut pending: Option<(u64, Vec<u8>)> = None;
        for (i, raw) in physical.iter().enumerate() {
            let (start, mut decoded) = pending.take().unwrap_or((i as u64 + 1, Vec::new()));
            let soft = qp_decode_into(raw, &mut decoded);
            if soft && i + 1 < physical.len() && decoded.len() <= MAX_LINE {
                pending = Some((start, decoded));
            } else {
                out.push(logical(start, &decoded));
            }
        }
        if let Some((start, decoded)) = pending {
            out.push(logical(start, &decoded));
        }
    } else {
        for (i, raw) in physical.iter().enumerate() {
            out.push(logical(i as u64 + 1, raw));
        }
    }
    out
}

/// Lines between `\n`s (a `\r` before the `\n` dropped); the input's last line needs no `\n`.
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.ends_with(b"\n") {
        lines.pop();
    }
    for line in &mut lines {
        *line = line.strip_suffix(b"\r").unwrap_or(line);
    }
    lines
}

fn logical(line: u64, raw: &[u8]) -> Logical {
    if raw.len() > MAX_LINE {
        return Logical { line, shown: String::new(), text: String::new(), too_long: true };
    }
    let shown = String::from_utf8_lossy(raw).into_owned();
    let text = normalize_line(&shown).into_owned();
    Logical { line, shown, text, too_long: false }
}

/// Whether the input is quoted-printable: `=` is followed by two upper-case hex digits or
/// ends a line (a soft break) nearly everywhere it occurs, and there are enough of those.
fn looks_quoted_printable(lines: &[&[u8]]) -> bool {
    let (mut valid, mut invalid, mut soft) = (0usize, 0usize, 0usize);
    for line in lines {
        for (at, _) in line.iter().enumerate().filter(|(_, c)| **c == b'=') {
            match (line.get(at + 1), line.get(at + 2)) {
                (None, _) => {
                    valid += 1;
                    soft += 1;
                }
                (Some(&a), Some(&b)) if is_qp_hex(a) && is_qp_hex(b) => valid += 1,
                _ => invalid += 1,
            }
        }
    }
    valid >= 3 && invalid * 10 <= valid && (soft >= 1 || valid >= 6)
}

fn is_qp_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'A'..=b'F').contains(&c)
}

/// Decodes one quoted-printable line onto `out`; true when it ends with a soft break.
fn qp_decode_into(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == b'=' {
            if i + 1 == raw.len() {
                return true;
            }
            if let (Some(&a), Some(&b)) = (raw.get(i + 1), raw.get(i + 2))
                && is_qp_hex(a)
                && is_qp_hex(b)
            {
                out.push(hex_nibble(a) << 4 | hex_nibble(b));
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    false
}

fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'A' + 10,
    }
}

/// One line made readable: blanks, quote and author markers, annotation tails.
fn normalize_line(shown: &str) -> Cow<'_, str> {
    let mut text = Cow::Borrowed(shown);
    if !shown.is_ascii() {
        text = Cow::Owned(ascii_blanks(shown));
    }
    if let Some(unquoted) = strip_quote(&text) {
        text = Cow::Owned(unquoted.to_owned());
    }
    if let Some(unmarked) = strip_author_marker(&text) {
        text = Cow::Owned(unmarked);
    }
    if let Some(at) = annotation_tail(&text) {
        text = Cow::Owned(text[..at].trim_end().to_owned());
    }
    text
}

/// Every Unicode blank as an ASCII space, mojibake blanks too: `ï¿½` (U+FFFD seen through
/// Latin-1), U+FFFD itself, `Â` before a no-break space; zero-width characters dropped.
fn ascii_blanks(s: &str) -> String {
    let s = s.replace("\u{ef}\u{bf}\u{bd}", " ").replace("\u{c2}\u{a0}", " ");
    s.chars()
        .filter(|c| !matches!(c, '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}'))
        .map(|c| match c {
            '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
            | '\u{fffd}' => ' ',
            c => c,
        })
        .collect()
}

/// The line without its mail quote markers (`> `, `>>> `, `> > > `), if it has some.
fn strip_quote(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let mut i = b.iter().take(3).take_while(|&&c| c == b' ').count();
    if b.get(i) != Some(&b'>') {
        return None;
    }
    while b.get(i) == Some(&b'>') {
        i += 1;
        if b.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    Some(&line[i..])
}

/// A trace line after an author's marker (`B:        CPU 0/KVM-7289 [023] …`): the marker
/// (one or two letters or digits and `:` or `)`, then two blanks or more) blanked out, when
/// what follows reads as a trace line with its columns. A comm is right-aligned in 16 columns,
/// so a marker is text before it, never part of it.
fn strip_author_marker(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let start = b.iter().take(3).take_while(|&&c| c == b' ').count();
    let len = b[start..].iter().take(2).take_while(|c| c.is_ascii_alphanumeric()).count();
    let mark = start + len;
    if len == 0 || !matches!(b.get(mark), Some(b':' | b')')) {
        return None;
    }
    let blanks = b[mark + 1..].iter().take_while(|&&c| c == b' ').count();
    if blanks < 2 {
        return None;
    }
    let rest = format!("{}{}", " ".repeat(mark + 1), &line[mark + 1..]);
    let mut layout = super::prefix::Layout::default();
    match super::prefix::classify(&rest, &mut layout) {
        super::prefix::LineKind::Event(p) if p.has_cpu => Some(rest),
        _ => None,
    }
}

/// Where an annotation appended to a trace line starts (`   <-------- [1]`, `  <== here`).
fn annotation_tail(line: &str) -> Option<usize> {
    let at = line.find("  <")?;
    let after = &line[at..].trim_start()[1..];
    let arrow = after.bytes().take_while(|c| matches!(c, b'-' | b'=')).count();
    (arrow >= 2).then_some(at)
}

// ---------------------------------------------------------------------------------------------
// Joins

/// What a logical line alone is, for the joiner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Blank.
    Blank,
    /// A record of its own (an event, a header, a marker, a line that is trace text).
    Record,
    /// Columns through the timestamp, nothing after (`… 1907374.582979:`).
    StampOnly,
    /// No trace text alone: prose, or the rest of the record above.
    Loose,
}

/// Joins records continued on following lines and parses every record once.
fn join(lines: &[Logical], parser: &mut LineParser) -> Vec<(Outcome, u64)> {
    let alone: Vec<Outcome> = lines.iter().map(|l| parse(parser, l)).collect();
    let shapes: Vec<Shape> = lines.iter().zip(&alone).map(|(l, o)| shape(l, o)).collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut alone = alone.into_iter().map(Some).collect::<Vec<_>>();
    let mut i = 0;
    while i < lines.len() {
        let first = alone[i].take().unwrap_or(Outcome::NonTrace("".into()));
        let joinable = match (&first, shapes[i]) {
            (_, Shape::StampOnly) => true,
            (Outcome::Event { event, .. }, _) => !matches!(event.kind, EventKind::Lost { .. }),
            (Outcome::BadEvent { .. }, _) => true,
            _ => false,
        };
        if !joinable {
            out.push((shown_outcome(first, &lines[i]), lines[i].line));
            i += 1;
            continue;
        }
        let mut text = lines[i].text.clone();
        let mut current = first;
        let mut stamp_only = shapes[i] == Shape::StampOnly;
        let mut next = i + 1;
        loop {
            // One line, or a few when the first ones hold only part of what they continue
            // (`… rip` / `0x… info1 0x… intr_info` / `0x0 error_code 0x0`).
            let mut taken = None;
            for take in 1..=MAX_PIECES {
                let pieces = next..next + take;
                if pieces.end > lines.len()
                    || !pieces.clone().all(|j| can_continue(&lines[j], shapes[j], stamp_only))
                {
                    break;
                }
                let mut candidate = text.trim_end().to_owned();
                for j in pieces.clone() {
                    candidate.push(' ');
                    candidate.push_str(lines[j].text.trim());
                }
                let joined = parser.line_text(&candidate);
                let tail: Vec<&str> = pieces.clone().map(|j| lines[j].text.trim()).collect();
                if accepts(&current, &joined, &tail, stamp_only) {
                    taken = Some((take, candidate, joined));
                    break;
                }
            }
            let Some((take, candidate, joined)) = taken else { break };
            text = candidate;
            current = joined;
            stamp_only = false;
            next += take;
        }
        if stamp_only {
            // Nothing completed the record: the line alone (trace text that does not read).
            current = parser.line_text(&lines[i].text);
        }
        out.push((current, lines[i].line));
        i = next;
    }
    out
}

fn parse(parser: &mut LineParser, line: &Logical) -> Outcome {
    if line.too_long {
        return Outcome::too_long();
    }
    parser.line_text(&line.text)
}

/// A skipped line is reported as the poster wrote it.
fn shown_outcome(outcome: Outcome, line: &Logical) -> Outcome {
    match outcome {
        Outcome::NonTrace(_) => Outcome::NonTrace(line.shown.as_str().into()),
        other => other,
    }
}

fn shape(line: &Logical, alone: &Outcome) -> Shape {
    if line.text.trim().is_empty() && !line.too_long {
        return Shape::Blank;
    }
    match alone {
        Outcome::NonTrace(_) => Shape::Loose,
        Outcome::Bad(_) if ends_with_stamp(&line.text) => Shape::StampOnly,
        _ => Shape::Record,
    }
}

/// `… [004] .... 1907374.582979:`: a line of columns that ends right after its timestamp.
fn ends_with_stamp(text: &str) -> bool {
    let t = text.trim_end();
    let Some(body) = t.strip_suffix(':') else { return false };
    let word = body.rsplit(' ').next().unwrap_or("");
    let Some((secs, frac)) = word.split_once('.') else { return false };
    !secs.is_empty()
        && (1..=9).contains(&frac.len())
        && secs.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
        && loose::looks_like_trace(&format!("{t} x"))
}

/// Whether a line may continue the record above: not blank, not a record of its own (event
/// text without its columns only right after a line that ended with its timestamp).
fn can_continue(line: &Logical, shape: Shape, after_stamp: bool) -> bool {
    match shape {
        Shape::Loose => true,
        Shape::Blank | Shape::StampOnly => false,
        Shape::Record => after_stamp && loose::stripped_name(line.text.trim()).is_some(),
    }
}

/// Whether `joined` (the record with `tail` appended) is the record, rather than `current`
/// and lines of something else.
fn accepts(current: &Outcome, joined: &Outcome, tail: &[&str], stamp_only: bool) -> bool {
    let joined_event = match joined {
        Outcome::Event { event, .. } => Some(event),
        Outcome::BadEvent { .. } => None,
        _ => return false,
    };
    if stamp_only {
        // The timestamp's line and the event's text: the join is an event line.
        return true;
    }
    let Some(joined_event) = joined_event else { return false };
    let current_event = match current {
        Outcome::Event { event, .. } => event,
        // The record did not read alone, and does with its continuation.
        Outcome::BadEvent { .. } => return true,
        _ => return false,
    };
    if tail.iter().any(|t| is_prose(t)) && !body_is_empty(current_event) {
        return false;
    }
    if current_event.kind.known().is_some() {
        // A typed event: the continuation must have carried fields.
        return joined_event.kind != current_event.kind;
    }
    if body_is_empty(current_event) {
        return true;
    }
    let print = matches!(current_event.kind, EventKind::Printk(_));
    tail.iter().all(|t| print || is_field_data(t))
}

/// An untyped event whose line ended with its name (`kvm:kvm_set_irq:`, `bprint:`), or a print
/// with its function only (`bprint: dump_vmcs:`).
fn body_is_empty(event: &Event) -> bool {
    match &event.kind {
        EventKind::Printk(p) => p.text.trim().is_empty(),
        EventKind::Other(o) => {
            o.fields.0.iter().all(|(_, v)| v.as_str().is_some_and(|s| s.trim().is_empty()))
        }
        _ => false,
    }
}

/// A line of words: three or more plain words (letters only, with sentence punctuation), at
/// least half of its words; or a sentence's end.
fn is_prose(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let plain = words
        .iter()
        .filter(|w| {
            let w = w.trim_end_matches([',', '.', ';', ':', '!', '?', ')']).trim_start_matches('(');
            w.len() >= 2 && w.chars().all(|c| c.is_alphabetic() || c == '\'')
        })
        .count();
    (plain >= 3 && plain * 2 >= words.len())
        || (words.len() >= 3 && line.trim_end().ends_with(['.', '!', '?']) && plain >= 2)
}

/// A line of values: at least half of its words hold a digit or the punctuation of fields
/// (`=`, `|`, parentheses, brackets).
fn is_field_data(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let data = words
        .iter()
        .filter(|w| w.bytes().any(|c| c.is_ascii_digit() || b"=|()[]{}".contains(&c)))
        .count();
    !words.is_empty() && data * 2 >= words.len()
}

// ---------------------------------------------------------------------------------------------
// Segments

/// What is known of the segment being read.
#[derive(Default)]
struct Segment {
    /// Its threads (pids ≥ 0).
    threads: BTreeSet<i32>,
    /// The time of its last event with one, and whether that is nanoseconds.
    last_ts: Option<(u64, bool)>,
    events: usize,
}

/// What lies between the previous event and this one.
#[derive(Default)]
struct Between {
    prose: bool,
    separator: bool,
    header: bool,
}

/// Inserts a [`EventKind::Segment`] marker before the first event of every capture after the
/// first.
fn segment(items: &mut Vec<(Outcome, u64)>) {
    let mut out: Vec<(Outcome, u64)> = Vec::with_capacity(items.len() + 4);
    let mut seg = Segment::default();
    // Every event with a time so far, by time (for blocks pasted again).
    let mut timed: TimedEvents = HashMap::new();
    let mut between = Between::default();
    let mut index = 0;
    let taken = std::mem::take(items);
    // The threads of each run of events up to the next prose, looked up by item index.
    let runs = thread_runs(&taken);
    for (at, (outcome, line)) in taken.into_iter().enumerate() {
        match &outcome {
            Outcome::NonTrace(text) if seg.events > 0 => {
                between.prose = true;
                between.separator |= is_separator(text);
            }
            Outcome::Header { format: Some(_), .. } if seg.events > 0 => between.header = true,
            Outcome::Event { event, seen, .. } => {
                if seg.events > 0
                    && let Some(reason) =
                        boundary(&seg, &between, event, seen, (&timed, &out), &runs[at])
                {
                    index += 1;
                    let marker = Event {
                        ts: event.ts,
                        cpu: event.cpu,
                        pid: -1,
                        tgid: None,
                        comm: None,
                        kind: EventKind::Segment { index, reason },
                    };
                    let seen = Seen { loose: true, ..*seen };
                    out.push((
                        Outcome::Event { event: marker, seen, unknown: None, truncated: None },
                        line,
                    ));
                    seg = Segment::default();
                }
                between = Between::default();
                seg.events += 1;
                if event.pid >= 0 {
                    seg.threads.insert(event.pid);
                }
                if let Some(ts) = event.time() {
                    timed.entry(ts).or_default().push(out.len());
                    seg.last_ts = Some((ts, seen.ns));
                }
            }
            _ => {}
        }
        out.push((outcome, line));
    }
    *items = out;
}

/// The items of the events with a time, by their time.
type TimedEvents = HashMap<u64, Vec<usize>>;

/// Why a new segment starts at `event`, if it does.
fn boundary(
    seg: &Segment,
    between: &Between,
    event: &Event,
    seen: &Seen,
    (timed, out): (&TimedEvents, &[(Outcome, u64)]),
    run_threads: &BTreeSet<i32>,
) -> Option<SegmentReason> {
    if between.header {
        return Some(SegmentReason::ToolHeader);
    }
    if between.separator {
        return Some(SegmentReason::Separator);
    }
    let ts = event.time();
    if let (Some(ts), Some((last, _))) = (ts, seg.last_ts)
        && ts.saturating_add(TIME_BACK_TOLERANCE) < last
    {
        return Some(SegmentReason::TimeBack);
    }
    if !between.prose {
        return None;
    }
    // A block pasted again (after some prose): an event read before, to the microsecond.
    if let Some(ts) = ts
        && let Some(earlier) = timed.get(&ts)
        && earlier.iter().any(|&at| match &out[at].0 {
            Outcome::Event { event: e, .. } => {
                (e.cpu, e.pid, &e.kind) == (event.cpu, event.pid, &event.kind)
            }
            _ => false,
        })
    {
        return Some(SegmentReason::RepeatedEvent);
    }
    let jump = match (ts, seg.last_ts) {
        (Some(ts), Some((last, true))) if seen.ns => Some(ts.saturating_sub(last)),
        _ => None,
    };
    if jump.is_some_and(|j| j > TIME_JUMP) {
        return Some(SegmentReason::TimeJump);
    }
    let new_threads =
        !run_threads.is_empty() && !seg.threads.is_empty() && run_threads.is_disjoint(&seg.threads);
    if new_threads && jump.is_none_or(|j| j > NEW_THREADS_JUMP) {
        return Some(SegmentReason::NewThreads);
    }
    None
}

/// For every item, the threads of the run of events it starts (up to the next prose line);
/// empty for items that start none.
fn thread_runs(items: &[(Outcome, u64)]) -> Vec<BTreeSet<i32>> {
    let mut runs = vec![BTreeSet::new(); items.len()];
    let mut current = BTreeSet::new();
    for (at, (outcome, _)) in items.iter().enumerate().rev() {
        match outcome {
            Outcome::NonTrace(_) => current = BTreeSet::new(),
            Outcome::Event { event, .. } => {
                if event.pid >= 0 {
                    current.insert(event.pid);
                }
                runs[at] = current.clone();
            }
            _ => {}
        }
    }
    runs
}

/// `=====`, `==== gdb session ====`: a line of mostly `=` (quoted or not).
fn is_separator(text: &str) -> bool {
    let t = strip_quote(text).unwrap_or(text).trim();
    let equals = t.bytes().filter(|&c| c == b'=').count();
    equals >= 4 && equals * 2 >= t.len() && t.starts_with('=')
}

/// Whether the items make an excerpt (see [`crate::TraceMeta::excerpt`]): what the reader
/// will conclude once they are all read, known before the first is yielded.
fn is_excerpt(items: &[(Outcome, u64)]) -> bool {
    let mut evidence = Evidence::default();
    let mut events = 0;
    for (outcome, _) in items {
        match outcome {
            Outcome::Header { cpus, format } => evidence.header(*cpus, *format),
            Outcome::NonTrace(_) | Outcome::Bad(_) | Outcome::BadEvent { .. } => {
                evidence.gap(events);
            }
            Outcome::Event { event, .. } => {
                if events == 0 {
                    evidence.first_event(event);
                }
                if event.time().is_none() {
                    evidence.unknown_time();
                }
                if let EventKind::Segment { .. } = event.kind {
                    evidence.segment();
                }
                events += 1;
            }
            Outcome::Lost { .. } => {}
        }
    }
    evidence.verdict(events)
}

/// What the lines read so far say about the input being an excerpt (a reader notes the
/// first event, gaps and events without time as they come; see [`crate::TraceMeta::excerpt`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Evidence {
    /// A tool's header (`cpus=N`, `# tracer:`, `#P:N`).
    header: bool,
    /// Whether the first event is one of a VM's creation.
    first_starts_vm: Option<bool>,
    /// Events read before the first line skipped after an event (prose, a bad line).
    gap_at: Option<u64>,
    /// An event without its time.
    unknown_time: bool,
    /// A segment marker: several captures.
    segments: bool,
}

impl Evidence {
    /// A header line.
    pub(crate) fn header(&mut self, cpus: Option<u32>, format: Option<crate::InputFormat>) {
        self.header |= cpus.is_some() || format.is_some();
    }

    /// A line skipped after `events` events.
    pub(crate) fn gap(&mut self, events: u64) {
        if events > 0 && self.gap_at.is_none() {
            self.gap_at = Some(events);
        }
    }

    /// The first event.
    pub(crate) fn first_event(&mut self, event: &Event) {
        self.first_starts_vm.get_or_insert_with(|| starts_vm(event));
    }

    /// Whether the first event was noted.
    pub(crate) fn first_event_seen(&self) -> bool {
        self.first_starts_vm.is_some()
    }

    /// An event without its time.
    pub(crate) fn unknown_time(&mut self) {
        self.unknown_time = true;
    }

    /// A segment marker.
    pub(crate) fn segment(&mut self) {
        self.segments = true;
    }

    /// The verdict once `events` events were read.
    pub(crate) fn verdict(&self, events: u64) -> bool {
        self.unknown_time
            || self.segments
            || self.gap_at.is_some_and(|at| events > at)
            || (!self.header && self.first_starts_vm == Some(false))
    }
}

/// An event KVM emits when a VM and its vCPUs are created (the TSC set up for a new vCPU, the
/// master clock), or vmxray's own identity record written when recording starts.
fn starts_vm(event: &Event) -> bool {
    matches!(event.kind, EventKind::Identity(_))
        || matches!(
            event.name(),
            "kvm_write_tsc_offset"
                | "kvm_update_master_clock"
                | "kvm_track_tsc"
                | "kvm_apicv_inhibit_changed"
                | "kvm_create_vm"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<(u64, String)> {
        normalize(input.as_bytes()).into_iter().map(|l| (l.line, l.text)).collect()
    }

    #[test]
    fn a_tool_header_on_the_first_line_marks_a_tool_file() {
        assert!(starts_with_tool_header(b"cpus=2\n  qemu-1 [000] 1.0: kvm_exit: ..."));
        assert!(starts_with_tool_header(b"version = 6\r\ncpus=2\n"));
        assert!(starts_with_tool_header(b"# tracer: nop\n#\n"));
        // A paste: prose first, or a header further down, or not quite a header.
        assert!(!starts_with_tool_header(b"Here is the trace:\ncpus=48\n"));
        assert!(!starts_with_tool_header(b"cpus=\n"));
        assert!(!starts_with_tool_header(b"> cpus=2\n"));
        assert!(!starts_with_tool_header(b""));
    }

    #[test]
    fn quoted_printable_is_decoded_with_its_soft_breaks_joined() {
        // bz220549-split-irqchip-eoi-tracepoints.mailed.txt
        let input = "      CPU 0/KVM  699876 [020] 18136.763652:             kvm:kvm_nested_vmen=\n\
                     ter:\nint_ctl: 0x00000000 event_inj: 0x80000081 nested_ept=3Dy nested_eptp:\n\
                     =E2=80=82=E2=80=82x\n";
        let t = texts(input);
        assert_eq!(t[0].0, 1);
        assert!(t[0].1.ends_with("kvm:kvm_nested_venter:".replace("venter", "vmenter").as_str()));
        assert_eq!(
            t[1],
            (3, "int_ctl: 0x00000000 event_inj: 0x80000081 nested_ept=y nested_eptp:".into())
        );
        assert_eq!(t[2], (4, "  x".into()));
        // Plain text with `=` in it is not quoted-printable.
        let plain = "vcpu=0 a=1 b=2 c=3\nx=y\n";
        assert_eq!(texts(plain)[0].1, "vcpu=0 a=1 b=2 c=3");
    }

    #[test]
    fn blanks_quotes_markers_and_tails() {
        // ept-livelock-reply-mojibake-quoted.txt
        assert_eq!(
            normalize_line(">>> kvm_entry:\u{ef}\u{bf}\u{bd}\u{ef}\u{bf}\u{bd} vcpu 1, rip"),
            "kvm_entry:   vcpu 1, rip"
        );
        // ept-violation-livelock-mmu-seq.txt
        assert_eq!(normalize_line("\u{a0}\u{a0} \u{a0}CPU"), "    CPU");
        // rsm-into-l2-triple-fault-deep-quote.txt
        assert_eq!(normalize_line("> > > > > > > > kvm_entry: vcpu 0"), "kvm_entry: vcpu 0");
        // dirty-ring-full-exit-quoted-annotated.txt
        assert_eq!(
            normalize_line(
                ">   dirty_log_test-29003 [001] 184503.505194: kvm_page_fault:       address 7fc036f000 error_code 582              <-------- [1]"
            ),
            "  dirty_log_test-29003 [001] 184503.505194: kvm_page_fault:       address 7fc036f000 error_code 582"
        );
        // nested-dr6-l1-and-l0-views-hack-printk.txt
        assert_eq!(
            normalize_line(
                " B:        CPU 0/KVM-7289    [023] d....  2925.640967: kvm_exit: vcpu 0 reason HLT"
            ),
            "           CPU 0/KVM-7289    [023] d....  2925.640967: kvm_exit: vcpu 0 reason HLT"
        );
        assert_eq!(
            normalize_line(" D: L1 reads DR6, arch.dr6 = 0"),
            " D: L1 reads DR6, arch.dr6 = 0"
        );
    }

    #[test]
    fn prose_and_field_data() {
        assert!(is_prose("  a0: The previous vmcs.VMX_PREEMPTION_TIMER_VALUE value"));
        assert!(is_prose("      saved by CPU when VMEXIT."));
        assert!(is_prose("  and so on."));
        assert!(!is_prose("level 0 source 0"));
        assert!(!is_prose("Guest State ***"));
        assert!(is_field_data("level 0 source 0"));
        assert!(is_field_data("0 (edge|masked)"));
        assert!(is_field_data("gh_mask=fffffffffffefff7"));
        assert!(!is_field_data("~~~~~"));
        assert!(is_separator(
            "============================================================================"
        ));
        assert!(is_separator("======= gdb session ========"));
        assert!(!is_separator("a = b"));
    }

    #[test]
    fn a_stamp_at_the_end_of_a_line_of_columns() {
        assert!(ends_with_stamp("           <...>-3441924 [004] .... 1907374.582979:"));
        assert!(ends_with_stamp("      CPU-2386625 [094] 6598425.465404: "));
        assert!(!ends_with_stamp("Time: 12.5:"));
    }
}
