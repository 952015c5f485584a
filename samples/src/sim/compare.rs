//! The simulator against reality: per-step signatures of two traces, side by side.
//!
//! A *step* is what L0 traces for one hardware exit of one vCPU thread: the `kvm_exit` and
//! everything up to (and including) the `kvm_entry` that resumes a guest, labelled by the level
//! that exited (`L2` when the step holds a `kvm_nested_vmexit`) and the exit reason
//! (`L1 VMRESUME`, `L2 IO_INSTRUCTION`). Its *signature* is the step's events with the values
//! that differ between two guests abstracted away and the ones that describe KVM's behaviour
//! kept: which events, in what order, which flags and field relations (`kvm_entry` at the
//! `nested_rip` of the `kvm_nested_vmenter` before it, `[immediate exit]`, the inject's reason
//! equal to the hardware exit's or synthesized, a root `kvm_mmu_get_page` for the EPTP of the
//! entry, …). Two traces of the same L1 actions, one simulated and one recorded under a real
//! KVM, must then show the same signatures for the same labels.
//!
//! ```text
//!   kvm_exit VMRESUME ─┐                                   label  L1 VMRESUME
//!   kvm_nested_vmenter │ one step ──► abstract each event ──► sig    exit VMRESUME
//!   kvm_mmu_get_page   │                                           vmenter vmx nested_ept=y …
//!   kvm_entry ─────────┘                                           entry rip=nested_rip imm
//! ```
//!
//! Only what both traces can show is compared: events whose name occurs in both (a real
//! recording has the events of its recorder profile, the simulator those of its scripts), and
//! of `kvm_mmu_get_page` only root loads (those before any `kvm_page_fault` of the step; the
//! pages a fault handler walks through are recorder-profile detail the simulator leaves out).
//!
//! This is a trace comparison, not a model: it tracks nothing across steps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use vmxray_events::codes::{ExitCode, IntrInfo, IntrType, MmuPageRole};
use vmxray_events::{Event, EventKind, ExitInfo, MmuPage};

use super::{KernelVersion, Scenario};

/// A real recording under `samples/real/vmx/` and the simulated scenario that scripts the same
/// L1 behaviour (issue 13, "Fidelity, measured").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counterpart {
    /// The simulated scenario.
    pub scenario: Scenario,
    /// The real recording, relative to the workspace root.
    pub real: &'static str,
    /// The kernel whose layouts the simulator emits for the comparison.
    pub kernel: KernelVersion,
    /// Subjects (where the scenario has several) to match the real L1.
    pub subjects: u32,
    /// Why the two cannot match step by step (the setups differ), or `None`: every step label
    /// both show must then have the same signatures ([`Comparison::mismatches`] empty).
    pub not_comparable: Option<&'static str>,
}

/// Every pair compared by `examples/sim_vs_real.rs` and checked by the sample tests.
pub const COUNTERPARTS: &[Counterpart] = &[
    Counterpart {
        scenario: Scenario::SepKernel,
        real: "samples/real/vmx/l1-rr-3-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::SepKernel,
        real: "samples/real/vmx/l1-rr-3-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::SepKernelNoEpt,
        real: "samples/real/vmx/l1-noept-2-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 2,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::SepKernelNoEpt,
        real: "samples/real/vmx/l1-noept-2-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 2,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::Muen,
        real: "samples/real/vmx/l1-hlt-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::Muen,
        real: "samples/real/vmx/l1-hlt-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::MuenShadow,
        real: "samples/real/vmx/l1-hlt-shadow-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::MuenShadow,
        real: "samples/real/vmx/l1-hlt-shadow-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::MuenEpt,
        real: "samples/real/vmx/l1-hlt-ept-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::MuenEpt,
        real: "samples/real/vmx/l1-hlt-ept-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 3,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::Invept,
        real: "samples/real/vmx/l1-invept-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::Invept,
        real: "samples/real/vmx/l1-invept-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::FailedNestedEntry,
        real: "samples/real/vmx/l1-vmfail-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::FailedNestedEntry,
        real: "samples/real/vmx/l1-vmfail-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::NestedTripleFault,
        real: "samples/real/vmx/l1-triple-fault-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::NestedTripleFault,
        real: "samples/real/vmx/l1-triple-fault-6.12.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: None,
    },
    Counterpart {
        scenario: Scenario::Init,
        real: "samples/real/vmx/l1-init-6.1.dat",
        kernel: KernelVersion::V6_1,
        subjects: 1,
        not_comparable: Some(
            "the recording runs L0 with EPT and unrestricted guest and delivers INIT to a vCPU in \
             L2 (KVM synthesizes INIT_SIGNAL to L1); bug (d) needs L0 on shadow paging without \
             nesting (the simulated AP's trampoline CR0/CR3 writes exit, the real ones do not), \
             and kvm_intel ept=0 hung the two-CPU emulated host",
        ),
    },
];

