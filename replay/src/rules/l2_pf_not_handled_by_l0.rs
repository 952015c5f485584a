//! **l2_pf_not_handled_by_l0** — invariant 22: with `enable_ept=0`, an L2 #PF reaches L1 only
//! after L0 handled it.
//!
//! **KVM behaviour.** `nested_vmx_l0_wants_exit` keeps #PF when `vmx_need_pf_intercept()` holds,
//! always true with `enable_ept=0`: L0 walks L2's tables (`kvm_page_fault` with CR2) and only a
//! genuine guest fault is then reflected to L1 as a synthesized EXCEPTION_NMI exit whose
//! qualification is CR2.
//!
//! **Sequence matched** (shadow paging):
//! ```text
//! kvm_exit (L2) … [no kvm_page_fault address=A since that exit]
//! kvm_nested_vmexit_inject EXCEPTION_NMI intr_info #PF ext_inf1=A         → anomaly
//! ```

use vmxray_events::ExitInfo;
use vmxray_events::codes::{ExceptionVector, VmxBasicReason};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{L0Paging, Level};

const RULE: RuleId = RuleId::L2PfNotHandledByL0;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    fault: Option<(EventIndex, u64)>,
}

pub(crate) fn on_exit(st: &mut State) {
    st.fault = None;
}

pub(crate) fn on_page_fault(st: &mut State, at: EventIndex, address: u64) {
    st.fault = Some((at, address));
}

#[inline]
pub(crate) fn on_inject(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    let fault = st.fault.take();
    if ctx.features.l0_paging != L0Paging::Shadow
        || ctx.vcpu.level() != Some(Level::L2)
        || !info.reason().is_vmx(VmxBasicReason::EXCEPTION_NMI)
        || info.intr_info().and_then(|i| i.exception()) != Some(ExceptionVector::PF)
    {
        return;
    }
    let Some(cr2) = info.info1() else { return };
    ctx.checked(RULE);
    if fault.is_some_and(|(_, addr)| addr == cr2) {
        return;
    }
    let evidence: Vec<_> = ctx.vcpu.last_exit.map(|e| e.at).into_iter().collect();
    ctx.report(RULE, Severity::Warning, &evidence, || {
        format!("L2 #PF at CR2 {} reflected to L1 without L0 handling it first (no kvm_page_fault for that address since the exit)", hex(cr2))
    });
}
