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

use crate::reader::InputFormat;

use super::error::TextError;

/// Where an event line came from and what it says before the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix<'a> {
    pub comm: Option<&'a str>,
    /// The thread id; `-1` when the layout does not print one.
    pub pid: i32,
    /// `0` when the layout does not print the CPU.
    pub cpu: u32,
    pub ts: Timestamp,
    /// The event name as printed: `kvm_exit` (ftrace, trace-cmd) or `kvm:kvm_exit` (perf).
    pub name: &'a str,
    pub body: &'a str,
    pub format: InputFormat,
    pub has_cpu: bool,
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
    Bad(TextError),
}

/// Which layout matched last, tried first on the next line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Layout {
    #[default]
    Dash,
    Latency,
    Perf,
}

pub(crate) const EXPECTED_LINE: &str = "an event line (`comm-pid [cpu] secs.usecs: event: ...`, \
     `comm pid [cpu] secs.usecs: sys:event: ...`), a lost-events marker (`CPU:1 [LOST 5 EVENTS]`) \
     or a header line";

/// Classifies one line (already without its newline).
pub(crate) fn classify<'a>(line: &'a str, last: &mut Layout) -> LineKind<'a> {
    let b = line.as_bytes();
    let first = b.iter().position(|c| !c.is_ascii_whitespace());
    let Some(first) = first else {
        return LineKind::Header { cpus: None, format: None };
    };
    match b[first] {
        b'#' => return header_comment(&line[first..]),
        b'C' if line.starts_with("CPU:") => {
            return match lost_marker(line) {
                Some(kind) => kind,
                None => bad(line),
            };
        }
        b'C' if line.starts_with("CPU ") && line.ends_with(" is empty") => {
            return LineKind::Header { cpus: None, format: Some(InputFormat::TraceCmdText) };
        }
        b'c' if line.starts_with("cpus=") => {
            return LineKind::Header {
                cpus: line[5..].trim().parse().ok(),
                format: Some(InputFormat::TraceCmdText),
            };
        }
        b'v' if line.starts_with("version = ") => {
            return LineKind::Header { cpus: None, format: Some(InputFormat::TraceCmdText) };
        }
        _ => {}
    }
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
                return kind;
            }
            Some(Err(e)) => return LineKind::Bad(e),
            None => {}
        }
    }
    if let Some(kind) = raw_type(line) {
        return kind;
    }
    if looks_like_nocontext(line) {
        return LineKind::Bad(TextError::NoContext);
    }
    bad(line)
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
fn split_digits(s: &str) -> Option<(u64, &str)> {
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

fn skip_spaces(s: &str) -> &str {
    let n = s.bytes().take_while(|&c| c == b' ').count();
    &s[n..]
}

/// `[NNN]` at the start of `s`.
fn cpu_field(s: &str) -> Option<(u32, &str)> {
    let rest = s.strip_prefix('[')?;
    let (cpu, rest) = split_digits(rest)?;
    let rest = rest.strip_prefix(']')?;
    Some((u32::try_from(cpu).ok()?, rest))
}

/// `secs.frac:` or `count:` at the start of `s`; returns the stamp and what follows the colon.
fn timestamp(s: &str) -> Option<(Timestamp, &str)> {
    let (secs, rest) = split_digits(s)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let end = frac.bytes().position(|c| !c.is_ascii_digit()).unwrap_or(frac.len());
        if end == 0 || end > 9 {
            return None;
        }
        let digits: u64 = frac[..end].parse().ok()?;
        let scale = 10u64.pow(9 - u32::try_from(end).ok()?);
        let value = secs.checked_mul(1_000_000_000)?.checked_add(digits * scale)?;
        let rest = frac[end..].strip_prefix(':')?;
        return Some((Timestamp { value, ns: true }, rest));
    }
    let rest = rest.strip_prefix(':')?;
    Some((Timestamp { value: secs, ns: false }, rest))
}

