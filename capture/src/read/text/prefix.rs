//! The part of a line before the event's body: who, where, when, which event.
//!
//! Column layouts, in printf terms (see `shared/reference/trace-formats.md` §5):
//!
//! ```text
//! ftrace trace/trace_pipe  "%16s-%-7d " ["(%7d) "] "[%03d] " ["%c%c%c%c%c "] "%5lu.%06lu: " name ": " body
//! trace-cmd report         "%16s-%-5d [%03d] %6lu.%06lu: " ["(+N) "] name ": " padding body   (-t: .%09lu)
//! trace-cmd report -l      "%8.8s-%-5d %3d" flags " %6lu.%06lu: " name ": " body
//! perf script              "%16s %5d[/%-5d] [%03d] %12s: " "%*s: " sys:name body   (pid 7 wide on perf ≥ 6.5)
//! perf script (minimal)    "%12s: " sys:name ": " body
//! raw / hex trace options  "%d %d %llu type: %d" / "%08x %08x %016llx type: %d"
//! ```
//!
//! A comm may hold spaces, dashes, digits and brackets (`qemu vcpu-0 x`, `CPU 0/KVM`,
//! `kworker/1:1`), so the comm is never found by splitting on whitespace: it is the 16 (or 8)
//! columns before the `-pid` / ` pid` separator, whose position is fixed by the printf width
//! (a wider pid only grows to the right). Only when that column does not hold the separator
//! does the parser fall back to anchoring on the first ` [NNN]` CPU field and taking the pid as
//! the last `-<digits>` (or the last token, for perf) before it.

use crate::read::InputFormat;

use super::error::TextError;

/// Where an event line came from and what it says before the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix<'a> {
    pub comm: Option<&'a str>,
    /// The thread id; `-1` when the layout does not print one.
    pub pid: i32,
    /// The thread's process: ftrace's `(tgid)` column (`record-tgid`), perf's `pid/tid`.
    pub tgid: Option<i32>,
    /// `0` when the layout does not print the CPU.
    pub cpu: u32,
    pub ts: Timestamp,
    /// The event name as printed: `kvm_exit` (ftrace, trace-cmd) or `kvm:kvm_exit` (perf).
    pub name: &'a str,
    pub body: &'a str,
    pub format: InputFormat,
    pub has_cpu: bool,
    /// The system, when the layout implies one the printed name lacks (QEMU's trace events).
    pub system: Option<&'static str>,
    /// The line says nothing about the trace's format and clock (no timestamp column, or a
    /// QEMU line among kernel events).
    pub loose: bool,
}

/// A timestamp as printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timestamp {
    /// Nanoseconds for `sec.frac` stamps, raw clock units for integer stamps.
    pub value: u64,
    /// True for `sec.frac` stamps.
    pub ns: bool,
}

/// What one line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LineKind<'a> {
    Event(Prefix<'a>),
    /// `raw` / `hex` trace options: only the numeric event type is printed.
    RawType {
        pid: i32,
        cpu: u32,
        ts: u64,
        type_id: u32,
    },
    /// `CPU:1 [LOST 330608 EVENTS]`, `CPU:1 [12 EVENTS DROPPED]`, `CPU:1 [EVENTS DROPPED]`.
    Lost {
        cpu: u32,
        count: Option<u64>,
    },
    /// Comments, blank lines, `cpus=N`, `version = 6`, `CPU 0 is empty`.
    Header {
        cpus: Option<u32>,
        format: Option<InputFormat>,
    },
    /// A line that is no trace text at all (prose, mail quoting, shell prompts, a debugger's
    /// output): skipped and counted in every mode (see `loose::looks_like_trace`).
    NonTrace(&'a str),
    Bad(TextError),
}

/// Which layout matched last, tried first on the next line.
///
/// Mostly a speed hint, but not only: a contrived line can fit two layouts (a latency-format
/// line whose body holds `x-5 [001] 2.0: e: b` also reads as a dash line), and then the layout
/// tried first wins. So a reader that starts in the middle of the input (a block parsed ahead,
/// see `blocks.rs`) must consider every hint until its lines stop depending on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Layout {
    #[default]
    Dash,
    Latency,
    Perf,
}

