//! Host context of exits ([`vmxray_analyze::context`]) on event sequences built here, host
//! events typed through the same `EventKind::untyped` every reader uses.

use vmxray_analyze::context::{HostContext, HostContextReport};
use vmxray_analyze::pass::{Pass, PassConfig, StatsMode};
use vmxray_events::codes::{ExitCode, ExitReason, Isa};
use vmxray_events::{Comm, Entry, Event, EventKind, ExitFields, ExitInfo, FieldValue, Fields};
use vmxray_replay::ModelConfig;

const VCPU_PID: i32 = 500;

fn event(ts: u64, cpu: u32, pid: i32, kind: EventKind) -> Event {
    Event { ts, cpu, pid, tgid: Some(400), comm: Some(Comm::from("qemu-vcpu0")), kind }
}

fn exit(ts: u64, cpu: u32, reason: u32) -> Event {
    event(
        ts,
        cpu,
        VCPU_PID,
        EventKind::KvmExit(ExitInfo::from(ExitFields {
            reason: ExitCode::Vmx(ExitReason(reason)),
            isa: Some(Isa::Vmx),
            guest_rip: Some(0x1000),
            info1: Some(0),
            info2: Some(0),
            intr_info: None,
            error_code: None,
            vcpu_id: Some(0),
            requests: None,
        })),
    )
}

fn entry(ts: u64, cpu: u32) -> Event {
    event(
        ts,
        cpu,
        VCPU_PID,
        EventKind::KvmEntry(Entry {
            vcpu_id: 0,
            rip: None,
            immediate_exit: None,
            intr_info: None,
            error_code: None,
        }),
    )
}

enum V<'a> {
    N(u64),
    S(&'a str),
}

