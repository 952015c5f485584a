//! The block-parallel text reader ([`TextReader::with_block_size`], what [`TextReader::new`]
//! uses on a multi-threaded pool) against the line-by-line one ([`TextReader::one_thread`]):
//! the same events in the same order, the same errors with the same line numbers, the same
//! meta (at open and at the end) and the same stats, whatever the block size. Small blocks put
//! block boundaries everywhere: between a lost marker and its CPU's next event, inside CRLF
//! pairs, inside over-long lines, before lines whose reading depends on the layout hint.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::OnceLock;

use proptest::prelude::*;
use vmxray_capture::read::text::TextReader;
use vmxray_capture::{EventReader, Location, ReadOptions};
use vmxray_events::{Event, EventKind};

/// The reader's line limit (`lines::MAX_LINE`, not public).
const MAX_LINE: usize = 1 << 20;

/// Block sizes: one byte (a block per line at most), a few lines, the default.
const BLOCKS: &[usize] = &[1, 2, 7, 61, 300, 4096, 1 << 20];

/// A pool with more threads than jobs usually in flight, so that blocks really are parsed
/// out of order on other threads, whatever the machine.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap())
}

/// Everything a reader shows.
#[derive(Debug, PartialEq)]
struct Run {
    meta_at_open: String,
    items: Vec<Result<Event, String>>,
    meta: String,
    stats: String,
    problems: Vec<String>,
}

fn run<R: BufRead + Send>(mut reader: TextReader<R>) -> Run {
    let meta_at_open = format!("{:?}", reader.meta());
    let items = reader.by_ref().map(|e| e.map_err(|e| e.to_string())).collect();
    // The iterator stays ended.
    assert!(reader.next().is_none());
    let stats = reader.stats();
    Run {
        meta_at_open,
        items,
        meta: format!("{:?}", reader.meta()),
        stats: format!(
            "events {} lost {:?} skipped {} unknown {:?}",
            stats.events, stats.lost, stats.skipped, stats.unknown_events
        ),
        problems: stats.problems.iter().map(|p| format!("{p} / {:?}", p.at)).collect(),
    }
}

fn one_thread(input: &[u8], opts: ReadOptions) -> Run {
    let reference = run(TextReader::one_thread("<t>", input, opts));
    // The line-by-line reader does not depend on its input's buffer size either (but for the
    // meta, which the sniff at open fills from what is buffered, and strict mode may stop
    // before the lines that would fill it).
    let small_buffer = BufReader::with_capacity(13, input);
    let small = run(TextReader::one_thread("<t>", small_buffer, opts));
    let sniffed = (reference.meta_at_open.clone(), reference.meta.clone());
    assert_eq!(Run { meta_at_open: sniffed.0, meta: sniffed.1, ..small }, reference);
    reference
}

fn blocks<R: BufRead + Send>(input: R, opts: ReadOptions, block: usize) -> Run {
    pool().install(|| run(TextReader::with_block_size("<t>", input, opts, block)))
}

/// Every block size gives what the line-by-line reader gives, strict and permissive.
fn assert_same(input: &[u8]) -> Run {
    let mut strict = None;
    for permissive in [false, true] {
        let opts = ReadOptions { permissive, ..ReadOptions::default() };
        let want = one_thread(input, opts);
        for &block in BLOCKS {
            let got = blocks(input, opts, block);
            if got != want {
                panic!(
                    "block size {block}, permissive {permissive}:\n{}",
                    first_difference(&got, &want)
                );
            }
        }
        strict.get_or_insert(want);
    }
    strict.unwrap_or_else(|| unreachable!())
}

fn first_difference(got: &Run, want: &Run) -> String {
    for (i, (g, w)) in got.items.iter().zip(&want.items).enumerate() {
        if g != w {
            return format!("item {i}: got {g:?}\nwant {w:?}");
        }
    }
    format!("got {got:#?}\nwant {want:#?}")
}

fn event_line(comm: &str, pid: u32, cpu: u32, usecs: u64, event: &str, body: &str) -> String {
    format!(
        "{comm:>16}-{pid:<5} [{cpu:03}] {:6}.{:06}: {event:<20} {body}\n",
        usecs / 1_000_000,
        usecs % 1_000_000
    )
}

