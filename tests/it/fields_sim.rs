//! VMCS-field streams against the simulator's ground truth: for every scenario, kernel and
//! flavour, every vmcs12 field value the trace reveals equals what the simulator wrote.
//!
//! Revealed (see `vmxray_replay::fields`): GUEST_RIP, VM_ENTRY_INTR_INFO_FIELD, GUEST_CR3
//! (nested_ept=n) or EPT_POINTER (nested_ept=y, also its address bits through guest_mmu root
//! loads), HOST_RIP, VM_EXIT_REASON, and the enable-EPT bit of SECONDARY_VM_EXEC_CONTROL.
//! Not revealed, so not compared: GUEST_ACTIVITY_STATE and HOST_CR3 (no tracepoint carries
//! them), the launch state (not a VMCS field), EPT_POINTER/GUEST_CR3 while nested EPT hides
//! the other one, and every vmcs12 field on 5.10 (no tracepoint names the vmcs12).

use std::collections::BTreeSet;

use vmxray_capture::read::fields_file;
use vmxray_events::vmcs::{FieldEncoding, Learned, VmcsField, VmcsRef, record};
use vmxray_replay::fields::FieldHistory;
use vmxray_replay::{Model, RuleId, Severity};
use vmxray_samples::sim::{
    Bug, GroundTruth, KernelVersion, KvmFlavour, Scenario, SimConfig, Simulation, Vmcs12Field,
    Writer, simulate,
};

fn truth_field(f: FieldEncoding) -> Option<Vmcs12Field> {
    Some(match f {
        FieldEncoding::GUEST_CR3 => Vmcs12Field::GuestCr3,
        FieldEncoding::EPT_POINTER => Vmcs12Field::EptPointer,
        FieldEncoding::GUEST_RIP => Vmcs12Field::GuestRip,
        FieldEncoding::VM_ENTRY_INTR_INFO_FIELD => Vmcs12Field::VmEntryIntrInfo,
        FieldEncoding::HOST_RIP => Vmcs12Field::HostRip,
        FieldEncoding::VM_EXIT_REASON => Vmcs12Field::ExitReason,
        FieldEncoding::SECONDARY_VM_EXEC_CONTROL => Vmcs12Field::EnableEpt,
        _ => return None,
    })
}

/// The value the simulator last wrote to (vmcs12, field) before event `at`.
fn truth_at(truth: &GroundTruth, vmcs12: u64, field: Vmcs12Field, at: u64) -> Option<u64> {
    truth
        .vmcs12_writes
        .iter()
        .rfind(|w| w.vmcs12 == vmcs12 && w.field == field && w.before_event as u64 <= at)
        .map(|w| w.value)
}

/// Compares every derived vmcs12 observation with the truth; returns the fields compared.
fn check(sim: &Simulation, what: &str) -> BTreeSet<FieldEncoding> {
    let history = FieldHistory::collect(&sim.events);
    let mut compared = BTreeSet::new();
    for o in history.observations() {
        let Some(vmptr) = o.vmcs.vmptr() else { continue };
        assert_eq!(o.learned, Learned::Derived, "{what}: {o:?}");
        // Exit qualification / interruption info, GUEST_INTR_STATUS: revealed, but the
        // simulator's truth does not track them.
        let Some(tf) = truth_field(o.field) else { continue };
        // A vmcs12 starts with no entry injection; the simulator does not record that 0.
        let initial = (tf == Vmcs12Field::VmEntryIntrInfo).then_some(0);
        let Some(mut want) = truth_at(&sim.truth, vmptr, tf, o.event).or(initial) else {
            panic!("{what}: {o:?} but the simulator never wrote {tf:?} of {:#x}", vmptr)
        };
        if tf == Vmcs12Field::EnableEpt {
            want <<= 1; // bit 1 of the secondary controls
        }
        let mask = o.mask;
        assert_eq!(
            o.value & mask,
            want & mask,
            "{what}: {} {} at event {} ({}) is {:#x}, the simulator wrote {:#x}",
            o.vmcs,
            o.field,
            o.event,
            o.source,
            o.value,
            want
        );
        compared.insert(o.field);
    }
    compared
}

