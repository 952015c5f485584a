//! **livelock** — a vCPU stuck in a cycle of events that repeats with no progress.
//!
//! **KVM behaviour.** Whatever KVM does on a vCPU, the next round must differ: a fault it fixed
//! does not recur at the same RIP and address, an interrupt it delivered is not re-injected, an
//! exception the guest handled is not injected again at the same place, `KVM_RUN` does not keep
//! failing. Reports on the kvm list show each of these loops: the same EPT violation / `#NPF`
//! at one RIP and GPA with the pending interrupt re-injected every round (the 6.1 mmu_seq
//! sign-extension hang, 2023), a `#GP` re-injected forever by the VMware-backdoor interception
//! (2019), `KVM_RUN` returning EFAULT after the same EPT violation (gVisor, 2021).
//!
//! **Sequence matched.** Each vCPU's events are reduced to signatures (exit reason, RIP,
//! qualification and interruption info; faulting address; injected vector; userspace exit;
//! emulated RIP; entry RIP; root gfn; nested entry and reflected exit), leaving out
//! asynchronous exits (external interrupt, preemption timer) and the entry that follows them.
//! The shortest cycle of up to [`MAX_PERIOD`] signatures that repeats
//! [`ModelConfig::loop_repeats`](crate::ModelConfig) times in a row (3; 2 in an excerpt) is a
//! loop. It is reported once, when it reaches that count, if it contains something that cannot
//! be progress:
//!
//! | kind | what the cycle holds |
//! |---|---|
//! | KVM_RUN error loop | a `kvm_userspace_exit` with an error (EFAULT …) |
//! | page-fault livelock | a fault exit (EPT violation, `#PF`, `#NPF`) that no emulation follows, the guest resuming at the faulting RIP; when every fault is on a guest paging structure and the trace shows no faulting address, more rounds than the five levels of a page walk |
//! | exception-delivery loop | an exception KVM injects every round |
//! | interrupt re-injection loop | an interrupt re-injected every round |
//! | EOI loop | a `KVM_EXIT_IOAPIC_EOI` every round, with only interrupt exits besides or the EOIed vector raised again |
//! | level-triggered interrupt storm | the guest EOIs a level-triggered vector and it is raised again (`kvm_eoi`, `kvm_apic_accept_irq`) every round |
//!
//! A cycle of completed instructions (the same port I/O or MMIO access in a guest loop) is the
//! guest's own loop and is not reported. The totals of every loop (repeats, time) are in the
//! trace summary ([`crate::LoopSummary`]).

use vmxray_events::codes::{ExitCode, IntrInfo, SvmExitCode, UserspaceExitReason, VmxBasicReason};
use vmxray_events::irq::IrqEvent;
use vmxray_events::{Entry, Event, EventKind, ExitInfo};

use super::{Ctx, hex};
use crate::anomaly::{Actor, EventIndex, RuleId, Severity};

const RULE: RuleId = RuleId::Livelock;

/// The longest cycle looked for, in signatures.
pub const MAX_PERIOD: usize = 12;

/// One event, reduced to what must repeat for a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
enum Sig {
    #[default]
    None,
    /// `kvm_exit` (`nested`: `kvm_nested_vmexit`, L2's exit seen by L0).
    /// `vectoring`: the event whose delivery caused the exit (VMX IDT-vectoring information,
    /// `info2`; SVM `exit_int_info`), 0 when none.
    Exit {
        reason: ExitCode,
        rip: Option<u64>,
        qual: Option<u64>,
        intr: u32,
        vectoring: u32,
        nested: bool,
    },
    /// `kvm_page_fault`.
    Fault { address: u64, error_code: u64 },
    /// `kvm_entry`.
    Entry { rip: Option<u64>, immediate: bool },
    /// `kvm_inj_exception`.
    InjException { vector: u8, error_code: Option<u32> },
    /// `kvm_inj_virq`.
    InjVirq { vector: u32, reinjected: bool },
    /// `kvm_userspace_exit`.
    Userspace { reason: u32, errno: i32 },
    /// `kvm_emulate_insn`.
    Emulate { rip: u64, failed: bool },
    /// `kvm_nested_vmexit_inject`.
    Reflect { reason: ExitCode, qual: Option<u64> },
    /// `kvm_nested_vmenter`.
    Vmenter { vmcs: u64, rip: u64 },
    /// `kvm_mmu_get_page` of a root.
    Root { gfn: u64, created: bool },
    /// `kvm_cr` write.
    Cr { cr: u32, val: u64 },
    /// `kvm_pio`.
    Pio { port: u32, write: bool },
    /// `kvm_msr`.
    Msr { index: u32, write: bool, exception: bool },
    /// `kvm_eoi` / `kvm_pv_eoi`: the guest ended the interrupt `vector`.
    Eoi { vector: i32 },
    /// `kvm_apic_accept_irq`: `vector` raised at the local APIC (`level`-triggered or edge).
    Raise { vector: u8, level: bool },
}

