//! Render tests: every view of a real trace (`triple-fault-v7-zstd.dat`, a guest that triple
//! faults under KVM's instruction emulator) and of a simulated buggy one (`muen-buggy-6.1.txt`,
//! the stale vmcs02.GUEST_CR3 bug), drawn into a fixed 140x40 `TestBackend` and compared with
//! the insta snapshots in `tests/snapshots/`. Nothing on screen depends on the terminal, the
//! environment or the time of day once loading is done.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use vmxray_tui::app::{Action, App, PromptKind, ViewId};
use vmxray_tui::loader::{Source, load_all};
use vmxray_tui::trace::Progress;

// Tests run in the package directory: a relative path keeps the absolute checkout path off
// the screen (the title shows the input's name).
const REAL: &str = "../samples/real/tracedat/triple-fault-v7-zstd.dat";
const SIM: &str = "../samples/sim/muen-buggy-6.1.txt";

const WIDTH: u16 = 140;
const HEIGHT: u16 = 40;

fn app(path: &str) -> App {
    let trace = load_all(Source::File(path.into()));
    assert!(matches!(trace.progress, Progress::Done { .. }), "{:?}", trace.progress);
    App::loaded(trace)
}

fn draw(app: &mut App) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).unwrap();
    terminal.draw(|f| vmxray_tui::views::draw(f, app)).unwrap();
    terminal
}

fn screen(app: &mut App) -> String {
    draw(app).backend().to_string()
}

fn type_prompt(app: &mut App, kind: PromptKind, text: &str) {
    app.act(Action::Prompt(kind));
    for c in text.chars() {
        app.act(Action::Type(c));
    }
    app.act(Action::Enter);
}

#[test]
fn sim_anomalies() {
    let mut app = app(SIM);
    let text = screen(&mut app);
    // The most severe first, each with its rule, vCPU, event and message.
    let critical = text.find("critical changed_subject_cr3").expect("critical row");
    let error = text.find("error    hlt_cancelled_exit_state").expect("error row");
    assert!(critical < error, "{text}");
    assert!(text.contains("Anomalies (2)") && text.contains("#450"), "{text}");
    // The selected anomaly's whole message, with the fix it checks.
    assert!(text.contains("fixed by 04f11ef45810"), "{text}");
    insta::assert_snapshot!("sim_anomalies", text);
}

#[test]
fn sim_timeline_at_the_most_severe_anomaly() {
    let mut app = app(SIM);
    app.act(Action::Enter);
    assert_eq!(app.view, ViewId::TIMELINE);
    assert_eq!(app.selected, 450);
    let text = screen(&mut app);
    // The selected event is the anomaly's, marked, and the list shows its neighbours.
    let row = text.lines().find(|l| l.contains("#450")).expect("row #450");
    assert!(row.contains('!') && row.contains("kvm_nested_vmenter"), "{row}");
    assert!(text.contains("Events 451/534"), "{text}");
    // One lane per vCPU.
    assert!(text.contains("│v0 ") && text.contains("│v1 "), "{text}");
    insta::assert_snapshot!("sim_timeline", text);
}

#[test]
fn sim_state_shows_the_divergent_cr3() {
    let mut app = app(SIM);
    app.act(Action::Enter);
    app.act(Action::NextView);
    assert_eq!(app.view, ViewId::STATE);
    let terminal = draw(&mut app);
    let text = terminal.backend().to_string();
    assert!(text.contains("0x100f9000"), "{text}");
    // The GUEST_CR3 the event loaded is highlighted as changed.
    let buffer = terminal.backend().buffer();
    let row = (0..HEIGHT)
        .find(|y| {
            let line: String = (0..WIDTH).map(|x| buffer[(x, *y)].symbol().to_owned()).collect();
            line.contains("▶ 0x8001000")
        })
        .expect("current vmcs12 row");
    let line: String = (0..WIDTH).map(|x| buffer[(x, row)].symbol().to_owned()).collect();
    let col = u16::try_from(line.find("0x100f9000").unwrap()).unwrap();
    // Byte offset = column here: the row starts with one 3-byte '│' and one 3-byte '▶'.
    let col = col - 4;
    assert_eq!(buffer[(col, row)].bg, Color::Yellow, "{line}");
    insta::assert_snapshot!("sim_state", text);
}

