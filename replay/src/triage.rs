//! Post-mortem triage: for every shutdown, triple fault, internal error or failed entry, what
//! the vCPU did just before, as data a command renders into a narrative.
//!
//! [`Triage`] runs a [`Model`] and keeps, per actor, bounded windows: the last N events, the last
//! exception-related events (injected exceptions, #PF addresses and error codes, walker errors,
//! exits carrying an exception, emulation failures), the last CR3 / root / level changes, and the
//! last anomalies. When a fatal event arrives it freezes those windows into a [`Crash`]. Memory
//! is bounded by the window sizes, not by the trace length.
//!
//! Fatal events: `kvm_userspace_exit` KVM_EXIT_SHUTDOWN / INTERNAL_ERROR / FAIL_ENTRY, `kvm_exit`
//! TRIPLE_FAULT (SVM `shutdown`) or with FAILED_VMENTRY, `kvm_nested_vmexit_inject` TRIPLE_FAULT
//! or FAILED_VMENTRY. One crash per actor per run (no `kvm_entry` between two fatal events: the
//! `kvm_exit`/inject/userspace-exit of one triple fault make one crash).

use std::collections::VecDeque;

use serde::Serialize;
use vmxray_events::codes::{
    ExceptionVector, ExitCode, SvmExitCode, UserspaceExitReason, VmxBasicReason,
};
use vmxray_events::insn::mnemonic;
use vmxray_events::{Event, EventKind};

use crate::anomaly::{Actor, Anomaly, EventIndex};
use crate::model::{MAX_THREAD_SLOTS, Model, ModelConfig, Step, TraceSummary, Transition};
use crate::rules::livelock::LoopSummary;
use crate::state::{Level, Mode, Vmcs12Record};

/// Window sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriageConfig {
    /// How many of the actor's last events a crash keeps.
    pub window: usize,
    /// How many exception links and context changes a crash keeps.
    pub links: usize,
    /// How many crashes a report keeps (the rest are counted).
    pub max_crashes: usize,
    /// The model's configuration.
    pub model: ModelConfig,
}

impl Default for TriageConfig {
    fn default() -> Self {
        Self { window: 40, links: 16, max_crashes: 32, model: ModelConfig::default() }
    }
}