/// What a stuck cycle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopKind {
    /// `KVM_RUN` fails the same way every round.
    RunError,
    /// A fault exit that is never fixed.
    PageFault,
    /// The same exception injected every round.
    ExceptionDelivery,
    /// The same interrupt re-injected every round.
    InterruptReinjection,
    /// An EOI exit to userspace every round and nothing but interrupts besides, or the EOI
    /// raising the same level-triggered interrupt again.
    Eoi,
    /// Each EOI of a level-triggered interrupt raises it again: the line is never lowered.
    InterruptStorm,
}

impl LoopKind {
    /// How reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::RunError => "KVM_RUN error loop",
            Self::PageFault => "page-fault livelock",
            Self::ExceptionDelivery => "exception-delivery loop",
            Self::InterruptReinjection => "interrupt re-injection loop",
            Self::Eoi => "EOI loop",
            Self::InterruptStorm => "level-triggered interrupt storm",
        }
    }
}

/// A loop found on one vCPU, with its totals so far.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoopSummary {
    /// The vCPU.
    pub vcpu: Actor,
    /// What kind of loop.
    pub kind: LoopKind,
    /// The cycle, one line per signature, as a report spells it.
    pub cycle: Vec<String>,
    /// Complete cycles seen.
    pub repeats: u64,
    /// The first event of the first cycle.
    pub first: EventIndex,
    /// The last event of the loop seen.
    pub last: EventIndex,
    /// Timestamps of those two events (trace clock units).
    pub first_ts: u64,
    /// See `first_ts`.
    pub last_ts: u64,
    /// Whether the trace ended while the vCPU was still in the loop.
    pub ongoing: bool,
}

/// The loop being followed: its period and its entry in [`Loops::closed`].
#[derive(Clone, Copy, Debug)]
struct Active {
    period: usize,
    index: usize,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    /// The last signatures, newest at `(head + MAX_PERIOD - 1) % MAX_PERIOD`.
    ring: [Sig; MAX_PERIOD],
    /// Their fingerprints ([`fingerprint`]), in a ring written backwards: the newest at
    /// `fp_head`, the one `p` back at `(fp_head + p - 1) % MAX_PERIOD`. Compared all twelve at
    /// once, they decide a repeat; one rotation turns the mask of equal slots into a mask by
    /// period (no twelve-word shift per event).
    fp: [u64; MAX_PERIOD],
    fp_head: usize,
    /// The event of each signature in `ring`, and its timestamp.
    at: [(EventIndex, u64); MAX_PERIOD],
    head: usize,
    len: usize,
    /// `run[p - 1]`: how many of the newest signatures equal the one `p` before them.
    run: [u32; MAX_PERIOD],
    /// Where the run of period `p` began (the first signature of its first cycle).
    run_start: [(EventIndex, u64); MAX_PERIOD],
    /// The entry after an asynchronous exit is left out with it.
    skip_entry: bool,
    /// Signatures seen on this vCPU.
    seen: u64,
    /// Bit `p - 1`: the current run of period `p` was classified as progress (the guest's own
    /// loop). Its cycle cannot change while the run lasts, so it is not classified again.
    progress: u16,
    /// Bit `p - 1`: `run[p - 1]` is not 0.
    running: u16,
    active: Option<Active>,
}

impl State {
    /// The ring slot `back` signatures ago (1 is the newest), `back` in 1..=MAX_PERIOD.
    fn slot(&self, back: usize) -> usize {
        let i = self.head + MAX_PERIOD - back;
        if i >= MAX_PERIOD { i - MAX_PERIOD } else { i }
    }

