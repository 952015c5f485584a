//! trace.dat salvage (`--permissive` on a damaged file): any bytes opened for salvage never
//! panic, a salvaging read never yields an error (damage is counted, not returned), and the
//! salvage figures stay within the input's size. (Time order is not asserted: corrupted pages
//! may carry timestamps that go back, which the reader passes on as they are.)
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmxray_capture::read::tracedat::TraceDat;
use vmxray_capture::ReadOptions;

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TraceDat::from_bytes_salvaging("fuzz".into(), data.to_vec()) else { return };
    if let Some((summary, _, _)) = &td.salvage {
        assert!(summary.bytes <= data.len() as u64, "{summary:?}");
    }
    let td = Arc::new(td);
    let Ok(r) = td.events_with(0, ReadOptions { permissive: true, ..ReadOptions::default() }, false) else { return };
    for ev in r.take(100_000) {
        ev.expect("a salvaging read yields no error");
    }
});