/// Which level a step's exit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Events before the vCPU's first `kvm_exit`.
    Start,
    /// The exit came from L1 (or a non-nested guest).
    L1,
    /// The exit came from L2 (`kvm_nested_vmexit` follows the `kvm_exit`).
    L2,
}

/// What a step is: the level that exited, the exit reason, and what made the exit happen when
/// the trace shows it (an exit KVM forced with an immediate-exit entry; an entry asking for
/// event injection).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// The exiting level.
    pub level: Level,
    /// The exit reason as the kernel prints it (`EPT_VIOLATION`, `INVALID_STATE
    /// FAILED_VMENTRY`); empty for [`Level::Start`].
    pub reason: String,
    /// ` after [immediate exit]`, ` with event_inj`, or empty.
    pub cause: &'static str,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Level::Start => f.write_str("(before the first exit)"),
            Level::L1 => write!(f, "L1 {}{}", self.reason, self.cause),
            Level::L2 => write!(f, "L2 {}{}", self.reason, self.cause),
        }
    }
}

/// Simulated behaviours the real recordings cannot show, because the real L1 never does what
/// the simulated one does there: `(label, a token of the signature, why)`. They are listed by
/// the comparison, not counted as differences.
pub const UNOBSERVED: &[(&str, &str, &str)] = &[(
    "L2 EPT_VIOLATION",
    "inject EPT_VIOLATION",
    "the real L1 maps all of its subjects' memory in EPT12, so no EPT violation is \
         reflected to it",
)];

/// One step of one vCPU thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The vCPU thread (`common_pid`).
    pub pid: i32,
    /// The index of the step's first event in the trace.
    pub first_event: usize,
    /// The label.
    pub label: Label,
    /// The abstracted events, one token each.
    pub signature: Vec<String>,
}

impl Step {
    /// The signature on one line, tokens separated by ` → `.
    pub fn signature_line(&self) -> String {
        self.signature.join(" → ")
    }
}

/// The per-step facts an event's token may refer to.
#[derive(Default)]
struct StepContext {
    exit: Option<ExitInfo>,
    nested_rip: Option<u64>,
    guest_pgd: Option<u64>,
    back_in_l1: bool,
    faulted: bool,
    last_cr3_write: Option<u64>,
}