    fn sig_back(&self, back: usize) -> Sig {
        self.ring[self.slot(back)]
    }

    fn at_back(&self, back: usize) -> (EventIndex, u64) {
        self.at[self.slot(back)]
    }
}

/// The loops the model has closed (bounded) and counts of those it had to drop.
#[derive(Clone, Debug, Default)]
pub(crate) struct Loops {
    pub closed: Vec<LoopSummary>,
    pub dropped: u64,
}

/// The most closed loops kept for the summary.
const MAX_LOOPS: usize = 256;

fn exit_sig(info: &ExitInfo, nested: bool) -> Option<Sig> {
    if is_asynchronous(info.reason()) {
        return None;
    }
    let intr = info.intr_info().map_or(0, |i| i.0);
    let vectoring = match info.reason() {
        ExitCode::Vmx(r) if !r.failed_vmentry() => {
            info.info2().map_or(0, |v| u32::try_from(v).unwrap_or(0))
        }
        ExitCode::Svm(_) => intr,
        ExitCode::Vmx(_) | ExitCode::Raw(_) => 0,
    };
    Some(Sig::Exit {
        reason: info.reason(),
        rip: info.guest_rip(),
        qual: info.info1(),
        intr,
        vectoring: if vectoring & 0x8000_0000 != 0 { vectoring } else { 0 },
        nested,
    })
}

fn is_asynchronous(reason: ExitCode) -> bool {
    match reason {
        ExitCode::Vmx(r) => {
            !r.failed_vmentry()
                && matches!(
                    r.basic(),
                    VmxBasicReason::EXTERNAL_INTERRUPT | VmxBasicReason::PREEMPTION_TIMER
                )
        }
        ExitCode::Svm(c) => matches!(c, SvmExitCode::INTR),
        ExitCode::Raw(_) => false,
    }
}

fn is_fault(reason: ExitCode) -> bool {
    match reason {
        ExitCode::Vmx(r) => !r.failed_vmentry() && r.basic() == VmxBasicReason::EPT_VIOLATION,
        ExitCode::Svm(c) => matches!(c, SvmExitCode::NPF | SvmExitCode::EXCP_PF),
        ExitCode::Raw(_) => false,
    }
}

/// The signature of `event` with its fingerprint, or `None` when it does not take part in
/// loops. Fingerprinted in each arm, where the variant is known (one dispatch per event).
fn signature(st: &mut State, event: &Event) -> Option<(Sig, u64)> {
    let sig = match &event.kind {
        EventKind::KvmExit(info) => match exit_sig(info, false) {
            Some(s) => keyed(s),
            None => {
                st.skip_entry = true;
                return None;
            }
        },
        EventKind::KvmNestedVmexit(info) => keyed(exit_sig(info, true)?),
        EventKind::KvmEntry(e) => {
            if std::mem::take(&mut st.skip_entry) {
                return None;
            }
            keyed(entry_sig(e))
        }
        EventKind::KvmPageFault { fault_address, error_code, .. } => {
            keyed(Sig::Fault { address: *fault_address, error_code: *error_code })
        }
        EventKind::KvmInjException { exception, has_error, error_code, .. } => {
            keyed(Sig::InjException {
                vector: exception.0,
                error_code: has_error.then_some(*error_code),
            })
        }
        EventKind::KvmInjVirq { vector, reinjected, .. } => {
            keyed(Sig::InjVirq { vector: *vector, reinjected: reinjected.unwrap_or(false) })
        }
        EventKind::KvmUserspaceExit { reason, errno } => {
            keyed(Sig::Userspace { reason: reason.0, errno: errno.unwrap_or(0) })
        }
        EventKind::KvmEmulateInsn { rip, failed, .. } => {
            keyed(Sig::Emulate { rip: *rip, failed: *failed })
        }
        EventKind::KvmNestedVmexitInject(info) => {
            keyed(Sig::Reflect { reason: info.reason(), qual: info.info1() })
        }
        EventKind::KvmNestedVmenter(v) => keyed(Sig::Vmenter { vmcs: v.vmcs, rip: v.nested_rip }),
        EventKind::KvmMmuGetPage { page, created } => {
            keyed(Sig::Root { gfn: page.gfn, created: *created })
        }
        EventKind::KvmCr { write: true, cr, val } => keyed(Sig::Cr { cr: *cr, val: *val }),
        EventKind::KvmPio { write, port, .. } => keyed(Sig::Pio { port: *port, write: *write }),
        EventKind::KvmMsr { write, index, exception, .. } => {
            keyed(Sig::Msr { index: *index, write: *write, exception: *exception })
        }
        EventKind::Irq(IrqEvent::Eoi { vector, .. } | IrqEvent::PvEoi { vector, .. }) => {
            keyed(Sig::Eoi { vector: *vector })
        }
        EventKind::Irq(IrqEvent::ApicAcceptIrq(a)) => {
            keyed(Sig::Raise { vector: a.vector, level: a.level })
        }
        _ => return None,
    };
    Some(sig)
}