/// A host tracepoint as a reader hands it over: system, name and fields, typed by
/// `EventKind::untyped`.
fn host(ts: u64, cpu: u32, pid: i32, system: &str, name: &str, fields: &[(&str, V<'_>)]) -> Event {
    let mut f = Fields::new();
    for (field, value) in fields {
        let value = match value {
            V::N(n) => FieldValue::U64(*n),
            V::S(s) => FieldValue::Str((*s).into()),
        };
        f.push(field.to_string(), value);
    }
    let kind = EventKind::untyped(system.into(), name.into(), f);
    assert!(matches!(kind, EventKind::Context(_)), "{system}:{name} not typed: {kind:?}");
    event(ts, cpu, pid, kind)
}

fn switch(ts: u64, cpu: u32, prev: (&str, i32), state: u64, next: (&str, i32)) -> Event {
    host(
        ts,
        cpu,
        prev.1,
        "sched",
        "sched_switch",
        &[
            ("prev_comm", V::S(prev.0)),
            ("prev_pid", V::N(u64::try_from(prev.1).unwrap())),
            ("prev_prio", V::N(120)),
            ("prev_state", V::N(state)),
            ("next_comm", V::S(next.0)),
            ("next_pid", V::N(u64::try_from(next.1).unwrap())),
            ("next_prio", V::N(120)),
        ],
    )
}

fn irq(ts: u64, cpu: u32, entry: bool, number: u64, name: &str) -> Event {
    if entry {
        host(ts, cpu, 0, "irq", "irq_handler_entry", &[("irq", V::N(number)), ("name", V::S(name))])
    } else {
        host(ts, cpu, 0, "irq", "irq_handler_exit", &[("irq", V::N(number)), ("ret", V::N(1))])
    }
}

fn softirq(ts: u64, cpu: u32, entry: bool, vec: u64) -> Event {
    let name = if entry { "softirq_entry" } else { "softirq_exit" };
    host(ts, cpu, 0, "irq", name, &[("vec", V::N(vec))])
}

/// An EPT violation whose vCPU thread took an eth0 interrupt, a NET_RX softirq (interrupted
/// by eth0 again), then was preempted for 2 ms by `busy` (pid 812) on its CPU.
fn preempted_exit() -> Vec<Event> {
    let vcpu = ("qemu-vcpu0", VCPU_PID);
    vec![
        exit(1_000, 1, 48),
        irq(1_300, 1, true, 24, "eth0"),
        irq(1_400, 1, false, 24, "eth0"),
        softirq(1_500, 1, true, 3),
        irq(1_550, 1, true, 24, "eth0"),
        irq(1_600, 1, false, 24, "eth0"),
        softirq(1_700, 1, false, 3),
        // R+ (preempted): TASK_REPORT_MAX on 6.x.
        switch(2_000, 1, vcpu, 0x100, ("busy", 812)),
        // Another CPU's scheduling changes nothing for this exit.
        switch(2_500, 0, ("kworker/0:1", 7), 1, ("sshd", 8)),
        switch(2_002_000, 1, ("busy", 812), 0, vcpu),
        entry(2_002_100, 1),
    ]
}

fn run(events: &[Event]) -> HostContextReport {
    let mut ctx = HostContext::new();
    for e in events {
        ctx.push(e, None);
    }
    ctx.finish().expect("host events present")
}

#[test]
fn preempted_exit_is_attributed_to_the_thread_that_ran() {
    let report = run(&preempted_exit());
    assert_eq!((report.attributed, report.unattributed), (1, 0));
    let exit = &report.outliers[0];
    assert_eq!(exit.latency, 2_001_100);
    assert_eq!(exit.reason.name, "EPT_VIOLATION");
    // irq: 1300–1400 and 1550–1600 (inside the softirq); softirq: 1500–1550, 1600–1700.
    assert_eq!(exit.parts.irq, 150);
    assert_eq!(exit.parts.softirq, 150);
    assert_eq!(exit.parts.scheduled_out, 2_000_000);
    assert_eq!(exit.parts.blocked, 0);
    // 1000–1300, 1400–1500, 1700–2000, 2002000–2002100.
    assert_eq!(exit.parts.in_kvm, 800);
    assert_eq!(exit.parts.total(), exit.latency);
    assert_eq!(exit.ran.len(), 1);
    assert_eq!((exit.ran[0].pid, exit.ran[0].comm.as_str()), (Some(812), "busy"));
    assert_eq!(exit.irqs[0].name, "eth0");
    assert_eq!(exit.softirqs[0].name, "NET_RX");
    let cause = exit.cause(true);
    assert!(
        cause.starts_with("exit #0 EPT_VIOLATION 2.0 ms: 2.0 ms scheduled out (busy pid 812 ran)"),
        "{cause}"
    );
    assert!(cause.contains("150 ns irq eth0"), "{cause}");
    assert!(cause.contains("800 ns in KVM"), "{cause}");
    assert_eq!(report.by_reason.len(), 1);
    assert_eq!(report.by_reason[0].parts, exit.parts);
}

#[test]
fn halted_vcpu_is_blocked_until_woken_and_may_come_back_elsewhere() {
    let vcpu = ("qemu-vcpu0", VCPU_PID);
    let events = vec![
        exit(10_000, 1, 12),
        // S: asleep in kvm_vcpu_halt.
        switch(10_200, 1, vcpu, 1, ("swapper/1", 0)),
        host(
            11_200,
            0,
            0,
            "sched",
            "sched_wakeup",
            &[
                ("comm", V::S("qemu-vcpu0")),
                ("pid", V::N(500)),
                ("prio", V::N(120)),
                ("target_cpu", V::N(0)),
            ],
        ),
        switch(11_700, 0, ("swapper/0", 0), 0, vcpu),
        entry(11_800, 0),
    ];
    let report = run(&events);
    let exit = &report.outliers[0];
    assert_eq!(exit.latency, 1_800);
    assert_eq!(exit.parts.scheduled_out, 1_500);
    assert_eq!(exit.parts.blocked, 1_000, "blocked until the wakeup, runnable after");
    assert_eq!(exit.parts.in_kvm, 300);
    assert_eq!(exit.ran[0].comm, "swapper/1");
    assert_eq!(exit.parts.total(), exit.latency);
}

#[test]
fn a_trace_without_host_events_has_no_host_context() {
    let mut ctx = HostContext::new();
    for e in [exit(1_000, 0, 48), entry(2_000, 0)] {
        ctx.push(&e, None);
    }
    assert!(ctx.finish().is_none());
}

#[test]
fn as_a_pass_sink_it_counts_what_stats_counts() {
    let events = preempted_exit();
    let mut pass =
        Pass::new(PassConfig { model: ModelConfig::attribution_only(), stats: StatsMode::Report });
    let mut ctx = HostContext::new();
    pass.run(events.into_iter().map(Ok::<_, std::convert::Infallible>), &mut ctx).unwrap();
    let stats = pass.finish(None, None).stats.unwrap();
    let exits = stats.exits.unwrap();
    let report = ctx.finish().unwrap();
    assert_eq!(report.attributed, exits.with_latency);
    assert_eq!(report.overall.total(), exits.overall.latency.unwrap().total);
}

/// Random host activity on two CPUs around a vCPU that migrates: every exit with a latency
/// is attributed, and its parts add up to it exactly.
#[test]
fn parts_always_add_up_to_the_latency() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let vcpu = ("qemu-vcpu0", VCPU_PID);
    let mut events = Vec::new();
    let mut ts = 1_000;
    let mut cpu = 0;
    let mut exits = 0;
    for _ in 0..300 {
        ts += 1 + rand(50);
        events.push(exit(ts, cpu, [12, 30, 48][usize::try_from(rand(3)).unwrap()]));
        exits += 1;
        for _ in 0..rand(6) {
            ts += 1 + rand(500);
            let other = 1 - cpu;
            let e = match rand(7) {
                0 => irq(ts, cpu, true, 9, "acpi"),
                1 => irq(ts, cpu, false, 9, "acpi"),
                2 => softirq(ts, cpu, true, rand(10)),
                3 => softirq(ts, cpu, false, rand(10)),
                4 => switch(ts, other, ("a", 10), rand(2), ("b", 11)),
                5 => host(
                    ts,
                    cpu,
                    0,
                    "timer",
                    "hrtimer_expire_entry",
                    &[
                        ("hrtimer", V::N(0xffff_1000)),
                        ("now", V::N(ts)),
                        ("function", V::N(0xffff_2000)),
                    ],
                ),
                _ => host(
                    ts,
                    cpu,
                    0,
                    "timer",
                    "hrtimer_expire_exit",
                    &[("hrtimer", V::N(0xffff_1000))],
                ),
            };
            events.push(e);
        }
        if rand(3) == 0 {
            ts += 1 + rand(100);
            events.push(switch(ts, cpu, vcpu, rand(2), ("busy", 812)));
            ts += 1 + rand(10_000);
            let to = u32::try_from(rand(2)).unwrap();
            events.push(switch(ts, to, ("busy", 812), 0, vcpu));
            cpu = to;
        }
        ts += 1 + rand(50);
        events.push(entry(ts, cpu));
    }
    let mut ctx = HostContext::with_exit_log();
    for e in &events {
        ctx.push(e, None);
    }
    let log = ctx.take_attributed();
    assert_eq!(log.len(), exits);
    for exit in &log {
        assert_eq!(exit.parts.total(), exit.latency, "{exit:?}");
        assert!(exit.parts.blocked <= exit.parts.scheduled_out);
        let ran: u64 = exit.ran.iter().map(|r| r.time).sum();
        assert_eq!(ran, exit.parts.scheduled_out);
        let irq: u64 = exit.irqs.iter().map(|r| r.time).sum();
        assert_eq!(irq, exit.parts.irq);
    }
    // The sequence exercises every part.
    for part in [
        |e: &vmxray_analyze::context::ExitContext| e.parts.scheduled_out,
        |e: &vmxray_analyze::context::ExitContext| e.parts.blocked,
        |e: &vmxray_analyze::context::ExitContext| e.parts.irq,
        |e: &vmxray_analyze::context::ExitContext| e.parts.softirq,
        |e: &vmxray_analyze::context::ExitContext| e.parts.in_kvm,
    ] {
        assert!(log.iter().filter(|e| part(e) > 0).count() > 10);
    }
    let report = ctx.finish().unwrap();
    assert_eq!(report.attributed, exits as u64);
    let sum: u64 = report.by_reason.iter().map(|r| r.latency).sum();
    assert_eq!(sum, report.overall.total());
}

/// The real-VMX lab recording where a busy thread shares the vCPU thread's only CPU
/// (samples/real/vmx/context-busy-io-loop-ept-6.1.dat; samples/vmx/context/busy-step.sh).
fn busy_sample() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/real/vmx/context-busy-io-loop-ept-6.1.dat")
}

