//! The index the TUI browses instead of resident events: for a trace.dat (positions by CPU
//! lane) and a text file (blocks of lines), every event decoded on demand is the event a full
//! read gives, tags and the State view are what a full replay gives, and filters, time jumps
//! and lanes agree with the events.

use std::path::{Path, PathBuf};

use vmxray_analyze::pass::Stepped;
use vmxray_events::Event;
use vmxray_replay::{Model, triage};
use vmxray_samples::sim::dat::DatSink;
use vmxray_samples::sim::stream::{Length, simulate_stream};
use vmxray_samples::sim::{Bug, KernelVersion, KvmFlavour, Scenario, SimConfig};
use vmxray_tui::app::{Action, App, PromptKind, ViewId};
use vmxray_tui::filter::Filter;
use vmxray_tui::loader::{Source, load_all};
use vmxray_tui::summary::{ActorCounts, slot};
use vmxray_tui::trace::{Progress, Trace, tag_of};

#[path = "index/first_screen.rs"]
mod first_screen;

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/tui-index");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn config() -> SimConfig {
    SimConfig::new(Scenario::Muen)
        .kvm(KvmFlavour::Buggy(Bug::HltStaleCr3))
        .kernel(KernelVersion::V6_1)
        .vcpus(3)
}

/// A simulated trace of `n` events as trace.dat and as ftrace text; the events as read back.
fn traces(n: u64) -> (PathBuf, PathBuf) {
    let dat = tmp(&format!("muen-{n}.dat"));
    let txt = tmp(&format!("muen-{n}.txt"));
    let cfg = config();
    let mut sink = DatSink::create(&dat, cfg.kernel, cfg.vcpu_count()).unwrap();
    let mut text = vmxray_samples::sim::text::header(
        usize::try_from(n).unwrap(),
        &vmxray_samples::sim::text::TextOptions {
            kernel: cfg.kernel,
            nr_cpus: cfg.vcpu_count().max(2),
            tgid: false,
        },
    );
    simulate_stream(&cfg, Length::Events(n), false, |e| {
        text.push_str(&vmxray_samples::sim::text::render_line(e, cfg.kernel));
        text.push('\n');
        sink.push(e)
    })
    .unwrap();
    sink.finish().unwrap();
    std::fs::write(&txt, text).unwrap();
    (dat, txt)
}

fn full_read(path: &Path) -> Vec<Event> {
    vmxray_capture::open(path, Default::default()).unwrap().map(|e| e.unwrap()).collect()
}

fn check(trace: &Trace, events: &[Event], what: &str) {
    assert!(matches!(trace.progress, Progress::Done { .. }), "{what}: {:?}", trace.progress);
    assert_eq!(trace.len(), events.len() as u64, "{what}");
    // Every event, in random-ish order (blocks decoded out of order, the LRU evicting).
    let n = events.len() as u64;
    for k in 0..n {
        let i = (k * 7_919) % n;
        assert_eq!(
            trace.event(i).as_ref(),
            Some(&events[usize::try_from(i).unwrap()]),
            "{what}: event {i}"
        );
    }
    assert!(trace.event(n).is_none());
    // Tags and states are those of one replay of the whole stream, and so are the lanes'
    // counts, the crashes and the lost markers (counted on the statistics thread).
    let mut model = Model::default();
    let actors = &trace.actors;
    let mut lanes = vec![ActorCounts::default(); actors.len()];
    let (mut crashes, mut lost) = (Vec::new(), Vec::new());
    for (i, e) in events.iter().enumerate() {
        model.step(e);
        let stepped = Stepped { event: e, model: &model };
        let id = stepped
            .step()
            .actor
            .and_then(|a| actors.iter().position(|x| *x == a))
            .map(|p| u16::try_from(p).unwrap());
        let expected = tag_of(&stepped, id);
        if let Some(c) = id.and_then(|id| lanes.get_mut(usize::from(id))) {
            c.tiers[slot(expected.tier())] += 1;
            if let Some(worst) = stepped.step().anomalies.iter().map(|a| a.severity).max() {
                c.worst = c.worst.max(u8::try_from(worst.rank() + 1).unwrap());
            }
        }
        if expected.crash() {
            crashes.push((i as u64, triage::fatal(&e.kind).unwrap()));
        }
        if expected.lost() {
            lost.push(i as u64);
        }
        if i % 997 == 0 || i + 1 == events.len() {
            assert_eq!(trace.tag(i as u64), Some(expected), "{what}: tag {i}");
            let at = trace.state_at(i as u64).unwrap();
            assert_eq!(at.actor, stepped.step().actor, "{what}: state {i}");
            assert_eq!(
                at.state.as_ref(),
                stepped.step().actor.and_then(|a| model.state(a)),
                "{what}: state {i}"
            );
        }
    }
    // Time jumps land on the first event at or after the time.
    for k in
        [0, 1, 4_095, 4_096, 20_000, events.len() - 1].into_iter().filter(|k| *k < events.len())
    {
        let ts = events[k].ts;
        let first = events.partition_point(|e| e.ts < ts) as u64;
        assert_eq!(trace.index_at_time(ts), first, "{what}: time of {k}");
    }
    // The lanes' summaries count every event once.
    let counted: u64 = trace.lanes.buckets().iter().map(|b| b.len).sum();
    assert_eq!(counted, n, "{what}");
    let mut got = trace.lanes.range(0, n);
    got.resize(lanes.len(), ActorCounts::default());
    assert_eq!(got, lanes, "{what}: lanes");
    assert_eq!(trace.crashes, crashes, "{what}: crashes");
    assert_eq!(trace.lost, lost, "{what}: lost markers");
}

