//! The derivation table of `vmxray_replay::fields`, one row at a time, on built traces; the
//! bounded store the rules read; and the views' API (history up to an event, tables, diffs).

use crate::common::*;
use vmxray_events::vmcs::{FieldEncoding as F, Learned, VmcsField, VmcsRef};
use vmxray_events::{EventKind, FieldValue, Fields};
use vmxray_replay::fields::{FieldHistory, FieldStore};
use vmxray_replay::{Actor, Model};

fn fields_of(events: &[vmxray_events::Event]) -> Vec<VmcsField> {
    FieldHistory::collect(events).observations().to_vec()
}

fn find(obs: &[VmcsField], at: u64, vmcs: VmcsRef, field: F) -> Option<u64> {
    obs.iter().find(|o| o.event == at && o.vmcs == vmcs && o.field == field).map(|o| o.value)
}

#[test]
fn nested_entry_and_exit_reveal_vmcs12_fields() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    let enter = t.enter_l2(VMLAUNCH, 0x100, 0x7000, 0x4000, false, 0x189f000);
    t.exit_full(EXCEPTION_NMI, 0x4010, 0xdead000, 0x8000_0b0e);
    t.nested_vmexit_full(EXCEPTION_NMI, 0x4010, 0xdead000, 0x8000_0b0e);
    let inject = t.inject_full(EXCEPTION_NMI, 0xdead000, 0x8000_0b0e);
    let host = t.entry(0x300);
    let obs = fields_of(&t.events);
    let v12 = VmcsRef::Vmcs12 { gpa: 0x7000 };
    assert_eq!(find(&obs, enter, v12, F::GUEST_RIP), Some(0x4000));
    assert_eq!(find(&obs, enter, v12, F::GUEST_CR3), Some(0x189f000));
    assert_eq!(find(&obs, enter, v12, F::VM_ENTRY_INTR_INFO_FIELD), Some(0));
    assert_eq!(find(&obs, enter, v12, F::EPT_POINTER), None);
    assert_eq!(find(&obs, inject, v12, F::VM_EXIT_REASON), Some(0));
    assert_eq!(find(&obs, inject, v12, F::EXIT_QUALIFICATION), Some(0xdead000));
    assert_eq!(find(&obs, inject, v12, F::VM_EXIT_INTR_INFO), Some(0x8000_0b0e));
    assert_eq!(find(&obs, host, v12, F::HOST_RIP), Some(0x300));
    // The hardware exit from L2 is vmcs02's; the one before the nested entry is vmcs01's.
    assert_eq!(find(&obs, inject - 2, VmcsRef::Vmcs02, F::VM_EXIT_REASON), Some(0));
    assert_eq!(find(&obs, inject - 2, VmcsRef::Vmcs02, F::GUEST_RIP), Some(0x4010));
    assert_eq!(find(&obs, enter - 1, VmcsRef::Vmcs01, F::VM_EXIT_REASON), Some(20));
    assert!(obs.iter().all(|o| o.learned == Learned::Derived));
}

#[test]
fn nested_ept_entries_and_guest_mmu_roots_reveal_the_eptp() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(VMRESUME, 0x100);
    let enter = t.vmenter(0x7000, 0x4000, true, EPTP);
    let root = t.get_page(0x7, ROLE_GUEST_MMU, false);
    let obs = fields_of(&t.events);
    let v12 = VmcsRef::Vmcs12 { gpa: 0x7000 };
    assert_eq!(find(&obs, enter, v12, F::EPT_POINTER), Some(EPTP));
    assert_eq!(find(&obs, enter, v12, F::GUEST_CR3), None, "hidden by nested EPT");
    let r = obs.iter().find(|o| o.event == root).unwrap();
    assert_eq!((r.vmcs, r.field, r.value), (v12, F::EPT_POINTER, 0x7000));
    assert_eq!(r.mask, 0x000f_ffff_ffff_f000, "a root reveals only the address");
    let sec = obs.iter().find(|o| o.field == F::SECONDARY_VM_EXEC_CONTROL).unwrap();
    assert_eq!((sec.value, sec.mask), (2, 2));
}

