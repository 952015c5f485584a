//! **livelock** — the same fault exit repeating with no progress.
//!
//! **KVM behaviour.** A fault that KVM "fixes" must not recur identically: the "Deadlock due to
//! EPT_VIOLATION" report on the kvm list (2023-05-23) showed a vCPU taking the same
//! EPT_VIOLATION at the same RIP and GPA forever, with users reduced to grepping raw text.
//!
//! **Sequence matched:** N (default 64) consecutive fault exits of one vCPU — EPT_VIOLATION,
//! `#PF` EXCEPTION_NMI, SVM `npf`/`PF excp` — with identical reason, RIP, qualification and
//! level, with only asynchronous exits (interrupts, timers) and entries at that RIP between.
//! Any other exit, or an entry elsewhere, is progress.

use vmxray_capture::codes::{ExceptionVector, ExitCode, SvmExitCode, VmxBasicReason};
use vmxray_capture::{Entry, ExitInfo};

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
    count: u32,
    first_at: EventIndex,
}

enum ExitClass {
    Fault,
    Asynchronous,
    Other,
}

fn classify(info: &ExitInfo) -> ExitClass {
    match info.reason {
        ExitCode::Vmx(r) if r.failed_vmentry() => ExitClass::Other,
        ExitCode::Vmx(r) => match r.basic() {
            VmxBasicReason::EPT_VIOLATION => ExitClass::Fault,
            VmxBasicReason::EXCEPTION_NMI
                if info.intr_info.and_then(|i| i.exception()) == Some(ExceptionVector::PF) =>
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
    let Some(rip) = info.guest_rip else {
        st.key = None;
        return;
    };
    let key = Key {
        reason: info.reason.raw(),
        rip,
        qual: info.info1.unwrap_or(0),
        level: ctx.vcpu.level(),
    };
    ctx.checked(RULE);
    if st.key == Some(key) {
        st.count += 1;
    } else {
        *st = State { key: Some(key), count: 1, first_at: ctx.at };
    }
    if st.count == ctx.config.livelock_threshold {
        let (n, reason, first) = (st.count, info.reason, st.first_at);
        ctx.report(RULE, Severity::Warning, &[first], || {
            format!(
                "{reason} at rip {} qualification {} repeated {n} times with no progress",
                hex(key.rip),
                hex(key.qual)
            )
        });
    }
}

pub(crate) fn on_entry(st: &mut State, e: &Entry) {
    if let (Some(key), Some(rip)) = (st.key, e.rip)
        && rip != key.rip
    {
        st.key = None;
    }
}