/// After the timestamp's colon: optional `(+N)` (trace-cmd --ts-diff), the event name, its
/// colon, and the body.
fn name_and_body(s: &str, with_system: bool) -> Option<(&str, &str)> {
    let mut s = skip_spaces(s);
    if s.starts_with("(+") {
        let close = s.find(')')?;
        s = skip_spaces(&s[close + 1..]);
    }
    // The name ends at the first `: ` (perf names hold a `:` of their own, not followed by a
    // space), or at a `:` ending the line.
    let b = s.as_bytes();
    let mut at = None;
    for colon in memchr::memchr_iter(b':', b) {
        if b.get(colon + 1).is_none_or(|&c| c == b' ') {
            at = Some(colon);
            break;
        }
    }
    let at = at?;
    let name = &s[..at];
    let body = s.get(at + 2..).unwrap_or("");
    let valid = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || (with_system && c == b':');
    if name.is_empty() || !name.bytes().all(valid) {
        return None;
    }
    if with_system && !name.contains(':') {
        return None;
    }
    Some((name, body.trim_ascii()))
}

/// ftrace `trace`/`trace_pipe` and `trace-cmd report` (default, -t, --ts-diff).
fn dash_layout(line: &str) -> Option<Result<LineKind<'_>, TextError>> {
    let b = line.as_bytes();
    let (comm, pid_at) = if b.len() > 17 && b[16] == b'-' && b[17].is_ascii_digit() {
        (line[..16].trim_start(), 17)
    } else {
        dash_fallback(line)?
    };
    let (pid, rest) = split_digits(&line[pid_at..])?;
    let pid_width = line.len() - pid_at - rest.len();
    let after_pid = rest;
    let mut rest = skip_spaces(rest);
    let mut tgid_or_flags = false;
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')')?;
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
        cpu,
        ts,
        name,
        body,
        format,
        has_cpu: true,
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
    Some((head[..pid_at - 1].trim_start(), pid_at))
}

/// The byte offset of the first ` [NNN]` (space, bracket, digits, bracket).
fn find_cpu_field(line: &str) -> Option<usize> {
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
    let comm = line[..8].trim_start();
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
        cpu: u32::try_from(cpu).ok()?,
        ts,
        name,
        body,
        format: InputFormat::TraceCmdText,
        has_cpu: true,
    })))
}

/// `perf script` text: `comm tid [cpu] time: sys:event: body`, with `pid/tid`, without comm and
/// tid, or without the CPU.
fn perf_layout(line: &str) -> Option<Result<LineKind<'_>, TextError>> {
    let b = line.as_bytes();
    let mut comm = None;
    let mut pid = -1;
    let mut rest = line;
    // Fixed width: comm in columns 0..16, a space, the right-aligned tid.
    let fixed = (b.len() > 18 && b[16] == b' ')
        .then(|| perf_tid(skip_spaces(&line[17..])))
        .flatten()
        .map(|(tid, after)| (tid, skip_spaces(after)))
        .filter(|(_, after)| after.starts_with('[') || timestamp(after).is_some());
    if let Some((tid, after)) = fixed {
        comm = Some(line[..16].trim_start());
        pid = tid;
        rest = after;
    } else if let Some(cpu_at) = find_cpu_field(line) {
        // Fallback: the tid is the last token before the CPU field.
        let head = line[..cpu_at].trim_end();
        let tok_at = head.rfind(' ').map_or(0, |at| at + 1);
        if let Some((tid, "")) = perf_tid(&head[tok_at..]) {
            let name = head[..tok_at].trim();
            comm = (!name.is_empty()).then_some(name);
            pid = tid;
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
        cpu,
        ts,
        name,
        body: strip_ip_sym(body),
        format: InputFormat::PerfScriptText,
        has_cpu,
    })))
}

/// A perf `tid` or `pid/tid` token; returns the tid.
fn perf_tid(s: &str) -> Option<(i32, &str)> {
    let (first, rest) = split_digits(s)?;
    let (tid, rest) = match rest.strip_prefix('/') {
        Some(r) => split_digits(r)?,
        None => (first, rest),
    };
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((i32::try_from(tid).ok()?, rest))
}

/// `perf script -F ...,ip,sym` appends ` <16 hex digits> <symbol>` (and ` (<dso>)` with dso)
/// after the body; drop it.
fn strip_ip_sym(body: &str) -> &str {
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

/// `event_name: body` with nothing before it (ftrace with context-info off).
fn looks_like_nocontext(line: &str) -> bool {
    let Some(at) = line.find(':') else { return false };
    let name = &line[..at];
    !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && name.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
        && line[at + 1..].chars().next().is_none_or(|c| c == ' ')
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
        assert_eq!(classify("kvm_fpu: load", &mut l), LineKind::Bad(TextError::NoContext));
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
        assert!(matches!(
            classify("hello world", &mut l),
            LineKind::Bad(TextError::UnrecognizedLine { .. })
        ));
    }
}