#[test]
fn real_recording_slowest_exits_are_the_busy_threads() {
    let reader =
        vmxray_capture::open(&busy_sample(), vmxray_capture::ReadOptions::default()).unwrap();
    let mut pass =
        Pass::new(PassConfig { model: ModelConfig::attribution_only(), stats: StatsMode::Report });
    let mut ctx = HostContext::new();
    pass.run(reader, &mut ctx).unwrap();
    let exits = pass.finish(None, None).stats.unwrap().exits.unwrap();
    let report = ctx.finish().expect("the recording has host events");
    assert!(report.sources.sched_switch && report.sources.irq && report.sources.softirq);
    // Every exit with a latency is attributed; the per-reason sums are the stats' sums.
    assert_eq!((report.attributed, report.unattributed), (exits.with_latency, 0));
    assert_eq!(report.overall.total(), exits.overall.latency.as_ref().unwrap().total);
    assert_eq!(report.outliers.len(), 10);
    assert_eq!(report.outliers[0].latency, exits.slowest[0].latency);
    for exit in &report.outliers {
        assert_eq!(exit.parts.total(), exit.latency, "{exit:?}");
        // busyloop (nice -5) ran longest, for over 40 % of the exit (the rest: the recorder's
        // threads, rcu, kworkers; measured 43–73 %).
        let top = &exit.ran[0];
        assert_eq!(top.comm, "busyloop", "{}", exit.cause(true));
        assert!(exit.ran[1..].iter().all(|r| r.time < top.time), "{}", exit.cause(true));
        assert!(top.time * 10 > exit.latency * 4, "{}", exit.cause(true));
        assert!(exit.parts.scheduled_out * 10 > exit.latency * 9, "{}", exit.cause(true));
        assert_eq!(exit.parts.blocked, 0, "preempted, not asleep: {}", exit.cause(true));
    }
}

