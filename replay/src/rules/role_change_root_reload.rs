//! **role_change_root_reload** — invariant 17: a change of an MMU-role input is followed by a
//! root load (with the new role) before the next `kvm_entry`.
//!
//! **KVM behaviour.** `kvm_post_set_cr0` / `kvm_post_set_cr4` (x86.c) call
//! `kvm_mmu_reset_context` when a bit of `KVM_MMU_CR0_ROLE_BITS` (PG, WP) or
//! `KVM_MMU_CR4_ROLE_BITS` (PSE, PAE, PGE, PCIDE, SMEP, SMAP, PKE, LA57) changes, and
//! `kvm_smm_changed` (smm.c) does so on every SMM transition; `kvm_mmu_reset_context` frees every
//! root (`kvm_mmu_unload`), so `kvm_mmu_load` must allocate one — traced as `kvm_mmu_get_page`
//! (existing or new) by the shadow MMU — before the vCPU runs. The same reset at RESET/INIT is
//! `0aa1837533e5` (bug d).
//!
//! **Sequence matched** (shadow paging; SMM also with legacy-MMU TDP roots):
//! ```text
//! kvm_cr cr_write 0 = V (PG or WP differs from the last known CR0)   — or CR4 role bits,
//!   or kvm_smm_transition
//! [no kvm_mmu_get_page root, no kvm_inj_exception (the write faulted)]
//! kvm_entry                                                          → anomaly
//! kvm_mmu_get_page root direct=1 after CR0.PG 0→1 (or non-direct after 1→0) → anomaly
//! ```

use vmxray_events::MmuPage;

use super::root_wrong_level::is_root;
use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::L0Paging;

const RULE: RuleId = RuleId::RoleChangeRootReload;
const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
/// PSE, PAE, PGE, PCIDE, SMEP, SMAP, PKE, LA57.
const CR4_ROLE_BITS: u64 =
    1 << 4 | 1 << 5 | 1 << 7 | 1 << 17 | 1 << 20 | 1 << 21 | 1 << 22 | 1 << 12;

#[derive(Clone, Copy, Debug)]
struct Pending {
    at: EventIndex,
    what: &'static str,
    /// For a CR0.PG change: whether the new root must be direct (paging off).
    expect_direct: Option<bool>,
    /// Needs shadow paging (CR changes) or any traced roots (SMM).
    shadow_only: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    cr0: Option<u64>,
    cr4: Option<u64>,
    pending: Option<Pending>,
}

pub(crate) fn on_cr(ctx: &mut Ctx<'_>, st: &mut State, write: bool, cr: u32, val: u64) {
    let (known, mask, what) = match cr {
        0 => (&mut st.cr0, CR0_PG | CR0_WP, "CR0.PG/WP"),
        4 => (&mut st.cr4, CR4_ROLE_BITS, "CR4 paging bits"),
        _ => return,
    };
    let old = known.replace(val);
    if !write {
        return;
    }
    if let Some(old) = old
        && (old ^ val) & mask != 0
    {
        let expect_direct = (cr == 0 && (old ^ val) & CR0_PG != 0).then_some(val & CR0_PG == 0);
        st.pending = Some(Pending { at: ctx.at, what, expect_direct, shadow_only: true });
    }
}

pub(crate) fn on_smm(ctx: &mut Ctx<'_>, st: &mut State) {
    st.pending = Some(Pending {
        at: ctx.at,
        what: "SMM transition",
        expect_direct: None,
        shadow_only: false,
    });
}

pub(crate) fn on_inj_exception(st: &mut State) {
    st.pending = None;
}

fn decidable(ctx: &Ctx<'_>, p: &Pending) -> bool {
    match ctx.features.l0_paging {
        L0Paging::Shadow => true,
        L0Paging::Tdp => !p.shadow_only,
        L0Paging::Unknown => false,
    }
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let Some(p) = st.pending else { return };
    if !is_root(page) {
        return;
    }
    st.pending = None;
    if !decidable(ctx, &p) {
        return;
    }
    ctx.checked(RULE);
    if let Some(direct) = p.expect_direct
        && page.role.direct() != direct
    {
        let (role, gfn) = (page.role, page.gfn);
        ctx.report(RULE, Severity::Error, &[p.at], || {
            format!(
                "after {} the root gfn {} has role {role}: expected a {} root",
                p.what,
                hex(gfn),
                if direct { "direct (paging off)" } else { "shadow (paging on)" }
            )
        });
    }
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    let Some(p) = st.pending.take() else { return };
    if !decidable(ctx, &p) {
        return;
    }
    ctx.checked(RULE);
    ctx.report(RULE, Severity::Error, &[p.at], || {
        format!("{} changed the MMU role but no root was loaded before the next entry", p.what)
    });
}
