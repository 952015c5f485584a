//! What the model established about a trace, as data: per vCPU the levels it saw run, the nested
//! VM-Enters and VM-Exits and what caused them, the vmcs12s with what the trace showed of each,
//! L1's CR3, the roots loaded, SMM and resynchronisations; per rule how many instances it
//! decided. `vmxray replay --explain` prints it, so that "no anomaly" reads as "checked this
//! much" rather than "understood nothing".
//!
//! An [`Explainer`] watches the steps of a run ([`Explainer::observe`]) and, at the end, reads
//! the model's final state ([`Explainer::finish`]). It keeps a few counters per actor and at
//! most [`MAX_VMCS12`] vmcs12 addresses, whatever the trace's length.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use serde::Serialize;
use vmxray_events::{Event, EventKind};

use crate::anomaly::Actor;
use crate::model::{Model, RuleStatus, Step, Transition};
use crate::state::{EntryCause, Level, Mode};

/// The most vmcs12 addresses listed per vCPU (the rest are counted).
pub const MAX_VMCS12: usize = 16;

/// Nested VM-Enters by cause, in [`CAUSES`] order.
const CAUSES: [EntryCause; 7] = [
    EntryCause::Vmlaunch,
    EntryCause::Vmresume,
    EntryCause::Rsm,
    EntryCause::Restore,
    EntryCause::Inferred,
    EntryCause::Unattributed,
    EntryCause::Unexplained,
];

fn cause_index(c: EntryCause) -> usize {
    CAUSES.iter().position(|x| *x == c).unwrap_or(CAUSES.len() - 1)
}

/// What one vCPU's events established.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VcpuFacts {
    /// The vCPU (or thread), as reports name it.
    pub actor: String,
    /// The vCPU id and its VM's index in the summary's VMs (None for a thread).
    pub vcpu_id: Option<u32>,
    /// See `vcpu_id`.
    pub vm: Option<u32>,
    /// Events attributed to it.
    pub events: u64,
    /// `kvm_exit`s.
    pub exits: u64,
    /// `kvm_entry`s into L1 (or a non-nested guest) and into L2, as far as the level was known.
    pub entries_l1: u64,
    /// See `entries_l1`.
    pub entries_l2: u64,
    /// `kvm_entry`s while the level was not established.
    pub entries_unknown_level: u64,
    /// Nested VM-Enters by cause: (cause, count), the causes that occurred.
    pub nested_entries: Vec<(String, u64)>,
    /// Nested VM-Exits L1 saw (`kvm_nested_vmexit_inject`).
    pub nested_exits: u64,
    /// Silent nested exits (SMI taken in L2).
    pub silent_exits: u64,
    /// Late VM-Fails that unwound an entry.
    pub late_vmfails: u64,
    /// The vmcs12s entered, with what the model knows of each at the end.
    pub vmcs12: Vec<Vmcs12Facts>,
    /// vmcs12s beyond [`MAX_VMCS12`].
    pub vmcs12_more: u64,
    /// L1's CR3 at the end, and how many times it became known or changed.
    pub l1_cr3: Option<u64>,
    /// See `l1_cr3`.
    pub l1_cr3_changes: u64,
    /// Roots loaded for L1 (role.guest_mode 0) and for L2.
    pub roots_l1: u64,
    /// See `roots_l1`.
    pub roots_l2: u64,
    /// SMM entries and exits.
    pub smm_transitions: u64,
    /// Times the state was dropped (lost events, a reset the model could not follow).
    pub resyncs: u64,
}

/// What the trace showed of one vmcs12.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Vmcs12Facts {
    /// Its GPA (all ones: an eVMCS).
    pub vmptr: u64,
    /// Entered through SVM.
    pub svm: bool,
    /// Launch state (`unknown`, `clear`, `launched`).
    pub launch: String,
    /// Nested EPT at the last entry.
    pub nested_ept: Option<bool>,
    /// EPT_POINTER, GUEST_CR3, GUEST_RIP and HOST_RIP as last seen.
    pub eptp: Option<u64>,
    /// See `eptp`.
    pub guest_cr3: Option<u64>,
    /// See `eptp`.
    pub guest_rip: Option<u64>,
    /// See `eptp`.
    pub host_rip: Option<u64>,
}

/// How one rule fared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleFacts {
    /// The rule.
    pub rule: &'static str,
    /// Instances decided (0: not checkable on this trace).
    pub checks: u64,
    /// Anomalies it reported.
    pub anomalies: u64,
}

/// What the model established about a whole trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Per vCPU, in first-seen order.
    pub vcpus: Vec<VcpuFacts>,
    /// Per rule.
    pub rules: Vec<RuleFacts>,
    /// Stuck vCPUs found.
    pub loops: u64,
    /// The loop detector's settings: cycles of up to `max_period` events, `repeats` times.
    pub loop_max_period: usize,
    /// See `loop_max_period`.
    pub loop_repeats: u32,
}