impl Layout {
    /// Every layout, in [`Layout::index`] order.
    pub(crate) const ALL: [Self; 3] = [Self::Dash, Self::Latency, Self::Perf];

    /// The position in [`Layout::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Dash => 0,
            Self::Latency => 1,
            Self::Perf => 2,
        }
    }
}

pub(crate) const EXPECTED_LINE: &str = "an event line (`comm-pid [cpu] secs.usecs: event: ...`, \
     `comm pid [cpu] secs.usecs: sys:event: ...`), a lost-events marker (`CPU:1 [LOST 5 EVENTS]`) \
     or a header line";

/// Classifies one line (already without its newline).
pub(crate) fn classify<'a>(line: &'a str, last: &mut Layout) -> LineKind<'a> {
    classify_hinted(line, last).0
}

/// [`classify`], also saying whether the hint `last` took part: true when a column layout
/// recognized (or refused) the line, so that another try-first order could have decided
/// otherwise; false when the line was decided before any layout was tried (headers, markers)
/// or when no layout recognized it (every order tries all three and finds nothing).
pub(crate) fn classify_hinted<'a>(line: &'a str, last: &mut Layout) -> (LineKind<'a>, bool) {
    let b = line.as_bytes();
    let spaces = leading_spaces(b);
    let first = b[spaces..].iter().position(|c| !c.is_ascii_whitespace()).map(|at| spaces + at);
    let Some(first) = first else {
        return (LineKind::Header { cpus: None, format: None }, false);
    };
    let early = match b[first] {
        b'#' => Some(header_comment(&line[first..])),
        b'C' if line.starts_with("CPU:") => Some(lost_marker(line).unwrap_or_else(|| bad(line))),
        b'C' if line.starts_with("CPU ") && line.ends_with(" is empty") => {
            Some(LineKind::Header { cpus: None, format: Some(InputFormat::TraceCmdText) })
        }
        b'c' if line.starts_with("cpus=") => Some(LineKind::Header {
            cpus: line[5..].trim().parse().ok(),
            format: Some(InputFormat::TraceCmdText),
        }),
        b'v' if line.starts_with("version = ") => {
            Some(LineKind::Header { cpus: None, format: Some(InputFormat::TraceCmdText) })
        }
        _ => None,
    };
    if let Some(kind) = early {
        return (kind, false);
    }
    classify_columns(line, last)
}

/// The column layouts (the hinted one first), then the layout-less forms; true when a layout
/// decided.
fn classify_columns<'a>(line: &'a str, last: &mut Layout) -> (LineKind<'a>, bool) {
    let order = match *last {
        Layout::Dash => [Layout::Dash, Layout::Latency, Layout::Perf],
        Layout::Latency => [Layout::Latency, Layout::Dash, Layout::Perf],
        Layout::Perf => [Layout::Perf, Layout::Dash, Layout::Latency],
    };
    for layout in order {
        let found = match layout {
            Layout::Dash => dash_layout(line),
            Layout::Latency => latency_layout(line),
            Layout::Perf => perf_layout(line),
        };
        match found {
            Some(Ok(kind)) => {
                *last = layout;
                return (kind, true);
            }
            Some(Err(e)) => return (LineKind::Bad(e), true),
            None => {}
        }
    }
    if let Some(kind) = raw_type(line) {
        return (kind, false);
    }
    if let Some(prefix) = super::loose::classify(line) {
        return (LineKind::Event(prefix), false);
    }
    if super::loose::looks_like_trace(line) {
        return (bad(line), false);
    }
    (LineKind::NonTrace(line), false)
}

fn bad(line: &str) -> LineKind<'_> {
    LineKind::Bad(TextError::UnrecognizedLine {
        expected: EXPECTED_LINE,
        found: super::error::Snippet::new(line),
    })
}

fn header_comment(line: &str) -> LineKind<'_> {
    // `# entries-in-buffer/entries-written: 62/62   #P:2`
    let cpus = line.find("#P:").and_then(|at| {
        let digits = &line[at + 3..];
        let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
        digits[..end].parse().ok()
    });
    let format = line.starts_with("# tracer:").then_some(InputFormat::FtraceText);
    LineKind::Header { cpus, format }
}

