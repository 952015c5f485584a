//! Streaming exit statistics: feed events one by one to [`ExitStats::push`], then
//! [`ExitStats::finish`] into a [`StatsReport`].
//!
//! Memory depends on the number of distinct (exit reason, level, vCPU) groups, vCPUs, threads,
//! event names and emulated instruction byte strings (capped at
//! [`ExitStats::MAX_DISTINCT_INSNS`]), never on the number of events. See the crate docs for the
//! latency definition, the L1/L2 rule and the JSON schema.

mod render;
mod report;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use vmxray_capture::{CountOnly, ReadStats, TraceMeta};
use vmxray_events::codes::{ExitCode, IntrType, SvmExitCode, VmxBasicReason};
use vmxray_events::irq::IrqEvent;
use vmxray_events::{Actor, Attribution, Event, EventKind, ExitInfo, KnownEvent, KnownSet, VmId};

use crate::FastMap as HashMap;
use crate::histogram::{LogHistogram, MAX_BINS};
use crate::slots::ActorSlots;

pub use render::{Format, write_report};
pub use report::*;
pub use vmxray_events::insn::mnemonic;

/// An exit waiting for its vCPU's next `kvm_entry`.
#[derive(Clone, Copy, Debug)]
struct PendingExit {
    ts: u64,
    reason: ExitCode,
    /// A `kvm_nested_vmexit` followed: the exit came from L2.
    from_l2: bool,
    /// L0 always keeps this exit (§2.3 `nested_vmx_l0_wants_exit`), so an inject with the
    /// same reason is a synthesized nested exit, not this exit reflected.
    l0_always_keeps: bool,
    /// This exit was reflected to L1 (a matching `kvm_nested_vmexit_inject` followed).
    reflected: bool,
    /// The exit's 0-based index in the event stream.
    index: u64,
    /// Guest RIP at the exit.
    rip: Option<u64>,
    /// Exit qualification (VMX) / `exit_info_1` (SVM).
    qualification: Option<u64>,
    /// The exit's fields, for the decoded qualification and IDT-vectoring information.
    info: ExitInfo,
    /// The vmcs12 the caller said was current at the `kvm_nested_vmexit` (see
    /// [`ExitStats::push_attributed`]).
    vmcs12: Option<u64>,
}

/// Why an exit has no latency (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoLatency {
    /// The trace ended before the vCPU's next entry.
    TraceEnd,
    /// A lost-events marker came first.
    LostEvents,
    /// The same vCPU exited again first.
    NextExit,
    /// The entry's timestamp is earlier than the exit's.
    ClockBackwards,
    /// The exit's or the entry's time is unknown (text pasted without its timestamps).
    UnknownTime,
}

impl NoLatency {
    /// `trace_end`, `lost_events`, `next_exit`, `clock_backwards`, `unknown_time` (as in the
    /// JSON report).
    pub fn name(self) -> &'static str {
        match self {
            Self::TraceEnd => "trace_end",
            Self::LostEvents => "lost_events",
            Self::NextExit => "next_exit",
            Self::ClockBackwards => "clock_backwards",
            Self::UnknownTime => "unknown_time",
        }
    }
}

/// One `kvm_exit` once its outcome is known, as [`ExitStats`] counted it: the rows of a
/// per-exit table. Only kept when the accumulator was built with [`ExitStats::with_exit_log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedExit {
    /// The exit's 0-based index in the event stream.
    pub index: u64,
    /// Its timestamp.
    pub ts: u64,
    /// The vCPU.
    pub vcpu: Actor,
    /// The reason.
    pub reason: ExitCode,
    /// [`Level::L2`] when a `kvm_nested_vmexit` followed, else [`Level::L1`].
    pub level: Level,
    /// L2 exits: reflected to L1 (`true`) or handled by L0 (`false`).
    pub reflected: Option<bool>,
    /// Exit → next entry of the same vCPU, in the trace's time unit.
    pub latency: Result<u64, NoLatency>,
    /// Guest RIP at the exit.
    pub rip: Option<u64>,
    /// Exit qualification (VMX) / `exit_info_1` (SVM).
    pub qualification: Option<u64>,
    /// The exit's fields: [`ExitInfo::qualification`] and [`ExitInfo::idt_vectoring`] decode
    /// them.
    pub info: ExitInfo,
    /// The vmcs12 given with the exit, for L2 exits.
    pub vmcs12: Option<u64>,
}

