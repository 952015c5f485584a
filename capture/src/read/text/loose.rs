//! Line layouts beyond the tools' full column sets, as people paste trace lines into mails,
//! bug reports and commit messages, and the line between trace text and prose.
//!
//! Tried only after the column layouts of `prefix.rs` refused a line, so a full-format trace
//! never pays for them:
//!
//! ```text
//! QEMU trace event        PID@SECS.USECS:name args          15268@1647341556.928341:kvm_run_exit cpu_index 0, reason 8
//! perf, comm and time     comm SECS.USECS: sys:name: body   preempt_test  20677.199579:      kvm:kvm_exit: reason ...
//! timestamp only          SECS.USECS: name: body             220.696238: kvm_apic_ipi: dst b0 vec 176 ...
//! event text only         name: body                        kvm_nested_vmrun:     rip: 0x... vmcb: 0x...
//! ```
//!
//! Event text without its columns (ftrace's `context-info` off, or columns cut away by the
//! poster) has no time, CPU or thread: its timestamp is [`vmxray_events::Event::TS_UNKNOWN`],
//! its CPU 0 and its pid −1, and its place in the stream is its place in the input. Such a
//! line is read only when its name is a plausible tracepoint ([`plausible_name`]), so that
//! `source: ...` or `Note: ...` stay prose.
//!
//! A line no layout reads is an error only when it [`looks_like_trace`]: anything else
//! (prose, quoted mail, shell prompts, a debugger's backtrace) is skipped and counted in every
//! mode.

use vmxray_events::{Event, KnownEvent};

use crate::read::InputFormat;

use super::prefix::{Prefix, Timestamp, name_and_body, skip_spaces, split_digits, timestamp};

/// The longest comm perf prints (the kernel's `TASK_COMM_LEN` is 16 with the NUL).
const MAX_COMM: usize = 16;

/// The layout of a line the column layouts refused, if it has one of the forms above.
pub(crate) fn classify(line: &str) -> Option<Prefix<'_>> {
    let t = line.trim_start();
    let first = *t.as_bytes().first()?;
    if first.is_ascii_digit() {
        return qemu(t).or_else(|| time_only(t));
    }
    comm_time(t).or_else(|| stripped(t))
}

/// `PID@SECS.USECS:name args` (QEMU's `log` trace backend).
fn qemu(t: &str) -> Option<Prefix<'_>> {
    let (pid, rest) = split_digits(t)?;
    let (ts, rest) = timestamp(rest.strip_prefix('@')?)?;
    if !ts.ns {
        return None;
    }
    let end = rest.bytes().position(|c| !(c.is_ascii_alphanumeric() || c == b'_'))?;
    let (name, body) = rest.split_at(end);
    if name.is_empty() || !(body.is_empty() || body.starts_with(' ')) {
        return None;
    }
    let pid = i32::try_from(pid).ok()?;
    Some(Prefix {
        comm: None,
        pid,
        tgid: Some(pid),
        cpu: 0,
        ts,
        name,
        body: body.trim(),
        format: InputFormat::FtraceText,
        has_cpu: false,
        system: Some("qemu"),
        loose: true,
    })
}

/// `SECS.USECS: name: body` (the other columns cut away; perf's minimal layout, with a
/// system, is read by `prefix.rs`).
fn time_only(t: &str) -> Option<Prefix<'_>> {
    let (ts, rest) = timestamp(t)?;
    if !ts.ns || !rest.starts_with(' ') {
        return None;
    }
    let (name, body) = name_and_body(rest, false)?;
    Some(Prefix {
        comm: None,
        pid: -1,
        tgid: None,
        cpu: 0,
        ts,
        name,
        body,
        format: InputFormat::FtraceText,
        has_cpu: false,
        system: None,
        loose: false,
    })
}

/// `comm SECS.USECS: sys:name: body` (`perf script -F comm,time,event,trace`).
fn comm_time(t: &str) -> Option<Prefix<'_>> {
    let b = t.as_bytes();
    // The stamp is the first blank-separated word that starts with a digit and reads as one.
    let mut at = 0;
    while at < b.len() && at <= MAX_COMM + 1 {
        let sp = at + memchr::memchr(b' ', &b[at..])?;
        let after = skip_spaces(&t[sp..]);
        if after.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            let (ts, rest) = timestamp(after)?;
            let comm = t[..sp].trim();
            if !ts.ns || comm.is_empty() || comm.len() > MAX_COMM || comm.contains('[') {
                return None;
            }
            let (name, body) = name_and_body(rest, true)?;
            return Some(Prefix {
                comm: Some(comm),
                pid: -1,
                tgid: None,
                cpu: 0,
                ts,
                name,
                body: super::prefix::strip_ip_sym(body),
                format: InputFormat::PerfScriptText,
                has_cpu: false,
                system: None,
                loose: false,
            });
        }
        at = t.len() - after.len();
    }
    None
}

