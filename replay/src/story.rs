//! The "What happened" narratives of triage: for each kind of death and of stuck vCPU, the
//! sentences a KVM developer would write after reading the window, built from the crash's data
//! only (so JSON users get the same text as the terminal).

use vmxray_events::codes::{ExceptionVector, ExitCode, SvmExitCode, VmxBasicReason};
use vmxray_events::insn::mnemonic;
use vmxray_events::{Event, EventKind};

use crate::anomaly::{EventIndex, Severity};
use crate::rules::livelock::{LoopKind, LoopSummary};
use crate::triage::{ChainLink, ContextChange, Crash, CrashKind, WindowEvent};

/// `` `ltr` (0f 00 d8)`` or the bytes alone.
pub fn insn_text(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match mnemonic(bytes) {
        Some(d) => format!("`{d}` ({})", hex.join(" ")),
        None => hex.join(" "),
    }
}

fn ec(e: Option<u32>) -> String {
    e.map_or_else(String::new, |e| format!(" (error code {e:#x})"))
}

/// The window event at `at`.
fn event_at(c: &Crash, at: EventIndex) -> Option<&Event> {
    c.last_events.iter().find(|w| w.at == at).map(|w| &w.event)
}

/// The last window event before `at` matching `f`.
fn last_before(c: &Crash, at: EventIndex, f: impl Fn(&Event) -> bool) -> Option<&WindowEvent> {
    c.last_events.iter().rev().find(|w| w.at < at && f(&w.event))
}

/// The sentences for one crash, most important first.
pub fn crash_story(c: &Crash) -> Vec<String> {
    let mut out = Vec::new();
    match c.kind {
        CrashKind::TripleFaultExit | CrashKind::Shutdown | CrashKind::NestedTripleFault => {
            triple_fault(c, &mut out);
        }
        CrashKind::InternalError => internal_error(c, &mut out),
        CrashKind::FailedVmentry | CrashKind::FailEntry => failed_entry(c, &mut out),
        CrashKind::RunError => run_error(c, &mut out),
    }
    common(c, &mut out);
    out
}

/// Why KVM injected `vector` at `at`: the guest's own exception it intercepted, or its emulator.
fn injection_cause(c: &Crash, at: EventIndex, vector: ExceptionVector) -> Option<String> {
    let intercepted = c.exception_chain.iter().rev().find_map(|l| match l {
        ChainLink::ExitException { at: x, reason, vector: v, nested: false, .. }
            if *x < at && *v == vector =>
        {
            Some((*x, *reason))
        }
        _ => None,
    });
    let emulated = last_before(c, at, |e| matches!(e.kind, EventKind::KvmEmulateInsn { .. }));
    let walk_failed = c.exception_chain.iter().rev().find_map(|l| match l {
        ChainLink::WalkerError { at: w, pferr } if *w < at => Some((*w, *pferr)),
        _ => None,
    });
    match (emulated, intercepted) {
        (Some(e), intercepted) if intercepted.is_none_or(|(x, _)| e.at > x) => {
            let EventKind::KvmEmulateInsn { rip, insn, .. } = &e.event.kind else { return None };
            let walk = walk_failed
                .filter(|(w, _)| *w > e.at)
                .map(|(w, pferr)| {
                    format!(
                        " after the emulator's walk of the guest page tables failed (pferr \
                         {pferr:#x} {}, {w})",
                        pferr_text(pferr)
                    )
                })
                .unwrap_or_default();
            Some(format!(
                "KVM's emulator raised it while emulating {} at rip {rip:#x} ({}){walk}",
                insn_text(insn.as_slice()),
                e.at
            ))
        }
        (_, Some((x, reason))) => Some(format!(
            "the guest raised it and KVM intercepted it ({reason} exit, {x}) and gave it back"
        )),
        (None, None) => {
            // The emulation scrolled out of the window (long page walks): the context change
            // it made is still listed.
            let (e_at, rip, insn) = c.context_changes.iter().rev().find_map(|ch| match ch {
                ContextChange::Emulated { at: e, rip, insn } if *e < at => Some((*e, *rip, insn)),
                _ => None,
            })?;
            let walk = walk_failed
                .filter(|(w, _)| *w > e_at)
                .map(|(w, pferr)| {
                    format!(
                        " after the emulator's walk of the guest page tables failed (pferr \
                         {pferr:#x} {}, {w})",
                        pferr_text(pferr)
                    )
                })
                .unwrap_or_default();
            Some(format!(
                "KVM's emulator raised it while emulating `{insn}` at rip {rip:#x} ({e_at}){walk}"
            ))
        }
        _ => None,
    }
}

