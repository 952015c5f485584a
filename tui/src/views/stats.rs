//! Stats view: the `vmxray stats` report (`vmxray_analyze::stats::StatsReport`, the same
//! numbers): exit reasons as bars, the selected reason's latency histogram (the report's
//! log-spaced bins, as bars) under its percentiles (p50, p90, p99, p99.9, min, max), its L1/L2
//! split and the per-vCPU breakdown. For a trace without `kvm_exit`, the report's own text
//! (emulated instructions, exceptions, userspace exits, ...).

use super::{Ctx, Jump, View, ViewId};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use vmxray_analyze::stats::{
    ExitReport, ExitRow, Format, StatsReport, TimeUnit, level_label, write_report,
};

use super::{group, theme};
use crate::trace::Trace;

/// The Stats view's state.
#[derive(Clone, Debug, Default)]
pub struct StatsView {
    selected: usize,
    scroll: u16,
    text: Option<String>,
}

impl StatsView {
    /// Moves the reason selection.
    pub fn move_by(&mut self, delta: i64, trace: &Trace) {
        let n = reasons(trace).map_or(0, |e| e.by_reason.len());
        if n == 0 {
            self.scroll_by(delta);
            return;
        }
        let cur = i64::try_from(self.selected).unwrap_or(0);
        let t = cur.saturating_add(delta).clamp(0, i64::try_from(n - 1).unwrap_or(0));
        self.selected = usize::try_from(t).unwrap_or(0);
    }

    /// Scrolls (the text report, for traces without exits).
    pub fn scroll_by(&mut self, delta: i64) {
        let s = i64::from(self.scroll).saturating_add(delta).clamp(0, i64::from(u16::MAX));
        self.scroll = u16::try_from(s).unwrap_or(0);
    }

    /// Selects a reason by list row (mouse).
    pub fn select_row(&mut self, row: u64, trace: &Trace) {
        let n = reasons(trace).map_or(0, |e| e.by_reason.len());
        if let Ok(r) = usize::try_from(row)
            && r < n
        {
            self.selected = r;
        }
    }

    /// The timestamp of the slowest exit of the selected reason (Enter jumps there).
    pub fn selected_slowest_ts(&self, trace: &Trace) -> Option<u64> {
        let exits = reasons(trace)?;
        let reason = exits.by_reason.get(self.selected)?.reason.as_ref()?;
        exits.slowest.iter().find(|s| s.reason == *reason).map(|s| s.exit_ts)
    }
}

fn reasons(trace: &Trace) -> Option<&ExitReport> {
    trace.stats.as_ref()?.exits.as_ref()
}

fn unit(report: &StatsReport) -> &'static str {
    match report.time_unit {
        TimeUnit::Ns => "ns",
        TimeUnit::Raw => "clock units",
    }
}

fn bar(value: u64, max: u64, width: usize) -> String {
    if max == 0 || width == 0 {
        return String::new();
    }
    let eighths = (u128::from(value) * (width as u128) * 8 / u128::from(max)) as usize;
    let mut s = "█".repeat(eighths / 8);
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    s.push_str(PARTS[eighths % 8]);
    s
}

