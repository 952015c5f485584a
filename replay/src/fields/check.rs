//! The `changed_subject_cr3` check for explicit field records (bug (a), invariant 7): the same
//! divergence the rule finds at a `kvm_nested_vmenter`, found earlier and without that
//! tracepoint's `guest_pgd` when the user's instrumentation records KVM's own write.
//!
//! **KVM behaviour.** `04f11ef45810` "KVM: nVMX: Always write vmcs02.GUEST_CR3 during nested
//! VM-Enter": before it, an entry cancelled by HLT left vmcs02.GUEST_CR3 holding the CR3 of the
//! L2 that last ran on hardware, and the synthesized exit's `sync_vmcs02_to_vmcs12` copied it
//! into the halted L2's vmcs12.
//!
//! **Sequence matched** (per vCPU):
//! ```text
//! vmcs12@A GUEST_CR3 = CA known (entry, record)      A runs on hardware
//! kvm_nested_vmenter vmcs=B  (GUEST_CR3 = CB known)  no kvm_entry: L2 never ran
//! record: vmcs12@B write|read GUEST_CR3 X           while B is current and in L2, X ≠ CB
//! [no VMWRITE exit from L1 since CB was seen]
//! → anomaly; critical when X is the GUEST_CR3 of the vmcs12 that last ran on hardware
//! ```
//! Decidable when L2 cannot have changed its CR3 itself: it executed zero instructions since the
//! entry, or L0 uses shadow paging (every L2 CR3 load exits) and no L2 CR3 load was seen. A write
//! while L1 runs is L1's own VMWRITE (through a shadow VMCS) and never an anomaly.

use vmxray_capture::Event;
use vmxray_capture::vmcs::{FieldEncoding, VmcsRef, import};

use crate::anomaly::{RuleId, Severity};
use crate::rules::{Ctx, hex};
use crate::state::{L0Paging, Mode};

const RULE: RuleId = RuleId::ChangedSubjectCr3;

/// Checks one explicit record event against the pre-state.
pub(crate) fn on_record(ctx: &mut Ctx<'_>, event: &Event) {
    let Some(rec) = import::from_print_event(event) else { return };
    if rec.field != FieldEncoding::GUEST_CR3 {
        return;
    }
    let Some(vmptr) = rec.vmcs.vmptr() else { return };
    let st = ctx.vcpu;
    if st.current_vmptr != Some(vmptr) || rec.vmcs == VmcsRef::Evmcs {
        return;
    }
    let zero_instructions = matches!(st.mode, Mode::L2Pending { .. });
    let in_l2 = zero_instructions || st.mode == Mode::L2Run;
    if !in_l2 {
        return;
    }
    let Some(rec12) = st.vmcs12.get(vmptr) else { return };
    let shadow_no_load = ctx.features.l0_paging == L0Paging::Shadow && rec12.l2_cr3_load.is_none();
    if !(zero_instructions || shadow_no_load) {
        return;
    }
    let Some(known) = st.fields.latest(rec.vmcs, FieldEncoding::GUEST_CR3).copied() else {
        return;
    };
    ctx.checked(RULE);
    if known.value == rec.value || known.vmwrites != st.counters.vmwrite {
        return;
    }
    // The vmcs12 that last ran on hardware, and the CR3 the store knows for it.
    let other = st.last_hw_l2.and_then(|(p, _)| p).filter(|p| *p != vmptr).and_then(|p| {
        let seen = st.fields.latest(VmcsRef::vmcs12(p), FieldEncoding::GUEST_CR3)?;
        (seen.value == rec.value).then_some((p, *seen))
    });
    let mut evidence = vec![known.at];
    if let Some(entered) = rec12.entered_at {
        evidence.push(entered);
    }
    let severity = match other {
        Some((_, seen)) => {
            evidence.push(seen.at);
            Severity::Critical
        }
        None => Severity::Warning,
    };
    let at = ctx.at;
    ctx.report(RULE, severity, &evidence, || {
        let mut msg = format!(
            "{} GUEST_CR3: {} → {} at event {} ({} record), with no VMWRITE and no L2 CR3 load in between (last seen at event {} from {}){}",
            rec.vmcs,
            hex(known.value),
            hex(rec.value),
            at.0,
            rec.access,
            known.at.0,
            known.source,
            if zero_instructions { "; its last entry never reached hardware" } else { "" }
        );
        if let Some((p, seen)) = other {
            msg.push_str(&format!(
                "; the new value is GUEST_CR3 of {} (event {}), the L2 that last ran on hardware: stale vmcs02.GUEST_CR3 (fixed by 04f11ef45810)",
                VmcsRef::vmcs12(p),
                seen.at.0
            ));
        }
        msg
    });
}
