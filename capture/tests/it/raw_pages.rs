//! The real `trace_pipe_raw` pages of `samples/real/raw/` decode to exactly what the reference
//! decoder (`shared/tools/reference-decoders/decode_raw.py`) printed in each `.decoded.txt`:
//! page headers (commit word, length, lost flags, the stored lost count 5316), every record's
//! offset, type_len, delta, timestamp, event, pid, flags, preempt count and every field — and
//! the timestamps after each TIME_EXTEND.
//!
//! The reference ran with the `sched` formats of its boot; `raw/tracefs/` only keeps the
//! `ftrace`, `kvm` and `kvmmmu` systems, so the two `sched_process_exec` records of the
//! `__data_loc` sample are checked for their header and timestamp only (their `__data_loc`
//! decoding is covered by `format.rs` unit tests with the same packing).

#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

use crate::common;

use std::fmt::Write as _;

use vmxray_capture::bin::Endian;
use vmxray_capture::bin::format::FieldLayout;
use vmxray_capture::bin::page::{MISSED_EVENTS, MISSED_STORED, PageHeader, PageItem, PageRecords};
use vmxray_capture::read::tracefs_tree::{TracefsReader, TracefsTree};
use vmxray_capture::{EventReader, ReadOptions};
use vmxray_events::EventKind;

fn py_value(v: u64, signed: i64, is_signed: bool) -> String {
    if is_signed && signed < 0 {
        return signed.to_string();
    }
    if v > 9 { format!("{v:#x}") } else { v.to_string() }
}

/// Renders a page the way decode_raw.py does (events and page headers; TIME_EXTEND and padding
/// lines are not items of our walk and are compared separately).
fn render(tree: &TracefsTree, bytes: &[u8]) -> (Vec<String>, Vec<u64>) {
    let layout = tree.layout;
    let mut lines = Vec::new();
    let mut all_ts = Vec::new();
    let ps = layout.page_size as usize;
    for (pno, page) in bytes.chunks(ps).enumerate() {
        let h = PageHeader::parse(&layout, page).unwrap();
        lines.push(format!(
            "=== page {pno}: timestamp={} commit={:#x} (len={}, MISSED_EVENTS={}, MISSED_STORED={})",
            h.timestamp,
            h.commit,
            h.len,
            if h.commit & MISSED_EVENTS != 0 { "True" } else { "False" },
            if h.commit & MISSED_STORED != 0 { "True" } else { "False" },
        ));
        for item in PageRecords::new(&layout, page).unwrap() {
            match item.unwrap() {
                PageItem::Lost { count, .. } => {
                    if let Some(c) = count {
                        lines.push(format!("    missed-event count stored after data: {c}"));
                    }
                }
                PageItem::Event { ts, payload, offset } => {
                    all_ts.push(ts);
                    let word = Endian::Little.u32(page, offset).unwrap();
                    let (tl, td) = (word & 0x1f, word >> 5);
                    let rel = offset - layout.data_offset as usize;
                    let mut line = format!(
                        "  +{rel:4}: type_len={tl:2} delta={td:<9} ts={:.6} len={:3} ",
                        ts as f64 / 1e9,
                        payload.len()
                    );
                    let Some(rec) = tree.formats.record(payload) else {
                        line.push_str("<unknown>");
                        lines.push(line);
                        continue;
                    };
                    let f = rec.format;
                    let get = |n: &str| {
                        f.field(n).and_then(|x| x.read_uint(payload, Endian::Little)).unwrap_or(0)
                    };
                    write!(
                        line,
                        "{}:{} pid={} flags={:#04x} pc={:#04x}",
                        f.system,
                        f.name,
                        tree.formats.pid(payload).unwrap(),
                        get("common_flags"),
                        get("common_preempt_count")
                    )
                    .unwrap();
                    for field in f.fields.iter().filter(|x| !x.is_common()) {
                        let v = match field.layout {
                            FieldLayout::Scalar => {
                                let raw = field.read_uint(payload, Endian::Little).unwrap();
                                py_value(raw, raw as i64, field.signed)
                            }
                            _ if field.is_string => {
                                let b = field.slice(payload, Endian::Little).unwrap_or(&[]);
                                let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
                                String::from_utf8_lossy(&b[..end]).into_owned()
                            }
                            _ => {
                                let b = field.slice(payload, Endian::Little).unwrap_or(&[]);
                                b.iter().map(|x| format!("{x:02x}")).collect()
                            }
                        };
                        write!(line, " {}={v}", field.name).unwrap();
                    }
                    lines.push(line);
                }
            }
        }
    }
    (lines, all_ts)
}

#[test]
fn raw_pages_match_reference_decoder() {
    let dir = common::samples("raw");
    let tree = TracefsTree::load(&dir.join("tracefs")).unwrap();
    assert_eq!(tree.layout.page_size, 4096);
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let expected_text = std::fs::read_to_string(path.with_extension("decoded.txt")).unwrap();
        let (got, all_ts) = render(&tree, &bytes);
        let expected: Vec<&str> = expected_text
            .lines()
            .filter(|l| !l.contains("TIME_EXTEND") && !l.contains("PADDING"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(got.len(), expected.len(), "{}: line count", path.display());
        for (g, e) in got.iter().zip(&expected) {
            if g.ends_with("<unknown>") {
                // A system missing from raw/tracefs: compare up to the event name.
                let cut = g.len() - "<unknown>".len();
                assert_eq!(&g[..cut], &e[..cut], "{}", path.display());
                continue;
            }
            assert_eq!(g.trim_end(), e.trim_end(), "{}", path.display());
        }
        // Every TIME_EXTEND line's resulting timestamp is the base of the next event.
        for l in expected_text.lines().filter(|l| l.contains("TIME_EXTEND")) {
            let ts: u64 = l.rsplit("ts=").next().unwrap().trim().parse().unwrap();
            assert!(all_ts.iter().any(|t| *t >= ts && *t - ts < 1_000_000), "{l}");
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "every .bin sample has a .decoded.txt");
}

#[test]
fn raw_directory_reader_reports_losses_per_cpu() {
    let dir = common::samples("raw");
    let mut r = TracefsReader::open_path(&dir, ReadOptions::default()).unwrap();
    let events: Vec<_> = r.by_ref().map(Result::unwrap).collect();
    let lost: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Lost { count } => Some((e.cpu, count)),
            _ => None,
        })
        .collect();
    assert_eq!(lost, [(1, None), (1, Some(5316))]);
    let stats = r.stats();
    assert_eq!(stats.lost[&1].events, 5316);
    assert_eq!(stats.lost[&1].uncounted_markers, 1);
    assert!(events.windows(2).all(|w| (w[0].ts, w[0].cpu) <= (w[1].ts, w[1].cpu)));
    // The big ftrace:print (type_len 0) record is there with its 220-byte payload text.
    assert!(events.iter().any(|e| e.name() == "print"));
}
