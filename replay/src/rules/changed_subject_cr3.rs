//! **changed_subject_cr3** — bug (a), invariant 7: a vmcs12's GUEST_CR3 changed behind L1's back.
//!
//! **KVM behaviour.** `04f11ef45810` "KVM: nVMX: Always write vmcs02.GUEST_CR3 during nested
//! VM-Enter" (Sean Christopherson, `20190927214523.3376-2-sean.j.christopherson@intel.com`;
//! regression from `fd3edd4a9066`; report: Reto Buerki, Muen,
//! `20190926140541.15453-1-reet@codelabs.ch`). All vmcs12s share one vmcs02; before the fix its
//! GUEST_CR3 was written lazily, so an entry that never reached hardware (HLT activity, §2.5) left
//! the CR3 of the L2 that last ran there, and the synthesized exit copied it into the new vmcs12.
//!
//! **Sequence matched** (per vCPU, nested_ept=n so that `guest_pgd` is GUEST_CR3):
//! ```text
//! kvm_nested_vmenter vmcs=A guest_cr3=CA → kvm_entry (A runs on hardware with CA) → … → inject
//! kvm_nested_vmenter vmcs=B guest_cr3=CB → (no kvm_entry) → kvm_nested_vmexit_inject
//! [no VMWRITE (25) exit from L1]
//! kvm_nested_vmenter vmcs=B guest_cr3=X      X ≠ CB  → anomaly; critical when X = CA
//! ```
//! VMWRITE exits in between excuse a new value (the field a VMWRITE writes is not traced), but
//! not X = CA: that is reported as an *error* (real bug-(a) recordings, `samples/real/vmx/bugs`,
//! show an L1 writing HOST_RSP, which KVM does not shadow, before every VMRESUME).
//! The rule is decidable when the change cannot come from L2 itself: the previous run of the
//! vmcs12 executed zero instructions, or L0 uses shadow paging (then every L2 CR3 load exits and
//! KVM never writes vmcs12.GUEST_CR3 on exit, §2.7) and no L2 CR3 load was handled by L0. With
//! L0 EPT and an L2 that ran, L2 changes CR3 without exiting and `sync_vmcs02_to_vmcs12` copies
//! the new value into vmcs12 at the next nested exit (§2.7, §2.8): not decidable, no report.
//! "Shadow paging" is only concluded from roots proven to be L1's (raw `guest_mode` 0, or see
//! `transition::is_l1_root` for text traces): a guest_mmu root read from text without its
//! `guest_mode` once made fixed L0-EPT traces look shadow-paged and report here. eVMCS
//! entries (vmcs -1) do not identify their vmcs12 and are skipped. A shadow VMCS can hide an L1
//! VMWRITE of GUEST_CR3, hence only *warning* unless the value is another subject's CR3.
//!
//! **Explicit field records** (`on_record`): the same divergence, found earlier and without
//! `guest_pgd`, when the user's instrumentation records KVM's own write of vmcs12.GUEST_CR3:
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

use vmxray_events::NestedVmenter;
use vmxray_events::codes::{Isa, VmxBasicReason};
use vmxray_events::vmcs::record::FieldRecord;
use vmxray_events::vmcs::{FieldEncoding, VmcsRef};

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};
use crate::state::{L0Paging, Mode};

const RULE: RuleId = RuleId::ChangedSubjectCr3;

#[inline]
pub(crate) fn on_vmenter(ctx: &mut Ctx<'_>, v: &NestedVmenter) {
    let Some(new_cr3) = v.guest_cr3() else { return };
    if v.is_evmcs() || v.isa == Some(Isa::Svm) {
        return;
    }
    let st = ctx.vcpu;
    let Some(rec) = st.vmcs12.get(v.vmcs) else { return };
    let (Some(exit), Some(entered), Some(entered_at)) =
        (rec.last_exit, rec.guest_cr3, rec.entered_at)
    else {
        return;
    };
    if exit.at < entered_at {
        return;
    }
    // L1 answers a reflected MOV CR3 or task switch by rewriting GUEST_CR3, which a shadow VMCS
    // hides: only other exits leave GUEST_CR3 as entered.
    let l1_emulates_cr3 = exit.reason.is_some_and(|r| {
        r.is_vmx(VmxBasicReason::CR_ACCESS) || r.is_vmx(VmxBasicReason::TASK_SWITCH)
    });
    let shadow_no_l2_load =
        ctx.features.l0_paging == L0Paging::Shadow && rec.l2_cr3_load.is_none() && !l1_emulates_cr3;
    if !(exit.zero_instructions || shadow_no_l2_load) {
        return;
    }
    ctx.checked(RULE);
    if new_cr3 == entered.value {
        return;
    }
    let other_subject = st.last_hw_l2.and_then(|(vmptr, cr3)| match (vmptr, cr3) {
        (Some(p), Some(cr3)) if p != v.vmcs && cr3.value == new_cr3 => Some((p, cr3)),
        _ => None,
    });
    // A VMWRITE exit may have been L1 writing GUEST_CR3 (the trace does not say which field):
    // that excuses a new value, but not the exact CR3 of the other L2 that last ran.
    let vmwrites = st.counters.vmwrite.saturating_sub(rec.vmwrites_at_exit);
    if vmwrites > 0 && other_subject.is_none() {
        return;
    }
    // The field history (crate::fields) names where the old value was last seen.
    let history = st.fields.latest(VmcsRef::vmcs12(v.vmcs), FieldEncoding::GUEST_CR3).copied();
    let mut evidence = vec![entered.at, exit.at];
    evidence.extend(history.map(|h| h.at));
    let severity = match other_subject {
        Some((_, cr3)) => {
            evidence.push(cr3.at);
            if vmwrites > 0 { Severity::Error } else { Severity::Critical }
        }
        None => Severity::Warning,
    };
    let vmcs = v.vmcs;
    let zero = exit.zero_instructions;
    let at = ctx.at;
    ctx.report(RULE, severity, &evidence, || {
        let (seen_at, seen_from) = history.map_or((entered.at.0, "kvm_nested_vmenter"), |h| (h.at.0, h.source));
        let writes = if vmwrites > 0 {
            format!("{vmwrites} VMWRITE exit(s) of unknown fields")
        } else {
            "no VMWRITE".to_owned()
        };
        let mut msg = format!(
            "{} GUEST_CR3: {} → {} at event {}, with {writes} and no L2 CR3 load in between (last seen at event {} from {}){}",
            VmcsRef::vmcs12(vmcs),
            hex(entered.value),
            hex(new_cr3),
            at.0,
            seen_at,
            seen_from,
            if zero { "; its last entry never reached hardware" } else { "" }
        );
        if let Some((p, cr3)) = other_subject {
            msg.push_str(&format!(
                "; the new value is the CR3 of {} (event {}), the L2 that last ran on hardware: stale vmcs02.GUEST_CR3 (fixed by 04f11ef45810)",
                VmcsRef::vmcs12(p),
                cr3.at.0
            ));
        }
        msg
    });
}

/// Checks one explicit record event against the pre-state.
pub(crate) fn on_record(ctx: &mut Ctx<'_>, rec: &FieldRecord) {
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
