//! Text reader throughput (MB/s and events/s) on realistic inputs: the real samples' event lines
//! repeated to ~4 MB, for each text family, read line by line on one thread
//! ([`TextReader::one_thread`]) and in parallel blocks ([`TextReader::new`] on the rayon pool).
//!
//! `cargo bench -p vmxray-capture --bench text`

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmxray_capture::ReadOptions;
use vmxray_capture::read::text::TextReader;

const TARGET_BYTES: usize = 4 << 20;

fn input(sample: &str) -> String {
    let path = format!("{}/../samples/real/text/{sample}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let (header, body): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|l| l.starts_with('#') || l.starts_with("cpus="));
    let mut out = header.join("\n");
    out.push('\n');
    while out.len() < TARGET_BYTES {
        for line in &body {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// How the bench reads.
#[derive(Clone, Copy)]
enum Mode {
    OneThread,
    Parallel,
}

fn count(text: &str, mode: Mode) -> u64 {
    let reader = match mode {
        Mode::OneThread => {
            TextReader::one_thread("<bench>", text.as_bytes(), ReadOptions::default())
        }
        Mode::Parallel => TextReader::new("<bench>", text.as_bytes(), ReadOptions::default()),
    };
    let mut n = 0;
    for event in reader {
        black_box(event.unwrap());
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    for (label, sample) in [
        ("trace-cmd report", "tc_report.txt"),
        ("trace-cmd report -R", "tc_reportR.txt"),
        ("ftrace trace", "text_irqinfo.txt"),
        ("perf script", "ps_default.txt"),
    ] {
        let text = input(sample);
        let events = count(&text, Mode::OneThread);
        for (how, mode) in [("one thread", Mode::OneThread), ("parallel", Mode::Parallel)] {
            let name = format!("{label}, {how}");
            let mut bytes = c.benchmark_group("text MB/s");
            bytes.throughput(Throughput::Bytes(text.len() as u64));
            bytes.sample_size(20);
            bytes.bench_function(&name, |b| b.iter(|| count(black_box(&text), mode)));
            bytes.finish();
            let mut per_event = c.benchmark_group("text events/s");
            per_event.throughput(Throughput::Elements(events));
            per_event.sample_size(20);
            per_event.bench_function(&name, |b| b.iter(|| count(black_box(&text), mode)));
            per_event.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
