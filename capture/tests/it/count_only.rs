//! A reader told to count kinds ([`ReadOptions::count_only`]) yields every other event as a
//! full read does, in the same order, and says how many counted records came before each
//! ([`EventReader::counted_before`]): the number of events yielded before it plus that is the
//! event's index in the full read, on every binary sample (trace.dat and perf.data, one CPU or
//! many).

use vmxray_capture::{CountOnly, ReadOptions, open};
use vmxray_events::{KnownEvent, KnownSet};

/// Kinds common in the samples (the MMU's, nested entries, MSR accesses): most traces have
/// some, interleaved with the kinds still yielded.
const COUNTED: KnownSet = KnownSet::of(&[
    KnownEvent::KvmMmuGetPage,
    KnownEvent::KvmMmuPrepareZapPage,
    KnownEvent::KvmMmuPagetableWalk,
    KnownEvent::KvmMmuPagingElement,
    KnownEvent::KvmNestedVmenter,
    KnownEvent::KvmMsr,
    KnownEvent::KvmPageFault,
    KnownEvent::KvmEntry,
]);

#[test]
fn counted_records_keep_every_yielded_event_at_its_index() {
    let traces = vmxray_events::test_util::binary_samples();
    let (mut multi_cpu, mut counted_total) = (0, 0);
    for path in &traces {
        let full_opts = ReadOptions { permissive: true, ..ReadOptions::default() };
        let full: Vec<_> = open(path, full_opts)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| (e.ts, e.cpu, e.kind.known()))
            .collect();
        let count_only = CountOnly { kinds: COUNTED, plain_kvm: true };
        let mut reader = open(path, ReadOptions { permissive: true, count_only })
            .unwrap_or_else(|e| panic!("{e}"));
        let mut yielded = 0u64;
        let mut last = 0;
        while let Some(item) = reader.next() {
            let Ok(e) = item else { continue };
            let before = reader.counted_before();
            let index = yielded + before;
            let at = usize::try_from(index).expect("index");
            assert_eq!(
                full.get(at),
                Some(&(e.ts, e.cpu, e.kind.known())),
                "{}: event {yielded} yielded ({before} counted before it)",
                path.display()
            );
            assert!(before >= last, "{}", path.display());
            last = before;
            yielded += 1;
        }
        let counted: u64 = reader.stats().counted_only.values().sum();
        assert_eq!(yielded + counted, full.len() as u64, "{}", path.display());
        counted_total += counted;
        let cpus: std::collections::BTreeSet<u32> = full.iter().map(|e| e.1).collect();
        multi_cpu += u32::from(cpus.len() > 1 && counted > 0);
    }
    assert!(counted_total > 10_000, "{counted_total}");
    assert!(multi_cpu >= 3, "{multi_cpu} traces of several CPUs with counted records");
}