/// `P|W|U` for page-fault error codes.
pub fn pferr_text(pferr: u32) -> String {
    let bits = [(0, "P"), (1, "W"), (2, "U"), (3, "RSVD"), (4, "I/D"), (5, "PK"), (15, "SGX")];
    let names: Vec<&str> =
        bits.iter().filter(|(b, _)| pferr & (1 << b) != 0).map(|(_, n)| *n).collect();
    if names.is_empty() { "not-present read".to_owned() } else { names.join("|") }
}

fn followed(c: &Crash, kind: CrashKind) -> Option<EventIndex> {
    c.followed_by.iter().find(|(_, k)| *k == kind).map(|(at, _)| *at)
}

fn triple_fault(c: &Crash, out: &mut Vec<String>) {
    let reflected = if c.kind == CrashKind::NestedTripleFault {
        Some(c.at)
    } else {
        followed(c, CrashKind::NestedTripleFault)
    };
    if let Some(inject) = reflected {
        out.push(format!(
            "L2 triple-faulted: KVM reflected the triple fault to L1 as a TRIPLE_FAULT nested exit \
             ({inject}). L1 decides what becomes of that guest (a hypervisor usually resets or \
             destroys it); L1 itself did not fault."
        ));
        if let Some(rsm) = last_before(c, c.at, |e| {
            matches!(e.kind, EventKind::KvmSmmTransition { entering: false, .. })
        }) {
            out.push(format!(
                "It follows an RSM back into L2 ({}): a shutdown while returning from SMM to L2 \
                 must end nested operation and shut L1 down instead (KVM 3f6821aa147b \"Forcibly \
                 leave nested if RSM to L2 hits shutdown\").",
                rsm.at
            ));
        }
    }
    if let Some(ChainLink::Injected { vector, error_code, at, .. }) = &c.undelivered {
        let cause = injection_cause(c, *at, *vector).map(|s| format!(" ({s})")).unwrap_or_default();
        let delivery = match c
            .last_events
            .iter()
            .find(|w| w.at > *at && matches!(w.event.kind, EventKind::KvmEntry(_)))
        {
            Some(entry) => format!(
                "the entry at {} delivered it and the CPU gave up at the same rip with a triple \
                 fault: delivering {vector} faulted, and so did the #DF after it",
                entry.at
            ),
            None => "no VM-entry delivered it".to_owned(),
        };
        out.push(format!(
            "KVM injected {vector}{} at {at}{cause}; {delivery}. The guest's IDT, GDT, TSS or \
             stack cannot be used for exception delivery.",
            ec(*error_code)
        ));
    } else if c.kind == CrashKind::Shutdown && followed_after_triple_fault_exit(c).is_none() {
        synthesized(c, out);
    }
    if c.kind == CrashKind::TripleFaultExit
        && let Some(at) = followed(c, CrashKind::Shutdown)
    {
        out.push(format!(
            "KVM then returned KVM_EXIT_SHUTDOWN to userspace ({at}); the VMM resets or stops the \
             VM."
        ));
    }
}

