//! Replay throughput: a generated, well-formed nested stream (nested entries and exits, HLT-path
//! entries, L0-handled EPT violations with page faults, guest_mmu root loads, VMPTRLD/VMWRITE
//! exits) of at least 2^17 events (142,553) held in memory and stepped 80 times per iteration:
//! 11.4M events per iteration through one `Model`, whose state stays bounded whatever the length.
//!
//! Run: `cargo bench -p vmxray-replay --bench replay`. Measured 2026-12-05 15:00 on the 2-core
//! development machine, quiet (load average 1.5): 0.472 s per iteration, **24.1M events/s** on
//! one core; a probe stepping the same stream 100 times under `perf stat -e task-clock` agrees
//! (41.5 ns of CPU per event). 16.4M/s before that day's speed work (14.4M/s that morning with
//! 29 rules, 6.7M/s before the field store's rework and the lean field derivation; 28M/s on
//! 2026-11-21, before the field streams and the loop detector). Where the time goes (`perf
//! record`): the loop detector 36 %, `Model::advance` with attribution 18 %, the rules' dispatch
//! 17 %, `transition::apply` 15 %.
#![allow(missing_docs)]

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmxray_replay::Model;

const PASSES: u64 = 80;

fn stream() -> Vec<vmxray_events::Event> {
    let mut x: u32 = 0x9e37_79b9;
    let mut choices = Vec::new();
    let mut events = Vec::new();
    while events.len() < 1 << 17 {
        choices.clear();
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            choices.push(x.to_le_bytes()[1]);
        }
        // End every chunk in L1 so that chunks (and passes) join cleanly.
        choices.extend([1u8; 4]);
        events.extend(common::well_formed_nested(&choices).events);
    }
    events
}

fn bench(c: &mut Criterion) {
    let events = stream();
    let total = events.len() as u64 * PASSES;
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(total));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("model_step_nested_stream", |b| {
        b.iter(|| {
            let mut model = Model::default();
            let mut anomalies = 0usize;
            for _ in 0..PASSES {
                for e in &events {
                    anomalies += model.step(black_box(e)).anomalies.len();
                }
            }
            black_box(anomalies)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
