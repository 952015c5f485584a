//! Untrusted bytes: truncated and corrupted real files, arbitrary bytes, and round trips of
//! pages built in code. Nothing may panic; truncation yields every complete record before the
//! cut plus an error; `--permissive` goes on after a bad page and counts it.

#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

use crate::common;

use std::sync::Arc;

use proptest::prelude::*;
use vmxray_capture::bin::Endian;
use vmxray_capture::bin::format::{EventFormat, PageLayout};
use vmxray_capture::bin::page::{PageItem, PageRecords, PageStream};
use vmxray_capture::read::perfdata::PerfDataReader;
use vmxray_capture::read::tracedat::TraceDat;
use vmxray_capture::write::page::PageBuilder;
use vmxray_capture::{EventReader, Location, ReadErrorKind, ReadOptions};

fn read_all_tracedat(bytes: Vec<u8>, permissive: bool) -> Option<(usize, Vec<String>)> {
    let td = Arc::new(TraceDat::from_bytes("t".into(), bytes).ok()?);
    let mut errors = Vec::new();
    let mut n = 0;
    for buffer in 0..td.buffers.len() {
        let Ok(r) = td.events(buffer, ReadOptions { permissive, ..ReadOptions::default() }) else {
            continue;
        };
        for ev in r {
            match ev {
                Ok(_) => n += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    Some((n, errors))
}

fn read_all_perf(bytes: Vec<u8>, permissive: bool) -> Option<(usize, usize)> {
    let r = PerfDataReader::from_bytes(
        "p".into(),
        bytes,
        ReadOptions { permissive, ..ReadOptions::default() },
    )
    .ok()?;
    let items: Vec<_> = r.collect();
    Some((items.iter().filter(|e| e.is_ok()).count(), items.iter().filter(|e| e.is_err()).count()))
}

#[test]
fn truncated_tracedat_keeps_records_before_the_cut() {
    for file in ["lm-v6.dat", "lm-v7-none.dat", "lm-v7-zstd.dat", "triple-fault-v7-zstd.dat"] {
        let full = std::fs::read(common::samples("tracedat").join(file)).unwrap();
        let (total, errs) = read_all_tracedat(full.clone(), false).unwrap();
        assert!(errs.is_empty());
        // Every cut point on a coarse grid, and a fine grid over the last 64 KiB (the data).
        let step = (full.len() / 97).max(1);
        let cuts = (0..full.len())
            .step_by(step)
            .chain((full.len().saturating_sub(65536)..full.len()).step_by(509));
        for cut in cuts {
            let Some((n, errs)) = read_all_tracedat(full[..cut].to_vec(), false) else { continue };
            assert!(n <= total, "{file} cut at {cut}");
            if n < total {
                assert!(!errs.is_empty(), "{file} cut at {cut}: {n}/{total} events and no error");
            }
        }
    }
}

#[test]
fn truncated_v6_data_reports_offset_after_complete_pages() {
    let full = std::fs::read(common::samples("tracedat").join("lm-v6.dat")).unwrap();
    let td = TraceDat::from_bytes("t".into(), full.clone()).unwrap();
    let cpu = td.buffers[0].cpus.iter().max_by_key(|c| c.size).copied().unwrap();
    // Cut in the middle of the CPU's first page: its records before the cut are kept.
    let cut = usize::try_from(cpu.offset).unwrap() + 2000;
    let td = Arc::new(TraceDat::from_bytes("t".into(), full[..cut].to_vec()).unwrap());
    let items: Vec<_> = td.events(0, ReadOptions::default()).unwrap().collect();
    let ok = items.iter().filter(|e| e.is_ok()).count();
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert!(ok > 0, "records before the cut are yielded");
    assert!(matches!(err.kind, ReadErrorKind::Page(_) | ReadErrorKind::TraceDat(_)), "{err}");
    assert!(matches!(err.at, Location::Offset(o) if o <= cut as u64), "{err}");
    assert!(err.to_string().contains("runcated"), "{err}");
}

#[test]
fn permissive_skips_a_bad_page_and_counts_it() {
    let mut bytes = std::fs::read(common::samples("tracedat").join("lm-v6.dat")).unwrap();
    let td = TraceDat::from_bytes("t".into(), bytes.clone()).unwrap();
    let (total, _) = read_all_tracedat(bytes.clone(), false).unwrap();
    // Corrupt the commit word of CPU 0's first page (the bigger CPU keeps going).
    let cpu0 = td.buffers[0].cpus[0];
    let at = usize::try_from(cpu0.offset).unwrap() + 8;
    bytes[at..at + 8].copy_from_slice(&0x7ff_ffffu64.to_le_bytes());
    let td = Arc::new(TraceDat::from_bytes("t".into(), bytes).unwrap());
    let strict: Vec<_> = td.events(0, ReadOptions::default()).unwrap().collect();
    let err = strict.iter().find_map(|e| e.as_ref().err()).expect("strict mode fails");
    assert_eq!(err.at, Location::Offset(cpu0.offset));
    let mut r = td.events(0, ReadOptions { permissive: true, ..ReadOptions::default() }).unwrap();
    let n = r.by_ref().inspect(|e| assert!(e.is_ok())).count();
    assert_eq!(r.stats().skipped, 1);
    assert!(n > 0 && n < total, "{n} of {total}");
}

#[test]
fn corrupted_files_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (dir, file) in [
        ("tracedat", "lm-v6.dat"),
        ("tracedat", "lm-v7-zstd.dat"),
        ("tracedat", "lm-v7-none.dat"),
        ("perf", "lm.perf.data"),
    ] {
        let full = std::fs::read(common::samples(dir).join(file)).unwrap();
        for round in 0..40 {
            let mut b = full.clone();
            for _ in 0..(1 + round % 8) {
                let i = usize::try_from(rand() % b.len() as u64).unwrap();
                b[i] = (rand() & 0xff) as u8;
            }
            for permissive in [false, true] {
                if dir == "perf" {
                    let _ = read_all_perf(b.clone(), permissive);
                } else {
                    let _ = read_all_tracedat(b.clone(), permissive);
                }
            }
        }
    }
}

#[test]
fn truncated_perf_data_keeps_records_before_the_cut() {
    let full = std::fs::read(common::samples("perf").join("lm.perf.data")).unwrap();
    let (total, errs) = read_all_perf(full.clone(), false).unwrap();
    assert_eq!((total, errs), (62, 0));
    for cut in (0..full.len()).step_by(997) {
        if let Some((n, _)) = read_all_perf(full[..cut].to_vec(), false) {
            assert!(n <= total);
        }
    }
}

fn layout(endian: Endian, commit_size: u32) -> PageLayout {
    let mut l = PageLayout::default_64(endian);
    if commit_size == 4 {
        l.commit_size = 4;
        l.data_offset = 12;
    }
    l
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Pages built like the kernel builds them decode to the same records and timestamps, in
    /// both byte orders and for 32- and 64-bit kernels.
    #[test]
    fn built_pages_round_trip(
        big_endian: bool,
        long4: bool,
        start in 0u64..(1 << 62),
        events in proptest::collection::vec((0u64..(1 << 32), 1usize..300), 0..20),
        lost in proptest::option::of(proptest::option::of(0u64..1 << 40)),
    ) {
        let endian = if big_endian { Endian::Big } else { Endian::Little };
        let l = layout(endian, if long4 { 4 } else { 8 });
        let mut b = PageBuilder::new(l, start);
        if let Some(count) = lost {
            b = b.lost(count.map(|c| if long4 { c & 0xffff_ffff } else { c }));
        }
        let mut expect = Vec::new();
        let mut ts = start;
        for (i, (delta, len)) in events.iter().enumerate() {
            let payload: Vec<u8> = (0..*len).map(|j| (i * 31 + j) as u8).collect();
            let next = b.clone().event(*delta, &payload);
            if next.data_len() + 8 > (l.page_size - l.data_offset) as usize {
                break;
            }
            b = next;
            ts += delta;
            expect.push((ts, payload));
        }
        let page = b.build();
        let mut got = Vec::new();
        let mut lost_seen = None;
        for item in PageRecords::new(&l, &page).unwrap() {
            match item.unwrap() {
                PageItem::Event { ts, payload, .. } => got.push((ts, payload.to_vec())),
                PageItem::Lost { count, .. } => lost_seen = Some(count),
            }
        }
        prop_assert_eq!(got.len(), expect.len());
        for ((gt, gp), (et, ep)) in got.iter().zip(&expect) {
            prop_assert_eq!(gt, et);
            prop_assert_eq!(&gp[..ep.len()], &ep[..]);
        }
        prop_assert_eq!(lost_seen.is_some(), lost.is_some());
        if let (Some(Some(c)), Some(seen)) = (lost, lost_seen) {
            let c = if long4 { c & 0xffff_ffff } else { c };
            prop_assert_eq!(seen, Some(c));
        }
    }

    /// Arbitrary bytes as pages, page streams, format files, trace.dat and perf.data.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..6000), be: bool) {
        let l = layout(if be { Endian::Big } else { Endian::Little }, 8);
        if let Ok(recs) = PageRecords::new(&l, &bytes) {
            for _ in recs {}
        }
        for _ in PageStream::new(&l, &bytes, 0) {}
        let _ = EventFormat::parse("x", &bytes, 8);
        let _ = PageLayout::parse(&bytes, Some(&bytes), Endian::Little);
        let mut td = b"\x17\x08\x44tracing6\0".to_vec();
        td.extend_from_slice(&bytes);
        let _ = read_all_tracedat(td, true);
        let mut td7 = b"\x17\x08\x44tracing7\x00\x00\x08\x00\x10\x00\x00zstd\x001.5\x00".to_vec();
        td7.extend_from_slice(&bytes);
        let _ = read_all_tracedat(td7, false);
        let mut perf = b"PERFILE2".to_vec();
        perf.extend_from_slice(&bytes);
        let _ = read_all_perf(perf, true);
    }

    /// Real pages with random bytes overwritten decode or fail cleanly.
    #[test]
    fn mutated_real_pages_never_panic(at in 0usize..4096, v: u8, n in 1usize..16) {
        let page = std::fs::read(common::samples("raw").join("sample_raw_lost_stored_cpu1.bin")).unwrap();
        let mut page = page[..4096].to_vec();
        for i in 0..n {
            page[(at + i * 97) % 4096] = v.wrapping_add(i as u8);
        }
        let l = PageLayout::default_64(Endian::Little);
        for _ in PageStream::new(&l, &page, 0) {}
    }
}

/// Appends an OPTIONS section with a second BUFFER option (instance `inst`, same CPU data) to a
/// v7 file, chained from the last DONE: the reader must expose both buffers.
#[test]
fn v7_instances_are_exposed_as_buffers() {
    let mut b = std::fs::read(common::samples("tracedat").join("lm-v7-none.dat")).unwrap();
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // magic(10) "7\0" endian longsize pagesize(4) "none\0" "\0" then the first OPTIONS offset.
    let mut p = 10 + 2 + 1 + 1 + 4;
    p += b[p..].iter().position(|c| *c == 0).unwrap() + 1;
    p += b[p..].iter().position(|c| *c == 0).unwrap() + 1;
    let mut section = u64at(&b, p) as usize;
    let (done_at, buffer_opt) = loop {
        let size = u64at(&b, section + 8) as usize;
        let mut q = section + 16;
        let mut buffer = None;
        let mut done = None;
        while q < section + 16 + size {
            let (id, len) = (u16at(&b, q), u32at(&b, q + 2) as usize);
            if id == 3 {
                buffer = Some(b[q + 6..q + 6 + len].to_vec());
            }
            if id == 0 {
                done = Some(q + 6);
                break;
            }
            q += 6 + len;
        }
        let done = done.unwrap();
        match u64at(&b, done) {
            0 => break (done, buffer.unwrap()),
            next => section = next as usize,
        }
    };
    // The copy: same section pointer, name "inst", same clock, page size and CPU list.
    let mut opt = buffer_opt[..8].to_vec();
    opt.extend_from_slice(b"inst");
    opt.extend_from_slice(&buffer_opt[8..]);
    let mut body = Vec::new();
    body.extend_from_slice(&3u16.to_le_bytes());
    body.extend_from_slice(&(opt.len() as u32).to_le_bytes());
    body.extend_from_slice(&opt);
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&8u32.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    let new_at = b.len() as u64;
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(body.len() as u64).to_le_bytes());
    b.extend_from_slice(&body);
    b[done_at..done_at + 8].copy_from_slice(&new_at.to_le_bytes());
    let td = Arc::new(TraceDat::from_bytes("t".into(), b).unwrap());
    let names: Vec<&str> = td.buffers.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["", "inst"]);
    let top = td.events(0, ReadOptions::default()).unwrap().count();
    let inst = td.events(1, ReadOptions::default()).unwrap().count();
    assert_eq!((top, inst), (62, 62));
}