fn lost_marker(line: &str) -> Option<LineKind<'_>> {
    let rest = line.strip_prefix("CPU:")?;
    let (cpu, rest) = split_digits(rest)?;
    let inner = rest.trim().strip_prefix('[')?.strip_suffix(']')?;
    let cpu = u32::try_from(cpu).ok()?;
    if let Some(n) = inner.strip_prefix("LOST ").and_then(|r| r.strip_suffix(" EVENTS")) {
        return Some(LineKind::Lost { cpu, count: Some(n.parse().ok()?) });
    }
    if inner == "EVENTS DROPPED" {
        return Some(LineKind::Lost { cpu, count: None });
    }
    let n = inner.strip_suffix(" EVENTS DROPPED")?;
    Some(LineKind::Lost { cpu, count: Some(n.parse().ok()?) })
}

/// Splits leading ASCII digits off `s` and parses them.
pub(super) fn split_digits(s: &str) -> Option<(u64, &str)> {
    let b = s.as_bytes();
    let mut value: u64 = 0;
    let mut end = 0;
    while end < b.len() && b[end].is_ascii_digit() {
        if end == 19 {
            return None;
        }
        value = value * 10 + u64::from(b[end] - b'0');
        end += 1;
    }
    if end == 0 {
        return None;
    }
    Some((value, &s[end..]))
}

/// `s.trim_start()`, without decoding characters in the common case: a comm is right-aligned
/// in its column, so this runs on every line, and `trim_start` costs ~15 instructions per
/// padding space. ASCII whitespace is dropped bytewise; only when what follows could be
/// whitespace outside that set (`\x0b`, or any non-ASCII character) does `trim_start` decide.
pub(super) fn trim_start(s: &str) -> &str {
    let t = s[leading_spaces(s.as_bytes())..].trim_ascii_start();
    match t.as_bytes().first() {
        Some(&c) if c == 0x0b || !c.is_ascii() => t.trim_start(),
        _ => t,
    }
}

pub(super) fn skip_spaces(s: &str) -> &str {
    &s[leading_spaces(s.as_bytes())..]
}

/// How many `' '` start `b`, counted eight at a time: columns are padded with spaces (a
/// right-aligned comm, a name column), a dozen per line.
#[inline]
fn leading_spaces(b: &[u8]) -> usize {
    const SPACES: u64 = u64::from_ne_bytes([b' '; 8]);
    let mut n = 0;
    let mut words = b.chunks_exact(8);
    for word in words.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let other = u64::from_le_bytes(w) ^ SPACES;
        if other != 0 {
            // The first byte that is not a space is the lowest non-zero byte.
            return n + other.trailing_zeros() as usize / 8;
        }
        n += 8;
    }
    n + words.remainder().iter().take_while(|&&c| c == b' ').count()
}

/// `[NNN]` at the start of `s`.
pub(super) fn cpu_field(s: &str) -> Option<(u32, &str)> {
    let rest = s.strip_prefix('[')?;
    let (cpu, rest) = split_digits(rest)?;
    let rest = rest.strip_prefix(']')?;
    Some((u32::try_from(cpu).ok()?, rest))
}

/// Nanoseconds per unit of the last of `n` fraction digits, by `n` (1 to 9).
const NS_SCALE: [u64; 10] =
    [0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];

/// `secs.frac:` or `count:` at the start of `s`; returns the stamp and what follows the colon.
pub(super) fn timestamp(s: &str) -> Option<(Timestamp, &str)> {
    let (secs, rest) = split_digits(s)?;
    if let Some(frac) = rest.strip_prefix('.') {
        // At most 9 digits (nanoseconds), read as they are found.
        let mut digits = 0u64;
        let mut end = 0;
        for &c in frac.as_bytes() {
            if !c.is_ascii_digit() {
                break;
            }
            if end == 9 {
                return None;
            }
            digits = digits * 10 + u64::from(c - b'0');
            end += 1;
        }
        if end == 0 {
            return None;
        }
        let scale = NS_SCALE[end];
        let value = secs.checked_mul(1_000_000_000)?.checked_add(digits * scale)?;
        let rest = frac[end..].strip_prefix(':')?;
        return Some((Timestamp { value, ns: true }, rest));
    }
    let rest = rest.strip_prefix(':')?;
    Some((Timestamp { value: secs, ns: false }, rest))
}