/// What kind of end the vCPU met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashKind {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault (or an undeliverable exception) in the guest.
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` (emulation failure, ...).
    InternalError,
    /// `KVM_EXIT_FAIL_ENTRY`: hardware refused the VM-entry.
    FailEntry,
    /// A `kvm_exit` TRIPLE_FAULT (SVM `shutdown`).
    TripleFaultExit,
    /// L1 was given a TRIPLE_FAULT nested exit (L2 triple-faulted).
    NestedTripleFault,
    /// A VM-entry failed (`FAILED_VMENTRY` exit or nested exit).
    FailedVmentry,
    /// `KVM_RUN` returned an error (`kvm_userspace_exit: reason error (14)` is -EFAULT).
    RunError,
}

impl CrashKind {
    /// A short description.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Shutdown => "KVM_EXIT_SHUTDOWN (triple fault)",
            Self::InternalError => "KVM_EXIT_INTERNAL_ERROR",
            Self::FailEntry => "KVM_EXIT_FAIL_ENTRY (hardware refused the VM-entry)",
            Self::TripleFaultExit => "TRIPLE_FAULT exit",
            Self::NestedTripleFault => "TRIPLE_FAULT nested exit to L1 (L2 triple-faulted)",
            Self::FailedVmentry => "failed VM-entry",
            Self::RunError => "KVM_RUN failed",
        }
    }
}

/// An event of the exception chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "link", rename_all = "snake_case")]
pub enum ChainLink {
    /// `kvm_inj_exception`: KVM injected an exception into the running level.
    Injected {
        /// The event.
        at: EventIndex,
        /// The vector.
        vector: ExceptionVector,
        /// Its error code, when it has one.
        error_code: Option<u32>,
        /// Re-injected after an interrupted delivery.
        reinjected: Option<bool>,
    },
    /// `kvm_page_fault`.
    PageFault {
        /// The event.
        at: EventIndex,
        /// GPA (EPT) or CR2.
        address: u64,
        /// Error code / EPT qualification.
        error_code: u64,
        /// Guest RIP when the layout has it.
        rip: Option<u64>,
    },
    /// `kvm_mmu_walker_error`: a guest page walk failed.
    WalkerError {
        /// The event.
        at: EventIndex,
        /// PFERR bits.
        pferr: u32,
    },
    /// A `kvm_exit` (or nested exit) carrying an exception.
    ExitException {
        /// The event.
        at: EventIndex,
        /// The exit reason.
        reason: ExitCode,
        /// The vector.
        vector: ExceptionVector,
        /// Exit qualification (CR2 for #PF).
        qualification: Option<u64>,
        /// Error code.
        error_code: Option<u32>,
        /// The exit was to L1 (`kvm_nested_vmexit_inject`).
        nested: bool,
    },
    /// `kvm_nested_vmenter_failed`: a nested VM-entry check failed.
    VmenterFailed {
        /// The event.
        at: EventIndex,
        /// The failed check (a `CC()` expression, or the hardware VM-instruction error prefix).
        msg: String,
        /// The VM-instruction error number (0 for a `CC()` check).
        err: u32,
    },
    /// A `trace_printk`/`trace_marker` line in the window (developers' debug output, such as
    /// `vcpu_enter_guest: KVM_REQ_TRIPLE_FAULT`).
    Printk {
        /// The event.
        at: EventIndex,
        /// Its text.
        text: String,
    },
    /// `kvm_emulate_insn` with the failed flag.
    EmulationFailed {
        /// The event.
        at: EventIndex,
        /// RIP.
        rip: u64,
        /// Instruction bytes.
        insn: Vec<u8>,
    },
}

impl ChainLink {
    /// The event index.
    pub fn at(&self) -> EventIndex {
        match self {
            Self::Injected { at, .. }
            | Self::PageFault { at, .. }
            | Self::WalkerError { at, .. }
            | Self::ExitException { at, .. }
            | Self::VmenterFailed { at, .. }
            | Self::Printk { at, .. }
            | Self::EmulationFailed { at, .. } => *at,
        }
    }
}

/// A change of CR3, root, level or SMM before the crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ContextChange {
    /// A model transition (level, nested entry/exit, root load, L1 CR3, SMM, resync).
    Model {
        /// The event.
        at: EventIndex,
        /// What changed.
        transition: Transition,
    },
    /// `kvm_cr` write of CR0/CR3/CR4.
    CrWrite {
        /// The event.
        at: EventIndex,
        /// Which CR.
        cr: u32,
        /// The value written.
        value: u64,
        /// The level, when known.
        level: Option<Level>,
    },
    /// An emulated instruction that changes paging or descriptor tables (from
    /// `kvm_emulate_insn` bytes; narrative only, never model state).
    Emulated {
        /// The event.
        at: EventIndex,
        /// RIP.
        rip: u64,
        /// Disassembly.
        insn: String,
    },
}

impl ContextChange {
    /// The event index.
    pub fn at(&self) -> EventIndex {
        match self {
            Self::Model { at, .. } | Self::CrWrite { at, .. } | Self::Emulated { at, .. } => *at,
        }
    }
}

/// One event of the window, with its index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowEvent {
    /// Its index.
    pub at: EventIndex,
    /// The event.
    pub event: Event,
}

/// One fatal end and what led to it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Crash {
    /// What happened.
    pub kind: CrashKind,
    /// To whom.
    pub vcpu: Actor,
    /// The fatal event.
    pub at: EventIndex,
    /// Its timestamp.
    pub ts: u64,
    /// The level at the crash, when known.
    pub level: Option<Level>,
    /// The current vmcs12, when known.
    pub vmptr: Option<u64>,
    /// What the model knew of that vmcs12 (entered CR3/EPTP, nested_rip, host_rip, launch).
    pub vmcs12: Option<Vmcs12Record>,
    /// The actor's last events, oldest first, ending with the fatal event.
    pub last_events: Vec<WindowEvent>,
    /// The exception-related events before the crash, oldest first.
    pub exception_chain: Vec<ChainLink>,
    /// The last exception injected that was never delivered: no `kvm_entry` after it, or the
    /// entry that delivered it ended in a TRIPLE_FAULT exit at the same RIP (the hardware could
    /// not deliver it).
    pub undelivered: Option<ChainLink>,
    /// The fatal events of the same end after this one (a TRIPLE_FAULT exit, then the
    /// KVM_EXIT_SHUTDOWN KVM returns to userspace), oldest first.
    pub followed_by: Vec<(EventIndex, CrashKind)>,
    /// Whether the trace shows nested virtualization at all (for the level's wording).
    pub nested_seen: bool,
    /// What happened, as sentences (filled when the triage finishes, once every fatal event
    /// of this end is known).
    pub what_happened: Vec<String>,
    /// The last CR3 / root / level / SMM changes, oldest first.
    pub context_changes: Vec<ContextChange>,
    /// The actor's anomalies from the window, oldest first.
    pub anomalies: Vec<Anomaly>,
}

/// A vCPU stuck in a loop, and what that means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stuck {
    /// The loop and its totals.
    #[serde(flatten)]
    pub found: LoopSummary,
    /// What happened, as sentences.
    pub what_happened: Vec<String>,
}

/// The triage of a whole trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TriageReport {
    /// The crashes, in trace order (at most [`TriageConfig::max_crashes`]).
    pub crashes: Vec<Crash>,
    /// The vCPUs stuck in a loop (the `livelock` rule's finds), in trace order.
    pub stuck: Vec<Stuck>,
    /// Crashes beyond the kept ones.
    pub dropped_crashes: u64,
    /// The model's summary of the trace.
    pub summary: TraceSummary,
}

#[derive(Clone, Debug)]
struct Window {
    actor: Actor,
    events: VecDeque<WindowEvent>,
    chain: VecDeque<ChainLink>,
    changes: VecDeque<ContextChange>,
    anomalies: VecDeque<Anomaly>,
    last_injection: Option<ChainLink>,
    /// The injection the last `kvm_entry` delivered, and that entry's RIP, until the next exit
    /// says whether the delivery succeeded.
    delivering: Option<(ChainLink, Option<u64>)>,
    /// The last exit's reason (a `kvm_page_fault` after an EPT violation is L0's fault on a
    /// guest-physical address, not an exception of the guest).
    last_exit: Option<ExitCode>,
    entries: u64,
    crash_at_entries: Option<u64>,
    /// The crash this window's current end belongs to.
    crash_index: Option<usize>,
    last_used: EventIndex,
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    }
    q.push_back(item);
}

/// Incremental triage: [`Triage::observe`] every event after the model stepped it (a pass does
/// this), then [`Triage::finish`] with the model's summary.
#[derive(Clone, Debug)]
pub struct Triage {
    config: TriageConfig,
    windows: Vec<Window>,
    crashes: Vec<Crash>,
    dropped: u64,
}

impl Triage {
    /// A triage with nothing seen.
    pub fn new(config: TriageConfig) -> Self {
        Self { config, windows: Vec::new(), crashes: Vec::new(), dropped: 0 }
    }

    /// The model configuration this triage wants its events stepped with.
    pub fn model_config(&self) -> ModelConfig {
        self.config.model
    }

    /// Takes one event, after `model` stepped it (`step` is what the step returned).
    pub fn observe(&mut self, event: &Event, step: &Step<'_>, model: &Model) {
        let cfg = self.config;
        let at = step.at;
        let step_actor = step.actor;
        // Borrowed, each cloned only where it is kept: most events keep nothing, and copying
        // the step's lists for every event showed in profiles of `vmxray triage`.
        let (transitions, anomalies) = (step.transitions, step.anomalies);
        // A guest-state check that failed after kvm_nested_vmenter is a failed VM-entry exit to
        // L1 that KVM does not trace as kvm_nested_vmexit_inject; the model says it landed.
        let failed_entry_landed = matches!(event.kind, EventKind::KvmNestedVmenterFailed { .. })
            && transitions.iter().any(|t| {
                matches!(t, Transition::NestedExit { reason: Some(ExitCode::Vmx(r)) } if r.failed_vmentry())
            });
        let Some(actor) = step_actor else {
            for w in &mut self.windows {
                for t in transitions {
                    push_bounded(
                        &mut w.changes,
                        ContextChange::Model { at, transition: t.clone() },
                        cfg.links,
                    );
                }
            }
            return;
        };
        let state = model.state(actor);
        let level = state.and_then(|s| s.level());
        let vmptr = state.and_then(|s| s.current_vmptr);
        let fresh = || Window {
            actor,
            events: VecDeque::new(),
            chain: VecDeque::new(),
            changes: VecDeque::new(),
            anomalies: VecDeque::new(),
            last_injection: None,
            delivering: None,
            last_exit: None,
            entries: 0,
            crash_at_entries: None,
            crash_index: None,
            last_used: at,
        };
        let idx = match self.windows.iter().position(|w| w.actor == actor) {
            Some(i) => i,
            None => {
                // Same bound as the model's thread slots: recycle the least recently used
                // window of a thread that never ran a vCPU.
                let threads =
                    self.windows.iter().filter(|w| matches!(w.actor, Actor::Thread(_))).count();
                let recycle = match actor {
                    Actor::Thread(_) if threads >= MAX_THREAD_SLOTS => self
                        .windows
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| matches!(w.actor, Actor::Thread(_)))
                        .min_by_key(|(_, w)| w.last_used)
                        .map(|(i, _)| i),
                    Actor::Thread(_) | Actor::Vcpu(_) => None,
                };
                match recycle {
                    Some(i) => {
                        self.windows[i] = fresh();
                        i
                    }
                    None => {
                        self.windows.push(fresh());
                        self.windows.len() - 1
                    }
                }
            }
        };
        let w = &mut self.windows[idx];
        w.last_used = at;
        for a in anomalies {
            push_bounded(&mut w.anomalies, a.clone(), cfg.links * 2);
        }
        for t in transitions {
            let keep = match t {
                Transition::Mode { .. }
                | Transition::Resynchronizing { .. }
                | Transition::NestedEntry { .. }
                | Transition::NestedExit { .. }
                | Transition::LateVmFail
                | Transition::L1Cr3 { .. }
                | Transition::RootLoaded(_)
                | Transition::Smm { .. } => true,
                Transition::Vmcs12Field { .. } => false,
            };
            if keep {
                let change = ContextChange::Model { at, transition: t.clone() };
                push_bounded(&mut w.changes, change, cfg.links);
            }
        }
        push_bounded(&mut w.events, WindowEvent { at, event: event.clone() }, cfg.window.max(1));
        observe(w, at, event, level, cfg.links);

        let fatal_kind =
            fatal(&event.kind).or(failed_entry_landed.then_some(CrashKind::FailedVmentry));
        if let Some(kind) = fatal_kind {
            if w.crash_at_entries == Some(w.entries) {
                if let Some(c) = w.crash_index.and_then(|i| self.crashes.get_mut(i))
                    && c.followed_by.len() < 4
                {
                    c.followed_by.push((at, kind));
                }
                return;
            }
            w.crash_at_entries = Some(w.entries);
            w.crash_index = None;
            if self.crashes.len() >= cfg.max_crashes {
                self.dropped += 1;
                return;
            }
            w.crash_index = Some(self.crashes.len());
            let first = w.events.front().map_or(at, |e| e.at);
            let vmcs12 = model.state(actor).and_then(|s| s.current_record()).cloned();
            self.crashes.push(Crash {
                kind,
                vcpu: actor,
                at,
                ts: event.ts,
                level,
                vmptr,
                vmcs12,
                last_events: w.events.iter().cloned().collect(),
                exception_chain: w.chain.iter().cloned().collect(),
                undelivered: w.last_injection.clone(),
                followed_by: Vec::new(),
                what_happened: Vec::new(),
                nested_seen: model.features().nested_vmenter
                    || model.features().nested_vmexit
                    || level.is_some(),
                context_changes: w.changes.iter().cloned().collect(),
                anomalies: w.anomalies.iter().filter(|a| a.at >= first).cloned().collect(),
            });
        }
    }

    /// The report, with the summary of the model that stepped the events.
    pub fn finish(self, summary: TraceSummary) -> TriageReport {
        let mut crashes = self.crashes;
        for c in &mut crashes {
            c.what_happened = crate::story::crash_story(c);
        }
        let stuck = summary
            .loops
            .iter()
            .map(|l| Stuck { found: l.clone(), what_happened: crate::story::loop_story(l) })
            .collect();
        TriageReport { crashes, stuck, dropped_crashes: self.dropped, summary }
    }
}

/// Triage of a whole in-memory stream.
pub fn triage<'e>(
    events: impl IntoIterator<Item = &'e Event>,
    config: TriageConfig,
) -> TriageReport {
    let mut t = Triage::new(config);
    let mut model = Model::new(config.model);
    for e in events {
        model.step(e);
        t.observe(e, &model.last_step(), &model);
    }
    model.finish();
    t.finish(model.summary())
}

fn observe(w: &mut Window, at: EventIndex, event: &Event, level: Option<Level>, cap: usize) {
    let link = match &event.kind {
        EventKind::KvmInjException { exception, has_error, error_code, reinjected } => {
            let link = ChainLink::Injected {
                at,
                vector: *exception,
                error_code: has_error.then_some(*error_code),
                reinjected: *reinjected,
            };
            w.last_injection = Some(link.clone());
            Some(link)
        }
        EventKind::KvmPageFault { fault_address, error_code, guest_rip, .. } => {
            // After an EPT violation / misconfig / #NPF the fault is L0's, on a guest-physical
            // address: the guest saw no exception.
            (!w.last_exit.is_some_and(is_gpa_fault)).then_some(ChainLink::PageFault {
                at,
                address: *fault_address,
                error_code: *error_code,
                rip: *guest_rip,
            })
        }
        EventKind::KvmMmuWalkerError { pferr } => {
            Some(ChainLink::WalkerError { at, pferr: *pferr })
        }
        EventKind::KvmExit(info) | EventKind::KvmNestedVmexitInject(info) => {
            let nested = matches!(event.kind, EventKind::KvmNestedVmexitInject(_));
            if !nested {
                w.last_exit = Some(info.reason());
                // The entry before this exit delivered an injection: it failed only if the
                // hardware gave up on it (a triple fault at the RIP it was delivered at).
                if let Some((link, rip)) = w.delivering.take() {
                    let gave_up = matches!(info.reason(), ExitCode::Vmx(r)
                        if !r.failed_vmentry() && r.basic() == VmxBasicReason::TRIPLE_FAULT)
                        || info.reason() == ExitCode::Svm(SvmExitCode::SHUTDOWN);
                    if gave_up && (rip.is_none() || rip == info.guest_rip()) {
                        w.last_injection = Some(link);
                    }
                }
            }
            info.intr_info().and_then(|i| i.exception().map(|v| (i, v))).map(|(intr, vector)| {
                ChainLink::ExitException {
                    at,
                    reason: info.reason(),
                    vector,
                    qualification: info.info1(),
                    error_code: info.error_code().filter(|_| intr.error_code_valid()),
                    nested,
                }
            })
        }
        EventKind::KvmEmulateInsn { rip, insn, failed: true, .. } => {
            Some(ChainLink::EmulationFailed { at, rip: *rip, insn: insn.as_slice().to_vec() })
        }
        EventKind::KvmNestedVmenterFailed { msg, err, .. } => {
            Some(ChainLink::VmenterFailed { at, msg: msg.to_string(), err: err.0 })
        }
        EventKind::KvmEntry(e) => {
            w.entries += 1;
            w.delivering = w.last_injection.take().map(|link| (link, e.rip));
            None
        }
        EventKind::KvmCr { write: true, cr, val } if matches!(cr, 0 | 3 | 4) => {
            push_bounded(
                &mut w.changes,
                ContextChange::CrWrite { at, cr: *cr, value: *val, level },
                cap,
            );
            None
        }
        EventKind::KvmEmulateInsn { rip, insn, failed: false, .. } => {
            if let Some(text) = mnemonic(insn.as_slice()).filter(|t| changes_context(t)) {
                push_bounded(
                    &mut w.changes,
                    ContextChange::Emulated { at, rip: *rip, insn: text },
                    cap,
                );
            }
            None
        }
        EventKind::Other(o) => {
            o.print_text().map(|text| ChainLink::Printk { at, text: text.trim().to_owned() })
        }
        EventKind::Printk(p) => Some(ChainLink::Printk { at, text: p.text.trim().to_owned() }),
        EventKind::KvmCr { .. }
        | EventKind::KvmNestedVmexit(_)
        | EventKind::KvmNestedVmenter(_)
        | EventKind::KvmNestedIntrVmexit { .. }
        | EventKind::KvmInjVirq { .. }
        | EventKind::KvmUserspaceExit { .. }
        | EventKind::KvmSmmTransition { .. }
        | EventKind::KvmPio { .. }
        | EventKind::KvmMsr { .. }
        | EventKind::KvmCpuid { .. }
        | EventKind::KvmMmuGetPage { .. }
        | EventKind::KvmMmuPrepareZapPage { .. }
        | EventKind::KvmMmuSyncPage { .. }
        | EventKind::KvmMmuUnsyncPage { .. }
        | EventKind::KvmMmuPagetableWalk { .. }
        | EventKind::KvmMmuPagingElement { .. }
        | EventKind::KvmPmlFull { .. }
        | EventKind::Irq(_)
        | EventKind::Mmio(_)
        | EventKind::Spte(_)
        | EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Context(_)
        | EventKind::QemuRunExit { .. }
        | EventKind::Segment { .. }
        | EventKind::Lost { .. } => None,
    };
    if let Some(link) = link {
        push_bounded(&mut w.chain, link, cap);
    }
}

fn changes_context(text: &str) -> bool {
    text.starts_with("mov cr")
        || text.starts_with("lidt")
        || text.starts_with("lgdt")
        || text.starts_with("ltr")
        || text.starts_with("lldt")
        || text.starts_with("lmsw")
        || text == "clts"
}

/// The fatal kind of an event, if any.
#[inline]
pub fn fatal(kind: &EventKind) -> Option<CrashKind> {
    match kind {
        EventKind::KvmUserspaceExit { errno: Some(e), .. } if *e < 0 => Some(CrashKind::RunError),
        EventKind::KvmUserspaceExit { reason, .. } => match *reason {
            UserspaceExitReason::SHUTDOWN => Some(CrashKind::Shutdown),
            UserspaceExitReason::INTERNAL_ERROR => Some(CrashKind::InternalError),
            UserspaceExitReason::FAIL_ENTRY => Some(CrashKind::FailEntry),
            _ => None,
        },
        EventKind::KvmExit(info) => match info.reason() {
            ExitCode::Vmx(r) if r.failed_vmentry() => Some(CrashKind::FailedVmentry),
            ExitCode::Vmx(r) if r.basic() == VmxBasicReason::TRIPLE_FAULT => {
                Some(CrashKind::TripleFaultExit)
            }
            ExitCode::Svm(SvmExitCode::SHUTDOWN) => Some(CrashKind::TripleFaultExit),
            ExitCode::Vmx(_) | ExitCode::Svm(_) | ExitCode::Raw(_) => None,
        },
        EventKind::KvmNestedVmexitInject(info) => match info.reason() {
            ExitCode::Vmx(r) if r.failed_vmentry() => Some(CrashKind::FailedVmentry),
            ExitCode::Vmx(r) if r.basic() == VmxBasicReason::TRIPLE_FAULT => {
                Some(CrashKind::NestedTripleFault)
            }
            ExitCode::Svm(SvmExitCode::SHUTDOWN) => Some(CrashKind::NestedTripleFault),
            ExitCode::Vmx(_) | ExitCode::Svm(_) | ExitCode::Raw(_) => None,
        },
        // L0's view of L2: the hardware refused the entry into vmcs02.
        EventKind::KvmNestedVmexit(info) => match info.reason() {
            ExitCode::Vmx(r) if r.failed_vmentry() => Some(CrashKind::FailedVmentry),
            ExitCode::Vmx(_) | ExitCode::Svm(_) | ExitCode::Raw(_) => None,
        },
        EventKind::KvmEntry(_)
        | EventKind::KvmCr { .. }
        | EventKind::KvmNestedVmenter(_)
        | EventKind::KvmNestedVmenterFailed { .. }
        | EventKind::KvmNestedIntrVmexit { .. }
        | EventKind::KvmPageFault { .. }
        | EventKind::KvmInjException { .. }
        | EventKind::KvmInjVirq { .. }
        | EventKind::KvmEmulateInsn { .. }
        | EventKind::KvmSmmTransition { .. }
        | EventKind::KvmPio { .. }
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
        | EventKind::Segment { .. }
        | EventKind::Lost { .. }
        | EventKind::Other(_) => None,
    }
}

/// A fault on a guest-physical address, taken and handled by L0 (TDP).
fn is_gpa_fault(reason: ExitCode) -> bool {
    match reason {
        ExitCode::Vmx(r) => {
            !r.failed_vmentry()
                && matches!(
                    r.basic(),
                    VmxBasicReason::EPT_VIOLATION | VmxBasicReason::EPT_MISCONFIG
                )
        }
        ExitCode::Svm(c) => c == SvmExitCode::NPF,
        ExitCode::Raw(_) => false,
    }
}

/// Whether `mode` is in L2 (for narratives).
pub fn in_l2(mode: Mode) -> bool {
    mode.level() == Some(Level::L2)
}
