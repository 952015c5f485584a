//! **invvpid_root_not_reacquired** — §2.9, invariant 13: with `enable_ept=0`, INVVPID frees the
//! L2 (guest_mode) roots, so the next L2 entry loads one.
//!
//! **KVM behaviour.** `25b62c6274ed` "KVM: nVMX: Free only guest_mode (L2) roots on INVVPID w/o
//! EPT" (5.14), after Junaid Shahid's "Invalidate all roots when emulating INVVPID without EPT".
//!
//! **Sequence matched** (shadow paging known from non-direct L1 roots):
//! ```text
//! kvm_exit INVVPID (L1) … kvm_nested_vmenter (nested_ept=n)
//! [no kvm_mmu_get_page root with guest_mode=1]
//! kvm_entry (L2)                                           → anomaly
//! ```
//! An INVVPID that VMfails (VPID 0, non-canonical address: error 28) frees nothing and leaves no
//! event, hence *warning*.

use vmxray_events::codes::VmxBasicReason;
use vmxray_events::{ExitInfo, MmuPage, NestedVmenter};

use super::Ctx;
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{L0Paging, Level, Mode, is_cr3_root};

const RULE: RuleId = RuleId::InvvpidRootNotReacquired;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    invvpid_at: Option<EventIndex>,
    waiting: Option<(EventIndex, EventIndex)>,
}

pub(crate) fn on_exit(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    if ctx.vcpu.level() == Some(Level::L1) && info.reason().is_vmx(VmxBasicReason::INVVPID) {
        st.invvpid_at = Some(ctx.at);
    }
}

pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, st: &mut State, v: &NestedVmenter) {
    st.waiting = None;
    let Some(invvpid_at) = st.invvpid_at.take() else { return };
    if ctx.features.l0_paging == L0Paging::Shadow && v.tdp_enabled == Some(false) {
        st.waiting = Some((invvpid_at, ctx.at));
    }
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    // An unknown guest_mode (text rendering) counts: the entry is pending, so KVM is loading
    // L2's root.
    if st.waiting.is_some() && page.guest_mode() != Some(false) && is_cr3_root(page.role) {
        st.waiting = None;
        ctx.checked(RULE);
    }
}

pub(crate) fn on_inject(st: &mut State) {
    st.waiting = None;
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    let Some((invvpid_at, vmenter_at)) = st.waiting.take() else { return };
    if !matches!(ctx.vcpu.mode, Mode::L2Pending { .. }) {
        return;
    }
    ctx.checked(RULE);
    ctx.report(RULE, Severity::Warning, &[invvpid_at, vmenter_at], || {
        "L2 entered after INVVPID without loading a guest_mode root: with enable_ept=0 INVVPID must free L2's shadow roots (25b62c6274ed)".to_owned()
    });
}