const NAME_CHAR: u8 = 1;
const NAME_COLON: u8 = 2;

/// The bytes of event names by class: [`NAME_CHAR`] for `[A-Za-z0-9_]`, [`NAME_COLON`] for
/// `:`, 0 for the rest (a table: two range tests per byte were a tenth of a line's time).
static NAME_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match i {
            0x30..=0x39 | 0x41..=0x5a | 0x61..=0x7a | 0x5f => NAME_CHAR,
            0x3a => NAME_COLON,
            _ => 0,
        };
        i += 1;
    }
    table
};

/// After the timestamp's colon: optional `(+N)` (trace-cmd --ts-diff), the event name, its
/// colon, and the body.
pub(super) fn name_and_body(s: &str, with_system: bool) -> Option<(&str, &str)> {
    let mut s = skip_spaces(s);
    if s.starts_with("(+") {
        let close = s.find(')')?;
        s = skip_spaces(&s[close + 1..]);
    }
    // The name ends at the first `: ` (perf names hold a `:` of their own, not followed by a
    // space), or at a `:` ending the line; it holds only `[A-Za-z0-9_]` (and that `:`), so
    // one pass finds its end and checks it.
    let b = s.as_bytes();
    let mut has_colon = false;
    let mut at = 0;
    loop {
        match NAME_BYTES[usize::from(*b.get(at)?)] {
            NAME_CHAR => {}
            NAME_COLON => {
                if b.get(at + 1).is_none_or(|&c| c == b' ') {
                    break;
                }
                if !with_system {
                    return None;
                }
                has_colon = true;
            }
            // A print whose function name was made up (`<hack>: ...`).
            _ if at == 0 && b[0] == b'<' => return super::loose::angle_name_and_body(s),
            _ => return None,
        }
        at += 1;
    }
    if at == 0 || (with_system && !has_colon) {
        return None;
    }
    let name = &s[..at];
    let body = s.get(at + 2..).unwrap_or("");
    Some((name, body.trim_ascii()))
}

/// ftrace `trace`/`trace_pipe` and `trace-cmd report` (default, -t, --ts-diff).
fn dash_layout(line: &str) -> Option<Result<LineKind<'_>, TextError>> {
    let b = line.as_bytes();
    let (comm, pid_at) = if b.len() > 17 && b[16] == b'-' && b[17].is_ascii_digit() {
        (trim_start(&line[..16]), 17)
    } else {
        dash_fallback(line)?
    };
    let (pid, rest) = split_digits(&line[pid_at..])?;
    let pid_width = line.len() - pid_at - rest.len();
    let after_pid = rest;
    let mut rest = skip_spaces(rest);
    let mut tgid_or_flags = false;
    let mut tgid = None;
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')')?;
        // `(  15045)`, or `(-------)` when the kernel did not save the thread's tgid.
        tgid = inner[..close].trim().parse::<i32>().ok().filter(|t| *t > 0);
        rest = skip_spaces(&inner[close + 1..]);
        tgid_or_flags = true;
    }
    let pad = after_pid.len() - rest.len() + pid_width;
    let (cpu, rest) = cpu_field(rest)?;
    let mut rest = skip_spaces(rest);
    if rest.bytes().next().is_some_and(|c| !c.is_ascii_digit()) {
        // irq-info flags (`d..1.`; 4 characters on old kernels).
        let end = rest.find(' ')?;
        rest = skip_spaces(&rest[end..]);
        tgid_or_flags = true;
    }
    let (ts, rest) = timestamp(rest)?;
    let tsdiff = skip_spaces(rest).starts_with("(+");
    let (name, body) = name_and_body(rest, false)?;
    // ftrace pads the pid to 7 columns, trace-cmd to 5.
    let format = if tgid_or_flags || (pad >= 8 && !tsdiff) {
        InputFormat::FtraceText
    } else {
        InputFormat::TraceCmdText
    };
    Some(Ok(LineKind::Event(Prefix {
        comm: Some(comm),
        pid: i32::try_from(pid).ok()?,
        tgid,
        cpu,
        ts,
        name,
        body,
        format,
        has_cpu: true,
        system: None,
        loose: false,
    })))
}

