//! The host's side of an exit: scheduler, interrupt, softirq and timer tracepoints, typed for
//! the analyses that need them.
//!
//! These tracepoints are not part of KVM's nested-VMX vocabulary that the model replays, so
//! they are not [`KnownEvent`](crate::KnownEvent)s with their own text renderings: a reader
//! hands them over as an untyped event, and [`EventKind::untyped`](crate::EventKind::untyped)
//! recognizes them here, once, for every reader — like vmxray's own records. The event keeps
//! its source ([`ContextHit::source`]) so that it renders and converts exactly as it was read;
//! the analyses match on [`ContextEvent`] and never on names or field strings.
//!
//! | tracepoint | [`ContextEvent`] |
//! |---|---|
//! | `sched:sched_switch` | [`ContextEvent::SchedSwitch`] |
//! | `sched:sched_wakeup`, `sched_wakeup_new`, `sched_waking` | [`ContextEvent::SchedWakeup`] |
//! | `sched:sched_stat_runtime`, `_wait`, `_sleep`, `_iowait`, `_blocked` | [`ContextEvent::SchedStat`] |
//! | `irq:irq_handler_entry` / `irq_handler_exit` | [`ContextEvent::IrqEntry`] / [`ContextEvent::IrqExit`] |
//! | `irq:softirq_entry` / `softirq_exit` | [`ContextEvent::SoftirqEntry`] / [`ContextEvent::SoftirqExit`] |
//! | `timer:hrtimer_expire_entry` / `hrtimer_expire_exit` | [`ContextEvent::HrtimerEntry`] / [`ContextEvent::HrtimerExit`] |
//! | `irq_vectors:<name>_entry` / `<name>_exit` (`local_timer`, `reschedule`, `call_function`, ...) | [`ContextEvent::VectorEntry`] / [`ContextEvent::VectorExit`] |
//!
//! A tracepoint whose fields lack what its row needs (a text input that printed no fields)
//! stays an [`EventKind::Other`](crate::EventKind::Other).

use std::fmt;

use serde::Serialize;

use crate::event::{Comm, OtherEvent};
use crate::fields::FieldLookup;

/// A thread as the scheduler's tracepoints name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Task {
    /// Its pid (kernel tid); 0 is the idle task.
    pub pid: i32,
    /// Its comm.
    pub comm: Comm,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid {}", self.comm, self.pid)
    }
}

/// `prev_state` of a `sched_switch`: the kernel's task report bits (`TASK_REPORT`), as a
/// number or as the letters the text rendering printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PrevState(pub u64);

impl PrevState {
    /// The thread left the CPU still runnable (`R` or `R+`: preempted or yielded), rather
    /// than blocked (`S`, `D`, ...). The state bits are the low byte since 4.14
    /// (`TASK_REPORT`: S=1, D=2, T=4, t=8, X=0x10, Z=0x20, P=0x40, I=0x80) and in every
    /// earlier layout; the preemption marker (`TASK_REPORT_MAX`, printed `+`) lies above them.
    pub fn runnable(self) -> bool {
        self.0 & 0xff == 0
    }

    /// The state the text rendering printed (`R`, `R+`, `S`, `D|K`, ...): runnable states
    /// read as 0, anything else as its first letter's report bit.
    pub fn from_letters(text: &str) -> Self {
        let bit = match text.trim().chars().next() {
            Some('R') | None => 0,
            Some('S') => 0x1,
            Some('D') => 0x2,
            Some('T') => 0x4,
            Some('t') => 0x8,
            Some('X') => 0x10,
            Some('Z') => 0x20,
            Some('P') => 0x40,
            Some('I') => 0x80,
            Some(_) => 0x1,
        };
        Self(bit)
    }
}

/// A softirq vector (`irq:softirq_*` `vec`), an open code: a value the table does not name
/// prints as `UNKNOWN(n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SoftirqVector(pub u32);

impl SoftirqVector {
    /// The kernel's names, in vector order (`softirq_to_name`, kernel/softirq.c).
    const NAMES: [&'static str; 10] = [
        "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER",
        "RCU",
    ];

    /// The vector's name, when the table knows it.
    pub fn name(self) -> Option<&'static str> {
        usize::try_from(self.0).ok().and_then(|i| Self::NAMES.get(i)).copied()
    }
}

impl fmt::Display for SoftirqVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "UNKNOWN({})", self.0),
        }
    }
}