#[test]
fn cr_accesses_and_614_entries_reveal_the_running_vmcs() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    let cr = t.cr(true, 3, 0x5000);
    let cr4 = t.cr(false, 4, 0x2020);
    let entry = t.entry_intr(0x400, Some(0x8000_0b0e));
    let obs = fields_of(&t.events);
    assert_eq!(find(&obs, cr, VmcsRef::Vmcs01, F::GUEST_CR3), Some(0x5000));
    assert_eq!(find(&obs, cr4, VmcsRef::Vmcs01, F::GUEST_CR4), Some(0x2020));
    assert_eq!(find(&obs, entry, VmcsRef::Vmcs01, F::VM_ENTRY_INTR_INFO_FIELD), Some(0x8000_0b0e));
    assert_eq!(find(&obs, entry, VmcsRef::Vmcs01, F::VM_ENTRY_EXCEPTION_ERROR_CODE), Some(0));
    assert_eq!(find(&obs, entry, VmcsRef::Vmcs01, F::GUEST_RIP), Some(0x400));
}

fn other(system: &str, name: &str, pairs: &[(&str, FieldValue)]) -> EventKind {
    let mut fields = Fields::new();
    for (n, v) in pairs {
        fields.push(*n, v.clone());
    }
    // As every reader does: vmxray's own records are typed here.
    EventKind::untyped(system.into(), name.into(), fields)
}

#[test]
fn probe_events_and_print_records_are_explicit_observations() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    t.exit(VMRESUME, 0x100);
    t.vmenter(0x7000, 0x4000, true, EPTP);
    // nested_vmx_load_cr3 in guest mode: vmcs12's GUEST_CR3, read by L0.
    let load = t.push(other(
        "vmxray_42",
        "vmcs_load_cr3",
        &[("cr3", FieldValue::U64(0x189f000)), ("hflags", FieldValue::U64(1))],
    ));
    // vmx_load_mmu_pgd with EPT, guest mode unknown (kprobe syntax): the model says L2.
    let pgd = t.push(other(
        "vmxray_42",
        "vmcs_load_mmu_pgd_ept",
        &[("root_hpa", FieldValue::U64(0x1234000))],
    ));
    let print = t.push(other(
        "ftrace",
        "print",
        &[("buf", FieldValue::Str("my_hook: 5 0 0 vmcs02 read GUEST_RIP 0x4000\n".into()))],
    ));
    let obs = fields_of(&t.events);
    let v12 = VmcsRef::Vmcs12 { gpa: 0x7000 };
    let o = obs.iter().find(|o| o.event == load).unwrap();
    assert_eq!(
        (o.vmcs, o.field, o.value, o.learned),
        (v12, F::GUEST_CR3, 0x189f000, Learned::Read)
    );
    let o = obs.iter().find(|o| o.event == pgd).unwrap();
    assert_eq!(
        (o.vmcs, o.field, o.value, o.learned),
        (VmcsRef::Vmcs02, F::EPT_POINTER, 0x1234000, Learned::Written)
    );
    let o = obs.iter().find(|o| o.event == print).unwrap();
    assert_eq!(
        (o.vmcs, o.field, o.value, o.learned),
        (VmcsRef::Vmcs02, F::GUEST_RIP, 0x4000, Learned::Read)
    );
}

#[test]
fn the_store_is_bounded_and_rules_see_recent_history() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    for i in 0..10u64 {
        t.enter_l2(VMRESUME, 0x100, 0x7000, 0x4000 + i, false, 0x1000 * (i + 1));
        t.reflect(CPUID, 0x4000 + i, 0x300);
    }
    let mut model = Model::default();
    model.run(&t.events);
    let st = model.state(Actor::vcpu(0)).unwrap();
    let h: Vec<_> = st.fields.history(VmcsRef::Vmcs12 { gpa: 0x7000 }, F::GUEST_CR3).collect();
    assert_eq!(h.len(), FieldStore::DEPTH);
    assert_eq!(h.last().unwrap().value, 0xa000);
    assert_eq!(h.last().unwrap().source, "kvm_nested_vmenter");
}