#[cfg(feature = "scan")]
#[test]
fn scan_exits_rows_carry_the_host_context() {
    use std::sync::Mutex;

    use vmxray_analyze::scan::{
        Chunk, ExitRecord, ScanInput, ScanOptions, SinkError, Table, TableSink, TraceLabels, scan,
    };

    #[derive(Default)]
    struct Exits(Mutex<Vec<ExitRecord>>);
    impl TableSink for Exits {
        fn wants(&self, table: Table) -> bool {
            matches!(table, Table::Exits)
        }
        fn begin(&self, _: &TraceLabels) -> Result<(), SinkError> {
            Ok(())
        }
        fn write(&self, _: &TraceLabels, _: u32, chunk: Chunk) -> Result<(), SinkError> {
            if let Chunk::Exits(rows) = chunk {
                self.0.lock().unwrap().extend(rows);
            }
            Ok(())
        }
    }
    let path = busy_sample();
    let input = ScanInput {
        bytes: std::fs::metadata(&path).unwrap().len(),
        trace: "busy".into(),
        host: None,
        vm: None,
        path,
    };
    let sink = Exits::default();
    scan(&[input], &ScanOptions::default(), &sink, &|_| {});
    let rows = sink.0.into_inner().unwrap();
    assert!(rows.len() > 100);
    let mut busy = 0;
    for row in &rows {
        let Some(latency) = row.latency_ns else {
            assert!(row.host_in_kvm_ns.is_none());
            continue;
        };
        let parts =
            [row.host_in_kvm_ns, row.host_scheduled_out_ns, row.host_irq_ns, row.host_softirq_ns];
        let sum: u64 = parts.iter().map(|p| p.unwrap()).sum();
        assert_eq!(sum, latency, "{row:?}");
        busy += usize::from(row.host_ran.as_deref().is_some_and(|r| r.starts_with("busyloop pid")));
    }
    assert!(busy > 10, "{busy} exits saw busyloop run");
}

/// `vmxray stats`' text and JSON carry the section when the trace has host events, and say
/// so when it does not.
#[test]
fn stats_report_shows_the_breakdown_and_the_outliers() {
    use vmxray_analyze::stats::{ExitStats, Format, StatsReport, write_report};
    let render = |events: &[Event]| -> (StatsReport, String, serde_json::Value) {
        let mut stats = ExitStats::new();
        let mut ctx = HostContext::new();
        for e in events {
            stats.push(e);
            ctx.push(e, None);
        }
        let mut report = stats.finish(None, None);
        report.host_context = ctx.finish();
        let mut text = Vec::new();
        write_report(&report, Format::Text, &mut text).unwrap();
        let mut json = Vec::new();
        write_report(&report, Format::Json, &mut json).unwrap();
        (report, String::from_utf8(text).unwrap(), serde_json::from_slice(&json).unwrap())
    };
    let (_, text, json) = render(&preempted_exit());
    assert!(text.contains("Host context of exits (from sched_switch, irq, softirq)"), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("EPT_VIOLATION") && l.contains("2000000 (99.9%)"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("800 (0.0%)") && row.contains("150 (0.0%)"), "{row}");
    assert!(text.contains("Outliers: the slowest exits and where their time went\n  exit #0 EPT_VIOLATION 2.0 ms: 2.0 ms scheduled out (busy pid 812 ran)"), "{text}");
    assert_eq!(json["host_context"]["overall"]["scheduled_out"], 2_000_000);
    assert_eq!(json["host_context"]["outliers"][0]["ran"][0]["comm"], "busy");
    let back: StatsReport = serde_json::from_value(json).unwrap();
    assert_eq!(back.host_context.unwrap().outliers[0].parts.irq, 150);
    let (report, text, json) = render(&[exit(1_000, 0, 48), entry(2_000, 0)]);
    assert!(report.host_context.is_none());
    assert!(text.contains("Host context: none"), "{text}");
    assert!(json.get("host_context").is_none());
}
