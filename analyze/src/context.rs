//! Host context of exits: where each exit's exit→entry time went on the host.
//!
//! `perf kvm stat` says how long an exit took; the first question about a slow one is what the
//! host did meanwhile. When a trace holds the scheduler and interrupt tracepoints
//! (`vmxray record --profile context`), [`HostContext`] follows, for every exit, the vCPU
//! thread and the CPU it ran on, and splits the exit's latency into:
//!
//! - **in KVM**: the thread ran on its CPU, outside any interrupt handler;
//! - **scheduled out**: the thread was off its CPU (from its `sched_switch` out to the one that
//!   brings it back, on any CPU), split by the threads that ran on the CPU it left; the part
//!   during which it was **blocked** (it left in a sleeping state, until its `sched_wakeup`) is
//!   said separately — a HLT exit blocks, a preempted vCPU does not;
//! - **irq**: hard interrupt handlers on its CPU while it was there (`irq_handler_*` by name,
//!   `irq_vectors:*` by vector name, `hrtimer_expire_*` inside them);
//! - **softirq**: softirqs on its CPU while it was there (by vector).
//!
//! ```text
//!  CPU 1  ─ kvm_exit ── in KVM ── irq eth0 ── in KVM ── sched_switch ──────── sched_switch ── kvm_entry
//!                                                       (vcpu → busy)  busy ran (busy → vcpu)
//!         |<────────────────────────── latency = in_kvm + irq + softirq + scheduled_out ─────────>|
//! ```
//!
//! The time of an interrupt is given to the innermost handler running (a softirq interrupted by
//! an irq gives that stretch to the irq). The parts add up to the latency **exactly**, in the
//! trace's time unit, for every exit reported: the segments are cut at the host events and
//! their sum is the exit→entry difference. An exit whose host events are out of order with its
//! entry (per-CPU clocks not synchronized across a migration) is counted in
//! [`HostContextReport::unattributed`] instead.
//!
//! Exits are paired with their entry exactly as [`crate::stats`] pairs them (the same vCPU's
//! next `kvm_entry`), so the exits attributed here are those `vmxray stats` gives a latency.
//! Lost events reset what is known of every CPU and drop the exits in flight.
//!
//! ```
//! use vmxray_analyze::context::HostContext;
//! use vmxray_events::test_util::EventBuilder;
//!
//! let mut t = EventBuilder::new();
//! t.l1_exit(10, 0x1000); // a CPUID exit and its entry, no host event between
//! let mut ctx = HostContext::new();
//! for e in &t.events {
//!     ctx.push(e, None);
//! }
//! assert!(ctx.finish().is_none(), "no host events: no host context");
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use vmxray_capture::EventReader;
use vmxray_events::codes::ExitCode;
use vmxray_events::context::{ContextEvent, SoftirqVector, Task};
use vmxray_events::{Actor, Attribution, Comm, Event, EventKind};

use crate::FastMap as HashMap;
use crate::pass::{Sink, Stepped};
use crate::slots::ActorSlots;
use crate::stats::Reason;

/// How many of the slowest attributed exits the report lists.
pub const OUTLIERS_KEPT: usize = 10;

/// Distinct threads, irqs or softirqs kept per exit; the rest are summed as `other`.
const NAMES_KEPT: usize = 8;

/// Nested handlers followed per CPU; deeper ones (a broken trace) are not tracked.
const MAX_DEPTH: usize = 16;

/// The time of one exit by where it went (trace time units); the four first add up to the
/// latency, `blocked` is part of `scheduled_out`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    /// The vCPU thread ran on its CPU outside interrupt handlers.
    pub in_kvm: u64,
    /// The thread was off its CPU.
    pub scheduled_out: u64,
    /// Of `scheduled_out`: it was blocked (sleeping until woken), not runnable.
    pub blocked: u64,
    /// Hard interrupt handlers ran on its CPU.
    pub irq: u64,
    /// Softirqs ran on its CPU.
    pub softirq: u64,
}

impl Parts {
    /// `in_kvm + scheduled_out + irq + softirq`.
    pub fn total(&self) -> u64 {
        self.in_kvm + self.scheduled_out + self.irq + self.softirq
    }

