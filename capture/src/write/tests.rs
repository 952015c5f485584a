//! Writer tests: pages built in code go in, the file's structure is walked back (option chain,
//! BUFFER option, chunk lists with their gaps) and the pages must come out identical; when
//! `trace-cmd` is installed it must report the same events.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::bin::Endian;
use crate::bin::format::PageLayout;
use crate::write::page::PageBuilder;

pub(crate) const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

pub(crate) const HEADER_EVENT: &str = "# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
";

/// `kvm_userspace_exit` as 6.18 prints it (print fmt shortened to the symbols used here).
pub(crate) const USERSPACE_EXIT_FORMAT: &str = "name: kvm_userspace_exit
ID: 42
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__u32 reason;\toffset:8;\tsize:4;\tsigned:0;
\tfield:int errno;\toffset:12;\tsize:4;\tsigned:1;

print fmt: \"reason %s (%d)\", REC->errno < 0 ? (REC->errno == -4 ? \"restart\" : \"error\") : __print_symbolic(REC->reason, { 2, \"KVM_EXIT_\" \"IO\" }, { 8, \"KVM_EXIT_\" \"SHUTDOWN\" }), REC->errno < 0 ? -REC->errno : REC->reason
";

pub(crate) fn test_metadata(cpus: u32) -> Metadata {
    Metadata {
        page_size: 4096,
        header_page: HEADER_PAGE.as_bytes().to_vec(),
        header_event: HEADER_EVENT.as_bytes().to_vec(),
        ftrace_formats: Vec::new(),
        event_formats: vec![("kvm".into(), vec![USERSPACE_EXIT_FORMAT.as_bytes().to_vec()])],
        kallsyms: Vec::new(),
        printk_formats: Vec::new(),
        trace_clock: "local global counter uptime perf [mono] mono_raw boot tai x86-tsc".into(),
        uname: "Linux test 6.18.0 #1 SMP x86_64".into(),
        version: "vmxray-test".into(),
        cpus,
        trace_id: 0x1234,
    }
}

fn exit_payload(pid: i32, reason: u32) -> Vec<u8> {
    let mut p = 42u16.to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0]); // common_flags, common_preempt_count
    p.extend_from_slice(&pid.to_le_bytes());
    p.extend_from_slice(&reason.to_le_bytes());
    p.extend_from_slice(&0i32.to_le_bytes()); // errno
    p
}

/// Pages with `n` events each, timestamps `base + i*1000`; returns the pages and the stamps.
fn pages_for_cpu(cpu: u32, pages: usize, per_page: usize, base: u64) -> (Vec<Vec<u8>>, Vec<u64>) {
    let mut out = Vec::new();
    let mut stamps = Vec::new();
    let mut ts = base;
    let layout = PageLayout::default_64(Endian::Little);
    for _ in 0..pages {
        let mut b = PageBuilder::new(layout, ts);
        let mut prev = ts;
        for _ in 0..per_page {
            let payload = exit_payload(1000 + i32::try_from(cpu).unwrap(), 2);
            b = b.event(ts - prev, &payload);
            prev = ts;
            stamps.push(ts);
            ts += 1000;
        }
        assert!(b.data_len() <= 4080);
        out.push(b.build());
    }
    (out, stamps)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn cstr_at(b: &[u8], at: usize) -> (&str, usize) {
    let end = at + b[at..].iter().position(|&c| c == 0).unwrap();
    (std::str::from_utf8(&b[at..end]).unwrap(), end + 1)
}

/// A structural walk of a v7 file as trace-cmd does it: header, the OPTIONS chain from the
/// pointer after the compression name, the last top BUFFER option, each CPU's chunk list.
/// Returns the decompressed page stream of each CPU, and the CPUSTAT texts.
pub(crate) fn walk(path: &Path) -> (BTreeMap<u32, Vec<u8>>, Vec<String>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..10], b"\x17\x08\x44tracing");
    let (version, at) = cstr_at(&b, 10);
    assert_eq!(version, "7");
    let page_size = u32_at(&b, at + 2);
    let (compression, at) = cstr_at(&b, at + 6);
    assert_eq!(compression, "zstd");
    let (_, at) = cstr_at(&b, at);
    let mut options = u64_at(&b, at);
    let mut cpus = BTreeMap::new();
    let mut stats = Vec::new();
    while options != 0 {
        let at = usize::try_from(options).unwrap();
        assert_eq!(u16_at(&b, at), 0, "OPTIONS section id");
        let mut p = at + 16;
        loop {
            let id = u16_at(&b, p);
            let size = u32_at(&b, p + 2) as usize;
            let data = &b[p + 6..p + 6 + size];
            p += 6 + size;
            match id {
                0 => {
                    options = u64_at(data, 0);
                    break;
                }
                2 => stats.push(cstr_at(data, 0).0.to_string()),
                3 => {
                    cpus.clear();
                    let (name, q) = cstr_at(data, 8);
                    assert_eq!(name, "");
                    let (clock, q) = cstr_at(data, q);
                    assert_eq!(clock, "mono");
                    assert_eq!(u32_at(data, q), page_size);
                    let n = u32_at(data, q + 4) as usize;
                    for i in 0..n {
                        let e = q + 8 + i * 20;
                        cpus.insert(u32_at(data, e), (u64_at(data, e + 4), u64_at(data, e + 12)));
                    }
                }
                _ => {}
            }
        }
    }
    let mut streams = BTreeMap::new();
    for (cpu, (head, size)) in cpus {
        let head = usize::try_from(head).unwrap();
        let count = u32_at(&b, head);
        let mut p = head + 4;
        let mut out = Vec::new();
        for _ in 0..count {
            let zsize = u32_at(&b, p) as usize;
            let usize_ = u32_at(&b, p + 4) as usize;
            let frame = &b[p + 8..p + 8 + zsize];
            let data = zstd::bulk::decompress(frame, usize_.max(1)).unwrap();
            assert_eq!(data.len(), usize_);
            out.extend_from_slice(&data);
            p += 8 + zsize;
        }
        assert_eq!((p - head - 4) as u64, size, "BUFFER option size = sum of (8 + zsize)");
        streams.insert(cpu, out);
    }
    (streams, stats)
}

