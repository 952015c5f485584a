//! Statistics checked against traces built in code, with every expected figure computed by hand
//! in the comments.

use std::sync::Arc;

use vmxray_capture::{Clock, InputFormat, LostOnCpu, ReadStats, TraceMeta};
use vmxray_events::codes::{
    ExceptionVector, ExitCode, ExitReason, IntrInfo, Isa, UserspaceExitReason,
};
use vmxray_events::{
    Actor, Attribution, Entry, Event, EventKind, ExitFields, ExitInfo, Fields, InsnBytes,
    OtherEvent,
};

use super::*;

const EPT: u32 = 48;
const HLT: u32 = 12;
const VMCALL: u32 = 18;
const EXT_INT: u32 = 1;
const PREEMPTION_TIMER: u32 = 52;

fn ev(ts: u64, cpu: u32, pid: i32, kind: EventKind) -> Event {
    Event { ts, cpu, pid, tgid: None, comm: None, kind }
}

fn info(reason: u32, vcpu: Option<u32>) -> ExitInfo {
    ExitInfo::from(ExitFields {
        reason: ExitCode::Vmx(ExitReason(reason)),
        isa: Some(Isa::Vmx),
        guest_rip: Some(0x1000),
        info1: Some(0),
        info2: Some(0),
        intr_info: Some(IntrInfo(if reason == EXT_INT { 0x8000_0020 } else { 0 })),
        error_code: Some(0),
        vcpu_id: vcpu,
        requests: None,
    })
}

fn exit(ts: u64, cpu: u32, pid: i32, vcpu: Option<u32>, reason: u32) -> Event {
    ev(ts, cpu, pid, EventKind::KvmExit(info(reason, vcpu)))
}

fn nested(ts: u64, cpu: u32, pid: i32, vcpu: u32, reason: u32) -> Event {
    ev(ts, cpu, pid, EventKind::KvmNestedVmexit(info(reason, Some(vcpu))))
}

/// `kvm_nested_vmexit_inject` carries no vcpu_id: attributed by thread.
fn inject(ts: u64, cpu: u32, pid: i32, reason: u32) -> Event {
    ev(ts, cpu, pid, EventKind::KvmNestedVmexitInject(info(reason, None)))
}

fn entry(ts: u64, cpu: u32, pid: i32, vcpu: u32) -> Event {
    ev(
        ts,
        cpu,
        pid,
        EventKind::KvmEntry(Entry {
            vcpu_id: vcpu,
            rip: Some(0x1000),
            immediate_exit: None,
            intr_info: None,
            error_code: None,
        }),
    )
}

fn other(ts: u64, cpu: u32, pid: i32, name: &str) -> Event {
    ev(
        ts,
        cpu,
        pid,
        EventKind::Other(Box::new(OtherEvent {
            system: "kvm".into(),
            name: name.into(),
            fields: Fields::new(),
        })),
    )
}

fn run(events: &[Event]) -> StatsReport {
    let mut stats = ExitStats::new();
    for e in events {
        stats.push(e);
    }
    stats.finish(None, None)
}

/// vCPU 0 = thread 100, vCPU 1 = thread 101, vCPU 2 = thread 300 (its kvm_exit has no vcpu_id,
/// like kernels before ~5.3), thread 400 = an exit without vcpu_id whose vCPU is never learnt.
fn hand_trace() -> Vec<Event> {
    vec![
        /*  1 */ exit(1000, 0, 100, Some(0), EPT),
        /*  2 */ exit(1100, 1, 101, Some(1), HLT),
        /*  3 */ entry(1140, 0, 100, 0), // EPT  L1 v0: 1140-1000 = 140
        /*  4 */ exit(1200, 0, 100, Some(0), EPT),
        /*  5 */ nested(1210, 0, 100, 0, EPT), // → #4 is an L2 exit
        /*  - */ other(1250, 0, 100, "kvm_fpu"),
        /*  6 */ entry(1300, 1, 101, 1), // HLT  L1 v1: 1300-1100 = 200
        /*  7 */ entry(1380, 0, 100, 0), // EPT  L2 v0, no inject → L0 handled: 180
        /*  8 */ exit(2000, 1, 101, Some(1), VMCALL),
        /*  9 */ nested(2010, 1, 101, 1, VMCALL),
        /* 10 */ inject(2020, 1, 101, VMCALL), // same reason → reflected to L1
        /* 11 */ entry(2160, 1, 101, 1), // VMCALL L2 v1 reflected: 160
        /* 12 */ exit(3000, 0, 100, Some(0), EXT_INT),
        /* 13 */ nested(3010, 0, 100, 0, EXT_INT),
        /* 14 */
        inject(3020, 0, 100, EXT_INT), // L0 keeps interrupts: synthesized, not reflected
        /* 15 */ entry(3120, 0, 100, 0), // EXT_INT L2 v0 L0 handled: 120
        /* 16 */ exit(3300, 0, 300, None, EPT), // thread 300, vCPU not known yet
        /* 17 */ entry(3400, 0, 300, 2), // EPT L1 v2: 100
        /* 18 */ exit(3500, 0, 100, Some(0), EPT),
        /* 19 */
        ev(3600, 1, 0, EventKind::Lost { count: Some(5) }), // #18: no latency (lost)
        /* 20 */ entry(3700, 0, 100, 0), // nothing pending
        /* 21 */ exit(4000, 1, 101, Some(1), HLT),
        /* 22 */
        exit(4100, 1, 101, Some(1), HLT), // #21: no latency (exited again first)
        /* 23 */ entry(4320, 1, 101, 1), // HLT L1 v1: 220
        /* 24 */
        exit(5000, 0, 400, None, HLT), // never entered: trace end, vCPU tid:400
        /* 25 */ exit(5100, 0, 100, Some(0), EPT), // trace end
        /* 26 */ inject(5200, 1, 101, PREEMPTION_TIMER), // nothing pending: synthesized
        /* 27 */ nested(5300, 1, 101, 1, HLT), // nothing pending: orphan
    ]
}

