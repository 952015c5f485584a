//! Drawing the live view: the title (what is recorded and the interval's totals), the tabs,
//! the current view's table and the footer, in the style of `vmxray tui`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use vmxray_analyze::live::{Row, Snapshot};
use vmxray_replay::Severity;

use super::{Feed, Top, TopView};
use crate::views::{group, theme};

/// Draws the whole screen.
pub fn draw<F: Feed>(frame: &mut Frame<'_>, top: &mut Top<F>) {
    let [title, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_title(frame, title, top);
    draw_tabs(frame, tabs, top);
    let view = top.view;
    let i = TopView::ALL.iter().position(|v| *v == view).unwrap_or(0);
    let lines = match &top.snapshot {
        None => vec![Line::from(Span::styled(
            format!(
                "Waiting for the first interval ({:.1}s)… events appear as the host produces them.",
                top.config().interval.as_secs_f64()
            ),
            theme::dim(),
        ))],
        Some(s) => match view {
            TopView::Exits => exits(s),
            TopView::Vcpus => vcpus(s),
            TopView::Latency => latency(s),
            TopView::Anomalies => anomalies(s),
            TopView::Events => events(s),
        },
    };
    // Keep the scroll within the list (the header line stays).
    let visible = usize::from(body.height.saturating_sub(3)).max(1);
    let max_scroll = lines.len().saturating_sub(1 + visible);
    top.scroll[i] = top.scroll[i].min(max_scroll);
    let mut shown: Vec<Line<'_>> = lines.first().cloned().into_iter().collect();
    shown.extend(lines.into_iter().skip(1 + top.scroll[i]));
    let title = format!(
        " {} — j/k scroll, w write last {}s, p pause ",
        view_title(view, top.snapshot.as_ref()),
        top.config().dump_last.as_secs()
    );
    frame.render_widget(Paragraph::new(shown).block(Block::bordered().title(title)), body);
    draw_footer(frame, footer, top);
    if top.help {
        draw_help(frame, frame.area());
    }
}

fn view_title(view: TopView, s: Option<&Snapshot>) -> String {
    match view {
        TopView::Exits => "Exits".into(),
        TopView::Vcpus => "vCPUs".into(),
        TopView::Latency => "Latency".into(),
        TopView::Anomalies => format!("Anomalies ({})", s.map_or(0, |s| s.total.anomalies)),
        TopView::Events => "Events".into(),
    }
}

fn draw_title<F: Feed>(frame: &mut Frame<'_>, area: Rect, top: &Top<F>) {
    let mut spans =
        vec![Span::styled(" vmxray top ", Style::new().fg(Color::Black).bg(Color::Cyan).bold())];
    if top.paused {
        spans.push(Span::styled(" PAUSED", Style::new().fg(Color::Yellow).bold()));
    }
    spans.push(Span::raw(" "));
    spans.push(Span::styled(top.feed.describe(), Style::new().bold()));
    if let Some(s) = &top.snapshot {
        let per = |n: u64| n as f64 / s.interval_s;
        spans.push(Span::raw(format!(
            "  {:.0} events/s  {:.0} exits/s (L1 {:.0} · L2 {:.0})",
            per(s.interval.events),
            per(s.interval.exits),
            per(s.interval.l1),
            per(s.interval.l2)
        )));
        spans.push(Span::raw("  "));
        let [c, e, w, _] = s.severities;
        spans.push(Span::styled(format!("{c} critical "), theme::severity(Severity::Critical)));
        spans.push(Span::styled(format!("{e} error "), theme::severity(Severity::Error)));
        spans.push(Span::styled(format!("{w} warning"), theme::severity(Severity::Warning)));
        if !s.stuck.is_empty() {
            spans.push(Span::styled(format!("  {} stuck", s.stuck.len()), theme::crash()));
        }
        if s.total.lost > 0 {
            spans.push(Span::styled(format!("  lost {}", group(s.total.lost)), theme::lost()));
        }
        spans.push(Span::styled(
            format!("  {} events · {:.0}s", group(s.total.events), top.uptime().as_secs_f64()),
            theme::dim(),
        ));
    }
    if top.behind() > 100_000 {
        spans.push(Span::styled(
            format!("  {} events behind", group(top.behind() as u64)),
            Style::new().fg(Color::Yellow),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_tabs<F: Feed>(frame: &mut Frame<'_>, area: Rect, top: &Top<F>) {
    let mut spans = Vec::new();
    for (i, v) in TopView::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, view_title(*v, top.snapshot.as_ref()));
        let style = if *v == top.view {
            Style::new().fg(Color::Black).bg(Color::White).bold()
        } else {
            Style::new().fg(Color::Gray)
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer<F: Feed>(frame: &mut Frame<'_>, area: Rect, top: &Top<F>) {
    let line = match &top.status {
        Some((msg, _)) => Line::from(Span::raw(msg.clone())),
        None => Line::from(Span::styled(
            "q quit  ? help  Tab view  j/k scroll  w write last seconds to trace.dat  p pause",
            theme::dim(),
        )),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn bar(value: u64, max: u64, width: usize) -> String {
    if max == 0 || width == 0 {
        return String::new();
    }
    let eighths = usize::try_from(u128::from(value) * (width as u128) * 8 / u128::from(max))
        .unwrap_or(width * 8);
    let mut s = "█".repeat(eighths / 8);
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    s.push_str(PARTS[eighths % 8]);
    s
}

fn rate_rows(header: &str, rows: &[Row], levels: bool, empty: &str) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(Span::styled(header.to_owned(), theme::heading()))];
    if rows.is_empty() {
        lines.push(Line::from(Span::styled(empty.to_owned(), theme::dim())));
        return lines;
    }
    let max = rows.iter().map(|r| r.count).max().unwrap_or(0);
    for r in rows {
        let mut spans = vec![Span::raw(format!(
            "{:<34} {:>10.0} {:>12}",
            clip(&r.name, 34),
            r.rate,
            group(r.total)
        ))];
        if levels {
            spans.push(Span::styled(
                format!(" {:>9}", group(r.l1)),
                theme::tier(crate::trace::Tier::L1),
            ));
            spans.push(Span::styled(
                format!(" {:>9}", group(r.l2)),
                theme::tier(crate::trace::Tier::L2),
            ));
        }
        spans.push(Span::styled(
            format!(" {}", bar(r.count, max, 24)),
            Style::new().fg(Color::Cyan),
        ));
        lines.push(Line::from(spans));
    }
    lines
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

fn exits(s: &Snapshot) -> Vec<Line<'static>> {
    let header =
        format!("{:<34} {:>10} {:>12} {:>9} {:>9}", "REASON", "EXITS/S", "TOTAL", "L1", "L2");
    let empty = if s.total.exits == 0 {
        "No kvm_exit on this host yet (a KVM that runs guests through its emulator, like PVM, has none): see 5 Events for what it emits."
    } else {
        "No exit in this interval."
    };
    rate_rows(&header, &s.reasons, true, empty)
}

fn vcpus(s: &Snapshot) -> Vec<Line<'static>> {
    let header = format!(
        "{:<34} {:>10} {:>12} {:>9} {:>9}",
        "VM", "EVENTS/S", "TOTAL", "L1 EXITS", "L2 EXITS"
    );
    let mut lines = rate_rows(&header, &s.vms, true, "No event attributed to a VM yet.");
    lines.push(Line::from(""));
    let header = format!(
        "{:<34} {:>10} {:>12} {:>9} {:>9}",
        "VCPU", "EVENTS/S", "TOTAL", "L1 EXITS", "L2 EXITS"
    );
    lines.extend(rate_rows(&header, &s.vcpus, true, "No vCPU seen yet."));
    lines
}

fn latency(s: &Snapshot) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{:<34} {:>10} {:>11} {:>11} {:>11} {:>11}   (ns, exit→entry, last {:.0}s)",
            "REASON", "EXITS", "P50", "P90", "P99", "MAX", s.window_s
        ),
        theme::heading(),
    ))];
    if s.latency.is_empty() {
        lines.push(Line::from(Span::styled(
            "No exit→entry pair in the window (latency needs kvm_exit and kvm_entry).",
            theme::dim(),
        )));
    }
    for l in &s.latency {
        lines.push(Line::from(format!(
            "{:<34} {:>10} {:>11} {:>11} {:>11} {:>11}",
            clip(&l.name, 34),
            group(l.count),
            group(l.p50),
            group(l.p90),
            group(l.p99),
            group(l.max)
        )));
    }
    lines
}

