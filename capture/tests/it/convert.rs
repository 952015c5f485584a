//! `convert`: every binary sample converted to trace.dat v7 reads back with the same events,
//! in vmxray and in `trace-cmd report -R -t`.
//!
//! - Every sample (real trace.dat v6/v7, perf.data, lab trace.dat, raw page dumps and the
//!   `raw/` folder as a whole): the output's [`Event`]s (timestamp, CPU, pid, comm, typed kind
//!   with every field) and lost-event counts equal the input's.
//! - trace.dat inputs: `trace-cmd report -R -t` prints the same text for output and input.
//! - perf.data and page-dump inputs (which trace-cmd cannot read): every line of `trace-cmd
//!   report -R -t OUT` is the input's event as vmxray decodes it — ns timestamp, CPU, pid, comm,
//!   event name, and every scalar field of `kernel_fields()` — and `CPU:N [.. EVENTS DROPPED]`
//!   lines are its lost markers.
//! - Truncated and corrupt inputs fail with an error naming the input, leave nothing at the
//!   output path (an existing file is kept), and `permissive` skips and counts bad pages.
//!
//! trace-cmd missing: `SKIP: <reason>`, a failure under `CI=true`.

use crate::common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmxray_capture::bin::format::{EventFormats, FieldFormat};
use vmxray_capture::read::perfdata::PerfDataReader;
use vmxray_capture::read::tracefs_tree::TracefsTree;
use vmxray_capture::write::convert::{
    ConvertError, ConvertOptions, ConvertSummary, Method, convert,
};
use vmxray_capture::write::page::PageBuilder;
use vmxray_capture::{ReadOptions, ReadStats};
use vmxray_events::test_util;
use vmxray_events::{Event, EventKind, FieldValue};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// A fresh directory for one test's outputs.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("convert-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext) || ext.is_empty())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn tracedat_inputs() -> Vec<PathBuf> {
    let mut v = sorted_files(&samples().join("real/tracedat"), "dat");
    v.extend(sorted_files(&samples().join("lab"), "dat"));
    v
}

fn page_inputs() -> Vec<PathBuf> {
    let raw = samples().join("real/raw");
    let mut v = sorted_files(&raw, "bin");
    v.push(raw);
    v
}

fn perf_inputs() -> Vec<PathBuf> {
    sorted_files(&samples().join("real/perf"), "")
}

/// Every event of `path`, without the tgid: trace.dat records carry none, so a perf.data
/// sample's process does not survive the conversion (a documented limit of `convert`).
fn read_all(path: &Path) -> (Vec<Event>, ReadStats) {
    let mut r = vmxray_capture::open(path, ReadOptions::default()).unwrap();
    let events = r.by_ref().map(|e| Event { tgid: None, ..e.unwrap() }).collect();
    (events, r.stats().clone())
}

fn convert_to(input: &Path, dir: &Path) -> (PathBuf, ConvertSummary) {
    let name = input.file_name().unwrap().to_string_lossy();
    let out = dir.join(format!("{name}.out.dat"));
    let summary = convert(input, &out, &ConvertOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    (out, summary)
}

#[test]
fn every_sample_reads_back_with_the_same_events() {
    let dir = scratch("roundtrip");
    let inputs: Vec<PathBuf> =
        tracedat_inputs().into_iter().chain(perf_inputs()).chain(page_inputs()).collect();
    assert!(inputs.len() >= 20, "{inputs:?}");
    for input in inputs {
        let what = input.display().to_string();
        let (out, summary) = convert_to(&input, &dir);
        let (want, want_stats) = read_all(&input);
        let (got, got_stats) = read_all(&out);
        assert!(!want.is_empty(), "{what}");
        assert_eq!(got.len(), want.len(), "{what}: event count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{what}");
        }
        assert_eq!(got_stats.lost, want_stats.lost, "{what}: lost events");
        assert_eq!(got_stats.unknown_events, want_stats.unknown_events, "{what}");
        assert_eq!(summary.stats.events, want_stats.events, "{what}: summary");
        assert_eq!(summary.stats.lost, want_stats.lost, "{what}: summary");
        let is_perf = input.to_string_lossy().contains("/perf/");
        let method = if is_perf { Method::PagesBuilt } else { Method::PagesCopied };
        assert_eq!(summary.method, method, "{what}");
        assert!(summary.not_converted.is_empty(), "{what}: {:?}", summary.not_converted);
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{what}");
        let kernel = |p: &Path| {
            vmxray_capture::open(p, ReadOptions::default()).unwrap().meta().kernel.clone()
        };
        assert_eq!(kernel(&out), kernel(&input), "{what}: kernel release");
        let td = vmxray_capture::read::tracedat::TraceDat::open(&out).unwrap();
        assert_eq!((td.version, td.compression.name()), (7, "zstd"), "{what}");
    }
    // Only outputs in the directory: no temporary file left behind.
    for f in std::fs::read_dir(&dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(".out.dat"), "{name}");
    }
}

