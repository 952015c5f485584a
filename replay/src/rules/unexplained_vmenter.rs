//! **unexplained_vmenter** — invariant 3: every `kvm_nested_vmenter` is explained by a
//! VMLAUNCH/VMRESUME exit, an RSM, or a nested-state restore.
//!
//! **KVM behaviour.** `kvm_nested_vmenter` is the first statement of
//! `nested_vmx_enter_non_root_mode()` (6.1, "KVM: x86: Print guest pgd in kvm_nested_vmenter()"),
//! reached only from `nested_vmx_run` (VMLAUNCH/VMRESUME), `vmx_leave_smm` (RSM) and
//! `vmx_set_nested_state` (an ioctl, i.e. outside `KVM_RUN`'s exit handling).
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit R (L1, R ∉ {VMLAUNCH, VMRESUME}) [no kvm_entry, no kvm_userspace_exit,
//!                                            no kvm_smm_transition leaving]
//! kvm_nested_vmenter                                        → anomaly
//! kvm_nested_vmenter while L2 is already active             → anomaly
//! ```

use vmxray_events::NestedVmenter;

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::{EntryCause, Mode};
use crate::transition::entry_cause;

const RULE: RuleId = RuleId::UnexplainedVmenter;

#[inline]
pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, v: &NestedVmenter) {
    let vmcs = v.vmcs;
    if matches!(ctx.vcpu.mode, Mode::L2Run | Mode::L2Pending { .. }) {
        ctx.checked(RULE);
        let evidence: Vec<_> =
            ctx.vcpu.current_record().and_then(|r| r.entered_at).into_iter().collect();
        ctx.report(RULE, Severity::Error, &evidence, || {
            format!("kvm_nested_vmenter of vmcs12 {} while L2 is active (no nested exit since the last entry)", hex(vmcs))
        });
        return;
    }
    match entry_cause(ctx.vcpu) {
        EntryCause::Unexplained => {
            ctx.checked(RULE);
            let last = ctx.vcpu.last_exit;
            let evidence: Vec<_> = last.map(|l| l.at).into_iter().collect();
            ctx.report(RULE, Severity::Error, &evidence, || {
                format!(
                    "kvm_nested_vmenter of vmcs12 {} while KVM handles an L1 exit ({}) that is not VMLAUNCH/VMRESUME, with no RSM",
                    hex(vmcs),
                    last.map_or_else(|| "?".to_owned(), |l| l.reason.to_string())
                )
            });
        }
        EntryCause::Vmlaunch | EntryCause::Vmresume | EntryCause::Rsm | EntryCause::Restore => {
            ctx.checked(RULE);
        }
        EntryCause::Unattributed | EntryCause::Inferred => {}
    }
}
