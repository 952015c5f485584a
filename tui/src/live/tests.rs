//! The live view over a feed of a real simulated trace (the bundled Muen sample, with its
//! nested exits and its two anomalies), rendered into `TestBackend`.

use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vmxray_events::Event;

use super::*;

struct FakeFeed {
    events: Vec<Event>,
    dumps: u32,
}

impl Feed for FakeFeed {
    fn poll(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn dump(&mut self, last: Duration) -> Result<String, String> {
        self.dumps += 1;
        Ok(format!("wrote dump-{}.dat ({}s)", self.dumps, last.as_secs()))
    }

    fn describe(&self) -> String {
        "test feed".into()
    }

    fn ended(&self) -> bool {
        false
    }
}

fn sample() -> Vec<Event> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/sim/muen-buggy-6.1.txt");
    vmxray_capture::open(&path, Default::default()).unwrap().map(Result::unwrap).collect()
}

fn top() -> Top<FakeFeed> {
    let config = TopConfig { interval: Duration::ZERO, ..TopConfig::default() };
    let mut top = Top::new(FakeFeed { events: sample(), dumps: 0 }, config);
    assert!(top.update());
    top
}

fn screen(top: &mut Top<FakeFeed>, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| draw(f, top)).unwrap();
    let buf = terminal.backend().buffer();
    (0..buf.area.height)
        .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn key(c: char) -> TermEvent {
    TermEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

#[test]
fn views_show_reasons_levels_latency_and_anomalies() {
    let mut top = top();
    let exits = screen(&mut top, 160, 40);
    assert!(exits.contains("test feed") && exits.contains("1 Exits"), "{exits}");
    let row = exits.lines().find(|l| l.contains("VMRESUME")).expect("VMRESUME row");
    assert!(row.split_whitespace().any(|w| w == "36" || w.parse::<u64>().is_ok()), "{row}");
    assert!(exits.contains("1 critical"), "{exits}");

    top.key(&key('3'));
    let latency = screen(&mut top, 160, 40);
    assert!(latency.lines().any(|l| l.trim_start_matches('│').starts_with("all ")), "{latency}");

    top.key(&key('4'));
    let anomalies = screen(&mut top, 160, 40);
    assert!(anomalies.contains("changed_subject_cr3"), "{anomalies}");
    assert!(anomalies.contains("critical"), "{anomalies}");

    top.key(&key('2'));
    let vcpus = screen(&mut top, 160, 40);
    assert!(vcpus.contains("vcpu 0") && vcpus.contains("vcpu 1"), "{vcpus}");

    top.key(&key('5'));
    let events = screen(&mut top, 160, 40);
    assert!(events.contains("kvm_nested_vmenter"), "{events}");
}

#[test]
fn w_writes_a_dump_and_p_pauses() {
    let mut top = top();
    top.key(&key('w'));
    assert_eq!(top.feed.dumps, 1);
    assert!(screen(&mut top, 120, 20).contains("wrote dump-1.dat (10s)"));
    top.key(&key('p'));
    assert!(top.paused);
    assert!(screen(&mut top, 120, 20).contains("PAUSED"));
    top.key(&key('q'));
    assert!(top.quit);
}

#[test]
fn every_view_draws_at_any_size() {
    let mut top = top();
    for i in 0..TopView::ALL.len() {
        top.key(&key(char::from(b'1' + u8::try_from(i).unwrap())));
        for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 12), (80, 24), (300, 100)] {
            let _ = screen(&mut top, w, h);
            top.key(&key('?'));
            let _ = screen(&mut top, w, h);
            top.key(&key('x'));
            top.key(&key('G'));
            let _ = screen(&mut top, w, h);
        }
    }
}