/// A TRIPLE_FAULT exit in the window before a shutdown crash (none: KVM synthesized it).
fn followed_after_triple_fault_exit(c: &Crash) -> Option<EventIndex> {
    last_before(c, c.at, |e| match &e.kind {
        EventKind::KvmExit(i) => match i.reason() {
            ExitCode::Vmx(r) => !r.failed_vmentry() && r.basic() == VmxBasicReason::TRIPLE_FAULT,
            ExitCode::Svm(c) => c == SvmExitCode::SHUTDOWN,
            ExitCode::Raw(_) => false,
        },
        _ => false,
    })
    .map(|w| w.at)
}

fn synthesized(c: &Crash, out: &mut Vec<String>) {
    let mut why = Vec::new();
    if let Some(ChainLink::EmulationFailed { at, rip, insn }) =
        c.exception_chain.iter().rev().find(|l| matches!(l, ChainLink::EmulationFailed { .. }))
    {
        let rsm = insn.starts_with(&[0x0f, 0xaa]);
        why.push(format!(
            "emulating {} at rip {rip:#x} failed ({at}){}",
            insn_text(insn),
            if rsm {
                ": since 25b17226cd9a KVM turns a failed RSM into a shutdown (before, an \
                 internal error)"
            } else {
                ""
            }
        ));
    }
    if let Some(ChainLink::Printk { at, text }) = c
        .exception_chain
        .iter()
        .rev()
        .find(|l| matches!(l, ChainLink::Printk { text, .. } if text.contains("TRIPLE_FAULT")))
    {
        why.push(format!("KVM logged `{text}` ({at})"));
    }
    out.push(format!(
        "No TRIPLE_FAULT exit precedes the shutdown: KVM synthesized the triple fault itself{}.",
        if why.is_empty() {
            " (from software: an exception it could not deliver, or a failed emulation)".to_owned()
        } else {
            format!(" — {}", why.join("; "))
        }
    ));
}

fn internal_error(c: &Crash, out: &mut Vec<String>) {
    let Some(ChainLink::EmulationFailed { at, rip, insn }) =
        c.exception_chain.iter().rev().find(|l| matches!(l, ChainLink::EmulationFailed { .. }))
    else {
        out.push(format!("KVM returned KVM_EXIT_INTERNAL_ERROR ({}).", c.at));
        return;
    };
    let exit = last_before(c, *at, |e| matches!(e.kind, EventKind::KvmExit(_))).and_then(|w| {
        match &w.event.kind {
            EventKind::KvmExit(i) => Some(format!(" after a {} exit ({})", i.reason(), w.at)),
            _ => None,
        }
    });
    out.push(format!(
        "KVM could not emulate {} at rip {rip:#x} ({at}){} and returned \
         KVM_EXIT_INTERNAL_ERROR ({}).",
        insn_text(insn),
        exit.unwrap_or_default(),
        c.at
    ));
    if let Some(ChainLink::WalkerError { at: w, pferr }) = c
        .exception_chain
        .iter()
        .rev()
        .find(|l| matches!(l, ChainLink::WalkerError { at: w, .. } if w <= at))
        && pferr & (1 << 3) != 0
    {
        out.push(format!(
            "The emulator's walk of the guest page tables hit a reserved bit (pferr {pferr:#x} \
             {}, {w}): a page-table entry uses a bit this vCPU model reserves (for instance a \
             1 GiB page when CPUID does not offer pdpe1gb). The instruction bytes the emulator \
             shows may be stale.",
            pferr_text(*pferr)
        ));
    }
}

/// The meaning of the exit qualification of a failed VM-entry (SDM 27.8).
fn entry_failure_qualification(basic: VmxBasicReason, qual: u64) -> &'static str {
    match (basic, qual) {
        (VmxBasicReason::INVALID_STATE, 2) => "loading the PDPTEs failed",
        (VmxBasicReason::INVALID_STATE, 3) => "injecting an NMI failed (blocking by STI/MOV SS)",
        (VmxBasicReason::INVALID_STATE, 4) => "the VMCS link pointer is invalid",
        (VmxBasicReason::INVALID_STATE, _) => "a guest-state check failed",
        (VmxBasicReason::MSR_LOAD_FAIL, _) => "loading an MSR of the entry MSR-load list failed",
        _ => "the entry failed",
    }
}