#[test]
fn trace_dat_and_text_indexes_give_back_every_event() {
    let (dat, txt) = traces(90_000);
    let events = full_read(&dat);
    let trace = load_all(Source::File(dat.clone()));
    check(&trace, &events, "trace.dat");
    assert!(trace.blocks().len() > 20);
    assert!(!trace.anomalies.is_empty());

    let text_events = full_read(&txt);
    assert_eq!(text_events.len(), events.len());
    let trace = load_all(Source::File(txt.clone()));
    // 90k lines of ~150 bytes: more than one 4 MiB block.
    assert!(trace.blocks().len() >= 3, "{}", trace.blocks().len());
    check(&trace, &text_events, "text");
    std::fs::remove_file(&dat).ok();
    std::fs::remove_file(&txt).ok();
}

#[test]
fn a_real_vmx_triple_fault_is_indexed_as_its_replay_reads_it() {
    // Bochs real-VMX captures (samples/real/vmx): an L1 triple fault, and a #PF one under
    // EPT. Each has its crash; the lanes, tags and markers must be the model's.
    for name in ["l1-triple-fault-6.1.dat", "pf-triple-fault-ept-6.12.dat"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/vmx").join(name);
        let events = full_read(&path);
        let trace = load_all(Source::File(path));
        assert!(!trace.crashes.is_empty(), "{name}: no crash found");
        check(&trace, &events, name);
    }
}

#[test]
fn filters_keep_what_a_scan_of_every_event_keeps() {
    let (dat, txt) = traces(30_000);
    let trace = load_all(Source::File(dat.clone()));
    let spec = "vcpu=1,2 level=L2";
    let filter = Filter::parse(spec).unwrap();
    let expected: Vec<u64> = (0..trace.len()).filter(|i| filter.keeps(&trace, *i)).collect();
    assert!(!expected.is_empty());
    let mut app = App::loaded(trace);
    app.act(Action::Show(ViewId::TIMELINE));
    app.act(Action::Prompt(PromptKind::Filter));
    for c in spec.chars() {
        app.act(Action::Type(c));
    }
    app.act(Action::Enter);
    app.settle();
    assert_eq!(app.rows.len(&app.trace), expected.len() as u64);
    for (row, index) in expected.iter().enumerate().step_by(37) {
        assert_eq!(app.rows.event_at(row as u64, &app.trace), Some(*index));
        assert_eq!(app.rows.row_of(*index, &app.trace), row as u64);
    }
    std::fs::remove_file(&dat).ok();
    std::fs::remove_file(&txt).ok();
}

#[test]
fn a_saved_index_opens_the_same_trace_and_is_dropped_when_the_file_changes() {
    use vmxray_tui::loader::{LoadOptions, load_all_with};
    let (dat, txt) = traces(20_000);
    for path in [&dat, &txt] {
        let beside = PathBuf::from(format!("{}.vmxidx", path.display()));
        std::fs::remove_file(&beside).ok();
        let first = load_all_with(Source::File(path.clone()), LoadOptions::INDEXED);
        assert!(
            first.note.as_deref().is_some_and(|n| n.starts_with("Index saved")),
            "{:?}",
            first.note
        );
        assert!(beside.exists());
        let again = load_all_with(Source::File(path.clone()), LoadOptions::INDEXED);
        assert!(
            again.note.as_deref().is_some_and(|n| n.starts_with("Index loaded")),
            "{:?}",
            again.note
        );
        assert_eq!(again.len(), first.len());
        assert_eq!(again.anomalies, first.anomalies);
        assert_eq!(again.crashes, first.crashes);
        assert_eq!(again.actors, first.actors);
        assert_eq!(again.stats, first.stats);
        assert_eq!(again.lanes.buckets(), first.lanes.buckets());
        assert_eq!(again.rebuilding, None, "the checkpoints are rebuilt");
        for i in (0..first.len()).step_by(1_777) {
            assert_eq!(again.event(i), first.event(i));
            assert_eq!(again.tag(i), first.tag(i));
            assert_eq!(again.state_at(i).map(|s| s.state), first.state_at(i).map(|s| s.state));
        }
        // A changed file: the index no longer applies.
        let mut bytes = std::fs::read(path).unwrap();
        bytes.extend_from_slice(b"\n");
        std::fs::write(path, bytes).unwrap();
        let changed = load_all_with(Source::File(path.clone()), LoadOptions::INDEXED);
        assert!(
            changed.note.as_deref().is_some_and(|n| n.starts_with("Index saved")),
            "{:?}",
            changed.note
        );
        std::fs::remove_file(&beside).ok();
        std::fs::remove_file(path).ok();
    }
}
