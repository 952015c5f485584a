//! # vmxray-tui: the terminal browser
//!
//! This crate owns the ratatui/crossterm views over the anomalies, timelines, model state and
//! statistics that the other crates compute. It never parses or models anything itself: the
//! [`loader`] runs `vmxray_capture::open`, `vmxray_replay::Model` (with checkpoints) and
//! `vmxray_analyze::stats::ExitStats` on a background thread and the views draw from the
//! resulting [`trace::Trace`].
//!
//! Structure (ratatui/gitui style):
//! - [`loader`]: background reading, replay and statistics, sent in chunks;
//! - [`trace`]: what was loaded, with index queries (anomaly after an event, state at an event);
//! - [`app`]: routing of [`app::Action`]s between views; each view owns its state;
//! - [`views`]: one module per view (anomalies, timeline, state, stats, detail), each a
//!   `draw(frame, area, app)` that renders only what fits;
//! - [`keys`] maps keys and mouse to actions; [`terminal`] owns the real terminal.
//!
//! Tests render into ratatui's `TestBackend`:
//!
//! ```
//! use ratatui::{Terminal, backend::TestBackend};
//! use vmxray_tui::app::{Action, App, ViewId};
//! use vmxray_tui::loader::{Source, load_all};
//!
//! let mut app = App::loaded(load_all(Source::Bundled));
//! app.act(Action::Enter); // the most severe anomaly's event
//! app.act(Action::Show(ViewId::STATE));
//! let mut terminal = Terminal::new(TestBackend::new(140, 40)).unwrap();
//! terminal.draw(|f| vmxray_tui::views::draw(f, &mut app)).unwrap();
//! let screen = format!("{:?}", terminal.backend().buffer());
//! assert!(screen.contains("changed_subject_cr3"));
//! ```

#![forbid(unsafe_code)]

pub mod app;
pub mod filter;
pub mod keys;
pub mod live;
pub mod loader;
pub mod sidecar;
pub mod store;
pub mod summary;
pub mod tally;
pub mod terminal;
pub mod trace;
pub mod views;

pub use loader::Source;

/// Opens the browser on `source` (the loader starts at once; the first screen does not wait
/// for it) and returns when the user quits, with the terminal restored.
pub fn run(source: Source) -> std::io::Result<()> {
    let rx = loader::spawn(source);
    terminal::run(app::App::new(rx))
}