    fn add(&mut self, other: &Self) {
        self.in_kvm += other.in_kvm;
        self.scheduled_out += other.scheduled_out;
        self.blocked += other.blocked;
        self.irq += other.irq;
        self.softirq += other.softirq;
    }
}

/// A thread that ran while the vCPU thread was scheduled out, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanThread {
    /// Its pid (0: the idle task); `None` for the sum of threads beyond the kept ones, or when
    /// the trace never said what ran.
    pub pid: Option<i32>,
    /// Its comm (`?` when unknown, `other` for the sum).
    pub comm: String,
    /// Time.
    pub time: u64,
}

/// An interrupt handler or softirq and its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedTime {
    /// The irq's name (`eth0`, `local_timer`, `hrtimer 0x…`) or the softirq's (`NET_RX`).
    pub name: String,
    /// Time.
    pub time: u64,
}

/// One exit's host context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitContext {
    /// The exit's 0-based index in the event stream.
    pub index: u64,
    /// Its timestamp.
    pub ts: u64,
    /// The vCPU (`0`, `vm1/0`, `tid:1234`).
    pub vcpu: String,
    /// Its reason.
    pub reason: Reason,
    /// Exit → next entry.
    pub latency: u64,
    /// Where the time went (`parts.total() == latency`).
    pub parts: Parts,
    /// Who ran while it was scheduled out, most time first.
    pub ran: Vec<RanThread>,
    /// Hard interrupt handlers, most time first.
    pub irqs: Vec<NamedTime>,
    /// Softirqs, most time first.
    pub softirqs: Vec<NamedTime>,
}

impl ExitContext {
    /// One line naming the causes: `exit #1234 EPT_VIOLATION 2.1 ms: 1.9 ms scheduled out
    /// (stress-ng pid 812 ran), 0.1 ms irq eth0, 0.1 ms in KVM` (`ns`: the unit is ns, else raw
    /// units are printed as numbers).
    pub fn cause(&self, ns: bool) -> String {
        let t = |v: u64| human_time(v, ns);
        let mut out = format!("exit #{} {} {}: ", self.index, self.reason.name, t(self.latency));
        let mut parts: Vec<(u64, String)> = Vec::new();
        if self.parts.scheduled_out > 0 {
            let mut text = format!("{} scheduled out", t(self.parts.scheduled_out));
            if self.parts.blocked > 0 {
                let _ = write!(text, ", {} of it blocked", t(self.parts.blocked));
            }
            if let Some(top) = self.ran.first() {
                match top.pid {
                    Some(pid) => {
                        let _ = write!(text, " ({} pid {pid} ran", top.comm);
                    }
                    None => {
                        let _ = write!(text, " ({} ran", top.comm);
                    }
                }
                if self.ran.len() > 1 {
                    let _ = write!(text, " {}, and {} more", t(top.time), self.ran.len() - 1);
                }
                text.push(')');
            }
            parts.push((self.parts.scheduled_out, text));
        }
        if self.parts.irq > 0 {
            let names: Vec<&str> = self.irqs.iter().map(|n| n.name.as_str()).collect();
            parts.push((self.parts.irq, format!("{} irq {}", t(self.parts.irq), names.join("+"))));
        }
        if self.parts.softirq > 0 {
            let names: Vec<&str> = self.softirqs.iter().map(|n| n.name.as_str()).collect();
            parts.push((
                self.parts.softirq,
                format!("{} softirq {}", t(self.parts.softirq), names.join("+")),
            ));
        }
        if self.parts.in_kvm > 0 {
            parts.push((self.parts.in_kvm, format!("{} in KVM", t(self.parts.in_kvm))));
        }
        parts.sort_by_key(|p| std::cmp::Reverse(p.0));
        let texts: Vec<String> = parts.into_iter().map(|(_, text)| text).collect();
        out.push_str(&texts.join(", "));
        out
    }
}

/// The exits of one reason, their time summed by part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonContext {
    /// The reason.
    pub reason: Reason,
    /// Exits attributed.
    pub count: u64,
    /// Their summed latency (`parts.total()`).
    pub latency: u64,
    /// Their time by part.
    pub parts: Parts,
}

