//! Binary reader throughput on a large trace.dat, side by side with plain zstd decompression of
//! the same chunks.
//!
//! The trace is `$VMXRAY_BENCH_DAT` (default `/tmp/vmxray-binary-big.dat`; `scripts/bench-binary.sh`
//! records one). Without it the benchmarks print `SKIP` and do nothing.

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmxray_capture::ReadOptions;
use vmxray_capture::read::tracedat::TraceDat;
use vmxray_events::EventKind;

fn trace_path() -> Option<PathBuf> {
    let p = std::env::var_os("VMXRAY_BENCH_DAT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/vmxray-binary-big.dat"));
    p.is_file().then_some(p)
}

fn bench(c: &mut Criterion) {
    let Some(path) = trace_path() else {
        eprintln!("SKIP: no trace at $VMXRAY_BENCH_DAT or /tmp/vmxray-binary-big.dat");
        return;
    };
    let td = Arc::new(TraceDat::open(&path).expect("open trace.dat"));
    let events = td.events(0, ReadOptions::default()).expect("events").count() as u64;
    let chunks = td.compressed_chunks(0).expect("chunks");
    let uncompressed: u64 = chunks.iter().map(|(u, _)| *u).sum();
    eprintln!(
        "{}: {events} events, {} chunks, {uncompressed} bytes uncompressed",
        path.display(),
        chunks.len()
    );

    let mut g = c.benchmark_group("tracedat");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    g.bench_function("zstd_decompress_chunks", |b| {
        let mut out = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut total = 0usize;
            for (usize, data) in &chunks {
                let n = usize::try_from(*usize).unwrap_or(0);
                if out.len() < n {
                    out.resize(n, 0);
                }
                total += zstd::bulk::decompress_to_buffer(data, &mut out[..n]).unwrap_or(0);
            }
            black_box(total)
        })
    });
    for (name, parallel) in [("typed_events_all_fields", true), ("typed_events_one_thread", false)]
    {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0u64;
                let mut exits = 0u64;
                for ev in td.events_with(0, ReadOptions::default(), parallel).expect("events") {
                    let ev = ev.expect("event");
                    if let EventKind::KvmPio { port, .. } = ev.kind {
                        exits += u64::from(port);
                    }
                    n += 1;
                    black_box(&ev);
                }
                black_box((n, exits))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
