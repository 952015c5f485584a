//! **late_vmfail_l1_cr3** — bug (b), invariant 9: after a late VM-Fail, L1 runs with the CR3 it
//! had at its VMLAUNCH/VMRESUME.
//!
//! **KVM behaviour.** `f087a02941fe` "KVM: nVMX: Stash L1's CR3 in vmcs01.GUEST_CR3 on nested
//! entry w/o EPT" (`20190607185534.24368-1-sean.j.christopherson@intel.com`; first fix
//! `2b27924bb1d4` "KVM: nVMX: always use early vmcs check when EPT is disabled"). With
//! `enable_ept=0`, `nested_vmx_restore_host_state` takes CR3 from vmcs01.GUEST_CR3, which held
//! KVM's shadow-root HPA unless L1's CR3 was stashed there at entry.
//!
//! **Sequence matched:**
//! ```text
//! kvm_cr cr_write 3 = C1 (L1) … kvm_exit VMLAUNCH … kvm_nested_vmenter … kvm_entry
//! kvm_nested_vmenter_failed "hardware VM-instruction error: …"
//! kvm_mmu_get_page root (guest_mode 0) gfn ≠ C1>>12     → anomaly
//!   or kvm_cr cr_read 3 = V ≠ C1                         → anomaly
//!   or kvm_userspace_exit KVM_EXIT_SHUTDOWN, no kvm_entry → anomaly (6.1)
//!   or kvm_entry with no root load (shadow MMU, roots traced) … KVM_EXIT_SHUTDOWN
//!                                                          → anomaly (6.12)
//! ```
//! Decidable when L1's CR3 is known (a `kvm_cr` in L1) and an L1 root load, a CR3 read or a
//! shutdown follows.
//!
//! **The shutdown forms** are what real KVM leaves (f087a02941fe reverted, recorded in
//! `samples/real/vmx/bugs/b-buggy-{6.1,6.12}.dat`): the restored "CR3" is a host-physical
//! address, in no memslot of a small L1. 6.1's root load after the unwind fails
//! `mmu_check_root`, which requests a triple fault instead of tracing a `kvm_mmu_get_page`: the
//! vCPU leaves with `KVM_EXIT_SHUTDOWN` without entering L1 again. 6.12 loads a dummy root for
//! an invisible root gfn (no `kvm_mmu_get_page` either) and enters L1, whose fetch at the
//! instruction after its VMLAUNCH/VMRESUME faults, the walk of its tables fails at once, and
//! #PF, #DF end in the triple fault. With L1's own CR3 back (the fix) the unwind's MMU reset
//! always loads L1's root (`kvm_mmu_get_page`) before L1 runs, which settles the rule first.
//! The only other unwind that ends in a triple fault is a VMX abort on a failing VM-exit
//! MSR-load list (no entry then), which the first message names.

use vmxray_events::codes::UserspaceExitReason;
use vmxray_events::{MmuPage, VmFailKind};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{L0Paging, Level, Observed, is_cr3_root, pgd_gfn};

const RULE: RuleId = RuleId::LateVmfailL1Cr3;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    armed: Option<(EventIndex, Observed)>,
    /// A `kvm_entry` came since the late VM-Fail.
    entered: bool,
    /// That first entry came with no root loaded for L1 although the trace shows the shadow
    /// MMU's root loads: L1 runs on a root for no CR3 of its own.
    rootless_entry: Option<EventIndex>,
}

pub(crate) fn disarm(st: &mut State) {
    st.armed = None;
}

pub(crate) fn on_entry(ctx: &Ctx<'_>, st: &mut State) {
    if st.armed.is_none() || st.entered {
        return;
    }
    st.entered = true;
    if ctx.features.mmu_get_page && ctx.features.l0_paging == L0Paging::Shadow {
        st.rootless_entry = Some(ctx.at);
    }
}

pub(crate) fn on_vmenter_failed(ctx: &mut Ctx<'_>, st: &mut State, kind: VmFailKind) {
    if kind == VmFailKind::LateHardware
        && ctx.vcpu.level() == Some(Level::L2)
        && let Some(cr3) = ctx.vcpu.l1_cr3
    {
        st.armed = Some((ctx.at, cr3));
        st.entered = false;
        st.rootless_entry = None;
    }
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let Some((failed_at, cr3)) = st.armed else { return };
    // After the unwind the vCPU runs L1 out of SMM, so a root whose guest_mode/smm the input
    // does not carry (text rendering) is L1's; one known to be L2's or SMM's is not.
    if !is_cr3_root(page.role)
        || page.guest_mode() == Some(true)
        || page.smm().is_some_and(|s| s != 0)
    {
        return;
    }
    st.armed = None;
    ctx.checked(RULE);
    if page.gfn == pgd_gfn(cr3.value) {
        return;
    }
    let gfn = page.gfn;
    ctx.report(RULE, Severity::Error, &[cr3.at, failed_at], || {
        format!(
            "after a late VM-Fail L1's root shadows gfn {} but L1's CR3 at the VMLAUNCH/VMRESUME was {} (gfn {}): L1 CR3 restored from vmcs01.GUEST_CR3 holding a shadow root (fixed by f087a02941fe)",
            hex(gfn),
            hex(cr3.value),
            hex(pgd_gfn(cr3.value))
        )
    });
}

pub(crate) fn on_cr(ctx: &mut Ctx<'_>, st: &mut State, write: bool, cr: u32, val: u64) {
    let Some((failed_at, cr3)) = st.armed else { return };
    if cr != 3 {
        return;
    }
    st.armed = None;
    if write {
        return;
    }
    ctx.checked(RULE);
    if val == cr3.value {
        return;
    }
    ctx.report(RULE, Severity::Error, &[cr3.at, failed_at], || {
        format!(
            "after a late VM-Fail L1 reads CR3 {} but its CR3 at the VMLAUNCH/VMRESUME was {} (fixed by f087a02941fe)",
            hex(val),
            hex(cr3.value)
        )
    });
}

pub(crate) fn on_userspace_exit(ctx: &mut Ctx<'_>, st: &mut State, reason: UserspaceExitReason) {
    let Some((failed_at, cr3)) = st.armed else { return };
    if reason != UserspaceExitReason::SHUTDOWN {
        return;
    }
    if !st.entered {
        st.armed = None;
        ctx.checked(RULE);
        ctx.report(RULE, Severity::Error, &[cr3.at, failed_at], || {
            format!(
                "L1 shut down right after a late VM-Fail, before running again: no root could be loaded for the CR3 KVM restored, although L1's CR3 at the VMLAUNCH/VMRESUME was {} — L1 CR3 restored from vmcs01.GUEST_CR3 holding a shadow-root HPA in no memslot (fixed by f087a02941fe), unless a VM-exit MSR-load list failed (VMX abort)",
                hex(cr3.value)
            )
        });
    } else if let Some(entry_at) = st.rootless_entry {
        st.armed = None;
        ctx.checked(RULE);
        ctx.report(RULE, Severity::Error, &[cr3.at, failed_at, entry_at], || {
            format!(
                "L1 shut down after a late VM-Fail: it was re-entered with no root loaded for its CR3 {} (the unwind's MMU reset loads none for a CR3 in no memslot) — L1 CR3 restored from vmcs01.GUEST_CR3 holding a shadow-root HPA (fixed by f087a02941fe)",
                hex(cr3.value)
            )
        });
    }
}