/// Which `sched_stat_*` tracepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedStatKind {
    /// `sched_stat_runtime`: CPU time the task just ran (`runtime`).
    Runtime,
    /// `sched_stat_wait`: time it waited on a runqueue (`delay`).
    Wait,
    /// `sched_stat_sleep`: time it slept (`delay`).
    Sleep,
    /// `sched_stat_iowait`: time it waited for I/O (`delay`).
    Iowait,
    /// `sched_stat_blocked`: time it was blocked (`delay`).
    Blocked,
}

/// A host tracepoint, typed ([`ContextHit`]; the table in the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "context", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ContextEvent {
    /// `sched_switch`: `prev` leaves the CPU in `prev_state`, `next` runs.
    SchedSwitch { prev: Task, prev_state: PrevState, next: Task },
    /// `sched_wakeup` (`new`: `sched_wakeup_new`; `waking`: `sched_waking`): `task` becomes
    /// runnable.
    SchedWakeup { task: Task, target_cpu: Option<u32>, new: bool, waking: bool },
    /// `sched_stat_*`: `delay` ns (or `runtime` for [`SchedStatKind::Runtime`]).
    SchedStat { kind: SchedStatKind, task: Task, delay: u64 },
    /// `irq_handler_entry`: the handler of `irq` (named `name`) starts.
    IrqEntry { irq: u32, name: Box<str> },
    /// `irq_handler_exit`: it returned `ret`.
    IrqExit { irq: u32, ret: u32 },
    /// `softirq_entry`.
    SoftirqEntry { vec: SoftirqVector },
    /// `softirq_exit`.
    SoftirqExit { vec: SoftirqVector },
    /// `hrtimer_expire_entry`: the callback `function` of timer `hrtimer` runs.
    HrtimerEntry { hrtimer: u64, function: u64 },
    /// `hrtimer_expire_exit`.
    HrtimerExit { hrtimer: u64 },
    /// `irq_vectors:<name>_entry`: a system vector's handler (`local_timer`, `reschedule`,
    /// `call_function`, ...) starts.
    VectorEntry { name: Box<str>, vector: u32 },
    /// `irq_vectors:<name>_exit`.
    VectorExit { name: Box<str>, vector: u32 },
}

/// A typed host tracepoint and the event it was read from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContextHit {
    /// What it says.
    pub event: ContextEvent,
    /// The event with all of its fields, as read.
    pub source: OtherEvent,
}

