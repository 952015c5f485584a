//! **root_gfn_not_cr3** — §1.16, invariant 14: the shadow root loaded after a MOV to CR3
//! shadows that CR3.
//!
//! **KVM behaviour.** `kvm_mmu_new_pgd` (fast switch or free) and then `kvm_mmu_load` →
//! `mmu_alloc_shadow_roots` (mmu/mmu.c) allocate the root for the new pgd: gfn = CR3 >> 12 for a
//! 4/5-level or 32-bit guest (PAE roots are per-PDPTE and not checked). The root is loaded before
//! the next `kvm_entry`, with no guest page walk in between.
//!
//! **Sequence matched:**
//! ```text
//! kvm_cr cr_write 3 = C
//! kvm_mmu_get_page root (not direct, L1 or shadow-paged L2) gfn ≠ C>>12   → anomaly
//! (the window closes at kvm_entry, a page fault or a guest walk)
//! ```
//! Real traces of this machine (emulator-only backend) carry no `kvm_cr`: not checkable there.

use vmxray_events::MmuPage;

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::{Level, Observed, is_cr3_root, pgd_gfn};

const RULE: RuleId = RuleId::RootGfnNotCr3;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    window: Option<Observed>,
}

pub(crate) fn on_cr(ctx: &mut Ctx<'_>, st: &mut State, write: bool, cr: u32, val: u64) {
    if write && cr == 3 {
        st.window = Some(Observed::new(val, ctx.at));
    }
}

pub(crate) fn close(st: &mut State) {
    st.window = None;
}

pub(crate) fn on_entry(st: &mut State) {
    close(st);
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let Some(cr3) = st.window else { return };
    let role = page.role;
    if !is_cr3_root(role) {
        return;
    }
    st.window = None;
    // Nested-EPT L2 roots are keyed by EPTP, not by L2's CR3.
    // Without guest_mode in the input (text rendering), the root belongs to the level that
    // loaded CR3: L2's unless the vCPU is known to run L1.
    let l2_root = page.guest_mode().unwrap_or(ctx.vcpu.level() != Some(Level::L1));
    if l2_root && ctx.vcpu.current_record().and_then(|r| r.nested_ept) != Some(false) {
        return;
    }
    ctx.checked(RULE);
    let expected =
        if role.has_4_byte_gpte() { (cr3.value & 0xffff_f000) >> 12 } else { pgd_gfn(cr3.value) };
    if page.gfn == expected {
        return;
    }
    let gfn = page.gfn;
    ctx.report(RULE, Severity::Error, &[cr3.at], || {
        format!(
            "root {} loaded after MOV CR3 = {} shadows gfn {}, expected {}",
            role,
            hex(cr3.value),
            hex(gfn),
            hex(expected)
        )
    });
}
