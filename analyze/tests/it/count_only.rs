//! `vmxray stats` has the reader count the kinds the statistics only count
//! ([`ExitStats::COUNT_ONLY`]) instead of decoding them: on every binary trace committed under
//! samples/ (trace.dat and perf.data: real VMX hosts under Bochs, the lab's PVM recordings,
//! trace-cmd's and perf's own captures), the report must be the one the full decode gives.

use std::ops::ControlFlow;
use std::path::Path;

use vmxray_analyze::context::HostContext;
use vmxray_analyze::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use vmxray_analyze::stats::{ExitStats, StatsReport};
use vmxray_capture::{CountOnly, ReadOptions, ReadStats};
use vmxray_events::{EventKind, OtherEvent};
use vmxray_replay::ModelConfig;

/// Checks that no event of a counted kind is yielded.
struct Yielded<'a> {
    count_only: CountOnly,
    path: &'a Path,
}

impl Sink for Yielded<'_> {
    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        let known = stepped.event.kind.known();
        assert!(
            !known.is_some_and(|k| self.count_only.kinds.contains(k)),
            "{}: a {known:?} was yielded, not counted",
            self.path.display()
        );
        if self.count_only.plain_kvm
            && let EventKind::Other(o) = &stepped.event.kind
        {
            let plain = OtherEvent::is_plain_kvm(&o.system, o.fields.0.iter().map(|(n, _)| &**n));
            assert!(!plain, "{}: a plain {} was yielded, not counted", self.path.display(), o.name);
        }
        ControlFlow::Continue(())
    }
}

/// The statistics pass of `vmxray stats` (with its host context), and what the read counted.
fn stats(path: &Path, count_only: CountOnly) -> (StatsReport, ReadStats) {
    let opts = ReadOptions { permissive: true, count_only };
    let mut reader = vmxray_capture::open(path, opts).unwrap_or_else(|e| panic!("{e}"));
    let mut pass =
        Pass::new(PassConfig { model: ModelConfig::attribution_only(), stats: StatsMode::Report });
    let mut context = HostContext::new();
    let mut check = Yielded { count_only, path };
    pass.run_counted(&mut *reader, |r| r.counted_before(), &mut (&mut context, &mut check))
        .unwrap_or_else(|e| panic!("{e}"));
    let read = reader.stats().clone();
    let mut report = pass.finish(Some(reader.meta()), Some(&read)).stats.expect("statistics");
    report.host_context = context.finish();
    // `vmxray stats` leaves the host context out where the input cannot hold a host event.
    if !HostContext::possible_in(&*reader) {
        assert_eq!(report.host_context, None, "{}", path.display());
    }
    (report, read)
}

#[test]
fn counting_only_leaves_the_report_of_every_binary_sample_unchanged() {
    let traces = vmxray_events::test_util::binary_samples();
    assert!(traces.len() >= 50, "{traces:?}");
    let mut counted_total = 0;
    let mut traces_with_counted = 0;
    let (mut with_host_formats, mut without) = (0, 0);
    for path in &traces {
        let (full, full_read) = stats(path, CountOnly::NONE);
        let (counted, read) = stats(path, ExitStats::COUNT_ONLY);
        assert_eq!(counted, full, "{}", path.display());
        assert!(full_read.counted_only.is_empty(), "{}", path.display());
        let n: u64 = read.counted_only.values().sum();
        assert_eq!(
            read.events + n,
            full_read.events,
            "{}: every event yielded or counted",
            path.display()
        );
        assert_eq!(read.skipped, full_read.skipped, "{}", path.display());
        counted_total += n;
        traces_with_counted += u32::from(n > 0);
        let reader = vmxray_capture::open(path, ReadOptions::default()).expect("opens");
        match HostContext::possible_in(&*reader) {
            true => with_host_formats += 1,
            false => without += 1,
        }
    }
    // Both kinds of input are among the samples: the host context's premise is checked.
    assert!(with_host_formats >= 3 && without >= 3, "{with_host_formats} {without}");
    // The samples hold the kinds counted (the MMU's walks and pages, nested entries, interrupt
    // events): the equality above is not that of two identical reads.
    assert!(traces_with_counted >= 20, "{traces_with_counted} traces with counted events");
    assert!(counted_total >= 10_000, "{counted_total} events counted");
}