/// A signature with its fingerprint.
#[inline(always)]
fn keyed(sig: Sig) -> (Sig, u64) {
    (sig, fingerprint(&sig))
}

fn entry_sig(e: &Entry) -> Sig {
    Sig::Entry { rip: e.rip, immediate: e.immediate_exit.unwrap_or(false) }
}

/// What keeps the cycle of `sigs` from being progress, if anything.
fn classify(sigs: &[Sig]) -> Option<LoopKind> {
    let any = |f: &dyn Fn(&Sig) -> bool| sigs.iter().any(f);
    if fails_run(sigs) {
        return Some(LoopKind::RunError);
    }
    let fault_rip = sigs.iter().find_map(|s| match s {
        Sig::Exit { reason, rip, .. } if is_fault(*reason) => Some(*rip),
        _ => None,
    });
    if let Some(fault_rip) = fault_rip {
        let emulated = any(&|s| matches!(s, Sig::Emulate { .. }));
        // Resuming elsewhere than the faulting RIP means the access completed.
        let resumed_elsewhere = any(
            &|s| matches!(s, Sig::Entry { rip: Some(r), .. } if fault_rip.is_some_and(|f| f != *r)),
        );
        if !emulated && !resumed_elsewhere {
            return Some(LoopKind::PageFault);
        }
    }
    // An exception KVM injects because it intercepted that exception, or because delivering
    // an event faulted: delivered the same way every round. (An exception injected after an
    // instruction exit, like #GP for an unknown MSR, is the guest's to handle: not a loop.)
    let redelivered = sigs.iter().any(|s| match s {
        Sig::InjException { vector, .. } => sigs.iter().any(|e| match e {
            Sig::Exit { reason, intr, vectoring, .. } => {
                *vectoring != 0 || exception_exit_vector(*reason, *intr) == Some(*vector)
            }
            _ => false,
        }),
        _ => false,
    });
    if redelivered {
        return Some(LoopKind::ExceptionDelivery);
    }
    if any(&|s| matches!(s, Sig::InjVirq { reinjected: true, .. })) {
        return Some(LoopKind::InterruptReinjection);
    }
    let eoi = any(
        &|s| matches!(s, Sig::Userspace { reason, .. } if *reason == UserspaceExitReason::IOAPIC_EOI.0),
    );
    // The guest EOIs a level-triggered vector and the same vector is raised again, every
    // round: whatever the guest's handler does, the line stays asserted.
    let reraised = sigs.iter().any(|s| match s {
        Sig::Eoi { vector } => sigs.iter().any(
            |r| matches!(r, Sig::Raise { vector: v, level: true } if i32::from(*v) == *vector),
        ),
        _ => false,
    });
    if reraised {
        return Some(if eoi { LoopKind::Eoi } else { LoopKind::InterruptStorm });
    }
    let only_interrupts = sigs.iter().all(|s| match s {
        Sig::Exit { reason, .. } | Sig::Reflect { reason, .. } => is_interrupt_exit(*reason),
        Sig::Pio { .. } | Sig::Msr { .. } | Sig::Emulate { .. } | Sig::Cr { .. } => false,
        _ => true,
    });
    (eoi && only_interrupts).then_some(LoopKind::Eoi)
}

/// The exception an exception-intercept exit reports.
fn exception_exit_vector(reason: ExitCode, intr: u32) -> Option<u8> {
    match reason {
        ExitCode::Vmx(r) if r.basic() == VmxBasicReason::EXCEPTION_NMI => {
            IntrInfo(intr).exception().map(|v| v.0)
        }
        ExitCode::Svm(c) if (0x40..0x60).contains(&c.0) => u8::try_from(c.0 - 0x40).ok(),
        ExitCode::Vmx(_) | ExitCode::Svm(_) | ExitCode::Raw(_) => None,
    }
}

