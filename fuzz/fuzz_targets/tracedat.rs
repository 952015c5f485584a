//! trace.dat: metadata, then every buffer's events, strict and permissive.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmxray_capture::ReadOptions;
use vmxray_capture::read::tracedat::TraceDat;

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TraceDat::from_bytes("fuzz".into(), data.to_vec()) else { return };
    let td = Arc::new(td);
    for buffer in 0..td.buffers.len().min(4) {
        for permissive in [false, true] {
            if let Ok(r) = td.events_with(buffer, ReadOptions { permissive, ..ReadOptions::default() }, false) {
                for ev in r.take(100_000) {
                    let _ = ev;
                }
            }
        }
    }
});
