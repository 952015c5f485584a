//! Event detail: every field of the selected event under the kernel's name, the decodings of
//! `vmxray dump`, and bit-level breakdowns of the exit qualification, interruption information
//! and MMU role (all from `vmxray_events::codes`), then the anomalies the event raised.

use super::{Ctx, View, ViewId};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use vmxray_capture::printfmt::Outcome;
use vmxray_events::codes::{CrAccessQual, IntrInfo, MmuPageRole, VmxBasicReason};
use vmxray_events::{Event, EventKind, FieldValue};

use super::{actor_label, theme};
use crate::trace::Trace;

/// The Detail view's state.
#[derive(Clone, Debug, Default)]
pub struct DetailView {
    scroll: u16,
    shown: Option<u64>,
}

impl DetailView {
    /// Scrolls the pane.
    pub fn scroll_by(&mut self, delta: i64) {
        let s = i64::from(self.scroll).saturating_add(delta).clamp(0, i64::from(u16::MAX));
        self.scroll = u16::try_from(s).unwrap_or(0);
    }
}

fn kv(key: impl Into<String>, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("  {:<26}", key.into()), theme::dim()),
        Span::raw(value.into()),
    ])
}

fn heading(text: &str) -> Line<'static> {
    Line::from(Span::styled(text.to_owned(), theme::heading()))
}

fn intr_lines(out: &mut Vec<Line<'static>>, what: &str, info: IntrInfo) {
    out.push(heading(&format!("{what} ({:#010x})", info.0)));
    out.push(kv("valid", info.valid().to_string()));
    if info.valid() {
        out.push(kv(
            "vector",
            format!(
                "{} {}",
                info.vector(),
                info.exception().map_or(String::new(), |e| e.to_string())
            ),
        ));
        out.push(kv("type", info.kind().to_string()));
        out.push(kv("error code valid", info.error_code_valid().to_string()));
        out.push(kv("NMI unblocking (IRET)", info.nmi_unblocking().to_string()));
    }
}

fn role_lines(out: &mut Vec<Line<'static>>, role: MmuPageRole) {
    out.push(heading(&format!("MMU role ({:#x}): {role}", role.0)));
    for (k, v) in [
        ("level", role.level().to_string()),
        ("direct", role.direct().to_string()),
        ("guest_mode (L2)", role.guest_mode().to_string()),
        ("smm", role.smm().to_string()),
        ("has_4_byte_gpte", role.has_4_byte_gpte().to_string()),
        ("quadrant", role.quadrant().to_string()),
        ("access", format!("{:#05b}", role.access())),
        ("invalid", role.invalid().to_string()),
        ("efer_nx", role.efer_nx().to_string()),
        ("cr0_wp", role.cr0_wp().to_string()),
        ("smep_andnot_wp", role.smep_andnot_wp().to_string()),
        ("smap_andnot_wp", role.smap_andnot_wp().to_string()),
        ("ad_disabled", role.ad_disabled().to_string()),
        ("passthrough", role.passthrough().to_string()),
    ] {
        out.push(kv(k, v));
    }
}

/// An untyped event rendered through its format's print fmt (`trace-cmd report -N`'s text),
/// when the trace carries the format.
fn print_fmt_lines(out: &mut Vec<Line<'static>>, trace: &Trace, event: &Event) {
    let Some(catalog) = &trace.print else { return };
    let mut text = String::new();
    let Some(outcome) = catalog.render(event, &mut text) else { return };
    out.push(Line::raw(""));
    out.push(heading("Print fmt (as trace-cmd report -N)"));
    for l in text.lines() {
        out.push(Line::raw(format!("  {l}")));
    }
    if let Outcome::Partial(what) = outcome {
        out.push(kv("note", format!("trace-cmd may differ: no {what} in vmxray")));
    }
}