fn is_interrupt_exit(reason: ExitCode) -> bool {
    match reason {
        ExitCode::Vmx(r) => matches!(
            r.basic(),
            VmxBasicReason::EXTERNAL_INTERRUPT
                | VmxBasicReason::PREEMPTION_TIMER
                | VmxBasicReason::INTERRUPT_WINDOW
                | VmxBasicReason::EOI_INDUCED
                | VmxBasicReason::APIC_WRITE
                | VmxBasicReason::APIC_ACCESS
                | VmxBasicReason::VMRESUME
        ),
        ExitCode::Svm(c) => matches!(c, SvmExitCode::INTR | SvmExitCode::VINTR),
        ExitCode::Raw(_) => false,
    }
}

fn describe(sig: Sig) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), hex);
    match sig {
        Sig::None => String::new(),
        Sig::Exit { reason, rip, qual, intr, vectoring, nested } => {
            let mut extra = String::new();
            if intr & 0x8000_0000 != 0 {
                extra.push_str(&format!(" intr_info {intr:#x}"));
            }
            if vectoring != 0 && vectoring != intr {
                extra.push_str(&format!(" vectoring {vectoring:#x}"));
            }
            format!(
                "{} {reason} rip {} qualification {}{extra}",
                if nested { "kvm_nested_vmexit" } else { "kvm_exit" },
                opt(rip),
                opt(qual)
            )
        }
        Sig::Fault { address, error_code } => {
            format!("kvm_page_fault address {} error_code {}", hex(address), hex(error_code))
        }
        Sig::Entry { rip, immediate } => {
            format!(
                "kvm_entry rip {}{}",
                opt(rip),
                if immediate { " (immediate exit)" } else { "" }
            )
        }
        Sig::InjException { vector, error_code } => format!(
            "kvm_inj_exception {}{}",
            vmxray_events::codes::ExceptionVector(vector),
            error_code.map_or_else(String::new, |e| format!(" ({e:#x})"))
        ),
        Sig::InjVirq { vector, reinjected } => {
            format!("kvm_inj_virq {vector:#x}{}", if reinjected { " (reinjected)" } else { "" })
        }
        Sig::Userspace { reason, errno } => {
            if errno < 0 {
                format!("kvm_userspace_exit error ({})", -i64::from(errno))
            } else {
                format!("kvm_userspace_exit {}", UserspaceExitReason(reason))
            }
        }
        Sig::Emulate { rip, failed } => {
            format!("kvm_emulate_insn rip {}{}", hex(rip), if failed { " FAIL" } else { "" })
        }
        Sig::Reflect { reason, qual } => {
            format!("kvm_nested_vmexit_inject {reason} qualification {}", opt(qual))
        }
        Sig::Vmenter { vmcs, rip } => {
            format!("kvm_nested_vmenter vmcs {} nested_rip {}", hex(vmcs), hex(rip))
        }
        Sig::Root { gfn, created } => {
            format!("kvm_mmu_get_page root gfn {}{}", hex(gfn), if created { " (new)" } else { "" })
        }
        Sig::Cr { cr, val } => format!("kvm_cr write cr{cr} {}", hex(val)),
        Sig::Pio { port, write } => {
            format!("kvm_pio {} port {port:#x}", if write { "write" } else { "read" })
        }
        Sig::Eoi { vector } => format!("kvm_eoi vector {vector:#x}"),
        Sig::Raise { vector, level } => format!(
            "kvm_apic_accept_irq vector {vector:#x} ({})",
            if level { "level" } else { "edge" }
        ),
        Sig::Msr { index, write, exception } => format!(
            "kvm_msr {} {index:#x}{}",
            if write { "write" } else { "read" },
            if exception { " (#GP)" } else { "" }
        ),
    }
}

impl State {
    fn cycle(&self, period: usize) -> Vec<Sig> {
        (1..=period).rev().map(|back| self.sig_back(back)).collect()
    }
}

