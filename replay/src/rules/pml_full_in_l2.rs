//! **pml_full_in_l2** — bug (f), invariant 20: no hardware PML_FULL exit while L2 runs.
//!
//! **KVM behaviour.** `1f4e5fc83a42` "KVM: x86: fix nested guest live migration with PML"
//! (`1569582943-13476-3-git-send-email-pbonzini@redhat.com`): PML logs the running guest's GPAs,
//! which are L2 GPAs under nested EPT; current kernels never enable PML in vmcs02
//! (`prepare_vmcs02_early`) and treat a PML_FULL exit in L2 as unexpected.
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter … kvm_entry (L2)
//! kvm_exit PML_FULL (62)     — or —   kvm_pml_full      → anomaly
//! ```

use vmxray_events::ExitInfo;
use vmxray_events::codes::VmxBasicReason;

use super::Ctx;
use crate::anomaly::{RuleId, Severity};
use crate::state::Level;

const RULE: RuleId = RuleId::PmlFullInL2;

pub(crate) fn on_exit(ctx: &mut Ctx<'_>, info: &ExitInfo) {
    if ctx.vcpu.level() != Some(Level::L2) {
        return;
    }
    ctx.checked(RULE);
    if info.reason().is_vmx(VmxBasicReason::PML_FULL) {
        report(ctx, "kvm_exit PML_FULL");
    }
}

pub(crate) fn on_pml_full_event(ctx: &mut Ctx<'_>) {
    if ctx.vcpu.level() != Some(Level::L2) {
        return;
    }
    ctx.checked(RULE);
    report(ctx, "kvm_pml_full");
}

fn report(ctx: &mut Ctx<'_>, what: &'static str) {
    let evidence: Vec<_> =
        ctx.vcpu.current_record().and_then(|r| r.entered_at).into_iter().collect();
    ctx.report(RULE, Severity::Error, &evidence, || {
        format!("{what} while L2 runs: PML must never be enabled in vmcs02, L2 GPAs would pollute L1's dirty log (1f4e5fc83a42)")
    });
}