/// Cuts `events` into steps, keeping only events named in `vocabulary` (every event when
/// `None`).
pub fn steps(events: &[Event], vocabulary: Option<&BTreeSet<String>>) -> Vec<Step> {
    let mut open: BTreeMap<i32, (Step, StepContext)> = BTreeMap::new();
    let mut cr3_by_pid: BTreeMap<i32, u64> = BTreeMap::new();
    let mut immediate_by_pid: BTreeMap<i32, bool> = BTreeMap::new();
    let mut done = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if vocabulary.is_some_and(|v| !v.contains(e.name())) {
            continue;
        }
        if let EventKind::KvmExit(x) = &e.kind {
            if let Some((step, _)) = open.remove(&e.pid) {
                done.push(step);
            }
            let forced = immediate_by_pid.get(&e.pid).copied().unwrap_or(false);
            let step = Step {
                pid: e.pid,
                first_event: i,
                label: Label {
                    level: Level::L1,
                    reason: x.reason().to_string(),
                    cause: if forced { " after [immediate exit]" } else { "" },
                },
                signature: Vec::new(),
            };
            let ctx = StepContext {
                exit: Some(*x),
                last_cr3_write: cr3_by_pid.get(&e.pid).copied(),
                ..StepContext::default()
            };
            open.insert(e.pid, (step, ctx));
        }
        let (step, ctx) = open.entry(e.pid).or_insert_with(|| {
            let step = Step {
                pid: e.pid,
                first_event: i,
                label: Label { level: Level::Start, reason: String::new(), cause: "" },
                signature: Vec::new(),
            };
            (step, StepContext::default())
        });
        if matches!(e.kind, EventKind::KvmNestedVmexit(_)) && step.label.level == Level::L1 {
            step.label.level = Level::L2;
        }
        match &e.kind {
            EventKind::KvmEntry(entry) => {
                immediate_by_pid.insert(e.pid, entry.immediate_exit == Some(true));
            }
            EventKind::KvmNestedVmenter(n) if n.event_inj.valid() => {
                step.label.cause = " with event_inj";
            }
            _ => {}
        }
        if let EventKind::KvmCr { write: true, cr: 3, val } = e.kind {
            cr3_by_pid.insert(e.pid, val);
            ctx.last_cr3_write = Some(val);
        }
        // Repeats of one token (two unsync pages synced, three walk levels) are workload
        // detail: one token stands for a run.
        if let Some(token) = token(&e.kind, ctx)
            && step.signature.last() != Some(&token)
        {
            step.signature.push(token);
        }
    }
    done.extend(open.into_values().map(|(step, _)| step));
    done.sort_by_key(|s| s.first_event);
    done
}

