//! **l2_entry_mismatch** — invariant 5: the first L2 `kvm_entry` after a nested VM-Enter is at
//! `nested_rip` and (6.14+) injects `event_inj`.
//!
//! **KVM behaviour.** `prepare_vmcs02` writes GUEST_RIP and VM_ENTRY_INTR_INFO_FIELD from vmcs12;
//! `kvm_nested_vmenter` prints them (6.1, "KVM: x86: Print guest pgd in kvm_nested_vmenter()"),
//! `kvm_entry` prints the RIP (5.10) and the injected event (`3e633e7e7d07`, 6.14).
//!
//! **Sequence matched:**
//! ```text
//! kvm_nested_vmenter nested_rip=R event_inj=I
//! kvm_entry rip R' ≠ R                                   → anomaly
//! kvm_entry intr_info ≠ I (I valid, 6.14+)               → anomaly
//! ```

use vmxray_events::Entry;

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::Mode;

const RULE: RuleId = RuleId::L2EntryMismatch;
/// Valid, type, vector and error-code-valid bits.
const INTR_MASK: u32 = 0x8000_0fff;

#[inline]
pub(crate) fn on_entry(ctx: &mut Ctx<'_>, e: &Entry) {
    let Mode::L2Pending { since } = ctx.vcpu.mode else { return };
    let Some(rec) = ctx.vcpu.current_record() else { return };
    if rec.entered_at != Some(since) {
        return;
    }
    let (Some(rip), Some(nested_rip)) = (e.rip, rec.nested_rip) else { return };
    let event_inj = rec.event_inj;
    ctx.checked(RULE);
    if rip != nested_rip.value {
        ctx.report(RULE, Severity::Error, &[since], || {
            format!(
                "first L2 entry at {} but kvm_nested_vmenter said nested_rip {}",
                hex(rip),
                hex(nested_rip.value)
            )
        });
    }
    if event_inj.valid()
        && let Some(entry_intr) = e.intr_info
        && entry_intr.0 & INTR_MASK != event_inj.0 & INTR_MASK
    {
        ctx.report(RULE, Severity::Error, &[since], || {
            format!("first L2 entry injects {entry_intr} but vmcs12 asked for {event_inj}")
        });
    }
}