#[test]
fn trace_dat_pages_and_texts_are_copied_verbatim() {
    let dir = scratch("verbatim");
    for input in tracedat_inputs() {
        let (out, _) = convert_to(&input, &dir);
        let a = vmxray_capture::read::tracedat::TraceDat::open(&input).unwrap();
        let b = vmxray_capture::read::tracedat::TraceDat::open(&out).unwrap();
        let what = input.display().to_string();
        assert_eq!(a.texts, b.texts, "{what}");
        assert_eq!(a.formats.len(), b.formats.len(), "{what}");
        assert_eq!(a.cpu_stats, b.cpu_stats, "{what}");
        assert_eq!(a.clock, b.clock, "{what}");
        for d in &a.buffers[0].cpus {
            assert_eq!(a.cpu_pages(0, d.cpu).unwrap(), b.cpu_pages(0, d.cpu).unwrap(), "{what}");
        }
    }
}

/// `trace-cmd ARGS`, or `None` after `SKIP` when trace-cmd cannot run (a failure under CI).
fn trace_cmd(args: &[&str]) -> Option<String> {
    match Command::new("trace-cmd").args(args).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "trace-cmd {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) => {
            test_util::skip(&format!("trace-cmd cannot run ({e})"));
            None
        }
    }
}

fn report(path: &Path) -> Option<String> {
    trace_cmd(&["report", "-R", "-t", path.to_str().unwrap()])
}

#[test]
fn trace_cmd_prints_the_same_report_for_converted_trace_dat() {
    let dir = scratch("trace-cmd-dat");
    for input in tracedat_inputs() {
        let (out, _) = convert_to(&input, &dir);
        let Some(want) = report(&input) else { return };
        let Some(got) = report(&out) else { return };
        let events = want.lines().filter(|l| !l.starts_with("cpus=")).count();
        assert!(events > 0, "{}", input.display());
        assert!(got == want, "{}: trace-cmd report -R -t differs", input.display());
        println!("{}: {events} lines equal", input.display());
    }
}

/// Tells whether a rendered number denotes `value` in a field of `size` bytes (trace-cmd
/// prints signed fields signed, `%x` fields in hex).
fn same_number(token: &str, value: u64, size: u32, hex: bool) -> bool {
    let t = token.trim();
    let parsed = if let Some(h) = t.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else if hex {
        u64::from_str_radix(t, 16).ok()
    } else if let Some(neg) = t.strip_prefix('-') {
        neg.parse::<u64>().ok().map(u64::wrapping_neg)
    } else {
        t.parse::<u64>().ok()
    };
    let mask = if size >= 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 };
    parsed.is_some_and(|p| (p ^ value) & mask == 0)
}