/// The detail lines of one event.
pub fn lines(trace: &Trace, index: u64, event: &Event) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let tag = trace.tag(index);
    out.push(Line::from(vec![
        Span::styled(format!("#{index} "), Style::new().bold()),
        Span::styled(format!("{}:{}", event.system(), event.name()), theme::heading()),
    ]));
    out.push(kv("time", trace.format_ts(event.ts)));
    out.push(kv("cpu", event.cpu.to_string()));
    out.push(kv("pid / comm", format!("{} {}", event.pid, event.comm.as_deref().unwrap_or("?"))));
    out.push(kv("attributed to", actor_label(trace.actor(index))));
    if let Some(t) = tag {
        out.push(kv("level (model)", t.tier().label()));
    }
    out.push(Line::raw(""));
    out.push(heading("Fields (kernel names)"));
    for (name, value) in event.kind.kernel_fields().iter() {
        let text = match value {
            FieldValue::U64(v) if *v < 10 => v.to_string(),
            FieldValue::U64(v) => format!("{v:#x} ({v})"),
            other => other.to_string(),
        };
        out.push(kv(name.to_string(), text));
    }
    let decoded = event.kind.decoded();
    if !decoded.is_empty() {
        out.push(Line::raw(""));
        out.push(heading("Decoded"));
        for (k, v) in decoded {
            out.push(kv(k, v));
        }
    }
    print_fmt_lines(&mut out, trace, event);
    match &event.kind {
        EventKind::KvmExit(info)
        | EventKind::KvmNestedVmexit(info)
        | EventKind::KvmNestedVmexitInject(info) => {
            out.push(Line::raw(""));
            out.push(heading(&format!("Exit reason {}", info.reason())));
            if let vmxray_events::codes::ExitCode::Vmx(r) = info.reason() {
                out.push(kv("basic reason", format!("{} ({})", r.basic(), r.basic().0)));
                out.push(kv("failed VM-entry (bit 31)", r.failed_vmentry().to_string()));
            }
            if let Some(q) = info.info1() {
                let text = if info.reason().vmx_basic() == Some(VmxBasicReason::CR_ACCESS) {
                    let cr = CrAccessQual(q);
                    format!("{q:#x}: {cr} (CR{} {} via {})", cr.cr(), cr.access(), cr.gpr_name())
                } else {
                    format!("{q:#x}")
                };
                out.push(kv("qualification (info1)", text));
            }
            if let Some(intr) = info.intr_info() {
                intr_lines(&mut out, "Exit interruption info", intr);
            }
            if let Some(v) = info.info2().and_then(|v| u32::try_from(v).ok())
                && matches!(info.reason(), vmxray_events::codes::ExitCode::Vmx(_))
            {
                intr_lines(&mut out, "IDT-vectoring info (info2)", IntrInfo(v));
            }
        }
        EventKind::KvmEntry(e) => {
            if let Some(intr) = e.intr_info {
                intr_lines(&mut out, "Injected on entry", intr);
            }
        }
        EventKind::KvmNestedVmenter(v) => {
            intr_lines(&mut out, "vmcs12 VM_ENTRY_INTR_INFO (event_inj)", v.event_inj);
            out.push(kv(
                "guest CR3 (nested_ept=n)",
                v.guest_cr3().map_or("-".into(), |c| format!("{c:#x}")),
            ));
            out.push(kv(
                "EPTP (nested_ept=y)",
                v.nested_tdp_root().map_or("-".into(), |c| format!("{c:#x}")),
            ));
            out.push(kv("eVMCS", v.is_evmcs().to_string()));
        }
        EventKind::KvmMmuGetPage { page, .. }
        | EventKind::KvmMmuPrepareZapPage { page }
        | EventKind::KvmMmuSyncPage { page }
        | EventKind::KvmMmuUnsyncPage { page } => role_lines(&mut out, page.role),
        _ => {}
    }
    if let Some(kind) = vmxray_replay::triage::fatal(&event.kind) {
        out.push(Line::raw(""));
        out.push(Line::from(Span::styled(format!(" FATAL: {} ", kind.describe()), theme::crash())));
    }
    let anomalies = trace.anomalies_at(index);
    if !anomalies.is_empty() {
        out.push(Line::raw(""));
        out.push(heading("Anomalies at this event"));
        for a in anomalies {
            out.push(Line::from(vec![
                Span::styled(format!("  {:<9}", a.severity.name()), theme::severity(a.severity)),
                Span::styled(format!("{} ", a.rule.name()), Style::new().bold()),
                Span::raw(a.message.clone()),
            ]));
            let ev: Vec<String> = a.evidence.iter().map(|e| format!("#{}", e.0)).collect();
            out.push(kv("evidence", ev.join(" ")));
            out.push(kv("KVM", a.rule.commit()));
        }
    }
    out
}

/// Draws the Detail view.
fn draw_view(view_state: &mut DetailView, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
    if view_state.shown != Some(*ctx.selected) {
        view_state.shown = Some(*ctx.selected);
        view_state.scroll = 0;
    }
    let content = match ctx.trace.event(*ctx.selected) {
        Some(e) => lines(ctx.trace, *ctx.selected, e),
        None => vec![Line::raw("No event yet…")],
    };
    frame.render_widget(
        Paragraph::new(content).wrap(Wrap { trim: false }).scroll((view_state.scroll, 0)).block(
            Block::bordered().title(" Event detail — j/k: previous/next event, PgUp/PgDn: scroll "),
        ),
        area,
    );
}

impl View for DetailView {
    fn title(&self, _trace: &Trace) -> String {
        "Detail".into()
    }

    fn draw(&mut self, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
        draw_view(self, frame, area, ctx);
    }

    fn page(&mut self, delta: i64, _ctx: &mut Ctx<'_>) {
        self.scroll_by(delta);
    }

    fn wheel(&mut self, delta: i64, _ctx: &mut Ctx<'_>) {
        self.scroll_by(delta);
    }

    fn enter(&mut self, _ctx: &mut Ctx<'_>) -> Option<ViewId> {
        Some(ViewId::TIMELINE)
    }

    fn click_row(&mut self, _row: u64, _ctx: &mut Ctx<'_>) {}
}
