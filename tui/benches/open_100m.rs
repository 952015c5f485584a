//! The TUI on a production-size trace file: time to the first screen, resident memory during
//! and after the load (sampled every 10 ms), the anomaly pass's rate, and jumps (to a time, to
//! an event number, to the next anomaly) at spread-out places, each followed by drawing the
//! Timeline and the State view. A timed program (not criterion: one load is the measurement).
//! Before and after the pass it times a probe of the machine itself (two threads handing
//! buffers back and forth, as the pass's threads do), so that a slow run can be told apart
//! from a slow machine.
//!
//! ```text
//! cargo bench -p vmxray-tui --bench open_100m                       # 100 M events, trace.dat
//! VMXRAY_BENCH_EVENTS=10000000 cargo bench -p vmxray-tui --bench open_100m
//! VMXRAY_BENCH_TRACE=big.dat VMXRAY_BENCH_TEXT=big.txt cargo bench -p vmxray-tui --bench open_100m
//! ```
//!
//! Without `VMXRAY_BENCH_TRACE` the trace is generated once with the streaming simulator
//! (`vmxray simulate muen --kvm buggy --vcpus 4 --events N -o ...dat`: the Muen bug on vCPU 0,
//! three more vCPUs of the same L1) under `VMXRAY_BENCH_DIR` (default `target/tmp/bench-tui`)
//! and reused by later runs. Files of 10⁸ events take a few GB: delete them when done.

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vmxray_samples::sim::dat::DatSink;
use vmxray_samples::sim::stream::{Length, simulate_stream};
use vmxray_samples::sim::{Bug, KernelVersion, KvmFlavour, Scenario, SimConfig};
use vmxray_tui::app::{Action, App, PromptKind, ViewId};
use vmxray_tui::loader::{Source, spawn};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn draw(terminal: &mut Terminal<TestBackend>, app: &mut App) {
    terminal.draw(|f| vmxray_tui::views::draw(f, app)).expect("draws");
}

fn generate(path: &Path, events: u64) {
    let cfg = SimConfig::new(Scenario::Muen)
        .kvm(KvmFlavour::Buggy(Bug::HltStaleCr3))
        .kernel(KernelVersion::V6_1)
        .vcpus(4);
    let t = Instant::now();
    let mut sink = DatSink::create(path, cfg.kernel, cfg.vcpu_count()).expect("creates");
    simulate_stream(&cfg, Length::Events(events), false, |e| sink.push(e)).expect("simulates");
    let summary = sink.finish().expect("writes");
    println!(
        "generated {} ({events} events, {:.2} GB) in {:.1} s",
        path.display(),
        summary.file_bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
}

/// Peak RSS over the whole run, sampled by a thread.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peak_kib), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_kib("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { peak_kib, stop }
    }

    fn peak_mib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed) / 1024
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long two threads take to hand 1 GiB of 96-byte records back and forth through sixteen
/// 512 KiB buffers: one writes a buffer, the other reads it and gives it back, as the pass's
/// decoding, merging and statistics threads do with its batches (the writes go to lines the
/// other core held). It tells the machine's state apart from the code's: on the development
/// VM it takes ~30 ms, but for seconds to minutes at a time 110-450 ms, when the host runs the
/// two vCPUs where cache lines cross between them ~10x slower; a probe of one thread writing
/// the same records through a 16 MiB ring then stays at ~35 ms, and the pass falls from
/// ~12 to ~8 M events/s (README, Benchmarks).
fn cross_core_probe() -> Duration {
    const BUFFERS: usize = 16;
    const WORDS: usize = (512 << 10) / 8;
    const ROUNDS: usize = (1 << 30) / (WORDS * 8);
    let (to_reader, filled) = std::sync::mpsc::sync_channel::<Vec<u64>>(BUFFERS);
    let (to_writer, emptied) = std::sync::mpsc::sync_channel::<Vec<u64>>(BUFFERS);
    for _ in 0..BUFFERS {
        to_writer.send(vec![1u64; WORDS]).expect("queues a buffer");
    }
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut sum = 0u64;
        for buffer in filled.iter().take(ROUNDS) {
            for record in buffer.chunks_exact(12) {
                sum = sum.wrapping_add(record[0]).wrapping_add(record[8]);
            }
            let _ = to_writer.send(buffer);
        }
        sum
    });
    let mut x = 0u64;
    for _ in 0..ROUNDS {
        let mut buffer = emptied.recv().expect("a buffer comes back");
        for record in buffer.chunks_exact_mut(12) {
            for (i, word) in record.iter_mut().enumerate() {
                *word = x.wrapping_add(i as u64);
            }
            x = x.wrapping_add(1);
        }
        to_reader.send(buffer).expect("the reader runs");
    }
    std::hint::black_box(reader.join().expect("the reader ends"));
    started.elapsed()
}

fn type_prompt(app: &mut App, kind: PromptKind, text: &str) {
    app.act(Action::Prompt(kind));
    for c in text.chars() {
        app.act(Action::Type(c));
    }
    app.act(Action::Enter);
}