/// Steps one event of this vCPU.
pub(crate) fn on_event(ctx: &mut Ctx<'_>, st: &mut State, event: &Event) {
    let Some((sig, fp)) = signature(st, event) else { return };
    ctx.checked(RULE);
    let now = (ctx.at, event.ts);
    // The periods whose signature has the same fingerprint, then those whose signature is
    // the same.
    let mut by_slot = 0u32;
    for (i, old) in st.fp.iter().enumerate() {
        if *old == fp {
            by_slot |= 1 << i;
        }
    }
    let by_period = by_slot >> st.fp_head | by_slot << (MAX_PERIOD - st.fp_head);
    // Periods up to the signatures seen (MAX_PERIOD at most: the mask fits a u16).
    let candidates = u16::try_from(by_period & ((1 << st.len) - 1)).unwrap_or(0);
    // Equal 64-bit fingerprints are taken for equal signatures (a false match needs a
    // collision at every event of a cycle, several rounds long).
    let same = candidates;
    // A guest's own loop, already told apart from a stuck one: the same periods repeat and
    // every one was classified as progress. Their runs' lengths are never read (only a run
    // that ends, or one not yet classified, matters), nor are their signatures (a loop that
    // forms later is made of signatures stored by the steps that extend its own new run).
    // An excerpt's end reads every run's length, so excerpts keep counting.
    // The runs not yet classified once `same` extends them (the same before and after the
    // update below); taken now, from registers, rather than read back after the stores.
    let unclassified = same & !st.progress;
    let steady = same != 0 && same == st.running && unclassified == 0 && !ctx.config.excerpt;
    if !steady {
        // Extend the runs of those periods, end the others'.
        for i in bits(st.running & !same) {
            st.run[i] = 0;
        }
        for i in bits(same) {
            if st.run[i] == 0 {
                st.run_start[i] = st.at_back(i + 1);
            }
            st.run[i] = st.run[i].saturating_add(1);
        }
        st.running = same;
        st.progress &= same;
    }
    st.fp_head = if st.fp_head == 0 { MAX_PERIOD - 1 } else { st.fp_head - 1 };
    st.fp[st.fp_head] = fp;
    st.seen += 1;
    // Only signatures that repeat one before them are ever read back (a loop's cycle is made
    // of them; an excerpt's end looks at every one).
    if (same != 0 && !steady) || ctx.config.excerpt {
        st.ring[st.head] = sig;
    }
    st.at[st.head] = now;
    st.head = if st.head + 1 == MAX_PERIOD { 0 } else { st.head + 1 };
    st.len = (st.len + 1).min(MAX_PERIOD);

    if let Some(active) = st.active {
        if st.run[active.period - 1] > 0 {
            if let Some(l) = ctx.findings.loops.closed.get_mut(active.index) {
                (l.last, l.last_ts) = now;
                l.repeats = u64::from(st.run[active.period - 1]) / active.period as u64 + 1;
            }
            return;
        }
        if let Some(l) = ctx.findings.loops.closed.get_mut(active.index) {
            l.ongoing = false;
        }
        st.active = None;
    }
    // An excerpt shows a few rounds at most: two identical ones are the loop the poster cut.
    let repeats = if ctx.config.excerpt { 2 } else { ctx.config.loop_repeats.max(2) };
    for i in bits(unclassified) {
        let p = i + 1;
        if u64::from(st.run[i]) < u64::from(repeats - 1) * p as u64 {
            continue;
        }
        match report_loop(ctx, st, p, now) {
            Verdict::Reported => return,
            Verdict::Progress => st.progress |= 1 << i,
            Verdict::NotYet => {}
        }
    }
}

/// The indices of the set bits of `mask`, lowest first.
fn bits(mut mask: u16) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(i)
    })
}

