//! The trace.dat reader decodes each CPU's chunks in jobs on the rayon pool and merges the
//! CPUs by timestamp; decoding on the calling thread alone must give the very same stream. On
//! the real captures: every event equal and in the same order, the same problems at the same
//! places, the same counts of lost events.

use std::sync::Arc;

use vmxray_capture::read::tracedat::TraceDat;
use vmxray_capture::{EventReader, ReadOptions};
use vmxray_events::{Event, EventKind};

use crate::common::samples;

/// The stream of buffer 0 and what the reader counted, decoded in parallel or not.
fn read(td: &Arc<TraceDat>, parallel: bool, permissive: bool) -> (Vec<String>, Vec<Event>, String) {
    let mut reader = td
        .events_with(0, ReadOptions { permissive, ..ReadOptions::default() }, parallel)
        .expect("events");
    let mut problems = Vec::new();
    let mut events = Vec::new();
    for item in reader.by_ref() {
        match item {
            Ok(ev) => events.push(ev),
            Err(e) => problems.push(format!("{} at event {}", e, events.len())),
        }
    }
    (problems, events, format!("{:?}", reader.stats()))
}

#[test]
fn parallel_decoding_gives_the_serial_stream_on_every_real_trace_dat() {
    let dir = samples("tracedat");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("samples/real/tracedat")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no trace.dat in {}", dir.display());
    let mut largest = (0, 0);
    for path in &files {
        let td = Arc::new(TraceDat::open(path).expect("open"));
        for permissive in [false, true] {
            let (p_problems, p_events, p_stats) = read(&td, true, permissive);
            let (s_problems, s_events, s_stats) = read(&td, false, permissive);
            let name = path.display();
            assert_eq!(p_problems, s_problems, "{name}: problems (permissive {permissive})");
            assert_eq!(p_events.len(), s_events.len(), "{name}: event count");
            if let Some(i) = (0..p_events.len()).find(|&i| p_events[i] != s_events[i]) {
                panic!(
                    "{name}: event {i} differs:\nparallel {:?}\nserial   {:?}",
                    p_events[i], s_events[i]
                );
            }
            assert_eq!(p_stats, s_stats, "{name}: read statistics");
            // The merge's order: timestamps never go back across CPUs.
            assert!(
                p_events.windows(2).all(|w| w[0].ts <= w[1].ts),
                "{name}: the merged stream goes back in time"
            );
            let cpus = p_events.iter().map(|e| e.cpu).collect::<std::collections::BTreeSet<_>>();
            if p_events.len() > largest.0 {
                largest = (p_events.len(), cpus.len());
            }
        }
    }
    // The comparison means something only if one capture spans several CPUs and several
    // decoding jobs per CPU (a job covers 256 KiB of pages, about 5,000 KVM events), with
    // lost-event markers among them.
    assert!(largest.0 > 40_000 && largest.1 > 1, "largest real trace.dat: {largest:?}");
    let td = Arc::new(TraceDat::open(&dir.join("lost-v7-zstd.dat")).expect("open"));
    let (_, events, _) = read(&td, true, false);
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::Lost { .. })));
}
