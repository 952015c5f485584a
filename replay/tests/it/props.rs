//! Property tests: arbitrary event streams never panic the model (or triage), and generated
//! well-formed non-nested and nested sequences raise nothing above info.

use crate::common;

use proptest::prelude::*;
use vmxray_events::codes::{
    ExceptionVector, ExitCode, ExitReason, IntrInfo, Isa, MmuPageRole, UserspaceExitReason,
    VmInstructionError,
};
use vmxray_events::{
    Entry, Event, EventKind, ExitFields, ExitInfo, MmuPage, NestedVmenter, VmFailKind,
};
use vmxray_replay::triage::{TriageConfig, triage};
use vmxray_replay::{Model, Severity};

fn small() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(0xfff0u64), 0x1000u64..0x1010, any::<u64>()]
}

fn exit_info() -> impl Strategy<Value = ExitInfo> {
    (0u32..80, any::<bool>(), small(), small(), any::<u32>(), prop::option::of(0u32..3)).prop_map(
        |(reason, failed, rip, info1, intr, vcpu)| {
            ExitInfo::from(ExitFields {
                reason: ExitCode::Vmx(ExitReason(reason | if failed { 0x8000_0000 } else { 0 })),
                isa: Some(Isa::Vmx),
                guest_rip: Some(rip),
                info1: Some(info1),
                info2: Some(0),
                intr_info: Some(IntrInfo(intr)),
                error_code: Some(0),
                vcpu_id: vcpu,
                requests: None,
            })
        },
    )
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        exit_info().prop_map(EventKind::KvmExit),
        exit_info().prop_map(EventKind::KvmNestedVmexit),
        exit_info().prop_map(EventKind::KvmNestedVmexitInject),
        (0u32..3, small(), prop::option::of(any::<u32>())).prop_map(|(vcpu_id, rip, intr)| {
            EventKind::KvmEntry(Entry {
                vcpu_id,
                rip: Some(rip),
                immediate_exit: None,
                intr_info: intr.map(IntrInfo),
                error_code: None,
            })
        }),
        (prop_oneof![Just(u64::MAX), 0u64..4], small(), any::<bool>(), small(), any::<u32>())
            .prop_map(|(vmcs, nested_rip, ept, pgd, inj)| {
                EventKind::KvmNestedVmenter(NestedVmenter {
                    rip: 0x100,
                    vmcs,
                    nested_rip,
                    int_ctl: 0,
                    event_inj: IntrInfo(inj),
                    tdp_enabled: Some(ept),
                    guest_pgd: Some(pgd),
                    isa: Some(Isa::Vmx),
                })
            }),
        (any::<bool>(), 0u32..5).prop_map(|(late, err)| {
            let msg = if late { "hardware VM-instruction error: x" } else { "CC(x)" };
            EventKind::KvmNestedVmenterFailed {
                msg: msg.into(),
                err: VmInstructionError(err),
                kind: VmFailKind::of_message(msg),
            }
        }),
        (any::<bool>(), 0u32..5, small()).prop_map(|(write, cr, val)| EventKind::KvmCr {
            write,
            cr,
            val
        }),
        (small(), any::<u32>(), any::<bool>()).prop_map(|(gfn, role, created)| {
            EventKind::KvmMmuGetPage {
                page: MmuPage {
                    mmu_valid_gen: None,
                    gfn,
                    role: MmuPageRole(role),
                    role_known: u32::MAX,
                    root_count: 0,
                    unsync: false,
                },
                created,
            }
        }),
        (0u32..3, any::<bool>()).prop_map(|(vcpu_id, entering)| EventKind::KvmSmmTransition {
            vcpu_id,
            smbase: 0,
            entering
        }),
        prop::option::of(0u64..100).prop_map(|count| EventKind::Lost { count }),
        (small(), small()).prop_map(|(a, e)| EventKind::KvmPageFault {
            vcpu_id: None,
            guest_rip: None,
            fault_address: a,
            error_code: e
        }),
        (0u8..32).prop_map(|v| EventKind::KvmInjException {
            exception: ExceptionVector(v),
            has_error: false,
            error_code: 0,
            reinjected: None
        }),
        (0u32..20).prop_map(|r| EventKind::KvmUserspaceExit {
            reason: UserspaceExitReason(r),
            errno: None
        }),
        (small(), 0u32..32)
            .prop_map(|(addr, pferr)| EventKind::KvmMmuPagetableWalk { addr, pferr }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (1i32..4, kind()).prop_map(|(pid, kind)| Event {
        ts: 0,
        cpu: 0,
        pid,
        tgid: None,
        comm: None,
        kind,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_never_panic(events in prop::collection::vec(event(), 0..300)) {
        let mut model = Model::default();
        for (i, e) in events.iter().enumerate() {
            let step = model.step(e);
            prop_assert_eq!(step.at.0, i as u64);
            for a in step.anomalies {
                prop_assert!(a.evidence.iter().all(|x| x.0 <= i as u64));
            }
            if i % 50 == 0 {
                let snap = model.snapshot();
                prop_assert_eq!(snap.summary(), model.summary());
            }
        }
        let _ = triage(&events, TriageConfig::default());
    }

    #[test]
    fn well_formed_non_nested_sequences_are_clean(choices in prop::collection::vec(any::<u8>(), 0..400)) {
        let t = common::well_formed_flat(&choices);
        let loud: Vec<_> = Model::default().run(&t.events).into_iter().filter(|a| a.severity > Severity::Info).collect();
        prop_assert!(loud.is_empty(), "{:#?}", loud);
    }

    #[test]
    fn well_formed_nested_shadow_sequences_are_clean(choices in prop::collection::vec(any::<u8>(), 0..400)) {
        let t = common::well_formed_nested_shadow(&choices);
        let loud: Vec<_> = Model::default().run(&t.events).into_iter().filter(|a| a.severity > Severity::Info).collect();
        prop_assert!(loud.is_empty(), "{:#?}", loud);
    }

    #[test]
    fn well_formed_nested_sequences_are_clean(choices in prop::collection::vec(any::<u8>(), 0..400)) {
        let t = common::well_formed_nested(&choices);
        let loud: Vec<_> = Model::default().run(&t.events).into_iter().filter(|a| a.severity > Severity::Info).collect();
        prop_assert!(loud.is_empty(), "{:#?}", loud);
    }
}

#[test]
fn generated_shadow_nested_sequences_exercise_the_shadow_rules() {
    use vmxray_replay::{RuleId, RuleStatus};
    let mut x: u32 = 0x1234_5678;
    let choices: Vec<u8> = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[1]
        })
        .collect();
    let t = common::well_formed_nested_shadow(&choices);
    let mut model = Model::default();
    let loud: Vec<_> =
        model.run(&t.events).into_iter().filter(|a| a.severity > Severity::Info).collect();
    assert!(loud.is_empty(), "{loud:#?}");
    let summary = model.summary();
    for rule in [
        RuleId::ChangedSubjectCr3,
        RuleId::InvvpidRootNotReacquired,
        RuleId::RootWrongLevel,
        RuleId::RootGfnNotCr3,
        RuleId::L2PfNotHandledByL0,
    ] {
        let checked = summary
            .rules
            .iter()
            .any(|r| r.rule == rule && matches!(r.status, RuleStatus::Checked { .. }));
        assert!(checked, "{rule} never checked");
    }
}

#[test]
fn generated_nested_sequences_exercise_the_nested_rules() {
    use vmxray_replay::{RuleId, RuleStatus};
    let mut x: u32 = 0x9e37_79b9;
    let choices: Vec<u8> = (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[1]
        })
        .collect();
    let t = common::well_formed_nested(&choices);
    let mut model = Model::default();
    let loud: Vec<_> =
        model.run(&t.events).into_iter().filter(|a| a.severity > Severity::Info).collect();
    assert!(loud.is_empty(), "{loud:#?}");
    let summary = model.summary();
    let checked = |rule: RuleId| {
        summary
            .rules
            .iter()
            .any(|r| r.rule == rule && matches!(r.status, RuleStatus::Checked { .. }))
    };
    for rule in [
        RuleId::HltCancelledExitState,
        RuleId::ChangedSubjectCr3,
        RuleId::EntryWithoutExit,
        RuleId::NestedVmexitMismatch,
        RuleId::UnexplainedVmenter,
        RuleId::HostRipMismatch,
        RuleId::L2EntryMismatch,
        RuleId::LaunchState,
        RuleId::VmptrWithoutVmptrld,
        RuleId::GuestMmuRootRole,
        RuleId::PmlFullInL2,
    ] {
        assert!(checked(rule), "{rule} never checked: {summary:#?}");
    }
}