fn reason_row<'a>(rows: &'a [ExitRow], name: &str) -> &'a ExitRow {
    rows.iter().find(|r| r.reason.as_ref().is_some_and(|r| r.name == name)).unwrap()
}

#[test]
fn hand_computed_latencies() {
    let report = run(&hand_trace());
    assert_eq!(report.events_total, 28);
    let exits = report.exits.as_ref().expect("the trace has kvm_exit");

    // kvm_exit events: #1 #2 #4 #8 #12 #16 #18 #21 #22 #24 #25 = 11.
    assert_eq!(exits.total, 11);
    // With a latency: 140 180 200 160 120 100 220 → 7; without: #18 lost, #21 next exit,
    // #24 and #25 trace end → 4.
    assert_eq!(exits.with_latency, 7);
    assert_eq!(
        exits.without_latency,
        Unpaired {
            trace_end: 2,
            lost_events: 1,
            next_exit: 1,
            clock_backwards: 0,
            unknown_time: 0
        }
    );

    // Overall: sorted 100 120 140 160 180 200 220; total 1120, mean 160, deviations
    // −60 −40 −20 0 20 40 60, squares sum 11200, /7 = 1600 → stddev 40.
    // Nearest rank: p50 = rank ⌈3.5⌉ = 4 → 160; p90 = rank ⌈6.3⌉ = 7 → 220; p99, p99.9 → 220.
    let all = exits.overall.latency.as_ref().unwrap();
    assert_eq!((all.count, all.total, all.min, all.max), (7, 1120, 100, 220));
    assert_eq!((all.mean, all.stddev), (160.0, 40.0));
    assert_eq!((all.p50, all.p90, all.p99, all.p999), (160, 220, 220, 220));
    assert_eq!((exits.overall.count, exits.overall.without_latency), (11, 4));
    assert_eq!(exits.overall.percent, 100.0);

    // Reasons, most frequent first: EPT 5, HLT 4, then EXTERNAL_INTERRUPT and VMCALL (1 each,
    // by name).
    let names: Vec<&str> =
        exits.by_reason.iter().map(|r| r.reason.as_ref().unwrap().name.as_str()).collect();
    assert_eq!(names, ["EPT_VIOLATION", "HLT", "EXTERNAL_INTERRUPT", "VMCALL"]);

    // EPT_VIOLATION: #1 140, #4 180 (L2, L0), #16 100, #18 lost, #25 trace end.
    // 5/11 = 45.45 %; latencies 100 140 180: mean 140; n·Σx² − (Σx)² = 3·62000 − 420² = 9600,
    // stddev = √9600 / 3 ≈ 32.66; p50 = rank 2 → 140; p99 = rank ⌈2.97⌉ = 3 → 180.
    let ept = reason_row(&exits.by_reason, "EPT_VIOLATION");
    assert_eq!((ept.count, ept.without_latency, ept.l0_handled, ept.reflected), (5, 2, 1, 0));
    assert_eq!(ept.percent, 5.0 * 100.0 / 11.0);
    assert_eq!(ept.reason.as_ref().unwrap().code, 48);
    // Time%: 420 of 1120 = 37.5 %.
    assert_eq!(ept.time_percent, 37.5);
    let l = ept.latency.as_ref().unwrap();
    assert_eq!((l.count, l.total, l.min, l.max, l.mean), (3, 420, 100, 180, 140.0));
    assert_eq!(l.stddev, 9600f64.sqrt() / 3.0);
    assert_eq!((l.p50, l.p90, l.p99, l.p999), (140, 180, 180, 180));

    // HLT: #2 200, #21 next exit, #22 220, #24 trace end. 4/11; mean 210;
    // 2·88400 − 420² = 400 → stddev √400/2 = 10; p50 = rank 1 → 200; p99 = rank 2 → 220.
    let hlt = reason_row(&exits.by_reason, "HLT");
    assert_eq!((hlt.count, hlt.without_latency), (4, 2));
    assert_eq!(hlt.percent, 4.0 * 100.0 / 11.0);
    let l = hlt.latency.as_ref().unwrap();
    assert_eq!((l.count, l.min, l.max, l.mean, l.stddev), (2, 200, 220, 210.0, 10.0));
    assert_eq!((l.p50, l.p99), (200, 220));

    // One-exit reasons: stddev 0, every percentile the value.
    let vmcall = reason_row(&exits.by_reason, "VMCALL");
    assert_eq!((vmcall.count, vmcall.reflected, vmcall.l0_handled), (1, 1, 0));
    let l = vmcall.latency.as_ref().unwrap();
    assert_eq!((l.min, l.p50, l.p99, l.max, l.mean, l.stddev), (160, 160, 160, 160, 160.0, 0.0));
    let ext = reason_row(&exits.by_reason, "EXTERNAL_INTERRUPT");
    assert_eq!((ext.count, ext.reflected, ext.l0_handled), (1, 0, 1));
    assert_eq!(ext.latency.as_ref().unwrap().p50, 120);
    assert_eq!(l.histogram, [HistogramBin { lo: 160, hi: 160, count: 1 }]);

    // Histograms: every row's bins span [min, max] and count each latency once.
    let rows = [&exits.overall]
        .into_iter()
        .chain(&exits.by_reason)
        .chain(&exits.by_reason_level)
        .chain(&exits.by_vcpu)
        .chain(&exits.groups);
    for row in rows {
        let Some(l) = &row.latency else { continue };
        assert_eq!(l.histogram.iter().map(|b| b.count).sum::<u64>(), l.count, "{row:?}");
        assert_eq!(l.histogram.first().map(|b| b.lo), Some(l.min), "{row:?}");
        assert_eq!(l.histogram.last().map(|b| b.hi), Some(l.max), "{row:?}");
    }
    // EPT_VIOLATION's 100 140 180 (below 256: exact edges), one in each of three bins.
    let ept = reason_row(&exits.by_reason, "EPT_VIOLATION").latency.as_ref().unwrap();
    let filled: Vec<(u64, u64)> =
        ept.histogram.iter().filter(|b| b.count > 0).map(|b| (b.lo, b.count)).collect();
    assert_eq!(filled.len(), 3, "{:?}", ept.histogram);
    assert!(ept.histogram.len() <= crate::histogram::MAX_BINS);
    for (v, bin) in [100, 140, 180].into_iter().zip(ept.histogram.iter().filter(|b| b.count > 0)) {
        assert!((bin.lo..=bin.hi).contains(&v) && bin.count == 1, "{v} {:?}", ept.histogram);
    }

    // Per vCPU: v0 = #1 #4 #12 #18 #25 (140 180 120, 2 without); v1 = #2 #8 #21 #22
    // (200 160 220, 1 without); v2 = #16 (100); tid:400 = #24 (none).
    let vcpus: Vec<(Actor, u64, u64)> =
        exits.by_vcpu.iter().map(|r| (r.vcpu.unwrap(), r.count, r.without_latency)).collect();
    assert_eq!(
        vcpus,
        [
            (Actor::vcpu(0), 5, 2),
            (Actor::vcpu(1), 4, 1),
            (Actor::vcpu(2), 1, 0),
            (Actor::Thread(400), 1, 1)
        ]
    );
    // v0: 120 140 180 → mean 440/3, p50 = rank 2 → 140. v1: 160 200 220 → mean 580/3,
    // 3·(25600+40000+48400) − 580² = 342000 − 336400 = 5600 → stddev √5600/3.
    let v0 = exits.by_vcpu[0].latency.as_ref().unwrap();
    assert_eq!((v0.min, v0.p50, v0.max, v0.mean), (120, 140, 180, 440.0 / 3.0));
    let v1 = exits.by_vcpu[1].latency.as_ref().unwrap();
    assert_eq!((v1.min, v1.p50, v1.max, v1.mean), (160, 200, 220, 580.0 / 3.0));
    assert_eq!(v1.stddev, 5600f64.sqrt() / 3.0);
    assert_eq!(exits.by_vcpu[2].latency.as_ref().unwrap().p50, 100);
    assert_eq!(exits.by_vcpu[3].latency, None);

    // Lost markers from the stream when no reader stats are given.
    assert_eq!(
        report.losses.lost,
        [LostRow { cpu: 1, markers: 1, events: 5, uncounted_markers: 0 }]
    );
    assert_eq!(
        report.events_by_name.iter().find(|n| n.name == "kvm_fpu").map(|n| n.count),
        Some(1)
    );
}

