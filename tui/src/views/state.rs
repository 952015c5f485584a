//! State view: the replay model's state of the selected event's vCPU after that event
//! (`Trace::state_at`: nearest checkpoint, stepped forward), what the event changed highlighted.
//!
//! The pane is a list of [`Section`]s built from the state; each section is independent, so a
//! per-VMCS field history (branch `fields`) adds one more section fed by
//! `Transition::Vmcs12Field` without touching the others (see [`sections`]).

use super::{Ctx, View, ViewId};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use vmxray_replay::state::{LaunchState, Mode, SmmState};
use vmxray_replay::{Transition, VcpuState, Vmcs12Field};

use super::theme;
use crate::trace::StateAt;

/// The State view's state.
#[derive(Clone, Debug, Default)]
pub struct StateView {
    scroll: u16,
    cache: Option<StateAt>,
}

impl StateView {
    /// Scrolls the pane.
    pub fn scroll_by(&mut self, delta: i64) {
        let s = i64::from(self.scroll).saturating_add(delta).clamp(0, i64::from(u16::MAX));
        self.scroll = u16::try_from(s).unwrap_or(0);
    }

    /// The state at `index`, computed once per selected event.
    fn at(&mut self, app_trace: &crate::trace::Trace, index: u64) -> Option<&StateAt> {
        if self.cache.as_ref().is_none_or(|c| c.at != index) {
            self.cache = app_trace.state_at(index);
            self.scroll = 0;
        }
        self.cache.as_ref()
    }
}

/// A titled block of lines.
pub struct Section {
    /// Heading.
    pub title: String,
    /// Content.
    pub lines: Vec<Line<'static>>,
}

/// What the selected event changed, for highlighting.
#[derive(Default)]
struct Changed {
    mode: bool,
    current: bool,
    l1_cr3: bool,
    root: bool,
    smm: bool,
    fields: Vec<(u64, Vmcs12Field)>,
    entered: Option<u64>,
    exited: bool,
}

impl Changed {
    fn from(transitions: &[Transition]) -> Self {
        let mut c = Self::default();
        for t in transitions {
            match t {
                Transition::Mode { .. } | Transition::LateVmFail => c.mode = true,
                Transition::Resynchronizing { .. } => c.mode = true,
                Transition::NestedEntry { vmptr, .. } => {
                    c.current = true;
                    c.entered = Some(*vmptr);
                }
                Transition::NestedExit { .. } => c.exited = true,
                Transition::Vmcs12Field { vmptr, field, .. } => c.fields.push((*vmptr, *field)),
                Transition::L1Cr3 { .. } => c.l1_cr3 = true,
                Transition::RootLoaded(_) => c.root = true,
                Transition::Smm { .. } => c.smm = true,
            }
        }
        c
    }

    fn field(&self, vmptr: u64, field: Vmcs12Field) -> bool {
        self.fields.contains(&(vmptr, field))
    }
}

fn hex(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:#x}"))
}

fn at(i: vmxray_replay::EventIndex) -> String {
    format!("#{}", i.0)
}

fn mode_text(mode: Mode) -> String {
    match mode {
        Mode::Unknown => "unknown (not established / resynchronizing)".into(),
        Mode::L1 => "L1".into(),
        Mode::L2Pending { since } => format!("L2 (entered at #{}, not yet on hardware)", since.0),
        Mode::L2Run => "L2 (running on hardware)".into(),
    }
}

fn kv(key: &str, value: String, changed: bool) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("  {key:<24}"), theme::dim()),
        Span::styled(value, if changed { theme::changed() } else { Style::new() }),
    ])
}

/// The sections of the state pane, in display order.
pub fn sections(state_at: &StateAt, trace: &crate::trace::Trace) -> Vec<Section> {
    let mut out = Vec::new();
    let changed = Changed::from(&state_at.transitions);
    let event_name = trace.event(state_at.at).map_or("?", |e| e.name()).to_owned();
    let who = state_at.actor.map_or("every vCPU".to_owned(), |a| a.to_string());
    out.push(Section {
        title: format!("After event #{} {event_name} on {who}", state_at.at),
        lines: Vec::new(),
    });
    if !state_at.anomalies.is_empty() {
        out.push(Section {
            title: "Anomalies at this event".into(),
            lines: state_at
                .anomalies
                .iter()
                .map(|a| {
                    Line::from(vec![
                        Span::styled(
                            format!("  {:<9}", a.severity.name()),
                            theme::severity(a.severity),
                        ),
                        Span::styled(format!("{} ", a.rule.name()), Style::new().bold()),
                        Span::raw(a.message.clone()),
                    ])
                })
                .collect(),
        });
    }
    if let Some(st) = &state_at.state {
        out.push(level_section(st, &changed));
        out.push(vmcs12_section(st, &changed));
        out.push(roots_section(st, &changed));
        out.push(pending_section(st));
    } else {
        out.push(Section {
            title: "State".into(),
            lines: vec![Line::from(Span::styled(
                "  This event concerns every vCPU (lost events): each one resynchronizes.",
                theme::dim(),
            ))],
        });
    }
    if !state_at.transitions.is_empty() {
        out.push(Section {
            title: "Changed by this event".into(),
            lines: state_at
                .transitions
                .iter()
                .map(|t| Line::from(format!("  {}", describe(t))))
                .collect(),
        });
    }
    if !state_at.others.is_empty() {
        out.push(Section {
            title: "Other vCPUs".into(),
            lines: state_at
                .others
                .iter()
                .map(|(a, s)| {
                    Line::from(format!(
                        "  {:<14} {:<10} vmcs12 {:<12} L1 CR3 {}",
                        a.to_string(),
                        s.mode.level().map_or("unknown".to_owned(), |l| l.to_string()),
                        hex(s.current_vmptr),
                        hex(s.l1_cr3.map(|o| o.value)),
                    ))
                })
                .collect(),
        });
    }
    out
}

