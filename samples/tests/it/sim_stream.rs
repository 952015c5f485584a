//! The streaming simulator and its trace.dat output: a bounded streaming run is the same run
//! as `simulate` (events and ground truth), an `--events N` run has exactly N events and a
//! ground truth that agrees with them, and the trace.dat written from either reads back (with
//! vmxray's reader and with `trace-cmd report`) as the simulator's events.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmxray_events::test_util::skip;
use vmxray_events::{Event, EventKind};
use vmxray_samples::sim::dat::{DatSink, Fit, kernel_formats};
use vmxray_samples::sim::stream::{Length, StreamSummary, simulate_stream};
use vmxray_samples::sim::{
    GroundTruth, KernelVersion, KvmFlavour, Scenario, SimConfig, Simulation, simulate,
};

/// Every scenario in its fixed flavour and with each bug it can inject.
fn configs(kernel: KernelVersion) -> Vec<SimConfig> {
    let mut out = Vec::new();
    for sc in Scenario::ALL.iter().copied() {
        let mut flavours = vec![KvmFlavour::Fixed];
        flavours.extend(sc.bugs().iter().map(|b| KvmFlavour::Buggy(*b)));
        for kvm in flavours {
            out.push(SimConfig::new(sc).kvm(kvm).kernel(kernel).vcpus(3).iterations(5));
        }
    }
    out
}

fn stream(cfg: &SimConfig, length: Length) -> (Vec<Event>, StreamSummary) {
    let mut events = Vec::new();
    let summary = simulate_stream(cfg, length, true, |e| {
        events.push(e.clone());
        Ok::<_, std::io::Error>(())
    })
    .expect("streams");
    (events, summary)
}

#[test]
fn a_bounded_streaming_run_is_simulate() {
    for kernel in KernelVersion::ALL {
        for cfg in configs(kernel) {
            let Simulation { events, truth } = simulate(&cfg).expect("simulates");
            let (streamed, summary) = stream(&cfg, Length::Rounds);
            assert_eq!(streamed.len(), events.len(), "{cfg:?}");
            assert!(streamed == events, "{cfg:?}: the events differ");
            assert_eq!(summary.events, events.len() as u64);
            assert_eq!(summary.truth, truth, "{cfg:?}: the ground truth differs");
        }
    }
}

/// The truth agrees with the events: each vmcs12 write precedes the event it names, on its own
/// vCPU, with no event of that vCPU between; bug sites name events of their vCPU.
fn check_truth(events: &[Event], truth: &GroundTruth, what: &str) {
    let cpu_of = |vcpu: u32| truth.vcpus.iter().find(|t| t.vcpu_id == vcpu).map(|t| t.cpu);
    for w in &truth.vmcs12_writes {
        let cpu = cpu_of(w.vcpu).expect("known vCPU");
        // `events.len()`: no event of the vCPU follows the write.
        if let Some(next) = events.get(w.before_event) {
            assert_eq!(next.cpu, cpu, "{what}: {w:?}");
            assert!(next.ts >= w.ts, "{what}: {w:?} after its event");
        } else {
            assert_eq!(w.before_event, events.len(), "{what}: {w:?}");
            assert!(!events.iter().any(|e| e.cpu == cpu && e.ts > w.ts), "{what}: {w:?}");
        }
        if let Some(prev) = events[..w.before_event].iter().rev().find(|e| e.cpu == cpu) {
            assert!(prev.ts <= w.ts, "{what}: {w:?} before the previous event of its vCPU");
        }
    }
    assert!(truth.vmcs12_writes.windows(2).all(|p| (p[0].ts, p[0].vcpu) <= (p[1].ts, p[1].vcpu)));
    for s in &truth.occurrences {
        let cpu = cpu_of(s.vcpu).expect("known vCPU");
        for at in [s.trigger, s.first_difference, s.divergence] {
            if at < events.len() {
                assert_eq!(events[at].cpu, cpu, "{what}: {s:?}");
            }
        }
    }
}

