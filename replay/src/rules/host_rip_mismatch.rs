//! **host_rip_mismatch** — invariants 4 and 10: after `kvm_nested_vmexit_inject` (including a
//! failed VM-entry) L1 resumes at the vmcs12's HOST_RIP.
//!
//! **KVM behaviour.** `nested_vmx_vmexit` → `load_vmcs12_host_state` loads RIP from
//! vmcs12.HOST_RIP (vmx/nested.c); only the late VM-Fail path (`4f350c6dbcb9`) does not.
//! HOST_RIP is not a shadowed field (`vmcs_shadow_fields.h`), so L1 cannot change it without a
//! VMWRITE exit — unlike GUEST_RIP/GUEST_CR3, which a shadow VMCS lets L1 write silently.
//!
//! **Sequence matched** (HOST_RIP learned from the vmcs12's first exit):
//! ```text
//! kvm_nested_vmexit_inject → kvm_entry rip H           (learn HOST_RIP = H)
//! … [no VMWRITE exit] …
//! kvm_nested_vmexit_inject → kvm_entry rip H' ≠ H      → anomaly
//! ```

use vmxray_events::Entry;

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::Mode;

const RULE: RuleId = RuleId::HostRipMismatch;

#[inline]
pub(crate) fn on_entry(ctx: &mut Ctx<'_>, e: &Entry) {
    let st = ctx.vcpu;
    if st.mode != Mode::L1 {
        return;
    }
    let (Some((inject_at, Some(vmptr))), Some(rip)) = (st.awaiting_host_rip, e.rip) else {
        return;
    };
    let Some(rec) = st.vmcs12.get(vmptr) else { return };
    // SVM has no HOST_RIP: L1 continues after whichever VMRUN it executed. An eVMCS (vmptr -1)
    // does not identify one vmcs12, and its writes never exit.
    if rec.svm || vmptr == u64::MAX {
        return;
    }
    let Some(host) = rec.host_rip else { return };
    if st.counters.vmwrite != rec.vmwrites_at_host_rip {
        return;
    }
    ctx.checked(RULE);
    if rip == host.value {
        return;
    }
    ctx.report(RULE, Severity::Error, &[host.at, inject_at], || {
        format!(
            "L1 resumed at {} after a nested exit of vmcs12 {}, whose HOST_RIP is {}",
            hex(rip),
            hex(vmptr),
            hex(host.value)
        )
    });
}
