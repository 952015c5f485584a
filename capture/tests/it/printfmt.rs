//! Differential test of the print-fmt evaluator against `trace-cmd report -N` (libtraceevent
//! without plugins: every event through the kernel's print fmt) on every committed binary
//! trace.dat sample.
//!
//! Every record of every CPU is rendered from its raw bytes with its format's print fmt and
//! compared with trace-cmd's text for the same event, in trace-cmd's merged order. Records
//! whose rendering [`Outcome::Partial`] says needs data the evaluator does not have (function
//! symbols, printk strings) may differ and are counted apart; every other record — rendered,
//! or `[FAILED TO PARSE]` with its raw fields as libtraceevent prints it — must be equal. The
//! untyped events are also rendered from their decoded fields (what `vmxray dump` does) and
//! must give the same text.
//!
//! trace-cmd runs when installed; otherwise the test prints `SKIP: <reason>`, except under
//! `CI=true`, where a missing trace-cmd fails it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmxray_capture::ReadOptions;
use vmxray_capture::bin::page::{PageItem, PageStream};
use vmxray_capture::printfmt::{Outcome, PrintCatalog};
use vmxray_capture::read::tracedat::TraceDat;
use vmxray_events::EventKind;

use crate::common;

/// What one sample gave.
#[derive(Debug, Default)]
struct Tally {
    events: usize,
    equal: usize,
    rendered: usize,
    failed_to_parse: usize,
    partial: usize,
    partial_differing: usize,
    untyped: usize,
    differing_by_event: HashMap<String, usize>,
}

fn workspace(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The text trace-cmd prints after `name: ` and its padding to 20 columns.
fn report_text<'l>(line: &'l str, name: &str, what: &str) -> &'l str {
    let close = line.find("] ").unwrap_or_else(|| panic!("{what}: no CPU column"));
    let after = line[close + 2..].trim_start();
    let (_, after) = after.split_once(": ").unwrap_or_else(|| panic!("{what}: no timestamp"));
    let head = format!("{name}: ");
    let rest = after.strip_prefix(&head).unwrap_or_else(|| panic!("{what}: event is not {name}"));
    let pad = 20usize.saturating_sub(name.len());
    rest.get(pad..).filter(|_| rest.as_bytes().iter().take(pad).all(|&b| b == b' ')).unwrap_or("")
}

fn check(path: &Path) -> Option<Tally> {
    let file = path.display().to_string();
    let report = common::run_tool("trace-cmd", &["report", "-N", "-t", path.to_str()?])?;
    let td = Arc::new(TraceDat::open(path).unwrap());
    let catalog = PrintCatalog::new(&td.formats);
    // Raw records of each CPU in stream order, and our events in merged order.
    let mut raw: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for d in &td.buffers[0].cpus {
        let pages = td.cpu_pages(0, d.cpu).unwrap();
        let records = PageStream::new(&td.layout, &pages, 0)
            .filter_map(|item| match item.unwrap().item {
                PageItem::Event { payload, .. } => Some(payload.to_vec()),
                PageItem::Lost { .. } => None,
            })
            .collect();
        raw.insert(d.cpu, records);
    }
    let mut cursors: HashMap<u32, usize> = HashMap::new();
    let mut reader = td.events(0, ReadOptions::default()).unwrap();
    let mut lines = report.lines();
    let mut t = Tally::default();
    while let Some(line) = lines.next() {
        if line.starts_with("cpus=") || line.trim().is_empty() {
            continue;
        }
        let ev = reader.next().expect("trace-cmd has more events than we do").unwrap();
        if line.starts_with("CPU:") {
            assert!(matches!(ev.kind, EventKind::Lost { .. }), "{file}: {line}");
            continue;
        }
        let idx = cursors.entry(ev.cpu).or_default();
        let payload = &raw[&ev.cpu][*idx];
        *idx += 1;
        let rec = td.formats.record(payload).unwrap();
        let f = rec.format;
        let mut ours = String::new();
        let outcome = f.print().render(
            &f.fields,
            &rec,
            td.formats.endian(),
            td.formats.long_size(),
            Some(td.formats.printk()),
            &mut ours,
        );
        let what = format!("{file}: {line}");
        // A rendering with newlines spans as many report lines; trace-cmd ends each record
        // with one newline, so a rendering's own final newline (a `trace_marker` write's) is
        // not doubled.
        let shown = ours.strip_suffix('\n').unwrap_or(&ours).to_owned();
        let mut theirs = report_text(line, &f.name, &what).to_owned();
        for _ in 0..shown.matches('\n').count() {
            theirs.push('\n');
            theirs.push_str(lines.next().unwrap_or_default());
        }
        t.events += 1;
        let equal = shown == theirs;
        t.equal += usize::from(equal);
        match outcome {
            Outcome::Rendered => t.rendered += 1,
            Outcome::FailedToParse => t.failed_to_parse += 1,
            Outcome::Partial(what) => {
                t.partial += 1;
                t.partial_differing += usize::from(!equal);
                if !equal {
                    let n = t.differing_by_event.entry(f.name.to_string()).or_default();
                    *n += 1;
                    if *n == 1 {
                        println!("  differs ({what}): ours {shown:?}\n  trace-cmd's {theirs:?}");
                    }
                }
            }
        }
        if !matches!(outcome, Outcome::Partial(_)) {
            assert_eq!(shown, theirs, "{what} ({outcome:?}, print fmt {})", f.print_fmt);
        }
        // What `vmxray dump` does: the untyped event's decoded fields give the same text.
        let mut from_fields = String::new();
        if let Some(o) = catalog.render(&ev, &mut from_fields) {
            t.untyped += 1;
            assert_eq!(o, outcome, "{what}");
            assert_eq!(from_fields, ours, "{what}: decoded fields render differently");
        }
    }
    assert!(reader.next().is_none(), "{file}: we have more events than trace-cmd");
    if !t.differing_by_event.is_empty() {
        println!(
            "  differing (needing data vmxray does not read), by event: {:?}",
            t.differing_by_event
        );
    }
    assert!(t.events > 0, "{file}: no events");
    println!(
        "{file}: {} events, {} equal to trace-cmd report -N ({} rendered, {} left raw as \
         [FAILED TO PARSE] as trace-cmd does, {} needing symbols or printk strings of which {} \
         differ); {} untyped events rendered from their fields",
        t.events, t.equal, t.rendered, t.failed_to_parse, t.partial, t.partial_differing, t.untyped
    );
    Some(t)
}