fn bench(path: &Path) {
    println!(
        "== {} ({:.2} GB)",
        path.display(),
        std::fs::metadata(path).map_or(0, |m| m.len()) as f64 / 1e9
    );
    let probe_before = cross_core_probe();
    let rss_before = status_kib("VmRSS:") / 1024;
    let sampler = RssSampler::start();
    let mut terminal = Terminal::new(TestBackend::new(160, 50)).expect("backend");
    let started = Instant::now();
    let rx = spawn(Source::File(path.to_path_buf()));
    let mut app = App::new(rx);
    app.act(Action::Show(ViewId::TIMELINE));
    while app.trace.is_empty() && app.loading() {
        app.drain(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(1));
    }
    draw(&mut terminal, &mut app);
    let first_screen = started.elapsed();
    println!(
        "first screen (timeline with events)     {} ({} events in the first blocks)",
        ms(first_screen),
        app.trace.len()
    );

    // The UI keeps drawing while the loader works: worst frame time during the load.
    let mut worst_frame = Duration::ZERO;
    let mut frames = 0u32;
    while app.loading() {
        let t = Instant::now();
        app.drain(Duration::from_millis(20));
        app.act(Action::Down);
        draw(&mut terminal, &mut app);
        worst_frame = worst_frame.max(t.elapsed());
        frames += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let loaded = started.elapsed();
    let n = app.trace.len();
    println!(
        "anomaly pass (read, replay, stats, index) {:.2} s = {:.2} M events/s; {} anomalies, {} crashes; worst frame while loading {} over {frames} frames",
        loaded.as_secs_f64(),
        n as f64 / loaded.as_secs_f64() / 1e6,
        app.trace.anomalies.len(),
        app.trace.crashes.len(),
        ms(worst_frame)
    );
    println!(
        "memory: peak RSS during the load {} MiB (bench process before: {rss_before} MiB), after {} MiB",
        sampler.peak_mib(),
        status_kib("VmRSS:") / 1024
    );
    println!(
        "cross-core handoff probe before / after the pass: {} / {} (development VM: ~30 ms; several times that: the machine moves cache lines between its cores slowly, and the pass is slower)",
        ms(probe_before),
        ms(cross_core_probe())
    );

    // Jumps from spread-out places: each followed by the Timeline and the State view drawn.
    let first_ts = app.trace.blocks().first().map_or(0, |b| b.first_ts);
    let last_ts = app.trace.blocks().last().map_or(0, |b| b.first_ts);
    let mut by_kind: Vec<(&str, Vec<Duration>)> =
        vec![("time (t SECONDS)", vec![]), ("event (t #N)", vec![]), ("next anomaly (a)", vec![])];
    for k in 0..20u64 {
        let ts = first_ts + (last_ts - first_ts) / 20 * k + 12_345;
        let secs = format!("{}.{:09}", ts / 1_000_000_000, ts % 1_000_000_000);
        let index = n / 20 * k + 777;
        for (kind, times) in by_kind.iter_mut() {
            app.act(Action::Show(ViewId::TIMELINE));
            let t = Instant::now();
            match *kind {
                "time (t SECONDS)" => type_prompt(&mut app, PromptKind::Time, &secs),
                "event (t #N)" => type_prompt(&mut app, PromptKind::Time, &format!("#{index}")),
                _ => {
                    app.select(index);
                    app.act(Action::Anomaly(true));
                }
            }
            app.act(Action::Show(ViewId::TIMELINE));
            draw(&mut terminal, &mut app);
            app.act(Action::Show(ViewId::STATE));
            draw(&mut terminal, &mut app);
            times.push(t.elapsed());
        }
    }
    for (kind, mut times) in by_kind {
        times.sort();
        println!(
            "jump to {kind:<18} + timeline + state: median {}, max {} (20 jumps)",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    let t = Instant::now();
    app.act(Action::Last);
    app.act(Action::Show(ViewId::TIMELINE));
    draw(&mut terminal, &mut app);
    println!("G (last event) + timeline                {}", ms(t.elapsed()));
    let t = Instant::now();
    app.act(Action::Show(ViewId::STATS));
    draw(&mut terminal, &mut app);
    println!("Stats view                               {}", ms(t.elapsed()));
    println!(
        "memory: peak RSS over the whole run {} MiB, now {} MiB",
        sampler.peak_mib(),
        status_kib("VmRSS:") / 1024
    );
}

fn main() {
    let events: u64 = std::env::var("VMXRAY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000_000);
    let dir = std::env::var_os("VMXRAY_BENCH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/bench-tui"),
        PathBuf::from,
    );
    let dat = match std::env::var_os("VMXRAY_BENCH_TRACE") {
        Some(p) => PathBuf::from(p),
        None => {
            std::fs::create_dir_all(&dir).expect("bench dir");
            let path = dir.join(format!("muen-buggy-4vcpu-{events}.dat"));
            if !path.exists() {
                generate(&path, events);
            }
            path
        }
    };
    bench(&dat);
    if let Some(text) = std::env::var_os("VMXRAY_BENCH_TEXT") {
        bench(Path::new(&text));
    }
}