/// Finds `comm-pid` when column 16 does not hold the dash: anchor on the first ` [NNN]` CPU
/// field, step back over an optional `(tgid)`, and take the last `-<digits>` before it.
fn dash_fallback(line: &str) -> Option<(&str, usize)> {
    let cpu_at = find_cpu_field(line)?;
    let mut head = line[..cpu_at].trim_end();
    if head.ends_with(')') {
        head = head[..head.rfind('(')?].trim_end();
    }
    let digits = head.bytes().rev().take_while(u8::is_ascii_digit).count();
    let pid_at = head.len() - digits;
    if digits == 0 || pid_at == 0 || head.as_bytes()[pid_at - 1] != b'-' {
        return None;
    }
    Some((trim_start(&head[..pid_at - 1]), pid_at))
}

/// The byte offset of the first ` [NNN]` (space, bracket, digits, bracket).
pub(super) fn find_cpu_field(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    memchr::memchr_iter(b'[', b)
        .find(|&at| at > 0 && b[at - 1] == b' ' && cpu_field(&line[at..]).is_some())
}

/// `trace-cmd report -l` (`%8.8s-%-5d %3d` + flags) and ftrace's latency-format text.
fn latency_layout(line: &str) -> Option<Result<LineKind<'_>, TextError>> {
    let b = line.as_bytes();
    if !(b.len() > 9 && b[8] == b'-' && b[9].is_ascii_digit()) {
        return None;
    }
    let comm = trim_start(&line[..8]);
    let (pid, rest) = split_digits(&line[9..])?;
    let (cpu, rest) = split_digits(skip_spaces(rest))?;
    let end = rest.find(' ')?;
    let flags = &rest[..end];
    if flags.is_empty() || flags.bytes().any(|c| !(c.is_ascii_alphanumeric() || c == b'.')) {
        return None;
    }
    let rest = skip_spaces(&rest[end..]);
    let stamp_end = rest.find(':')?;
    let stamp = rest[..stamp_end].trim_end();
    if stamp.len() > 2
        && stamp.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).ends_with("us")
    {
        return Some(Err(TextError::LatencyFormat));
    }
    let (ts, rest) = timestamp(rest)?;
    let (name, body) = name_and_body(rest, false)?;
    Some(Ok(LineKind::Event(Prefix {
        comm: Some(comm),
        pid: i32::try_from(pid).ok()?,
        tgid: None,
        cpu: u32::try_from(cpu).ok()?,
        ts,
        name,
        body,
        format: InputFormat::TraceCmdText,
        has_cpu: true,
        system: None,
        loose: false,
    })))
}

/// `perf script` text: `comm tid [cpu] time: sys:event: body`, with `pid/tid`, without comm and
/// tid, or without the CPU.
fn perf_layout(line: &str) -> Option<Result<LineKind<'_>, TextError>> {
    let b = line.as_bytes();
    let mut comm = None;
    let mut pid = -1;
    let mut tgid = None;
    let mut rest = line;
    // Fixed width: comm in columns 0..16, a space, the right-aligned tid.
    let fixed = (b.len() > 18 && b[16] == b' ')
        .then(|| perf_tid(skip_spaces(&line[17..])))
        .flatten()
        .map(|(ids, after)| (ids, skip_spaces(after)))
        .filter(|(_, after)| after.starts_with('[') || timestamp(after).is_some());
    if let Some(((tid, process), after)) = fixed {
        // Right-aligned in 16 columns; a line shifted by a blank leaves one after it.
        comm = Some(trim_start(&line[..16]).trim_end());
        pid = tid;
        tgid = process;
        rest = after;
    } else if let Some(cpu_at) = find_cpu_field(line) {
        // Fallback: the tid is the last token before the CPU field.
        let head = line[..cpu_at].trim_end();
        let tok_at = head.rfind(' ').map_or(0, |at| at + 1);
        if let Some(((tid, process), "")) = perf_tid(&head[tok_at..]) {
            let name = head[..tok_at].trim();
            comm = (!name.is_empty()).then_some(name);
            pid = tid;
            tgid = process;
            rest = &line[cpu_at..];
        }
    }
    rest = skip_spaces(rest);
    let (cpu, has_cpu, rest) = match cpu_field(rest) {
        Some((cpu, after)) => (cpu, true, skip_spaces(after)),
        None => (0, false, rest),
    };
    let (ts, rest) = timestamp(rest)?;
    let (name, body) = name_and_body(rest, true)?;
    Some(Ok(LineKind::Event(Prefix {
        comm,
        pid,
        tgid,
        cpu,
        ts,
        name,
        body: strip_ip_sym(body),
        format: InputFormat::PerfScriptText,
        has_cpu,
        system: None,
        loose: false,
    })))
}