use std::collections::BTreeMap;

#[test]
fn pages_round_trip_through_interleaved_chunks() {
    let path = tmp("roundtrip.dat");
    let mut w = TraceDatWriter::create(&path, test_metadata(2), WriterOptions::default()).unwrap();
    let (p0, _) = pages_for_cpu(0, 23, 100, 1_000_000);
    let (p1, _) = pages_for_cpu(1, 7, 50, 1_000_500);
    // Interleave the CPUs page by page, with a checkpoint in the middle, as the recorder does.
    for i in 0..23 {
        w.write_page(0, &p0[i]).unwrap();
        if i < 7 {
            w.write_page(1, &p1[i]).unwrap();
        }
        if i == 12 {
            w.checkpoint(Some(b"1000 guest\n")).unwrap();
        }
    }
    let summary = w.finish(Some(b"1000 guest\n1001 guest2\n"), &["CPU: 0\nentries: 0\n".into()]);
    let summary = summary.unwrap();
    assert_eq!(summary.pages, vec![23, 7]);
    assert_eq!(summary.checkpoints, 2);
    let (streams, stats) = walk(&path);
    assert_eq!(streams[&0], p0.concat());
    assert_eq!(streams[&1], p1.concat());
    assert_eq!(stats, vec!["CPU: 0\nentries: 0\n".to_string()]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_killed_writer_leaves_everything_up_to_its_last_checkpoint() {
    let path = tmp("killed.dat");
    let mut w = TraceDatWriter::create(&path, test_metadata(2), WriterOptions::default()).unwrap();
    let (p0, _) = pages_for_cpu(0, 15, 100, 5_000);
    for page in &p0[..11] {
        w.write_page(0, page).unwrap();
    }
    w.checkpoint(None).unwrap();
    for page in &p0[11..] {
        w.write_page(0, page).unwrap();
    }
    w.write_page(1, &p0[0]).unwrap();
    // Dropped without finish: what SIGKILL leaves (chunks written after the checkpoint are
    // unreferenced).
    drop(w);
    let (streams, _) = walk(&path);
    assert_eq!(streams[&0], p0[..11].concat());
    assert!(!streams.contains_key(&1));
}

#[test]
fn an_empty_recording_is_a_valid_file() {
    let path = tmp("empty.dat");
    let w = TraceDatWriter::create(&path, test_metadata(2), WriterOptions::default()).unwrap();
    w.finish(None, &[]).unwrap();
    let (streams, _) = walk(&path);
    assert!(streams.is_empty());
}

#[test]
fn wrong_page_size_and_cpu_are_errors() {
    let path = tmp("errors.dat");
    let mut w = TraceDatWriter::create(&path, test_metadata(1), WriterOptions::default()).unwrap();
    assert!(matches!(w.write_page(0, &[0; 100]), Err(WriteError::PageSize { .. })));
    assert!(matches!(w.write_page(3, &[0; 4096]), Err(WriteError::Cpu { cpu: 3, cpus: 1 })));
}

/// `trace-cmd report` must print exactly the events of the input pages. Skipped when trace-cmd
/// is not installed (fails under `CI=true`).
#[test]
fn trace_cmd_reports_the_written_events() {
    if Command::new("trace-cmd").arg("--version").output().is_err() {
        vmxray_events::test_util::skip("trace-cmd is not installed");
        return;
    }
    let path = tmp("report.dat");
    let mut w = TraceDatWriter::create(&path, test_metadata(2), WriterOptions::default()).unwrap();
    let (p0, s0) = pages_for_cpu(0, 25, 150, 2_000_000_000);
    let (p1, s1) = pages_for_cpu(1, 3, 20, 2_000_000_700);
    for (i, page) in p0.iter().enumerate() {
        w.write_page(0, page).unwrap();
        if let Some(page) = p1.get(i) {
            w.write_page(1, page).unwrap();
        }
        if i % 7 == 6 {
            w.checkpoint(Some(b"1000 vcpu0\n1001 vcpu1\n")).unwrap();
        }
    }
    w.finish(None, &[]).unwrap();
    let out = Command::new("trace-cmd").args(["report", "-t"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("kvm_userspace_exit")).collect();
    assert_eq!(lines.len(), s0.len() + s1.len(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lines.iter().all(|l| l.contains("KVM_EXIT_IO")));
    assert!(lines[0].contains("vcpu0-1000"), "{}", lines[0]);
    let on_cpu1 = lines.iter().filter(|l| l.contains("[001]")).count();
    assert_eq!(on_cpu1, s1.len());
    // sec.nsec stamps, merged in time order.
    let stamps: Vec<u64> = lines
        .iter()
        .map(|l| {
            let field = l.split(']').nth(1).unwrap().trim().split(':').next().unwrap();
            let (s, ns) = field.split_once('.').unwrap();
            s.parse::<u64>().unwrap() * 1_000_000_000 + ns.parse::<u64>().unwrap()
        })
        .collect();
    let mut expected: Vec<u64> = s0.iter().chain(&s1).copied().collect();
    expected.sort_unstable();
    assert_eq!(stamps, expected);
}

/// vmxray's own trace.dat reader reads what the writer writes, gap chunks and checkpoints
/// included, complete or killed.
#[test]
fn vmxray_reader_reads_the_written_events() {
    let path = tmp("reader.dat");
    let mut w = TraceDatWriter::create(&path, test_metadata(2), WriterOptions::default()).unwrap();
    let (p0, s0) = pages_for_cpu(0, 17, 120, 3_000_000_000);
    let (p1, s1) = pages_for_cpu(1, 4, 30, 3_000_000_300);
    for (i, page) in p0.iter().enumerate() {
        w.write_page(0, page).unwrap();
        if let Some(page) = p1.get(i) {
            w.write_page(1, page).unwrap();
        }
        if i == 9 {
            w.checkpoint(Some(b"1000 vcpu0\n")).unwrap();
        }
    }
    w.finish(None, &["CPU: 0\nentries: 0\n".into(), "CPU: 1\nentries: 0\n".into()]).unwrap();
    let reader = crate::open(&path, crate::ReadOptions::default()).unwrap();
    assert_eq!(reader.meta().clock.name(), "mono");
    let events: Vec<crate::Event> = reader.map(Result::unwrap).collect();
    let mut expected: Vec<(u64, u32)> =
        s0.iter().map(|t| (*t, 0)).chain(s1.iter().map(|t| (*t, 1))).collect();
    expected.sort_unstable();
    let got: Vec<(u64, u32)> = events.iter().map(|e| (e.ts, e.cpu)).collect();
    assert_eq!(got, expected);
    assert!(events.iter().all(|e| matches!(
        e.kind,
        vmxray_events::EventKind::KvmUserspaceExit { reason, .. } if reason == vmxray_events::codes::UserspaceExitReason::IO
    )));
}

/// A CPU idle while another writes more than `max_gap` bytes gets empty chunks that keep its
/// gaps below the limit; readers still see exactly its pages.
#[test]
fn idle_cpus_are_relinked_by_empty_chunks() {
    let path = tmp("relink.dat");
    let opts = WriterOptions { max_gap: 3000, ..WriterOptions::default() };
    let mut w = TraceDatWriter::create(&path, test_metadata(2), opts).unwrap();
    let (p0, s0) = pages_for_cpu(0, 60, 150, 1_000_000_000);
    let (p1, s1) = pages_for_cpu(1, 1, 10, 1_000_000_100);
    w.write_page(1, &p1[0]).unwrap();
    w.checkpoint(None).unwrap();
    for page in &p0 {
        w.write_page(0, page).unwrap();
    }
    w.finish(None, &[]).unwrap();
    let (streams, _) = walk(&path);
    assert_eq!(streams[&0], p0.concat());
    assert_eq!(streams[&1], p1.concat());
    let b = std::fs::read(&path).unwrap();
    let head1 = (0..b.len() - 4).step_by(4096).find(|&at| {
        u32_at(&b, at) >= 3 && u32_at(&b, at + 8) == 4096 // count, then {zsize, usize = page}
    });
    assert!(head1.is_some(), "CPU 1's list has empty chunks re-linking it");
    let reader = crate::open(&path, crate::ReadOptions::default()).unwrap();
    assert_eq!(reader.filter(Result::is_ok).count(), s0.len() + s1.len());
    if Command::new("trace-cmd").arg("--version").output().is_ok() {
        let out = Command::new("trace-cmd").arg("report").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("kvm_userspace_exit").count(), s0.len() + s1.len());
    }
}
