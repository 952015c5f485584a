//! **evmcs_restore_stale_exit** — bug (e), invariant 19: after an eVMCS nested-state restore,
//! an exit taken before the first L2 entry still reaches L1 completely.
//!
//! **KVM behaviour.** `f5c7e8425f18` "KVM: nVMX: Always make an attempt to map eVMCS after
//! migration" (`20210503150854.1144255-2-vkuznets@redhat.com`; Fixes `f2c7ef3ba955`): a nested
//! exit before `KVM_REQ_GET_NESTED_STATE_PAGES` was serviced never wrote the eVMCS, and Hyper-V
//! acted on the previous exit's data.
//!
//! **Sequence matched** (indirect evidence, hence *warning*):
//! ```text
//! kvm_nested_vmenter vmcs=-1 nested_rip=R   (no VMLAUNCH/VMRESUME/RSM before it: a restore)
//! kvm_nested_vmexit_inject EXTERNAL_INTERRUPT|PREEMPTION_TIMER|…  (before any kvm_entry)
//! kvm_nested_vmenter vmcs=-1 nested_rip=R' ≠ R   → anomaly: L1 acted on a stale exit
//! ```

use vmxray_capture::{ExitInfo, NestedVmenter};

use super::hlt_cancelled_exit_state::is_asynchronous;
use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{EntryCause, Mode};
use crate::transition::entry_cause;

const RULE: RuleId = RuleId::EvmcsRestoreStaleExit;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    restored: Option<(EventIndex, u64)>,
    stale: Option<(EventIndex, EventIndex, u64)>,
}

pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, st: &mut State, v: &NestedVmenter) {
    if let Some((restore_at, exit_at, rip)) = st.stale.take()
        && v.is_evmcs()
    {
        ctx.checked(RULE);
        if v.nested_rip != rip {
            let new_rip = v.nested_rip;
            ctx.report(RULE, Severity::Warning, &[restore_at, exit_at], || {
                format!(
                    "after an eVMCS restore and an asynchronous exit before L2 ran, L1 resumed L2 at {} instead of {}: it acted on a stale exit (fixed by f5c7e8425f18)",
                    hex(new_rip),
                    hex(rip)
                )
            });
        }
    }
    // A restore "usually has no earlier event at all": an unattributed first entry counts.
    let restore = matches!(entry_cause(ctx.vcpu), EntryCause::Restore | EntryCause::Unattributed);
    st.restored = (v.is_evmcs() && restore).then_some((ctx.at, v.nested_rip));
}

pub(crate) fn on_inject(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    let Some((restore_at, rip)) = st.restored.take() else { return };
    let before_first_entry =
        matches!(ctx.vcpu.mode, Mode::L2Pending { since } if since == restore_at);
    if before_first_entry && is_asynchronous(Some(info.reason)) {
        st.stale = Some((restore_at, ctx.at, rip));
    }
}
