//! Any bytes, read as a pasted excerpt (what `open` does with a small text file): the
//! normalizer (quoted-printable, Unicode and mojibake blanks, quote and author markers), the
//! joiner and the segmenter must never panic; strict mode yields at most one error, permissive
//! mode none; segment markers are numbered 1, 2, ... and counted; every line number an error
//! names is a line of the input; a tool's full-format output reads as the streaming reader
//! reads it; QEMU register dumps among the lines that are not trace lines are read without a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::read::text::{TextReader, qemu_dump};
use vmxray_capture::{EventReader, Location, ReadOptions};
use vmxray_events::EventKind;

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|&&c| c == b'\n').count() as u64 + 1;
    let strict = TextReader::excerpt("<fuzz>", data, ReadOptions::default());
    let mut errors = 0;
    for item in strict {
        if let Err(e) = item {
            errors += 1;
            if let Location::Line(n) = e.at {
                assert!(n >= 1 && n <= lines, "line {n} of {lines}");
            }
        }
    }
    assert!(errors <= 1, "strict mode yields at most one error");

    let mut permissive = TextReader::excerpt("<fuzz>", data, ReadOptions { permissive: true, ..ReadOptions::default() });
    let mut next_segment = 1;
    for item in permissive.by_ref() {
        let event = item.expect("permissive mode skips bad lines instead of failing");
        if let EventKind::Segment { index, .. } = event.kind {
            assert_eq!(index, next_segment, "segments are numbered in order");
            next_segment += 1;
        }
    }
    let stats = permissive.stats();
    assert_eq!(stats.segments, next_segment - 1);
    assert!(stats.non_trace_lines <= lines);
    for line in &stats.non_trace {
        assert!(line.line >= 1 && line.line <= lines);
    }
    // QEMU's register dumps among the non-trace lines (what triage reads): found without a
    // panic, each starting at a line of the input, with the byte at RIP inside its code.
    for dump in qemu_dump::find(&stats.non_trace) {
        assert!(dump.line >= 1 && dump.line <= lines);
        assert!(dump.code_at.is_none_or(|at| at < dump.code.len()));
        let _ = (dump.mode(), dump.linear_rip(), dump.code_look());
        if let Some(e) = &dump.error {
            let _ = e.describe();
        }
    }
});