#[test]
fn l1_l2_split_and_reflection() {
    let report = run(&hand_trace());
    let exits = report.exits.unwrap();
    assert!(exits.nested);
    // L1: EPT #1 #16 #18 #25 and HLT #2 #21 #22 #24 = 8. L2: EPT #4 (L0), VMCALL #8
    // (reflected), EXTERNAL_INTERRUPT #12 (L0: the inject after it is synthesized).
    assert_eq!(exits.levels, Some(LevelTotals { l1: 8, l2: 3, l2_l0_handled: 2, l2_reflected: 1 }));
    let rows: Vec<(&str, Option<Level>, u64, u64, u64)> = exits
        .by_reason_level
        .iter()
        .map(|r| {
            (r.reason.as_ref().unwrap().name.as_str(), r.level, r.count, r.l0_handled, r.reflected)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("EPT_VIOLATION", Some(Level::L1), 4, 0, 0),
            ("HLT", Some(Level::L1), 4, 0, 0),
            ("EPT_VIOLATION", Some(Level::L2), 1, 1, 0),
            ("EXTERNAL_INTERRUPT", Some(Level::L2), 1, 1, 0),
            ("VMCALL", Some(Level::L2), 1, 0, 1),
        ]
    );
    // EPT L1: 140 (v0), 100 (v2), plus #18 and #25 without → mean 120.
    let ept_l1 = &exits.by_reason_level[0];
    assert_eq!(ept_l1.latency.as_ref().unwrap().mean, 120.0);
    assert_eq!(ept_l1.without_latency, 2);
    assert_eq!(exits.by_reason_level[2].latency.as_ref().unwrap().p50, 180);
    // #14 (interrupt for L1 after an L0-kept interrupt) and #26 (no pending exit).
    assert_eq!(
        exits.synthesized_nested_exits,
        [
            NameCount { name: "EXTERNAL_INTERRUPT".into(), count: 1 },
            NameCount { name: "PREEMPTION_TIMER".into(), count: 1 },
        ]
    );
    assert_eq!(exits.orphan_nested_vmexits, 1);
    // Slowest first: #22 HLT (220, exit at 4100), #2 HLT (200, at 1100), #4 EPT in L2 (180).
    let slowest: Vec<(u64, u64, Actor, &str, Option<Level>)> = exits
        .slowest
        .iter()
        .map(|s| (s.latency, s.exit_ts, s.vcpu, s.reason.name.as_str(), s.level))
        .collect();
    assert_eq!(slowest.len(), 7);
    assert_eq!(
        slowest[..3],
        [
            (220, 4100, Actor::vcpu(1), "HLT", Some(Level::L1)),
            (200, 1100, Actor::vcpu(1), "HLT", Some(Level::L1)),
            (180, 1200, Actor::vcpu(0), "EPT_VIOLATION", Some(Level::L2)),
        ]
    );
    // Finest groups: (EPT, L1, v0) = #1 140, #18 lost, #25 trace end.
    let g = exits
        .groups
        .iter()
        .find(|g| {
            g.reason.as_ref().unwrap().name == "EPT_VIOLATION"
                && g.level == Some(Level::L1)
                && g.vcpu == Some(Actor::vcpu(0))
        })
        .unwrap();
    assert_eq!((g.count, g.without_latency, g.latency.as_ref().unwrap().p50), (3, 2, 140));
    // Every exit is in exactly one group.
    assert_eq!(exits.groups.iter().map(|g| g.count).sum::<u64>(), 11);
}

