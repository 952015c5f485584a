//! [`Model`]: attribution of events to vCPUs, the rules, then the state transition.
//!
//! For every event, in this order:
//!
//! ```text
//!  event ──► attribute (vcpu_id, else pid→vCPU learned from events that carry vcpu_id,
//!            │          else the thread itself)
//!            ▼
//!        rules::check(pre-state, event)  ──► anomalies (data)
//!            ▼
//!        transition::apply(state, event) ──► transitions (data)
//! ```
//!
//! Rules see the state *before* the event, so each one reads "what KVM had done so far" and
//! compares it with what the event shows.

use std::fmt;

use serde::Serialize;
use vmxray_events::{Attribution, CPU_HINTS, Event, EventKind, Vcpu, Vm};

use crate::anomaly::{Actor, Anomaly, EventIndex, RuleId, RuleSet, Severity};
use crate::rules::livelock::{LoopSummary, Loops};
use crate::rules::{self, Ctx, RuleStates};
use crate::state::{EntryCause, Features, Mode, RootLoad, VcpuState};
use crate::transition;

/// How the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// The rules that report (all rules always track their state).
    pub rules: RuleSet,
    /// How many identical cycles in a row make a stuck vCPU (`livelock`; at least 2).
    pub loop_repeats: u32,
    /// The trace is an excerpt (pasted from a report, or with lines left out): a vCPU whose
    /// every event is part of one loop repeated twice is stuck too, and a rule that finds only
    /// an absence ([`RuleId::gap_explainable`]) reports at info, naming what the cut may hide.
    pub excerpt: bool,
    /// Run the state machine and the rules (the default). Without, the model only attributes
    /// events to vCPUs and notes what they reveal about the kernel: what a pass that wants
    /// statistics alone needs, at a fraction of the cost.
    pub replay: bool,
    /// Derive every VMCS field value the trace reveals into [`Step::fields`] and each vCPU's
    /// field store: what `vmxray fields` and [`crate::fields::FieldHistory`] show. Without (the
    /// default), only the fields rules read ([`crate::fields::RULE_FIELDS`]) are derived: the
    /// rules decide the same, and the model runs faster (recording five fields of nearly every
    /// exit was a quarter of its time).
    pub field_streams: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            rules: RuleSet::all(),
            loop_repeats: 3,
            excerpt: false,
            replay: true,
            field_streams: false,
        }
    }
}

impl ModelConfig {
    /// Attribution only (see [`ModelConfig::replay`]).
    pub fn attribution_only() -> Self {
        Self { replay: false, ..Self::default() }
    }

    /// Every VMCS field stream (see [`ModelConfig::field_streams`]).
    pub fn with_field_streams() -> Self {
        Self { field_streams: true, ..Self::default() }
    }
}

/// A field of a vmcs12 the trace showed (for a VMCS-field history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Vmcs12Field {
    /// GUEST_RIP (`nested_rip`).
    GuestRip,
    /// GUEST_CR3 (`guest_pgd`, nested_ept=n).
    GuestCr3,
    /// EPT_POINTER (`guest_pgd`, nested_ept=y).
    EptPointer,
    /// VM_ENTRY_INTR_INFO_FIELD (`event_inj`).
    EntryIntrInfo,
    /// GUEST_INTR_STATUS (`int_ctl`).
    GuestIntrStatus,
    /// HOST_RIP (learned from the entry after a nested exit).
    HostRip,
}

impl fmt::Display for Vmcs12Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::GuestRip => "GUEST_RIP",
            Self::GuestCr3 => "GUEST_CR3",
            Self::EptPointer => "EPT_POINTER",
            Self::EntryIntrInfo => "VM_ENTRY_INTR_INFO_FIELD",
            Self::GuestIntrStatus => "GUEST_INTR_STATUS",
            Self::HostRip => "HOST_RIP",
        })
    }
}

/// Why a vCPU's state was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// The input lost events (on any CPU: a vCPU thread migrates).
    LostEvents,
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LostEvents => "events were lost",
        })
    }
}

