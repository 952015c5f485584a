//! Salvage of damaged trace.dat files: the recorder's own files (samples/lab) and trace-cmd's
//! (samples/real/tracedat) cut at every 4 KiB boundary, and damaged section tables.
//!
//! For every cut: nothing panics; strict mode either reads every event or fails with an error
//! that names an offset and what was expected; `--permissive` (a salvaging open) yields, per
//! CPU stream, a prefix of that CPU's events in the whole file (equal events, in time order),
//! never fewer events for a longer prefix, and says how much was recovered and lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmxray_capture::read::salvage::SalvageSummary;
use vmxray_capture::read::tracedat::{TraceDat, TraceDatError};
use vmxray_capture::{EventReader as _, Location, ReadErrorKind, ReadOptions};
use vmxray_events::Event;

use crate::common;

fn lab(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/lab").join(name)
}

/// The events of a whole file, by CPU.
fn by_cpu(events: &[Event]) -> BTreeMap<u32, Vec<&Event>> {
    let mut map: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
    for ev in events {
        map.entry(ev.cpu).or_default().push(ev);
    }
    map
}

/// An event without its CPU (salvage may only guess the CPU number).
fn sans_cpu(ev: &Event) -> Event {
    Event { cpu: 0, ..ev.clone() }
}

/// `salvaged` is `whole`'s event, but for a comm the salvaged file does not know: the
/// recorder stores the final pid → comm table after the data, so a cut loses it.
fn same_event(whole: &Event, salvaged: &Event, cpu_known: bool) -> bool {
    let comm = if salvaged.comm.is_none() { None } else { whole.comm.clone() };
    let cpu = if cpu_known { whole.cpu } else { salvaged.cpu };
    Event { cpu, comm, ..whole.clone() } == *salvaged
}

struct Salvaged {
    events: Vec<Event>,
    summary: Option<SalvageSummary>,
    skipped: u64,
}

fn salvage(bytes: &[u8]) -> Option<Salvaged> {
    let td = Arc::new(TraceDat::from_bytes_salvaging("cut".into(), bytes.to_vec()).ok()?);
    let summary = td.salvage.as_ref().map(|(s, _, _)| *s);
    let mut reader =
        td.events(0, ReadOptions { permissive: true, ..ReadOptions::default() }).ok()?;
    let events: Vec<Event> = reader.by_ref().map(|e| e.expect("permissive never fails")).collect();
    Some(Salvaged { events, summary, skipped: reader.stats().skipped })
}

/// Checks one cut of `full` (whose events are `all`); returns the events salvaged.
fn check_cut(file: &str, full: &[u8], all: &[Event], cut: usize) -> usize {
    let bytes = &full[..cut];
    // Strict: everything, or an error naming an offset and what was expected.
    let strict = TraceDat::from_bytes("cut".into(), bytes.to_vec()).map(Arc::new);
    let strict_events = match &strict {
        Err(e) => {
            assert!(matches!(e.at, Location::Offset(_)), "{file}@{cut}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("expected") || text.contains("Expected") || cut < 10,
                "{file}@{cut}: strict error says what was expected: {text}"
            );
            0
        }
        Ok(td) => {
            let items: Vec<_> = td.events(0, ReadOptions::default()).unwrap().collect();
            let ok = items.iter().filter(|e| e.is_ok()).count();
            if ok < all.len() {
                let err = items.iter().find_map(|e| e.as_ref().err());
                let err = err.unwrap_or_else(|| panic!("{file}@{cut}: {ok} events, no error"));
                assert!(
                    matches!(err.at, Location::Offset(_) | Location::CpuOffset { .. }),
                    "{file}@{cut}: {err}"
                );
            }
            ok
        }
    };

    let Some(got) = salvage(bytes) else {
        // Salvage needs the formats: only a cut inside the metadata may refuse the file.
        assert_eq!(strict_events, 0, "{file}@{cut}: strict read events that salvage refused");
        return 0;
    };
    assert!(got.events.len() >= strict_events, "{file}@{cut}: salvage found fewer than strict");
    assert!(got.events.windows(2).all(|w| w[0].ts <= w[1].ts), "{file}@{cut}: not in time order");
    let full_by_cpu = by_cpu(all);
    let guessed = got.summary.is_some_and(|s| s.cpus_guessed);
    for (cpu, stream) in by_cpu(&got.events) {
        let matches_cpu = |events: &Vec<&Event>| {
            events.len() >= stream.len()
                && events.iter().zip(&stream).all(|(a, b)| same_event(a, b, !guessed))
        };
        let ok = if guessed {
            full_by_cpu.values().any(matches_cpu)
        } else {
            full_by_cpu.get(&cpu).is_some_and(matches_cpu)
        };
        assert!(ok, "{file}@{cut}: CPU {cpu}'s {} events are no prefix of a CPU's", stream.len());
    }
    if got.events.len() < all.len() {
        let summary = got.summary.unwrap_or_else(|| panic!("{file}@{cut}: loss without summary"));
        assert!(got.skipped >= 1, "{file}@{cut}: the salvage is counted");
        if got.events.is_empty() {
            assert_eq!(summary.pages, 0, "{file}@{cut}: {summary:?}");
        } else {
            assert!(summary.pages > 0 && summary.bytes > 0, "{file}@{cut}: {summary:?}");
        }
    }
    got.events.len()
}