/// An exit code ordered by (ISA, raw value), for stable report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ReasonKey(ExitCode);

impl ReasonKey {
    fn sort_key(self) -> (u8, u64) {
        let isa = match self.0 {
            ExitCode::Vmx(_) => 0,
            ExitCode::Svm(_) => 1,
            ExitCode::Raw(_) => 2,
        };
        (isa, self.0.raw())
    }
}

impl PartialOrd for ReasonKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ReasonKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GroupKey {
    reason: ReasonKey,
    level: LevelSplit,
    vcpu: Actor,
}

#[derive(Clone, Debug, Default)]
struct Group {
    count: u64,
    without_latency: u64,
    l0_handled: u64,
    reflected: u64,
    latency: LogHistogram,
}

impl Group {
    fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.without_latency += other.without_latency;
        self.l0_handled += other.l0_handled;
        self.reflected += other.reflected;
        self.latency.merge(&other.latency);
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct InsnCount {
    count: u64,
    failed: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct ExceptionCount {
    count: u64,
    with_error_code: u64,
    reinjected: u64,
}

/// A slow exit as the heap orders it: (latency, exit ts, vCPU, reason, level).
type SlowKey = (u64, u64, Actor, ReasonKey, LevelSplit);

/// Why a pending exit is closed.
#[derive(Clone, Copy, Debug)]
enum Close {
    Entry(u64),
    TraceEnd,
    Lost,
    NextExit,
}

/// The streaming accumulator behind `vmxray stats`.
#[derive(Debug, Default)]
pub struct ExitStats {
    events_total: u64,
    events_by_name: HashMap<Box<str>, u64>,
    /// Typed events counted by [`KnownEvent`] index (no name hashed per event); added to
    /// `events_by_name` under [`KnownEvent::name`] when the report is built.
    known_counts: Vec<u64>,
    /// Attribution for events pushed without one ([`ExitStats::push`]).
    attribution: Attribution,
    /// Each vCPU's exit waiting for its entry (a slot reused exit after exit).
    pending: ActorSlots<PendingExit>,
    /// What closing an exit counts into.
    closing: Closing,
    saw_nested_vmexit: bool,
    saw_nested_vmenter: bool,
    saw_nested_inject: bool,
    saw_entry: bool,
    synthesized: BTreeMap<ReasonKey, u64>,
    orphan_nested_vmexits: u64,
    insn_total: u64,
    insn_failed: u64,
    insns: HashMap<Box<[u8]>, InsnCount>,
    insn_other: u64,
    exceptions: BTreeMap<u8, ExceptionCount>,
    userspace: BTreeMap<u32, (u64, u64)>,
    pio: BTreeMap<(bool, u32, u32), u64>,
    lost_in_stream: BTreeMap<u32, vmxray_capture::LostOnCpu>,
}

/// What closing an exit counts into, apart from [`ExitStats`]' other fields: an exit is closed
/// where it waits in its slot, read by reference (copying the ~150-byte exit out of its slot
/// first, at every entry, showed in profiles).
#[derive(Debug, Default)]
struct Closing {
    groups: Groups,
    unpaired: Unpaired,
    /// The slowest exits so far, as a min-heap of at most [`ExitStats::SLOWEST_KEPT`]:
    /// (latency, exit ts, vCPU, reason, level).
    slowest: BinaryHeap<Reverse<SlowKey>>,
    /// Closed exits not yet taken, when logging (see [`ExitStats::with_exit_log`]).
    exit_log: Option<Vec<ClosedExit>>,
}

/// Groups looked up recently, by [`Groups::recent_slot`].
const RECENT_GROUPS: usize = 32;

/// The exit groups in the order they appeared, found by key through a small table of those
/// looked up recently before the hash: a vCPU's exits fall in a handful of groups, and hashing
/// the whole key at every exit showed in profiles.
#[derive(Debug, Default)]
struct Groups {
    rows: Vec<(GroupKey, Group)>,
    index: HashMap<GroupKey, usize>,
    recent: [Option<(GroupKey, usize)>; RECENT_GROUPS],
}

impl Groups {
    /// The group of `key`, added empty if new.
    #[inline]
    fn get_mut(&mut self, key: GroupKey) -> &mut Group {
        let slot = Self::recent_slot(&key);
        let i = match self.recent[slot] {
            Some((k, i)) if k == key => i,
            _ => {
                let i = *self.index.entry(key).or_insert_with(|| {
                    self.rows.push((key, Group::default()));
                    self.rows.len() - 1
                });
                self.recent[slot] = Some((key, i));
                i
            }
        };
        &mut self.rows[i].1
    }

    /// A slot of `recent` for `key`: its reason, vCPU and level mixed (collisions only cost
    /// a lookup in the hash).
    fn recent_slot(key: &GroupKey) -> usize {
        let who = match key.vcpu {
            Actor::Vcpu(v) => u64::from(v.id) ^ u64::from(v.vm.0) << 16,
            Actor::Thread(pid) => u64::from(pid.cast_unsigned()) << 1 | 1,
        };
        let level = match key.level {
            Some(Level::L2) => 1,
            _ => 0,
        };
        let mixed = key.reason.0.raw() ^ who.wrapping_mul(5) ^ level << 4;
        usize::try_from(mixed % RECENT_GROUPS as u64).unwrap_or(0)
    }

    fn iter(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.rows.iter().map(|(k, g)| (k, g))
    }
}

impl Closing {
    fn close(&mut self, vcpu: Actor, exit: &PendingExit, how: Close) {
        let level = if exit.from_l2 { Level::L2 } else { Level::L1 };
        let group = self.groups.get_mut(GroupKey {
            reason: ReasonKey(exit.reason),
            level: Some(level),
            vcpu,
        });
        group.count += 1;
        if exit.from_l2 {
            if exit.reflected {
                group.reflected += 1;
            } else {
                group.l0_handled += 1;
            }
        }
        let unknown = |ts: u64| ts == Event::TS_UNKNOWN || exit.ts == Event::TS_UNKNOWN;
        let outcome = match how {
            Close::Entry(ts) if unknown(ts) => Err(NoLatency::UnknownTime),
            Close::Entry(ts) if ts >= exit.ts => Ok(ts - exit.ts),
            Close::Entry(_) => Err(NoLatency::ClockBackwards),
            Close::TraceEnd => Err(NoLatency::TraceEnd),
            Close::Lost => Err(NoLatency::LostEvents),
            Close::NextExit => Err(NoLatency::NextExit),
        };
        if let Some(log) = &mut self.exit_log {
            log.push(ClosedExit {
                index: exit.index,
                ts: exit.ts,
                vcpu,
                reason: exit.reason,
                level,
                reflected: exit.from_l2.then_some(exit.reflected),
                latency: outcome,
                rip: exit.rip,
                qualification: exit.qualification,
                info: exit.info,
                vmcs12: if exit.from_l2 { exit.vmcs12 } else { None },
            });
        }
        let cause = match how {
            Close::Entry(ts) if unknown(ts) => &mut self.unpaired.unknown_time,
            Close::Entry(ts) if ts >= exit.ts => {
                let latency = ts - exit.ts;
                group.latency.record(latency);
                let slow = (latency, exit.ts, vcpu, ReasonKey(exit.reason), Some(level));
                // Once the heap is full, an exit no slower than its fastest would be pushed and
                // popped again at once: skip the two heap updates (most exits).
                match self.slowest.peek() {
                    Some(Reverse(fastest))
                        if self.slowest.len() >= ExitStats::SLOWEST_KEPT && slow <= *fastest => {}
                    _ => {
                        self.slowest.push(Reverse(slow));
                        if self.slowest.len() > ExitStats::SLOWEST_KEPT {
                            self.slowest.pop();
                        }
                    }
                }
                return;
            }
            Close::Entry(_) => &mut self.unpaired.clock_backwards,
            Close::TraceEnd => &mut self.unpaired.trace_end,
            Close::Lost => &mut self.unpaired.lost_events,
            Close::NextExit => &mut self.unpaired.next_exit,
        };
        *cause += 1;
        group.without_latency += 1;
    }
}

impl ExitStats {
    /// The events a statistics pass reads only to count them: no field of theirs is read by the
    /// exit statistics, the host context or perf's table, and none names a vCPU, so the
    /// model's attribution binds no thread from them. These typed kinds, and the KVM
    /// tracepoints the vocabulary does not type whose events name no vCPU (`kvm_fpu`,
    /// `kvm_age_hva`, ...: [`vmxray_events::OtherEvent::is_plain_kvm`]). `vmxray stats` has the
    /// reader count them instead of decoding them ([`vmxray_capture::ReadOptions::count_only`]);
    /// the report is the same ([`ExitStats::finish`] adds the counts the reader kept).
    pub const COUNT_ONLY: CountOnly = CountOnly {
        kinds: KnownSet::of(&[
            KnownEvent::KvmCr,
            KnownEvent::KvmNestedVmenter,
            KnownEvent::KvmNestedVmrun,
            KnownEvent::KvmNestedVmenterFailed,
            KnownEvent::KvmNestedIntrVmexit,
            KnownEvent::KvmInjVirq,
            KnownEvent::KvmMsr,
            KnownEvent::KvmCpuid,
            KnownEvent::KvmMmuGetPage,
            KnownEvent::KvmMmuPrepareZapPage,
            KnownEvent::KvmMmuSyncPage,
            KnownEvent::KvmMmuUnsyncPage,
            KnownEvent::KvmMmuPagetableWalk,
            KnownEvent::KvmMmuPagingElement,
            KnownEvent::KvmMmuWalkerError,
            KnownEvent::KvmTdpMmuSpteChanged,
            KnownEvent::KvmMmuSpteRequested,
            KnownEvent::KvmMmuSetSpte,
        ])
        // Every interrupt-controller tracepoint.
        .union(KnownSet::of(&IrqEvent::TRACEPOINTS)),
        plain_kvm: true,
    };

    /// Distinct instruction byte strings kept; further ones are counted in
    /// [`EmulationReport::other`].
    pub const MAX_DISTINCT_INSNS: usize = 4096;

    /// How many of the slowest exits the report lists with their timestamps.
    pub const SLOWEST_KEPT: usize = 10;

    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty accumulator that also keeps every closed exit as a [`ClosedExit`], to be taken
    /// with [`ExitStats::take_closed_exits`] (memory: the exits closed since the last take).
    pub fn with_exit_log() -> Self {
        let closing = Closing { exit_log: Some(Vec::new()), ..Closing::default() };
        Self { closing, ..Self::default() }
    }

    /// The exits closed since the last call, in the order they were closed (at their vCPU's
    /// next entry, next exit, a lost-events marker, or [`ExitStats::close_pending`]).
    pub fn take_closed_exits(&mut self) -> Vec<ClosedExit> {
        self.closing.exit_log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Exits closed and not yet taken.
    pub fn closed_exits_pending(&self) -> usize {
        self.closing.exit_log.as_ref().map_or(0, Vec::len)
    }

    /// Closes the exits still waiting for an entry (the trace ended), as [`ExitStats::finish`]
    /// would; call it before taking the last closed exits.
    pub fn close_pending(&mut self) {
        self.close_every_pending(Close::TraceEnd);
    }

    /// Counts one event, attributing it itself ([`vmxray_events::Attribution`], the same rule
    /// the replay model applies). A [`crate::pass::Pass`] attributes once for everyone and
    /// calls [`ExitStats::push_attributed`] instead.
    pub fn push(&mut self, event: &Event) {
        let actor = match event.kind {
            EventKind::Lost { .. } => None,
            _ => Some(self.attribution.attribute(event).actor),
        };
        self.push_attributed(event, actor, None);
    }

    /// Counts one event attributed to `actor` (`None` for a lost-events marker, which concerns
    /// every vCPU). For a `kvm_nested_vmexit`, `current_vmcs12` is the vmcs12 the caller knows
    /// to be current (the replay model's): the exit is an L2 exit and its [`ClosedExit`] keeps
    /// that vmcs12.
    #[inline]
    pub fn push_attributed(
        &mut self,
        event: &Event,
        actor: Option<Actor>,
        current_vmcs12: Option<u64>,
    ) {
        let vcpu = actor.unwrap_or(Actor::Thread(event.pid));
        let index = self.events_total;
        self.events_total += 1;
        match event.kind.known() {
            Some(known) => {
                let k = known as usize;
                if k >= self.known_counts.len() {
                    self.known_counts.resize(KnownEvent::ALL.len().max(k + 1), 0);
                }
                self.known_counts[k] += 1;
            }
            None => {
                let name = event.name();
                match self.events_by_name.get_mut(name) {
                    Some(n) => *n += 1,
                    None => {
                        self.events_by_name.insert(name.into(), 1);
                    }
                }
            }
        }
        match &event.kind {
            EventKind::KvmExit(info) => {
                let l0_always_keeps =
                    l0_always_keeps(info.reason(), info.intr_info().map(|i| i.kind()));
                let previous = self.pending.open(
                    vcpu,
                    PendingExit {
                        ts: event.ts,
                        reason: info.reason(),
                        from_l2: false,
                        l0_always_keeps,
                        reflected: false,
                        index,
                        rip: info.guest_rip(),
                        qualification: info.info1(),
                        info: *info,
                        vmcs12: None,
                    },
                );
                if let Some(previous) = &previous {
                    self.closing.close(vcpu, previous, Close::NextExit);
                }
            }
            EventKind::KvmEntry(_) => {
                self.saw_entry = true;
                // An exit recorded before the thread's vCPU was known waits under the thread.
                // (The slot stays for the vCPU's next exit: this runs for every entry, and
                // moving the ~150-byte exit in and out of a map showed in profiles.)
                let how = Close::Entry(event.ts);
                match self.pending.close(vcpu) {
                    Some(exit) => self.closing.close(vcpu, exit, how),
                    None => {
                        if let Some(exit) = self.pending.close(Actor::Thread(event.pid)) {
                            self.closing.close(vcpu, exit, how);
                        }
                    }
                }
            }
            EventKind::KvmNestedVmexit(_) => {
                self.saw_nested_vmexit = true;
                match self.pending_mut(vcpu, event.pid) {
                    Some(exit) => {
                        exit.from_l2 = true;
                        exit.vmcs12 = current_vmcs12;
                    }
                    None => self.orphan_nested_vmexits += 1,
                }
            }
            EventKind::KvmNestedVmexitInject(info) => {
                self.saw_nested_inject = true;
                let reflected = match self.pending_mut(vcpu, event.pid) {
                    Some(exit)
                        if exit.from_l2
                            && !exit.reflected
                            && !exit.l0_always_keeps
                            && exit.reason == info.reason() =>
                    {
                        exit.reflected = true;
                        true
                    }
                    _ => false,
                };
                if !reflected {
                    *self.synthesized.entry(ReasonKey(info.reason())).or_default() += 1;
                }
            }
            EventKind::KvmNestedVmenter(_) => self.saw_nested_vmenter = true,
            EventKind::KvmEmulateInsn { insn, failed, .. } => {
                self.insn_total += 1;
                self.insn_failed += u64::from(*failed);
                let bytes = insn.as_slice();
                let failed = u64::from(*failed);
                if let Some(slot) = self.insns.get_mut(bytes) {
                    slot.count += 1;
                    slot.failed += failed;
                } else if self.insns.len() < Self::MAX_DISTINCT_INSNS {
                    self.insns.insert(bytes.into(), InsnCount { count: 1, failed });
                } else {
                    self.insn_other += 1;
                }
            }
            EventKind::KvmInjException { exception, has_error, reinjected, .. } => {
                let row = self.exceptions.entry(exception.0).or_default();
                row.count += 1;
                row.with_error_code += u64::from(*has_error);
                row.reinjected += u64::from(reinjected.unwrap_or(false));
            }
            EventKind::KvmUserspaceExit { reason, errno } => {
                let row = self.userspace.entry(reason.0).or_default();
                row.0 += 1;
                row.1 += u64::from(errno.is_some_and(|e| e != 0));
            }
            EventKind::KvmPio { write, port, size, .. } => {
                *self.pio.entry((*write, *port, *size)).or_default() += 1;
            }
            EventKind::Segment { .. } => {
                // Another capture starts: this one ended before the pending exits' entries.
                self.close_every_pending(Close::TraceEnd);
            }
            EventKind::Lost { count } => {
                let lost = self.lost_in_stream.entry(event.cpu).or_default();
                lost.markers += 1;
                match count {
                    Some(n) => lost.events += n,
                    None => lost.uncounted_markers += 1,
                }
                // Any vCPU's entry may be among the lost events (a vCPU thread migrates between
                // CPUs), so no pending exit can be paired with confidence any more.
                self.close_every_pending(Close::Lost);
            }
            EventKind::KvmCr { .. }
            | EventKind::KvmNestedVmenterFailed { .. }
            | EventKind::KvmNestedIntrVmexit { .. }
            | EventKind::KvmPageFault { .. }
            | EventKind::KvmInjVirq { .. }
            | EventKind::KvmSmmTransition { .. }
            | EventKind::KvmMsr { .. }
            | EventKind::KvmCpuid { .. }
            | EventKind::KvmMmuGetPage { .. }
            | EventKind::KvmMmuPrepareZapPage { .. }
            | EventKind::KvmMmuSyncPage { .. }
            | EventKind::KvmMmuUnsyncPage { .. }
            | EventKind::KvmMmuPagetableWalk { .. }
            | EventKind::KvmMmuPagingElement { .. }
            | EventKind::KvmMmuWalkerError { .. }
            | EventKind::KvmPmlFull { .. }
            | EventKind::Irq(_)
            | EventKind::Mmio(_)
            | EventKind::Spte(_)
            | EventKind::VmcsField(_)
            | EventKind::VmcsProbe(_)
            | EventKind::Identity(_)
            | EventKind::Context(_)
            | EventKind::Printk(_)
            | EventKind::QemuRunExit { .. }
            | EventKind::Other(_) => {}
        }
    }

    /// The pending exit of `vcpu`, or of the bare thread when the exit was recorded before the
    /// thread's vCPU was known.
    fn pending_mut(&mut self, vcpu: Actor, pid: i32) -> Option<&mut PendingExit> {
        if self.pending.is_open(vcpu) {
            self.pending.get_mut(vcpu)
        } else {
            self.pending.get_mut(Actor::Thread(pid))
        }
    }

    /// Closes every pending exit, oldest first.
    fn close_every_pending(&mut self, how: Close) {
        let mut pending: Vec<(Actor, PendingExit)> =
            self.pending.close_all().map(|(vcpu, exit)| (vcpu, *exit)).collect();
        pending.sort_by_key(|(_, exit)| exit.index);
        for (vcpu, exit) in pending {
            self.closing.close(vcpu, &exit, how);
        }
    }

    /// Closes the exits still waiting for an entry (they are counted, without a latency) and
    /// builds the report. `meta` and `read` come from the reader when there is one; `read`
    /// must be taken after the reader is exhausted.
    pub fn finish(mut self, meta: Option<&TraceMeta>, read: Option<&ReadStats>) -> StatsReport {
        self.close_pending();
        if let Some(read) = read {
            self.count_read_only(read);
        }
        let time_unit = match meta {
            Some(m) if !m.clock.is_ns() => TimeUnit::Raw,
            Some(_) | None => TimeUnit::Ns,
        };
        let mut notes = Vec::new();
        if let Some(m) = meta
            && !m.clock.is_ns()
        {
            notes.push(format!(
                "The trace clock `{}` is not in nanoseconds: every time is in its raw units.",
                m.clock
            ));
        }
        let exits = self.exit_report(&mut notes);
        for (known, &count) in KnownEvent::ALL.iter().zip(&self.known_counts) {
            if count > 0 {
                *self.events_by_name.entry(known.0.name().into()).or_default() += count;
            }
        }
        let mut events_by_name: Vec<NameCount> = self
            .events_by_name
            .iter()
            .map(|(name, &count)| NameCount { name: name.to_string(), count })
            .collect();
        events_by_name.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        let mut by_insn: Vec<InsnRow> = self
            .insns
            .iter()
            .map(|(bytes, c)| InsnRow {
                bytes: hex_bytes(bytes),
                mnemonic: mnemonic(bytes),
                count: c.count,
                failed: c.failed,
            })
            .collect();
        by_insn.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.bytes.cmp(&b.bytes)));
        StatsReport {
            schema: SCHEMA.to_owned(),
            input: meta.map(|m| InputInfo {
                name: m.input.to_string(),
                format: serde_json::to_value(m.format)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                clock: m.clock.to_string(),
                cpus: m.cpus,
                kernel: m.kernel.clone(),
                excerpt: m.excerpt,
                segments: read.map_or(0, |r| r.segments),
            }),
            time_unit,
            events_total: self.events_total,
            events_by_name,
            exits,
            emulated_instructions: EmulationReport {
                total: self.insn_total,
                failed: self.insn_failed,
                by_insn,
                other: self.insn_other,
            },
            injected_exceptions: self
                .exceptions
                .iter()
                .map(|(&vector, c)| ExceptionRow {
                    vector,
                    name: vmxray_events::codes::ExceptionVector(vector).to_string(),
                    count: c.count,
                    with_error_code: c.with_error_code,
                    reinjected: c.reinjected,
                })
                .collect(),
            userspace_exits: self
                .userspace
                .iter()
                .map(|(&code, &(count, errors))| UserspaceExitRow {
                    reason: vmxray_events::codes::UserspaceExitReason(code).to_string(),
                    code,
                    count,
                    errors,
                })
                .collect(),
            pio: self
                .pio
                .iter()
                .map(|(&(write, port, size), &count)| PioRow {
                    direction: if write { "out" } else { "in" }.to_owned(),
                    port,
                    size,
                    count,
                })
                .collect(),
            losses: self.loss_report(read),
            notes,
            vms: Vec::new(),
            host_context: None,
            kvm_stat: None,
        }
    }

    fn loss_report(&self, read: Option<&ReadStats>) -> LossReport {
        let lost_map = match read {
            Some(r) if !r.lost.is_empty() || self.lost_in_stream.is_empty() => &r.lost,
            Some(_) | None => &self.lost_in_stream,
        };
        LossReport {
            lost: lost_map
                .iter()
                .map(|(&cpu, l)| LostRow {
                    cpu,
                    markers: l.markers,
                    events: l.events,
                    uncounted_markers: l.uncounted_markers,
                })
                .collect(),
            skipped: read.map_or(0, |r| r.skipped),
            non_trace_lines: read.map_or(0, |r| r.non_trace_lines),
            problems: read.map_or_else(Vec::new, |r| crate::problem_lines(&r.problems)),
            unknown_events: read.map_or_else(Vec::new, |r| {
                r.unknown_events
                    .iter()
                    .map(|(name, &count)| NameCount { name: name.clone(), count })
                    .collect()
            }),
        }
    }

    /// Counts the events the reader counted instead of yielding them
    /// ([`ExitStats::COUNT_ONLY`]), as pushing them would have.
    fn count_read_only(&mut self, read: &ReadStats) {
        for (name, &count) in &read.counted_only {
            self.events_total += count;
            match KnownEvent::lookup("", name) {
                Some(known) => {
                    let k = known as usize;
                    if k >= self.known_counts.len() {
                        self.known_counts.resize(KnownEvent::ALL.len().max(k + 1), 0);
                    }
                    self.known_counts[k] += count;
                    if matches!(known, KnownEvent::KvmNestedVmenter | KnownEvent::KvmNestedVmrun) {
                        self.saw_nested_vmenter = true;
                    }
                }
                None => *self.events_by_name.entry(name.as_str().into()).or_default() += count,
            }
        }
    }

    fn exit_report(&self, notes: &mut Vec<String>) -> Option<ExitReport> {
        let total: u64 = self.closing.groups.iter().map(|(_, g)| g.count).sum();
        if self.saw_nested_vmenter && !self.saw_nested_vmexit {
            notes.push(
                "The trace has kvm_nested_vmenter but no kvm_nested_vmexit: L2 exits cannot be \
                 told from L1 exits (enable kvm:kvm_nested_vmexit)."
                    .to_owned(),
            );
        }
        if total == 0 {
            return None;
        }
        if !self.saw_entry {
            notes.push(
                "The trace has kvm_exit but no kvm_entry: no latency can be measured (enable \
                 kvm:kvm_entry)."
                    .to_owned(),
            );
        }
        let nested = self.saw_nested_vmexit;
        // Without nested events the level is not known: report `all`, not `L1`.
        let level_of = |level: LevelSplit| if nested { level } else { None };
        let mut finest: BTreeMap<GroupKey, Group> = BTreeMap::new();
        for (key, group) in self.closing.groups.iter() {
            let key = GroupKey { level: level_of(key.level), ..*key };
            finest.entry(key).or_default().merge(group);
        }
        let mut overall = Group::default();
        let mut by_reason: BTreeMap<ReasonKey, Group> = BTreeMap::new();
        let mut by_reason_level: BTreeMap<(ReasonKey, LevelSplit), Group> = BTreeMap::new();
        let mut by_vcpu: BTreeMap<Actor, Group> = BTreeMap::new();
        let mut by_vm: BTreeMap<VmId, Group> = BTreeMap::new();
        let mut levels = LevelTotals::default();
        for (key, group) in &finest {
            overall.merge(group);
            by_reason.entry(key.reason).or_default().merge(group);
            by_vcpu.entry(key.vcpu).or_default().merge(group);
            if let Some(vm) = key.vcpu.vm() {
                by_vm.entry(vm).or_default().merge(group);
            }
            if nested {
                by_reason_level.entry((key.reason, key.level)).or_default().merge(group);
            }
            match key.level {
                Some(Level::L2) => {
                    levels.l2 += group.count;
                    levels.l2_l0_handled += group.l0_handled;
                    levels.l2_reflected += group.reflected;
                }
                Some(Level::L1) | None => levels.l1 += group.count,
            }
        }
        let overall_time = overall.latency.sum();
        let row = |reason: Option<ReasonKey>, level: LevelSplit, vcpu: Option<Actor>, g: &Group| {
            ExitRow {
                reason: reason.map(|r| Reason::from(r.0)),
                level,
                vcpu,
                vm: None,
                count: g.count,
                percent: percent(g.count, total),
                time_percent: ratio_percent(g.latency.sum(), overall_time),
                without_latency: g.without_latency,
                l0_handled: g.l0_handled,
                reflected: g.reflected,
                latency: latency_of(&g.latency),
            }
        };
        let by_count = |a: &ExitRow, b: &ExitRow| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.reason.cmp(&b.reason))
                .then_with(|| a.level.cmp(&b.level))
        };
        let mut reason_rows: Vec<ExitRow> =
            by_reason.iter().map(|(r, g)| row(Some(*r), None, None, g)).collect();
        reason_rows.sort_by(by_count);
        let mut reason_level_rows: Vec<ExitRow> =
            by_reason_level.iter().map(|((r, l), g)| row(Some(*r), *l, None, g)).collect();
        reason_level_rows.sort_by(by_count);
        Some(ExitReport {
            total,
            with_latency: overall.latency.count(),
            without_latency: self.closing.unpaired,
            nested,
            levels: nested.then_some(levels),
            overall: row(None, None, None, &overall),
            by_reason: reason_rows,
            by_reason_level: reason_level_rows,
            by_vcpu: by_vcpu.iter().map(|(v, g)| row(None, None, Some(*v), g)).collect(),
            by_vm: if by_vm.len() > 1 {
                by_vm
                    .iter()
                    .map(|(vm, g)| ExitRow { vm: Some(*vm), ..row(None, None, None, g) })
                    .collect()
            } else {
                Vec::new()
            },
            groups: finest
                .iter()
                .map(|(k, g)| row(Some(k.reason), k.level, Some(k.vcpu), g))
                .collect(),
            synthesized_nested_exits: self
                .synthesized
                .iter()
                .map(|(reason, &count)| NameCount { name: reason.0.to_string(), count })
                .collect(),
            orphan_nested_vmexits: self.orphan_nested_vmexits,
            slowest: {
                let mut slowest: Vec<_> =
                    self.closing.slowest.iter().map(|Reverse(s)| *s).collect();
                slowest.sort_by(|a, b| b.cmp(a));
                slowest
                    .into_iter()
                    .map(|(latency, exit_ts, vcpu, reason, level)| SlowExit {
                        latency,
                        exit_ts,
                        vcpu,
                        reason: Reason::from(reason.0),
                        level: level_of(level),
                    })
                    .collect()
            },
        })
    }
}