/// One state change, as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "transition", rename_all = "snake_case")]
pub enum Transition {
    /// The level changed.
    Mode {
        /// Before.
        from: Mode,
        /// After.
        to: Mode,
    },
    /// The actor's state was dropped; it resynchronizes from the next nested events.
    Resynchronizing {
        /// Which actor.
        actor: Actor,
        /// Why.
        reason: ResyncReason,
    },
    /// A nested VM-Enter.
    NestedEntry {
        /// vmcs12 GPA (-1 for eVMCS).
        vmptr: u64,
        /// What started it.
        cause: EntryCause,
    },
    /// A nested VM-Exit that L1 sees (reason None: silent, SMI).
    NestedExit {
        /// Reason.
        reason: Option<vmxray_events::codes::ExitCode>,
    },
    /// A late (hardware) VM-Fail unwound the entry.
    LateVmFail,
    /// A vmcs12 field value the trace showed.
    Vmcs12Field {
        /// vmcs12 GPA.
        vmptr: u64,
        /// Which field.
        field: Vmcs12Field,
        /// Its value.
        value: u64,
    },
    /// L1's CR3 became known or changed.
    L1Cr3 {
        /// The value.
        value: u64,
    },
    /// A root-level shadow page was loaded.
    RootLoaded(RootLoad),
    /// SMM entered or left.
    Smm {
        /// Entering.
        entering: bool,
    },
}

/// What one event did: borrowed from the model until the next `step`.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    /// The event's index.
    pub at: EventIndex,
    /// Who it was attributed to (None for `Lost`, which concerns every vCPU).
    pub actor: Option<Actor>,
    /// State changes.
    pub transitions: &'a [Transition],
    /// Divergences found.
    pub anomalies: &'a [Anomaly],
    /// VMCS field values the event revealed (`crate::fields`): every one with
    /// [`ModelConfig::field_streams`], else those rules read.
    pub fields: &'a [vmxray_events::vmcs::VmcsField],
}

/// Whether a rule had anything to decide in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RuleStatus {
    /// The rule was evaluated `checks` times.
    Checked {
        /// Decidable instances.
        checks: u64,
        /// Anomalies it reported.
        anomalies: u64,
    },
    /// The trace never gave the rule a decidable instance.
    NotCheckable {
        /// What the trace would have needed.
        why: &'static str,
    },
}

/// The per-trace rule summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    /// The rule.
    pub rule: RuleId,
    /// Whether it was checkable.
    #[serde(flatten)]
    pub status: RuleStatus,
}

/// What the model saw of a whole trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceSummary {
    /// Events stepped.
    pub events: u64,
    /// `Lost` markers.
    pub lost_markers: u64,
    /// Events the markers said were lost.
    pub lost_events: u64,
    /// Every vCPU's id, ordered by VM then id (a host trace lists each VM's vCPU 0).
    pub vcpus: Vec<u32>,
    /// The VMs: the VMM processes, or VMs inferred from vCPU ids running at once on different
    /// threads when the trace carries no tgid.
    pub vms: Vec<Vm>,
    /// Threads whose events could not be attributed to a vCPU.
    pub unattributed_threads: usize,
    /// What the events reveal about the kernel.
    pub features: Features,
    /// One line per enabled rule.
    pub rules: Vec<RuleSummary>,
    /// Anomalies per severity (info, warning, error, critical).
    pub by_severity: [u64; 4],
    /// Every stuck vCPU found (`livelock`), with its totals, in the order found.
    pub loops: Vec<LoopSummary>,
    /// Loops found beyond the ones kept in `loops`.
    pub loops_dropped: u64,
}

impl TraceSummary {
    /// Anomalies at or above `min`.
    pub fn count_at_least(&self, min: Severity) -> u64 {
        Severity::ALL.iter().zip(self.by_severity).filter(|(s, _)| **s >= min).map(|(_, n)| n).sum()
    }
}

/// The anomalies of one step plus per-rule counters.
#[derive(Clone, Debug)]
pub(crate) struct Findings {
    pub anomalies: Vec<Anomaly>,
    pub checks: [u64; RuleId::COUNT],
    pub reported: [u64; RuleId::COUNT],
    pub by_severity: [u64; 4],
    pub enabled: RuleSet,
    pub loops: Loops,
    /// The interrupt lines of every VM: rule state shared by all actors.
    pub irq_lines: crate::rules::level_eoi_line_asserted::Lines,
}

#[derive(Clone, Debug)]
struct Slot {
    actor: Actor,
    state: VcpuState,
    rules: RuleStates,
    last_used: u64,
}

/// Threads never seen running a vCPU (MMU notifiers, kworkers, ioctl threads) keep at most this
/// many slots; the least recently used one is recycled, so memory does not grow with the number
/// of threads a long trace shows.
pub const MAX_THREAD_SLOTS: usize = 256;