fn level_section(st: &VcpuState, changed: &Changed) -> Section {
    let smm = match st.smm {
        SmmState::Unknown => "unknown",
        SmmState::In => "in SMM",
        SmmState::Out => "out",
    };
    Section {
        title: "Level".into(),
        lines: vec![
            kv("mode", mode_text(st.mode), changed.mode),
            kv("current vmcs12", hex(st.current_vmptr), changed.current),
            kv(
                "L1 CR3",
                st.l1_cr3.map_or("-".into(), |o| format!("{:#x} (from {})", o.value, at(o.at))),
                changed.l1_cr3,
            ),
            kv(
                "L2 on hardware",
                st.last_hw_l2.map_or("-".into(), |(vmptr, cr3)| {
                    format!("vmcs12 {} with CR3 {}", hex(vmptr), hex(cr3.map(|o| o.value)))
                }),
                false,
            ),
            kv("SMM", smm.into(), changed.smm),
        ],
    }
}

fn vmcs12_section(st: &VcpuState, changed: &Changed) -> Section {
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "  {:<2}{:<14}{:<14}{:<16}{:<14}{:<10}{:<10}{}",
            "", "VMPTR", "GUEST_CR3", "EPTP", "NESTED_RIP", "LAUNCH", "ENTERED", "LAST EXIT"
        ),
        theme::dim(),
    ))];
    for rec in st.vmcs12.iter() {
        let current = st.current_vmptr == Some(rec.vmptr);
        let cell = |text: String, width: usize, field: Option<Vmcs12Field>| {
            let hot = field.is_some_and(|f| changed.field(rec.vmptr, f));
            Span::styled(
                format!("{text:<width$}"),
                if hot { theme::changed() } else { Style::new() },
            )
        };
        let launch = match rec.launch {
            LaunchState::Unknown => "?",
            LaunchState::Clear => "clear",
            LaunchState::Launched => "launched",
        };
        let last_exit = rec.last_exit.map_or("-".to_owned(), |x| {
            let reason = x.reason.map_or("silent (SMI)".to_owned(), |r| r.to_string());
            format!("{} {reason}{}", at(x.at), if x.zero_instructions { " (0 insns)" } else { "" })
        });
        let entered = rec.entered_at.map_or("-".to_owned(), at);
        lines.push(Line::from(vec![
            Span::styled(if current { "  ▶ " } else { "    " }, theme::heading()),
            cell(format!("{:#x}", rec.vmptr), 14, None),
            cell(hex(rec.l2_cr3()), 14, Some(Vmcs12Field::GuestCr3)),
            cell(hex(rec.eptp.map(|o| o.value)), 16, Some(Vmcs12Field::EptPointer)),
            cell(hex(rec.nested_rip.map(|o| o.value)), 14, Some(Vmcs12Field::GuestRip)),
            cell(launch.to_owned(), 10, None),
            cell(entered, 10, None),
            cell(last_exit, 0, None),
        ]));
        let host = rec.host_rip.map(|o| o.value);
        if host.is_some() || changed.field(rec.vmptr, Vmcs12Field::HostRip) {
            lines.push(Line::from(vec![
                Span::raw("      "),
                Span::styled("HOST_RIP ", theme::dim()),
                cell(hex(host), 0, Some(Vmcs12Field::HostRip)),
            ]));
        }
    }
    if st.vmcs12.iter().next().is_none() {
        lines.push(Line::from(Span::styled("  (no nested entry seen)", theme::dim())));
    }
    Section { title: format!("vmcs12 known to this vCPU ({})", st.vmcs12.iter().count()), lines }
}