/// The event's token, or `None` for an event the comparison leaves out (a non-root page).
fn token(kind: &EventKind, ctx: &mut StepContext) -> Option<String> {
    let mut t = String::new();
    match kind {
        EventKind::KvmExit(x) => {
            let _ = write!(t, "exit {}{}", x.reason(), exit_details(x));
        }
        EventKind::KvmNestedVmexit(x) => {
            let same = ctx.exit.as_ref().is_some_and(|e| same_exit(e, x));
            let _ = write!(t, "nested_vmexit {}{}", x.reason(), if same { "" } else { " ≠exit" });
        }
        EventKind::KvmNestedVmexitInject(x) => {
            let hw = ctx.exit.as_ref().is_some_and(|e| e.reason() == x.reason());
            let _ = write!(
                t,
                "inject {}{} ({})",
                x.reason(),
                inject_details(x),
                if hw { "=exit" } else { "synth" }
            );
            ctx.back_in_l1 = true;
        }
        EventKind::KvmNestedVmenter(n) => {
            let svm = n.isa == Some(vmxray_events::codes::Isa::Svm);
            let tdp = n.tdp_enabled.unwrap_or(false);
            let _ = write!(
                t,
                "vmenter {} nested_{}={}",
                if svm { "svm" } else { "vmx" },
                if svm { "npt" } else { "ept" },
                if tdp { "y" } else { "n" }
            );
            if n.is_evmcs() {
                t.push_str(" vmcs=-1");
            }
            if n.event_inj.valid() {
                let _ = write!(t, " event_inj={}", intr_class(n.event_inj));
            }
            if n.int_ctl != 0 {
                t.push_str(" int_ctl≠0");
            }
            match ctx.exit.as_ref().and_then(ExitInfo::guest_rip) {
                Some(rip) if rip == n.rip => t.push_str(" rip=exit"),
                Some(_) => t.push_str(" rip≠exit"),
                None => {}
            }
            ctx.nested_rip = Some(n.nested_rip);
            ctx.guest_pgd = n.guest_pgd;
            ctx.back_in_l1 = false;
        }
        EventKind::KvmNestedVmenterFailed { msg, err, .. } => {
            let _ = write!(t, "vmenter_failed \"{msg}\"");
            if err.0 != 0 {
                let _ = write!(t, " {err}");
            }
            // After a kvm_nested_vmenter, a failure sends L1 to HOST_RIP; before it (VMfail),
            // L1 goes on after its instruction.
            ctx.back_in_l1 = ctx.nested_rip.is_some();
        }
        EventKind::KvmEntry(entry) => {
            t.push_str("entry");
            if let Some(rip) = entry.rip {
                let _ = write!(t, " rip={}", rip_relation(rip, ctx));
            }
            if entry.immediate_exit == Some(true) {
                t.push_str(" [immediate exit]");
            }
            if let Some(intr) = entry.intr_info.filter(|i| i.valid()) {
                let _ = write!(t, " intr_info={}", intr_class(intr));
            }
        }
        EventKind::KvmMmuGetPage { page, created } => {
            if ctx.faulted {
                return None;
            }
            let _ = write!(
                t,
                "get_page {} gfn={} {}",
                role_short(page),
                gfn_relation(page.gfn, ctx),
                if *created { "new" } else { "existing" }
            );
        }
        EventKind::KvmMmuSyncPage { page } => {
            let _ = write!(t, "sync_page {}", role_short(page));
        }
        EventKind::KvmMmuUnsyncPage { page } => {
            let _ = write!(t, "unsync_page {}", role_short(page));
        }
        EventKind::KvmMmuPrepareZapPage { page } => {
            let _ = write!(t, "zap_page {}", role_short(page));
        }
        EventKind::KvmPageFault { .. } => {
            ctx.faulted = true;
            t.push_str("page_fault");
        }
        EventKind::KvmUserspaceExit { reason, errno } => match errno {
            Some(e) if *e < 0 => {
                let _ = write!(t, "userspace_exit error ({})", -i64::from(*e));
            }
            _ => {
                let _ = write!(t, "userspace_exit {reason}");
            }
        },
        EventKind::KvmInjException { exception, reinjected, .. } => {
            let _ = write!(
                t,
                "inj_exception {exception}{}",
                if *reinjected == Some(true) { " [reinjected]" } else { "" }
            );
        }
        EventKind::KvmInjVirq { reinjected, .. } => {
            let _ = write!(
                t,
                "inj_virq{}",
                if *reinjected == Some(true) { " [reinjected]" } else { "" }
            );
        }
        EventKind::KvmCr { write, cr, .. } => {
            let _ = write!(t, "cr_{} {cr}", if *write { "write" } else { "read" });
        }
        EventKind::KvmSmmTransition { entering, .. } => {
            let _ = write!(t, "smm {}", if *entering { "entering" } else { "leaving" });
        }
        // A guest page-table walk is one token: how many levels it reads is the guest's
        // page-table layout, not KVM's behaviour.
        EventKind::KvmMmuPagetableWalk { pferr, .. } => {
            let _ = write!(t, "walk pferr=0x{pferr:x}");
        }
        EventKind::KvmMmuPagingElement { .. } => return None,
        EventKind::KvmMmuWalkerError { pferr } => {
            let _ = write!(t, "walker_error pferr=0x{pferr:x}");
        }
        EventKind::KvmEmulateInsn { failed, .. } => {
            let _ = write!(t, "emulate_insn{}", if *failed { " failed" } else { "" });
        }
        other => t.push_str(other.name()),
    }
    Some(t)
}

fn same_exit(a: &ExitInfo, b: &ExitInfo) -> bool {
    a.reason() == b.reason()
        && a.info1() == b.info1()
        && a.info2() == b.info2()
        && a.intr_info() == b.intr_info()
        && a.error_code() == b.error_code()
}