#[test]
fn every_real_text_sample_reads_the_same_in_blocks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/text");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_same(&bytes);
        // And through a file, as `open` reads it, with the default block size.
        let file = BufReader::new(std::fs::File::open(&path).unwrap());
        let opts = ReadOptions::default();
        assert_eq!(blocks(file, opts, 1 << 20), one_thread(&bytes, opts), "{path:?}");
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} samples in {dir:?}");
}

#[test]
fn lost_markers_wait_for_their_cpu_across_block_boundaries() {
    // A marker for CPU 1, then CPU 0 events filling many small blocks, then CPU 1's event.
    let mut text = String::from("cpus=2\n");
    text.push_str(&event_line("a", 10, 1, 1_000_000, "kvm_fpu:", "load"));
    text.push_str("CPU:1 [LOST 7 EVENTS]\n");
    for i in 0..200 {
        text.push_str(&event_line("b", 11, 0, 1_000_001 + i, "kvm_fpu:", "load"));
    }
    text.push_str(&event_line("a", 10, 1, 2_000_000, "kvm_fpu:", "unload"));
    text.push_str("CPU:0 [EVENTS DROPPED]\n");
    let run = assert_same(text.as_bytes());
    let events: Vec<&Event> = run.items.iter().map(|e| e.as_ref().unwrap()).collect();
    assert_eq!(events.len(), 1 + 200 + 2 + 1);
    // The marker comes right before CPU 1's next event, with its timestamp; CPU 0's marker
    // has no later event and comes at the end with CPU 0's last timestamp.
    assert_eq!(
        (events[201].kind.clone(), events[201].cpu),
        (EventKind::Lost { count: Some(7) }, 1)
    );
    assert_eq!(events[201].ts, 2_000_000_000);
    assert_eq!(events[202].ts, 2_000_000_000);
    assert_eq!(events[203].kind, EventKind::Lost { count: None });
    assert_eq!((events[203].cpu, events[203].ts), (0, 1_000_200_000));
}

#[test]
fn more_than_1024_waiting_markers_come_out_in_the_same_order() {
    let mut text = event_line("a", 10, 3, 1_000_000, "kvm_fpu:", "load");
    for i in 0..1100u32 {
        let cpu = 2000 + i % 700;
        text.push_str(&format!("CPU:{cpu} [LOST {} EVENTS]\n", i + 1));
        if i.is_multiple_of(97) {
            text.push_str(&event_line("a", 10, cpu, 1_000_001 + u64::from(i), "kvm_fpu:", "x"));
        }
    }
    let run = assert_same(text.as_bytes());
    let lost = run.items.iter().filter(|e| matches!(e, Ok(e) if e.name() == "lost_events"));
    assert_eq!(lost.count(), 1100);
}

#[test]
fn over_long_lines_spanning_blocks_are_reported_where_they_are() {
    let ok = event_line("a", 10, 0, 1_000_000, "kvm_fpu:", "load");
    let long = |len: usize, end: &str| format!("{}{end}", "x".repeat(len));
    let cases = [
        // Too long, then good lines.
        format!("{ok}{}{ok}", long(MAX_LINE + 10, "\n")),
        // Exactly the limit (a bad line, not a too-long one), and one byte more; a `\r`
        // counts.
        format!("{ok}{}{}{ok}", long(MAX_LINE, "\n"), long(MAX_LINE, "\r\n")),
        // Two too-long lines in a row, the second at the end without a newline.
        format!("{ok}{}{}", long(2 * MAX_LINE, "\n"), long(MAX_LINE + 1, "")),
        // A too-long line first and last.
        format!("{}{ok}{}", long(MAX_LINE + 3, "\n"), long(MAX_LINE + 3, "\n")),
    ];
    for text in &cases {
        for permissive in [false, true] {
            let opts = ReadOptions { permissive, ..ReadOptions::default() };
            let want = one_thread(text.as_bytes(), opts);
            // Fewer block sizes: each byte-sized read of a 2 MiB line is slow in debug builds.
            for block in [61, 4096, 1 << 20, 3 << 20] {
                assert_eq!(blocks(text.as_bytes(), opts, block), want, "block {block}");
            }
        }
    }
    let run = one_thread(cases[0].as_bytes(), ReadOptions::default());
    assert_eq!(run.items.len(), 2);
    assert!(run.items[1].as_ref().unwrap_err().starts_with("<t>:2: Line longer than"));
}