#[test]
fn sim_stats() {
    let mut app = app(SIM);
    app.act(Action::Show(ViewId::STATS));
    let text = screen(&mut app);
    // The same totals and split as `vmxray stats`, the commonest reason first and selected.
    assert!(text.contains("127 kvm_exit · L1 73 / L2 54 (L0 kept 22, reflected 32)"), "{text}");
    let first = text.lines().find(|l| l.contains("30.71%")).expect("first reason");
    assert!(first.contains("VMRESUME") && first.contains("39"), "{first}");
    assert!(text.contains("Latency of VMRESUME"), "{text}");
    insta::assert_snapshot!("sim_stats", text);
}

#[test]
fn sim_detail() {
    let mut app = app(SIM);
    app.act(Action::Enter);
    app.act(Action::Enter);
    assert_eq!(app.view, ViewId::DETAIL);
    let text = screen(&mut app);
    // Every field under its kernel name, the decodings, and the anomalies at the event.
    assert!(text.contains("#450 kvm:kvm_nested_vmenter"), "{text}");
    assert!(text.contains("guest_pgd                 0x100f9000"), "{text}");
    assert!(text.contains("level (model)             L2"), "{text}");
    assert!(text.contains("vector                    48"), "{text}");
    assert!(text.contains("critical changed_subject_cr3"), "{text}");
    insta::assert_snapshot!("sim_detail", text);
}

#[test]
fn sim_filtered_timeline_and_lanes() {
    let mut app = app(SIM);
    app.act(Action::Show(ViewId::TIMELINE));
    type_prompt(&mut app, PromptKind::Filter, "vcpu=1 event=kvm_nested_vmenter");
    assert_eq!(app.rows.len(&app.trace), 23, "{:?}", app.status);
    app.act(Action::Anomaly(true));
    let text = screen(&mut app);
    // Only vCPU 1's nested entries are listed.
    let listed: Vec<&str> = text.lines().filter(|l| l.contains(" L2 kvm_")).collect();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|l| l.contains(" v1 ") && l.contains("kvm_nested_vmenter")),
        "{text}"
    );
    assert!(text.contains("Events 23/23 · filter vcpu=1"), "{text}");
    insta::assert_snapshot!("sim_timeline_filtered", text);
}

#[test]
fn sim_help_overlay() {
    let mut app = app(SIM);
    app.act(Action::Help);
    insta::assert_snapshot!("sim_help", screen(&mut app));
    app.act(Action::Back);
    assert!(!app.help);
}

#[test]
fn real_anomalies_lists_the_crash() {
    let mut app = app(REAL);
    let text = screen(&mut app);
    // A real KVM without anomalies; the triple fault is listed as a crash of its thread.
    assert!(text.contains("0 critical 0 error 0 warning  1 crash"), "{text}");
    let row = text.lines().find(|l| l.contains("CRASH")).expect("crash row");
    assert!(row.contains("#142") && row.contains("KVM_EXIT_SHUTDOWN (triple fault)"), "{row}");
    insta::assert_snapshot!("real_anomalies", text);
}

#[test]
fn real_timeline_at_the_crash() {
    let mut app = app(REAL);
    app.act(Action::Crash);
    assert_eq!(app.selected, 142);
    assert_eq!(app.view, ViewId::TIMELINE);
    let text = screen(&mut app);
    let row = text.lines().find(|l| l.contains("#142")).expect("row #142");
    assert!(row.contains("kvm_userspace_exit") && row.contains("KVM_EXIT_SHUTDOWN"), "{row}");
    // The crash is marked in its thread's lane.
    assert!(text.lines().any(|l| l.contains("t23323") && l.contains('X')), "{text}");
    insta::assert_snapshot!("real_timeline", text);
}

#[test]
fn real_state_at_the_crash() {
    let mut app = app(REAL);
    app.act(Action::Crash);
    app.act(Action::Show(ViewId::STATE));
    let text = screen(&mut app);
    // No nested state on a plain guest: the model says so instead of inventing a level, and
    // shows the shadow root it tracked.
    assert!(text.contains("After event #142 kvm_userspace_exit on thread 23323"), "{text}");
    assert!(text.contains("unknown (not established / resynchronizing)"), "{text}");
    assert!(text.contains("(no nested entry seen)"), "{text}");
    assert!(text.contains("gfn 0x6 [l4 8-byte q0 wux nxe ad] new at #32"), "{text}");
    insta::assert_snapshot!("real_state", text);
}

