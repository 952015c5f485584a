//! **guest_mmu_root_role** — invariant 15: a guest_mmu (shadow EPT) root has the role
//! `kvm_calc_shadow_ept_root_page_role` gives it.
//!
//! **KVM behaviour.** direct 0, 8-byte gptes, guest_mode 1, `ad_disabled = !EPTP12[6]`
//! (`272b0a998d08` "KVM: nVMX: Don't clobber nested MMU's A/D status on EPTP switch"), level =
//! EPTP walk length (bits 5:3 + 1), gfn = EPTP >> 12.
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter nested_eptp=E (VMX)
//! kvm_mmu_get_page gfn=E>>12 guest_mode=1 with another level, ad_disabled or 4-byte gptes → anomaly
//! (window: until the first L2 kvm_entry or a nested exit)
//! ```

use vmxray_events::codes::Isa;
use vmxray_events::{MmuPage, NestedVmenter};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::pgd_gfn;

const RULE: RuleId = RuleId::GuestMmuRootRole;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    waiting: Option<(EventIndex, u64)>,
}

pub(crate) fn on_vmenter(st: &mut State, at: EventIndex, v: &NestedVmenter) {
    st.waiting = match (v.nested_tdp_root(), v.isa) {
        (Some(eptp), Some(Isa::Vmx) | None) => Some((at, eptp)),
        (Some(_), Some(Isa::Svm)) | (None, _) => None,
    };
}

pub(crate) fn on_entry(st: &mut State) {
    st.waiting = None;
}

pub(crate) fn on_inject(st: &mut State) {
    st.waiting = None;
}

pub(crate) fn on_get_page(ctx: &mut Ctx<'_>, st: &mut State, page: &MmuPage) {
    let Some((vmenter_at, eptp)) = st.waiting else { return };
    let role = page.role;
    if page.guest_mode() == Some(false) || role.direct() || page.gfn != pgd_gfn(eptp) {
        return;
    }
    st.waiting = None;
    ctx.checked(RULE);
    let walk_length = u8::try_from(((eptp >> 3) & 7) + 1).unwrap_or(0);
    let ad_disabled = eptp & (1 << 6) == 0;
    let mut wrong = Vec::new();
    if role.level() != walk_length {
        wrong.push(format!("level {} (EPTP walk length {walk_length})", role.level()));
    }
    if page.has_4_byte_gpte() == Some(true) {
        wrong.push("4-byte gptes".to_owned());
    }
    // ad_disabled is unknown in trace-cmd's plugin rendering.
    if page.ad_disabled().is_some_and(|d| d != ad_disabled) {
        wrong.push(format!(
            "ad_disabled {} (EPTP[6] = {})",
            role.ad_disabled(),
            u8::from(!ad_disabled)
        ));
    }
    if wrong.is_empty() {
        return;
    }
    ctx.report(RULE, Severity::Error, &[vmenter_at], || {
        format!("guest_mmu root for EPTP {} has role {role}: {}", hex(eptp), wrong.join(", "))
    });
}
