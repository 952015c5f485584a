//! Anomalies view: crashes first, then every anomaly most severe first (then by event), with
//! the selected one's full message, evidence and rule below. Enter jumps to its event.

use super::{Ctx, Jump, View, ViewId};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::{actor_label, theme};
use crate::filter::Filter;
use crate::trace::Trace;

/// One row of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    /// `trace.crashes[i]`.
    Crash(usize),
    /// The anomaly of this rank.
    Anomaly(usize),
}

/// The Anomalies view's state.
#[derive(Clone, Debug, Default)]
pub struct AnomaliesView {
    selected: usize,
    offset: usize,
    /// With a filter: the kept rows, for (anomalies seen, filter spec).
    filtered: Option<(usize, String, Vec<Row>)>,
}

impl AnomaliesView {
    /// Forgets the filtered rows (the filter changed).
    pub fn reset(&mut self) {
        self.filtered = None;
        self.selected = 0;
        self.offset = 0;
    }

    fn refresh(&mut self, trace: &Trace, filter: Option<&Filter>) {
        let Some(f) = filter else {
            self.filtered = None;
            return;
        };
        let fresh = self
            .filtered
            .as_ref()
            .is_some_and(|(n, spec, _)| *n == trace.anomalies.len() && *spec == f.spec);
        if fresh {
            return;
        }
        let mut rows: Vec<Row> = (0..trace.crashes.len()).map(Row::Crash).collect();
        let total = trace.anomalies.len();
        rows.extend(
            (0..total)
                .filter(|r| trace.anomaly_by_rank(*r).is_some_and(|a| f.keeps_anomaly(a)))
                .map(Row::Anomaly),
        );
        self.filtered = Some((total, f.spec.clone(), rows));
    }

    fn len(&self, trace: &Trace) -> usize {
        match &self.filtered {
            Some((_, _, rows)) => rows.len(),
            None => trace.crashes.len() + trace.anomalies.len(),
        }
    }

    fn row(&self, i: usize, trace: &Trace) -> Option<Row> {
        match &self.filtered {
            Some((_, _, rows)) => rows.get(i).copied(),
            None if i < trace.crashes.len() => Some(Row::Crash(i)),
            None if i < trace.crashes.len() + trace.anomalies.len() => {
                Some(Row::Anomaly(i - trace.crashes.len()))
            }
            None => None,
        }
    }

    fn event_of(row: Row, trace: &Trace) -> Option<u64> {
        match row {
            Row::Crash(i) => trace.crashes.get(i).map(|(at, _)| *at),
            Row::Anomaly(r) => trace.anomaly_by_rank(r).map(|a| a.at.0),
        }
    }

    /// Moves the selection.
    pub fn move_by(&mut self, delta: i64, trace: &Trace, filter: Option<&Filter>) {
        self.refresh(trace, filter);
        let n = self.len(trace);
        if n == 0 {
            return;
        }
        let cur = i64::try_from(self.selected).unwrap_or(0);
        let target = cur.saturating_add(delta).clamp(0, i64::try_from(n - 1).unwrap_or(0));
        self.selected = usize::try_from(target).unwrap_or(0);
    }

    /// Selects a row by position (mouse).
    pub fn select_row(&mut self, row: u64, trace: &Trace, filter: Option<&Filter>) {
        self.refresh(trace, filter);
        if let Ok(row) = usize::try_from(row)
            && row < self.len(trace)
        {
            self.selected = row;
        }
    }

    /// The event of the selected row.
    pub fn selected_event(&mut self, trace: &Trace, filter: Option<&Filter>) -> Option<u64> {
        self.refresh(trace, filter);
        Self::event_of(self.row(self.selected, trace)?, trace)
    }

    /// Selects the first anomaly of event `at` (after `a`/`A`).
    pub fn follow_event(&mut self, at: u64, trace: &Trace, filter: Option<&Filter>) {
        self.refresh(trace, filter);
        let first = trace.anomalies.partition_point(|a| a.at.0 < at);
        let Some(rank) = trace.rank_of(first) else { return };
        let found = match &self.filtered {
            Some((_, _, rows)) => rows.iter().position(|r| *r == Row::Anomaly(rank)),
            None => Some(trace.crashes.len() + rank),
        };
        if let Some(i) = found {
            self.selected = i;
        }
    }
}