/// Which host tracepoints the trace had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSources {
    /// `sched_switch` (scheduled-out time is seen only with it).
    pub sched_switch: bool,
    /// `sched_wakeup` (blocked vs runnable time is told only with it).
    pub sched_wakeup: bool,
    /// `irq_handler_*` or `irq_vectors:*`.
    pub irq: bool,
    /// `softirq_*`.
    pub softirq: bool,
    /// `hrtimer_expire_*`.
    pub hrtimer: bool,
}

/// The host-context section of `vmxray stats` (JSON key `host_context`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostContextReport {
    /// What the trace had to go by.
    pub sources: ContextSources,
    /// Exits attributed (every exit with a latency, less `unattributed`).
    pub attributed: u64,
    /// Exits with a latency whose host events were out of time order with them.
    pub unattributed: u64,
    /// All attributed exits together.
    pub overall: Parts,
    /// Per exit reason, most time first.
    pub by_reason: Vec<ReasonContext>,
    /// The slowest attributed exits, slowest first, each with its causes.
    pub outliers: Vec<ExitContext>,
}

/// What the vCPU thread's CPU is running at a moment, from the vCPU's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    InKvm,
    Out { runner: Option<Task>, blocked: bool },
    Irq(Box<str>),
    Softirq(SoftirqVector),
}

/// A handler running on a CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Frame {
    Irq { irq: u32, name: Box<str> },
    Vector { name: Box<str> },
    Softirq(SoftirqVector),
    Hrtimer { hrtimer: u64, label: Box<str> },
}

#[derive(Clone, Debug, Default)]
struct CpuState {
    /// The thread running (from `sched_switch`, or a KVM event's thread).
    current: Option<Task>,
    /// Handlers running, innermost last.
    stack: Vec<Frame>,
}

impl CpuState {
    fn place(&self) -> Place {
        let mut in_softirq = None;
        for frame in self.stack.iter().rev() {
            match frame {
                Frame::Irq { name, .. } | Frame::Vector { name } => {
                    return Place::Irq(name.clone());
                }
                Frame::Softirq(vec) => {
                    in_softirq = Some(*vec);
                    break;
                }
                Frame::Hrtimer { .. } => {}
            }
        }
        // An hrtimer callback outside any irq frame runs in the timer interrupt (whose vector
        // events were not recorded) unless a softirq is below it.
        match (self.stack.last(), in_softirq) {
            (Some(Frame::Hrtimer { label, .. }), None) => Place::Irq(label.clone()),
            (_, Some(vec)) => Place::Softirq(vec),
            _ => Place::InKvm,
        }
    }

    fn push(&mut self, frame: Frame) {
        if self.stack.len() < MAX_DEPTH {
            self.stack.push(frame);
        }
    }

    /// Pops up to and including the innermost frame `matches` accepts; a handler exit whose
    /// entry the trace does not have changes nothing.
    fn pop(&mut self, matches: impl Fn(&Frame) -> bool) {
        if let Some(at) = self.stack.iter().rposition(matches) {
            self.stack.truncate(at);
        }
    }
}

/// An exit waiting for its entry.
#[derive(Clone, Debug)]
struct Pending {
    index: u64,
    ts: u64,
    reason: ExitCode,
    pid: i32,
    /// The CPU the thread is on, or the one it left while scheduled out.
    cpu: u32,
    on_cpu: bool,
    blocked: bool,
    /// Time accounted up to here.
    until: u64,
    /// An event came earlier than `until` (clocks out of order).
    skewed: bool,
    parts: Parts,
    ran: Vec<(Option<Task>, u64)>,
    irqs: Vec<(Box<str>, u64)>,
    softirqs: Vec<(SoftirqVector, u64)>,
}

impl Pending {
    /// An exit seen at `ts`, nothing accounted yet; the lists keep their buffers.
    fn start(&mut self, index: u64, ts: u64, reason: ExitCode, pid: i32, cpu: u32) {
        self.index = index;
        self.ts = ts;
        self.reason = reason;
        self.pid = pid;
        self.cpu = cpu;
        self.on_cpu = true;
        self.blocked = false;
        self.until = ts;
        self.skewed = false;
        self.parts = Parts::default();
        self.ran.clear();
        self.irqs.clear();
        self.softirqs.clear();
    }

