//! **nested_vmexit_outside_l2** — invariant 2: `kvm_nested_vmexit` appears only while L2 is
//! active.
//!
//! **KVM behaviour.** `kvm_nested_vmexit` is the first statement of
//! `nested_vmx_reflect_vmexit()`, called for every hardware exit in guest mode (common layout
//! since "KVM: x86: Use common definition for kvm_nested_vmexit tracepoint", 5.10).
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmexit_inject (→ L1) … [no kvm_nested_vmenter] … kvm_nested_vmexit   → anomaly
//! ```
//! Before 6.1 nested entries are inferred from VMLAUNCH/VMRESUME and the entry rip; without
//! `kvm_entry.rip` (≤ 5.9) they cannot be, and the rule stays silent.

use vmxray_events::ExitInfo;

use super::Ctx;
use crate::anomaly::{RuleId, Severity};
use crate::state::Level;

const RULE: RuleId = RuleId::NestedVmexitOutsideL2;

#[inline]
pub(crate) fn on_nested_vmexit(ctx: &mut Ctx<'_>, info: &ExitInfo) {
    if !ctx.features.nested_vmenter && !ctx.features.v5_10 {
        return;
    }
    match ctx.vcpu.level() {
        Some(Level::L2) => ctx.checked(RULE),
        Some(Level::L1) => {
            ctx.checked(RULE);
            let reason = info.reason();
            let evidence: Vec<_> = ctx.vcpu.last_entry.map(|(at, _)| at).into_iter().collect();
            ctx.report(RULE, Severity::Error, &evidence, || {
                format!("kvm_nested_vmexit ({reason}) while the vCPU runs L1")
            });
        }
        None => {}
    }
}