#[test]
fn crlf_invalid_utf8_empty_inputs_and_missing_final_newlines() {
    let ok = event_line("qemu vcpu-0 x", 15045, 1, 1_000_000, "kvm_fpu:", "load");
    let crlf = ok.replace('\n', "\r\n");
    let mut bad_utf8 = ok.clone().into_bytes();
    bad_utf8[10] = 0xff;
    let mut bad_body = ok.clone().into_bytes();
    let at = bad_body.len() - 3;
    bad_body[at] = 0xc3;
    let inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\n".to_vec(),
        b"\r".to_vec(),
        b"\r\n\r\n".to_vec(),
        ok.trim_end().as_bytes().to_vec(),
        format!("{crlf}{crlf}{}", crlf.trim_end()).into_bytes(),
        format!("{ok}\r").into_bytes(),
        [bad_utf8.clone(), ok.clone().into_bytes(), bad_body.clone(), bad_utf8].concat(),
        [b"cpus=4\r\n".to_vec(), bad_body, b"\xff\xfe\n".to_vec(), crlf.into_bytes()].concat(),
    ];
    for input in &inputs {
        assert_same(input);
    }
}

#[test]
fn strict_mode_stops_at_the_first_error_and_permissive_mode_counts_them() {
    let ok = |usecs| event_line("a", 10, 0, usecs, "kvm_cr:", "cr_write 3 = 0x1000");
    let mut text = String::from("# tracer: nop\n");
    for i in 0..50 {
        text.push_str(&ok(1_000_000 + i));
    }
    // Prose is skipped in both modes; lines that look like trace text but do not read are
    // errors; event text without its columns is an event without a time.
    text.push_str("this is not a trace line\n");
    text.push_str("            a-10    [000] garbage 5.000001: x\n");
    text.push_str(&event_line("a", 10, 0, 2_000_000, "kvm_cr:", "cr_write banana"));
    text.push_str("kvm_fpu: load\n");
    for i in 0..50 {
        text.push_str(&ok(3_000_000 + i));
    }
    let strict = assert_same(text.as_bytes());
    assert_eq!(strict.items.len(), 51);
    assert!(strict.items[50].as_ref().unwrap_err().starts_with("<t>:53: Unrecognized line"));
    let permissive =
        one_thread(text.as_bytes(), ReadOptions { permissive: true, ..ReadOptions::default() });
    assert_eq!(permissive.items.len(), 101);
    assert_eq!(permissive.problems.len(), 2);
    assert!(permissive.problems[1].ends_with("Line(54)"), "{:?}", permissive.problems);
}

#[test]
fn a_line_read_differently_under_each_layout_hint_reads_as_line_by_line() {
    // This line fits the latency layout (`ev` at 1 s) and, through the ` [001]` in its body,
    // the dash layout (`e2` at 2 s): which one wins depends on the layout of the line before.
    let ambiguous = "aaaaaaaa-12   3d... 1.000000: ev: x-5 [001] 2.000000: e2: b\n";
    let latency = "qemu vcp-17796   1d..1.   665.844340: kvm_fpu: load\n";
    let dash = event_line("a", 10, 0, 1_000_000, "kvm_fpu:", "load");
    let perf = "     qemu vcpu-0 x 19254 [001]   759.456761:            kvm:kvm_fpu: load\n";
    let after = |first: &str| {
        let run = one_thread(format!("{first}{ambiguous}").as_bytes(), ReadOptions::default());
        run.items[1].as_ref().unwrap().name().to_owned()
    };
    assert_eq!(after(latency), "ev");
    assert_eq!(after(&dash), "e2");
    assert_eq!(after(perf), "e2");
    // Blocks that start right at the ambiguous line, after each layout, several times.
    let mut text = String::new();
    for first in [latency, &dash, perf, latency, latency, perf, &dash] {
        text.push_str(first);
        text.push_str(ambiguous);
        text.push_str(ambiguous);
        text.push_str("# a header between\n");
        text.push_str(ambiguous);
    }
    assert_same(text.as_bytes());
}