#[test]
fn without_nested_events_the_level_is_not_guessed() {
    let report =
        run(&[exit(10, 0, 1, Some(0), HLT), entry(60, 0, 1, 0), exit(100, 0, 1, Some(0), HLT)]);
    let exits = report.exits.unwrap();
    assert!(!exits.nested && exits.levels.is_none() && exits.by_reason_level.is_empty());
    assert!(exits.groups.iter().all(|g| g.level.is_none()));
    // The last exit has no following entry: counted, no latency.
    assert_eq!((exits.total, exits.with_latency, exits.without_latency.trace_end), (2, 1, 1));
    let text = render(&report_of(&[exit(100, 0, 1, Some(0), HLT)]), Format::Text);
    assert!(text.contains("trace ended before the next kvm_entry: 1"), "{text}");
}

#[test]
fn exit_without_any_entry_is_counted_without_latency() {
    let report = report_of(&[exit(5, 0, 1, Some(3), EPT)]);
    let exits = report.exits.as_ref().unwrap();
    assert_eq!((exits.total, exits.with_latency), (1, 0));
    assert_eq!(exits.by_reason[0].latency, None);
    assert!(report.notes.iter().any(|n| n.contains("no kvm_entry")));
    let text = render(&report, Format::Text);
    // The latency columns show "-" and the reason is explained.
    assert!(text.lines().any(|l| l.starts_with("  EPT_VIOLATION") && l.contains(" - ")), "{text}");
    assert!(text.contains("Exits counted without a latency (NO-LAT): 1"), "{text}");
}

#[test]
fn entry_earlier_than_exit_is_clock_skew_not_a_huge_latency() {
    let report = report_of(&[exit(1000, 0, 1, Some(0), HLT), entry(900, 1, 1, 0)]);
    let exits = report.exits.unwrap();
    assert_eq!(exits.without_latency.clock_backwards, 1);
    assert_eq!(exits.with_latency, 0);
}

fn report_of(events: &[Event]) -> StatsReport {
    run(events)
}