/// Draws the Anomalies view.
fn draw_view(view_state: &mut AnomaliesView, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
    let trace = &ctx.trace;
    let view = &mut *view_state;
    view.refresh(trace, ctx.rows.filter());
    let [list_area, detail_area] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(8)]).areas(area);
    let n = view.len(trace);
    view.selected = view.selected.min(n.saturating_sub(1));
    let inner_h = usize::from(list_area.height.saturating_sub(3));
    if view.selected < view.offset {
        view.offset = view.selected;
    } else if inner_h > 0 && view.selected >= view.offset + inner_h {
        view.offset = view.selected + 1 - inner_h;
    }
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{:<9}{:<31}{:<8}{:>9} {:>18}  {}",
            "SEVERITY", "RULE", "VCPU", "EVENT", "TIME", "MESSAGE"
        ),
        theme::heading(),
    ))];
    if n == 0 {
        let msg = if trace.is_complete() {
            "No anomaly and no crash: the model found nothing wrong in this trace. Tab: timeline, 4: statistics."
        } else {
            "No anomaly so far (still replaying)…"
        };
        lines.push(Line::from(Span::styled(msg, theme::dim())));
    }
    for i in view.offset..(view.offset + inner_h).min(n) {
        let Some(row) = view.row(i, trace) else { break };
        let mut line = match row {
            Row::Crash(c) => {
                let (at, kind) = trace.crashes[c];
                let ts = trace.event(at).map_or(String::new(), |e| trace.format_ts(e.ts));
                Line::from(vec![
                    Span::styled(format!("{:<9}", "CRASH"), theme::crash()),
                    Span::raw(format!(
                        "{:<31}{:<8}{:>9} {:>18}  ",
                        "fatal event",
                        actor_label(trace.actor(at)),
                        format!("#{at}"),
                        ts
                    )),
                    Span::raw(kind.describe()),
                ])
            }
            Row::Anomaly(r) => {
                let Some(a) = trace.anomaly_by_rank(r) else { break };
                let ts = trace.event(a.at.0).map_or(String::new(), |e| trace.format_ts(e.ts));
                Line::from(vec![
                    Span::styled(format!("{:<9}", a.severity.name()), theme::severity(a.severity)),
                    Span::raw(format!(
                        "{:<31}{:<8}{:>9} {:>18}  ",
                        a.rule.name(),
                        actor_label(Some(a.vcpu)),
                        format!("#{}", a.at.0),
                        ts
                    )),
                    Span::raw(a.message.clone()),
                ])
            }
        };
        if i == view.selected {
            line = line.style(theme::selected());
        }
        lines.push(line);
    }
    let title = format!(" Anomalies {}/{} — Enter: go to event ", (view.selected + 1).min(n), n);
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), list_area);
    ctx.hits.list = Some((
        Rect::new(
            list_area.x + 1,
            list_area.y + 2,
            list_area.width.saturating_sub(2),
            list_area.height.saturating_sub(3),
        ),
        view.offset as u64,
    ));

    // The selected row in full.
    let mut detail = Vec::new();
    match view.row(view.selected, trace) {
        Some(Row::Anomaly(r)) => {
            if let Some(a) = trace.anomaly_by_rank(r) {
                detail.push(Line::from(vec![
                    Span::styled(format!("{} ", a.severity), theme::severity(a.severity)),
                    Span::styled(a.rule.name(), Style::new().bold()),
                    Span::raw(format!(" at #{} on {}", a.at.0, a.vcpu)),
                ]));
                detail.push(Line::from(a.message.clone()));
                let evidence: Vec<String> =
                    a.evidence.iter().map(|e| format!("#{}", e.0)).collect();
                detail.push(Line::from(vec![
                    Span::styled("evidence ", theme::dim()),
                    Span::raw(if evidence.is_empty() { "-".into() } else { evidence.join(" ") }),
                ]));
                detail.push(Line::from(vec![
                    Span::styled("checks   ", theme::dim()),
                    Span::raw(a.rule.checks()),
                ]));
                detail.push(Line::from(vec![
                    Span::styled("KVM      ", theme::dim()),
                    Span::raw(a.rule.commit()),
                ]));
            }
        }
        Some(Row::Crash(c)) => {
            let (at, kind) = trace.crashes[c];
            detail.push(Line::from(vec![
                Span::styled("CRASH ", theme::crash()),
                Span::raw(format!(
                    "{} at #{at} on {}",
                    kind.describe(),
                    actor_label(trace.actor(at))
                )),
            ]));
            detail.push(Line::from(
                "Enter shows the events before it; `vmxray triage` prints the exception chain.",
            ));
        }
        None => {}
    }
    frame.render_widget(
        Paragraph::new(detail)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Selected ")),
        detail_area,
    );
}

impl View for AnomaliesView {
    fn title(&self, trace: &Trace) -> String {
        format!("Anomalies ({})", trace.anomalies.len() + trace.crashes.len())
    }

    fn draw(&mut self, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
        draw_view(self, frame, area, ctx);
    }

    fn move_by(&mut self, delta: i64, ctx: &mut Ctx<'_>) {
        AnomaliesView::move_by(self, delta, ctx.trace, ctx.rows.filter());
    }

    fn to_end(&mut self, last: bool, ctx: &mut Ctx<'_>) {
        let delta = if last { i64::MAX / 2 } else { i64::MIN / 2 };
        AnomaliesView::move_by(self, delta, ctx.trace, ctx.rows.filter());
    }

    fn enter(&mut self, ctx: &mut Ctx<'_>) -> Option<ViewId> {
        let at = self.selected_event(ctx.trace, ctx.rows.filter())?;
        *ctx.selected = at.min(ctx.trace.len().saturating_sub(1));
        Some(ViewId::TIMELINE)
    }

    fn click_row(&mut self, row: u64, ctx: &mut Ctx<'_>) {
        self.select_row(row, ctx.trace, ctx.rows.filter());
    }

    fn on_jump(&mut self, at: u64, how: Jump, ctx: &mut Ctx<'_>) -> bool {
        if how == Jump::Anomaly {
            self.follow_event(at, ctx.trace, ctx.rows.filter());
        }
        how == Jump::Anomaly
    }

    fn on_filter_change(&mut self) {
        self.reset();
    }
}
