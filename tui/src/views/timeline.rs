//! Timeline view: a compact lane per vCPU over the whole trace (level, anomalies, crashes, lost
//! gaps, the cursor), then the event list around the selected event. Only the visible rows are
//! rendered. Lanes of a small trace sample a fixed number of events per column; beyond
//! [`SAMPLED_MAX`] events they are drawn from the loader's per-vCPU bucket summaries
//! ([`crate::summary::Lanes`]), a bounded number per column. At most [`MAX_LANES`] lanes show
//! at once; more scroll (`<` / `>`, the mouse wheel over the lanes) and follow the selected
//! event's vCPU.

use super::{Ctx, View, ViewId};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::{actor_label, event_fields, group, theme};
use crate::summary::ActorCounts;
use crate::trace::{EventTag, Tier, Trace};

/// Most lanes drawn at once (more scroll).
pub const MAX_LANES: usize = 8;
/// Events sampled per lane column.
const SAMPLES_PER_COLUMN: u64 = 24;
/// Up to this many events, lanes sample the events themselves; beyond, the summaries.
pub const SAMPLED_MAX: u64 = 1 << 16;

/// The Timeline view's state.
#[derive(Clone, Debug, Default)]
pub struct TimelineView {
    /// Row shown on the first line of the list.
    pub offset: u64,
    /// The first lane shown (lanes sorted by VM, vCPU, thread).
    pub lane_offset: usize,
    /// The selected event the lanes last followed.
    followed: Option<u64>,
}

impl TimelineView {
    /// Scrolls the lanes by `delta`.
    pub fn scroll_lanes(&mut self, delta: i64, lanes: usize) {
        let max = lanes.saturating_sub(MAX_LANES);
        let to = i64::try_from(self.lane_offset).unwrap_or(0).saturating_add(delta);
        self.lane_offset = usize::try_from(to.max(0)).unwrap_or(0).min(max);
    }
}

/// Draws the Timeline view.
fn draw_view(view_state: &mut TimelineView, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
    let lanes = ctx.trace.actors.len().min(MAX_LANES);
    let lane_height = u16::try_from(lanes).unwrap_or(0) + 2;
    let [lane_area, list_area] = if lanes > 0 && area.height > lane_height + 6 {
        Layout::vertical([Constraint::Length(lane_height), Constraint::Min(4)]).areas(area)
    } else {
        [Rect::new(area.x, area.y, area.width, 0), area]
    };
    if lane_area.height > 0 {
        follow_selected(view_state, ctx.trace, *ctx.selected);
        ctx.hits.lanes =
            draw_lanes(frame, lane_area, ctx.trace, *ctx.selected, view_state.lane_offset);
    }
    draw_list(view_state, frame, list_area, ctx);
}

fn draw_list(view: &mut TimelineView, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
    let trace = &ctx.trace;
    let rows = ctx.rows.len(trace);
    let height = u64::from(area.height.saturating_sub(3));
    let sel_row = ctx.rows.row_of(*ctx.selected, trace);
    if height > 0 {
        if sel_row < view.offset || sel_row >= view.offset + height {
            // A jump: show some context before the selected event.
            view.offset = sel_row.saturating_sub(height / 3);
        }
        view.offset = view.offset.min(rows.saturating_sub(height));
    }
    let clock = trace.clock();
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "  {:>9} {:>18} {:>3} {:>7} {:<2} {:<26} {}",
            "EVENT", "TIME", "CPU", "VCPU", "LV", "NAME", "FIELDS | DECODED"
        ),
        theme::heading(),
    ))];
    for row in view.offset..(view.offset + height).min(rows) {
        let Some(index) = ctx.rows.event_at(row, trace) else { break };
        let Some(event) = trace.event(index) else { break };
        // Tags come from replaying the model; until a checkpoint covers the event, "--".
        let tag = trace.tag(index).unwrap_or(EventTag::new(
            EventTag::NO_ACTOR,
            Tier::Unknown,
            false,
            false,
            false,
        ));
        let marker = if tag.crash() {
            Span::styled("X ", theme::crash())
        } else if tag.lost() {
            Span::styled("~ ", theme::lost())
        } else if tag.anomaly() {
            let sev = trace.anomalies_at(index).iter().map(|a| a.severity).max();
            Span::styled("! ", sev.map_or(Style::new(), theme::severity))
        } else {
            Span::raw("  ")
        };
        let tier = tag.tier();
        let name_style = match tier {
            Tier::L0Exit => theme::tier(tier),
            Tier::L1 | Tier::L2 | Tier::Unknown => {
                if event.system() == "kvmmmu" {
                    Style::new().fg(Color::Blue)
                } else if event.name().starts_with("kvm_nested") {
                    Style::new().fg(Color::Cyan)
                } else {
                    Style::new()
                }
            }
        };
        let mut line = Line::from(vec![
            marker,
            Span::styled(format!("{:>9} ", format!("#{index}")), theme::dim()),
            Span::raw(format!(
                "{:>18} {:>3} {:>7} ",
                trace.format_ts(event.ts),
                event.cpu,
                actor_label(trace.actors.get(usize::from(tag.actor)).copied())
            )),
            Span::styled(format!("{:<2} ", tier.label()), theme::tier(tier)),
            Span::styled(format!("{:<26} ", event.name()), name_style),
            Span::raw(event_fields(&event, &clock)),
        ]);
        if row == sel_row {
            line = line.style(theme::selected());
        }
        lines.push(line);
    }
    if rows == 0 {
        let msg = if ctx.rows.filter().is_some() {
            "No event matches the filter (f, empty: clear)"
        } else {
            "No event yet…"
        };
        lines.push(Line::from(Span::styled(msg, theme::dim())));
    }
    let filter = ctx.rows.filter().map_or(String::new(), |f| format!(" · filter {}", f.spec));
    let title = format!(
        " Events {}/{}{filter} ",
        group(if rows == 0 { 0 } else { sel_row + 1 }),
        group(rows)
    );
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
    ctx.hits.list = Some((
        Rect::new(
            area.x + 1,
            area.y + 2,
            area.width.saturating_sub(2),
            area.height.saturating_sub(3),
        ),
        view.offset,
    ));
}