fn render(report: &StatsReport, format: Format) -> String {
    let mut out = Vec::new();
    write_report(report, format, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn emulate(ts: u64, bytes: &[u8], failed: bool) -> Event {
    ev(
        ts,
        1,
        17796,
        EventKind::KvmEmulateInsn {
            rip: 0x1000,
            csbase: 0,
            insn: InsnBytes::new(bytes, bytes.len()),
            flags: 9,
            failed,
        },
    )
}

/// Like the real traces of this project's machine (PVM backend, instruction emulator only).
fn emulator_trace() -> Vec<Event> {
    let pid = 17796;
    let user = |ts, reason| ev(ts, 1, pid, EventKind::KvmUserspaceExit { reason, errno: Some(0) });
    let pio = |ts| {
        ev(
            ts,
            1,
            pid,
            EventKind::KvmPio { write: true, port: 0x10, size: 1, count: 1, val: Some(1) },
        )
    };
    vec![
        other(1, 1, pid, "kvm_fpu"),
        emulate(2, &[0x0f, 0x22, 0xd8], false),
        emulate(3, &[0xe6, 0x10], false),
        pio(4),
        user(5, UserspaceExitReason::IO),
        emulate(6, &[0xe6, 0x10], false),
        pio(7),
        user(8, UserspaceExitReason::IO),
        emulate(9, &[0x0f, 0x22, 0xd8], false),
        emulate(10, &[0xf4], false),
        user(11, UserspaceExitReason::HLT),
        emulate(12, &[0x0f, 0x0b], true),
        ev(
            13,
            1,
            pid,
            EventKind::KvmInjException {
                exception: ExceptionVector::UD,
                has_error: false,
                error_code: 0,
                reinjected: Some(false),
            },
        ),
        ev(
            14,
            1,
            pid,
            EventKind::KvmInjException {
                exception: ExceptionVector::GP,
                has_error: true,
                error_code: 0,
                reinjected: Some(true),
            },
        ),
        user(15, UserspaceExitReason::SHUTDOWN),
        ev(16, 1, 0, EventKind::Lost { count: None }),
    ]
}

#[test]
fn trace_without_kvm_exit_shows_what_is_there() {
    let meta = TraceMeta {
        input: Arc::from("triple-fault.dat"),
        format: InputFormat::TraceDat,
        clock: Clock::Local,
        cpus: Some(2),
        kernel: None,
        excerpt: false,
    };
    let mut read = ReadStats::default();
    read.note_lost(1, None);
    read.skipped = 2;
    read.unknown_events.insert("id 1234".into(), 3);
    let mut stats = ExitStats::new();
    for e in emulator_trace() {
        stats.push(&e);
    }
    let report = stats.finish(Some(&meta), Some(&read));
    assert!(report.exits.is_none());
    let emu = &report.emulated_instructions;
    assert_eq!((emu.total, emu.failed, emu.other), (6, 1, 0));
    let insns: Vec<(&str, Option<&str>, u64, u64)> = emu
        .by_insn
        .iter()
        .map(|r| (r.bytes.as_str(), r.mnemonic.as_deref(), r.count, r.failed))
        .collect();
    assert_eq!(
        insns,
        [
            ("0f 22 d8", Some("mov cr3, rax"), 2, 0),
            ("e6 10", Some("out 0x10, al"), 2, 0),
            ("0f 0b", Some("ud2"), 1, 1),
            ("f4", Some("hlt"), 1, 0),
        ]
    );
    assert_eq!(
        report.injected_exceptions,
        [
            ExceptionRow {
                vector: 6,
                name: "#UD".into(),
                count: 1,
                with_error_code: 0,
                reinjected: 0
            },
            ExceptionRow {
                vector: 13,
                name: "#GP".into(),
                count: 1,
                with_error_code: 1,
                reinjected: 1
            },
        ]
    );
    let user: Vec<(&str, u64)> =
        report.userspace_exits.iter().map(|u| (u.reason.as_str(), u.count)).collect();
    assert_eq!(user, [("KVM_EXIT_IO", 2), ("KVM_EXIT_HLT", 1), ("KVM_EXIT_SHUTDOWN", 1)]);
    assert_eq!(report.pio, [PioRow { direction: "out".into(), port: 0x10, size: 1, count: 2 }]);
    // The reader's counters win over the in-stream markers.
    assert_eq!(
        report.losses.lost,
        [LostRow { cpu: 1, markers: 1, events: 0, uncounted_markers: 1 }]
    );
    assert_eq!(report.losses.skipped, 2);
    assert_eq!(report.input.as_ref().unwrap().format, "trace-dat");
    assert_eq!(report.time_unit, TimeUnit::Ns);

    let text = render(&report, Format::Text);
    for expected in [
        "vmxray stats: triple-fault.dat (trace-dat, clock local, 2 CPUs, complete trace)",
        "No kvm_exit events",
        "Emulated instructions (kvm_emulate_insn): 6 in total, 1 failed, 4 distinct",
        "mov cr3, rax",
        "Injected exceptions (kvm_inj_exception)",
        "#UD",
        "KVM_EXIT_SHUTDOWN",
        "Port I/O (kvm_pio)",
        "Lost events: an unknown number (CPU 1: 1 marker(s) without a count).",
        "Skipped records/lines: 2.",
        "Unknown events: id 1234 ×3.",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("EXITS%"), "{text}");
    // CSV: the header alone.
    assert_eq!(render(&report, Format::Csv), format!("{}\n", render::CSV_HEADER));
}

#[test]
fn raw_clock_is_said() {
    let meta = TraceMeta {
        input: Arc::from("tsc.dat"),
        format: InputFormat::TraceDat,
        clock: Clock::X86Tsc,
        cpus: None,
        kernel: Some("6.14.0".into()),
        excerpt: false,
    };
    let mut stats = ExitStats::new();
    stats.push(&exit(0, 0, 1, Some(0), HLT));
    stats.push(&entry(3000, 0, 1, 0));
    let report = stats.finish(Some(&meta), None);
    assert_eq!(report.time_unit, TimeUnit::Raw);
    let text = render(&report, Format::Text);
    assert!(text.contains("in raw `x86-tsc` clock units (not ns)"), "{text}");
    assert!(render(&report, Format::Csv).lines().nth(1).unwrap().ends_with(",raw"));
}

#[test]
fn json_round_trips_and_csv_has_one_row_per_group() {
    let report = run(&hand_trace());
    let json = render(&report, Format::Json);
    let back: StatsReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["schema"], "vmxray-stats/1");
    assert_eq!(value["exits"]["overall"]["latency"]["p50"], 160);
    // The overall histogram: 7 latencies 100..=220 in ascending contiguous bins.
    let bins = value["exits"]["overall"]["latency"]["histogram"].as_array().unwrap();
    assert_eq!(bins[0]["lo"], 100);
    assert_eq!(bins[bins.len() - 1]["hi"], 220);
    assert_eq!(bins.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(), 7);
    // A report written before `histogram` existed still reads (as no bins).
    let mut old = value.clone();
    old["exits"]["overall"]["latency"].as_object_mut().unwrap().remove("histogram");
    let old: StatsReport = serde_json::from_value(old).unwrap();
    assert_eq!(old.exits.unwrap().overall.latency.unwrap().histogram, []);
    // Groups are ordered by reason code: EXTERNAL_INTERRUPT (1) first, an L2 exit of vCPU 0.
    assert_eq!(value["exits"]["groups"][0]["level"], "l2");
    assert_eq!(value["exits"]["groups"][0]["vcpu"]["id"], 0);
    assert_eq!(value["exits"]["by_vcpu"][3]["vcpu"]["thread"], 400);

    let csv = render(&report, Format::Csv);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(render::CSV_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let groups = &report.exits.as_ref().unwrap().groups;
    assert_eq!(rows.len(), groups.len());
    let width = render::CSV_HEADER.split(',').count();
    assert!(rows.iter().all(|r| r.len() == width));
    // (EPT_VIOLATION, L1, vCPU 0): 3 exits, 2 without latency, the one latency 140.
    let ept_v0 =
        rows.iter().find(|r| r[0] == "EPT_VIOLATION" && r[3] == "L1" && r[4] == "0").unwrap();
    assert_eq!(&ept_v0[5..8], ["3", "27.2727", "2"]);
    // Its latency is 140 of the 1120 total: 12.5 % of the time.
    assert_eq!(&ept_v0[10..15], ["1", "12.5000", "140", "140", "140"]);
    // tid:400's HLT has no latency: empty latency fields.
    let t400 = rows.iter().find(|r| r[4] == "tid:400").unwrap();
    assert_eq!(&t400[10..12], ["0", ""]);
}

#[test]
fn text_tables_for_a_nested_trace() {
    let text = render(&run(&hand_trace()), Format::Text);
    for expected in [
        "11 kvm_exit on 4 vCPU(s): 7 with a latency, 4 without.",
        "Exit reasons (all vCPUs, both levels)",
        "Exit reasons by level: L1 8 exits, L2 3 exits (L0 handled 2, reflected to L1 1)",
        "Nested exits synthesized for L1",
        "Per vCPU (all reasons)",
        "tid:400",
        "Slowest exits (exit→entry, ns)",
        "220 0.000004100 1    HLT",
        "trace ended before the next kvm_entry: 2, events lost before it: 1, the vCPU exited \
         again first: 1",
        "Lost events: 5 (CPU 1: 5 in 1 marker(s)).",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The header and the EPT row line up: same length once trailing spaces are trimmed.
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.trim_start().starts_with("REASON ")).unwrap();
    assert_eq!(lines[header].len(), lines[header + 1].len());
}

#[test]
fn distinct_instructions_are_capped() {
    let mut stats = ExitStats::new();
    let n = ExitStats::MAX_DISTINCT_INSNS + 3;
    for i in 0..n {
        let [a, b, ..] = u32::try_from(i).unwrap().to_le_bytes();
        stats.push(&emulate(0, &[0x0f, a, b], false));
    }
    // Repeats of a kept instruction still count in its row after the cap is reached.
    stats.push(&emulate(0, &[0x0f, 0, 0], false));
    let report = stats.finish(None, None);
    let emu = report.emulated_instructions;
    assert_eq!(emu.by_insn.len(), ExitStats::MAX_DISTINCT_INSNS);
    assert_eq!((emu.total, emu.other), (u64::try_from(n).unwrap() + 1, 3));
    assert_eq!(emu.by_insn[0].count, 2);
}

#[test]
fn lost_marker_in_stream_without_reader_stats() {
    let mut stats = ExitStats::new();
    stats.push(&ev(1, 0, 0, EventKind::Lost { count: Some(7) }));
    stats.push(&ev(2, 0, 0, EventKind::Lost { count: None }));
    let report = stats.finish(None, Some(&ReadStats::default()));
    assert_eq!(
        report.losses.lost,
        [LostRow { cpu: 0, markers: 2, events: 7, uncounted_markers: 1 }]
    );
    let _ = LostOnCpu::default();
}

mod conservation {
    use proptest::prelude::*;

    use super::*;

    /// One step of a random multi-vCPU trace.
    #[derive(Clone, Debug)]
    enum Step {
        Exit { vcpu: u32, reason: u32 },
        Nested { vcpu: u32, reason: u32 },
        Inject { vcpu: u32, reason: u32 },
        Entry { vcpu: u32 },
        Lost,
    }

    fn step() -> impl Strategy<Value = Step> {
        let reason = prop::sample::select(vec![EXT_INT, HLT, VMCALL, EPT]);
        prop_oneof![
            4 => (0u32..3, reason.clone()).prop_map(|(vcpu, reason)| Step::Exit { vcpu, reason }),
            2 => (0u32..3, reason.clone()).prop_map(|(vcpu, reason)| Step::Nested { vcpu, reason }),
            1 => (0u32..3, reason).prop_map(|(vcpu, reason)| Step::Inject { vcpu, reason }),
            4 => (0u32..3).prop_map(|vcpu| Step::Entry { vcpu }),
            1 => Just(Step::Lost),
        ]
    }

    proptest! {
        /// Whatever the interleaving, every kvm_exit lands in exactly one group, with or without
        /// a latency, and the summaries add up to the same totals.
        #[test]
        fn every_exit_is_counted_once(steps in prop::collection::vec(step(), 0..300)) {
            let mut stats = ExitStats::new();
            let mut exits = 0u64;
            for (i, s) in steps.iter().enumerate() {
                let ts = 10 * u64::try_from(i).unwrap();
                let pid = |vcpu: u32| 100 + i32::try_from(vcpu).unwrap();
                let event = match *s {
                    Step::Exit { vcpu, reason } => {
                        exits += 1;
                        exit(ts, vcpu, pid(vcpu), Some(vcpu), reason)
                    }
                    Step::Nested { vcpu, reason } => nested(ts, vcpu, pid(vcpu), vcpu, reason),
                    Step::Inject { vcpu, reason } => inject(ts, vcpu, pid(vcpu), reason),
                    Step::Entry { vcpu } => entry(ts, vcpu, pid(vcpu), vcpu),
                    Step::Lost => ev(ts, 0, 0, EventKind::Lost { count: Some(1) }),
                };
                stats.push(&event);
            }
            let report = stats.finish(None, None);
            let Some(x) = report.exits else {
                prop_assert_eq!(exits, 0);
                return Ok(());
            };
            prop_assert_eq!(x.total, exits);
            prop_assert_eq!(x.with_latency + x.without_latency.total(), exits);
            for rows in [&x.by_reason, &x.by_vcpu, &x.groups] {
                prop_assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), exits);
                prop_assert_eq!(
                    rows.iter().map(|r| r.without_latency).sum::<u64>(),
                    x.without_latency.total()
                );
            }
            if let Some(levels) = x.levels {
                prop_assert_eq!(levels.l1 + levels.l2, exits);
                prop_assert_eq!(levels.l2_l0_handled + levels.l2_reflected, levels.l2);
            }
            let pct: f64 = x.by_reason.iter().map(|r| r.percent).sum();
            prop_assert!((pct - 100.0).abs() < 1e-9);
        }
    }
}