/// Every line of `trace-cmd report -R -t out` against the input's events as vmxray reads
/// them; returns the number of field values compared.
fn check_report_against_events(
    what: &str,
    report: &str,
    events: &[Event],
    formats: &EventFormats,
) -> usize {
    let lines: Vec<&str> =
        report.lines().filter(|l| !l.starts_with("cpus=") && !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), events.len(), "{what}: line count");
    let mut fields_compared = 0;
    for (line, ev) in lines.iter().zip(events) {
        let at = format!("{what}: {line}");
        if let EventKind::Lost { count } = ev.kind {
            let want = match count {
                Some(n) => format!("CPU:{} [{n} EVENTS DROPPED]", ev.cpu),
                None => format!("CPU:{} [EVENTS DROPPED]", ev.cpu),
            };
            assert_eq!(line.trim(), want, "{at}");
            continue;
        }
        if ev.name() == "unknown" {
            // No format for its id: trace-cmd cannot name or place it either.
            assert!(line.contains("[UNKNOWN EVENT]"), "{at}");
            continue;
        }
        let open = line.find(" [").unwrap();
        let close = open + line[open..].find("] ").unwrap();
        let (comm, pid) = line[..open].trim().rsplit_once('-').unwrap();
        let (ts, rest) = line[close + 2..].trim_start().split_once(": ").unwrap();
        let (name, body) = rest.split_once(':').unwrap();
        let (sec, ns) = ts.trim().split_once('.').unwrap();
        let ts = sec.parse::<u64>().unwrap() * 1_000_000_000 + ns.parse::<u64>().unwrap();
        assert_eq!(
            (ev.ts, ev.cpu, ev.pid, name.trim()),
            (ts, line[open + 2..close].parse().unwrap(), pid.trim().parse().unwrap(), ev.name()),
            "{at}"
        );
        assert_eq!(ev.comm.as_deref().unwrap_or("<...>"), comm.trim(), "{at}");
        let format = formats.find(ev.system(), ev.name()).expect("a format for each event");
        let hex: HashMap<String, char> =
            common::print_fmt_conversions(&format.print_fmt).into_iter().collect();
        let casts: HashMap<String, u32> =
            common::print_fmt_casts(&format.print_fmt).into_iter().collect();
        let tokens: HashMap<&str, &str> =
            body.split_whitespace().filter_map(|t| t.split_once('=')).collect();
        for (field, value) in ev.kind.kernel_fields().iter() {
            let (Some(v), Some(f)) = (scalar(value), format.field(field)) else { continue };
            let token = tokens.get(field).unwrap_or_else(|| panic!("{at}: no {field}="));
            let is_hex = hex.get(field).is_some_and(|c| matches!(c, 'x' | 'X' | 'p'));
            let size = casts.get(field).copied().unwrap_or_else(|| size_of(f));
            assert!(same_number(token, v, size, is_hex), "{at}: {field} = {v:#x}");
            fields_compared += 1;
        }
    }
    fields_compared
}

fn scalar(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::U64(_) | FieldValue::I64(_) => v.as_u64(),
        _ => None,
    }
}

fn size_of(f: &FieldFormat) -> u32 {
    f.size
}

#[test]
fn trace_cmd_reports_perf_and_page_inputs_as_vmxray_decodes_them() {
    let dir = scratch("trace-cmd-perf-pages");
    let mut compared = 0;
    for input in perf_inputs().into_iter().chain(page_inputs()) {
        let (out, _) = convert_to(&input, &dir);
        let Some(got) = report(&out) else { return };
        let (events, _) = read_all(&input);
        let formats = if input.to_string_lossy().contains("/perf/") {
            std::sync::Arc::clone(
                PerfDataReader::open(&input, ReadOptions::default()).unwrap().formats(),
            )
        } else {
            TracefsTree::load(&samples().join("real/raw/tracefs")).unwrap().formats
        };
        let what = input.display().to_string();
        compared += check_report_against_events(&what, &got, &events, &formats);
        println!("{what}: {} events equal trace-cmd report -R -t of the output", events.len());
    }
    assert!(compared > 1000, "only {compared} field values compared");
}

fn assert_nothing_written(dir: &Path, out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp")), "{left:?}");
}