/// Cuts at every 4 KiB boundary from `from`, and the whole file; returns (cuts, events per
/// cut) for the report.
fn cut_everywhere(file: &str, full: &[u8], from: usize) -> Vec<(usize, usize)> {
    let td = Arc::new(TraceDat::from_bytes(file.into(), full.to_vec()).unwrap());
    let all: Vec<Event> =
        td.events(0, ReadOptions::default()).unwrap().map(Result::unwrap).collect();
    assert!(!all.is_empty());
    let mut out = Vec::new();
    let mut last = 0;
    let cuts = (from.div_ceil(4096) * 4096..full.len()).step_by(4096).chain([full.len()]);
    for cut in cuts {
        let n = check_cut(file, full, &all, cut);
        assert!(n >= last, "{file}: {n} events at cut {cut}, {last} at a shorter one");
        last = n;
        out.push((cut, n));
    }
    assert_eq!(last, all.len(), "{file}: the whole file salvages whole");
    out
}

#[test]
fn recorder_files_cut_at_every_4k() {
    let mut report = Vec::new();
    for name in [
        "cr3-switch-mmu.dat",
        "flight-triple-fault-all.dat",
        "io-loop-200.dat",
        "multi-vcpu-50.dat",
        "pf-triple-fault.dat",
        "triple-fault.dat",
    ] {
        let full = std::fs::read(lab(name)).unwrap();
        let cuts = cut_everywhere(name, &full, 0);
        report.push(format!("{name}: {cuts:?}"));
    }
    eprintln!("salvaged events per cut (bytes, events):\n{}", report.join("\n"));
}

#[test]
fn trace_cmd_files_cut_at_every_4k_of_their_data() {
    for name in [
        "lm-v6.dat",
        "lm-v7-none.dat",
        "lm-v7-zstd.dat",
        "triple-fault-v7-zstd.dat",
        "comm-spaces-v7-zstd.dat",
        "lost-v7-zstd.dat",
    ] {
        let full = std::fs::read(common::samples("tracedat").join(name)).unwrap();
        let td = TraceDat::from_bytes(name.into(), full.clone()).unwrap();
        // The data lies at the end of these files (after a large kallsyms section): every 4 KiB
        // from the first CPU's data on, and a coarse grid over the metadata before it.
        let data = td.buffers[0].cpus.iter().map(|d| d.offset).min().unwrap();
        let data = usize::try_from(data).unwrap();
        let all: Vec<Event> =
            Arc::new(td).events(0, ReadOptions::default()).unwrap().map(Result::unwrap).collect();
        for cut in (0..data).step_by(data / 16 + 1) {
            check_cut(name, &full, &all, cut);
        }
        let cuts = cut_everywhere(name, &full, data.saturating_sub(4096));
        eprintln!("{name}: {cuts:?}");
    }
}