#[test]
fn derived_vmcs12_fields_equal_the_ground_truth_in_every_scenario() {
    for scenario in Scenario::ALL.iter().copied() {
        for kernel in KernelVersion::ALL {
            let mut flavours = vec![KvmFlavour::Fixed];
            flavours.extend(scenario.bugs().iter().map(|b| KvmFlavour::Buggy(*b)));
            for kvm in flavours {
                let config = SimConfig::new(scenario).kernel(kernel).kvm(kvm);
                let Ok(sim) = simulate(&config) else { continue };
                let what = format!("{scenario} {kernel} {kvm}");
                let compared = check(&sim, &what);
                let nested = |isa: Option<vmxray_events::codes::Isa>| {
                    sim.events.iter().any(|e| {
                        matches!(&e.kind, vmxray_events::EventKind::KvmNestedVmenter(n)
                            if (n.isa == Some(vmxray_events::codes::Isa::Svm)) == (isa == Some(vmxray_events::codes::Isa::Svm)))
                    })
                };
                if nested(Some(vmxray_events::codes::Isa::Svm)) {
                    // A vmcb12 is no vmcs12: whatever is derived must equal what the
                    // simulator wrote (checked above), nothing more is required.
                } else if nested(Some(vmxray_events::codes::Isa::Vmx)) {
                    // Every entered vmcs12 reveals its RIP, entry injection and pgd.
                    assert!(compared.contains(&FieldEncoding::GUEST_RIP), "{what}: {compared:?}");
                    assert!(
                        compared.contains(&FieldEncoding::GUEST_CR3)
                            || compared.contains(&FieldEncoding::EPT_POINTER),
                        "{what}: {compared:?}"
                    );
                } else {
                    // No vmcs12 is named (before 6.1, or no nested guest at all).
                    assert!(compared.is_empty(), "{what}: {compared:?}");
                }
            }
        }
    }
}

#[test]
fn exit_fields_host_rip_and_roots_are_revealed_where_the_trace_has_them() {
    let sim = simulate(&SimConfig::new(Scenario::SepKernel)).unwrap();
    let compared = check(&sim, "sepkernel");
    for f in [
        FieldEncoding::VM_EXIT_REASON,
        FieldEncoding::HOST_RIP,
        FieldEncoding::VM_ENTRY_INTR_INFO_FIELD,
        FieldEncoding::EPT_POINTER,
    ] {
        assert!(compared.contains(&f), "{f}: {compared:?}");
    }
    let history = FieldHistory::collect(&sim.events);
    // Hardware VMCS fields come from kvm_exit/kvm_entry.
    assert!(
        history
            .observations()
            .iter()
            .any(|o| o.vmcs == VmcsRef::Vmcs02 && o.field == FieldEncoding::VM_EXIT_REASON)
    );
    assert!(
        history
            .observations()
            .iter()
            .any(|o| o.vmcs == VmcsRef::Vmcs01 && o.field == FieldEncoding::GUEST_RIP)
    );
    // The table at the last event has one row per (VMCS, field); diffs between subjects exist.
    let last = sim.events.len() as u64 - 1;
    let table = history.table_at(last);
    assert!(table.len() > 10);
    let subjects: Vec<VmcsRef> =
        history.vmcs_list().into_iter().filter(|v| matches!(v, VmcsRef::Vmcs12 { .. })).collect();
    assert!(subjects.len() >= 2, "{subjects:?}");
    let diff = history.diff_vmcs(subjects[0], subjects[1], last);
    assert!(diff.iter().any(|d| d.field == FieldEncoding::GUEST_RIP), "{diff:?}");
    assert!(history.until(0).len() <= history.until(last).len());
}

fn muen(kvm: KvmFlavour) -> Simulation {
    simulate(&SimConfig::new(Scenario::Muen).kernel(KernelVersion::V6_1).kvm(kvm)).unwrap()
}

fn critical_cr3(events: &[vmxray_events::Event]) -> Vec<vmxray_replay::Anomaly> {
    let mut model = Model::default();
    model
        .run(events)
        .into_iter()
        .filter(|a| a.rule == RuleId::ChangedSubjectCr3 && a.severity == Severity::Critical)
        .collect()
}

#[test]
fn muen_report_names_the_guest_cr3_change_and_its_evidence() {
    let sim = muen(KvmFlavour::Buggy(Bug::HltStaleCr3));
    let found = critical_cr3(&sim.events);
    let site = sim.truth.bug.as_ref().unwrap();
    let a = found.iter().find(|a| a.at.0 == site.divergence as u64).expect("the divergence");
    assert!(a.message.contains("GUEST_CR3: 0x"), "{}", a.message);
    assert!(a.message.contains("with no VMWRITE and no L2 CR3 load in between"), "{}", a.message);
    assert!(a.message.contains("the L2 that last ran on hardware"), "{}", a.message);
    assert!(a.message.contains(&format!("at event {}", site.divergence)), "{}", a.message);
    assert!(a.evidence.len() >= 3, "{:?}", a.evidence);
    // The fixed flavour reports nothing.
    assert!(critical_cr3(&muen(KvmFlavour::Fixed).events).is_empty());
}

