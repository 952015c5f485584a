//! The browser's state and its reaction to input. [`App`] only routes: each view owns its own
//! state ([`crate::views`]), the loaded data lives in [`Trace`], the timeline rows (filter) in
//! [`Rows`]. Input arrives as [`Action`]s (mapped from keys and mouse in [`crate::keys`]) so
//! that tests drive the app without a terminal.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use ratatui::layout::{Position, Rect};
use vmxray_capture::filter::TimeRange;
use vmxray_capture::render::Line as NormalizedLine;

use crate::filter::{Filter, Rows};
use crate::loader::LoadMsg;
use crate::trace::Trace;
pub use crate::views::ViewId;
use crate::views::{Ctx, Jump, View, group};

/// What the user asked for, whatever the key or mouse gesture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave.
    Quit,
    /// One row down / up (`j`/`k`, arrows).
    Down,
    /// One row up.
    Up,
    /// A page down (PgDn, Ctrl-f).
    PageDown,
    /// A page up.
    PageUp,
    /// First row (`g`, Home).
    First,
    /// Last row (`G`, End).
    Last,
    /// Open / jump (Enter).
    Enter,
    /// Close a prompt or overlay, or go back (Esc).
    Back,
    /// Next view (Tab).
    NextView,
    /// Previous view (Shift-Tab).
    PrevView,
    /// A view by number.
    Show(ViewId),
    /// Toggle the help overlay (`?`).
    Help,
    /// Start a prompt.
    Prompt(PromptKind),
    /// Next / previous search match (`n` / `N`).
    SearchNext(bool),
    /// Next / previous anomaly (`a` / `A`).
    Anomaly(bool),
    /// Next crash (`c`).
    Crash,
    /// Text typed into a prompt.
    Type(char),
    /// Backspace in a prompt.
    Erase,
    /// Mouse wheel over a position.
    Scroll {
        /// Down (true) or up.
        down: bool,
        /// Where.
        at: Position,
    },
    /// Mouse click.
    Click(Position),
}

/// What a prompt asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    /// `/`: search the normalized event lines.
    Search,
    /// `f`: filter the timeline.
    Filter,
    /// `t`: jump to a time (seconds) or `#index`.
    Time,
}

impl PromptKind {
    /// The prompt's leader.
    pub fn leader(self) -> &'static str {
        match self {
            Self::Search => "/",
            Self::Filter => "filter (vcpu= cpu= level= reason= event= rule=): ",
            Self::Time => "time (seconds or #event): ",
        }
    }
}

/// A prompt being typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// Which.
    pub kind: PromptKind,
    /// The text so far.
    pub text: String,
}

/// A search in progress or done: scanned in slices between frames, so a search over millions
/// of events never freezes the screen.
#[derive(Clone, Debug)]
pub struct Search {
    /// Lower-case query.
    pub query: String,
    /// Running: next row to test, direction, rows tested.
    pub running: Option<(u64, bool, u64)>,
}

/// Screen regions the last frame drew, for mouse hits.
#[derive(Clone, Debug, Default)]
pub struct HitMap {
    /// Tab titles.
    pub tabs: Vec<(Rect, ViewId)>,
    /// The list area of the current view and the row shown on its first line.
    pub list: Option<(Rect, u64)>,
    /// The timeline's lane cells and the number of events they span.
    pub lanes: Option<(Rect, u64)>,
}

/// The browser.
pub struct App {
    /// The loaded data.
    pub trace: Trace,
    rx: Option<Receiver<LoadMsg>>,
    /// The view shown.
    pub view: ViewId,
    /// The selected event (shared by Timeline, State and Detail).
    pub selected: u64,
    /// Timeline rows (filter).
    pub rows: Rows,
    /// Every view, in Tab order ([`crate::views::registry`]).
    views: Vec<Box<dyn View>>,
    /// The prompt being typed.
    pub prompt: Option<Prompt>,
    /// The last search.
    pub search: Option<Search>,
    /// The help overlay is shown.
    pub help: bool,
    /// A one-line message for the footer.
    pub status: Option<String>,
    /// Quit was asked.
    pub quit: bool,
    /// Mouse targets of the last frame.
    pub hits: HitMap,
    /// Frames drawn (drives the loading spinner).
    pub frame_count: u64,
    /// A filter is being applied: the event selected before it, to snap to when done.
    refilter_from: Option<u64>,
}