/// What a lane cell shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    Empty,
    Level(Tier),
    Anomaly,
    Crash,
    Lost,
}

/// Lanes sorted by VM, then vCPU, then the threads never seen running a vCPU: the actor of
/// each lane.
fn lane_order(trace: &Trace) -> Vec<usize> {
    let mut order: Vec<usize> = (0..trace.actors.len()).collect();
    order.sort_by_key(|a| trace.actors[*a]);
    order
}

/// Scrolls the lanes to the selected event's vCPU when the selection moved.
fn follow_selected(view: &mut TimelineView, trace: &Trace, selected: u64) {
    if view.followed == Some(selected) || trace.actors.len() <= MAX_LANES {
        view.followed = Some(selected);
        return;
    }
    view.followed = Some(selected);
    let Some(actor) = trace.tag(selected).map(|t| usize::from(t.actor)) else { return };
    let Some(lane) = lane_order(trace).iter().position(|a| *a == actor) else { return };
    if lane < view.lane_offset || lane >= view.lane_offset + MAX_LANES {
        view.lane_offset = lane.saturating_sub(MAX_LANES / 2);
        view.scroll_lanes(0, trace.actors.len());
    }
}

/// The cell a summary gives a lane: the worst anomaly, else the level most events ran at
/// (exits say "L0 ran", not the guest's level, and are left out).
fn summary_cell(c: &ActorCounts) -> Cell {
    if c.worst().is_some() {
        return Cell::Anomaly;
    }
    let levels = [Tier::L2, Tier::L1, Tier::Unknown];
    let best = levels.iter().copied().max_by_key(|t| c.count(*t));
    match best {
        Some(t) if c.count(t) > 0 => Cell::Level(t),
        _ => Cell::Empty,
    }
}