#[test]
fn views_history_until_table_and_diffs() {
    let mut t = EventBuilder::new();
    t.establish_l1();
    let a = t.enter_l2(VMLAUNCH, 0x100, 0x7000, 0x4000, false, 0xa000);
    t.reflect(CPUID, 0x4000, 0x300);
    let b = t.enter_l2(VMLAUNCH, 0x100, 0x8000, 0x5000, false, 0xb000);
    t.reflect(CPUID, 0x5000, 0x300);
    let a2 = t.enter_l2(VMRESUME, 0x100, 0x7000, 0x4003, false, 0xa000);
    let h = FieldHistory::collect(&t.events);
    assert!(h.until(a).iter().all(|o| o.event <= a));
    let va = VmcsRef::Vmcs12 { gpa: 0x7000 };
    let vb = VmcsRef::Vmcs12 { gpa: 0x8000 };
    let table = h.table_at(b);
    assert!(table.iter().any(|o| o.vmcs == vb && o.field == F::GUEST_CR3 && o.value == 0xb000));
    let d = h.diff_vmcs(va, vb, b);
    assert!(d.iter().any(|d| d.field == F::GUEST_CR3));
    assert!(d.iter().any(|d| d.field == F::GUEST_RIP));
    let d = h.diff_times(va, a, a2);
    assert!(d.iter().any(|d| d.field == F::GUEST_RIP), "{d:?}");
    assert!(!d.iter().any(|d| d.field == F::GUEST_CR3), "unchanged");
    let changes = h.changes(Some(va), Some(F::GUEST_RIP));
    assert_eq!(changes.len(), 2);
    assert!(changes[1].changed && changes[1].previous == Some(0x4000));
}

/// A model without field streams derives only the fields rules read: every field a rule reads
/// from the store (`fields.latest(…)`, `fields.history(…)` in replay/src/rules) is listed in
/// `RULE_FIELDS`, so that no rule sees less than with every stream.
#[test]
fn the_rules_read_only_the_fields_a_lean_model_derives() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rules");
    let listed: Vec<&str> =
        vmxray_replay::fields::RULE_FIELDS.iter().filter_map(|f| f.name()).collect();
    let mut reads = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for call in ["fields.latest(", "fields.history("] {
            for (at, _) in text.match_indices(call) {
                let end = text[at..].find([';', '\n']).map_or(text.len(), |e| at + e);
                let args = &text[at..end];
                let field = args
                    .split("FieldEncoding::")
                    .nth(1)
                    .and_then(|rest| {
                        rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next()
                    })
                    .unwrap_or_else(|| {
                        panic!("{}: a store read naming no field: {args}", path.display())
                    });
                assert!(
                    listed.contains(&field),
                    "{}: reads {field}, not in RULE_FIELDS",
                    path.display()
                );
                reads += 1;
            }
        }
    }
    assert!(reads >= 3, "{reads} store reads found");
}

/// A lean model derives exactly the full model's observations of the fields rules read, on
/// nested streams with EPT and with shadow paging (it skips whole event kinds that imply none).
#[test]
fn a_lean_model_derives_the_rule_fields_a_full_one_does() {
    let choices: Vec<u8> =
        (0..4000u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect();
    for events in [well_formed_nested(&choices).events, well_formed_nested_shadow(&choices).events]
    {
        let observed = |streams: bool| {
            let config =
                vmxray_replay::ModelConfig { field_streams: streams, ..Default::default() };
            let mut model = Model::new(config);
            let mut out = Vec::new();
            for e in &events {
                out.extend(
                    model
                        .step(e)
                        .fields
                        .iter()
                        .filter(|o| vmxray_replay::fields::RULE_FIELDS.contains(&o.field))
                        .cloned(),
                );
            }
            out
        };
        let lean = observed(false);
        assert!(lean.len() > 50, "{} observations", lean.len());
        assert_eq!(lean, observed(true));
    }
}
