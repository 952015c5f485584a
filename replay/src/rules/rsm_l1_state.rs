//! **rsm_l1_state** — an RSM that returns into L2 must leave L1's own state intact: when L2
//! next exits to L1, L1 resumes where it was (after its VMRUN/VMRESUME, or at HOST_RIP), never
//! at the RSM instruction.
//!
//! **KVM behaviour.** An SMI taken while L2 runs saves L2 in SMRAM and performs a silent
//! nested exit; RSM (emulated, `kvm_exit` RSM / `kvm_emulate_insn 0f aa`, then
//! `kvm_smm_transition leaving`) re-enters L2 (`kvm_nested_vmenter`/`kvm_nested_vmrun`). With
//! the VMCB split (4995a3685f1b) nSVM re-entered L2 from the SMM state *without* saving L1's
//! state into VMCB01 first, so L1's RIP (and the rest) was left as the RSM's: L2's first exit
//! reflected to L1 lands L1 on the RSM instruction outside SMM, which then #UDs or #GPs. Fixed by
//! 37be407b2ce8 "KVM: nSVM: Fix L1 state corruption upon return from SMM" (2021).
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit rip R … kvm_smm_transition leaving … kvm_nested_vmenter (RSM into L2)
//! … kvm_nested_vmexit_inject … kvm_entry rip R                     → anomaly
//! ```
//! A second SMM transition, a `kvm_entry` in L2 after the reflection, or lost events disarm it.

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};

const RULE: RuleId = RuleId::RsmL1State;

/// Where the RSM was and how far the sequence has got.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    /// The exit that led to the RSM (its RIP is the RSM's) and the `leaving` transition.
    rsm: Option<(EventIndex, u64, EventIndex)>,
    /// The RSM re-entered L2 (`kvm_nested_vmenter`).
    entered_l2: Option<EventIndex>,
    /// L2's first exit was reflected to L1 (`kvm_nested_vmexit_inject`).
    reflected: Option<EventIndex>,
}

pub(crate) fn on_smm(ctx: &mut Ctx<'_>, st: &mut State, entering: bool) {
    *st = State::default();
    if entering {
        return;
    }
    if let Some(exit) = ctx.vcpu.last_exit
        && let Some(rip) = exit.rip
        && ctx.vcpu.exited_since_entry != Some(false)
    {
        st.rsm = Some((exit.at, rip, ctx.at));
    }
}

/// The first `kvm_nested_vmenter` after the `leaving` transition, before any `kvm_entry`, is
/// the RSM's return into L2; any other one ends the sequence.
pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, st: &mut State) {
    if st.rsm.is_some() && st.entered_l2.is_none() {
        st.entered_l2 = Some(ctx.at);
    } else {
        *st = State::default();
    }
}

pub(crate) fn on_inject(ctx: &mut Ctx<'_>, st: &mut State) {
    if st.entered_l2.is_some() && st.reflected.is_none() {
        st.reflected = Some(ctx.at);
    }
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State, rip: Option<u64>) {
    let Some((exit_at, rsm_rip, left_at)) = st.rsm else { return };
    let Some(entered) = st.entered_l2 else {
        // RSM returned to L1 (or the return into L2 was not traced).
        *st = State::default();
        return;
    };
    // The first entry after the return is L2's own.
    let Some(reflected) = st.reflected else { return };
    *st = State::default();
    let Some(rip) = rip else { return };
    ctx.checked(RULE);
    if rip == rsm_rip {
        ctx.report(RULE, Severity::Error, &[exit_at, left_at, entered, reflected], || {
            format!(
                "after RSM returned into L2, L2's first exit to L1 resumed L1 at the RSM instruction's RIP {} outside SMM: L1's state was overwritten by the SMM state (VMCB01 not saved before re-entering L2)",
                hex(rip)
            )
        });
    }
}