fn roots_section(st: &VcpuState, changed: &Changed) -> Section {
    let root = |r: Option<vmxray_replay::state::RootLoad>| {
        r.map_or("-".to_owned(), |r| {
            format!(
                "gfn {:#x} [{}] {} at {}",
                r.gfn,
                r.role,
                if r.created { "new" } else { "reused" },
                at(r.at)
            )
        })
    };
    Section {
        title: "MMU roots".into(),
        lines: vec![
            kv("last root", root(st.last_root), changed.root),
            kv("L1 root (guest_mode 0)", root(st.l1_root), false),
            kv("L2 root (guest_mode 1)", root(st.l2_root), false),
        ],
    }
}

fn pending_section(st: &VcpuState) -> Section {
    let mut lines = Vec::new();
    if let Some(p) = st.pending_launch {
        lines.push(kv(
            "pending launch",
            format!("{} at {} rip {} L1 CR3 {}", p.cause, at(p.at), hex(p.rip), hex(p.l1_cr3)),
            false,
        ));
    }
    if let Some((i, vmptr)) = st.awaiting_host_rip {
        lines.push(kv(
            "awaiting HOST_RIP",
            format!("nested exit {} of vmcs12 {}", at(i), hex(vmptr)),
            false,
        ));
    }
    if let Some(i) = st.exit_awaiting_nested {
        lines.push(kv(
            "exit awaiting nested",
            format!("kvm_exit {} (expects kvm_nested_vmexit)", at(i)),
            false,
        ));
    }
    if let Some(s) = st.smm_stash {
        lines.push(kv("SMM stash", format!("vmcs12 {} at {}", hex(s.vmptr), at(s.at)), false));
    }
    if let Some(x) = st.last_exit {
        lines.push(kv(
            "last kvm_exit",
            format!(
                "{} {} rip {} qual {} from {}",
                at(x.at),
                x.reason,
                hex(x.rip),
                hex(x.info1),
                x.level.map_or("?".to_owned(), |l| l.to_string())
            ),
            false,
        ));
    }
    if let Some((i, rip)) = st.last_entry {
        lines.push(kv("last kvm_entry", format!("{} rip {}", at(i), hex(rip)), false));
    }
    let c = st.counters;
    lines.push(kv(
        "L1 exits counted",
        format!(
            "VMWRITE {} VMPTRLD {} VMCLEAR {} INVEPT {} INVVPID {} VMFUNC {}",
            c.vmwrite, c.vmptrld, c.vmclear, c.invept, c.invvpid, c.vmfunc
        ),
        false,
    ));
    Section { title: "Pending and last events".into(), lines }
}

fn describe(t: &Transition) -> String {
    match t {
        Transition::Mode { from, to } => {
            format!("level {} -> {}", mode_text(*from), mode_text(*to))
        }
        Transition::Resynchronizing { actor, reason } => {
            format!("{actor} resynchronizing ({reason})")
        }
        Transition::NestedEntry { vmptr, cause } => {
            format!("nested VM-Enter of vmcs12 {vmptr:#x} ({cause})")
        }
        Transition::NestedExit { reason } => format!(
            "nested VM-Exit to L1 ({})",
            reason.map_or("silent".to_owned(), |r| r.to_string())
        ),
        Transition::LateVmFail => "late VM-Fail: back in L1".into(),
        Transition::Vmcs12Field { vmptr, field, value } => {
            format!("vmcs12 {vmptr:#x} {field} = {value:#x}")
        }
        Transition::L1Cr3 { value } => format!("L1 CR3 = {value:#x}"),
        Transition::RootLoaded(r) => format!("root loaded: gfn {:#x} [{}]", r.gfn, r.role),
        Transition::Smm { entering } => {
            if *entering {
                "SMM entered".into()
            } else {
                "SMM left".into()
            }
        }
    }
}

/// Draws the State view.
fn draw_view(view_state: &mut StateView, frame: &mut Frame<'_>, area: Rect, ctx: &mut Ctx<'_>) {
    let selected = *ctx.selected;
    let trace = &ctx.trace;
    let lines: Vec<Line<'static>> = match view_state.at(trace, selected) {
        Some(state_at) => {
            let mut lines = Vec::new();
            for (i, s) in sections(state_at, trace).into_iter().enumerate() {
                if i > 0 {
                    lines.push(Line::raw(""));
                }
                lines.push(Line::from(Span::styled(s.title, theme::heading())));
                lines.extend(s.lines);
            }
            lines
        }
        None if trace.is_empty() => vec![Line::raw("No event yet…")],
        None => vec![Line::raw(
            "Replaying up to this event… (the state appears when the loader reaches it)",
        )],
    };
    let title =
        " State — j/k: previous/next event, PgUp/PgDn: scroll, highlighted: changed by this event ";
    frame.render_widget(
        Paragraph::new(lines).scroll((view_state.scroll, 0)).block(Block::bordered().title(title)),
        area,
    );
}

impl View for StateView {
    fn title(&self, _trace: &crate::trace::Trace) -> String {
        "State".into()
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