/// Hands out `data`, failing with an I/O error at `fail_at` (and with `Interrupted` now and
/// then before, which readers retry).
struct Failing {
    data: Vec<u8>,
    at: usize,
    fail_at: usize,
    calls: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.at >= self.fail_at {
            return Err(io::Error::other("the disk is on fire"));
        }
        let n = buf.len().min(self.fail_at - self.at).min(self.data.len() - self.at).min(5);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn read_errors_come_after_the_lines_before_them_with_the_same_line_number() {
    let mut text = String::from("cpus=2\nCPU:1 [LOST 3 EVENTS]\r\n");
    for i in 0..6u32 {
        text.push_str(&event_line("a", 10, i % 2, 1_000_000 + u64::from(i), "kvm_fpu:", "load"));
    }
    let data = text.into_bytes();
    for fail_at in 0..data.len() {
        let input = |cap| {
            let failing = Failing { data: data.clone(), at: 0, fail_at, calls: 0 };
            BufReader::with_capacity(cap, failing)
        };
        for permissive in [false, true] {
            let opts = ReadOptions { permissive, ..ReadOptions::default() };
            let want = run(TextReader::one_thread("<t>", input(7), opts));
            let last = want.items.last().unwrap().as_ref().unwrap_err();
            assert!(last.contains("Cannot read the input"), "{last}");
            for block in [1, 5, 64, 4096] {
                assert_eq!(blocks(input(7), opts, block), want, "fail at {fail_at}, {block}");
            }
        }
    }
}

/// An endless trace: counts the bytes it hands out.
struct Endless {
    line: Vec<u8>,
    at: usize,
    given: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(4096);
        for b in &mut buf[..n] {
            *b = self.line[self.at];
            self.at = (self.at + 1) % self.line.len();
        }
        self.given.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn memory_is_bounded_by_the_blocks_in_flight_not_by_the_input() {
    let given = std::sync::Arc::default();
    let line = event_line("a", 10, 0, 1_000_000, "kvm_fpu:", "load").into_bytes();
    let endless = Endless { line: line.clone(), at: 0, given: std::sync::Arc::clone(&given) };
    let block = 64 * 1024;
    let events = pool().install(|| {
        let reader = TextReader::with_block_size(
            "<endless>",
            BufReader::new(endless),
            ReadOptions::default(),
            block,
        );
        reader.take(100_000).filter(Result::is_ok).count()
    });
    assert_eq!(events, 100_000);
    let read = given.load(std::sync::atomic::Ordering::Relaxed);
    let consumed = 100_000 * line.len();
    // The pool's threads plus one blocks ahead, one being consumed, buffers' slack.
    let bound = consumed + (pool().current_num_threads() + 4) * block;
    assert!(read <= bound, "read {read} bytes for {consumed} consumed (bound {bound})");
}

#[test]
fn errors_name_absolute_line_numbers_in_every_block() {
    // One bad line every 37 lines: every block size puts them at varied offsets.
    let mut text = String::new();
    for i in 0..400u64 {
        if i % 37 == 5 {
            text.push_str(&format!("            a-10    [000] garbage {i}.000001: x\n"));
        } else {
            text.push_str(&event_line("a", 10, 0, 1_000_000 + i, "kvm_fpu:", "load"));
        }
    }
    assert_same(text.as_bytes());
    let run =
        one_thread(text.as_bytes(), ReadOptions { permissive: true, ..ReadOptions::default() });
    let lines: Vec<_> = run.problems.iter().map(|p| p.rsplit_once(" / ").unwrap().1).collect();
    let want: Vec<_> =
        (0..400).filter(|i| i % 37 == 5).map(|i| format!("{:?}", Location::Line(i + 1))).collect();
    assert_eq!(lines, want[..want.len().min(20)]);
}

/// Lines of every kind, for mixtures.
const LINES: &[&str] = &[
    "   qemu vcpu-0 x-15045   [001] d..1.   511.173882: kvm_exit: vcpu 0 reason CR_ACCESS rip 0x1 info1 0x3 info2 0x0 intr_info 0x0 error_code 0x0",
    "   qemu vcpu-0 x-17796 [001]   665.848413: kvm_mmu_get_page:     new sp gfn 2 4 q0 wux !pae nxe !wp root 0 sync",
    "   qemu vcpu-0 x-17796 [000]   665.848414: kvm_prepare_zap_page:  sp gfn 2 4 q0 wux !pae nxe !wp root 0 sync",
    "   qemu vcpu-0 x 19254 [001]   759.456761:            kvmmmu:kvm_mmu_get_page: [FAILED TO PARSE] mmu_valid_gen=0 gfn=2 role=5892",
    "   qemu vcpu-0 x-17796 [001]   665.848425: kvm_emulate_insn:      rip=1000 csbase=0 len=2 insn=ARRAY[ff, c0] flags=9 failed=0",
    "qemu vcp-17796   1d..1.   665.844340: kvm_nested_vmenter: rip: 0x1 vmcs: 0x2 nested_rip: 0x3 int_ctl: 0x0 event_inj: 0x0 nested_ept=y nested_eptp: 0x5",
    "qemu vcp-17796   0d..1.   665.844341: kvm_fpu: load",
    "CPU:1 [LOST 330608 EVENTS]",
    "CPU:0 [EVENTS DROPPED]",
    "CPU:5 [3 EVENTS DROPPED]",
    "   qemu vcpu-0 x-15045   [001] .....   511.176454: kvm_mmu_get_page: mmu_valid_gen=(0) gfn=0x2 (2) role=0x1704 (5892) root_count=0x0 (0)",
    "  759.455910:        kvm:kvm_inj_exception: #PF (0x2) [reinjected]",
    "15045 1 511173882349 type: 82",
    "   qemu vcpu-0 x-15045   [000] d..1.   511.173883: kvm_cr: cr_write banana",
    "       CPU 0/KVM  4242 [002]  1000.000001:  kvm:kvm_fpu: load",
    "aaaaaaaa-12   3d... 1.000000: ev: x-5 [001] 2.000000: e2: b",
    "kvm_fpu: load",
    "qemu vcpu-15045     1d..1. 165901us : kvm_fpu: load",
    "cpus=4",
    "#P:2",
    "# tracer: nop",
    "version = 6",
    "CPU 3 is empty",
    "",
    "not a trace line at all",
    "            a-10    [007]   5.000001: some_event: a=1 b=0x2 c=hello",
    "            a-10    [007]   512: kvm_fpu: unload",
];

fn mixture() -> impl Strategy<Value = (Vec<u8>, usize, bool)> {
    let line = prop_oneof![
        8 => (0..LINES.len()).prop_map(|i| LINES[i].as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ];
    let ending = prop_oneof![4 => Just(&b"\n"[..]), 1 => Just(&b"\r\n"[..])];
    (proptest::collection::vec((line, ending), 0..60), any::<bool>(), 1usize..400, any::<bool>())
        .prop_map(|(lines, last_newline, block, permissive)| {
            let mut text = Vec::new();
            for (line, ending) in &lines {
                text.extend_from_slice(line);
                text.extend_from_slice(ending);
            }
            if !last_newline && text.last() == Some(&b'\n') {
                text.pop();
            }
            (text, block, permissive)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_mixture_of_lines_reads_the_same_in_blocks((text, block, permissive) in mixture()) {
        let opts = ReadOptions { permissive, ..ReadOptions::default() };
        let want = one_thread(&text, opts);
        let got = blocks(&text[..], opts, block);
        prop_assert!(got == want, "block {}:\n{}", block, first_difference(&got, &want));
    }
}

/// A bad line skipped before the first event settles the format and clock; the blocks must
/// still note the first event (an exit, not a VM's creation: the input is an excerpt), as the
/// line-by-line reader does (a case proptest found).
#[test]
fn a_bad_line_before_the_first_event_leaves_the_first_event_noted() {
    let text = format!("{}\n{}\n", LINES[13], LINES[0]);
    assert_same(text.as_bytes());
    let permissive =
        one_thread(text.as_bytes(), ReadOptions { permissive: true, ..ReadOptions::default() });
    assert!(permissive.meta.contains("excerpt: true"), "{permissive:?}");
}