#[test]
fn an_events_run_has_exactly_n_events_and_an_exact_truth() {
    let n = 30_000;
    for cfg in [
        SimConfig::new(Scenario::Muen)
            .kvm(KvmFlavour::Buggy(vmxray_samples::sim::Bug::HltStaleCr3)),
        SimConfig::new(Scenario::Noise).kernel(KernelVersion::V6_14),
        SimConfig::new(Scenario::Init).vcpus(2),
        SimConfig::new(Scenario::Smm).iterations(40),
        SimConfig::new(Scenario::LateVmFail)
            .kvm(KvmFlavour::Buggy(vmxray_samples::sim::Bug::LateVmFailCr3))
            .vcpus(3),
    ] {
        let what = format!("{cfg:?}");
        let (events, summary) = stream(&cfg, Length::Events(n));
        let (again, _) = stream(&cfg, Length::Events(n));
        assert!(events == again, "{what}: not deterministic");
        assert_eq!(events.len() as u64, summary.events);
        // Even INIT's two vCPUs go on (the BSP and the AP run long-mode noise).
        assert_eq!(summary.events, n, "{what}");
        assert!(events.windows(2).all(|p| (p[0].ts, p[0].cpu) <= (p[1].ts, p[1].cpu)), "{what}");
        check_truth(&events, &summary.truth, &what);
        if cfg.kvm != KvmFlavour::Fixed {
            let site = summary.truth.bug.as_ref().expect("the bug happens early");
            assert!(site.divergence < events.len(), "{what}");
        }
    }
    // Exact for the bounded runs too.
    for cfg in configs(KernelVersion::V6_1) {
        let Simulation { events, truth } = simulate(&cfg).expect("simulates");
        check_truth(&events, &truth, &format!("{cfg:?}"));
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/sim-stream");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

fn write_dat(path: &Path, cfg: &SimConfig, events: &[Event]) {
    let mut sink = DatSink::create(path, cfg.kernel, cfg.vcpu_count()).expect("creates");
    for e in events {
        sink.push(e).expect("writes");
    }
    let summary = sink.finish().expect("finishes");
    assert!(summary.zeroed.is_empty(), "{cfg:?}: fields written as 0: {:?}", summary.zeroed);
    assert_eq!(summary.events, events.len() as u64);
}

fn read_back(path: &Path) -> Vec<Event> {
    let reader = vmxray_capture::open(path, Default::default()).expect("opens");
    reader.map(|e| e.expect("reads")).collect()
}

/// The simulator's events as the trace.dat's kernel records them (see `dat::Fit`).
fn fitted(cfg: &SimConfig, events: &[Event]) -> Vec<Event> {
    let formats = kernel_formats(cfg.kernel).expect("formats");
    let mut fit = Fit::new(&formats.recording.formats);
    events.iter().map(|e| fit.apply(e).into_owned()).collect()
}

fn assert_same(read: &[Event], expected: &[Event], what: &str) {
    assert_eq!(read.len(), expected.len(), "{what}");
    for (i, (r, e)) in read.iter().zip(expected).enumerate() {
        assert_eq!(r, e, "{what}: event #{i} differs");
    }
}

#[test]
fn trace_dat_output_reads_back_as_the_simulated_events() {
    for kernel in [KernelVersion::V6_1, KernelVersion::V6_14] {
        for cfg in configs(kernel) {
            let what = format!("{cfg:?}");
            let Simulation { events, .. } = simulate(&cfg).expect("simulates");
            let path = tmp(&format!("{}-{}-{kernel}.dat", cfg.scenario.name(), cfg.kvm));
            write_dat(&path, &cfg, &events);
            assert_same(&read_back(&path), &fitted(&cfg, &events), &what);
            std::fs::remove_file(&path).ok();
        }
    }
    // A streamed run: written as it comes.
    let cfg = SimConfig::new(Scenario::Noise).kernel(KernelVersion::V6_14).vcpus(6);
    let path = tmp("noise-stream.dat");
    let mut sink = DatSink::create(&path, cfg.kernel, cfg.vcpu_count()).expect("creates");
    let mut events = Vec::new();
    simulate_stream(&cfg, Length::Events(50_000), false, |e| {
        events.push(e.clone());
        sink.push(e)
    })
    .expect("streams");
    assert!(sink.finish().expect("finishes").zeroed.is_empty());
    assert_same(&read_back(&path), &fitted(&cfg, &events), "streamed noise");
    std::fs::remove_file(&path).ok();
    // 5.10 has no bundled formats: refused with a reason.
    let err = DatSink::create(&tmp("no.dat"), KernelVersion::V5_10, 2).err().expect("refused");
    assert!(err.to_string().contains("5.10"), "{err}");
}

#[test]
fn trace_cmd_reads_the_trace_dat_output() {
    if Command::new("trace-cmd").arg("--version").output().is_err() {
        skip("trace-cmd is not installed (scripts/setup.sh installs it)");
        return;
    }
    for kernel in [KernelVersion::V6_1, KernelVersion::V6_14] {
        let cfg = SimConfig::new(Scenario::Muen)
            .kvm(KvmFlavour::Buggy(vmxray_samples::sim::Bug::HltStaleCr3))
            .kernel(kernel)
            .vcpus(2);
        let Simulation { events, .. } = simulate(&cfg).expect("simulates");
        let path = tmp(&format!("trace-cmd-{kernel}.dat"));
        write_dat(&path, &cfg, &events);
        let out = Command::new("trace-cmd").arg("report").arg(&path).output().expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(": kvm")).collect();
        assert_eq!(lines.len(), events.len(), "{kernel}: one line per event");
        assert!(!text.contains("FAILED TO PARSE"), "{kernel}: {text}");
        for (line, e) in lines.iter().zip(&events) {
            assert!(line.contains(&format!(" {}:", e.name())), "{kernel}: {line} is not {e:?}");
            assert!(line.contains(&format!("[{:03}]", e.cpu)), "{kernel}: {line}");
            let comm = e.comm.as_deref().unwrap_or_default();
            assert!(line.trim_start().starts_with(&format!("{comm}-{}", e.pid)), "{line}");
            if let EventKind::KvmExit(x) = &e.kind {
                assert!(
                    line.contains(&format!("rip 0x{:x}", x.guest_rip().unwrap_or(0))),
                    "{line}"
                );
            }
        }
        std::fs::remove_file(&path).ok();
    }
}