/// The replay model: feed it every event of a trace, in order, with [`Model::step`].
///
/// `Model` is `Clone`; its state is bounded (per vCPU: at most
/// [`crate::state::Vmcs12Store::CAPACITY`] vmcs12 records and a few indices per rule), so a
/// clone is a cheap snapshot whatever the trace length.
#[derive(Clone, Debug)]
pub struct Model {
    config: ModelConfig,
    next: u64,
    features: Features,
    slots: Vec<Slot>,
    /// The slot of the last event (what [`Model::state`] is asked about most).
    last_slot: usize,
    /// Per CPU (modulo [`CPU_HINTS`]), the slot its last event used.
    slot_by_cpu: [u16; CPU_HINTS],
    attribution: Attribution,
    findings: Findings,
    transitions: Vec<Transition>,
    fields: Vec<vmxray_events::vmcs::VmcsField>,
    lost_markers: u64,
    lost_events: u64,
    /// Who the last stepped event was attributed to (see [`Model::last_step`]).
    last_actor: Option<Actor>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new(ModelConfig::default())
    }
}

impl Model {
    /// A model with nothing seen yet.
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            next: 0,
            features: Features::default(),
            slots: Vec::new(),
            last_slot: 0,
            slot_by_cpu: [0; CPU_HINTS],
            attribution: Attribution::default(),
            findings: Findings {
                anomalies: Vec::new(),
                checks: [0; RuleId::COUNT],
                reported: [0; RuleId::COUNT],
                by_severity: [0; 4],
                enabled: config.rules,
                loops: Loops::default(),
                irq_lines: Default::default(),
            },
            transitions: Vec::new(),
            fields: Vec::new(),
            lost_markers: 0,
            lost_events: 0,
            last_actor: None,
        }
    }

    /// The index the next event will get.
    pub fn next_index(&self) -> EventIndex {
        EventIndex(self.next)
    }

    /// Steps one event. Never fails: a divergence is an [`Anomaly`] in the returned step.
    ///
    /// Inlined, and the work done out of line (`Model::advance`): a caller loads only the
    /// parts of the step it reads (most read the anomalies, or nothing), and does not copy
    /// slices whose lengths the step has just written (a copy that stalls on store forwarding).
    #[inline]
    pub fn step(&mut self, event: &Event) -> Step<'_> {
        self.advance(event);
        self.last_step()
    }

    /// The work of [`Model::step`]; its outcome is read with [`Model::last_step`].
    fn advance(&mut self, event: &Event) {
        let at = EventIndex(self.next);
        self.next += 1;
        self.findings.anomalies.clear();
        self.transitions.clear();
        self.fields.clear();
        transition::note_features(&mut self.features, &event.kind);

        self.last_actor = None;
        if let EventKind::Lost { count } = event.kind {
            self.lose_events(count);
            return;
        }
        if let EventKind::Segment { .. } = event.kind {
            self.start_segment();
            return;
        }

        let idx = match self.attribution.of_bound_thread(event) {
            Some(vcpu) => self.slot_index(Actor::Vcpu(vcpu), event.cpu),
            None => self.attribute_and_learn(event),
        };
        // Read back from the slot: the actor passes through no temporary (a 12-byte value
        // merged from the two paths above went through the stack and stalled every event).
        let actor = self.slots[idx].actor;
        self.last_actor = Some(actor);
        if !self.config.replay {
            return;
        }
        let slot = &mut self.slots[idx];
        transition::settle(&mut slot.state, event, &mut self.transitions);
        let all = self.config.field_streams;
        crate::fields::derive(&slot.state, actor, event, at, all, &mut self.fields);
        let mut ctx = Ctx {
            at,
            actor,
            vcpu: &slot.state,
            features: &self.features,
            config: &self.config,
            findings: &mut self.findings,
        };
        rules::check(&mut ctx, &mut slot.rules, event);
        transition::apply(&mut slot.state, &mut self.features, event, at, &mut self.transitions);
        let vmwrites = slot.state.counters.vmwrite;
        for obs in &self.fields {
            slot.state.fields.record(obs, vmwrites);
        }
    }

    /// A `Lost` marker (out of line, with the states it builds: kept off the stack frame of
    /// every step).
    #[cold]
    #[inline(never)]
    fn lose_events(&mut self, count: Option<u64>) {
        self.lost_markers += 1;
        self.lost_events += count.unwrap_or(0);
        // Lost events end every loop being followed, and hide the interrupt lines' levels.
        for l in &mut self.findings.loops.closed {
            l.ongoing = false;
        }
        self.findings.irq_lines.forget();
        for slot in &mut self.slots {
            slot.state.forget();
            slot.rules = RuleStates::default();
            self.transitions.push(Transition::Resynchronizing {
                actor: slot.actor,
                reason: ResyncReason::LostEvents,
            });
        }
    }

    /// A `Segment` marker: another capture pasted into the same input starts here (the
    /// reader's marker). Nothing the previous one showed describes it, so every vCPU starts
    /// afresh, as at the start of a trace (not resynchronizing: nothing was lost in between).
    /// One exception: a nested run a vCPU left pending when it left for userspace, which the
    /// next capture may show restored (a migration between two pasted traces). Out of line,
    /// as [`Model::lose_events`].
    #[cold]
    #[inline(never)]
    fn start_segment(&mut self) {
        self.findings.irq_lines.forget();
        for slot in &mut self.slots {
            let run_pending = rules::exit_while_run_pending::carry(&slot.state);
            slot.state = VcpuState::default();
            slot.rules = RuleStates { run_pending, ..RuleStates::default() };
        }
    }

    /// What the last [`Model::step`] did, borrowed immutably (so that the model's state can be
    /// read alongside it); before any step, an empty step at index 0.
    #[inline]
    pub fn last_step(&self) -> Step<'_> {
        Step {
            at: EventIndex(self.next.saturating_sub(1)),
            actor: self.last_actor,
            transitions: &self.transitions,
            anomalies: &self.findings.anomalies,
            fields: &self.fields,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Ends the trace: the anomalies only the whole trace shows (a vCPU of an excerpt whose
    /// every event belongs to one loop). Call once, after the last event.
    pub fn finish(&mut self) -> &[Anomaly] {
        self.findings.anomalies.clear();
        self.transitions.clear();
        self.fields.clear();
        self.last_actor = None;
        if self.config.replay && self.config.excerpt {
            for slot in &mut self.slots {
                let mut ctx = Ctx {
                    at: EventIndex(self.next.saturating_sub(1)),
                    actor: slot.actor,
                    vcpu: &slot.state,
                    features: &self.features,
                    config: &self.config,
                    findings: &mut self.findings,
                };
                rules::livelock::at_end(&mut ctx, &mut slot.rules.livelock);
            }
        }
        &self.findings.anomalies
    }

    /// Steps every event and collects the anomalies (convenience for tests and small traces).
    pub fn run<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) -> Vec<Anomaly> {
        let mut out = Vec::new();
        for event in events {
            out.extend_from_slice(self.step(event).anomalies);
        }
        out.extend_from_slice(self.finish());
        out
    }

    /// The state of one actor, if it has any event.
    #[inline]
    pub fn state(&self, actor: Actor) -> Option<&VcpuState> {
        // Most callers ask after a step, for the actor it just stepped: its slot is the last one
        // used (a scan compares each slot's actor, strided by the slots' size).
        if let Some(slot) = self.slots.get(self.last_slot)
            && slot.actor == actor
        {
            return Some(&slot.state);
        }
        self.slots.iter().find(|s| s.actor == actor).map(|s| &s.state)
    }

    /// Every actor with its state, in first-seen order.
    pub fn states(&self) -> impl Iterator<Item = (Actor, &VcpuState)> {
        self.slots.iter().map(|s| (s.actor, &s.state))
    }

    /// A copy of the whole model (state, rule windows and counters) to resume from later:
    /// `snapshot.clone().step(..)` continues exactly as the original would.
    pub fn snapshot(&self) -> Model {
        self.clone()
    }

    /// What the events revealed about the kernel so far.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The vCPU a thread runs, once an event with `vcpu_id` came from it.
    pub fn vcpu_of_thread(&self, pid: i32) -> Option<Vcpu> {
        self.attribution.vcpu_of_thread(pid)
    }

    /// The VMs seen so far (the attribution's table).
    pub fn vms(&self) -> &[Vm] {
        self.attribution.vms()
    }

    /// The attribution of events to vCPUs and VMs.
    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    /// The per-trace summary: counts, features, and for every enabled rule whether it was
    /// checkable.
    pub fn summary(&self) -> TraceSummary {
        let mut keys: Vec<Vcpu> = self
            .slots
            .iter()
            .filter_map(|s| match s.actor {
                Actor::Vcpu(v) => Some(v),
                Actor::Thread(_) => None,
            })
            .collect();
        keys.sort_unstable();
        let vcpus = keys.iter().map(|v| v.id).collect();
        let rules = RuleId::ALL
            .iter()
            .copied()
            .filter(|r| self.config.rules.contains(*r))
            .map(|rule| {
                let checks = self.findings.checks[rule.index()];
                let status = if checks == 0 {
                    RuleStatus::NotCheckable { why: rule.needs() }
                } else {
                    RuleStatus::Checked { checks, anomalies: self.findings.reported[rule.index()] }
                };
                RuleSummary { rule, status }
            })
            .collect();
        TraceSummary {
            events: self.next,
            lost_markers: self.lost_markers,
            lost_events: self.lost_events,
            vcpus,
            vms: self.attribution.vms().to_vec(),
            unattributed_threads: self
                .slots
                .iter()
                .filter(|s| matches!(s.actor, Actor::Thread(_)))
                .count(),
            features: self.features,
            rules,
            by_severity: self.findings.by_severity,
            loops: self.findings.loops.closed.clone(),
            loops_dropped: self.findings.loops.dropped,
        }
    }

    /// Anomalies reported so far at or above `min`.
    pub fn count_at_least(&self, min: Severity) -> u64 {
        self.summary().count_at_least(min)
    }

    /// Attributes an event that [`Attribution::of_bound_thread`] does not decide (out of line:
    /// most events are decided there) and returns its actor's slot.
    #[inline(never)]
    fn attribute_and_learn(&mut self, event: &Event) -> usize {
        let attributed = self.attribution.attribute(event);
        if let Some((pid, vcpu)) = attributed.newly_bound {
            // The thread's earlier unattributed events belong to this vCPU: adopt their state
            // if the vCPU has none yet.
            let has_vcpu = self.slots.iter().any(|s| s.actor == Actor::Vcpu(vcpu));
            if !has_vcpu
                && let Some(slot) = self.slots.iter_mut().find(|s| s.actor == Actor::Thread(pid))
            {
                slot.actor = Actor::Vcpu(vcpu);
            }
        }
        self.slot_index(attributed.actor, event.cpu)
    }

    /// The slot of `actor`, whose event came from `cpu`: the one the CPU's last event used (a
    /// vCPU stays on its CPU for long, while the events interleave the CPUs), else found or
    /// made.
    #[inline]
    fn slot_index(&mut self, actor: Actor, cpu: u32) -> usize {
        let now = self.next;
        let hint = cpu as usize % CPU_HINTS;
        let idx = usize::from(self.slot_by_cpu[hint]);
        if let Some(slot) = self.slots.get_mut(idx)
            && slot.actor == actor
        {
            slot.last_used = now;
            self.last_slot = idx;
            return idx;
        }
        let idx = self.find_or_add_slot(actor);
        self.slot_by_cpu[hint] = u16::try_from(idx).unwrap_or(u16::MAX);
        idx
    }

    #[inline(never)]
    fn find_or_add_slot(&mut self, actor: Actor) -> usize {
        let now = self.next;
        let fresh = || Slot {
            actor,
            state: VcpuState::default(),
            rules: RuleStates::default(),
            last_used: now,
        };
        let idx = match self.slots.iter().position(|s| s.actor == actor) {
            Some(idx) => {
                self.slots[idx].last_used = now;
                idx
            }
            None => {
                let threads = self.slots.iter().filter(|s| matches!(s.actor, Actor::Thread(_)));
                let recycle = match actor {
                    Actor::Thread(_) if threads.clone().count() >= MAX_THREAD_SLOTS => self
                        .slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| matches!(s.actor, Actor::Thread(_)))
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(i, _)| i),
                    Actor::Thread(_) | Actor::Vcpu(_) => None,
                };
                match recycle {
                    Some(i) => {
                        self.slots[i] = fresh();
                        i
                    }
                    None => {
                        self.slots.push(fresh());
                        self.slots.len() - 1
                    }
                }
            }
        };
        self.last_slot = idx;
        idx
    }
}

impl Findings {
    pub(crate) fn report(&mut self, anomaly: Anomaly) {
        if !self.enabled.contains(anomaly.rule) {
            return;
        }
        self.reported[anomaly.rule.index()] += 1;
        self.by_severity[anomaly.severity.rank()] += 1;
        self.anomalies.push(anomaly);
    }
}