#[test]
fn truncated_inputs_fail_naming_the_input_and_leave_no_output() {
    let dir = scratch("truncated");
    // Cut in the header, in the metadata, in the CPU data (v7 chunks, v6 pages) or in the
    // perf data section.
    let cases = [
        ("real/tracedat/lm-v7-zstd.dat", &[40, 300_000, 1_033_000][..]),
        ("real/tracedat/lm-v6.dat", &[40, 1_000_000, 5_500_000][..]),
        ("real/perf/lm.perf.data", &[40, 1000, 60_000][..]),
    ];
    for (file, cuts) in cases {
        let input = samples().join(file);
        let bytes = std::fs::read(&input).unwrap();
        for &keep in cuts {
            let cut =
                dir.join(format!("cut-{keep}-{}", input.file_name().unwrap().to_string_lossy()));
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            let out = dir.join("out.dat");
            let err = convert(&cut, &out, &ConvertOptions::default())
                .expect_err(&format!("{} cut at {keep}", input.display()));
            let msg = err.to_string();
            assert!(msg.contains(&*cut.to_string_lossy()), "{msg}");
            assert_nothing_written(&dir, &out);
        }
    }
    // An existing output stays as it was when the conversion fails.
    let out = dir.join("existing.dat");
    std::fs::write(&out, b"keep me").unwrap();
    let cut = dir.join("cut-40-lm-v7-zstd.dat");
    assert!(convert(&cut, &out, &ConvertOptions::default()).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

/// A folder of page dumps beside a `tracefs/` tree (a link to the committed one).
fn page_dump_dir(test: &str, pages: &[u8]) -> PathBuf {
    let dir = scratch(test);
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    std::os::unix::fs::symlink(samples().join("real/raw/tracefs"), input.join("tracefs")).unwrap();
    std::fs::write(input.join("pages_cpu1.bin"), pages).unwrap();
    input
}

#[test]
fn corrupt_pages_stop_strict_conversion_and_are_skipped_when_permissive() {
    let good = std::fs::read(samples().join("real/raw/sample_raw_lm_cpu1.bin")).unwrap();
    let layout = TracefsTree::load(&samples().join("real/raw/tracefs")).unwrap().layout;
    let bad = PageBuilder::new(layout, good_ts(&good) + 1_000_000)
        .event(0, &[1, 0, 0, 0])
        .commit(5000)
        .build();
    let mut pages = good.clone();
    pages.extend_from_slice(&bad);
    pages.extend_from_slice(&good[..100]); // and a truncated last page
    let input = page_dump_dir("corrupt", &pages);
    let out = input.parent().unwrap().join("out.dat");

    let err = convert(&input, &out, &ConvertOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pages_cpu1.bin") && msg.contains("0x1000"), "{msg}");
    assert!(msg.contains("commit length 5000"), "{msg}");
    assert_nothing_written(input.parent().unwrap(), &out);

    let opts = ConvertOptions { permissive: true, ..ConvertOptions::default() };
    let summary = convert(&input, &out, &opts).unwrap();
    assert_eq!(summary.stats.skipped, 2, "the bad page and the truncated one");
    assert_eq!(summary.stats.events, 62);
    assert_eq!(summary.written.pages.iter().sum::<u64>(), 1);
    let (events, _) = read_all(&out);
    assert_eq!(events, read_all(&samples().join("real/raw/sample_raw_lm_cpu1.bin")).0);
}

fn good_ts(page: &[u8]) -> u64 {
    u64::from_le_bytes(page[..8].try_into().unwrap())
}

#[test]
fn text_inputs_are_refused_with_what_to_give_instead() {
    let dir = scratch("text");
    for (file, kind) in [
        ("tc_report.txt", "trace-cmd report"),
        ("ps_default.txt", "perf script"),
        ("ftrace_trace_irqinfo.txt", "ftrace"),
    ] {
        let input = samples().join("real/text").join(file);
        let out = dir.join("out.dat");
        let err = convert(&input, &out, &ConvertOptions::default()).unwrap_err();
        assert!(matches!(err, ConvertError::NoFormats { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(file) && msg.contains(kind), "{msg}");
        assert!(msg.contains("trace.dat, perf.data"), "{msg}");
        assert_nothing_written(&dir, &out);
    }
    let err = convert(&dir, &dir.join("out.dat"), &ConvertOptions::default()).unwrap_err();
    assert!(matches!(err, ConvertError::NotTracefs { .. }), "{err:?}");
}

/// The records of a perf.data's data section: (offset, type, size).
fn perf_records(bytes: &[u8]) -> Vec<(usize, u32, usize)> {
    let u64_at = |at: usize| {
        usize::try_from(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())).unwrap()
    };
    let (data_off, data_size) = (u64_at(40), u64_at(48));
    let mut out = Vec::new();
    let mut pos = data_off;
    while pos < data_off + data_size {
        let kind = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap());
        let size = usize::from(u16::from_le_bytes(bytes[pos + 6..pos + 8].try_into().unwrap()));
        out.push((pos, kind, size));
        pos += size;
    }
    out
}

/// lm.perf.data with two MMAP2 records (after the samples, same round) rewritten as
/// `PERF_RECORD_LOST` records on the CPUs and just after the times of two samples:
/// `(file, [(cpu, ts, count)])`.
fn perf_with_losses(dir: &Path) -> (PathBuf, Vec<(u32, u64, u64)>) {
    let input = samples().join("real/perf/lm.perf.data");
    let mut bytes = std::fs::read(&input).unwrap();
    let (events, _) = read_all(&input);
    let mut mmap2_after_samples = Vec::new();
    let mut seen_sample = false;
    for (pos, kind, size) in perf_records(&bytes) {
        seen_sample |= kind == 9;
        if kind == 10 && seen_sample && size >= 8 + 16 + 32 {
            mmap2_after_samples.push((pos, size));
        }
    }
    let mut losses = Vec::new();
    for ((at, size), (ev, count)) in
        mmap2_after_samples.into_iter().zip([(&events[20], 7u64), (&events[41], 3)])
    {
        let (cpu, ts) = (ev.cpu, ev.ts + 1);
        let rec = &mut bytes[at..at + size];
        rec.fill(0);
        rec[..4].copy_from_slice(&2u32.to_le_bytes()); // PERF_RECORD_LOST
        rec[6..8].copy_from_slice(&u16::try_from(size).unwrap().to_le_bytes());
        rec[16..24].copy_from_slice(&count.to_le_bytes());
        // sample_id (TID, TIME, CPU, IDENTIFIER) at the end of the record.
        let sid = size - 32;
        rec[sid + 8..sid + 16].copy_from_slice(&ts.to_le_bytes());
        rec[sid + 16..sid + 20].copy_from_slice(&cpu.to_le_bytes());
        losses.push((cpu, ts, count));
    }
    assert_eq!(losses.len(), 2);
    let path = dir.join("lost.perf.data");
    std::fs::write(&path, bytes).unwrap();
    (path, losses)
}

#[test]
fn perf_losses_become_flagged_pages_at_their_time_and_cpu() {
    let dir = scratch("perf-lost");
    let (input, losses) = perf_with_losses(&dir);
    let (want, want_stats) = read_all(&input);
    let lost: Vec<(u32, u64, Option<u64>)> = want
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Lost { count } => Some((e.cpu, e.ts, count)),
            _ => None,
        })
        .collect();
    let expected: Vec<_> = losses.iter().map(|&(c, t, n)| (c, t, Some(n))).collect();
    assert_eq!(lost, expected, "the crafted input reads as intended");
    let (out, summary) = convert_to(&input, &dir);
    let (got, got_stats) = read_all(&out);
    assert_eq!(got, want);
    assert_eq!(got_stats.lost, want_stats.lost);
    assert_eq!(summary.stats.lost, want_stats.lost);
    if let Some(report) = report(&out) {
        let formats = std::sync::Arc::clone(
            PerfDataReader::open(&input, ReadOptions::default()).unwrap().formats(),
        );
        check_report_against_events("lost.perf.data", &report, &want, &formats);
        assert!(report.contains("[7 EVENTS DROPPED]") && report.contains("[3 EVENTS DROPPED]"));
    }
}

/// lm.perf.data with every sample from the 30th on moved 0.4 s later: deltas past 2^27 − 1
/// ns that the packer must write as TIME_EXTEND records.
#[test]
fn perf_gaps_over_2_27_ns_are_time_extended() {
    let dir = scratch("perf-extend");
    let input = samples().join("real/perf/lm.perf.data");
    let mut bytes = std::fs::read(&input).unwrap();
    let sample_offsets = perf_records(&bytes).into_iter().filter(|r| r.1 == 9).map(|r| r.0);
    for pos in sample_offsets.skip(29) {
        // sample_type IDENTIFIER|IP|TID|TIME|...: the time is the 4th u64 of the body.
        let time = &mut bytes[pos + 32..pos + 40];
        let t = u64::from_le_bytes(time.try_into().unwrap()) + 400_000_000;
        time.copy_from_slice(&t.to_le_bytes());
    }
    let shifted = dir.join("gap.perf.data");
    std::fs::write(&shifted, bytes).unwrap();
    let (want, _) = read_all(&shifted);
    let gaps = want.windows(2).filter(|w| w[1].ts - w[0].ts >= 1 << 27).count();
    assert!(gaps >= 1);
    let (out, summary) = convert_to(&shifted, &dir);
    assert_eq!(read_all(&out).0, want);
    // Still one page per CPU: the gap is inside a page, as a TIME_EXTEND record.
    assert_eq!(summary.written.pages, [1, 1]);
    if let Some(report) = report(&out) {
        let formats = std::sync::Arc::clone(
            PerfDataReader::open(&shifted, ReadOptions::default()).unwrap().formats(),
        );
        check_report_against_events("gap.perf.data", &report, &want, &formats);
    }
}

/// Text (here `vmxray simulate` output) with `formats`: each event is encoded from its fields
/// with the tracefs format files. Everything the text carried comes back — time, CPU, pid,
/// comm, event, every field value — in vmxray and in `trace-cmd report -R -t`; fields the
/// text lacks are 0 and reported. Events at equal times come back ordered by CPU, as every
/// trace.dat reader merges them.
#[test]
fn simulated_text_with_formats_keeps_every_field_it_carried() {
    let dir = scratch("text-formats");
    let tree = samples().join("real/raw/tracefs");
    let formats = TracefsTree::load(&tree).unwrap().formats;
    let sims = sorted_files(&samples().join("sim"), "txt");
    assert!(sims.len() >= 10);
    let mut fields_compared = 0;
    let mut role_bits_reported = false;
    for (i, input) in sims.iter().enumerate() {
        let what = input.display().to_string();
        let out = dir.join("out.dat");
        // Either the tree's root or its events/ directory names the formats.
        let given = if i % 2 == 0 { tree.clone() } else { tree.join("events") };
        let opts = ConvertOptions { formats: Some(given), ..ConvertOptions::default() };
        let summary = convert(input, &out, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(summary.method, Method::RecordsEncoded);
        role_bits_reported |=
            summary.fields_zeroed.keys().any(|k| k.contains(":role bits outside"));
        let (mut want, _) = read_all(input);
        want.sort_by_key(|e| (e.ts, e.cpu));
        let (got, _) = read_all(&out);
        assert_eq!(got.len(), want.len(), "{what}");
        assert_eq!(summary.stats.events, want.len() as u64, "{what}");
        for (g, w) in got.iter().zip(&want) {
            let at = format!("{what}: {w:?}");
            assert_eq!((g.ts, g.cpu, g.pid, &g.comm), (w.ts, w.cpu, w.pid, &w.comm), "{at}");
            assert_eq!(g.name(), w.name(), "{at}");
            // Text without the system (`-R`-like lines) gets the format's.
            assert!(w.system().is_empty() || g.system() == w.system(), "{at}");
            let format = formats.find(g.system(), g.name()).unwrap();
            let got_fields = g.kind.kernel_fields();
            // Fields the format has (text may add an unparsed `text` pseudo-field).
            for (name, value) in
                w.kind.kernel_fields().iter().filter(|(n, _)| format.field(n).is_some())
            {
                assert_eq!(got_fields.get(name), Some(value), "{at}: field {name}");
                fields_compared += 1;
            }
        }
        if let Some(report) = report(&out) {
            fields_compared += check_report_against_events(&what, &report, &want, &formats);
        }
    }
    assert!(fields_compared > 5000, "{fields_compared}");
    assert!(role_bits_reported, "role bits the text hides are reported");
}

/// Formats from a pre-5.18 kernel (role bit 4 = `gpte_is_8_bytes`): records are written with
/// bit 4 in that kernel's sense and read back as the same typed roles.
#[test]
fn role_words_are_encoded_in_the_formats_kernel_sense() {
    let dir = scratch("old-role-layout");
    let tree = dir.join("tracefs");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(samples().join("real/raw/tracefs"))
        .arg(&tree)
        .status()
        .unwrap();
    assert!(copy.success());
    let format = tree.join("events/kvmmmu/kvm_mmu_get_page/format");
    let text = std::fs::read_to_string(&format).unwrap();
    assert!(text.contains("role.has_4_byte_gpte ? 4 : 8"));
    let old = text.replace("role.has_4_byte_gpte ? 4 : 8", "role.gpte_is_8_bytes ? 8 : 4");
    std::fs::write(&format, old).unwrap();
    let input = samples().join("sim/dirty-log-fixed-6.1.txt");
    let opts = ConvertOptions { formats: Some(tree.clone()), ..ConvertOptions::default() };
    let converted = |out: &Path| {
        convert(&input, out, &opts).unwrap();
        read_all(out).0
    };
    let got = converted(&dir.join("old.dat"));
    let (mut want, _) = read_all(&input);
    want.sort_by_key(|e| (e.ts, e.cpu));
    let pages = |events: &[Event]| -> Vec<vmxray_events::MmuPage> {
        events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::KvmMmuGetPage { page, .. } => Some(page),
                _ => None,
            })
            .collect()
    };
    let (got_pages, want_pages) = (pages(&got), pages(&want));
    assert!(!want_pages.is_empty());
    assert_eq!(
        got_pages.iter().map(|p| p.has_4_byte_gpte()).collect::<Vec<_>>(),
        want_pages.iter().map(|p| p.has_4_byte_gpte()).collect::<Vec<_>>()
    );
    // The records themselves hold bit 4 in the old sense: read with the 6.x format (no flip),
    // every role shows the bit inverted.
    std::fs::write(&format, &text).unwrap();
    let formats = TracefsTree::load(&tree).unwrap().formats;
    let new_format = formats.find("kvmmmu", "kvm_mmu_get_page").unwrap();
    assert!(!new_format.role_bit4_inverted());
    let td = vmxray_capture::read::tracedat::TraceDat::open(&dir.join("old.dat")).unwrap();
    let written = td.formats.find("kvmmmu", "kvm_mmu_get_page").unwrap();
    assert!(written.role_bit4_inverted());
    let mut raw = Vec::new();
    for d in &td.buffers[0].cpus {
        let bytes = td.cpu_pages(0, d.cpu).unwrap();
        for item in vmxray_capture::bin::page::PageStream::new(&td.layout, &bytes, 0) {
            if let vmxray_capture::bin::page::PageItem::Event { ts, payload, .. } =
                item.unwrap().item
                && td.formats.event_id(payload) == Some(written.id)
            {
                let rec = vmxray_capture::bin::format::Record::new(new_format, payload, td.endian);
                if let Ok(EventKind::KvmMmuGetPage { page, .. }) =
                    new_format.known.unwrap().decode(&rec)
                {
                    raw.push((ts, d.cpu, page.has_4_byte_gpte()));
                }
            }
        }
    }
    raw.sort_by_key(|(ts, cpu, _)| (*ts, *cpu));
    assert_eq!(raw.len(), want_pages.len());
    for ((_, _, bit), page) in raw.iter().zip(&want_pages) {
        assert_eq!(*bit, page.has_4_byte_gpte().map(|b| !b));
    }
}