fn failed_entry(c: &Crash, out: &mut Vec<String>) {
    if let Some(ChainLink::VmenterFailed { at, msg, err }) =
        c.exception_chain.iter().rev().find(|l| matches!(l, ChainLink::VmenterFailed { .. }))
    {
        let which = c.vmptr.map_or_else(String::new, |p| format!(" of vmcs12 {p:#x}"));
        // A rule that found the check itself wrong at this entry overrules the usual blame.
        let wrong_check =
            c.anomalies.iter().find(|a| a.at == *at && a.severity >= Severity::Warning);
        if *err == 0 {
            let whose = match wrong_check {
                Some(a) => format!(
                    "The check itself is at fault here, not L1's vmcs12 ({}): {}.",
                    a.rule, a.message
                ),
                None => "The guest state L1 wrote into the vmcs12 is invalid (a bug of L1 or of \
                         the VMM that set the nested state, unless the check itself is wrong)."
                    .to_owned(),
            };
            out.push(format!(
                "The nested VM-entry{which} failed KVM's check `{msg}` ({at}): KVM exits to L1 \
                 with INVALID_STATE | FAILED_VMENTRY and L1 resumes at its HOST_RIP. {whose}"
            ));
        } else {
            out.push(format!(
                "The hardware refused the entry into L2{which} ({at}): {msg} ({}).",
                vmxray_events::codes::VmInstructionError(*err)
            ));
        }
        return;
    }
    let Some(event) = event_at(c, c.at) else { return };
    let info = match &event.kind {
        EventKind::KvmExit(i)
        | EventKind::KvmNestedVmexit(i)
        | EventKind::KvmNestedVmexitInject(i) => i,
        _ => {
            out.push(format!("The hardware refused the VM-entry ({}).", c.at));
            return;
        }
    };
    let ExitCode::Vmx(r) = info.reason() else { return };
    let qual = info.info1().unwrap_or(0);
    let meaning = entry_failure_qualification(r.basic(), qual);
    let whose = match event.kind {
        EventKind::KvmNestedVmexit(_) => {
            "the entry into L2 (vmcs02, built by KVM from L1's vmcs12); KVM reflects the failure \
             to L1"
        }
        EventKind::KvmNestedVmexitInject(_) => "the entry into L2; L1 receives the failure",
        _ => "the VM-entry",
    };
    out.push(format!(
        "The hardware refused {whose}: {} with qualification {qual:#x} ({meaning}) at {}.",
        info.reason(),
        c.at
    ));
}

fn run_error(c: &Crash, out: &mut Vec<String>) {
    let errno = match event_at(c, c.at).map(|e| &e.kind) {
        Some(EventKind::KvmUserspaceExit { errno: Some(e), .. }) => -i64::from(*e),
        _ => 0,
    };
    let name = match errno {
        14 => "EFAULT",
        4 => "EINTR",
        22 => "EINVAL",
        12 => "ENOMEM",
        5 => "EIO",
        _ => "an error",
    };
    let fault = last_before(c, c.at, |e| {
        matches!(e.kind, EventKind::KvmPageFault { .. } | EventKind::KvmExit(_))
    });
    let after = fault
        .and_then(|w| match &w.event.kind {
            EventKind::KvmPageFault { fault_address, .. } => {
                Some(format!(" after a fault on address {fault_address:#x} ({})", w.at))
            }
            EventKind::KvmExit(i) => Some(format!(" after a {} exit ({})", i.reason(), w.at)),
            _ => None,
        })
        .unwrap_or_default();
    out.push(format!(
        "KVM_RUN returned -{errno} ({name}){after}.{}",
        if errno == 14 {
            " KVM could not resolve the guest-physical address to host memory: the memslot \
             maps host addresses that cannot be faulted in (unmapped, or not normal memory)."
        } else {
            ""
        }
    ));
}

