//! **vmptr_without_vmptrld** — invariant 24: the vmcs12 of consecutive nested entries changes
//! only after a VMPTRLD.
//!
//! **KVM behaviour.** `nested_vmx_run` enters `nested.current_vmptr`, which only `handle_vmptrld`
//! sets (and VMCLEAR of the current one resets, after which VMLAUNCH VMfails).
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter vmcs=A … [no VMPTRLD (21) exit] … kvm_exit VMRESUME
//! kvm_nested_vmenter vmcs=B ≠ A                            → anomaly
//! ```
//! Restores (which set any vmptr) and eVMCS entries (vmcs -1) are not compared.

use vmxray_events::NestedVmenter;
use vmxray_events::codes::Isa;

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::EntryCause;
use crate::transition::entry_cause;

const RULE: RuleId = RuleId::VmptrWithoutVmptrld;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    vmptrld_at_last_entry: u32,
    last_entry_at: Option<EventIndex>,
}

pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, st: &mut State, v: &NestedVmenter) {
    let vmptrlds = ctx.vcpu.counters.vmptrld;
    let last_at = st.last_entry_at.replace(ctx.at);
    let unchanged_vmptrld = std::mem::replace(&mut st.vmptrld_at_last_entry, vmptrlds) == vmptrlds;
    let cause = entry_cause(ctx.vcpu);
    // SVM's VMRUN names its vmcb12 each time; eVMCS entries all show -1.
    if !matches!(cause, EntryCause::Vmlaunch | EntryCause::Vmresume)
        || v.is_evmcs()
        || v.isa == Some(Isa::Svm)
    {
        return;
    }
    let (Some(prev), Some(last_at)) = (ctx.vcpu.last_entered_vmptr, last_at) else { return };
    if prev == u64::MAX {
        return;
    }
    ctx.checked(RULE);
    if prev == v.vmcs || !unchanged_vmptrld {
        return;
    }
    let vmcs = v.vmcs;
    ctx.report(RULE, Severity::Error, &[last_at], || {
        format!(
            "nested entry of vmcs12 {} after entries of {} with no VMPTRLD exit between",
            hex(vmcs),
            hex(prev)
        )
    });
}
