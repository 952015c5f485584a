//! **smm_nested_return** — invariant 18: an RSM that leaves an SMM entered from L2 re-enters
//! the same vmcs12.
//!
//! **KVM behaviour.** `vmx_enter_smm` stashes `smm.guest_mode` and performs a silent nested exit;
//! `vmx_leave_smm` calls `nested_vmx_enter_non_root_mode(from_vmentry=false)`, which traces
//! `kvm_nested_vmenter` with the same `current_vmptr`.
//!
//! **Sequence matched:**
//! ```text
//! (L2 active) kvm_smm_transition entering … kvm_smm_transition leaving
//! kvm_nested_vmenter vmcs ≠ the vmcs12 active at the SMI           → anomaly
//! kvm_entry with no kvm_nested_vmenter first (6.1+)                → anomaly
//! ```

use vmxray_events::NestedVmenter;

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::SmmStash;

const RULE: RuleId = RuleId::SmmNestedReturn;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    expect: Option<(EventIndex, SmmStash)>,
}

pub(crate) fn on_smm(ctx: &mut Ctx<'_>, st: &mut State, entering: bool) {
    if entering {
        st.expect = None;
    } else if let Some(stash) = ctx.vcpu.smm_stash {
        st.expect = Some((ctx.at, stash));
    }
}

pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, st: &mut State, v: &NestedVmenter) {
    let Some((left_at, stash)) = st.expect.take() else { return };
    ctx.checked(RULE);
    if let Some(vmptr) = stash.vmptr
        && vmptr != v.vmcs
    {
        let vmcs = v.vmcs;
        ctx.report(RULE, Severity::Error, &[stash.at, left_at], || {
            format!(
                "RSM re-entered vmcs12 {} but the SMI was taken in vmcs12 {}",
                hex(vmcs),
                hex(vmptr)
            )
        });
    }
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    let Some((left_at, stash)) = st.expect.take() else { return };
    if !ctx.features.nested_vmenter {
        return;
    }
    ctx.checked(RULE);
    ctx.report(RULE, Severity::Error, &[stash.at, left_at], || {
        "RSM left an SMM entered from L2 but the vCPU entered hardware without re-entering L2 (no kvm_nested_vmenter)".to_owned()
    });
}