fn common(c: &Crash, out: &mut Vec<String>) {
    let tables: Vec<String> = c
        .context_changes
        .iter()
        .filter_map(|ch| match ch {
            ContextChange::Emulated { insn, rip, at }
                if insn.starts_with("lidt") || insn.starts_with("lgdt") =>
            {
                Some(format!("`{insn}` at rip {rip:#x} ({at})"))
            }
            _ => None,
        })
        .collect();
    if !tables.is_empty() {
        out.push(format!(
            "Descriptor tables were loaded shortly before: {}. Check that they are valid.",
            tables.join(", ")
        ));
    }
    let faults: Vec<String> = c
        .exception_chain
        .iter()
        .filter_map(|l| match l {
            ChainLink::PageFault { address, error_code, .. } => {
                Some(format!("{address:#x} (error {error_code:#x})"))
            }
            _ => None,
        })
        .collect();
    if !faults.is_empty() {
        out.push(format!("Guest page faults before the end: {}.", faults.join(", ")));
    }
    if c.exception_chain
        .iter()
        .any(|l| matches!(l, ChainLink::Injected { vector, .. } if vector.0 == 8))
    {
        out.push("A #DF was injected: an exception occurred while delivering another.".to_owned());
    }
    let prints: Vec<String> = c
        .exception_chain
        .iter()
        .filter_map(|l| match l {
            ChainLink::Printk { at, text } => Some(format!("{at} `{text}`")),
            _ => None,
        })
        .collect();
    if !prints.is_empty() {
        out.push(format!("Debug output in the window: {}.", prints.join("; ")));
    }
    if !c.anomalies.is_empty() {
        out.push(format!(
            "The model found {} divergence(s) from KVM's expected behaviour in this window \
             (below).",
            c.anomalies.len()
        ));
    }
}

/// The sentences for one stuck vCPU.
pub fn loop_story(l: &LoopSummary) -> Vec<String> {
    let mut out = Vec::new();
    let first = l.cycle.first().map_or("", String::as_str);
    let end = if l.ongoing {
        "and is still looping when the trace ends"
    } else {
        "and then left the loop"
    };
    out.push(format!(
        "The same cycle of {} event(s) repeats {} times from {} to {} {end}; nothing in it \
         changes (no new RIP, address or root).",
        l.cycle.len(),
        l.repeats,
        l.first,
        l.last
    ));
    out.push(match l.kind {
        LoopKind::PageFault => format!(
            "The fault is never fixed: `{first}` recurs at the same RIP and address, so KVM's \
             fault handler returns without installing a mapping (it retries forever — a stale \
             mmu_notifier sequence check did this in 6.1) or installs one that faults again."
        ),
        LoopKind::ExceptionDelivery => "KVM intercepts an exception and injects it back every \
             round; the guest never gets past the instruction (an interception that re-emulates \
             every exception, or an exception whose delivery faults the same way)."
            .to_owned(),
        LoopKind::InterruptReinjection => "The same interrupt is re-injected every round: each \
             delivery is cut short by the same exit before the guest acknowledges it."
            .to_owned(),
        LoopKind::RunError => "KVM_RUN fails the same way every round and the VMM runs the vCPU \
             again: the error is not transient (for EFAULT, a memslot whose host memory cannot \
             be faulted in)."
            .to_owned(),
        LoopKind::Eoi => "The guest takes and EOIs the same interrupt every round and the line is \
             raised again at once: a level-triggered interrupt acknowledged before its source \
             was serviced, or an EOI that never reaches the right IOAPIC."
            .to_owned(),
        LoopKind::InterruptStorm => "Each EOI of the level-triggered interrupt raises it again              and the guest's handler runs the same instructions every round: the interrupt              line is never lowered (the device model never de-asserts it, or KVM resamples a              line that userspace already lowered)."
            .to_owned(),
    });
    out
}
