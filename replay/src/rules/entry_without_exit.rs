//! **entry_without_exit** — invariant 1: two `kvm_entry` of one vCPU have a `kvm_exit` between
//! them, except a late VM-Fail.
//!
//! **KVM behaviour.** `vmx_vcpu_run` traces `kvm_entry` before every hardware VM-Enter and
//! `kvm_exit` after every VM-Exit; the only entry that is not followed by an exit is a VM-Enter
//! that hardware rejects as a VM-Fail (`4f350c6dbcb9`), traced as
//! `kvm_nested_vmenter_failed "hardware VM-instruction error"` (CC() series, Sean
//! Christopherson, 2020).
//!
//! **Sequence matched:**
//! ```text
//! kvm_entry … [no kvm_exit, no late VM-Fail] … kvm_entry    → anomaly
//! ```

use vmxray_events::VmFailKind;

use super::Ctx;
use crate::anomaly::{EventIndex, RuleId, Severity};

const RULE: RuleId = RuleId::EntryWithoutExit;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    late_fail_at: Option<EventIndex>,
}

pub(crate) fn on_vmenter_failed(st: &mut State, at: EventIndex, kind: VmFailKind) {
    if kind == VmFailKind::LateHardware {
        st.late_fail_at = Some(at);
    }
}

#[inline]
pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    let late_fail = st.late_fail_at.take();
    if !ctx.features.kvm_exit {
        // kvm_exit not recorded (event filter): nothing to pair with.
        return;
    }
    let Some(exited) = ctx.vcpu.exited_since_entry else { return };
    ctx.checked(RULE);
    if exited || late_fail.is_some() {
        return;
    }
    let evidence: Vec<_> = ctx.vcpu.last_entry.map(|(at, _)| at).into_iter().collect();
    ctx.report(RULE, Severity::Error, &evidence, || {
        "two kvm_entry with no kvm_exit (and no late VM-Fail) between them".to_owned()
    });
}
