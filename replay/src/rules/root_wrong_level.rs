//! **root_wrong_level** — invariant 14: every root loaded while L2 runs has `guest_mode` 1 and
//! every root loaded while L1 runs has `guest_mode` 0.
//!
//! **KVM behaviour.** `kvm_mmu_page_role.guest_mode` (bit 17) separates L2's roots from L1's
//! (set from `is_guest_mode()` in `kvm_calc_*_root_page_role`, mmu/mmu.c); a root of the other
//! level would let one level run on the other's translations.
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmexit_inject (→ L1) … kvm_mmu_get_page root guest_mode=1   → anomaly
//! kvm_nested_vmenter (→ L2) … kvm_mmu_get_page root guest_mode=0         → anomaly
//! ```
//! Silent between a VMLAUNCH/VMRESUME exit and its outcome (before 6.1 the entry itself is not
//! traced, §1.6, and L2's root is loaded before the first L2 `kvm_entry`), while the level is
//! not established (non-nested traces without nested events), and
//! when the input does not determine `guest_mode`: the kernel's text rendering of kvmmmu pages
//! never prints it (mmutrace.h `KVM_MMU_PAGE_PRINTK`), so a text trace leaves this rule "not
//! checkable" — read the raw fields (trace.dat, perf.data, `trace-cmd report -R`) instead.

use vmxray_events::MmuPage;

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::{Level, is_cr3_root};

const RULE: RuleId = RuleId::RootWrongLevel;

pub(crate) fn is_root(page: &MmuPage) -> bool {
    is_cr3_root(page.role) || (page.role.direct() && page.role.level() >= 4)
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, page: &MmuPage) {
    if !is_root(page) {
        return;
    }
    let Some(level) = ctx.vcpu.level() else { return };
    // Between a VMLAUNCH/VMRESUME exit and its outcome the level is in flux: before 6.1 the
    // nested entry has no event (§1.6), so KVM loads L2's root while the model still sees L1.
    if ctx.vcpu.pending_launch.is_some() {
        return;
    }
    let Some(guest_mode) = page.guest_mode() else { return };
    ctx.checked(RULE);
    let wrong = match level {
        Level::L1 => guest_mode,
        Level::L2 => !guest_mode,
    };
    if !wrong {
        return;
    }
    let (role, gfn) = (page.role, page.gfn);
    ctx.report(RULE, Severity::Error, &[], || {
        format!(
            "root gfn {} with role {role} (guest_mode {}) loaded while {level} runs",
            hex(gfn),
            u8::from(guest_mode)
        )
    });
}