#[derive(Clone, Debug, Default)]
struct Counts {
    events: u64,
    exits: u64,
    entries: [u64; 3],
    causes: [u64; CAUSES.len()],
    nested_exits: u64,
    silent_exits: u64,
    late_vmfails: u64,
    vmcs12: Vec<u64>,
    vmcs12_more: u64,
    l1_cr3_changes: u64,
    roots: [u64; 2],
    smm: u64,
    resyncs: u64,
}

/// Collects an [`Explanation`] from a run's steps.
#[derive(Clone, Debug, Default)]
pub struct Explainer {
    actors: Vec<(Actor, Counts)>,
    index: HashMap<Actor, usize>,
}

impl Explainer {
    /// A collector with nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    fn counts(&mut self, actor: Actor) -> &mut Counts {
        let i = *self.index.entry(actor).or_insert_with(|| {
            self.actors.push((actor, Counts::default()));
            self.actors.len() - 1
        });
        &mut self.actors[i].1
    }

    /// One stepped event; `mode_after` is its actor's level after the step.
    pub fn observe(&mut self, event: &Event, step: &Step<'_>, mode_after: Option<Mode>) {
        for t in step.transitions {
            if let Transition::Resynchronizing { actor, .. } = t {
                self.counts(*actor).resyncs += 1;
            }
        }
        let Some(actor) = step.actor else { return };
        let c = self.counts(actor);
        c.events += 1;
        match &event.kind {
            EventKind::KvmExit(_) => c.exits += 1,
            EventKind::KvmEntry(_) => {
                let i = match mode_after.and_then(Mode::level) {
                    Some(Level::L1) => 0,
                    Some(Level::L2) => 1,
                    None => 2,
                };
                c.entries[i] += 1;
            }
            _ => {}
        }
        for t in step.transitions {
            match t {
                Transition::NestedEntry { vmptr, cause } => {
                    c.causes[cause_index(*cause)] += 1;
                    if !c.vmcs12.contains(vmptr) {
                        if c.vmcs12.len() < MAX_VMCS12 {
                            c.vmcs12.push(*vmptr);
                        } else {
                            c.vmcs12_more += 1;
                        }
                    }
                }
                Transition::NestedExit { reason: Some(_) } => c.nested_exits += 1,
                Transition::NestedExit { reason: None } => c.silent_exits += 1,
                Transition::LateVmFail => c.late_vmfails += 1,
                Transition::L1Cr3 { .. } => c.l1_cr3_changes += 1,
                Transition::RootLoaded(r) => c.roots[usize::from(r.role.guest_mode())] += 1,
                Transition::Smm { .. } => c.smm += 1,
                Transition::Mode { .. }
                | Transition::Resynchronizing { .. }
                | Transition::Vmcs12Field { .. } => {}
            }
        }
    }

    /// The explanation, reading the model's final state for what each vmcs12 holds.
    pub fn finish(self, model: &Model) -> Explanation {
        let summary = model.summary();
        let vcpus = self
            .actors
            .into_iter()
            .map(|(actor, c)| {
                let state = model.state(actor);
                let vmcs12 = c
                    .vmcs12
                    .iter()
                    .map(|&vmptr| {
                        let rec = state.and_then(|s| s.vmcs12.get(vmptr));
                        Vmcs12Facts {
                            vmptr,
                            svm: rec.is_some_and(|r| r.svm),
                            launch: rec.map_or("unknown".into(), |r| r.launch.to_string()),
                            nested_ept: rec.and_then(|r| r.nested_ept),
                            eptp: rec.and_then(|r| r.eptp).map(|o| o.value),
                            guest_cr3: rec.and_then(|r| r.l2_cr3()),
                            guest_rip: rec.and_then(|r| r.nested_rip).map(|o| o.value),
                            host_rip: rec.and_then(|r| r.host_rip).map(|o| o.value),
                        }
                    })
                    .collect();
                let (vcpu_id, vm) = match actor {
                    Actor::Vcpu(v) => (Some(v.id), Some(v.vm.0)),
                    Actor::Thread(_) => (None, None),
                };
                VcpuFacts {
                    actor: actor.to_string(),
                    vcpu_id,
                    vm,
                    events: c.events,
                    exits: c.exits,
                    entries_l1: c.entries[0],
                    entries_l2: c.entries[1],
                    entries_unknown_level: c.entries[2],
                    nested_entries: CAUSES
                        .iter()
                        .zip(c.causes)
                        .filter(|(_, n)| *n > 0)
                        .map(|(cause, n)| (cause.to_string(), n))
                        .collect(),
                    nested_exits: c.nested_exits,
                    silent_exits: c.silent_exits,
                    late_vmfails: c.late_vmfails,
                    vmcs12,
                    vmcs12_more: c.vmcs12_more,
                    l1_cr3: state.and_then(|s| s.l1_cr3).map(|o| o.value),
                    l1_cr3_changes: c.l1_cr3_changes,
                    roots_l1: c.roots[0],
                    roots_l2: c.roots[1],
                    smm_transitions: c.smm,
                    resyncs: c.resyncs,
                }
            })
            .collect();
        let rules = summary
            .rules
            .iter()
            .map(|r| {
                let (checks, anomalies) = match r.status {
                    RuleStatus::Checked { checks, anomalies } => (checks, anomalies),
                    RuleStatus::NotCheckable { .. } => (0, 0),
                };
                RuleFacts { rule: r.rule.name(), checks, anomalies }
            })
            .collect();
        Explanation {
            vcpus,
            rules,
            loops: summary.loops.len() as u64 + summary.loops_dropped,
            loop_max_period: crate::rules::livelock::MAX_PERIOD,
            loop_repeats: model.config().loop_repeats,
        }
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

impl fmt::Display for Explanation {
    /// The text `vmxray replay --explain` prints (indented two spaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  what the model established:")?;
        for v in &self.vcpus {
            if v.vcpu_id.is_none() && v.exits + v.entries_l1 + v.entries_l2 == 0 {
                // A thread whose events named no vCPU (an I/O thread, a vCPU thread before
                // its first entry): nothing was established about it.
                writeln!(f, "    {}: {} events, no vCPU activity", v.actor, v.events)?;
                continue;
            }
            writeln!(f, "    {}: {} events, {} exits", v.actor, v.events, v.exits)?;
            let levels = match (v.entries_l1 > 0, v.entries_l2 > 0) {
                (_, true) => "L1 and L2",
                (true, false) => "L1 only (no L2 ran)",
                (false, false) => "not established",
            };
            let mut line = format!(
                "levels: {levels} ({} entries into L1, {} into L2",
                v.entries_l1, v.entries_l2
            );
            if v.entries_unknown_level > 0 {
                let _ = write!(line, ", {} before the level was known", v.entries_unknown_level);
            }
            writeln!(f, "      {line})")?;
            if !v.nested_entries.is_empty() || v.nested_exits > 0 {
                let causes: Vec<String> =
                    v.nested_entries.iter().map(|(c, n)| format!("{n} {c}")).collect();
                let total: u64 = v.nested_entries.iter().map(|(_, n)| n).sum();
                writeln!(
                    f,
                    "      nested: {total} VM-Enters ({}), {} VM-Exits reflected to L1, {} silent (SMI), {} late VM-Fails",
                    if causes.is_empty() { "none".to_owned() } else { causes.join(", ") },
                    v.nested_exits,
                    v.silent_exits,
                    v.late_vmfails
                )?;
            }
            for r in &v.vmcs12 {
                let mut line = format!(
                    "{} {}: {}",
                    if r.svm { "vmcb12" } else { "vmcs12" },
                    if r.vmptr == u64::MAX { "eVMCS".to_owned() } else { hex(r.vmptr) },
                    r.launch
                );
                match r.nested_ept {
                    Some(true) => line.push_str(", nested EPT/NPT"),
                    Some(false) => line.push_str(", shadow paging of L2"),
                    None => {}
                }
                for (name, value) in [
                    ("EPTP", r.eptp),
                    ("L2 CR3", r.guest_cr3),
                    ("GUEST_RIP", r.guest_rip),
                    ("HOST_RIP", r.host_rip),
                ] {
                    if let Some(value) = value {
                        let _ = write!(line, ", {name} {}", hex(value));
                    }
                }
                writeln!(f, "      {line}")?;
            }
            if v.vmcs12_more > 0 {
                writeln!(f, "      ({} more vmcs12s)", v.vmcs12_more)?;
            }
            match v.l1_cr3 {
                Some(cr3) => writeln!(
                    f,
                    "      L1 CR3: {} (became known or changed {} times)",
                    hex(cr3),
                    v.l1_cr3_changes
                )?,
                None => writeln!(f, "      L1 CR3: not shown by the trace")?,
            }
            if v.roots_l1 + v.roots_l2 > 0 {
                writeln!(
                    f,
                    "      MMU roots loaded: {} for L1, {} for L2",
                    v.roots_l1, v.roots_l2
                )?;
            }
            if v.smm_transitions > 0 {
                writeln!(f, "      SMM: {} transitions", v.smm_transitions)?;
            }
            if v.resyncs > 0 {
                writeln!(
                    f,
                    "      resynchronised {} times (state dropped after lost events)",
                    v.resyncs
                )?;
            }
        }
        let checked: Vec<&RuleFacts> = self.rules.iter().filter(|r| r.checks > 0).collect();
        writeln!(f, "  rules decided ({} of {}):", checked.len(), self.rules.len())?;
        for r in checked {
            writeln!(
                f,
                "    {:<30} {:>10} instances, {} anomalies",
                r.rule, r.checks, r.anomalies
            )?;
        }
        writeln!(
            f,
            "  loops: {} stuck vCPUs (every vCPU's exits searched for a cycle of up to {} events repeated {} times)",
            self.loops, self.loop_max_period, self.loop_repeats
        )
    }
}