/// `name: body` with a plausible tracepoint name and nothing before it.
fn stripped(t: &str) -> Option<Prefix<'_>> {
    let (name, body) = stripped_name(t)?;
    Some(Prefix {
        comm: None,
        pid: -1,
        tgid: None,
        cpu: 0,
        ts: Timestamp { value: Event::TS_UNKNOWN, ns: true },
        name,
        body,
        format: InputFormat::FtraceText,
        has_cpu: false,
        system: None,
        loose: true,
    })
}

/// The name and body of `name: body` when `name` is a plausible tracepoint.
pub(crate) fn stripped_name(t: &str) -> Option<(&str, &str)> {
    let (name, body) = name_and_body(t, false).or_else(|| name_and_body(t, true))?;
    plausible_name(name).then_some((name, body))
}

/// A name that is a tracepoint's, not a word of prose followed by a colon: known to the
/// vocabulary, `system:name` (perf), KVM's (`kvm*`), a print (`bprint`, `bputs`, `print`,
/// `tracing_mark_write`) or a made-up print name (`<hack>`).
pub(crate) fn plausible_name(name: &str) -> bool {
    if let Some((system, event)) = name.split_once(':') {
        return is_ident(system) && is_ident(event);
    }
    if name.starts_with('<') {
        return angle_name(name).is_some();
    }
    is_ident(name)
        && (name.starts_with("kvm")
            || matches!(name, "bprint" | "bputs" | "print" | "tracing_mark_write")
            || KnownEvent::lookup("", name).is_some())
}

fn is_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// `<name>` (a made-up print function name), not ftrace's unknown-comm `<...>`.
fn angle_name(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('<')?.strip_suffix('>')?;
    let ok = !inner.is_empty()
        && inner.len() <= 32
        && inner.bytes().any(|c| c.is_ascii_alphanumeric())
        && inner.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b' '));
    ok.then_some(s)
}

/// `<name>: body`, for `prefix.rs`'s event-name reader.
pub(crate) fn angle_name_and_body(s: &str) -> Option<(&str, &str)> {
    let close = s.find('>')?;
    let name = angle_name(&s[..=close])?;
    let rest = &s[close + 1..];
    let body = rest.strip_prefix(':')?;
    if !(body.is_empty() || body.starts_with(' ')) {
        return None;
    }
    Some((name, body.trim_ascii()))
}

/// The body without libtraceevent's `CAN'T FIND FIELD "rip"` / `<CANT FIND FIELD exit_code>`
/// pieces (`trace-cmd report` with a kvm plugin older than the kernel's event); `None` when
/// there is none.
pub(crate) fn without_cant_find_field(body: &str) -> Option<String> {
    if !body.contains("FIND FIELD") {
        return None;
    }
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    loop {
        // `CAN'T FIND FIELD "name"` (18 bytes before the name) or `<CANT FIND FIELD name>`.
        let quoted = rest
            .find("CAN'T FIND FIELD \"")
            .map(|q| (q, rest[q + 18..].find('"').map(|c| q + 18 + c + 1)));
        let angled =
            rest.find("<CANT FIND FIELD ").map(|a| (a, rest[a..].find('>').map(|c| a + c + 1)));
        let next = match (quoted, angled) {
            (Some(q), Some(a)) => {
                if q.0 < a.0 {
                    q
                } else {
                    a
                }
            }
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => break,
        };
        let (at, Some(end)) = next else { break };
        out.push_str(&rest[..at]);
        out.push(' ');
        rest = &rest[end..];
    }
    out.push_str(rest);
    let clean = out.split_ascii_whitespace().collect::<Vec<_>>().join(" ");
    (clean != body).then_some(clean)
}

/// Whether a line no layout reads looks like trace text (an error in strict mode) rather
/// than prose (skipped): it has a CPU column `[NNN]` and a timestamp `SECS.USECS:`, or starts
/// with a timestamp, or reads `name: ...` with a plausible tracepoint name.
pub(crate) fn looks_like_trace(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with(|c: char| c.is_ascii_digit()) && timestamp(t).is_some_and(|(ts, _)| ts.ns) {
        return true;
    }
    if stripped_name(t).is_some() {
        return true;
    }
    let b = t.as_bytes();
    let cpu_column = memchr::memchr_iter(b'[', b).any(|at| {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        digits >= 3 && b.get(at + 1 + digits) == Some(&b']')
    });
    cpu_column && has_stamp(t)
}