/// Rows a search tests per tick (between two frames).
const SEARCH_SLICE: u64 = 100_000;
/// Events a new filter looks at per tick.
const FILTER_SLICE: u64 = 500_000;

impl App {
    /// An app fed by a loader channel.
    pub fn new(rx: Receiver<LoadMsg>) -> Self {
        Self::with_trace(Trace::default(), Some(rx))
    }

    /// An app over an already loaded trace (tests).
    pub fn loaded(trace: Trace) -> Self {
        Self::with_trace(trace, None)
    }

    fn with_trace(trace: Trace, rx: Option<Receiver<LoadMsg>>) -> Self {
        Self {
            trace,
            rx,
            view: ViewId::ANOMALIES,
            selected: 0,
            rows: Rows::default(),
            views: crate::views::registry(),
            prompt: None,
            search: None,
            help: false,
            status: None,
            quit: false,
            hits: HitMap::default(),
            frame_count: 0,
            refilter_from: None,
        }
    }

    /// Takes what the loader sent, for at most `budget`; true when something changed.
    pub fn drain(&mut self, budget: Duration) -> bool {
        let Some(rx) = &self.rx else { return false };
        let start = Instant::now();
        let mut changed = false;
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    self.trace.apply(msg);
                    changed = true;
                    if start.elapsed() >= budget {
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.rx = None;
                    break;
                }
            }
        }
        changed
    }

    /// Work between frames: the filter and a running search advance by one slice each. True
    /// when something moved.
    pub fn tick(&mut self) -> bool {
        let mut moved = false;
        if self.rows.pending(&self.trace) {
            let more = self.rows.catch_up(&self.trace, FILTER_SLICE);
            moved = true;
            if !more && let Some(from) = self.refilter_from.take() {
                self.snap_to_rows(from);
                self.status = Some(format!("{} events match", group(self.rows.len(&self.trace))));
            }
        }
        moved | self.step_search()
    }

    /// Filters everything loaded now (tests; the UI does it in slices).
    pub fn settle(&mut self) {
        while self.tick() {}
    }

    fn snap_to_rows(&mut self, from: u64) {
        if let Some(e) = self.rows.event_at(self.rows.row_of(from, &self.trace)) {
            self.selected = e;
        }
    }

    /// Whether the loader is still sending.
    pub fn loading(&self) -> bool {
        self.rx.is_some()
    }

    /// Reacts to one action.
    pub fn act(&mut self, action: Action) {
        if let Some(prompt) = &mut self.prompt {
            match action {
                Action::Type(c) => prompt.text.push(c),
                Action::Erase => {
                    prompt.text.pop();
                }
                Action::Back => self.prompt = None,
                Action::Enter => {
                    if let Some(p) = self.prompt.take() {
                        self.submit(p);
                    }
                }
                Action::Quit => self.prompt = None,
                _ => {}
            }
            return;
        }
        if self.help {
            if matches!(action, Action::Help | Action::Back | Action::Quit | Action::Enter) {
                self.help = false;
            }
            return;
        }
        self.status = None;
        match action {
            Action::Quit => self.quit = true,
            Action::Help => self.help = true,
            Action::NextView => self.view = ViewId((self.view.0 + 1) % self.views.len()),
            Action::PrevView => {
                self.view = ViewId((self.view.0 + self.views.len() - 1) % self.views.len());
            }
            Action::Show(v) => {
                if v.0 < self.views.len() {
                    self.view = v;
                }
            }
            Action::Prompt(kind) => self.prompt = Some(Prompt { kind, text: String::new() }),
            Action::SearchNext(forward) => self.search_again(forward),
            Action::Anomaly(forward) => self.jump_anomaly(forward),
            Action::Crash => self.jump_crash(),
            Action::Back => {
                if let Some(s) = &mut self.search
                    && s.running.is_some()
                {
                    s.running = None;
                    self.status = Some("Search cancelled".into());
                } else if self.view != ViewId::ANOMALIES {
                    self.view = ViewId::ANOMALIES;
                }
            }
            Action::Type(_) | Action::Erase => {}
            Action::Scroll { down, at } => self.scroll(down, at),
            Action::Click(at) => self.click(at),
            Action::Enter => self.enter(),
            Action::Down => self.move_by(1),
            Action::Up => self.move_by(-1),
            Action::PageDown => self.page(true),
            Action::PageUp => self.page(false),
            Action::First => self.move_to_end(false),
            Action::Last => self.move_to_end(true),
        }
    }

    fn page_rows(&self) -> i64 {
        self.hits.list.map_or(20, |(r, _)| i64::from(r.height.saturating_sub(1)).max(1))
    }

    /// Runs `f` on the current view with the context every view shares.
    pub fn with_view<R>(&mut self, f: impl FnOnce(&mut dyn View, &mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            trace: &self.trace,
            rows: &self.rows,
            selected: &mut self.selected,
            hits: &mut self.hits,
        };
        f(self.views[self.view.0].as_mut(), &mut ctx)
    }

    /// Every view, in Tab order.
    pub fn views(&self) -> &[Box<dyn View>] {
        &self.views
    }

    fn move_by(&mut self, delta: i64) {
        self.with_view(|v, ctx| v.move_by(delta, ctx));
    }

    fn page(&mut self, down: bool) {
        let n = self.page_rows();
        let delta = if down { n } else { -n };
        self.with_view(|v, ctx| v.page(delta, ctx));
    }

    fn move_to_end(&mut self, last: bool) {
        self.with_view(|v, ctx| v.to_end(last, ctx));
    }

    /// Moves the event selection by `delta` timeline rows.
    pub fn move_event(&mut self, delta: i64) {
        self.with_view(|_, ctx| crate::views::move_event(delta, ctx));
    }

    /// Selects event `index` (state and detail follow).
    pub fn select(&mut self, index: u64) {
        self.selected = index.min(self.trace.len().saturating_sub(1));
    }

    fn enter(&mut self) {
        if let Some(next) = self.with_view(|v, ctx| v.enter(ctx)) {
            self.view = next;
        }
    }

    /// The selection jumped to `at`: every view hears of it, and the Timeline is shown when
    /// the current view does not show the event.
    fn jumped(&mut self, at: u64, how: Jump) {
        self.select(at);
        let current = self.view.0;
        let mut shown = false;
        let mut ctx = Ctx {
            trace: &self.trace,
            rows: &self.rows,
            selected: &mut self.selected,
            hits: &mut self.hits,
        };
        for (i, view) in self.views.iter_mut().enumerate() {
            let shows = view.on_jump(at, how, &mut ctx);
            shown |= i == current && shows;
        }
        if !shown {
            self.view = ViewId::TIMELINE;
        }
    }

    fn jump_anomaly(&mut self, forward: bool) {
        match self.trace.next_anomaly(self.selected, forward) {
            Some(at) => {
                self.jumped(at, Jump::Anomaly);
                let here = self.trace.anomalies_at(at);
                if let Some(a) = here.first() {
                    self.status =
                        Some(format!("#{at} {} {}: {}", a.severity, a.rule.name(), a.message));
                }
            }
            None => {
                self.status = Some(if forward {
                    "No anomaly after this event".into()
                } else {
                    "No anomaly before this event".into()
                });
            }
        }
    }

    fn jump_crash(&mut self) {
        match self.trace.next_crash(self.selected) {
            Some(at) => {
                self.jumped(at, Jump::Event);
                let kind = self.trace.crashes.iter().find(|(i, _)| *i == at).map(|(_, k)| *k);
                if let Some(k) = kind {
                    self.status = Some(format!("#{at} crash: {}", k.describe()));
                }
            }
            None => self.status = Some("No crash in this trace".into()),
        }
    }

    fn submit(&mut self, prompt: Prompt) {
        match prompt.kind {
            PromptKind::Filter => {
                if prompt.text.trim().is_empty() {
                    self.rows.set_filter(None, &self.trace, FILTER_SLICE);
                    self.views.iter_mut().for_each(|v| v.on_filter_change());
                    self.status = Some("Filter cleared".into());
                    return;
                }
                match Filter::parse(&prompt.text) {
                    Ok(f) => {
                        self.rows.set_filter(Some(f), &self.trace, FILTER_SLICE);
                        self.views.iter_mut().for_each(|v| v.on_filter_change());
                        if self.rows.pending(&self.trace) {
                            self.refilter_from = Some(self.selected);
                        } else {
                            self.snap_to_rows(self.selected);
                            let n = self.rows.len(&self.trace);
                            self.status = Some(format!("{} events match", group(n)));
                        }
                    }
                    Err(e) => self.status = Some(format!("Filter: {e}")),
                }
            }
            PromptKind::Time => self.jump_time(prompt.text.trim()),
            PromptKind::Search => {
                let query = prompt.text.trim().to_lowercase();
                if query.is_empty() {
                    return;
                }
                if let Some(index) = query.strip_prefix('#').and_then(|n| n.parse::<u64>().ok()) {
                    self.select(index);
                    return;
                }
                self.search = Some(Search { query, running: None });
                self.search_again(true);
            }
        }
    }

    fn jump_time(&mut self, text: &str) {
        if let Some(index) = text.strip_prefix('#').and_then(|n| n.parse::<u64>().ok()) {
            self.select(index);
            return;
        }
        let ns = self.trace.clock().is_ns();
        match TimeRange::parse(&format!("{text}.."), ns) {
            Ok(TimeRange { from: Some(ts), .. }) => {
                let index = self.trace.index_at_time(ts);
                self.jumped(index, Jump::Event);
            }
            Ok(_) | Err(_) => {
                self.status =
                    Some(format!("Time: `{text}` is not seconds (e.g. 3836.4425) or #event"))
            }
        }
    }

    fn search_again(&mut self, forward: bool) {
        let Some(search) = &mut self.search else {
            self.status = Some("No search yet: press /".into());
            return;
        };
        let row = self.rows.row_of(self.selected, &self.trace);
        let start = if forward { row + 1 } else { row.wrapping_sub(1) };
        search.running = Some((start, forward, 0));
        self.step_search();
    }

    fn step_search(&mut self) -> bool {
        let Some(search) = &mut self.search else { return false };
        let Some((mut row, forward, mut tested)) = search.running else { return false };
        let rows = self.rows.len(&self.trace);
        let clock = self.trace.clock();
        for _ in 0..SEARCH_SLICE {
            if tested >= rows {
                search.running = None;
                self.status = Some(format!("Pattern not found: {}", search.query));
                return true;
            }
            if row >= rows {
                row = if forward { 0 } else { rows - 1 };
            }
            if let Some(index) = self.rows.event_at(row)
                && let Some(event) = self.trace.event(index)
            {
                let line =
                    NormalizedLine { event, clock: &clock, vcpu: None, print: None }.to_string();
                if contains_ignore_case(&line, &search.query) {
                    search.running = None;
                    self.jumped(index, Jump::Event);
                    return true;
                }
            }
            tested += 1;
            row = if forward { row + 1 } else { row.wrapping_sub(1) };
        }
        search.running = Some((row, forward, tested));
        true
    }

    fn scroll(&mut self, down: bool, at: Position) {
        let _ = at;
        let delta = if down { 3 } else { -3 };
        self.with_view(|v, ctx| v.wheel(delta, ctx));
    }

    fn click(&mut self, at: Position) {
        if let Some((_, view)) = self.hits.tabs.iter().find(|(r, _)| r.contains(at)) {
            self.view = *view;
            return;
        }
        if let Some((lanes, events)) = self.hits.lanes
            && lanes.contains(at)
            && lanes.width > 0
        {
            // A lane column covers events [c*n/w, (c+1)*n/w).
            let column = u64::from(at.x - lanes.x);
            self.select(column * events / u64::from(lanes.width));
            return;
        }
        let Some((area, first)) = self.hits.list else { return };
        if !area.contains(at) {
            return;
        }
        let row = first + u64::from(at.y - area.y);
        self.with_view(|v, ctx| v.click_row(row, ctx));
    }
}

fn contains_ignore_case(haystack: &str, lower_needle: &str) -> bool {
    if haystack.is_ascii() && lower_needle.is_ascii() {
        let h = haystack.as_bytes();
        let n = lower_needle.as_bytes();
        n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        haystack.to_lowercase().contains(lower_needle)
    }
}