/// A 64-bit fingerprint of a signature: equal signatures, equal fingerprints, and different
/// ones different but for a 2^-64 chance (a loop would need such a collision at every event of
/// every round). Computed for every event, so it folds each variant's fields into a few words
/// with one multiply at the end (a derived `Hash` chains a multiply per field).
#[inline(always)]
fn fingerprint(sig: &Sig) -> u64 {
    let opt = |v: Option<u64>| v.map_or(0x5bd1_e995, |v| v.rotate_left(1) ^ 1);
    let code = |c: ExitCode| match c {
        ExitCode::Vmx(r) => u64::from(r.0),
        ExitCode::Svm(c) => c.0 ^ (1 << 62),
        ExitCode::Raw(x) => x ^ (1 << 63),
    };
    let (tag, a, b, c): (u64, u64, u64, u64) = match *sig {
        Sig::None => (0, 0, 0, 0),
        Sig::Exit { reason, rip, qual, intr, vectoring, nested } => (
            1 + u64::from(nested),
            code(reason),
            opt(rip),
            opt(qual) ^ (u64::from(intr) << 32 | u64::from(vectoring)).rotate_left(7),
        ),
        Sig::Fault { address, error_code } => (3, address, error_code, 0),
        Sig::Entry { rip, immediate } => (4 + u64::from(immediate), opt(rip), 0, 0),
        Sig::InjException { vector, error_code } => {
            (6, u64::from(vector), error_code.map_or(0x5bd1_e995, |e| u64::from(e) << 1 | 1), 0)
        }
        Sig::InjVirq { vector, reinjected } => (7 + u64::from(reinjected), u64::from(vector), 0, 0),
        Sig::Userspace { reason, errno } => {
            (9, u64::from(reason), u64::from(errno.cast_unsigned()), 0)
        }
        Sig::Emulate { rip, failed } => (10 + u64::from(failed), rip, 0, 0),
        Sig::Reflect { reason, qual } => (12, code(reason), opt(qual), 0),
        Sig::Vmenter { vmcs, rip } => (13, vmcs, rip, 0),
        Sig::Root { gfn, created } => (14 + u64::from(created), gfn, 0, 0),
        Sig::Cr { cr, val } => (16, u64::from(cr), val, 0),
        Sig::Pio { port, write } => (17 + u64::from(write), u64::from(port), 0, 0),
        Sig::Msr { index, write, exception } => {
            (19, u64::from(index), u64::from(write) | u64::from(exception) << 1, 0)
        }
        Sig::Eoi { vector } => (20, u64::from(vector.cast_unsigned()), 0, 0),
        Sig::Raise { vector, level } => (21 + u64::from(level), u64::from(vector), 0, 0),
    };
    // Each field through its own odd multiplier (independent, so the multiplies overlap),
    // then the high half folded down: no XOR of shifted fields that a pair of nearby values
    // (two GPAs 4 MiB apart, error codes one bit apart) could cancel.
    let h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(17)
        ^ c.wrapping_mul(0x1656_67b1_9e37_79f9).rotate_left(31)
        ^ tag.wrapping_mul(0x27d4_eb2f_1656_67c5).rotate_left(47);
    (h ^ (h >> 29)).wrapping_mul(0x94d0_49bb_1331_11eb)
}

/// At the end of an excerpt: a vCPU whose every signature belongs to one cycle seen at least
/// twice is stuck (the excerpt shows nothing else of it).
pub(crate) fn at_end(ctx: &mut Ctx<'_>, st: &mut State) {
    if st.active.is_some() || st.len == 0 {
        return;
    }
    let now = st.at_back(1);
    ctx.at = now.0;
    for p in 1..=MAX_PERIOD {
        let run = u64::from(st.run[p - 1]);
        let whole = run + p as u64 == st.seen;
        // One full cycle and its start again is enough for KVM_RUN failing the same way after
        // the same events: the VMM retried and nothing changed.
        let enough = run >= p as u64 || (run >= 1 && fails_run(&st.cycle(p)));
        if enough && whole && report_loop(ctx, st, p, now) == Verdict::Reported {
            return;
        }
    }
}

/// Whether the cycle holds a `kvm_userspace_exit` with an error.
fn fails_run(sigs: &[Sig]) -> bool {
    sigs.iter().any(|s| matches!(s, Sig::Userspace { errno, .. } if *errno < 0))
}

/// What [`report_loop`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Stuck, and reported.
    Reported,
    /// The cycle makes progress (the guest's own loop): not looked at again while it lasts.
    Progress,
    /// Not enough rounds yet to tell.
    NotYet,
}

/// How many rounds of the same paging-structure fault are a guest's page walk: one per level
/// of its page tables (five at most), each touching another page-table page at the same RIP
/// with the same qualification. Without the faulting address in the trace, only more rounds
/// than that are a livelock.
const WALK_LEVELS: u64 = 5;

