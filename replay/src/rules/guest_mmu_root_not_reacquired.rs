//! **guest_mmu_root_not_reacquired** — bug (c), invariants 11 and 12: after L1 invalidates EPT
//! contexts, the next nested-EPT entry reloads its guest_mmu root before L2 runs.
//!
//! **KVM behaviour.** `f8aa7e3958bc` "KVM: nVMX: Invalidate all EPTP contexts when emulating
//! INVEPT for L1" (`20200320212833.3507-4-sean.j.christopherson@intel.com`, 5.8; refined by
//! `ce8fe7b77bd8` "Free only the affected contexts"). Before it, `handle_invept` did nothing and
//! L2 kept stale translations. `nested_release_vmcs12` (VMCLEAR of the current vmcs12, VMPTRLD
//! of another) frees every guest_mmu root too.
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter nested_eptp=E … (guest_mmu roots already seen for this vCPU)
//! kvm_exit INVEPT (L1)     — or — kvm_exit VMPTRLD/VMCLEAR and the next entry's vmcs differs
//! kvm_nested_vmenter nested_eptp=E
//! [no kvm_mmu_get_page gfn=E>>12 guest_mode=1 direct=0]
//! kvm_entry (L2)                                           → anomaly
//! ```
//! The INVEPT operand is not traced, so INVEPT is applied strictly (*error*) only while L1 has
//! used a single EPTP on this vCPU. With several EPTPs the INVEPT is taken to invalidate the
//! EPTP of the vmcs12 L1 was running when it executed it (what an L1 does after editing that
//! guest's EPT12, and what KVM as L1 does: `vmx_flush_tlb_current`), checked on that vmcs12's
//! next entry with the same EPTP and no VMPTRLD/VMCLEAR between — a *warning*, since an L1 may
//! invalidate another context (the real bug-(c) recordings, `samples/real/vmx/bugs/c-*`, use
//! two EPTPs). VMCLEAR followed by the same vmcs is ambiguous and ignored.
//! Decidable only when the trace records `kvm_mmu_get_page` (guest_mmu is always a shadow MMU,
//! never the TDP MMU, so its root loads are always traced then).

use vmxray_events::codes::VmxBasicReason;
use vmxray_events::{ExitInfo, MmuPage, NestedVmenter};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{Level, Mode, pgd_gfn};

const RULE: RuleId = RuleId::GuestMmuRootNotReacquired;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    /// The single EPTP gfn L1 used so far, and whether it used several.
    eptp_gfn: Option<u64>,
    several_eptps: bool,
    invept_at: Option<EventIndex>,
    /// The vmcs12 and EPTP gfn current when L1 executed the INVEPT.
    invept_current: Option<(u64, u64)>,
    release_at: Option<EventIndex>,
    waiting: Option<Waiting>,
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    vmenter_at: EventIndex,
    trigger_at: EventIndex,
    trigger: &'static str,
    gfn: u64,
    severity: Severity,
}

pub(crate) fn on_exit(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    if ctx.vcpu.level() != Some(Level::L1) {
        return;
    }
    match info.reason().vmx_basic() {
        Some(VmxBasicReason::INVEPT) => {
            st.invept_at = Some(ctx.at);
            st.invept_current = ctx.vcpu.current_vmptr.and_then(|p| {
                let eptp = ctx.vcpu.vmcs12.get(p)?.eptp?;
                Some((p, pgd_gfn(eptp.value)))
            });
        }
        Some(VmxBasicReason::VMPTRLD | VmxBasicReason::VMCLEAR) => st.release_at = Some(ctx.at),
        Some(_) | None => {}
    }
}

#[inline]
pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, st: &mut State, v: &NestedVmenter) {
    st.waiting = None;
    let invept = st.invept_at.take();
    let release = st.release_at.take();
    let Some(eptp) = v.nested_tdp_root() else { return };
    let gfn = pgd_gfn(eptp);
    let single = !st.several_eptps && st.eptp_gfn.is_none_or(|g| g == gfn);
    match st.eptp_gfn {
        Some(g) if g != gfn => st.several_eptps = true,
        Some(_) => {}
        None => st.eptp_gfn = Some(gfn),
    }
    let vmptr_changed = ctx.vcpu.last_entered_vmptr.is_some_and(|p| p != v.vmcs);
    let invept_current = st.invept_current.take();
    let trigger = match (invept, release) {
        (Some(at), _) if single => Some((at, "INVEPT", Severity::Error)),
        (Some(at), None) if invept_current == Some((v.vmcs, gfn)) => Some((
            at,
            "INVEPT (its operand is not traced: taken to be the EPTP of this vmcs12, which L1 was running)",
            Severity::Warning,
        )),
        (_, Some(at)) if vmptr_changed => {
            Some((at, "release of the current vmcs12 (VMPTRLD/VMCLEAR)", Severity::Error))
        }
        _ => None,
    };
    if let Some((trigger_at, trigger, severity)) = trigger
        && (ctx.features.guest_mmu_roots || ctx.features.mmu_get_page)
    {
        st.waiting = Some(Waiting { vmenter_at: ctx.at, trigger_at, trigger, gfn, severity });
    }
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    // An unknown guest_mode (text rendering) counts: a non-direct root for EPTP>>12 loaded
    // while the entry is pending is the guest_mmu root.
    if let Some(w) = st.waiting
        && page.guest_mode() != Some(false)
        && !page.role.direct()
        && page.gfn == w.gfn
    {
        st.waiting = None;
        ctx.checked(RULE);
    }
}

pub(crate) fn on_inject(st: &mut State) {
    st.waiting = None;
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    let Some(w) = st.waiting.take() else { return };
    if !matches!(ctx.vcpu.mode, Mode::L2Pending { .. }) {
        return;
    }
    ctx.checked(RULE);
    ctx.report(RULE, w.severity, &[w.trigger_at, w.vmenter_at], || {
        format!(
            "L2 entered with EPTP gfn {} after {} without reacquiring its guest_mmu root: stale EPT12 translations (fixed by f8aa7e3958bc)",
            hex(w.gfn),
            w.trigger
        )
    });
}
