//! Drawing: the frame (title, tabs, footer, help overlay) and one module per view. Every view
//! renders only what fits on screen from index queries on [`crate::trace::Trace`], so a frame
//! costs the same on a 150-event and a 10M-event trace.

pub mod anomalies;
pub mod detail;
mod detail_decoded;
pub mod state;
pub mod stats;
pub mod timeline;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};
use vmxray_capture::Clock;
use vmxray_capture::render::Line as NormalizedLine;
use vmxray_events::Event;
use vmxray_replay::{Actor, Severity};

use crate::app::{App, HitMap};
use crate::filter::Rows;
use crate::trace::{Progress, Tier, Trace};

pub use anomalies::AnomaliesView;
pub use detail::DetailView;
pub use state::StateView;
pub use stats::StatsView;
pub use timeline::TimelineView;

/// A view's place in the registry ([`registry`]): its Tab position, and key `1` + index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ViewId(pub usize);

impl ViewId {
    /// Anomalies and crashes, most severe first.
    pub const ANOMALIES: Self = Self(0);
    /// The event list with vCPU lanes.
    pub const TIMELINE: Self = Self(1);
    /// The model's state at the selected event.
    pub const STATE: Self = Self(2);
    /// Exit statistics.
    pub const STATS: Self = Self(3);
    /// Every field of the selected event.
    pub const DETAIL: Self = Self(4);
}

/// Every view, in Tab order (the consts of [`ViewId`] name these positions). A new view is
/// its module implementing [`View`] and one line here.
pub fn registry() -> Vec<Box<dyn View>> {
    vec![
        Box::new(AnomaliesView::default()),
        Box::new(TimelineView::default()),
        Box::new(StateView::default()),
        Box::new(StatsView::default()),
        Box::new(DetailView::default()),
    ]
}

/// What a view sees of the browser: the loaded trace, the timeline's rows (the filter), the
/// selected event, and the mouse targets of the frame being drawn.
pub struct Ctx<'a> {
    /// The loaded data.
    pub trace: &'a Trace,
    /// The timeline's rows.
    pub rows: &'a Rows,
    /// The selected event (shared by the views that show one).
    pub selected: &'a mut u64,
    /// Mouse targets.
    pub hits: &'a mut HitMap,
}

/// How the selection got somewhere (see [`View::on_jump`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jump {
    /// `a` / `A`: the next or previous anomaly.
    Anomaly,
    /// `c`, a time, a search match, an event number.
    Event,
}

/// One view of the browser. The app owns one of each ([`registry`]) and hands the current one
/// the keys and mouse gestures; the defaults suit a list of the timeline's events.
pub trait View {
    /// The Tab title.
    fn title(&self, trace: &Trace) -> String;

    /// Draws the view into `area`.
    fn draw(&mut self, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>);

    /// One row down (`delta` > 0) or up: `j`/`k`, arrows.
    fn move_by(&mut self, delta: i64, ctx: &mut Ctx<'_>) {
        move_event(delta, ctx);
    }

    /// A page down or up (PgDn/PgUp): `delta` is the page height.
    fn page(&mut self, delta: i64, ctx: &mut Ctx<'_>) {
        self.move_by(delta, ctx);
    }

    /// The mouse wheel.
    fn wheel(&mut self, delta: i64, ctx: &mut Ctx<'_>) {
        self.move_by(delta, ctx);
    }

    /// First (`g`) or last (`G`) row.
    fn to_end(&mut self, last: bool, ctx: &mut Ctx<'_>) {
        let rows = ctx.rows.len(ctx.trace);
        let row = if last { rows.saturating_sub(1) } else { 0 };
        if let Some(e) = ctx.rows.event_at(row, ctx.trace) {
            *ctx.selected = e;
        }
    }

