//! **reset_root_role** — bug (d), invariant 16: after RESET/INIT of a vCPU that had paging
//! enabled, the shadow MMU starts from a direct root (guest_mode 0, smm 0).
//!
//! **KVM behaviour.** `0aa1837533e5` "KVM: x86: Properly reset MMU context at vCPU RESET/INIT"
//! (series `20210424004645.3950558-1-seanjc@google.com`, 5.14): without it, an INIT taken in long
//! mode left the 64-bit shadow root active in the new unpaged context. With the fix,
//! `kvm_vcpu_reset` calls `kvm_mmu_reset_context` when the old CR0.PG was 1, and the next
//! `kvm_mmu_load` allocates direct roots (`mmu_alloc_direct_roots`: one root of the shadow root
//! level, or four level-2 PAE roots with gfn `i << 18` for an unpaged guest, §2.10).
//!
//! **Sequence matched** (shadow paging):
//! ```text
//! kvm_mmu_get_page root l4 (not direct)        the vCPU ran with paging — or a kvm_exit at a
//!                                              64-bit RIP (> 4 GiB: IA-32e mode needs CR0.PG=1)
//! … RESET/INIT …
//! [since the previous kvm_entry: no kvm_mmu_get_page direct root (level ≥ 2, guest_mode 0,
//!  smm 0)]
//! kvm_entry rip 0xfff0 (RESET, `kvm_vcpu_reset`)                          → anomaly
//! kvm_entry rip 0 (INIT then SIPI, `kvm_vcpu_deliver_sipi_vector` sets
//!   RIP 0 and CS from the vector, §2.10 step 5) after a kvm_exit at a
//!   64-bit RIP, with no userspace exit, SMM transition or nested event
//!   between                                                               → anomaly
//! ```
//! RIP 0 is recognized as the SIPI entry only when the vCPU's previous exit was in 64-bit code:
//! nothing but a reset moves a long-mode vCPU to RIP 0 between an exit and the next entry
//! without a userspace exit (`KVM_SET_REGS`) or a nested/SMM transition. A role bit the input
//! does not carry (the kernel's text rendering omits `guest_mode`/`smm`) is not held against
//! the root.

use vmxray_events::{Entry, ExitInfo, MmuPage};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{L0Paging, Level, RootLoad, is_cr3_root};

const RULE: RuleId = RuleId::ResetRootRole;
const RESET_RIP: u64 = 0xfff0;
/// RIP after SIPI (`kvm_vcpu_deliver_sipi_vector`).
const SIPI_RIP: u64 = 0;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    /// The latest evidence of paging: a non-direct root, or an exit at a 64-bit RIP.
    paging_at: Option<EventIndex>,
    /// `paging_at` as it was at the previous entry (before a reset's own root loads, which a
    /// buggy KVM may make non-direct).
    paging_before_entry: Option<EventIndex>,
    root_since_entry: Option<RootLoad>,
    /// The previous `kvm_exit` was at a 64-bit RIP and nothing but KVM itself (no userspace
    /// exit, no nested or SMM transition) touched the vCPU's registers since.
    long_mode_exit: bool,
}

pub(crate) fn on_exit(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    let long_mode = ctx.vcpu.level() != Some(Level::L2)
        && info.guest_rip().is_some_and(|rip| rip > u64::from(u32::MAX));
    st.long_mode_exit = long_mode;
    if long_mode {
        st.paging_at = Some(ctx.at);
    }
}

/// A userspace exit, a nested transition or an SMM transition: the next entry's RIP may
/// legitimately differ from the exit's.
pub(crate) fn disturb(st: &mut State) {
    st.long_mode_exit = false;
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let role = page.role;
    // PAE direct roots are level 2 (mmu_alloc_direct_roots, PT32_ROOT_LEVEL).
    let root = is_cr3_root(role) || (role.direct() && role.level() >= 2);
    if !root || page.guest_mode() == Some(true) {
        return;
    }
    if !role.direct() {
        st.paging_at = Some(ctx.at);
    }
    st.root_since_entry = Some(RootLoad { gfn: page.gfn, role, created: false, at: ctx.at });
}

#[inline]
pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State, e: &Entry) {
    let root = st.root_since_entry.take();
    let paging_before = std::mem::replace(&mut st.paging_before_entry, st.paging_at);
    let sipi = e.rip == Some(SIPI_RIP) && st.long_mode_exit;
    st.long_mode_exit = false;
    if !(e.rip == Some(RESET_RIP) || sipi)
        || ctx.vcpu.level() == Some(Level::L2)
        || ctx.features.l0_paging != L0Paging::Shadow
    {
        return;
    }
    let Some(paging_at) = paging_before.or(st.paging_at) else { return };
    st.paging_at = None;
    st.paging_before_entry = None;
    ctx.checked(RULE);
    let what =
        if sipi { "the SIPI entry at RIP 0" } else { "the entry at the reset vector 0xfff0" };
    match root {
        Some(r) if r.role.direct() && !r.role.guest_mode() && r.role.smm() == 0 => {}
        Some(r) => {
            ctx.report(RULE, Severity::Error, &[paging_at, r.at], || {
                format!(
                    "the root loaded for {what} has role {} (gfn {}): expected a direct root (fixed by 0aa1837533e5)",
                    r.role,
                    hex(r.gfn)
                )
            });
        }
        None => {
            ctx.report(RULE, Severity::Error, &[paging_at], || {
                format!(
                    "{what} after RESET/INIT with no root loaded since paging was on: the pre-reset root is reused (fixed by 0aa1837533e5)"
                )
            });
        }
    }
}