/// The parts of a hardware exit that say what kind of event it was, not where the guest was.
fn exit_details(x: &ExitInfo) -> String {
    let mut s = String::new();
    if let Some(intr) = x.intr_info().filter(|i| i.valid()) {
        let _ = write!(s, " intr={}", intr_class(intr));
    }
    if let Some(idt) = x.info2().and_then(|v| u32::try_from(v).ok()).map(IntrInfo)
        && idt.valid()
    {
        let _ = write!(s, " idt={}", intr_class(idt));
    }
    if let ExitCode::Vmx(r) = x.reason() {
        let qual = x.info1().unwrap_or(0);
        match r.basic().0 {
            // CR access: which register and which access (reference §4.3).
            28 => {
                let access = ["mov-to", "mov-from", "clts", "lmsw"][((qual >> 4) & 3) as usize];
                let _ = write!(s, " cr{} {access}", qual & 0xf);
            }
            // A failed VM-entry's qualification is the entry-failure kind.
            33 | 34 if r.0 & 0x8000_0000 != 0 => {
                let _ = write!(s, " qual={qual}");
            }
            _ => {}
        }
    }
    s
}

fn inject_details(x: &ExitInfo) -> String {
    let mut s = String::new();
    if let Some(intr) = x.intr_info().filter(|i| i.valid()) {
        let _ = write!(s, " ext_int={}", intr_class(intr));
    }
    if let Some(idt) = x.info2().and_then(|v| u32::try_from(v).ok()).map(IntrInfo)
        && idt.valid()
    {
        let _ = write!(s, " idt={}", intr_class(idt));
    }
    if let ExitCode::Vmx(r) = x.reason()
        && r.0 & 0x8000_0000 != 0
    {
        let _ = write!(s, " qual={}", x.info1().unwrap_or(0));
    }
    s
}

/// An interruption-information word as its kind (`ext`, `nmi`, `#PF`, `sw 0x80`).
fn intr_class(intr: IntrInfo) -> String {
    match intr.kind() {
        IntrType::ExternalInterrupt => "ext".into(),
        IntrType::Nmi => "nmi".into(),
        IntrType::HardwareException => {
            intr.exception().map_or_else(|| format!("exc 0x{:x}", intr.vector()), |v| v.to_string())
        }
        IntrType::SoftwareInterrupt => format!("sw 0x{:x}", intr.vector()),
        IntrType::PrivilegedSoftwareException | IntrType::SoftwareException => {
            format!("swexc 0x{:x}", intr.vector())
        }
        IntrType::Reserved | IntrType::Other => format!("other 0x{:x}", intr.0),
    }
}

/// Where an entry goes, relative to the step: the `nested_rip` of its `kvm_nested_vmenter`,
/// L1's host RIP after an inject or failed entry, the exiting RIP itself, just past it.
fn rip_relation(rip: u64, ctx: &StepContext) -> String {
    if ctx.back_in_l1 {
        return "host_rip".into();
    }
    if ctx.nested_rip == Some(rip) {
        return "nested_rip".into();
    }
    if ctx.nested_rip.is_some() {
        return "≠nested_rip".into();
    }
    match ctx.exit.as_ref().and_then(ExitInfo::guest_rip) {
        Some(exit) if exit == rip => "exit".into(),
        Some(exit) if rip > exit && rip - exit <= 15 => "exit+len".into(),
        Some(_) => "elsewhere".into(),
        None => "?".into(),
    }
}

fn gfn_relation(gfn: u64, ctx: &StepContext) -> &'static str {
    if ctx.guest_pgd.is_some_and(|pgd| pgd >> 12 == gfn) {
        "pgd"
    } else if ctx.last_cr3_write.is_some_and(|cr3| cr3 >> 12 == gfn) {
        "cr3"
    } else if gfn == 0 {
        "0"
    } else {
        "other"
    }
}