    /// Enter: the view to show next, if any (after selecting what the row points at).
    fn enter(&mut self, ctx: &mut Ctx<'_>) -> Option<ViewId>;

    /// A click on row `row` of the view's list.
    fn click_row(&mut self, row: u64, ctx: &mut Ctx<'_>) {
        if row < ctx.rows.len(ctx.trace)
            && let Some(e) = ctx.rows.event_at(row, ctx.trace)
        {
            *ctx.selected = e;
        }
    }

    /// The selection jumped to event `at`: true when this view shows it (else the app shows
    /// the Timeline).
    fn on_jump(&mut self, _at: u64, _how: Jump, _ctx: &mut Ctx<'_>) -> bool {
        true
    }

    /// The timeline's filter changed.
    fn on_filter_change(&mut self) {}

    /// Scroll the vCPU lanes by `delta` (`<` / `>`, the wheel over the lanes); views without
    /// lanes ignore it.
    fn scroll_lanes(&mut self, _delta: i64, _ctx: &mut Ctx<'_>) {}
}

/// Moves the selected event by `delta` timeline rows.
pub fn move_event(delta: i64, ctx: &mut Ctx<'_>) {
    let rows = ctx.rows.len(ctx.trace);
    if rows == 0 {
        return;
    }
    let row = ctx.rows.row_of(*ctx.selected, ctx.trace);
    let target = if delta >= 0 {
        row.saturating_add(delta.unsigned_abs()).min(rows - 1)
    } else {
        row.saturating_sub(delta.unsigned_abs())
    };
    if let Some(e) = ctx.rows.event_at(target, ctx.trace) {
        *ctx.selected = e;
    }
}

/// Colours and styles shared by the views.
pub mod theme {
    use super::*;

    /// A severity's colour.
    pub fn severity(s: Severity) -> Style {
        match s {
            Severity::Critical => Style::new().fg(Color::LightRed).add_modifier(Modifier::BOLD),
            Severity::Error => Style::new().fg(Color::Red),
            Severity::Warning => Style::new().fg(Color::Yellow),
            Severity::Info => Style::new().fg(Color::Blue),
        }
    }

    /// A level's colour.
    pub fn tier(t: Tier) -> Style {
        match t {
            Tier::L0Exit => Style::new().fg(Color::LightRed),
            Tier::L1 => Style::new().fg(Color::Green),
            Tier::L2 => Style::new().fg(Color::Magenta),
            Tier::Unknown => Style::new().fg(Color::Gray),
        }
    }

    /// The selected row.
    pub fn selected() -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    /// A value the selected event changed.
    pub fn changed() -> Style {
        Style::new().fg(Color::Black).bg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    /// Section headings.
    pub fn heading() -> Style {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// Secondary text.
    pub fn dim() -> Style {
        Style::new().fg(Color::DarkGray)
    }

    /// Crash marker.
    pub fn crash() -> Style {
        Style::new().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// Lost-events marker.
    pub fn lost() -> Style {
        Style::new().fg(Color::Black).bg(Color::Yellow)
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &mut App) {
    app.frame_count += 1;
    let [title, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_title(frame, title, app);
    draw_tabs(frame, tabs, app);
    app.hits.list = None;
    app.hits.lanes = None;
    app.with_view(|view, ctx| view.draw(frame, body, ctx));
    draw_footer(frame, footer, app);
    if app.help {
        draw_help(frame, frame.area());
    }
}

const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

fn draw_title(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let trace = &app.trace;
    let name = trace.meta.as_ref().map_or("(opening…)".to_owned(), |m| m.input.to_string());
    let mut spans = vec![
        Span::styled(" vmxray ", Style::new().fg(Color::Black).bg(Color::Cyan).bold()),
        Span::raw(" "),
        Span::styled(name, Style::new().bold()),
    ];
    spans.push(Span::raw(format!("  {} events", group(trace.len()))));
    match &trace.progress {
        Progress::Loading { elapsed, fraction, .. } => {
            let spin = SPINNER[usize::try_from(app.frame_count % 4).unwrap_or(0)];
            let pct = fraction.map_or(String::new(), |f| format!(" {:.0}%", f * 100.0));
            spans.push(Span::styled(
                format!("  {spin} loading{pct}… {:.1}s", elapsed.as_secs_f64()),
                Style::new().fg(Color::Yellow),
            ));
        }
        Progress::Done { .. } => {
            if let Some(f) = trace.rebuilding {
                spans.push(Span::styled(
                    format!("  rebuilding model state from the saved index {:.0}%", f * 100.0),
                    Style::new().fg(Color::Yellow),
                ));
            }
        }
        Progress::Failed { error } => spans
            .push(Span::styled(format!("  read stopped: {error}"), Style::new().fg(Color::Red))),
    }
    let [c, e, w, _] = trace.severity_counts();
    let lost: u64 = trace.read.as_ref().map_or(0, |r| r.lost.values().map(|l| l.events).sum());
    let skipped = trace.read.as_ref().map_or(0, |r| r.skipped);
    spans.push(Span::raw("  "));
    spans.push(Span::styled(format!("{c} critical "), theme::severity(Severity::Critical)));
    spans.push(Span::styled(format!("{e} error "), theme::severity(Severity::Error)));
    spans.push(Span::styled(format!("{w} warning"), theme::severity(Severity::Warning)));
    if !trace.crashes.is_empty() {
        spans.push(Span::styled(format!("  {} crash", trace.crashes.len()), theme::crash()));
    }
    if !trace.lost.is_empty() || lost > 0 {
        spans.push(Span::styled(
            format!("  lost {} in {} gaps", lost, trace.lost.len()),
            theme::lost(),
        ));
    }
    if skipped > 0 {
        spans.push(Span::styled(format!("  skipped {skipped}"), Style::new().fg(Color::Red)));
    }
    if let Some(meta) = &trace.meta {
        spans.push(Span::styled(
            format!("  {} · clock {}", format_name(meta.format), meta.clock.name()),
            theme::dim(),
        ));
        if let Some(k) = &meta.kernel {
            spans.push(Span::styled(format!(" · {k}"), theme::dim()));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn format_name(f: vmxray_capture::InputFormat) -> &'static str {
    use vmxray_capture::InputFormat;
    match f {
        InputFormat::FtraceText => "ftrace text",
        InputFormat::TraceCmdText => "trace-cmd report text",
        InputFormat::PerfScriptText => "perf script text",
        InputFormat::TraceDat => "trace.dat",
        InputFormat::PerfData => "perf.data",
        InputFormat::TracefsDir => "tracefs dir",
    }
}

fn draw_tabs(frame: &mut Frame<'_>, area: Rect, app: &mut App) {
    let mut spans = Vec::new();
    let mut x = area.x;
    app.hits.tabs.clear();
    let titles: Vec<String> = app.views().iter().map(|v| v.title(&app.trace)).collect();
    for (i, title) in titles.into_iter().enumerate() {
        let label = format!(" {} {title} ", i + 1);
        let width = u16::try_from(label.chars().count()).unwrap_or(u16::MAX);
        app.hits.tabs.push((Rect::new(x, area.y, width, 1), ViewId(i)));
        x = x.saturating_add(width + 1);
        let style = if ViewId(i) == app.view {
            Style::new().fg(Color::Black).bg(Color::White).bold()
        } else {
            Style::new().fg(Color::Gray)
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    if let Some(f) = app.rows.filter() {
        spans.push(Span::styled(format!(" filter: {} ", f.spec), Style::new().fg(Color::Cyan)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let line = if let Some(p) = &app.prompt {
        Line::from(vec![
            Span::styled(p.kind.leader(), Style::new().fg(Color::Cyan)),
            Span::raw(p.text.clone()),
            Span::styled("█", Style::new().fg(Color::Gray)),
        ])
    } else if app.rows.filter().is_some() && app.rows.pending(&app.trace) {
        Line::from(Span::styled(
            format!(
                "filtering… {} of {} events",
                group(app.rows.scanned()),
                group(app.trace.len())
            ),
            Style::new().fg(Color::Yellow),
        ))
    } else if let Some(s) = app.search.as_ref().filter(|s| s.running.is_some()) {
        let tested = s.running.map_or(0, |(_, _, t)| t);
        Line::from(Span::styled(
            format!("searching for “{}”… {} events tested (Esc cancels)", s.query, group(tested)),
            Style::new().fg(Color::Yellow),
        ))
    } else if let Some(msg) = &app.status {
        Line::from(Span::raw(msg.clone()))
    } else if let Progress::Loading { elapsed, fraction: Some(f), events } = app.trace.progress {
        Line::from(Span::styled(
            progress_line(elapsed, f, events, area.width),
            Style::new().fg(Color::Yellow),
        ))
    } else if let Some(f) = app.trace.rebuilding {
        Line::from(Span::styled(
            rebuild_line(app.trace.rebuild_elapsed, f, area.width),
            Style::new().fg(Color::Yellow),
        ))
    } else {
        Line::from(Span::styled(
            "q quit  ? help  Tab view  j/k move  Enter open  a/A anomaly  c crash  / search  f filter  t time",
            theme::dim(),
        ))
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The loading progress as a bar with the percentage, the events read and the time left
/// (elapsed × what is left / what is done).
pub fn progress_line(
    elapsed: std::time::Duration,
    fraction: f64,
    events: u64,
    width: u16,
) -> String {
    bar_line("loading", elapsed, fraction, &format!("{} events read", group(events)), width)
}

/// The model checkpoints' replay after a reopen from the saved index (the State view and the
/// rows' levels fill in behind it), as a bar with the percentage and the time left.
pub fn rebuild_line(elapsed: std::time::Duration, fraction: f64, width: u16) -> String {
    bar_line("model state", elapsed, fraction, "replaying from the saved index", width)
}

fn bar_line(
    label: &str,
    elapsed: std::time::Duration,
    fraction: f64,
    detail: &str,
    width: u16,
) -> String {
    let f = fraction.clamp(0.0, 1.0);
    let eta = if f > 0.0 {
        let left = elapsed.as_secs_f64() * (1.0 - f) / f;
        format!("ETA {left:.0} s")
    } else {
        "ETA …".to_owned()
    };
    let text = format!(" {:>3.0}%  {detail}  {eta}  (q quit, ? help)", f * 100.0);
    let bar_width = usize::from(width).saturating_sub(text.chars().count() + 2).clamp(10, 40);
    // Whole cells filled: the count of cell ends that the fraction has passed (no float cast).
    let filled =
        (1..=bar_width).take_while(|c| (*c as f64) <= (bar_width as f64) * f + 0.5).count();
    format!(
        "{label} ▕{}{}▏{text}",
        "█".repeat(filled.min(bar_width)),
        "░".repeat(bar_width.saturating_sub(filled))
    )
}

/// The keys, for the help overlay.
pub const HELP: &[(&str, &str)] = &[
    ("j / k, ↓ / ↑", "next / previous row (event, anomaly, reason)"),
    ("PgDn / PgUp", "a page down / up (scrolls State, Detail, Stats)"),
    ("g / G, Home / End", "first / last row"),
    ("Enter", "Anomalies: jump to the event · Timeline: event detail"),
    ("Tab / Shift-Tab, 1-5", "next / previous view, view by number"),
    ("a / A", "next / previous anomaly"),
    ("c", "next crash (shutdown, triple fault, failed entry)"),
    ("< / >", "scroll the vCPU lanes (more than 8 vCPUs; the wheel over the lanes too)"),
    ("/ , n / N", "search event lines (#123: event 123), next / previous match"),
    ("f", "filter: vcpu=0,1 cpu= level=L0|L1|L2 reason=EPT_VIOLATION event=kvm_exit rule=…"),
    ("t", "jump to a time in seconds (3836.4425) or #event"),
    ("mouse", "wheel scrolls, click selects a row or a tab"),
    ("Esc", "close prompt / cancel search / back to Anomalies"),
    ("?", "this help"),
    ("q", "quit"),
];

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    draw_keys(
        frame,
        area,
        "Timeline colours: L0 exit (red) · L1 (green) · L2 (magenta) · ! anomaly · X crash · ~ lost",
        HELP,
    );
}

/// The help overlay of a screen (the browser's, `vmxray top`'s): a legend line, then each key
/// with what it does, centred over `area`.
pub(crate) fn draw_keys(frame: &mut Frame<'_>, area: Rect, legend: &str, keys: &[(&str, &str)]) {
    let width = area.width.min(96);
    let height = area.height.min(u16::try_from(keys.len()).unwrap_or(20).saturating_add(4));
    let popup = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    let mut lines = vec![Line::from(Span::styled(legend.to_owned(), theme::dim()))];
    for (key, what) in keys {
        lines.push(Line::from(vec![
            Span::styled(format!("{key:<22}"), Style::new().fg(Color::Cyan).bold()),
            Span::raw((*what).to_owned()),
        ]));
    }
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Keys (any key closes) ")),
        popup,
    );
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An actor as a short column value.
pub fn actor_label(actor: Option<Actor>) -> String {
    match actor {
        Some(Actor::Vcpu(v)) if v.vm.0 == 0 => format!("v{}", v.id),
        Some(Actor::Vcpu(v)) => format!("m{}v{}", v.vm.0, v.id),
        Some(Actor::Thread(t)) => format!("t{t}"),
        None => "all".to_owned(),
    }
}

/// The fields and decodings of the normalized line (`vmxray dump`), without the columns the
/// timeline shows separately (time, CPU, pid, comm, name, vCPU).
pub fn event_fields(event: &Event, clock: &Clock) -> String {
    let line = NormalizedLine { event, clock, vcpu: None, print: None }.to_string();
    let marker = format!(" {}:{}", event.system(), event.name());
    let rest = line.find(&marker).map_or(line.as_str(), |p| &line[p + marker.len()..]).trim_start();
    match rest.strip_prefix("vcpu=") {
        Some(after) => after.split_once(' ').map_or("", |(_, r)| r).to_owned(),
        None => rest.to_owned(),
    }
}
