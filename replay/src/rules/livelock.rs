//! **livelock** — the same fault exit repeating with no progress.
//!
//! **KVM behaviour.** A fault that KVM "fixes" must not recur identically: the "Deadlock due to
//! EPT_VIOLATION" report on the kvm list (2023-05-23) showed a vCPU taking the same
//! EPT_VIOLATION at the same RIP and GPA forever, with users reduced to grepping raw text.
//!
//! **Sequence matched:** N (default 64) consecutive fault exits of one vCPU — EPT_VIOLATION,
//! `#PF` EXCEPTION_NMI, SVM `npf`/`PF excp` — with identical reason, RIP, qualification and
//! level — and, when `kvm_page_fault` is traced, the same faulting address — with only
//! asynchronous exits (interrupts, timers) and entries at that RIP between. Any other exit, an
//! entry elsewhere, or a fault on another page is progress.

use vmxray_events::codes::{ExceptionVector, ExitCode, SvmExitCode, VmxBasicReason};
use vmxray_events::{Entry, ExitInfo};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::Level;

const RULE: RuleId = RuleId::Livelock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    reason: u64,
    rip: u64,
    qual: u64,
    level: Option<Level>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    key: Option<Key>,
    /// The faulting address L0 reported (`kvm_page_fault`) for this key, when traced: a fault
    /// at the same RIP on another page (a `memset` under dirty logging) is progress.
    address: Option<u64>,
    count: u32,
    first_at: EventIndex,
    exit_at: EventIndex,
    reported: bool,
}

enum ExitClass {
    Fault,
    Asynchronous,
    Other,
}

fn classify(info: &ExitInfo) -> ExitClass {
    match info.reason() {
        ExitCode::Vmx(r) if r.failed_vmentry() => ExitClass::Other,
        ExitCode::Vmx(r) => match r.basic() {
            VmxBasicReason::EPT_VIOLATION => ExitClass::Fault,
            VmxBasicReason::EXCEPTION_NMI
                if info.intr_info().and_then(|i| i.exception()) == Some(ExceptionVector::PF) =>
            {
                ExitClass::Fault
            }
            VmxBasicReason::EXTERNAL_INTERRUPT | VmxBasicReason::PREEMPTION_TIMER => {
                ExitClass::Asynchronous
            }
            _ => ExitClass::Other,
        },
        ExitCode::Svm(SvmExitCode::NPF | SvmExitCode::EXCP_PF) => ExitClass::Fault,
        ExitCode::Svm(SvmExitCode::INTR) => ExitClass::Asynchronous,
        ExitCode::Svm(_) | ExitCode::Raw(_) => ExitClass::Other,
    }
}

pub(crate) fn on_exit(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    match classify(info) {
        ExitClass::Asynchronous => return,
        ExitClass::Other => {
            st.key = None;
            return;
        }
        ExitClass::Fault => {}
    }
    let Some(rip) = info.guest_rip() else {
        st.key = None;
        return;
    };
    let key = Key {
        reason: info.reason().raw(),
        rip,
        qual: info.info1().unwrap_or(0),
        level: ctx.vcpu.level(),
    };
    ctx.checked(RULE);
    st.exit_at = ctx.at;
    if st.key == Some(key) {
        st.count = st.count.saturating_add(1);
    } else {
        *st = State {
            key: Some(key),
            count: 1,
            first_at: ctx.at,
            exit_at: ctx.at,
            ..State::default()
        };
    }
    // Without page-fault events the exit itself is all there is to compare.
    if st.address.is_none() {
        maybe_report(ctx, st, info.reason().to_string());
    }
}

pub(crate) fn on_page_fault(ctx: &mut Ctx<'_>, st: &mut State, address: u64) {
    let Some(key) = st.key else { return };
    match st.address {
        None => st.address = Some(address),
        Some(a) if a == address => {
            let reason = format!("fault exit {:#x}", key.reason);
            maybe_report(ctx, st, reason);
        }
        Some(_) => {
            st.address = Some(address);
            st.count = 1;
            st.first_at = st.exit_at;
            st.reported = false;
        }
    }
}

fn maybe_report(ctx: &mut Ctx<'_>, st: &mut State, reason: String) {
    let Some(key) = st.key else { return };
    if st.reported || st.count < ctx.config.livelock_threshold {
        return;
    }
    st.reported = true;
    let (n, first, address) = (st.count, st.first_at, st.address);
    ctx.report(RULE, Severity::Warning, &[first], || {
        format!(
            "{reason} at rip {} qualification {}{} repeated {n} times with no progress",
            hex(key.rip),
            hex(key.qual),
            address.map_or_else(String::new, |a| format!(" address {}", hex(a)))
        )
    });
}

pub(crate) fn on_entry(st: &mut State, e: &Entry) {
    if let (Some(key), Some(rip)) = (st.key, e.rip)
        && rip != key.rip
    {
        st.key = None;
    }
}