/// Replaces `events[from..from + len]` by one `Lost` marker (what a ring-buffer overrun does).
fn lose(events: &[Event], from: usize, len: usize) -> Vec<Event> {
    let from = from.min(events.len());
    let to = (from + len).min(events.len());
    let mut out = events[..from].to_vec();
    out.push(Event {
        ts: 0,
        cpu: 0,
        pid: 1000,
        tgid: None,
        comm: None,
        kind: EventKind::Lost { count: Some((to - from) as u64) },
    });
    out.extend_from_slice(&events[to..]);
    out
}

fn loud(events: &[Event]) -> Vec<vmxray_replay::Anomaly> {
    Model::default().run(events).into_iter().filter(|a| a.severity > Severity::Info).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Losing any stretch of a well-formed trace never makes the model guess: it
    /// resynchronizes and reports nothing above info.
    #[test]
    fn lost_events_never_cause_anomalies(
        choices in prop::collection::vec(any::<u8>(), 0..300),
        from in 0usize..3000,
        len in 0usize..200,
        flat in any::<bool>(),
    ) {
        let t = match (flat, from % 2) {
            (true, _) => common::well_formed_flat(&choices),
            (false, 0) => common::well_formed_nested(&choices),
            (false, _) => common::well_formed_nested_shadow(&choices),
        };
        let events = lose(&t.events, from % (t.events.len() + 1), len);
        let found = loud(&events);
        prop_assert!(found.is_empty(), "{:#?}", found);
    }

    /// A capture may start anywhere (mid-L2, mid-exit).
    #[test]
    fn captures_starting_anywhere_are_clean(
        choices in prop::collection::vec(any::<u8>(), 0..300),
        skip in 0usize..3000,
    ) {
        let t = common::well_formed_nested(&choices);
        let skip = skip % (t.events.len() + 1);
        let found = loud(&t.events[skip..]);
        prop_assert!(found.is_empty(), "{:#?}", found);
    }

    /// Two vCPUs (threads) interleaved in any order are modelled independently.
    #[test]
    fn interleaved_vcpus_are_independent(
        a in prop::collection::vec(any::<u8>(), 0..200),
        b in prop::collection::vec(any::<u8>(), 0..200),
        order in prop::collection::vec(any::<bool>(), 0..4000),
    ) {
        let ta = common::well_formed_nested(&a);
        let mut tb = common::well_formed_flat(&b);
        for e in &mut tb.events {
            e.pid = 2000;
            match &mut e.kind {
                EventKind::KvmExit(i) | EventKind::KvmNestedVmexit(i) => {
                    *i = ExitInfo::from(ExitFields { vcpu_id: Some(1), ..i.fields() })
                }
                EventKind::KvmEntry(en) => en.vcpu_id = 1,
                EventKind::KvmPageFault { vcpu_id, .. } => *vcpu_id = Some(1),
                EventKind::KvmSmmTransition { vcpu_id, .. } => *vcpu_id = 1,
                _ => {}
            }
        }
        let (mut ia, mut ib) = (ta.events.iter().peekable(), tb.events.iter().peekable());
        let mut merged = Vec::new();
        let mut pick = order.into_iter();
        while ia.peek().is_some() || ib.peek().is_some() {
            let take_a = match (ia.peek(), ib.peek()) {
                (Some(_), Some(_)) => pick.next().unwrap_or(true),
                (Some(_), None) => true,
                _ => false,
            };
            merged.push(if take_a { ia.next() } else { ib.next() }.unwrap().clone());
        }
        let found = loud(&merged);
        prop_assert!(found.is_empty(), "{:#?}", found);
    }

    /// A snapshot resumes exactly where the model was.
    #[test]
    fn snapshots_resume_identically(choices in prop::collection::vec(any::<u8>(), 0..200), cut in 0usize..2000) {
        let t = common::well_formed_nested(&choices);
        let cut = cut % (t.events.len() + 1);
        let mut model = Model::default();
        model.run(&t.events[..cut]);
        let mut resumed = model.snapshot();
        let rest_a = model.run(&t.events[cut..]);
        let rest_b = resumed.run(&t.events[cut..]);
        prop_assert_eq!(rest_a, rest_b);
        prop_assert_eq!(model.summary(), resumed.summary());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The state rebuilt from checkpoints equals the state of a fresh replay up to that event.
    #[test]
    fn checkpoints_rebuild_the_state_at_any_event(
        choices in prop::collection::vec(any::<u8>(), 1..200),
        at in 0usize..4000,
        interval in 1u64..64,
    ) {
        use vmxray_replay::EventIndex;
        use vmxray_replay::checkpoints::Checkpoints;
        let t = common::well_formed_nested(&choices);
        let at = at % t.events.len();
        let mut model = Model::default();
        let mut cp = Checkpoints::new(interval);
        for e in &t.events {
            cp.observe(&model);
            model.step(e);
        }
        let rebuilt = cp.model_at(EventIndex(at as u64), |i| &t.events[usize::try_from(i.0).unwrap()]).unwrap();
        let mut fresh = Model::default();
        fresh.run(&t.events[..at]);
        prop_assert_eq!(rebuilt.next_index(), fresh.next_index());
        let a: Vec<_> = rebuilt.states().map(|(a, s)| (a, s.clone())).collect();
        let b: Vec<_> = fresh.states().map(|(a, s)| (a, s.clone())).collect();
        prop_assert_eq!(a, b);
        prop_assert_eq!(rebuilt.summary(), fresh.summary());
    }
}
