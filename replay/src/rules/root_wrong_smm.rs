//! **root_wrong_smm** — invariant 14: `role.smm` is non-zero exactly while the vCPU is in SMM.
//!
//! **KVM behaviour.** `699023e23965` "KVM: x86: add SMM to the MMU role, support SMRAM address
//! space" (Paolo Bonzini, 4.2) gives SMM its own address space and roots; `kvm_smm_changed`
//! (smm.c) calls `kvm_mmu_reset_context` on every SMM transition.
//!
//! **Sequence matched:**
//! ```text
//! kvm_smm_transition entering … kvm_mmu_get_page root smm=0     → anomaly
//! kvm_smm_transition leaving  … kvm_mmu_get_page root smm≠0     → anomaly
//! ```
//! Not decidable on roots whose `smm` bits the input does not carry (the kernel's text
//! rendering never prints them).

use vmxray_events::MmuPage;

use super::root_wrong_level::is_root;
use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::SmmState;

const RULE: RuleId = RuleId::RootWrongSmm;

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, page: &MmuPage) {
    if !is_root(page) {
        return;
    }
    let in_smm = match ctx.vcpu.smm {
        SmmState::Unknown => return,
        SmmState::In => true,
        SmmState::Out => false,
    };
    // The kernel's text rendering never prints role.smm: not decidable then.
    let Some(smm) = page.smm() else { return };
    ctx.checked(RULE);
    if (smm != 0) == in_smm {
        return;
    }
    let (role, gfn) = (page.role, page.gfn);
    ctx.report(RULE, Severity::Error, &[], || {
        format!(
            "root gfn {} with role {role} (smm {smm}) loaded {} SMM",
            hex(gfn),
            if in_smm { "inside" } else { "outside" }
        )
    });
}
