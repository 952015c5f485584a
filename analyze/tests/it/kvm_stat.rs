//! perf kvm stat's ioport, mmio and vmexit tables ([`vmxray_analyze::kvm_stat`]) on real VMX
//! recordings of the lab (samples/real/vmx/, kvm_intel in Bochs). perf reads only perf.data
//! and these are trace.dat files, so the expected values were computed by hand from
//! `trace-cmd report -t` of each file, with perf's pairing rules (the module docs), and are
//! written out below with the lines they come from.

use std::path::PathBuf;

use vmxray_analyze::kvm_stat::{KvmStat, KvmStatConfig, KvmStatEvent, KvmStatReport, SortKey};
use vmxray_capture::ReadOptions;

fn table(sample: &str, config: KvmStatConfig) -> KvmStatReport {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/real/vmx").join(sample);
    let reader = vmxray_capture::open(&path, ReadOptions::default()).unwrap();
    let mut stat = KvmStat::new(config);
    for event in reader {
        stat.push(&event.unwrap());
    }
    stat.finish()
}

/// mmio-ept-6.1.dat (thread vmxray-1157, vCPU 0):
/// ```text
/// 140.119443427: kvm_mmio: mmio write len 4 gpa 0x200000 val 0x42     W begins
/// 140.119575367: kvm_entry: vcpu 0 rip 0x1010                          W ends: 131940 ns
/// 140.119595507: kvm_exit: reason EPT_MISCONFIG rip 0x1010             R begins (no key)
/// 140.119744987: kvm_mmio: mmio unsatisfied-read len 4 gpa 0x200000   neither
/// 140.119866267: kvm_mmio: mmio read len 4 gpa 0x200000 val 0x0       R ends: 270760 ns
/// 140.119895707: kvm_entry: vcpu 0 rip 0x1017                          no begin: nothing
/// ```
#[test]
fn mmio_table_of_a_real_recording() {
    let report = table(
        "mmio-ept-6.1.dat",
        KvmStatConfig { event: KvmStatEvent::Mmio, ..KvmStatConfig::default() },
    );
    let rows: Vec<(&str, u64, u64)> =
        report.rows.iter().map(|r| (r.key.as_str(), r.samples, r.total)).collect();
    // Both have one sample: ties in key order (address, then read before write).
    assert_eq!(rows, [("0x200000:R", 1, 270_760), ("0x200000:W", 1, 131_940)]);
    assert_eq!((report.total_samples, report.total_time), (2, 402_700));
    let w = &report.rows[1];
    assert!((w.time_percent - 131_940.0 * 100.0 / 402_700.0).abs() < 1e-9);
    assert_eq!((w.min, w.max), (131_940, 131_940));
    let text = report.render_text();
    assert!(text.contains("Analyze events for all VMs, all VCPUs:"), "{text}");
    assert!(text.contains("         MMIO Access    Samples  Samples%     Time%"), "{text}");
    assert!(
        text.contains(
            "          0x200000:W          1    50.00%    32.76%    131.94us    131.94us    131.94us ( +-   0.00% )"
        ),
        "{text}"
    );
    assert!(text.contains("Total Samples:2, Total events handled time:402.70us."), "{text}");
}

/// mmio-ept-6.1.dat has two `out 0x10`: `kvm_pio` at 140.119013347 → `kvm_entry` at
/// 140.119169447 (156100 ns) and 140.119935147 → 140.124361747 (4426600 ns).
#[test]
fn ioport_table_of_a_real_recording() {
    let report = table(
        "mmio-ept-6.1.dat",
        KvmStatConfig { event: KvmStatEvent::Ioport, ..KvmStatConfig::default() },
    );
    assert_eq!(report.rows.len(), 1);
    let row = &report.rows[0];
    assert_eq!(row.key, "0x10:POUT");
    assert_eq!((row.samples, row.total, row.min, row.max), (2, 4_582_700, 156_100, 4_426_600));
    // Sample stddev of (156100, 4426600) is 3019696.5…; over √2 and the mean 2291350: 93.18 %.
    let stddev = ((156_100f64 - 2_291_350.0).powi(2) * 2.0).sqrt();
    let expected = 100.0 * stddev / 2f64.sqrt() / 2_291_350.0;
    assert!((row.rel_stddev_percent - expected).abs() < 1e-9, "{}", row.rel_stddev_percent);
    assert!((row.rel_stddev_percent - 93.19).abs() < 0.01, "{}", row.rel_stddev_percent);
}

/// io-loop-200-ept-6.1.dat: 200 `kvm_pio` (out 0x10); the last has no entry after it (the
/// trace ends), so 199 samples. An awk over `trace-cmd report -t` pairing each kvm_pio with
/// the next kvm_entry gave n=199 total=35646140 min=115220 max=7461400.
#[test]
fn ioport_table_of_the_io_loop() {
    let report = table(
        "io-loop-200-ept-6.1.dat",
        KvmStatConfig { event: KvmStatEvent::Ioport, ..KvmStatConfig::default() },
    );
    let row = &report.rows[0];
    assert_eq!(row.key, "0x10:POUT");
    assert_eq!((row.samples, row.total, row.min, row.max), (199, 35_646_140, 115_220, 7_461_400));
    // --vcpu 1 and --pid of another process select nothing; --vcpu 0 everything.
    for (vcpu, pids, samples) in [(Some(1), vec![], 0), (Some(0), vec![], 199), (None, vec![1], 0)]
    {
        let report = table(
            "io-loop-200-ept-6.1.dat",
            KvmStatConfig { event: KvmStatEvent::Ioport, key: SortKey::Time, vcpu, pids },
        );
        assert_eq!(report.total_samples, samples);
    }
}

/// The vmexit table counts what `vmxray stats` counts (exit → next entry of the thread).
#[test]
fn vmexit_table_agrees_with_stats() {
    let report = table("io-loop-200-ept-6.1.dat", KvmStatConfig::default());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/real/vmx/io-loop-200-ept-6.1.dat");
    let mut stats = vmxray_analyze::stats::ExitStats::new();
    for event in vmxray_capture::open(&path, ReadOptions::default()).unwrap() {
        stats.push(&event.unwrap());
    }
    let exits = stats.finish(None, None).exits.unwrap();
    assert_eq!(report.total_samples, exits.with_latency);
    assert_eq!(report.total_time, exits.overall.latency.unwrap().total);
    let io = report.rows.iter().find(|r| r.key == "IO_INSTRUCTION").unwrap();
    assert_eq!(report.rows[0].key, "IO_INSTRUCTION", "most samples first");
    assert!(io.samples >= 199);
}