#[test]
fn exit_log_has_one_row_per_counted_exit() {
    // The hand trace, logged: every exit once, with the level, latency or reason for none, and
    // the vmcs12 passed with it kept for L2 exits only.
    let mut stats = ExitStats::with_exit_log();
    let mut attribution = Attribution::default();
    for event in hand_trace() {
        let actor = match event.kind {
            EventKind::Lost { .. } => None,
            _ => Some(attribution.attribute(&event).actor),
        };
        stats.push_attributed(&event, actor, Some(0x5000));
    }
    stats.close_pending();
    let closed = stats.take_closed_exits();
    assert!(stats.take_closed_exits().is_empty());
    type Row = (u64, Level, Result<u64, NoLatency>, Option<bool>, Option<u64>);
    let summary: Vec<Row> =
        closed.iter().map(|c| (c.ts, c.level, c.latency, c.reflected, c.vmcs12)).collect();
    assert_eq!(
        summary,
        [
            (1000, Level::L1, Ok(140), None, None),
            (1100, Level::L1, Ok(200), None, None),
            (1200, Level::L2, Ok(180), Some(false), Some(0x5000)),
            (2000, Level::L2, Ok(160), Some(true), Some(0x5000)),
            (3000, Level::L2, Ok(120), Some(false), Some(0x5000)),
            (3300, Level::L1, Ok(100), None, None),
            (3500, Level::L1, Err(NoLatency::LostEvents), None, None),
            (4000, Level::L1, Err(NoLatency::NextExit), None, None),
            (4100, Level::L1, Ok(220), None, None),
            (5000, Level::L1, Err(NoLatency::TraceEnd), None, None),
            (5100, Level::L1, Err(NoLatency::TraceEnd), None, None),
        ]
    );
    // Indices are 0-based positions in the stream (the kvm_fpu record counts).
    assert_eq!(closed[0].index, 0);
    assert_eq!(closed[5].index, 16);
    assert_eq!(closed[5].vcpu, Actor::vcpu(2)); // recorded under thread 300, closed by vCPU 2's entry
    let report = stats.finish(None, None);
    assert_eq!(report.exits.unwrap().total, closed.len() as u64);
}