fn anomalies(s: &Snapshot) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(Span::styled(
        format!("{:<9}{:<31}{:<22}{:>16}  MESSAGE", "SEVERITY", "RULE", "VCPU", "TIME"),
        theme::heading(),
    ))];
    for st in &s.stuck {
        lines.push(Line::from(vec![
            Span::styled(format!("{:<9}", "STUCK"), theme::crash()),
            Span::raw(format!(
                "{:<31}{:<22}{:>16.6}  {}",
                "stuck_vcpu",
                clip(&st.vcpu, 21),
                st.since as f64 / 1e9,
                st.why
            )),
        ]));
    }
    if s.anomalies.is_empty() && s.stuck.is_empty() {
        lines.push(Line::from(Span::styled("No anomaly and no stuck vCPU so far.", theme::dim())));
    }
    for a in &s.anomalies {
        lines.push(Line::from(vec![
            Span::styled(format!("{:<9}", a.severity.to_string()), theme::severity(a.severity)),
            Span::raw(format!(
                "{:<31}{:<22}{:>16.6}  {}",
                a.rule,
                clip(&a.vcpu, 21),
                a.ts as f64 / 1e9,
                a.message
            )),
        ]));
    }
    lines
}

fn events(s: &Snapshot) -> Vec<Line<'static>> {
    let header = format!("{:<34} {:>10} {:>12}", "EVENT", "EVENTS/S", "TOTAL");
    let mut lines = rate_rows(&header, &s.events, false, "No event yet.");
    lines.push(Line::from(""));
    let header = format!("{:<34} {:>10} {:>12}", "USERSPACE EXIT", "EXITS/S", "TOTAL");
    lines.extend(rate_rows(&header, &s.userspace, false, "No userspace exit yet."));
    lines
}

/// The keys, for the help overlay.
pub const HELP: &[(&str, &str)] = &[
    ("Tab / Shift-Tab, 1-5", "next / previous view, view by number"),
    ("j / k, ↓ / ↑", "scroll the table"),
    ("PgDn / PgUp, g / G", "a page down / up, top / bottom"),
    ("w", "write the last seconds of trace to a trace.dat (vmxray tui / triage read it)"),
    ("p", "pause the display (the capture and the statistics go on)"),
    ("?", "this help"),
    ("q", "quit"),
];

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    crate::views::draw_keys(
        frame,
        area,
        "Rates are per refresh interval; latency over the sliding window; L2: exits of a nested guest",
        HELP,
    );
}