impl ContextEvent {
    /// The systems of every tracepoint [`ContextEvent::decode`] types: an input whose event
    /// formats are of none of them holds no host event.
    pub const SYSTEMS: [&'static str; 4] = ["sched", "irq", "timer", "irq_vectors"];

    /// Types one of the table's tracepoints from its fields; `None` for any other event, or
    /// when a field its row needs is missing.
    pub fn decode(system: &str, name: &str, f: &impl FieldLookup) -> Option<Self> {
        let sys = |want: &str| system.is_empty() || system == want;
        let task = |comm: &str, pid: &str| {
            Some(Task { pid: pid_of(f, pid)?, comm: Comm::from(text_of(f, comm)?.as_str()) })
        };
        Some(match name {
            "sched_switch" if sys("sched") && f.uint("prev_pid").is_none() => {
                // trace-cmd's sched plugin: `prev:pid [prio] STATE ==> next:pid [prio]`.
                return switch_from_plugin_text(f.string("text")?);
            }
            "sched_switch" if sys("sched") => Self::SchedSwitch {
                prev: task("prev_comm", "prev_pid")?,
                prev_state: match f.uint("prev_state") {
                    Some(raw) => PrevState(raw),
                    None => PrevState::from_letters(f.string("prev_state")?),
                },
                next: task("next_comm", "next_pid")?,
            },
            "sched_wakeup" | "sched_wakeup_new" | "sched_waking" if sys("sched") => {
                Self::SchedWakeup {
                    task: task("comm", "pid")?,
                    target_cpu: f.u32("target_cpu"),
                    new: name == "sched_wakeup_new",
                    waking: name == "sched_waking",
                }
            }
            "sched_stat_runtime" | "sched_stat_wait" | "sched_stat_sleep" | "sched_stat_iowait"
            | "sched_stat_blocked"
                if sys("sched") =>
            {
                let (kind, field) = match name {
                    "sched_stat_runtime" => (SchedStatKind::Runtime, "runtime"),
                    "sched_stat_wait" => (SchedStatKind::Wait, "delay"),
                    "sched_stat_sleep" => (SchedStatKind::Sleep, "delay"),
                    "sched_stat_iowait" => (SchedStatKind::Iowait, "delay"),
                    _ => (SchedStatKind::Blocked, "delay"),
                };
                Self::SchedStat { kind, task: task("comm", "pid")?, delay: f.uint(field)? }
            }
            "irq_handler_entry" if sys("irq") => {
                Self::IrqEntry { irq: f.u32("irq")?, name: text_of(f, "name")?.into() }
            }
            "irq_handler_exit" if sys("irq") => {
                Self::IrqExit { irq: f.u32("irq")?, ret: f.u32("ret").unwrap_or(0) }
            }
            "softirq_entry" if sys("irq") => Self::SoftirqEntry { vec: softirq_vec(f)? },
            "softirq_exit" if sys("irq") => Self::SoftirqExit { vec: softirq_vec(f)? },
            "hrtimer_expire_entry" if sys("timer") => Self::HrtimerEntry {
                hrtimer: f.uint("hrtimer")?,
                function: f.uint("function").unwrap_or(0),
            },
            "hrtimer_expire_exit" if sys("timer") => {
                Self::HrtimerExit { hrtimer: f.uint("hrtimer")? }
            }
            _ if system == "irq_vectors" || (system.is_empty() && is_vector_event(name)) => {
                // Every system vector has the same pair of events with one `vector` field.
                let vector = f.u32("vector")?;
                if let Some(stem) = name.strip_suffix("_entry") {
                    Self::VectorEntry { name: stem.into(), vector }
                } else if let Some(stem) = name.strip_suffix("_exit") {
                    Self::VectorExit { name: stem.into(), vector }
                } else {
                    return None;
                }
            }
            _ => return None,
        })
    }

    /// The thread a scheduler event is about (`sched_wakeup`'s, `sched_stat_*`'s task;
    /// `sched_switch`'s `next`), for attribution by pid.
    pub fn task(&self) -> Option<&Task> {
        match self {
            Self::SchedSwitch { next, .. } => Some(next),
            Self::SchedWakeup { task, .. } | Self::SchedStat { task, .. } => Some(task),
            Self::IrqEntry { .. }
            | Self::IrqExit { .. }
            | Self::SoftirqEntry { .. }
            | Self::SoftirqExit { .. }
            | Self::HrtimerEntry { .. }
            | Self::HrtimerExit { .. }
            | Self::VectorEntry { .. }
            | Self::VectorExit { .. } => None,
        }
    }
}

/// An `irq_vectors` event by name alone (text inputs do not print the system): x86's system
/// vectors (arch/x86/include/asm/trace/irq_vectors.h).
fn is_vector_event(name: &str) -> bool {
    const VECTORS: [&str; 12] = [
        "local_timer",
        "reschedule",
        "call_function",
        "call_function_single",
        "irq_work",
        "error_apic",
        "spurious_apic",
        "thermal_apic",
        "threshold_apic",
        "deferred_error_apic",
        "x86_platform_ipi",
        "reboot",
    ];
    let stem = name.strip_suffix("_entry").or_else(|| name.strip_suffix("_exit"));
    stem.is_some_and(|stem| VECTORS.contains(&stem))
}

/// `vec`, a number, or the text rendering's `1 [action=TIMER]`.
fn softirq_vec(f: &impl FieldLookup) -> Option<SoftirqVector> {
    if let Some(v) = f.u32("vec") {
        return Some(SoftirqVector(v));
    }
    let text = f.string("vec")?;
    let digits = text.trim_start().split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok().map(SoftirqVector)
}

/// A `sched_switch` as trace-cmd's sched plugin prints it: `comm:pid [prio] STATE ==>
/// comm:pid [prio]` (a comm may hold `:` and spaces: the pid is after the last `:` before
/// ` [`).
fn switch_from_plugin_text(text: &str) -> Option<ContextEvent> {
    fn side(text: &str) -> Option<(Task, &str)> {
        let (who, rest) = text.trim().split_once(" [")?;
        let (comm, pid) = who.rsplit_once(':')?;
        let after_prio = rest.split_once(']')?.1;
        Some((Task { pid: pid.trim().parse().ok()?, comm: Comm::from(comm) }, after_prio.trim()))
    }
    let (prev, next) = text.split_once(" ==> ")?;
    let (prev, state) = side(prev)?;
    let (next, _) = side(next)?;
    Some(ContextEvent::SchedSwitch { prev, prev_state: PrevState::from_letters(state), next })
}

/// A pid field (`pid_t`, 4 bytes signed).
fn pid_of(f: &impl FieldLookup, name: &str) -> Option<i32> {
    f.int(name, 4).and_then(|v| i32::try_from(v).ok())
}

/// A string field (`char[16]` comms arrive as bytes from binary readers), up to its NUL.
fn text_of(f: &impl FieldLookup, name: &str) -> Option<String> {
    if let Some(s) = f.string(name) {
        return Some(s.trim_end_matches('\0').to_owned());
    }
    let bytes = f.bytes(name)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{FieldValue, Fields};

    fn fields(list: &[(&str, FieldValue)]) -> Fields {
        let mut f = Fields::new();
        for (name, value) in list {
            f.push(name.to_string(), value.clone());
        }
        f
    }

    #[test]
    fn sched_switch_from_binary_and_text_fields() {
        let binary = fields(&[
            ("prev_comm", FieldValue::Bytes(b"qemu-kvm\0\0\0\0\0\0\0\0".to_vec().into())),
            ("prev_pid", FieldValue::U64(812)),
            ("prev_prio", FieldValue::U64(120)),
            ("prev_state", FieldValue::U64(0x100)),
            ("next_comm", FieldValue::Str("busy".into())),
            ("next_pid", FieldValue::U64(900)),
        ]);
        let Some(ContextEvent::SchedSwitch { prev, prev_state, next }) =
            ContextEvent::decode("sched", "sched_switch", &binary)
        else {
            panic!("not typed");
        };
        assert_eq!((prev.pid, prev.comm.as_str()), (812, "qemu-kvm"));
        assert!(prev_state.runnable(), "R+ is runnable");
        assert_eq!(next.to_string(), "busy pid 900");
        let text = fields(&[
            ("prev_comm", FieldValue::Str("a".into())),
            ("prev_pid", FieldValue::U64(1)),
            ("prev_state", FieldValue::Str("S".into())),
            ("next_comm", FieldValue::Str("swapper/0".into())),
            ("next_pid", FieldValue::U64(0)),
        ]);
        let Some(ContextEvent::SchedSwitch { prev_state, .. }) =
            ContextEvent::decode("", "sched_switch", &text)
        else {
            panic!("not typed");
        };
        assert!(!prev_state.runnable());
    }

    #[test]
    fn missing_fields_and_other_systems_stay_untyped() {
        let f = fields(&[("irq", FieldValue::U64(3))]);
        assert_eq!(ContextEvent::decode("irq", "irq_handler_entry", &f), None);
        assert_eq!(ContextEvent::decode("sched", "softirq_entry", &f), None);
        let v = fields(&[("vector", FieldValue::U64(0xec))]);
        assert_eq!(
            ContextEvent::decode("irq_vectors", "local_timer_entry", &v),
            Some(ContextEvent::VectorEntry { name: "local_timer".into(), vector: 0xec })
        );
        assert_eq!(ContextEvent::decode("irq_vectors", "vector_config", &v), None);
    }

    #[test]
    fn trace_cmd_plugin_text_is_typed() {
        let f = fields(&[(
            "text",
            FieldValue::Str("qemu: vcpu:3367 [120] R+ ==> busy:812 [120]".into()),
        )]);
        let Some(ContextEvent::SchedSwitch { prev, prev_state, next }) =
            ContextEvent::decode("", "sched_switch", &f)
        else {
            panic!("not typed");
        };
        assert_eq!(
            (prev.comm.as_str(), prev.pid, next.comm.as_str(), next.pid),
            ("qemu: vcpu", 3367, "busy", 812)
        );
        assert!(prev_state.runnable());
        let f = fields(&[("vec", FieldValue::Str("1 [action=TIMER]".into()))]);
        assert_eq!(
            ContextEvent::decode("", "softirq_entry", &f),
            Some(ContextEvent::SoftirqEntry { vec: SoftirqVector(1) })
        );
    }

    #[test]
    fn softirq_names_are_open() {
        assert_eq!(SoftirqVector(3).to_string(), "NET_RX");
        assert_eq!(SoftirqVector(42).to_string(), "UNKNOWN(42)");
    }
}