#[test]
fn slowest_exits_are_the_top_ten_of_many_whatever_the_order() {
    // 60 exits of vCPU 0 with latencies 7·k mod 61 (every value 1..=60 once, in a scrambled
    // order), then 20 more at 51 that meet a full heap whose fastest is the first 51: ties are
    // ordered by exit time, so the slowest ten are 60..=52 and the last of the 51s.
    let mut events = Vec::new();
    let mut ts = 1_000u64;
    let mut latencies: Vec<u64> = (1..=60u64).map(|k| (7 * k) % 61).collect();
    latencies.extend([51; 20]);
    let mut expected = Vec::new();
    for latency in latencies {
        events.push(exit(ts, 0, 100, Some(0), HLT));
        events.push(entry(ts + latency, 0, 100, 0));
        expected.push((latency, ts));
        ts += 1_000;
    }
    expected.sort_by(|a, b| b.cmp(a));
    expected.truncate(ExitStats::SLOWEST_KEPT);
    let report = run(&events);
    let slowest: Vec<(u64, u64)> =
        report.exits.unwrap().slowest.iter().map(|s| (s.latency, s.exit_ts)).collect();
    assert_eq!(slowest, expected);
    assert_eq!(
        slowest.iter().map(|s| s.0).collect::<Vec<_>>(),
        [60, 59, 58, 57, 56, 55, 54, 53, 52, 51]
    );
    assert_eq!(slowest[9].1, ts - 1_000, "the last exit at 51");
}

