//! **pae_pdptes_from_cr3** — blind bug x2: a nested VM-entry with nested EPT fails because KVM
//! loaded PAE PDPTEs from memory at L2's CR3.
//!
//! **KVM behaviour.** `7ca29de21362` "KVM: nVMX: fix CR3 load if L2 uses PAE paging and EPT"
//! (Ladi Prosek, 4.15). With EPT and PAE paging a VM entry takes the four PDPTEs from the
//! VMCS (GUEST_PDPTR0-3) and never reads memory at CR3 (SDM 26.3.2.4); Hyper-V leaves CR3
//! unset when it emulates real mode for L2. Before the fix, nested VM-Enter loaded the
//! PDPTEs from L2's CR3 through EPT12 (`load_pdptrs`) whatever vmcs12's EPT setting, and failed
//! the entry with ENTRY_FAIL_PDPTE when CR3 held no valid PDPTEs; the fix added the
//! `!nested_ept` condition in `nested_vmx_load_cr3`. Without nested EPT the load is right
//! (the CPU reads the PDPTEs at CR3 then), so only nested-EPT entries are checked.
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter … nested_ept=y
//! kvm_nested_vmenter_failed "!load_pdptrs(vcpu, cr3)"               → anomaly
//! kvm_entry at L1's HOST_RIP (a VM-entry failure exit, qualification 2; 6.1 and 6.12 trace
//!   no kvm_nested_vmexit_inject for it)
//! ```
//! Every VMX `kvm_nested_vmenter` with nested_ept=y is a checked instance. A PDPTE failure the
//! hardware reports for invalid vmcs12 PDPTR fields comes as an exit of vmcs02 (a `kvm_exit`
//! after an L2 `kvm_entry`), not as this consistency check, and is not matched.

use vmxray_events::codes::Isa;
use vmxray_events::{NestedVmenter, VmFailKind};

use super::Ctx;
use crate::anomaly::{RuleId, Severity};
use crate::state::Mode;

const RULE: RuleId = RuleId::PaePdptesFromCr3;

pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, v: &NestedVmenter) {
    if v.tdp_enabled == Some(true) && v.isa != Some(Isa::Svm) {
        ctx.checked(RULE);
    }
}

pub(crate) fn on_vmenter_failed(ctx: &mut Ctx<'_>, kind: VmFailKind, msg: &str) {
    if kind != VmFailKind::Check || !msg.contains("load_pdptrs") {
        return;
    }
    let Mode::L2Pending { since } = ctx.vcpu.mode else { return };
    let Some(rec) = ctx.vcpu.current_vmptr.and_then(|p| ctx.vcpu.vmcs12.get(p)) else { return };
    if rec.svm || rec.nested_ept != Some(true) {
        return;
    }
    ctx.report(RULE, Severity::Error, &[since], || {
        format!(
            "a nested VM-entry with nested EPT failed on \"{msg}\" (ENTRY_FAIL_PDPTE): KVM loaded PAE PDPTEs from memory at L2's CR3, where the CPU takes them from vmcs12's GUEST_PDPTR0-3 (fixed by 7ca29de21362)"
        )
    });
}