/// Every committed binary trace.dat: real, lab-recorded, and real VMX ones when present; plus
/// the files in `VMXRAY_PRINTFMT_EXTRA` (colon-separated), for recordings kept outside the
/// repository (`vmxray record` of every event system).
fn samples() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var("VMXRAY_PRINTFMT_EXTRA")
        .map(|v| v.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    for dir in ["samples/real/tracedat", "samples/lab", "samples/real/vmx"] {
        let Ok(entries) = std::fs::read_dir(workspace(dir)) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "dat"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

#[test]
fn every_binary_sample_renders_as_trace_cmd_report_n() {
    let files = samples();
    assert!(files.len() >= 12, "expected the committed trace.dat samples, found {files:?}");
    let mut total = Tally::default();
    for path in files {
        let Some(t) = check(&path) else { return };
        total.events += t.events;
        total.equal += t.equal;
        total.failed_to_parse += t.failed_to_parse;
        total.partial += t.partial;
    }
    println!(
        "all samples: {} events, {} equal, {} left raw, {} partial",
        total.events, total.equal, total.failed_to_parse, total.partial
    );
    assert!(total.equal > total.events / 2);
}

#[test]
fn dump_lines_carry_the_text_of_untyped_events() {
    use vmxray_capture::render::{Format, OrderedWriter};
    let path = workspace("samples/real/tracedat/lm-v7-zstd.dat");
    let reader = vmxray_capture::open(&path, ReadOptions::default()).unwrap();
    let catalog = Arc::new(PrintCatalog::new(reader.event_formats().unwrap()));
    let clock = reader.meta().clock.clone();
    for format in [Format::Text, Format::Jsonl] {
        let mut w = OrderedWriter::new(Vec::new(), clock.clone(), format, false)
            .with_print(Arc::clone(&catalog));
        let mut reader = vmxray_capture::open(&path, ReadOptions::default()).unwrap();
        for ev in reader.by_ref() {
            w.push(ev.unwrap(), None).unwrap();
        }
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        let fpu = out.lines().find(|l| l.contains("kvm_fpu")).unwrap();
        let typed = out.lines().find(|l| l.contains("kvm_pio")).unwrap();
        match format {
            Format::Text => {
                assert!(fpu.ends_with(" load=1 | text=\"load\""), "{fpu}");
                assert!(!typed.contains("text="), "{typed}");
                let track = out.lines().find(|l| l.contains("kvm_track_tsc")).unwrap();
                assert!(
                    track.ends_with(
                        "| text=\"vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 1 \
                         hostclock 0x1\""
                    ),
                    "{track}"
                );
            }
            Format::Jsonl => {
                let v: serde_json::Value = serde_json::from_str(fpu).unwrap();
                assert_eq!(v["text"], "load");
                let v: serde_json::Value = serde_json::from_str(typed).unwrap();
                assert!(v.get("text").is_none());
            }
        }
    }
    let t = catalog.totals();
    assert!(t.rendered > 0 && t.partial == 0, "{t:?}");
}