/// Whether every fault exit of the cycle is a fault on a guest paging structure (VMX EPT
/// violation: guest-linear address valid, not the final translation; SVM #NPF: during the
/// guest page walk) and the cycle does not show the faulting address (`kvm_page_fault`).
fn only_walk_faults(sigs: &[Sig]) -> bool {
    let mut faults = 0;
    for s in sigs {
        match s {
            Sig::Fault { .. } => return false,
            Sig::Exit { reason, qual, .. } if is_fault(*reason) => {
                let walk = match (reason, qual) {
                    (ExitCode::Vmx(_), Some(q)) => q & 0x180 == 0x080,
                    (ExitCode::Svm(c), Some(q)) if *c == SvmExitCode::NPF => {
                        q & (1 << 33) != 0 && q & (1 << 32) == 0
                    }
                    _ => false,
                };
                if !walk {
                    return false;
                }
                faults += 1;
            }
            _ => {}
        }
    }
    faults > 0
}

/// Reports the loop of period `p` ending at `now` if it is stuck.
fn report_loop(ctx: &mut Ctx<'_>, st: &mut State, p: usize, now: (EventIndex, u64)) -> Verdict {
    let run = st.run[p - 1];
    {
        let cycle = st.cycle(p);
        let Some(kind) = classify(&cycle) else { return Verdict::Progress };
        let (first, first_ts) = st.run_start[p - 1];
        let n = u64::from(run) / p as u64 + 1;
        if kind == LoopKind::PageFault && n <= WALK_LEVELS && only_walk_faults(&cycle) {
            return Verdict::NotYet;
        }
        let spelled: Vec<String> = cycle.iter().map(|s| describe(*s)).collect();
        let times = if (run as usize) < p {
            "seen once and begun again".to_owned()
        } else {
            format!("repeated {n} times")
        };
        let message = format!(
            "{}: {} {times} with no progress (the summary has the total): {}",
            kind.describe(),
            if p == 1 { "one event" } else { "a cycle of events" },
            spelled.join(" → ")
        );
        ctx.report(RULE, Severity::Warning, &[first], || message);
        let loops = &mut ctx.findings.loops;
        let index = loops.closed.len();
        if index < MAX_LOOPS {
            loops.closed.push(LoopSummary {
                vcpu: ctx.actor,
                kind,
                cycle: spelled,
                repeats: n,
                first,
                last: now.0,
                first_ts,
                last_ts: now.1,
                ongoing: true,
            });
        } else {
            loops.dropped += 1;
        }
        st.active =
            Some(Active { period: p, index: if index < MAX_LOOPS { index } else { usize::MAX } });
        Verdict::Reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeats are decided on fingerprints alone: nearby values that a plain XOR of shifted
    /// fields would cancel must still differ.
    #[test]
    fn fingerprints_of_nearby_signatures_differ() {
        let mut seen = std::collections::HashMap::new();
        let mut add = |sig: Sig| {
            if let Some(old) = seen.insert(fingerprint(&sig), sig) {
                assert_eq!(old, sig, "{old:?} and {sig:?} share a fingerprint");
            }
        };
        for gpa in (0..64u64).map(|i| 0xfee0_0000 ^ (1 << i)) {
            for error_code in [0x181u64, 0x182, 0x183, 0x184, 0x100_0181, 0x181 ^ (1 << 43)] {
                add(Sig::Fault { address: gpa, error_code });
                add(Sig::Exit {
                    reason: ExitCode::Vmx(vmxray_events::codes::ExitReason(48)),
                    rip: Some(gpa),
                    qual: Some(error_code),
                    intr: 0,
                    vectoring: 0,
                    nested: false,
                });
                add(Sig::Cr { cr: 3, val: gpa ^ error_code });
            }
            add(Sig::Entry { rip: Some(gpa), immediate: false });
            add(Sig::Entry { rip: Some(gpa), immediate: true });
            add(Sig::Emulate { rip: gpa, failed: false });
        }
        for vector in 0..=255u8 {
            add(Sig::InjException { vector, error_code: None });
            add(Sig::InjException { vector, error_code: Some(0) });
            add(Sig::InjVirq { vector: u32::from(vector), reinjected: true });
            add(Sig::Raise { vector, level: true });
            add(Sig::Eoi { vector: i32::from(vector) });
        }
    }
}
