//! `vmxray top`: the live view of a running host, with the look and keys of `vmxray tui`.
//!
//! The app reads a [`Feed`] (the binary's adapter over `vmxray_record::live::LiveCapture`: this
//! crate does not record), steps every event through one [`Pass`] (the replay model: the
//! attribution to VMs and vCPUs, the levels, the anomalies) into
//! [`vmxray_analyze::live::LiveStats`], and redraws at every interval:
//!
//! ```text
//!  Feed ──events (time order)──▶ Pass (model) ──▶ LiveStats ──tick every interval──▶ Snapshot ──▶ draw
//!    ▲                                                                                 (5 views)
//!    └── w: write the last N seconds to a trace.dat (the live flight recorder)
//! ```
//!
//! Views (Tab, `1`–`5`): **Exits** (kvm_exit reasons with the L1/L2 split and rates),
//! **vCPUs** (VMs and vCPUs: events/s and exits by level), **Latency** (exit→entry
//! percentiles per reason over the sliding window), **Anomalies** (as the model finds them, and
//! stuck vCPUs), **Events** (every event name, and userspace exits by reason, which is what a
//! host without `kvm_exit` shows). Keys: `j`/`k`, PgUp/PgDn, `g`/`G` scroll; `w` writes the
//! dump; `p` pauses the display (the capture goes on); `?` help; `q` quits.

mod draw;
#[cfg(test)]
mod tests;

use std::io::{self, Stdout};
use std::time::{Duration, Instant};

use crossterm::event::{
    self, DisableMouseCapture, EnableMouseCapture, Event as TermEvent, KeyCode, KeyEventKind,
};
use crossterm::execute;
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, enable_raw_mode};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use vmxray_analyze::live::{LiveConfig, LiveStats, Snapshot};
use vmxray_analyze::pass::{Pass, PassConfig, StatsMode};
use vmxray_events::Event;

use crate::app::Action;
use crate::keys;

pub use draw::draw;

/// Where the live events come from.
pub trait Feed {
    /// Events released since the last call, in time order (possibly none).
    fn poll(&mut self) -> Vec<Event>;
    /// Takes back events [`Feed::poll`] gave, once stepped: a capture frees them on the thread
    /// that decoded them, where their memory is reused at once (the default drops them here).
    fn recycle(&mut self, events: Vec<Event>) {
        drop(events);
    }
    /// Writes the newest `last` of trace time to a trace.dat; says what was written.
    fn dump(&mut self, last: Duration) -> Result<String, String>;
    /// What is recorded, for the title (`backend perf · 16 events · pid 1234`).
    fn describe(&self) -> String;
    /// True once the capture stopped (its threads ended).
    fn ended(&self) -> bool;
}

/// How `vmxray top` runs.
#[derive(Clone, Copy, Debug)]
pub struct TopConfig {
    /// The refresh interval (rates are per interval).
    pub interval: Duration,
    /// The statistics.
    pub live: LiveConfig,
    /// How much the `w` key writes.
    pub dump_last: Duration,
}

impl Default for TopConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            live: LiveConfig::default(),
            dump_last: Duration::from_secs(10),
        }
    }
}

/// The views, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopView {
    /// kvm_exit reasons.
    Exits,
    /// VMs and vCPUs.
    Vcpus,
    /// Latency percentiles.
    Latency,
    /// Anomalies and stuck vCPUs.
    Anomalies,
    /// Events by name, userspace exits.
    Events,
}

impl TopView {
    /// Every view, in Tab order.
    pub const ALL: [Self; 5] =
        [Self::Exits, Self::Vcpus, Self::Latency, Self::Anomalies, Self::Events];

