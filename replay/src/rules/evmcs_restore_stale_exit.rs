//! **evmcs_restore_stale_exit** — bug (e), invariant 19: after an eVMCS nested-state restore,
//! an exit taken before the first L2 entry still reaches L1 completely.
//!
//! **KVM behaviour.** `f5c7e8425f18` "KVM: nVMX: Always make an attempt to map eVMCS after
//! migration" (`20210503150854.1144255-2-vkuznets@redhat.com`; Fixes `f2c7ef3ba955`): a nested
//! exit before `KVM_REQ_GET_NESTED_STATE_PAGES` was serviced never wrote the eVMCS, and Hyper-V
//! acted on the previous exit's data.
//!
//! **Sequence matched** (indirect evidence, hence *warning*): the lost exit itself leaves no
//! trace, so the rule flags L1's reaction to it, two of the three consequences §3(e) lists
//! ("it VMRESUMEs at once with the same nested_rip and makes no progress, L2 exits repeat
//! identically, or Hyper-V bugchecks"):
//! ```text
//! kvm_nested_vmenter vmcs=-1 nested_rip=R   (no VMLAUNCH/VMRESUME/RSM before it: a restore)
//! kvm_nested_vmexit_inject EXTERNAL_INTERRUPT|PREEMPTION_TIMER|…  (before any kvm_entry)
//! then either
//!   kvm_nested_vmenter vmcs=-1 nested_rip=R' ≠ R   → anomaly: L1 acted on a stale exit
//! or, before L1's next nested entry,
//!   kvm_exit MSR_WRITE, kvm_msr msr_write 0x40000100–0x40000105   → anomaly: Hyper-V bugchecks
//!   (HV_X64_MSR_CRASH_P0–P4 and CRASH_CTL, the guest crash MSRs KVM exposes to Hyper-V guests)
//! ```
//! The bugcheck is reported at the crash-MSR write, with the `kvm_exit` that carried it, the
//! restore and the exit as evidence.

use vmxray_events::{ExitInfo, NestedVmenter};

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

/// `HV_X64_MSR_CRASH_P0` … `HV_X64_MSR_CRASH_CTL` (Hyper-V TLFS; arch/x86/kvm/hyperv.c).
const HV_CRASH_MSRS: std::ops::RangeInclusive<u32> = 0x4000_0100..=0x4000_0105;

pub(crate) fn on_msr(ctx: &mut Ctx<'_>, st: &mut State, write: bool, index: u32) {
    if !write || !HV_CRASH_MSRS.contains(&index) {
        return;
    }
    let Some((restore_at, exit_at, rip)) = st.stale.take() else { return };
    ctx.checked(RULE);
    let mut evidence = vec![restore_at, exit_at];
    evidence.extend(ctx.vcpu.last_exit.map(|x| x.at));
    ctx.report(RULE, Severity::Warning, &evidence, || {
        format!(
            "after an eVMCS restore and an asynchronous exit before L2 ran (restored L2 RIP {}), L1 writes the Hyper-V crash MSR {}: it bugchecked on stale exit information (fixed by f5c7e8425f18)",
            hex(rip),
            hex(u64::from(index))
        )
    });
}

#[inline]
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
    if before_first_entry && is_asynchronous(Some(info.reason())) {
        st.stale = Some((restore_at, ctx.at, rip));
    }
}
