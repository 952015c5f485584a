//! perf.data: header, attrs, tracing data and records, strict and permissive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::ReadOptions;
use vmxray_capture::read::perfdata::PerfDataReader;

fuzz_target!(|data: &[u8]| {
    for permissive in [false, true] {
        if let Ok(r) = PerfDataReader::from_bytes("fuzz".into(), data.to_vec(), ReadOptions { permissive, ..ReadOptions::default() }) {
            for ev in r.take(100_000) {
                let _ = ev;
            }
        }
    }
});
