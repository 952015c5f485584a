//! Where opening a trace.dat in the TUI spends its time before the first screen, phase by
//! phase, with the library calls the loader makes (each phase timed on its own, in a fresh
//! `TraceDat` where the loader would have one).
//!
//! ```text
//! cargo run --release -p vmxray-tui --example open_phases -- big.dat
//! FIRST_SCREEN_ONLY=1 cargo run --release -p vmxray-tui --example open_phases -- big.dat
//! READ_ALL=1 cargo run ...   # also read every event (the chunk counts' progress at the end)
//! ```
//!
//! `FIRST_SCREEN_ONLY` times what the open_100m bench calls the first screen (the loader
//! started, its first block drawn; with `big.dat.vmxidx` beside the trace, from the saved
//! index) and quits without waiting for the rest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vmxray_capture::ReadOptions;
use vmxray_capture::read::tracedat::{LanePos, TraceDat};
use vmxray_tui::app::{Action, App, ViewId};
use vmxray_tui::loader::{Source, spawn};

/// What the TUI does: the loader started, the first screen drawn once it has a block (the
/// open_100m bench's "first screen"); the index or the pass goes on behind it.
fn first_screen(path: &std::path::Path) {
    let mut terminal = Terminal::new(TestBackend::new(160, 50)).expect("backend");
    let t = Instant::now();
    let mut app = App::new(spawn(Source::File(path.to_path_buf())));
    app.act(Action::Show(ViewId::TIMELINE));
    while app.trace.is_empty() && app.loading() {
        app.drain(std::time::Duration::from_millis(5));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let got = t.elapsed();
    terminal.draw(|f| vmxray_tui::views::draw(f, &mut app)).expect("draws");
    println!(
        "loader: first block {:8.1} ms, first screen drawn {}; note: {:?}",
        got.as_secs_f64() * 1e3,
        ms(t),
        app.trace.note
    );
}

fn ms(t: Instant) -> String {
    format!("{:8.1} ms", t.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: open_phases TRACE.dat");
        std::process::exit(2);
    };
    let opts = ReadOptions { permissive: true, ..ReadOptions::default() };
    if std::env::var_os("FIRST_SCREEN_ONLY").is_some() {
        first_screen(&path);
        return;
    }

    let t = Instant::now();
    let saved = vmxray_tui::sidecar::load(&path);
    println!(
        "sidecar: identity + read + decode        {} ({})",
        ms(t),
        saved.as_ref().map_or("none".to_owned(), |s| format!("{} blocks", s.blocks.len()))
    );

    let t = Instant::now();
    let td = Arc::new(TraceDat::open_salvaging(&path).expect("opens"));
    println!("TraceDat::open_salvaging (header, index)  {}", ms(t));
    if let Some(b) = td.buffers.first() {
        println!("CPU runs: {:?}, compressed {}", b.cpus, b.compressed);
    }

    let t = Instant::now();
    let (mut reader, counts) = td.events_counted(0, opts).expect("reader");
    println!("events_counted (reader set up)           {}", ms(t));
    let t = Instant::now();
    let first = reader.next();
    println!("first event                              {} ({})", ms(t), first.is_some());
    let t = Instant::now();
    let n = reader.by_ref().take(4096).count();
    println!("next {n} events                         {}", ms(t));
    let (done, total) = counts.progress();
    println!("progress after the first block: {done} of {total}");
    if std::env::var_os("READ_ALL").is_some() {
        let n = reader.by_ref().count();
        let (done, total) = counts.progress();
        println!("progress after all {n}: {done} of {total}");
    }
    drop(reader);

    // What the view does for the first screen (a fresh TraceDat: nothing kept from above).
    let td = Arc::new(TraceDat::open_salvaging(&path).expect("opens"));
    let lanes: Vec<LanePos> = (0..td.lanes(0).len())
        .map(|lane| LanePos { lane: u32::try_from(lane).unwrap_or(0), chunk: 0, skip: 0 })
        .collect();
    let t = Instant::now();
    let reader = td.events_from(0, opts, &lanes).expect("reader");
    let n = reader.take(4096).count();
    println!("events_from(start) + {n} events (view)   {}", ms(t));
    let t = Instant::now();
    let last = td.lanes(0).len();
    let lanes: Vec<LanePos> = (0..last)
        .map(|lane| LanePos { lane: u32::try_from(lane).unwrap_or(0), chunk: 1_000_000, skip: 0 })
        .collect();
    let n = td.events_from(0, opts, &lanes).expect("reader").count();
    println!("events_from(past the end), {n} events     {}", ms(t));
}
