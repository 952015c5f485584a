//! Any bytes, read as trace text, in strict and permissive mode: must never panic, permissive
//! mode must never stop before the end of the input, and the block-parallel reader (any block
//! size, taken from the input) must read exactly as the line-by-line one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::read::text::TextReader;
use vmxray_capture::ReadOptions;
use vmxray_events::Event;

/// Every item, errors as their messages.
fn read_all<R: std::io::BufRead>(reader: TextReader<R>) -> Vec<Result<Event, String>> {
    reader.map(|e| e.map_err(|e| e.to_string())).collect()
}

fuzz_target!(|data: &[u8]| {
    let strict = TextReader::new("<fuzz>", data, ReadOptions::default());
    let mut errors = 0;
    for item in strict {
        if item.is_err() {
            errors += 1;
        }
    }
    assert!(errors <= 1, "strict mode yields at most one error");
    let permissive = TextReader::new("<fuzz>", data, ReadOptions { permissive: true, ..ReadOptions::default() });
    for item in permissive {
        assert!(item.is_ok(), "permissive mode skips bad lines instead of failing");
    }
    // Small blocks put boundaries between most lines.
    let block = 1 + usize::from(data.first().copied().unwrap_or(0) % 64);
    for permissive in [false, true] {
        let opts = ReadOptions { permissive, ..ReadOptions::default() };
        let one = read_all(TextReader::one_thread("<fuzz>", data, opts));
        let blocks = read_all(TextReader::with_block_size("<fuzz>", data, opts, block));
        assert!(one == blocks, "block size {block}: {one:?}\n!=\n{blocks:?}");
    }
});