#[test]
fn a_damaged_cpu_index_is_replaced_by_a_scan() {
    // lm-v7-none: point the BUFFER option's first CPU entry into the formats.
    let full = std::fs::read(common::samples("tracedat").join("lm-v7-none.dat")).unwrap();
    let td = TraceDat::from_bytes("f".into(), full.clone()).unwrap();
    let all: Vec<Event> =
        Arc::new(td).events(0, ReadOptions::default()).unwrap().map(Result::unwrap).collect();
    let first = std::fs::read(common::samples("tracedat").join("lm-v7-none.dat")).unwrap();
    let td = TraceDat::from_bytes("f".into(), first).unwrap();
    let entry = td.buffers[0].cpus[0].offset.to_le_bytes();
    let at = full.windows(8).rposition(|w| w == entry).expect("the entry's offset is in the file");
    let mut damaged = full.clone();
    damaged[at..at + 8].copy_from_slice(&4096u64.to_le_bytes());
    let got = salvage(&damaged).expect("salvaged");
    let summary = got.summary.expect("a summary");
    assert!(summary.scanned && summary.cpus_guessed, "{summary:?}");
    assert_eq!(got.events.len(), all.len());
    let mut expect: Vec<Event> = all.iter().map(sans_cpu).collect();
    let mut found: Vec<Event> = got.events.iter().map(sans_cpu).collect();
    expect.sort_by_key(|e| (e.ts, e.pid));
    found.sort_by_key(|e| (e.ts, e.pid));
    assert_eq!(found, expect);

    // v6: a damaged flyrecord table (the first CPU's offset zeroed).
    let full = std::fs::read(common::samples("tracedat").join("lm-v6.dat")).unwrap();
    let td = TraceDat::from_bytes("f".into(), full.clone()).unwrap();
    let n = Arc::new(td).events(0, ReadOptions::default()).unwrap().count();
    let td = TraceDat::from_bytes("f".into(), full.clone()).unwrap();
    let entry = td.buffers[0].cpus[0].offset.to_le_bytes();
    let at = full.windows(8).position(|w| w == entry).unwrap();
    let mut damaged = full;
    damaged[at..at + 8].copy_from_slice(&8u64.to_le_bytes());
    let got = salvage(&damaged).expect("salvaged");
    assert_eq!(got.events.len(), n);
    assert!(got.summary.is_some_and(|s| s.scanned));
}

#[test]
fn the_salvage_is_reported_with_its_figures() {
    let full = std::fs::read(lab("flight-triple-fault-all.dat")).unwrap();
    let cut = full.len() - 3000;
    let td =
        Arc::new(TraceDat::from_bytes_salvaging("cut.dat".into(), full[..cut].to_vec()).unwrap());
    let mut reader =
        td.events(0, ReadOptions { permissive: true, ..ReadOptions::default() }).unwrap();
    let n = reader.by_ref().count();
    let problem = &reader.stats().problems[0];
    let ReadErrorKind::TraceDat(TraceDatError::Salvaged { summary, cause }) = &problem.kind else {
        panic!("{problem}");
    };
    assert!(cause.is_some(), "the damage found is the source");
    let text = problem.to_string();
    assert!(text.starts_with("cut.dat at offset 0x"), "{text}");
    assert!(text.contains(&format!("salvaged {} complete pages", summary.pages)), "{text}");
    assert!(n > 0 && summary.pages > 0, "{text}");
    // Strict mode on the same bytes names the offset and what was missing.
    let err = TraceDat::from_bytes("cut.dat".into(), full[..cut].to_vec()).unwrap_err();
    assert!(err.to_string().contains("at offset 0x") && err.to_string().contains("expected"));
}