/// Draws the lanes; returns the cell area and the events it spans (for mouse clicks).
fn draw_lanes(
    frame: &mut Frame<'_>,
    area: Rect,
    trace: &Trace,
    selected: u64,
    lane_offset: usize,
) -> Option<(Rect, u64)> {
    const LABEL: u16 = 8;
    let width = area.width.saturating_sub(2 + LABEL);
    let total_lanes = trace.actors.len();
    let lanes = total_lanes.min(MAX_LANES);
    let n = trace.len();
    if width == 0 || n == 0 {
        return None;
    }
    let w = u64::from(width);
    let mut cells = vec![vec![Cell::Empty; usize::from(width)]; lanes];
    let column_of =
        |index: u64| usize::try_from(index * w / n).unwrap_or(0).min(usize::from(width) - 1);
    let order = lane_order(trace);
    let lane_offset = lane_offset.min(total_lanes.saturating_sub(lanes));
    // `row[a]` is the lane of actor `a` (`usize::MAX` when it is not shown).
    let mut row = vec![usize::MAX; total_lanes];
    for (lane, actor) in order.iter().skip(lane_offset).take(lanes).enumerate() {
        row[*actor] = lane;
    }
    let lane_of = |tag: EventTag| row.get(usize::from(tag.actor)).copied().unwrap_or(usize::MAX);
    let sampled = n <= SAMPLED_MAX;
    for c in 0..w {
        let (from, to) = (c * n / w, ((c + 1) * n / w).max(c * n / w + 1).min(n));
        let col = usize::try_from(c).unwrap_or(0);
        if sampled {
            let step = ((to - from) / SAMPLES_PER_COLUMN).max(1);
            let mut i = from;
            while i < to {
                if let Some(tag) = trace.tag(i) {
                    let lane = lane_of(tag);
                    // Exits say "L0 ran", not the guest's level: keep the level seen before.
                    if lane < lanes && tag.tier() != Tier::L0Exit {
                        cells[lane][col] = Cell::Level(tag.tier());
                    }
                }
                i += step;
            }
        } else {
            let counts = trace.lanes.range(from, to);
            for (actor, c) in counts.iter().enumerate() {
                if let Some(lane) = row.get(actor).copied().filter(|l| *l < lanes) {
                    cells[lane][col] = summary_cell(c);
                }
            }
        }
    }
    // Markers: one binary search per column and marker list.
    for c in 0..w {
        let (from, to) = (c * n / w, ((c + 1) * n / w).max(c * n / w + 1));
        let col = usize::try_from(c).unwrap_or(0);
        let first = trace.anomalies.partition_point(|a| a.at.0 < from);
        for a in trace.anomalies[first..].iter().take_while(|a| a.at.0 < to).take(MAX_LANES) {
            if let Some(lane) = trace
                .actors
                .iter()
                .position(|x| *x == a.vcpu)
                .map(|actor| row[actor])
                .filter(|l| *l < lanes)
            {
                cells[lane][col] = Cell::Anomaly;
            }
        }
        let first = trace.lost.partition_point(|at| *at < from);
        if trace.lost.get(first).is_some_and(|at| *at < to) {
            for lane in &mut cells {
                lane[col] = Cell::Lost;
            }
        }
    }
    for (at, _) in &trace.crashes {
        if let Some(tag) = trace.tag(*at)
            && lane_of(tag) < lanes
        {
            cells[lane_of(tag)][column_of(*at)] = Cell::Crash;
        }
    }
    let cursor = column_of(selected);
    let mut lines = Vec::with_capacity(lanes);
    for (lane, row) in cells.iter().enumerate() {
        let mut spans = vec![Span::styled(
            format!("{:<8}", actor_label(order.get(lane_offset + lane).map(|a| trace.actors[*a]))),
            theme::dim(),
        )];
        for (col, cell) in row.iter().enumerate() {
            let (ch, mut style) = match cell {
                Cell::Empty => (" ", Style::new()),
                Cell::Level(Tier::L2) => ("▆", theme::tier(Tier::L2)),
                Cell::Level(Tier::L1) => ("▃", theme::tier(Tier::L1)),
                Cell::Level(Tier::L0Exit) => ("▁", theme::tier(Tier::L0Exit)),
                Cell::Level(Tier::Unknown) => ("·", theme::tier(Tier::Unknown)),
                Cell::Anomaly => ("!", Style::new().fg(Color::LightRed)),
                Cell::Crash => ("X", theme::crash()),
                Cell::Lost => ("~", theme::lost()),
            };
            if col == cursor {
                style = style.bg(Color::White).fg(Color::Black);
            }
            spans.push(Span::styled(ch, style));
        }
        lines.push(Line::from(spans));
    }
    let more = total_lanes.saturating_sub(MAX_LANES);
    let title = format!(
        " Lanes #0…#{} (▃ L1 ▆ L2 · unknown ! anomaly X crash ~ lost){} ",
        n - 1,
        if more > 0 {
            format!(
                " lanes {}–{} of {total_lanes} (< > scroll)",
                lane_offset + 1,
                lane_offset + lanes
            )
        } else {
            String::new()
        }
    );
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
    let height = u16::try_from(lanes).unwrap_or(0);
    Some((Rect::new(area.x + 1 + LABEL, area.y + 1, width, height), n))
}

impl View for TimelineView {
    fn title(&self, _trace: &Trace) -> String {
        "Timeline".into()
    }

    fn draw(&mut self, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
        draw_view(self, frame, area, ctx);
    }

    fn enter(&mut self, _ctx: &mut Ctx<'_>) -> Option<ViewId> {
        Some(ViewId::DETAIL)
    }

    fn scroll_lanes(&mut self, delta: i64, ctx: &mut Ctx<'_>) {
        TimelineView::scroll_lanes(self, delta, ctx.trace.actors.len());
    }
}