    fn index(self) -> usize {
        Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// The live app: the model and statistics over the feed, and what the screen shows.
pub struct Top<F: Feed> {
    /// The feed.
    pub feed: F,
    config: TopConfig,
    pass: Pass,
    live: LiveStats,
    /// The snapshot on screen.
    pub snapshot: Option<Snapshot>,
    /// The view shown.
    pub view: TopView,
    /// First row shown, per view.
    pub scroll: [usize; 5],
    /// A message in the footer (dump written, error), with when it was set.
    pub status: Option<(String, Instant)>,
    /// The help overlay is open.
    pub help: bool,
    /// The display is frozen (the capture and statistics go on).
    pub paused: bool,
    /// Quit requested.
    pub quit: bool,
    last_tick: Instant,
    started: Instant,
    /// Snapshots taken.
    pub ticks: u64,
    /// Events taken from the feed and not yet stepped (a frame steps for at most
    /// [`STEP_BUDGET`], so keys stay responsive under any rate).
    backlog: std::collections::VecDeque<Event>,
}

/// How long the live view waits for a key when no event is waiting to be stepped.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The most time a frame spends stepping events.
pub const STEP_BUDGET: Duration = Duration::from_millis(40);

impl<F: Feed> Top<F> {
    /// A live app over `feed`.
    pub fn new(feed: F, config: TopConfig) -> Self {
        let pass = Pass::new(PassConfig { stats: StatsMode::Off, ..PassConfig::default() });
        Self {
            feed,
            config,
            pass,
            live: LiveStats::new(config.live),
            snapshot: None,
            view: TopView::Exits,
            scroll: [0; 5],
            status: None,
            help: false,
            paused: false,
            quit: false,
            last_tick: Instant::now(),
            started: Instant::now(),
            ticks: 0,
            backlog: std::collections::VecDeque::new(),
        }
    }

    /// Takes what the feed has and, once an interval has passed, a new snapshot; true when
    /// the screen must be drawn again.
    pub fn update(&mut self) -> bool {
        self.backlog.extend(self.feed.poll());
        let start = Instant::now();
        let mut stepped = 0u32;
        let mut done = Vec::with_capacity(self.backlog.len());
        while let Some(event) = self.backlog.pop_front() {
            let _ = self.pass.step(&event, &mut self.live);
            done.push(event);
            stepped = stepped.wrapping_add(1);
            if stepped.is_multiple_of(1024) && start.elapsed() >= STEP_BUDGET {
                break;
            }
        }
        if !done.is_empty() {
            self.feed.recycle(done);
        }
        let elapsed = self.last_tick.elapsed();
        if elapsed < self.config.interval {
            return false;
        }
        self.last_tick = Instant::now();
        let snap = self.live.tick(elapsed, self.pass.model());
        self.ticks += 1;
        if !self.paused {
            self.snapshot = Some(snap);
        }
        if self.status.as_ref().is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(10)) {
            self.status = None;
        }
        true
    }

    /// Events received and not yet counted (the screen is that far behind the host).
    pub fn behind(&self) -> usize {
        self.backlog.len()
    }

    /// Time since the app started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The configuration.
    pub fn config(&self) -> &TopConfig {
        &self.config
    }

    /// Handles a key of the terminal.
    pub fn key(&mut self, ev: &TermEvent) {
        if self.help {
            if let TermEvent::Key(k) = ev
                && k.kind != KeyEventKind::Release
            {
                self.help = false;
            }
            return;
        }
        if let TermEvent::Key(k) = ev
            && k.kind != KeyEventKind::Release
        {
            match k.code {
                KeyCode::Char('w') => return self.write_dump(),
                KeyCode::Char('p') => {
                    self.paused = !self.paused;
                    let what = if self.paused { "paused (p resumes)" } else { "resumed" };
                    self.status = Some((format!("display {what}"), Instant::now()));
                    return;
                }
                _ => {}
            }
        }
        let Some(action) = keys::action(ev, false) else { return };
        self.act(action);
    }

    /// Writes the dump and says so in the footer.
    pub fn write_dump(&mut self) {
        let msg = match self.feed.dump(self.config.dump_last) {
            Ok(m) => m,
            Err(e) => format!("dump failed: {e}"),
        };
        self.status = Some((msg, Instant::now()));
    }

    /// Applies a browser action (the keys of `vmxray tui`).
    pub fn act(&mut self, action: Action) {
        let i = self.view.index();
        match action {
            Action::Quit => self.quit = true,
            Action::Help => self.help = true,
            Action::Back => self.help = false,
            Action::NextView => self.view = TopView::ALL[(i + 1) % TopView::ALL.len()],
            Action::PrevView => {
                self.view = TopView::ALL[(i + TopView::ALL.len() - 1) % TopView::ALL.len()];
            }
            Action::Show(v) => {
                if let Some(view) = TopView::ALL.get(v.0) {
                    self.view = *view;
                }
            }
            Action::Down => self.scroll[i] += 1,
            Action::Up => self.scroll[i] = self.scroll[i].saturating_sub(1),
            Action::PageDown => self.scroll[i] += 10,
            Action::PageUp => self.scroll[i] = self.scroll[i].saturating_sub(10),
            Action::First => self.scroll[i] = 0,
            Action::Last => self.scroll[i] = usize::MAX / 2,
            Action::Scroll { down, .. } => {
                self.scroll[i] =
                    if down { self.scroll[i] + 3 } else { self.scroll[i].saturating_sub(3) };
            }
            _ => {}
        }
    }
}

/// Restores the terminal when dropped.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        crate::terminal::restore();
    }
}

/// Runs the live view until the user quits (or the feed ends), with the terminal restored.
pub fn run<F: Feed>(feed: F, config: TopConfig) -> io::Result<()> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        crate::terminal::restore();
        previous(info);
    }));
    enable_raw_mode()?;
    let _guard = Guard;
    execute!(io::stdout(), EnterAlternateScreen, EnableMouseCapture)?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut top = Top::new(feed, config);
    let mut dirty = true;
    loop {
        dirty |= top.update();
        if dirty {
            terminal.draw(|frame| draw(frame, &mut top))?;
            dirty = false;
        }
        if top.quit || top.feed.ended() {
            break;
        }
        // Events come every 100 ms at most (and keys wake the poll): waiting longer when
        // nothing is behind spares wakeups; a backlog is stepped on at once.
        let wait = if top.behind() > 0 { Duration::ZERO } else { IDLE_WAIT };
        if event::poll(wait)? {
            loop {
                let ev = event::read()?;
                if matches!(ev, TermEvent::Resize(..)) {
                    terminal.autoresize()?;
                }
                top.key(&ev);
                dirty = true;
                if top.quit || !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
    }
    let _ = execute!(io::stdout(), DisableMouseCapture, LeaveAlternateScreen);
    Ok(())
}