#[test]
fn typed_and_untyped_events_of_one_name_are_counted_together() {
    // Typed events are counted by kind and named when the report is built; an untyped event
    // with a typed event's name (another system's `kvm_exit`) joins the same row.
    let mut events = vec![
        exit(100, 0, 100, Some(0), HLT),
        entry(150, 0, 100, 0),
        exit(200, 0, 100, Some(0), HLT),
        entry(260, 0, 100, 0),
        other(300, 0, 100, "kvm_exit"),
        other(310, 0, 100, "kvm_fpu"),
    ];
    events.push(inject(400, 0, 100, HLT));
    let report = run(&events);
    let count = |name: &str| report.events_by_name.iter().find(|n| n.name == name).map(|n| n.count);
    assert_eq!(count("kvm_exit"), Some(3));
    assert_eq!(count("kvm_entry"), Some(2));
    assert_eq!(count("kvm_fpu"), Some(1));
    assert_eq!(count("kvm_nested_vmexit_inject"), Some(1));
    assert_eq!(report.events_by_name.len(), 4, "{:?}", report.events_by_name);
    assert_eq!(report.events_by_name.iter().map(|n| n.count).sum::<u64>(), 7);
}

/// More groups than the table of recent lookups holds, visited in an order that makes their
/// slots collide: each group still counts its own exits, with their own latencies.
#[test]
fn many_interleaved_groups_each_count_their_own_exits() {
    let reasons = [EPT, HLT, VMCALL, EXT_INT, PREEMPTION_TIMER, 10, 30, 31];
    let mut events = Vec::new();
    let mut ts = 1000;
    for round in 0..5u64 {
        for vcpu in 0..12u32 {
            for (k, &reason) in reasons.iter().enumerate() {
                let pid = 100 + i32::try_from(vcpu).unwrap();
                events.push(exit(ts, vcpu, pid, Some(vcpu), reason));
                // Latency: a value of its own per (vCPU, reason), the same every round.
                ts += 10 + u64::from(vcpu) * 100 + k as u64;
                events.push(entry(ts, vcpu, pid, vcpu));
                ts += 1000 + round;
            }
        }
    }
    let report = run(&events);
    let exits = report.exits.unwrap();
    assert_eq!(exits.groups.len(), 12 * reasons.len());
    for g in &exits.groups {
        let Some(Actor::Vcpu(v)) = g.vcpu else { panic!("{g:?}") };
        let code = g.reason.as_ref().unwrap().code;
        let k = reasons.iter().position(|r| u64::from(*r) == code).unwrap() as u64;
        let latency = g.latency.as_ref().unwrap();
        assert_eq!(g.count, 5, "{g:?}");
        assert_eq!((latency.min, latency.max), (10 + u64::from(v.id) * 100 + k, latency.min));
    }
}

#[test]
fn a_run_of_lines_skipped_for_one_reason_is_one_problem() {
    use vmxray_capture::{Location, ReadError, ReadErrorKind};
    let input: Arc<str> = Arc::from("t.txt");
    let err = |at, kind| Arc::new(ReadError::new(&input, at, kind));
    let truncated = || ReadErrorKind::Truncated { expected: "a field" };
    let problems = vec![
        err(Location::Line(19), truncated()),
        err(Location::Line(20), truncated()),
        err(Location::Line(21), truncated()),
        // Another reason breaks the run.
        err(Location::Line(22), ReadErrorKind::UnknownFormat),
        err(Location::Line(30), truncated()),
        err(Location::Line(35), truncated()),
        err(Location::Offset(4096), truncated()),
        err(Location::Offset(8192), truncated()),
    ];
    let lines = crate::problem_lines(&problems);
    let reason = "Truncated: expected a field, the input ends";
    assert_eq!(
        lines,
        vec![
            format!("t.txt:19-21: {reason} (3 lines)"),
            problems[3].to_string(),
            format!("t.txt: 2 lines from 30 to 35: {reason} (2 lines)"),
            problems[6].to_string(),
            problems[7].to_string(),
        ]
    );
}