/// A perf `tid` or `pid/tid` token; returns the tid and, for `pid/tid`, the pid (the
/// process).
fn perf_tid(s: &str) -> Option<((i32, Option<i32>), &str)> {
    let (first, rest) = split_digits(s)?;
    let (tid, process, rest) = match rest.strip_prefix('/') {
        Some(r) => {
            let (tid, rest) = split_digits(r)?;
            (tid, i32::try_from(first).ok().filter(|p| *p > 0), rest)
        }
        None => (first, None, rest),
    };
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some(((i32::try_from(tid).ok()?, process), rest))
}

/// `perf script -F ...,ip,sym` appends ` <16 hex digits> <symbol>` (and ` (<dso>)` with dso)
/// after the body; drop it.
pub(super) fn strip_ip_sym(body: &str) -> &str {
    let mut s = body;
    if let Some(open) = s.rfind(" (").filter(|_| s.ends_with(')')) {
        s = &s[..open];
    }
    let Some(sym_at) = s.rfind(' ') else { return body };
    let head = &s[..sym_at];
    let ip_at = head.rfind(' ').map_or(0, |at| at + 1);
    let ip = &head[ip_at..];
    if ip.len() == 16 && ip.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        head[..ip_at].trim_end()
    } else {
        body
    }
}

/// `raw` / `hex` trace options: `15045 1 511173882349 type: 82` or
/// `00003ac5 00000001 00000077045671ed type: 82`.
fn raw_type(line: &str) -> Option<LineKind<'_>> {
    let (head, type_id) = line.trim().split_once(" type: ")?;
    let type_id: u32 = type_id.trim().parse().ok()?;
    let mut it = head.split(' ');
    let (p, c, t) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let hex = p.len() == 8 && c.len() == 8 && t.len() == 16;
    let radix = if hex { 16 } else { 10 };
    let pid = u32::from_str_radix(p, radix).ok()?;
    Some(LineKind::RawType {
        pid: i32::from_ne_bytes(pid.to_ne_bytes()),
        cpu: u32::from_str_radix(c, radix).ok()?,
        ts: u64::from_str_radix(t, radix).ok()?,
        type_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> Prefix<'_> {
        let mut layout = Layout::default();
        match classify(line, &mut layout) {
            LineKind::Event(p) => p,
            other => panic!("{line:?} -> {other:?}"),
        }
    }

    #[test]
    fn ftrace_columns_with_a_comm_full_of_spaces_dashes_and_digits() {
        let p = event("   qemu vcpu-0 x-15045   [001] d..1.   511.173882: kvm_fpu: load");
        assert_eq!(p.comm, Some("qemu vcpu-0 x"));
        assert_eq!((p.pid, p.cpu, p.ts.value, p.ts.ns), (15045, 1, 511_173_882_000, true));
        assert_eq!((p.name, p.body), ("kvm_fpu", "load"));
        assert_eq!(p.format, InputFormat::FtraceText);
        let p = event("   qemu vcpu-0 x-15045   (  15045) [001]    511.173882: kvm_fpu: load");
        assert_eq!((p.comm, p.pid), (Some("qemu vcpu-0 x"), 15045));
        let p = event("           a-123-4567  [000] .....     1.000001: x: y");
        assert_eq!((p.comm, p.pid), (Some("a-123"), 4567));
        let p = event("          <idle>-0       [000] d..1.     1.5: x: y");
        assert_eq!((p.comm, p.pid, p.ts.value), (Some("<idle>"), 0, 1_500_000_000));
    }

    #[test]
    fn ftrace_raw_clocks_are_integers() {
        let p = event("      vm-counter-15238   [001] d..1.            3: kvm_fpu: load");
        assert_eq!((p.ts.value, p.ts.ns), (3, false));
        let p = event("      vm-x86-tsc-15192   [001] d..1. 1340799814571: kvm_fpu: load");
        assert_eq!((p.ts.value, p.ts.ns), (1_340_799_814_571, false));
    }

    #[test]
    fn a_wide_pid_falls_back_to_the_cpu_anchor() {
        let p = event("  CPU 0/KVM-12345678 [003]  99.000000001: kvm_exit: vcpu 0 reason HLT");
        assert_eq!((p.comm, p.pid, p.cpu), (Some("CPU 0/KVM"), 12_345_678, 3));
        assert_eq!(p.ts.value, 99_000_000_001);
    }

    #[test]
    fn trace_cmd_variants() {
        let p = event("   qemu vcpu-0 x-17796 [001]   665.848350: kvm_fpu:              load");
        assert_eq!((p.pid, p.body, p.format), (17796, "load", InputFormat::TraceCmdText));
        let p = event("   qemu vcpu-0 x-17796 [001]   665.844343: (+3)     kvm_fpu: load");
        assert_eq!((p.name, p.ts.value), ("kvm_fpu", 665_844_343_000));
        let p = event("   qemu vcpu-0 x-17796 [001]   665.844340136: kvm_fpu: load");
        assert_eq!(p.ts.value, 665_844_340_136);
        let p = event("qemu vcp-17796   1d..1.   665.844340136: kvm_fpu:              load");
        assert_eq!(
            (p.comm, p.pid, p.cpu, p.ts.value),
            (Some("qemu vcp"), 17796, 1, 665_844_340_136)
        );
    }

    #[test]
    fn perf_variants() {
        let p = event("   qemu vcpu-0 x 19254 [001]   759.455910:        kvm:kvm_fpu: load");
        assert_eq!((p.comm, p.pid, p.cpu), (Some("qemu vcpu-0 x"), 19254, 1));
        assert_eq!(
            (p.name, p.body, p.format),
            ("kvm:kvm_fpu", "load", InputFormat::PerfScriptText)
        );
        let p = event("   qemu vcpu-0 x 19254/19255 [001]   759.455910010: kvm:kvm_fpu: load");
        assert_eq!((p.pid, p.ts.value), (19255, 759_455_910_010));
        let p = event("  759.455910:        kvm:kvm_fpu: load");
        assert_eq!((p.comm, p.pid, p.has_cpu), (None, -1, false));
        let p = event(
            "   qemu vcpu-0 x 19254 [001]   759.456703:  kvm:kvm_fpu: load ffffffff8129c859 kvm_load_guest_fpu",
        );
        assert_eq!(p.body, "load");
        let p = event("   qemu vcpu-0 x      7 [001]   759.4: kvm:kvm_fpu: load");
        assert_eq!((p.comm, p.pid), (Some("qemu vcpu-0 x"), 7));
        let p = event("     CPU 0/KVM 1234567 [000]   759.4: kvm:kvm_fpu: load");
        assert_eq!((p.comm, p.pid), (Some("CPU 0/KVM"), 1_234_567));
    }

    #[test]
    fn markers_headers_and_refusals() {
        let mut l = Layout::default();
        assert_eq!(
            classify("CPU:1 [LOST 330608 EVENTS]", &mut l),
            LineKind::Lost { cpu: 1, count: Some(330_608) }
        );
        assert_eq!(
            classify("CPU:0 [12 EVENTS DROPPED]", &mut l),
            LineKind::Lost { cpu: 0, count: Some(12) }
        );
        assert_eq!(
            classify("CPU:3 [EVENTS DROPPED]", &mut l),
            LineKind::Lost { cpu: 3, count: None }
        );
        assert_eq!(
            classify("cpus=2", &mut l),
            LineKind::Header { cpus: Some(2), format: Some(InputFormat::TraceCmdText) }
        );
        assert_eq!(
            classify("# entries-in-buffer/entries-written: 62/62   #P:2", &mut l),
            LineKind::Header { cpus: Some(2), format: None }
        );
        // Event text without its columns: an event with no time, CPU or thread.
        let LineKind::Event(p) = classify("kvm_fpu: load", &mut l) else { panic!() };
        assert_eq!((p.name, p.ts.value, p.pid), ("kvm_fpu", vmxray_events::Event::TS_UNKNOWN, -1));
        assert_eq!(
            classify("qemu vcp-15045     1d..1. 165901us : kvm_fpu: load", &mut l),
            LineKind::Bad(TextError::LatencyFormat)
        );
        assert_eq!(
            classify("00003ac5 00000001 00000077045671ed type: 82", &mut l),
            LineKind::RawType { pid: 0x3ac5, cpu: 1, ts: 0x77045671ed, type_id: 82 }
        );
        assert_eq!(
            classify("15045 1 511173882349 type: 82", &mut l),
            LineKind::RawType { pid: 15045, cpu: 1, ts: 511_173_882_349, type_id: 82 }
        );
        assert_eq!(classify("hello world", &mut l), LineKind::NonTrace("hello world"));
        assert!(matches!(
            classify("  a-10 [000] garbage 5.000001: x", &mut l),
            LineKind::Bad(TextError::UnrecognizedLine { .. })
        ));
    }

    #[test]
    fn the_fast_space_skipping_agrees_with_std() {
        let pads = ["", " ", "  \t ", "         ", "\x0b ", " \u{a0}", "\u{3000}x", " \r\n\x0c"];
        for pad in pads {
            for rest in ["", "x", "qemu vcpu-0 x", " y", "\u{e9}t\u{e9}"] {
                let s = format!("{pad}{rest}");
                assert_eq!(trim_start(&s), s.trim_start(), "{s:?}");
                let spaces = s.bytes().take_while(|&c| c == b' ').count();
                assert_eq!(leading_spaces(s.as_bytes()), spaces, "{s:?}");
            }
        }
        let long = format!("{}ab", " ".repeat(37));
        assert_eq!(leading_spaces(long.as_bytes()), 37);
    }

    #[test]
    fn timestamps_and_names_at_their_limits() {
        let ts = |s| timestamp(s).map(|(t, rest)| (t.value, t.ns, rest));
        assert_eq!(ts("1.5: x"), Some((1_500_000_000, true, " x")));
        assert_eq!(ts("12.123456789: x"), Some((12_123_456_789, true, " x")));
        assert_eq!(ts("12.1234567890: x"), None);
        assert_eq!(ts("12.: x"), None);
        assert_eq!(ts("77: x"), Some((77, false, " x")));
        assert_eq!(ts("18446744074.0: x"), None);
        let nb = |s, sys| name_and_body(s, sys);
        assert_eq!(nb(" kvm_fpu:   load ", false), Some(("kvm_fpu", "load")));
        assert_eq!(nb("kvm:kvm_fpu: load", true), Some(("kvm:kvm_fpu", "load")));
        assert_eq!(nb("kvm:kvm_fpu: load", false), None);
        assert_eq!(nb("kvm_fpu: load", true), None);
        assert_eq!(nb("kvm_fpu:", false), Some(("kvm_fpu", "")));
        assert_eq!(nb("kvm-fpu: load", false), None);
        assert_eq!(nb(": load", false), None);
        assert_eq!(nb("kvm_fpu load", false), None);
        assert_eq!(nb("(+12) kvm_fpu: load", false), Some(("kvm_fpu", "load")));
    }

    #[test]
    fn the_hint_takes_part_only_when_a_layout_decides() {
        for hint in Layout::ALL {
            let mut l = hint;
            assert!(!classify_hinted("cpus=2", &mut l).1);
            assert!(!classify_hinted("CPU:1 [LOST 3 EVENTS]", &mut l).1);
            assert!(!classify_hinted("hello world", &mut l).1);
            assert!(!classify_hinted("15045 1 511173882349 type: 82", &mut l).1);
            assert_eq!(l, hint);
            let (kind, hinted) = classify_hinted("a-1 [000] 1.000001: kvm_fpu: load", &mut l);
            assert!(hinted && matches!(kind, LineKind::Event(_)));
            assert_eq!(l, Layout::Dash);
        }
    }
}