/// Exits that L0 keeps whatever vmcs12 says (`nested_vmx_l0_wants_exit`, reference §2.3), and
/// after which a same-reason `kvm_nested_vmexit_inject` is a synthesized exit for L1 (an
/// interrupt or NMI meant for L1), not a reflection: EXTERNAL_INTERRUPT and NMI (VMX), INTR and
/// NMI (SVM).
fn l0_always_keeps(reason: ExitCode, intr: Option<IntrType>) -> bool {
    match reason {
        ExitCode::Vmx(r) => {
            r.basic() == VmxBasicReason::EXTERNAL_INTERRUPT
                || (r.basic() == VmxBasicReason::EXCEPTION_NMI && intr == Some(IntrType::Nmi))
        }
        ExitCode::Svm(c) => c == SvmExitCode::INTR || c == SvmExitCode::NMI,
        ExitCode::Raw(_) => false,
    }
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { part as f64 * 100.0 / total as f64 }
}

fn ratio_percent(part: u128, total: u128) -> f64 {
    if total == 0 { 0.0 } else { part as f64 * 100.0 / total as f64 }
}

fn latency_of(h: &LogHistogram) -> Option<Latency> {
    Some(Latency {
        count: h.count(),
        total: u64::try_from(h.sum()).unwrap_or(u64::MAX),
        min: h.min()?,
        max: h.max()?,
        mean: h.mean()?,
        stddev: h.stddev()?,
        p50: h.quantile_permille(500)?,
        p90: h.quantile_permille(900)?,
        p99: h.quantile_permille(990)?,
        p999: h.quantile_permille(999)?,
        histogram: h.bins(MAX_BINS),
    })
}

fn hex_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests;