/// The role bits that tell roots apart: level, direct, guest_mode, smm (when known).
fn role_short(page: &MmuPage) -> String {
    let r: MmuPageRole = page.role;
    let mut s = format!("l{}", r.level());
    if r.direct() {
        s.push_str(" direct");
    }
    if page.guest_mode() == Some(true) {
        s.push_str(" guest_mode");
    }
    if page.smm().is_some_and(|smm| smm != 0) {
        s.push_str(" smm");
    }
    s
}

fn names(events: &[Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.name().to_owned()).collect()
}

/// Every event name the simulator emits in some scenario and flavour (each run with its
/// default knobs on 6.1 and 6.14).
pub fn simulator_vocabulary() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for scenario in Scenario::ALL.iter().copied() {
        let flavours = std::iter::once(super::KvmFlavour::Fixed)
            .chain(scenario.bugs().iter().map(|b| super::KvmFlavour::Buggy(*b)));
        for kvm in flavours {
            for kernel in [KernelVersion::V6_1, KernelVersion::V6_14] {
                let config = super::SimConfig::new(scenario).kvm(kvm).kernel(kernel);
                if let Ok(run) = super::simulate(&config) {
                    out.extend(names(&run.events));
                }
            }
        }
    }
    out
}

/// The events a comparison looks at: what the simulator can emit (in any scenario) and the
/// recording holds (its recorder profile). An event the simulator emits elsewhere but not in
/// this scenario, while the recording shows it, is then a difference, not left out.
pub fn comparable_vocabulary(real: &[Event]) -> BTreeSet<String> {
    simulator_vocabulary().intersection(&names(real)).cloned().collect()
}

/// The kernel field names each event carries, per event name (a layout check: which fields
/// this kernel's format has).
pub fn field_sets(events: &[Event]) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for e in events {
        let mut names: Vec<String> =
            e.kind.kernel_fields().0.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        out.entry(e.name().to_owned()).or_default().insert(names);
    }
    out
}

/// One label of a comparison: its signatures in the simulated and the real trace, with
/// counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Signature → number of steps, simulated.
    pub sim: BTreeMap<String, usize>,
    /// Signature → number of steps, real.
    pub real: BTreeMap<String, usize>,
}

impl Row {
    /// Simulated signatures the real trace never shows for this label.
    pub fn sim_only(&self) -> Vec<&str> {
        self.sim.keys().filter(|s| !self.real.contains_key(*s)).map(String::as_str).collect()
    }

    /// Real signatures the simulation never shows for this label.
    pub fn real_only(&self) -> Vec<&str> {
        self.real.keys().filter(|s| !self.sim.contains_key(*s)).map(String::as_str).collect()
    }
}

/// Field sets per event name: (simulated, real).
pub type FieldSetPair = (BTreeSet<Vec<String>>, BTreeSet<Vec<String>>);

/// A simulated trace against a real one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// The event names compared.
    pub vocabulary: BTreeSet<String>,
    /// Simulated event names left out (the recording's profile does not record them).
    pub sim_only_events: BTreeSet<String>,
    /// Recorded event names left out (the simulator never emits them).
    pub real_only_events: BTreeSet<String>,
    /// Per event name in the vocabulary whose field sets differ: (simulated, real).
    pub layout_differences: BTreeMap<String, FieldSetPair>,
    /// Per label, the signatures on both sides.
    pub rows: BTreeMap<Label, Row>,
}

impl Comparison {
    /// Compares a simulated trace with a real one.
    pub fn new(sim: &[Event], real: &[Event]) -> Self {
        Self::with_vocabulary(sim, real, comparable_vocabulary(real))
    }