#[test]
fn text_events_without_a_format_stop_or_are_skipped() {
    let dir = scratch("text-no-format");
    // `raw` text names events by id only (`type_82`): no format file has that name.
    let input = samples().join("real/text/text_raw.txt");
    let out = dir.join("out.dat");
    let formats = Some(samples().join("real/raw/tracefs"));
    let opts = ConvertOptions { formats: formats.clone(), ..ConvertOptions::default() };
    let err = convert(&input, &out, &opts).unwrap_err();
    assert!(matches!(err, ConvertError::NoFormatFor { .. }), "{err:?}");
    assert!(err.to_string().contains("type_82"), "{err}");
    assert_nothing_written(&dir, &out);
    let opts = ConvertOptions { formats, permissive: true, ..ConvertOptions::default() };
    let summary = convert(&input, &out, &opts).unwrap();
    assert!(summary.stats.skipped > 0);
}

#[test]
fn permissive_keeps_the_complete_pages_of_a_truncated_trace_dat() {
    let dir = scratch("truncated-permissive");
    let bytes = std::fs::read(samples().join("real/tracedat/lm-v6.dat")).unwrap();
    // Cut inside the CPU data (v6: uncompressed pages at the end of the file), mid-page.
    let cut = dir.join("cut.dat");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out = dir.join("out.dat");
    assert!(convert(&cut, &out, &ConvertOptions::default()).is_err());
    assert_nothing_written(&dir, &out);
    let opts = ConvertOptions { permissive: true, ..ConvertOptions::default() };
    let summary = convert(&cut, &out, &opts).unwrap();
    assert!(summary.stats.skipped >= 1, "{:?}", summary.stats);
    let mut r =
        vmxray_capture::open(&cut, ReadOptions { permissive: true, ..ReadOptions::default() })
            .unwrap();
    let want: Vec<Event> = r.by_ref().map(Result::unwrap).collect();
    let (got, _) = read_all(&out);
    assert!(!got.is_empty());
    // Every page kept reads back as the input read permissively (which also decodes the
    // records before the cut of the last, partial page).
    let mut rest = want.iter();
    for g in &got {
        assert!(rest.any(|w| w == g), "{g:?} not in the input");
    }
}