/// A `SECS.USECS:` word somewhere in the line.
fn has_stamp(t: &str) -> bool {
    t.split_ascii_whitespace().any(|w| {
        w.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && timestamp(w).is_some_and(|(ts, rest)| ts.ns && rest.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_trace_events() {
        let p = classify("    15268@1647341556.928341:kvm_run_exit cpu_index 0, reason 8").unwrap();
        assert_eq!((p.pid, p.tgid, p.system), (15268, Some(15268), Some("qemu")));
        assert_eq!((p.name, p.body), ("kvm_run_exit", "cpu_index 0, reason 8"));
        assert_eq!(p.ts.value, 1_647_341_556_928_341_000);
    }

    #[test]
    fn perf_with_comm_and_time_only() {
        // vmx-preemption-timer-debug-tracepoint-perf.txt
        let p = classify("preempt_test  20677.199579:      kvm:kvm_exit: reason PREEMPTION_TIMER rip 0x40274d info 0 0 intr 0").unwrap();
        assert_eq!((p.comm, p.pid, p.name), (Some("preempt_test"), -1, "kvm:kvm_exit"));
        assert_eq!(p.ts.value, 20_677_199_579_000);
        assert!(p.body.starts_with("reason PREEMPTION_TIMER"));
    }

    #[test]
    fn timestamp_only() {
        // svm-idle-hlt-two-runs-time-only.txt
        let p =
            classify(" 220.696238: kvm_apic_ipi: dst b0 vec 176 (Fixed|physical|assert|edge|self)")
                .unwrap();
        assert_eq!((p.comm, p.pid, p.has_cpu), (None, -1, false));
        assert_eq!((p.name, p.ts.value), ("kvm_apic_ipi", 220_696_238_000));
    }

    #[test]
    fn event_text_without_columns_needs_a_tracepoint_name() {
        // nsvm-rsm-l1-state-corruption.txt
        let p =
            classify("  kvm_exit:             reason EXIT_RSM rip 0x7ffbb280 info 0 0").unwrap();
        assert_eq!((p.name, p.ts.value, p.pid), ("kvm_exit", Event::TS_UNKNOWN, -1));
        assert!(classify("kvm:kvm_fpu: load").is_some());
        assert!(classify("kvm_nested_intercepts: cr_read: 0000 cr_write: 0010").is_some());
        for prose in [
            "source: kernel bugzilla via kvm mailing list, 2021-09-15",
            "subject: [Bug 214423] New: Windows guests",
            "Note: return to L2 succeeded",
            "int_ctl: 0x00000000 event_inj: 0x80000081",
            "CR0: actual=0x0000000080010031, shadow=0x0000000080010031,",
            "vmx_dump_dtsel: GDTR:                           limit=0x0000ffff,",
        ] {
            assert!(classify(prose).is_none(), "{prose}");
            assert!(!looks_like_trace(prose), "{prose}");
        }
    }

    #[test]
    fn made_up_print_names() {
        assert_eq!(
            angle_name_and_body("<hack>: Set DRs, DR6 = 0x1"),
            Some(("<hack>", "Set DRs, DR6 = 0x1"))
        );
        assert_eq!(angle_name_and_body("<...>: x"), None);
        assert!(plausible_name("<hack>"));
    }

    #[test]
    fn cant_find_field_pieces_are_dropped() {
        let body =
            "CAN'T FIND FIELD \"rip\"<CANT FIND FIELD exit_code>vcpu 0 reason npf rip 0x400433";
        assert_eq!(
            without_cant_find_field(body).as_deref(),
            Some("vcpu 0 reason npf rip 0x400433")
        );
        assert_eq!(without_cant_find_field("vcpu 0 reason npf"), None);
        assert_eq!(without_cant_find_field("CAN'T FIND FIELD \"rip"), None);
    }

    #[test]
    fn what_looks_like_trace_text() {
        assert!(looks_like_trace("  a-10 [000] garbage 5.000001: x"));
        assert!(looks_like_trace(" 220.696238: 12"));
        assert!(looks_like_trace("kvm_exit: gibberish"));
        for prose in [
            "this is not a trace line",
            "```",
            " ...",
            "root@eve-ng62:~# trace-cmd report",
            "[root@shyi-centos8-1 rustvmm]# perf script",
            "#1  0x0000000000000000 in ?? ()",
            "Footnote [1] says \"An execution of GETSEC causes an invalid-opcode",
        ] {
            assert!(!looks_like_trace(prose), "{prose}");
        }
    }
}