    /// Compares two traces on the events named in `vocabulary`.
    pub fn with_vocabulary(sim: &[Event], real: &[Event], vocabulary: BTreeSet<String>) -> Self {
        let sim_only_events = names(sim).difference(&vocabulary).cloned().collect();
        let real_only_events = names(real).difference(&vocabulary).cloned().collect();
        let (sim_fields, real_fields) = (field_sets(sim), field_sets(real));
        let mut layout_differences = BTreeMap::new();
        for name in &vocabulary {
            let (Some(s), Some(r)) = (sim_fields.get(name), real_fields.get(name)) else {
                continue;
            };
            if s != r {
                layout_differences.insert(name.clone(), (s.clone(), r.clone()));
            }
        }
        let mut rows: BTreeMap<Label, Row> = BTreeMap::new();
        for step in steps(sim, Some(&vocabulary)) {
            *rows
                .entry(step.label.clone())
                .or_default()
                .sim
                .entry(step.signature_line())
                .or_default() += 1;
        }
        for step in steps(real, Some(&vocabulary)) {
            *rows
                .entry(step.label.clone())
                .or_default()
                .real
                .entry(step.signature_line())
                .or_default() += 1;
        }
        Self { vocabulary, sim_only_events, real_only_events, layout_differences, rows }
    }

    /// Labels both traces have whose simulated signatures the real trace never shows (and
    /// [`UNOBSERVED`] does not explain): the simulator does something KVM does not, for an L1
    /// action both performed. The steps before the first exit are left out (a recording starts
    /// at VM creation, a simulation in the middle of a run).
    pub fn mismatches(&self) -> Vec<(&Label, Vec<&str>)> {
        self.rows
            .iter()
            .filter(|(label, row)| {
                label.level != Level::Start && !row.sim.is_empty() && !row.real.is_empty()
            })
            .filter_map(|(label, row)| {
                let only: Vec<&str> = row
                    .sim_only()
                    .into_iter()
                    .filter(|sig| unobserved(label, sig).is_none())
                    .collect();
                (!only.is_empty()).then_some((label, only))
            })
            .collect()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "compared events: {}", join(&self.vocabulary))?;
        if !self.sim_only_events.is_empty() {
            writeln!(f, "only simulated (left out): {}", join(&self.sim_only_events))?;
        }
        if !self.real_only_events.is_empty() {
            writeln!(f, "only real (left out): {}", join(&self.real_only_events))?;
        }
        for (name, (s, r)) in &self.layout_differences {
            writeln!(f, "layout of {name}: sim {s:?} / real {r:?}")?;
        }
        for (label, row) in &self.rows {
            let differs = row.sim_only().iter().any(|sig| unobserved(label, sig).is_none());
            let state = match (row.sim.is_empty(), row.real.is_empty()) {
                (false, true) => "only simulated",
                (true, false) => "only real",
                _ if !differs || label.level == Level::Start => "match",
                _ => "DIFFERS",
            };
            writeln!(f, "\n== {label} [{state}]")?;
            for sig in row.sim_only() {
                if let Some(why) = unobserved(label, sig) {
                    writeln!(f, "  (sim* not observable in the recording: {why})")?;
                }
            }
            let all: BTreeSet<&String> = row.sim.keys().chain(row.real.keys()).collect();
            for sig in all {
                let (s, r) = (row.sim.get(sig).copied(), row.real.get(sig).copied());
                let side = match (s, r) {
                    (Some(_), Some(_)) => "both",
                    (Some(_), None) if unobserved(label, sig).is_some() => "sim*",
                    (Some(_), None) => "sim ",
                    (None, _) => "real",
                };
                writeln!(
                    f,
                    "  {side} sim {:>4} real {:>4}  {sig}",
                    s.unwrap_or(0),
                    r.unwrap_or(0)
                )?;
            }
        }
        Ok(())
    }
}

/// Why the real recordings cannot show this simulated signature, if [`UNOBSERVED`] says.
pub fn unobserved(label: &Label, signature: &str) -> Option<&'static str> {
    let label = label.to_string();
    UNOBSERVED
        .iter()
        .find(|(l, token, _)| *l == label && signature.contains(token))
        .map(|(_, _, why)| *why)
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}