#[test]
fn real_stats_without_kvm_exit_is_the_stats_report() {
    let mut app = app(REAL);
    app.act(Action::Show(ViewId::STATS));
    let text = screen(&mut app);
    assert!(text.contains("No kvm_exit events"), "{text}");
    assert!(text.contains("0f 22 d8"), "{text}");
    insta::assert_snapshot!("real_stats", text);
}

#[test]
fn real_detail_of_the_failed_emulation() {
    let mut app = app(REAL);
    type_prompt(&mut app, PromptKind::Search, "failed=1");
    assert_eq!(app.selected, 135, "{:?}", app.status);
    app.act(Action::Show(ViewId::DETAIL));
    let text = screen(&mut app);
    assert!(text.contains("#135 kvm:kvm_emulate_insn"), "{text}");
    assert!(text.contains("failed") && text.contains("ud2"), "{text}");
    insta::assert_snapshot!("real_detail", text);
}

#[test]
fn real_detail_of_a_root_load_decodes_the_role() {
    let mut app = app(REAL);
    type_prompt(&mut app, PromptKind::Search, "kvm_mmu_get_page");
    app.act(Action::Show(ViewId::DETAIL));
    let text = screen(&mut app);
    assert!(text.contains("guest_mode (L2)"), "{text}");
    assert!(text.contains("MMU role (0x1704)"), "{text}");
}

#[test]
fn real_detail_of_an_untyped_event_shows_its_print_fmt_text() {
    // kvm_track_tsc has no typed rendering: the detail view renders it through the print fmt
    // stored in the trace.dat, as `trace-cmd report -N` prints it.
    let mut app = app(REAL);
    type_prompt(&mut app, PromptKind::Search, "kvm_track_tsc");
    app.act(Action::Show(ViewId::DETAIL));
    let text = screen(&mut app);
    assert!(text.contains("Print fmt (as trace-cmd report -N)"), "{text}");
    assert!(
        text.contains("vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 1 hostclock 0x1"),
        "{text}"
    );
    // Typed events keep their own rendering.
    type_prompt(&mut app, PromptKind::Search, "failed=1");
    let text = screen(&mut app);
    assert!(!text.contains("Print fmt (as trace-cmd report -N)"), "{text}");
}

#[test]
fn the_same_numbers_as_vmxray_stats() {
    // The view reads the report ExitStats produced, over the same events `vmxray stats` reads.
    let app = app(SIM);
    let report = app.trace.stats.as_deref().unwrap();
    let mut stats = vmxray_analyze::stats::ExitStats::new();
    let mut reader =
        vmxray_capture::open(SIM.as_ref(), vmxray_capture::ReadOptions::default()).unwrap();
    for e in reader.by_ref() {
        stats.push(&e.unwrap());
    }
    let direct = stats.finish(Some(reader.meta()), Some(reader.stats()));
    assert_eq!(report.exits, direct.exits);
    assert_eq!(report.events_by_name, direct.events_by_name);
}

#[test]
fn navigation_keys_and_time_jump() {
    let mut app = app(SIM);
    app.act(Action::Show(ViewId::TIMELINE));
    app.act(Action::Last);
    assert_eq!(app.selected, 533);
    app.act(Action::First);
    assert_eq!(app.selected, 0);
    // Both anomalies of the Muen sample (changed_subject_cr3 and hlt_cancelled_exit_state)
    // are at the stale-CR3 entry, #450: a and A stay on it.
    app.act(Action::Anomaly(true));
    assert_eq!(app.selected, 450);
    app.act(Action::Anomaly(true));
    assert_eq!(app.selected, 450);
    app.act(Action::Anomaly(false));
    assert_eq!(app.selected, 450);
    app.act(Action::Down);
    assert_eq!(app.selected, 451);
    type_prompt(&mut app, PromptKind::Time, "3836.4445");
    let ts = app.trace.event(app.selected).unwrap().ts;
    assert!(ts >= 3_836_444_500_000, "{ts}");
    assert!(app.trace.event(app.selected - 1).unwrap().ts < 3_836_444_500_000);
    type_prompt(&mut app, PromptKind::Time, "#200");
    assert_eq!(app.selected, 200);
    // Search wraps around and n/N move between matches.
    type_prompt(&mut app, PromptKind::Search, "HLT");
    // The only HLT exit is before #200: the search wrapped. Its kvm_nested_vmexit also says HLT.
    let first = app.selected;
    assert!(first < 200, "{first}");
    app.act(Action::SearchNext(true));
    assert_eq!(app.selected, first + 1);
    app.act(Action::SearchNext(false));
    assert_eq!(app.selected, first);
    // No crash in this trace.
    app.act(Action::Crash);
    assert_eq!(app.status.as_deref(), Some("No crash in this trace"));
}

