//! The first screen waits only for what it shows (issue 17): the first block of events and
//! the status line, while the rest of the index is still coming. The index is held back on
//! purpose here — a source that gives the loader its events only when the test says so, and
//! the order of a reopened trace.dat's messages — so nothing depends on how fast this
//! machine is.

use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vmxray_capture::Clock;
use vmxray_events::Event;
use vmxray_samples::sim::stream::{Length, simulate_stream};
use vmxray_tui::app::{Action, App, ViewId};
use vmxray_tui::loader::{LoadMsg, LoadOptions, Source, load_all_with, spawn_with};
use vmxray_tui::trace::Progress;

/// Drains the loader into the app until `done` holds (the loader runs on its own thread; the
/// bound only keeps a broken loader from hanging the test run).
fn drain_until(app: &mut App, done: impl Fn(&App) -> bool) {
    let start = Instant::now();
    while !done(app) {
        assert!(start.elapsed() < Duration::from_secs(120), "the loader never got there");
        app.drain(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn screen(app: &mut App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(160, 40)).unwrap();
    terminal.draw(|f| vmxray_tui::views::draw(f, app)).unwrap();
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_first_screen_is_drawn_while_the_source_still_holds_back_the_rest_of_the_trace() {
    let mut events: Vec<Event> = Vec::new();
    simulate_stream(&super::config(), Length::Events(30_000), false, |e| {
        events.push(e.clone());
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    let total = events.len();
    // The loader gets events only as the test sends them: a little more than one block.
    let (feed, held): (mpsc::Sender<Event>, Receiver<Event>) = mpsc::channel();
    let source = Source::Stream {
        name: "held back".into(),
        clock: Clock::Nanoseconds,
        events: Box::new(held.into_iter()),
        expected: Some(total as u64),
    };
    let mut app = App::new(spawn_with(source, LoadOptions::READ_ONLY));
    app.act(Action::Show(ViewId::TIMELINE));
    for e in &events[..5_000] {
        feed.send(e.clone()).unwrap();
    }
    drain_until(&mut app, |app| !app.trace.is_empty());

    let first = screen(&mut app);
    // The loader cannot be done: 25 000 events are still with the test.
    assert!(matches!(app.trace.progress, Progress::Loading { .. }), "{:?}", app.trace.progress);
    assert!(app.trace.len() < total as u64);
    assert!(first.contains(&app.trace.format_ts(events[0].ts)), "the first event's row:\n{first}");
    assert!(first.contains(&app.trace.format_ts(events[10].ts)), "a page of rows:\n{first}");
    // The status line: the pass is running, how far, and how long it has left.
    let status = first.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(status.starts_with("loading ▕"), "status line: {status}");
    assert!(status.contains('%') && status.contains("ETA"), "status line: {status}");
    assert!(first.contains("loading"), "title:\n{first}");

    for e in &events[5_000..] {
        feed.send(e.clone()).unwrap();
    }
    drop(feed);
    drain_until(&mut app, |app| !app.loading());
    assert!(matches!(app.trace.progress, Progress::Done { .. }), "{:?}", app.trace.progress);
    assert_eq!(app.trace.len(), total as u64);
    let last = screen(&mut app);
    assert!(!last.contains("loading ▕"), "no progress once loaded:\n{last}");
    assert_eq!(app.trace.event(0).as_ref(), Some(&events[0]));
}

#[test]
fn a_reopened_trace_dat_sends_the_first_screen_before_anything_that_reads_the_trace() {
    // Its own size: the tests run at once and each one's files are named by it.
    let (dat, txt) = super::traces(20_480);
    let beside = std::path::PathBuf::from(format!("{}.vmxidx", dat.display()));
    std::fs::remove_file(&beside).ok();
    let full = load_all_with(Source::File(dat.clone()), LoadOptions::INDEXED);
    assert!(beside.exists(), "{:?}", full.note);

    // Reopened: the messages in the order the UI gets them.
    let rx = spawn_with(Source::File(dat.clone()), LoadOptions::INDEXED);
    let msgs: Vec<LoadMsg> = rx.into_iter().collect();
    let kinds: Vec<&str> = msgs
        .iter()
        .map(|m| match m {
            LoadMsg::Opened { .. } => "opened",
            LoadMsg::Print(_) => "print",
            LoadMsg::Note(_) => "note",
            LoadMsg::Batch(b) if !b.blocks.is_empty() => "blocks",
            LoadMsg::Batch(_) => "crashes",
            LoadMsg::Lanes(_) => "lanes",
            LoadMsg::Checkpoints { snapshots, .. }
                if snapshots.len() == 1 && snapshots[0].0 == 0 =>
            {
                "model at 0"
            }
            LoadMsg::Checkpoints { .. } => "checkpoints",
            LoadMsg::Done { .. } => "done",
            LoadMsg::Failed(_) => "failed",
        })
        .collect();
    // Everything the first screen draws (rows, levels, lanes, anomalies) comes before the
    // crashes are read back from the trace, before Done, and before the replay.
    assert_eq!(
        &kinds[..7],
        ["opened", "print", "note", "blocks", "lanes", "model at 0", "crashes"],
        "{kinds:?}"
    );
    assert_eq!(kinds[7], "done", "{kinds:?}");
    assert!(kinds[8..].iter().all(|k| *k == "checkpoints"), "{kinds:?}");
    let LoadMsg::Batch(first) = &msgs[3] else { unreachable!() };
    assert_eq!(first.blocks.len(), full.blocks().len(), "the whole index at once");
    assert!(first.crashes.is_empty(), "crash kinds need the trace: they come after");
    match msgs.last() {
        Some(LoadMsg::Checkpoints { fraction, .. }) => assert_eq!(*fraction, 1.0),
        other => panic!("the replay ends the stream: {other:?}"),
    }
    std::fs::remove_file(&beside).ok();
    std::fs::remove_file(&dat).ok();
    std::fs::remove_file(&txt).ok();
}
