//! Time to first screen and to "jump to anomaly" on a 10M-event simulated trace, and what the
//! loaded trace costs in memory. A timed program (not criterion: one load of 10M events is the
//! measurement). Run with `cargo bench -p vmxray-tui --bench open_10m` (`VMXRAY_BENCH_EVENTS`
//! changes the size).
//!
//! The trace is the `muen` scenario on the buggy KVM (`vmxray_samples::sim`, a dev-dependency)
//! simulated with 16 seeds and laid end to end until it has enough events, shifted in time so
//! that it stays ordered: the same shape as `samples/sim/muen-buggy-6.1.txt`, about one anomaly per thousand
//! events.

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vmxray_capture::Clock;
use vmxray_events::Event;
use vmxray_samples::sim::{Bug, KernelVersion, KvmFlavour, Scenario, SimConfig, simulate};
use vmxray_tui::app::{Action, App, ViewId};
use vmxray_tui::loader::{Source, spawn};

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn generate(target: usize) -> Vec<Event> {
    // The simulator's cost grows faster than linearly with `iterations`: simulate 16 runs of
    // 250 rounds (~10K events each, distinct seeds) and lay copies of them end to end.
    let runs: Vec<Vec<Event>> = (1..=16)
        .map(|seed| {
            let config = SimConfig::new(Scenario::Muen)
                .kvm(KvmFlavour::Buggy(Bug::HltStaleCr3))
                .kernel(KernelVersion::V6_1)
                .iterations(250)
                .seed(seed);
            simulate(&config).expect("simulates").events
        })
        .collect();
    let mut events = Vec::with_capacity(target);
    for run in runs.iter().cycle() {
        if events.len() >= target {
            break;
        }
        // Each copy starts where the previous one ended (plus 1 us): time order holds.
        let base = events.last().map_or(0, |e: &Event| e.ts + 1_000);
        let first = run.first().map_or(0, |e| e.ts);
        let room = target - events.len();
        events.extend(run.iter().take(room).map(|e| {
            let mut e = e.clone();
            e.ts = e.ts - first + base;
            e
        }));
    }
    events
}

fn draw(terminal: &mut Terminal<TestBackend>, app: &mut App) {
    terminal.draw(|f| vmxray_tui::views::draw(f, app)).expect("draws");
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let target: usize = std::env::var("VMXRAY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!("size_of::<Event>() = {} bytes", std::mem::size_of::<Event>());
    let t = Instant::now();
    let events = generate(target);
    let rss_events = rss_kib("VmRSS:");
    println!(
        "generated {} events in {:.1} s (RSS {} MiB)",
        events.len(),
        t.elapsed().as_secs_f64(),
        rss_events / 1024
    );

    let mut terminal = Terminal::new(TestBackend::new(160, 50)).expect("backend");
    let started = Instant::now();
    let rx = spawn(Source::Events { name: "sim-10m".into(), clock: Clock::Nanoseconds, events });
    let mut app = App::new(rx);
    draw(&mut terminal, &mut app);
    let first_frame = started.elapsed();
    // The first frame with events: the timeline around event 0.
    app.act(Action::Show(ViewId::TIMELINE));
    while app.trace.is_empty() {
        app.drain(Duration::from_millis(30));
        std::thread::yield_now();
    }
    draw(&mut terminal, &mut app);
    let first_events = started.elapsed();
    println!("first frame (title, empty views)      {}", ms(first_frame));
    println!(
        "first screen with events (timeline)    {} ({} events loaded)",
        ms(first_events),
        app.trace.len()
    );

    // The UI keeps drawing while the loader works: worst frame time during the load.
    let mut worst_frame = Duration::ZERO;
    let mut frames = 0u32;
    while app.loading() {
        let t = Instant::now();
        app.drain(Duration::from_millis(30));
        app.act(Action::Down);
        draw(&mut terminal, &mut app);
        worst_frame = worst_frame.max(t.elapsed());
        frames += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let loaded = started.elapsed();
    let n = app.trace.len();
    println!(
        "fully loaded, replayed, counted          {:.2} s ({:.2} M events/s), {} anomalies; worst frame while loading {} over {frames} frames",
        loaded.as_secs_f64(),
        n as f64 / loaded.as_secs_f64() / 1e6,
        app.trace.anomalies.len(),
        ms(worst_frame)
    );
    let rss = rss_kib("VmRSS:");
    let hwm = rss_kib("VmHWM:");
    println!(
        "memory: RSS {} MiB after load (the generator's vector was moved, not copied), peak {} MiB; {:.0} bytes/event",
        rss / 1024,
        hwm / 1024,
        (rss as f64 * 1024.0) / n as f64
    );

    // Jump to the next anomaly from spread-out positions: key, then the timeline and the state
    // view drawn (the state rebuilt from the nearest checkpoint).
    let mut jumps = Vec::new();
    for k in 0..20u64 {
        app.select(n * k / 20 + 777);
        app.act(Action::Show(ViewId::TIMELINE));
        draw(&mut terminal, &mut app);
        let t = Instant::now();
        app.act(Action::Anomaly(true));
        draw(&mut terminal, &mut app);
        app.act(Action::Show(ViewId::STATE));
        draw(&mut terminal, &mut app);
        jumps.push(t.elapsed());
    }
    jumps.sort();
    println!(
        "jump to next anomaly + timeline + state: median {}, max {} (20 jumps)",
        ms(jumps[jumps.len() / 2]),
        ms(jumps[jumps.len() - 1])
    );

    let t = Instant::now();
    app.act(Action::Show(ViewId::ANOMALIES));
    app.act(Action::Enter);
    draw(&mut terminal, &mut app);
    println!("Anomalies: Enter on the most severe     {}", ms(t.elapsed()));
    let t = Instant::now();
    app.act(Action::Last);
    draw(&mut terminal, &mut app);
    println!("G (last event) + timeline               {}", ms(t.elapsed()));
    let t = Instant::now();
    app.act(Action::Show(ViewId::STATS));
    draw(&mut terminal, &mut app);
    println!("Stats view                              {}", ms(t.elapsed()));
    let t = Instant::now();
    app.act(Action::Show(ViewId::TIMELINE));
    app.act(Action::Prompt(vmxray_tui::app::PromptKind::Filter));
    for c in "vcpu=1 level=L2".chars() {
        app.act(Action::Type(c));
    }
    app.act(Action::Enter);
    draw(&mut terminal, &mut app);
    let first = t.elapsed();
    let mut worst = Duration::ZERO;
    while app.rows.pending(&app.trace) {
        let f = Instant::now();
        app.tick();
        draw(&mut terminal, &mut app);
        worst = worst.max(f.elapsed());
    }
    println!(
        "filter vcpu=1 level=L2: first frame {}, all {} events filtered in {} ({} rows), worst frame {}",
        ms(first),
        n,
        ms(t.elapsed()),
        app.rows.len(&app.trace),
        ms(worst)
    );
}