#[test]
fn every_view_draws_at_any_size() {
    for path in [SIM, REAL] {
        let mut app = app(path);
        app.act(Action::Enter);
        for view in (0..app.views().len()).map(ViewId) {
            app.act(Action::Show(view));
            for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 12), (80, 24), (300, 100)] {
                let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
                terminal.draw(|f| vmxray_tui::views::draw(f, &mut app)).unwrap();
                app.act(Action::Help);
                terminal.draw(|f| vmxray_tui::views::draw(f, &mut app)).unwrap();
                app.act(Action::Help);
            }
        }
    }
}

#[test]
fn empty_trace_while_loading() {
    let (_tx, rx) = std::sync::mpsc::channel();
    let mut app = App::new(rx);
    for view in (0..app.views().len()).map(ViewId) {
        app.act(Action::Show(view));
        app.act(Action::Down);
        app.act(Action::Anomaly(true));
        app.act(Action::Last);
        let text = screen(&mut app);
        assert!(text.contains("loading"), "{text}");
    }
}

#[test]
fn mouse_clicks_select_rows_lanes_and_tabs() {
    use ratatui::layout::Position;
    let mut app = app(SIM);
    app.act(Action::Show(ViewId::TIMELINE));
    draw(&mut app);
    // Tab titles: "3 State" is the third.
    let (state_tab, _) = app.hits.tabs[2];
    app.act(Action::Click(Position::new(state_tab.x + 1, state_tab.y)));
    assert_eq!(app.view, ViewId::STATE);
    app.act(Action::Show(ViewId::TIMELINE));
    draw(&mut app);
    // The last lane column is the end of the trace.
    let (lanes, n) = app.hits.lanes.unwrap();
    app.act(Action::Click(Position::new(lanes.x + lanes.width - 1, lanes.y)));
    assert!(app.selected >= n - n / u64::from(lanes.width) - 1, "{}", app.selected);
    draw(&mut app);
    // A click on the third list row selects the event shown there.
    let (list, first) = app.hits.list.unwrap();
    app.act(Action::Click(Position::new(list.x + 3, list.y + 2)));
    assert_eq!(app.selected, first + 2);
    app.act(Action::Scroll { down: true, at: Position::new(list.x, list.y) });
    assert_eq!(app.selected, first + 5);
}

#[test]
fn chunked_storage_keeps_every_event_in_order() {
    // 400 copies of the bundled sample (~170K events, three storage chunks), end to end.
    let sample = load_all(Source::Bundled);
    let one: Vec<vmxray_events::Event> =
        (0..sample.len()).map(|i| sample.event(i).unwrap().clone()).collect();
    let span = one.last().unwrap().ts - one[0].ts + 1;
    let mut events = Vec::new();
    for copy in 0..400u64 {
        events.extend(one.iter().cloned().map(|mut e| {
            e.ts += copy * span;
            e
        }));
    }
    let expected: Vec<u64> = events.iter().map(|e| e.ts).collect();
    let trace = load_all(Source::Events {
        name: "copies".into(),
        clock: vmxray_capture::Clock::Nanoseconds,
        events,
    });
    assert_eq!(trace.len(), expected.len() as u64);
    for (i, ts) in expected.iter().enumerate() {
        assert_eq!(trace.event(i as u64).unwrap().ts, *ts, "event {i}");
    }
    assert!(trace.event(expected.len() as u64).is_none());
    // The state is rebuilt anywhere, including across chunk boundaries.
    assert!(trace.state_at(65_536).is_some());
    assert!(trace.state_at(expected.len() as u64 - 1).is_some());
    assert_eq!(trace.index_at_time(expected[100_000]), 100_000);
}