/// The same change given only as an explicit record: the fixed flavour's trace (whose
/// tracepoints show no change) plus the record of the stale write the buggy KVM made.
#[test]
fn muen_change_given_only_as_an_explicit_record_is_reported() {
    let buggy = muen(KvmFlavour::Buggy(Bug::HltStaleCr3));
    let fixed = muen(KvmFlavour::Fixed);
    let site = buggy.truth.bug.as_ref().unwrap();
    // The buggy sync: L0's GUEST_CR3 write into the halted subject's vmcs12 at the trigger.
    let stale = buggy
        .truth
        .vmcs12_writes
        .iter()
        .find(|w| {
            w.writer == Writer::L0Exit
                && w.field == Vmcs12Field::GuestCr3
                && w.before_event == site.trigger
        })
        .expect("the stale sync");
    // The simulator stamps the sync with the inject's time; a real probe fires just before it.
    let ts = stale.ts.min(fixed.events[stale.before_event].ts - 1);
    let line = format!(
        "{ts} 0 {} vmcs12@{:#x} write GUEST_CR3 {:#x}",
        stale.vcpu, stale.vmcs12, stale.value
    );
    let records = fields_file::parse_fields(&line, false).unwrap().records;
    let merged: Vec<_> = fields_file::merge(fixed.events.iter().cloned().map(Ok::<_, ()>), records)
        .map(Result::unwrap)
        .collect();
    let found = critical_cr3(&merged);
    assert_eq!(found.len(), 1, "{found:#?}");
    let a = &found[0];
    assert!(
        a.message.starts_with(&format!("vmcs12@{:#x} GUEST_CR3: 0x", stale.vmcs12)),
        "{}",
        a.message
    );
    assert!(a.message.contains(&format!("→ {:#x}", stale.value)), "{}", a.message);
    assert!(a.message.contains("write record"), "{}", a.message);
    assert!(a.message.contains("the L2 that last ran on hardware"), "{}", a.message);
    // The record is its own event, at its place in time.
    let at = usize::try_from(a.at.0).unwrap();
    assert!(record::of_event(&merged[at]).is_some());
    assert!(merged[at - 1].ts <= ts && merged[at + 1].ts > ts);
    // And the field history shows the record as an explicit write.
    let history = FieldHistory::collect(&merged);
    let obs: Vec<&VmcsField> =
        history.observations().iter().filter(|o| o.learned == Learned::Written).collect();
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0].event, at as u64);
}

/// Muen as it really runs (nested EPT: no tracepoint shows GUEST_CR3) with a patched kernel
/// that records every vmcs12 GUEST_CR3 write: the stale sync is reported from the records
/// alone, in the buggy flavour only.
#[test]
fn muen_ept_with_every_guest_cr3_write_recorded() {
    let run = |kvm| {
        let sim = simulate(&SimConfig::new(Scenario::MuenEpt).kernel(KernelVersion::V6_1).kvm(kvm))
            .unwrap();
        let lines: String = sim
            .truth
            .vmcs12_writes
            .iter()
            .filter(|w| w.field == Vmcs12Field::GuestCr3)
            .map(|w| {
                // A probe fires before the tracepoint KVM emits after the write.
                let next = sim.events.get(w.before_event).map_or(u64::MAX, |e| e.ts);
                let ts = if next <= w.ts { next.saturating_sub(1) } else { w.ts };
                format!("{ts} 0 {} vmcs12@{:#x} write GUEST_CR3 {:#x}\n", w.vcpu, w.vmcs12, w.value)
            })
            .collect();
        let records = fields_file::parse_fields(&lines, false).unwrap().records;
        let merged: Vec<_> =
            fields_file::merge(sim.events.iter().cloned().map(Ok::<_, ()>), records)
                .map(Result::unwrap)
                .collect();
        (sim, critical_cr3(&merged))
    };
    let (buggy, found) = run(KvmFlavour::Buggy(Bug::HltStaleCr3));
    assert!(!found.is_empty(), "the stale sync is reported");
    let stale = buggy
        .truth
        .vmcs12_writes
        .iter()
        .find(|w| {
            w.writer == Writer::L0Exit
                && w.before_event == buggy.truth.bug.as_ref().unwrap().trigger
        })
        .unwrap();
    assert!(found[0].message.contains(&format!("→ {:#x}", stale.value)), "{}", found[0].message);
    assert!(found[0].message.contains("write record"), "{}", found[0].message);
    let (_, fixed) = run(KvmFlavour::Fixed);
    assert!(fixed.is_empty(), "{fixed:#?}");
}
