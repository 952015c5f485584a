//! **reset_root_role** — bug (d), invariant 16: after RESET/INIT of a vCPU that had paging
//! enabled, the shadow MMU starts from a direct root (guest_mode 0, smm 0).
//!
//! **KVM behaviour.** `0aa1837533e5` "KVM: x86: Properly reset MMU context at vCPU RESET/INIT"
//! (series `20210424004645.3950558-1-seanjc@google.com`, 5.14): without it, an INIT taken in long
//! mode left the 64-bit shadow root active in the new unpaged context.
//!
//! **Sequence matched** (shadow paging):
//! ```text
//! kvm_mmu_get_page root l4 (not direct)           the vCPU ran with paging
//! … RESET/INIT …
//! [since the previous kvm_entry: no kvm_mmu_get_page direct root with guest_mode 0, smm 0]
//! kvm_entry rip 0xfff0                             → anomaly
//! ```
//! RESET is recognized by the entry at the reset vector 0xfff0 (INIT-SIPI entries at CS:0 are
//! not recognized).

use vmxray_capture::{Entry, MmuPage};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{L0Paging, Level, RootLoad, is_cr3_root};

const RULE: RuleId = RuleId::ResetRootRole;
const RESET_RIP: u64 = 0xfff0;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    /// The latest non-direct root.
    paging_root_at: Option<EventIndex>,
    /// `paging_root_at` as it was at the previous entry (before the reset's own root loads).
    paging_root_before_entry: Option<EventIndex>,
    root_since_entry: Option<RootLoad>,
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let role = page.role;
    let root = is_cr3_root(role) || (role.direct() && role.level() >= 4);
    if !root || page.guest_mode() == Some(true) {
        return;
    }
    if !role.direct() {
        st.paging_root_at = Some(ctx.at);
    }
    st.root_since_entry = Some(RootLoad { gfn: page.gfn, role, created: false, at: ctx.at });
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State, e: &Entry) {
    let root = st.root_since_entry.take();
    let paging_before = std::mem::replace(&mut st.paging_root_before_entry, st.paging_root_at);
    if e.rip != Some(RESET_RIP)
        || ctx.vcpu.level() == Some(Level::L2)
        || ctx.features.l0_paging != L0Paging::Shadow
    {
        return;
    }
    let Some(paging_at) = paging_before else { return };
    st.paging_root_at = None;
    st.paging_root_before_entry = None;
    ctx.checked(RULE);
    match root {
        Some(r) if r.role.direct() && !r.role.guest_mode() && r.role.smm() == 0 => {}
        Some(r) => {
            ctx.report(RULE, Severity::Error, &[paging_at, r.at], || {
                format!(
                    "the root loaded for the entry at the reset vector has role {} (gfn {}): expected a direct root (fixed by 0aa1837533e5)",
                    r.role,
                    hex(r.gfn)
                )
            });
        }
        None => {
            ctx.report(RULE, Severity::Error, &[paging_at], || {
                "entry at the reset vector 0xfff0 with no root loaded since paging was on: the pre-reset root is reused (fixed by 0aa1837533e5)".to_owned()
            });
        }
    }
}