/// A host trace of four VMs, each with vCPUs 0 and 1: the lanes are grouped by VM (`v0 v1` of
/// the first VM, `m1v0 m1v1` of the second, ...), and the anomalies are on the buggy VM's.
#[test]
fn host_lanes_are_grouped_by_vm() {
    let mut app = app("../samples/host/host-4vms-muen-buggy-6.1.txt");
    app.act(Action::Show(ViewId::TIMELINE));
    let text = screen(&mut app);
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("\"│"))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .take_while(|l| !l.starts_with("EVENT") && !l.is_empty())
        .collect();
    assert_eq!(labels, ["v0", "v1", "m1v0", "m1v1", "m2v0", "m2v1", "m3v0", "m3v1"], "{text}");
    let marked: Vec<&str> = text.lines().filter(|l| l.contains('!')).collect();
    assert!(marked.iter().any(|l| l.contains("m1v0")), "{text}");
    assert!(!marked.iter().any(|l| l.contains("│v0 ") || l.contains("m2v") || l.contains("m3v")));
    app.act(Action::Show(ViewId::ANOMALIES));
    let text = screen(&mut app);
    assert!(text.contains("m1v0"), "{text}");
}

#[test]
fn real_detail_breaks_down_an_ept_violation() {
    // A real EPT violation recorded on 6.1 (`samples/real/vmx/mmio-ept-6.1.dat`): the guest's
    // first write sets an accessed bit in its own page table.
    let mut app = app("../samples/real/vmx/mmio-ept-6.1.dat");
    type_prompt(&mut app, PromptKind::Search, "exit_reason=0x30");
    app.act(Action::Show(ViewId::DETAIL));
    let text = screen(&mut app);
    assert!(text.contains("0x82: write, not present, paging-structure access"), "{text}");
    assert!(text.contains("EPT violation (0x82)"), "{text}");
    assert!(text.contains("accessed (bit 8)          a guest paging-structure entry"), "{text}");
    app.act(Action::PageDown);
    let text = screen(&mut app);
    assert!(text.contains("linear address (bit 7)    valid"), "{text}");
}

#[test]
fn real_detail_breaks_down_a_page_fault_exit() {
    // `samples/real/vmx/mmio-shadow-6.12.dat`: with the shadow MMU the guest's #PF exits;
    // its error code (0x10: a fetch of a page that is not present) is decoded.
    let mut app = app("../samples/real/vmx/mmio-shadow-6.12.dat");
    type_prompt(&mut app, PromptKind::Search, "intr_info=0x80000b0e");
    app.act(Action::Show(ViewId::DETAIL));
    let text = screen(&mut app);
    assert!(text.contains("#PF error code (0x10): fetch, not present"), "{text}");
    assert!(text.contains("instruction fetch (I/F)"), "{text}");
}

#[test]
fn detail_of_an_exit_shows_where_its_time_went_on_the_host() {
    // The real-VMX lab recording where busyloop shares the vCPU thread's CPU: its slowest
    // exit's detail names busyloop, and the parts are those `vmxray stats` reports.
    let trace =
        load_all(Source::File("../samples/real/vmx/context-busy-io-loop-ept-6.1.dat".into()));
    let slowest = trace.stats.as_ref().unwrap().host_context.as_ref().unwrap().outliers[0].clone();
    assert_eq!(trace.contexts.get(&slowest.index), Some(&slowest));
    let mut app = App::loaded(trace);
    app.selected = slowest.index;
    app.act(Action::Show(ViewId::DETAIL));
    let text = screen(&mut app);
    assert!(text.contains("kvm:kvm_exit"), "{text}");
    assert!(text.contains("Host context: 24.2 ms to the next entry"), "{text}");
    assert!(text.contains("ran: busyloop pid 197") && text.contains("10.4 ms"), "{text}");
}

#[test]
fn an_excerpt_is_modelled_as_one() {
    // bz220549's poster cut L2's run out ("L2 services the interrupt"): the browser, like
    // `vmxray replay`, reports the missing events at info and names the cut.
    let trace = load_all(Source::File(
        "../samples/real/excerpts/bz220549-split-irqchip-eoi-tracepoints.txt".into(),
    ));
    assert!(trace.meta.as_ref().is_some_and(|m| m.excerpt));
    let mismatch: Vec<_> =
        trace.anomalies.iter().filter(|a| a.rule.name() == "l2_entry_mismatch").collect();
    assert_eq!(mismatch.len(), 1, "{:?}", trace.anomalies);
    assert_eq!(mismatch[0].severity.name(), "info");
    assert!(mismatch[0].message.contains("excerpt"), "{}", mismatch[0].message);
}