    fn empty() -> Self {
        Self {
            index: 0,
            ts: 0,
            reason: ExitCode::Raw(0),
            pid: 0,
            cpu: 0,
            on_cpu: true,
            blocked: false,
            until: 0,
            skewed: false,
            parts: Parts::default(),
            ran: Vec::new(),
            irqs: Vec::new(),
            softirqs: Vec::new(),
        }
    }

    fn place(&self, cpus: &HashMap<u32, CpuState>) -> Place {
        let cpu = cpus.get(&self.cpu);
        if self.on_cpu {
            cpu.map_or(Place::InKvm, CpuState::place)
        } else {
            Place::Out { runner: cpu.and_then(|c| c.current.clone()), blocked: self.blocked }
        }
    }

    /// Gives the time from `until` to `ts` to where the vCPU is now.
    fn account(&mut self, ts: u64, cpus: &HashMap<u32, CpuState>) {
        if ts < self.until {
            self.skewed = true;
            return;
        }
        let d = ts - self.until;
        self.until = ts;
        if d == 0 {
            return;
        }
        match self.place(cpus) {
            Place::InKvm => self.parts.in_kvm += d,
            Place::Out { runner, blocked } => {
                self.parts.scheduled_out += d;
                if blocked {
                    self.parts.blocked += d;
                }
                add_named(&mut self.ran, runner, d);
            }
            Place::Irq(name) => {
                self.parts.irq += d;
                add_named(&mut self.irqs, name, d);
            }
            Place::Softirq(vec) => {
                self.parts.softirq += d;
                add_named(&mut self.softirqs, vec, d);
            }
        }
    }
}

/// Adds `d` to `name`'s entry; beyond [`NAMES_KEPT`] names, to the last (the `other` sum).
fn add_named<K: PartialEq>(list: &mut Vec<(K, u64)>, name: K, d: u64) {
    if let Some(entry) = list.iter_mut().find(|(n, _)| *n == name) {
        entry.1 += d;
    } else if list.len() < NAMES_KEPT {
        list.push((name, d));
    } else if let Some(last) = list.last_mut() {
        last.1 += d;
    }
}

/// The streaming host-context analysis: feed it every event ([`HostContext::push`], or run
/// it as a [`Sink`] of a [`crate::pass::Pass`]), then [`HostContext::finish`].
///
/// Memory: one state per CPU, one pending exit per vCPU, the per-reason sums and the
/// [`OUTLIERS_KEPT`] slowest exits (plus, with [`HostContext::with_exit_log`], the exits
/// attributed since the last [`HostContext::take_attributed`]).
#[derive(Debug, Default)]
pub struct HostContext {
    /// Events pushed so far.
    index: u64,
    /// Records the reader counted instead of yielding, before the next event
    /// ([`Sink::counted_before`]): an exit's index in the stream counts them.
    counted: u64,
    attribution: Attribution,
    cpus: HashMap<u32, CpuState>,
    /// Each vCPU's exit waiting for its entry (a slot reused exit after exit).
    pending: ActorSlots<Pending>,
    sources: ContextSources,
    closed: Closed,
    /// Only exits of this VM (`Vm::matches`), when set.
    vm: Option<String>,
}

/// What the exits closed so far add up to (apart from the pending ones, so that an exit is
/// closed by reference while its slot stays in [`HostContext::pending`]).
#[derive(Debug, Default)]
struct Closed {
    attributed: u64,
    unattributed: u64,
    overall: Parts,
    by_reason: BTreeMap<(u8, u64), ReasonContext>,
    outliers: Vec<ExitContext>,
    log: Option<Vec<ExitContext>>,
}

impl HostContext {
    /// An empty analysis.
    pub fn new() -> Self {
        Self::default()
    }

    /// False when `reader`'s input cannot hold a host event: it has event formats, and none
    /// of a host tracepoint's system ([`ContextEvent::SYSTEMS`]). The analysis would then
    /// report nothing ([`HostContext::finish`] gives `None`), so a caller need not run it.
    pub fn possible_in(reader: &dyn EventReader) -> bool {
        reader.event_formats().is_none_or(|formats| {
            formats.iter().any(|f| ContextEvent::SYSTEMS.contains(&&*f.system))
        })
    }

