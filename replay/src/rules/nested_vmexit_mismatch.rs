//! **nested_vmexit_mismatch** — invariant 2: `kvm_nested_vmexit` repeats the vCPU's latest
//! `kvm_exit`.
//!
//! **KVM behaviour.** Since 5.10 both use `TRACE_EVENT_KVM_EXIT` and read the same vmcs02 exit
//! fields ("KVM: x86: Use common definition for kvm_nested_vmexit tracepoint").
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit R info1 A info2 B intr_info I error_code E
//! kvm_nested_vmexit R' …   any field that both layouts carry differs    → anomaly
//! ```

use vmxray_events::ExitInfo;

use super::Ctx;
use crate::anomaly::{RuleId, Severity};

const RULE: RuleId = RuleId::NestedVmexitMismatch;

fn differs<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a != b)
}

#[inline]
pub(crate) fn on_nested_vmexit(ctx: &mut Ctx<'_>, info: &ExitInfo) {
    if ctx.vcpu.exited_since_entry != Some(true) {
        return;
    }
    let Some(last) = ctx.vcpu.last_exit else { return };
    ctx.checked(RULE);
    let mut fields = Vec::new();
    if last.reason.raw() != info.reason().raw() {
        fields.push("reason");
    }
    if differs(last.rip, info.guest_rip()) {
        fields.push("rip");
    }
    if differs(last.info1, info.info1()) {
        fields.push("info1");
    }
    if differs(last.info2, info.info2()) {
        fields.push("info2");
    }
    if differs(last.intr_info, info.intr_info()) {
        fields.push("intr_info");
    }
    if differs(last.error_code, info.error_code()) {
        fields.push("error_code");
    }
    if fields.is_empty() {
        return;
    }
    let (was, now) = (last.reason, info.reason());
    ctx.report(RULE, Severity::Error, &[last.at], || {
        format!(
            "kvm_nested_vmexit ({now}) does not repeat the preceding kvm_exit ({was}): {} differ",
            fields.join(", ")
        )
    });
}