/// A copied tracefs tree (`per_cpu/cpuN/trace_pipe_raw`, `saved_cmdlines`, `stats`): its
/// comms go to the cmdlines section and each CPU's stats to a CPUSTAT option.
#[test]
fn tracefs_tree_comms_and_stats_are_carried() {
    let dir = scratch("tracefs-tree");
    let tree = dir.join("tracing");
    let raw = samples().join("real/raw");
    std::fs::create_dir_all(tree.join("per_cpu/cpu1")).unwrap();
    std::os::unix::fs::symlink(raw.join("tracefs/events"), tree.join("events")).unwrap();
    std::fs::copy(raw.join("tracefs/trace_clock"), tree.join("trace_clock")).unwrap();
    std::fs::copy(raw.join("sample_raw_lm_cpu1.bin"), tree.join("per_cpu/cpu1/trace_pipe_raw"))
        .unwrap();
    std::fs::write(tree.join("saved_cmdlines"), "12372 qemu vcpu-0 x\n").unwrap();
    let stats = "entries: 0\noverrun: 0\ndropped events: 0\n";
    std::fs::write(tree.join("per_cpu/cpu1/stats"), stats).unwrap();
    let (out, summary) = convert_to(&tree, &dir);
    let (want, _) = read_all(&tree);
    let (got, _) = read_all(&out);
    assert_eq!(got, want);
    assert_eq!(summary.stats.events, 62);
    let of_pid: Vec<&Event> = got.iter().filter(|e| e.pid == 12372).collect();
    assert!(of_pid.len() > 10);
    assert!(of_pid.iter().all(|e| e.comm.as_deref() == Some("qemu vcpu-0 x")));
    let td = vmxray_capture::read::tracedat::TraceDat::open(&out).unwrap();
    assert_eq!(td.cpu_stats, [format!("CPU: 1\n{stats}")]);
    assert_eq!(td.cpu_count, Some(2));
    if let Some(report) = report(&out) {
        assert!(report.contains("qemu vcpu-0 x-12372 [001]"), "{report}");
    }
}
