//! Any bytes, read as trace text, in strict and permissive mode: must never panic, and
//! permissive mode must never stop before the end of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::ReadOptions;
use vmxray_capture::text::TextReader;

fuzz_target!(|data: &[u8]| {
    let strict = TextReader::new("<fuzz>", data, ReadOptions::default());
    let mut errors = 0;
    for item in strict {
        if item.is_err() {
            errors += 1;
        }
    }
    assert!(errors <= 1, "strict mode yields at most one error");
    let permissive = TextReader::new("<fuzz>", data, ReadOptions { permissive: true });
    for item in permissive {
        assert!(item.is_ok(), "permissive mode skips bad lines instead of failing");
    }
});