/// Draws the Stats view.
fn draw_view(view_state: &mut StatsView, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
    let Some(report) = ctx.trace.stats.as_deref() else {
        let msg = format!(
            "Counting… the statistics appear when the whole trace is read ({} events so far).",
            group(ctx.trace.len())
        );
        frame.render_widget(Paragraph::new(msg).block(Block::bordered().title(" Stats ")), area);
        return;
    };
    let Some(exits) = report.exits.as_ref() else {
        let view = &mut *view_state;
        let text = view.text.get_or_insert_with(|| {
            let mut buf = Vec::new();
            let _ = write_report(report, Format::Text, &mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        frame.render_widget(
            Paragraph::new(text.clone()).scroll((view.scroll, 0)).block(
                Block::bordered().title(" Stats — no kvm_exit in this trace (as `vmxray stats`) "),
            ),
            area,
        );
        return;
    };
    let view = &mut *view_state;
    view.selected = view.selected.min(exits.by_reason.len().saturating_sub(1));
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    // Exit reasons.
    let max = exits.by_reason.iter().map(|r| r.count).max().unwrap_or(0);
    let bar_width = usize::from(left.width.saturating_sub(2 + 22 + 10 + 8 + 1));
    let mut lines = vec![Line::from(Span::styled(
        format!("{:<22}{:>10}{:>8} ", "REASON", "EXITS", "%"),
        theme::heading(),
    ))];
    let height = usize::from(left.height.saturating_sub(3));
    let offset = view.selected.saturating_sub(height.saturating_sub(1));
    for (i, row) in exits.by_reason.iter().enumerate().skip(offset).take(height) {
        let name = row.reason.as_ref().map_or("all".to_owned(), |r| r.name.clone());
        let mut line = Line::from(vec![
            Span::raw(format!("{name:<22}{:>10}{:>7.2}% ", row.count, row.percent)),
            Span::styled(bar(row.count, max, bar_width), Style::new().fg(Color::Cyan)),
        ]);
        if i == view.selected {
            line = line.style(theme::selected());
        }
        lines.push(line);
    }
    let levels = exits.levels.map_or(String::new(), |l| {
        format!(
            " · L1 {} / L2 {} (L0 kept {}, reflected {})",
            group(l.l1),
            group(l.l2),
            group(l.l2_l0_handled),
            group(l.l2_reflected)
        )
    });
    let title = format!(" Exit reasons: {} kvm_exit{levels} ", group(exits.total));
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), left);
    ctx.hits.list = Some((
        Rect::new(
            left.x + 1,
            left.y + 2,
            left.width.saturating_sub(2),
            left.height.saturating_sub(3),
        ),
        offset as u64,
    ));

    let selected = exits.by_reason.get(view_state.selected);
    let [lat_area, split_area, vcpu_area] = Layout::vertical([
        Constraint::Length(latency_height(selected)),
        Constraint::Length(5),
        Constraint::Min(3),
    ])
    .areas(right);
    draw_latency(frame, lat_area, report, selected);
    draw_split(frame, split_area, exits, selected);
    draw_vcpus(frame, vcpu_area, report, exits);
}

fn reason_name(row: Option<&ExitRow>) -> String {
    row.and_then(|r| r.reason.as_ref()).map_or("-".into(), |r| r.name.clone())
}

/// Rows of the latency panel for a row: borders, two lines of figures, one per histogram bin,
/// one line of totals.
fn latency_height(row: Option<&ExitRow>) -> u16 {
    let bins = row.and_then(|r| r.latency.as_ref()).map_or(1, |l| l.histogram.len().max(1));
    u16::try_from(bins).unwrap_or(u16::MAX).saturating_add(5)
}

fn draw_latency(frame: &mut Frame<'_>, area: Rect, report: &StatsReport, row: Option<&ExitRow>) {
    let title = format!(" Latency of {} ({}) ", reason_name(row), unit(report));
    let mut lines = Vec::new();
    match row.and_then(|r| r.latency.as_ref().map(|l| (r, l))) {
        Some((r, l)) => {
            let figure = |name: &'static str, v: u64| {
                [Span::styled(format!("{name} "), theme::dim()), Span::raw(format!("{v}  "))]
            };
            lines.push(Line::from(
                [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p99.9", l.p999)]
                    .into_iter()
                    .flat_map(|(name, v)| figure(name, v))
                    .collect::<Vec<_>>(),
            ));
            let mut totals: Vec<Span<'_>> = [("min", l.min), ("max", l.max), ("n", l.count)]
                .into_iter()
                .flat_map(|(name, v)| figure(name, v))
                .collect();
            totals.push(Span::styled("mean ", theme::dim()));
            totals.push(Span::raw(format!("{:.1}  ", l.mean)));
            totals.push(Span::styled("stddev ", theme::dim()));
            totals.push(Span::raw(format!("{:.1}", l.stddev)));
            lines.push(Line::from(totals));
            // Bins as `lo–hi  count  bar`, the range columns as wide as the largest value.
            let value_width = l.max.to_string().len();
            let most = l.histogram.iter().map(|b| b.count).max().unwrap_or(0);
            let count_width = most.to_string().len();
            let bar_width = usize::from(area.width.saturating_sub(2))
                .saturating_sub(2 * value_width + 1 + 1 + count_width + 1);
            for bin in &l.histogram {
                lines.push(Line::from(vec![
                    Span::styled(
                        format!("{:>value_width$}–{:<value_width$} ", bin.lo, bin.hi),
                        theme::dim(),
                    ),
                    Span::raw(format!("{:>count_width$} ", bin.count)),
                    Span::styled(bar(bin.count, most, bar_width), Style::new().fg(Color::Magenta)),
                ]));
            }
            if l.histogram.is_empty() {
                lines.push(Line::from(Span::styled("No histogram in this report.", theme::dim())));
            }
            lines.push(Line::from(format!(
                "{:.2}% of exit time (total {}); {} without latency",
                r.time_percent, l.total, r.without_latency
            )));
        }
        None => lines
            .push(Line::from(Span::styled("No exit of this reason has a latency.", theme::dim()))),
    }
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

fn draw_split(frame: &mut Frame<'_>, area: Rect, exits: &ExitReport, row: Option<&ExitRow>) {
    let mut lines = Vec::new();
    if exits.nested {
        let reason = row.and_then(|r| r.reason.as_ref());
        for r in exits.by_reason_level.iter().filter(|r| r.reason.as_ref() == reason) {
            lines.push(Line::from(format!(
                "{:<3}{:>9} exits  p50 {:>8}  L0 kept {:>7}  reflected {:>7}",
                level_label(r.level),
                r.count,
                r.latency.as_ref().map_or("-".into(), |l| l.p50.to_string()),
                r.l0_handled,
                r.reflected
            )));
        }
    } else {
        lines.push(Line::from(Span::styled(
            format!("Not split: the trace has no kvm_nested_vmexit (level {}).", level_label(None)),
            theme::dim(),
        )));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" L1 / L2: {} ", reason_name(row)))),
        area,
    );
}