    /// An empty analysis that also keeps every attributed exit until taken (the TUI's detail
    /// view), from the trace's first host event on (before it, no row has a host part).
    pub fn with_exit_log() -> Self {
        Self { closed: Closed { log: Some(Vec::new()), ..Closed::default() }, ..Self::default() }
    }

    /// Only the exits of one VM (as `vmxray stats --vm`); host events of every thread still
    /// count.
    pub fn of_vm(mut self, selector: impl Into<String>) -> Self {
        self.vm = Some(selector.into());
        self
    }

    /// The exits attributed since the last call, in the order their entries came.
    pub fn take_attributed(&mut self) -> Vec<ExitContext> {
        self.closed.log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// True once the trace showed a host event this analysis uses.
    pub fn has_host_events(&self) -> bool {
        let s = self.sources;
        s.sched_switch || s.irq || s.softirq || s.hrtimer
    }

    /// One event, attributed to `actor` (`None`: attributed here, by the rule the model
    /// uses).
    pub fn push(&mut self, event: &Event, actor: Option<Actor>) {
        let actor = match (&event.kind, actor) {
            (EventKind::Lost { .. }, _) => None,
            (_, Some(actor)) => Some(actor),
            (_, None) => Some(self.attribution.attribute(event).actor),
        };
        self.push_in_vm(event, actor, true);
    }

    /// One event a [`crate::pass::Pass`] stepped, with the actor it gave (`Step::actor`: `None`
    /// for a lost-events marker), as the pass's sink would see it without a VM selected.
    pub fn push_stepped(&mut self, event: &Event, actor: Option<Actor>) {
        self.push_in_vm(event, actor, true);
    }

    fn push_in_vm(&mut self, event: &Event, actor: Option<Actor>, in_vm: bool) {
        let index = self.index + self.counted;
        self.index += 1;
        let ts = event.ts;
        match &event.kind {
            EventKind::KvmExit(info) => {
                let Some(actor) = actor else { return };
                // Before the first host event no CPU has a handler running, and what a CPU
                // runs is read only for a thread a `sched_switch` took off it (which says what
                // runs next): the CPUs are followed from that event on, not for every exit of a
                // trace without host events.
                if self.has_host_events() {
                    let cpu = self.cpus.entry(event.cpu).or_default();
                    // A vCPU thread exits in task context: no handler can still be running.
                    cpu.stack.clear();
                    if cpu.current.as_ref().is_none_or(|t| t.pid != event.pid) {
                        cpu.current = Some(Task {
                            pid: event.pid,
                            comm: event.comm.clone().unwrap_or_else(|| Comm::from("?")),
                        });
                    }
                }
                // A previous exit of the vCPU without an entry gets no latency in stats: the
                // new exit replaces it.
                if in_vm {
                    let reason = info.reason();
                    self.pending.open_with(actor, Pending::empty, |exit| {
                        exit.start(index, ts, reason, event.pid, event.cpu);
                    });
                } else {
                    self.pending.close(actor);
                }
            }
            EventKind::KvmEntry(_) => {
                let Some(actor) = actor else { return };
                // The log's rows show where host events took the time: none before the first
                // one (the TUI then leaves the detail view's breakdown out, and building rows
                // cost a tenth of its load).
                let log_rows = self.has_host_events();
                // (Closed by reference, its slot kept for the vCPU's next exit: a copy or a
                // move of the exit per entry showed in profiles.)
                let pending = if self.pending.is_open(actor) {
                    self.pending.close(actor)
                } else {
                    self.pending.close(Actor::Thread(event.pid))
                };
                if let Some(exit) = pending
                    && ts >= exit.ts
                {
                    exit.account(ts, &self.cpus);
                    self.closed.close(actor, exit, ts, log_rows);
                }
            }
            EventKind::Lost { .. } => {
                self.pending.clear();
                self.cpus.clear();
            }
            EventKind::Context(hit) => self.on_host_event(event, &hit.event),
            _ => {}
        }
    }

    fn on_host_event(&mut self, event: &Event, host: &ContextEvent) {
        let uses_time = match host {
            ContextEvent::SchedSwitch { .. } => {
                self.sources.sched_switch = true;
                true
            }
            ContextEvent::SchedWakeup { .. } => {
                self.sources.sched_wakeup = true;
                true
            }
            ContextEvent::IrqEntry { .. }
            | ContextEvent::IrqExit { .. }
            | ContextEvent::VectorEntry { .. }
            | ContextEvent::VectorExit { .. } => {
                self.sources.irq = true;
                true
            }
            ContextEvent::SoftirqEntry { .. } | ContextEvent::SoftirqExit { .. } => {
                self.sources.softirq = true;
                true
            }
            ContextEvent::HrtimerEntry { .. } | ContextEvent::HrtimerExit { .. } => {
                self.sources.hrtimer = true;
                true
            }
            ContextEvent::SchedStat { .. } => false,
        };
        if !uses_time {
            return;
        }
        // The exits this event may move get the time up to it where they were until now: those
        // whose CPU it happened on, and those of the thread it switches or wakes (on any CPU).
        // No other exit's place changes, so its current stretch goes on.
        let (prev_pid, task_pid) = match host {
            ContextEvent::SchedSwitch { prev, next, .. } => (Some(prev.pid), Some(next.pid)),
            ContextEvent::SchedWakeup { task, .. } => (None, Some(task.pid)),
            _ => (None, None),
        };
        for exit in self.pending.values_mut() {
            if exit.cpu == event.cpu || Some(exit.pid) == prev_pid || Some(exit.pid) == task_pid {
                exit.account(event.ts, &self.cpus);
            }
        }
        let cpu = self.cpus.entry(event.cpu).or_default();
        match host {
            ContextEvent::SchedSwitch { prev, prev_state, next } => {
                cpu.stack.clear();
                cpu.current = Some(next.clone());
                for exit in self.pending.values_mut() {
                    if exit.pid == prev.pid && exit.on_cpu {
                        exit.on_cpu = false;
                        exit.cpu = event.cpu;
                        exit.blocked = !prev_state.runnable();
                    } else if exit.pid == next.pid {
                        exit.on_cpu = true;
                        exit.cpu = event.cpu;
                        exit.blocked = false;
                    }
                }
            }
            ContextEvent::SchedWakeup { task, .. } => {
                for exit in self.pending.values_mut() {
                    if exit.pid == task.pid {
                        exit.blocked = false;
                    }
                }
            }
            ContextEvent::IrqEntry { irq, name } => {
                cpu.push(Frame::Irq { irq: *irq, name: name.clone() });
            }
            ContextEvent::IrqExit { irq, .. } => {
                cpu.pop(|f| matches!(f, Frame::Irq { irq: i, .. } if i == irq));
            }
            ContextEvent::VectorEntry { name, .. } => {
                cpu.push(Frame::Vector { name: name.clone() })
            }
            ContextEvent::VectorExit { name, .. } => {
                cpu.pop(|f| matches!(f, Frame::Vector { name: n } if n == name));
            }
            ContextEvent::SoftirqEntry { vec } => cpu.push(Frame::Softirq(*vec)),
            ContextEvent::SoftirqExit { vec } => {
                cpu.pop(|f| matches!(f, Frame::Softirq(v) if v == vec));
            }
            ContextEvent::HrtimerEntry { hrtimer, function } => cpu.push(Frame::Hrtimer {
                hrtimer: *hrtimer,
                label: format!("hrtimer {function:#x}").into(),
            }),
            ContextEvent::HrtimerExit { hrtimer } => {
                cpu.pop(|f| matches!(f, Frame::Hrtimer { hrtimer: h, .. } if h == hrtimer));
            }
            ContextEvent::SchedStat { .. } => {}
        }
    }

    /// The report, or `None` when the trace had no host event this analysis uses.
    pub fn finish(self) -> Option<HostContextReport> {
        if !self.has_host_events() {
            return None;
        }
        let closed = self.closed;
        let mut by_reason: Vec<ReasonContext> = closed.by_reason.into_values().collect();
        by_reason.sort_by(|a, b| b.latency.cmp(&a.latency).then_with(|| a.reason.cmp(&b.reason)));
        Some(HostContextReport {
            sources: self.sources,
            attributed: closed.attributed,
            unattributed: closed.unattributed,
            overall: closed.overall,
            by_reason,
            outliers: closed.outliers,
        })
    }
}

impl Closed {
    /// Adds an exit closed by its entry at `entry_ts`; with `log_rows`, its row goes to the log
    /// (when kept).
    fn close(&mut self, vcpu: Actor, exit: &mut Pending, entry_ts: u64, log_rows: bool) {
        let latency = entry_ts - exit.ts;
        if exit.skewed || exit.parts.total() != latency {
            self.unattributed += 1;
            return;
        }
        self.attributed += 1;
        self.overall.add(&exit.parts);
        let reason = exit.reason;
        let key = (
            match reason {
                ExitCode::Vmx(_) => 0,
                ExitCode::Svm(_) => 1,
                ExitCode::Raw(_) => 2,
            },
            reason.raw(),
        );
        let row = self.by_reason.entry(key).or_insert_with(|| ReasonContext {
            reason: Reason::from(reason),
            count: 0,
            latency: 0,
            parts: Parts::default(),
        });
        row.count += 1;
        row.latency += latency;
        row.parts.add(&exit.parts);
        let log = self.log.is_some() && log_rows;
        let keep = log
            || self.outliers.len() < OUTLIERS_KEPT
            || self.outliers.last().is_some_and(|o| o.latency < latency);
        if !keep {
            return;
        }
        let context = ExitContext {
            index: exit.index,
            ts: exit.ts,
            vcpu: vcpu.label(),
            reason: Reason::from(reason),
            latency,
            parts: exit.parts,
            ran: sorted(exit.ran.drain(..).map(|(task, time)| match task {
                Some(t) => RanThread { pid: Some(t.pid), comm: t.comm.to_string(), time },
                None => RanThread { pid: None, comm: "?".to_owned(), time },
            })),
            irqs: sorted(
                exit.irqs.drain(..).map(|(name, time)| NamedTime { name: name.into(), time }),
            ),
            softirqs: sorted(
                exit.softirqs
                    .drain(..)
                    .map(|(vec, time)| NamedTime { name: vec.to_string(), time }),
            ),
        };
        if self.outliers.len() < OUTLIERS_KEPT
            || self.outliers.last().is_some_and(|o| o.latency < latency)
        {
            // Slowest first; ties keep the earlier exit first.
            let at = self.outliers.partition_point(|o| o.latency >= latency);
            self.outliers.insert(at, context.clone());
            self.outliers.truncate(OUTLIERS_KEPT);
        }
        if log && let Some(rows) = &mut self.log {
            rows.push(context);
        }
    }
}

/// Most time first (a list's `other` sum keeps its place among them).
fn sorted<T: HasTime>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_by_key(|item| std::cmp::Reverse(item.time()));
    v
}

trait HasTime {
    fn time(&self) -> u64;
}

impl HasTime for RanThread {
    fn time(&self) -> u64 {
        self.time
    }
}

impl HasTime for NamedTime {
    fn time(&self) -> u64 {
        self.time
    }
}

impl Sink for HostContext {
    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        let actor = stepped.step().actor;
        let in_vm = match (&self.vm, actor) {
            (Some(vm), Some(actor)) => {
                stepped.model.attribution().in_vm(actor, stepped.event.pid, vm)
            }
            (None, _) | (Some(_), None) => true,
        };
        self.push_in_vm(stepped.event, actor, in_vm);
        ControlFlow::Continue(())
    }

    fn counted_before(&mut self, total: u64) {
        self.counted = total;
    }
}

/// A time for people: `850 ns`, `12.3 µs`, `2.1 ms`, `1.20 s` (`ns`), else the raw number.
pub fn human_time(v: u64, ns: bool) -> String {
    if !ns {
        return format!("{v} units");
    }
    let f = v as f64;
    if v < 1_000 {
        format!("{v} ns")
    } else if v < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else if v < 1_000_000_000 {
        format!("{:.1} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}