/// Writes the pages of a trace-cmd file again with vmxray's recorder writer, the way a
/// recording produces them: CPUs' pages arriving interleaved, two pages per chunk, a
/// checkpoint every 16 pages (so the chunk lists interleave, linked by gap chunks, with
/// checkpoint OPTIONS between them, and the final index at the end).
fn rerecord(file: &Path, out: &Path) -> Vec<u8> {
    use vmxray_capture::write::{Metadata, TraceDatWriter, WriterOptions};
    let td = TraceDat::from_bytes("src".into(), std::fs::read(file).unwrap()).unwrap();
    let page = td.buffers[0].page_size as usize;
    let mut ftrace_formats = Vec::new();
    let mut event_formats: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for f in td.formats.iter() {
        let text = f.text.as_bytes().to_vec();
        if &*f.system == "ftrace" {
            ftrace_formats.push(text);
        } else if let Some((_, list)) = event_formats.iter_mut().find(|(s, _)| *s == *f.system) {
            list.push(text);
        } else {
            event_formats.push((f.system.to_string(), vec![text]));
        }
    }
    let cpus: Vec<u32> = td.buffers[0].cpus.iter().map(|d| d.cpu).collect();
    let meta = Metadata {
        page_size: td.buffers[0].page_size,
        header_page: td.texts.header_page.clone(),
        header_event: td.texts.header_event.clone(),
        ftrace_formats,
        event_formats,
        kallsyms: Vec::new(),
        printk_formats: td.texts.printk.clone(),
        trace_clock: format!("[{}]", td.buffers[0].clock),
        uname: td.uname.clone().unwrap_or_default(),
        version: "vmxray salvage test".into(),
        cpus: cpus.iter().max().unwrap() + 1,
        trace_id: 1,
    };
    let pages: Vec<Vec<Vec<u8>>> = cpus
        .iter()
        .map(|&cpu| td.cpu_pages(0, cpu).unwrap().chunks(page).map(<[u8]>::to_vec).collect())
        .collect();
    let opts = WriterOptions { pages_per_chunk: 2, ..WriterOptions::default() };
    let mut w = TraceDatWriter::create(out, meta, opts).unwrap();
    let mut written = 0;
    for round in 0..pages.iter().map(Vec::len).max().unwrap() {
        for (i, cpu_pages) in pages.iter().enumerate() {
            if let Some(p) = cpu_pages.get(round) {
                w.write_page(cpus[i], p).unwrap();
                written += 1;
                if written % 16 == 0 {
                    w.checkpoint(None).unwrap();
                }
            }
        }
    }
    w.finish(Some(&td.texts.cmdlines), &[]).unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn a_recording_with_interleaved_cpus_cut_at_every_4k() {
    let out = std::env::temp_dir().join(format!("vmxray-salvage-{}.dat", std::process::id()));
    let full = rerecord(&common::samples("tracedat").join("lost-v7-zstd.dat"), &out);
    let _ = std::fs::remove_file(&out);
    let cuts = cut_everywhere("rerecorded lost-v7-zstd", &full, 0);
    let recovered: Vec<String> = cuts.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    eprintln!("rerecorded lost-v7-zstd ({} bytes): {}", full.len(), recovered.join(" "));
    // Every cut 8 KiB past the start of the data recovers events, and the last cut before
    // the end (which loses the final index) recovers nearly everything.
    let td = TraceDat::from_bytes("full".into(), full.clone()).unwrap();
    let data = usize::try_from(td.buffers[0].cpus.iter().map(|d| d.offset).min().unwrap()).unwrap();
    for (cut, n) in &cuts {
        assert!(*cut < data + 8192 || *n > 0, "nothing salvaged from {cut} bytes");
    }
    let (_, total) = cuts[cuts.len() - 1];
    let (_, last_cut) = cuts[cuts.len() - 2];
    assert!(last_cut * 100 >= total * 95, "{last_cut} of {total}");
}

#[test]
fn perf_data_cut_or_damaged() {
    use vmxray_capture::read::perfdata::{PerfDataError, PerfDataReader};
    let full = std::fs::read(common::samples("perf").join("lm.perf.data")).unwrap();
    let read = |bytes: &[u8], permissive: bool| {
        PerfDataReader::from_bytes(
            "p".into(),
            bytes.to_vec(),
            ReadOptions { permissive, ..ReadOptions::default() },
        )
    };
    let total = read(&full, false).unwrap().map(Result::unwrap).count();
    // perf writes the event formats (a feature section) after the data: a cut file cannot be
    // decoded, and says so with the bytes of records it holds.
    for cut in (4096..full.len()).step_by(4096) {
        let err = match read(&full[..cut], true) {
            // Cut after the tracing data (in later feature sections): the data is whole.
            Ok(r) => {
                assert_eq!(r.map(Result::unwrap).count(), total, "cut {cut}");
                continue;
            }
            Err(err) => err,
        };
        assert!(matches!(err.at, Location::Offset(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("expected"), "cut {cut}: {text}");
        if let ReadErrorKind::PerfData(PerfDataError::FeaturesLost { data_bytes, .. }) = err.kind {
            assert!(text.contains(&format!("{data_bytes} bytes of records")), "{text}");
        }
    }
    // A damaged record size in the middle of the data: strict stops there, permissive skips
    // to the next record that makes sense and reads on.
    let data_off = u64::from_le_bytes(full[40..48].try_into().unwrap());
    let data_size = u64::from_le_bytes(full[48..56].try_into().unwrap());
    let mut pos = usize::try_from(data_off).unwrap();
    let end = usize::try_from(data_off + data_size).unwrap();
    let mut headers = Vec::new();
    while pos + 8 <= end {
        headers.push(pos);
        pos += usize::from(u16::from_le_bytes([full[pos + 6], full[pos + 7]]));
    }
    let victim = headers[headers.len() / 2];
    let mut damaged = full.clone();
    damaged[victim + 6..victim + 8].copy_from_slice(&3u16.to_le_bytes());
    let strict: Vec<_> = read(&damaged, false).unwrap().collect();
    let err = strict.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.at, Location::Offset(victim as u64), "{err}");
    let mut permissive = read(&damaged, true).unwrap();
    let events: Vec<_> = permissive.by_ref().map(Result::unwrap).collect();
    let strict_ok = strict.iter().filter(|e| e.is_ok()).count();
    assert!(events.len() > strict_ok, "{} vs strict {strict_ok}", events.len());
    assert!(events.len() < total + 1);
    let problems: Vec<String> = permissive.stats().problems.iter().map(|p| p.to_string()).collect();
    assert!(problems.iter().any(|p| p.contains("Damaged records: skipped")), "{problems:?}");
    eprintln!("perf.data damaged at {victim:#x}: {} of {total} events, {problems:?}", events.len());
}