fn draw_vcpus(frame: &mut Frame<'_>, area: Rect, report: &StatsReport, exits: &ExitReport) {
    let mut lines = vec![Line::from(Span::styled(
        format!("{:<8}{:>10}{:>8}{:>10}{:>10}", "VCPU", "EXITS", "%", "p50", "p99"),
        theme::heading(),
    ))];
    for r in &exits.by_vcpu {
        lines.push(Line::from(format!(
            "{:<8}{:>10}{:>7.2}%{:>10}{:>10}",
            r.vcpu.map_or("all".into(), |v| v.label()),
            r.count,
            r.percent,
            r.latency.as_ref().map_or("-".into(), |l| l.p50.to_string()),
            r.latency.as_ref().map_or("-".into(), |l| l.p99.to_string()),
        )));
    }
    let title = format!(" Per vCPU ({}) ", unit(report));
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

impl View for StatsView {
    fn title(&self, _trace: &Trace) -> String {
        "Stats".into()
    }

    fn draw(&mut self, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
        draw_view(self, frame, area, ctx);
    }

    fn move_by(&mut self, delta: i64, ctx: &mut Ctx<'_>) {
        StatsView::move_by(self, delta, ctx.trace);
    }

    fn page(&mut self, delta: i64, _ctx: &mut Ctx<'_>) {
        self.scroll_by(delta);
    }

    fn wheel(&mut self, delta: i64, _ctx: &mut Ctx<'_>) {
        self.scroll_by(delta);
    }

    fn to_end(&mut self, last: bool, ctx: &mut Ctx<'_>) {
        StatsView::move_by(self, if last { 1 << 20 } else { -(1 << 20) }, ctx.trace);
    }

    fn enter(&mut self, ctx: &mut Ctx<'_>) -> Option<ViewId> {
        let ts = self.selected_slowest_ts(ctx.trace)?;
        let index = ctx.trace.index_at_time(ts);
        *ctx.selected = index.min(ctx.trace.len().saturating_sub(1));
        Some(ViewId::TIMELINE)
    }

    fn click_row(&mut self, row: u64, ctx: &mut Ctx<'_>) {
        self.select_row(row, ctx.trace);
    }

    fn on_jump(&mut self, _at: u64, _how: Jump, _ctx: &mut Ctx<'_>) -> bool {
        false
    }
}
