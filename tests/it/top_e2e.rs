//! `vmxray top` on a running lab guest: the live screen in a real terminal (tmux) with both
//! backends — the guest's events appear and the counts move, the views switch, `w` writes a
//! trace.dat that reads back with the guest's events, `q` restores the terminal — and
//! `--batch` lines (text and JSON) parsed.
//!
//! Needs /dev/kvm, root, tracefs and tmux: prints `SKIP: <reason>` without them, fails instead
//! under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tmux::Tmux;

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

/// A guest that runs until killed (long enough for every check here).
struct Guest(Child);

impl Guest {
    fn start() -> Self {
        let child = Command::new(BIN)
            .args(["lab", "io-loop=100000000", "--no-record"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Its VM is built and running.
        std::thread::sleep(Duration::from_millis(300));
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unavailable() -> Option<String> {
    super::backends::unavailable().or_else(crate::tmux::missing)
}

/// The total event count of the title (`… 12,345 events · 3s`).
fn total_events(screen: &str) -> Option<u64> {
    let title = screen.lines().find(|l| l.contains("vmxray top"))?;
    let before = title.split(" events · ").next()?;
    before.rsplit(' ').next()?.replace(',', "").parse().ok()
}

fn dump_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-top-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dumps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect()
}

#[test]
fn top_shows_a_running_guest_in_tmux() {
    if let Some(reason) = unavailable() {
        vmxray_events::test_util::skip(&reason);
        return;
    }
    for backend in ["perf", "tracefs"] {
        let guest = Guest::start();
        let dir = dump_dir(backend);
        let tmux = Tmux::new(format!("vmxray-top-{}-{backend}", std::process::id()), "top");
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "45",
            "env",
            "PS1=top-prompt$ ",
            "TERM=xterm-256color",
            "sh",
        ]);
        assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
        tmux.wait_for(&["top-prompt$"]);
        let command = format!(
            "{BIN} top --pid {} --backend {backend} --interval 0.5s --dump-last 5s --dump-dir {}; echo top-exit=$?",
            guest.pid(),
            dir.display()
        );
        tmux.keys(&[&command, "Enter"]);

        // The guest's exits on screen: its userspace exits in the Events view.
        let pid = format!("pid {}", guest.pid());
        let first = tmux.wait_for(&["vmxray top", &pid, &format!("· {backend} ·"), "1 Exits"]);
        assert!(tmux.alternate_on(), "{backend}: the live view runs on the alternate screen");
        tmux.keys(&["5"]);
        let events = tmux.wait_for(&["EVENTS/S", "kvm_userspace_exit", "KVM_EXIT_IO"]);
        // And it updates: the total grows from one screen to the next.
        let a = total_events(&events).or_else(|| total_events(&first)).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let b = loop {
            std::thread::sleep(Duration::from_millis(700));
            let now = total_events(&tmux.capture()).unwrap_or(0);
            if now > a || Instant::now() > deadline {
                break now;
            }
        };
        assert!(b > a, "{backend}: the event count does not move ({a} then {b})");

        // The vCPU view attributes the events to the guest's thread.
        tmux.keys(&["2"]);
        tmux.wait_for(&["VCPU", "EVENTS/S"]);
        tmux.keys(&["4"]);
        tmux.wait_for(&["SEVERITY", "RULE"]);

        // w: the last seconds to a trace.dat that reads back with the guest's events.
        tmux.keys(&["w"]);
        let screen = tmux.wait_for(&["wrote ", "vmxray-top-"]);
        let files = dumps(&dir);
        assert_eq!(files.len(), 1, "{backend}: {screen}");
        let dump = Command::new(BIN).arg("dump").arg(&files[0]).output().unwrap();
        assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
        let text = String::from_utf8_lossy(&dump.stdout);
        let guest_exits = text
            .lines()
            .filter(|l| {
                l.contains("kvm_userspace_exit") && l.contains(&format!(" {} ", guest.pid()))
            })
            .count();
        assert!(guest_exits > 10, "{backend}: {guest_exits} guest exits in the dump");

        // Help, then quit: the terminal is restored.
        tmux.keys(&["?"]);
        tmux.wait_for(&["Keys (any key closes)"]);
        tmux.keys(&["Escape"]);
        // Only once the help is gone: ESC and q read together would be one Alt+q.
        tmux.wait_without("Keys (any key closes)");
        tmux.keys(&["q"]);
        let screen = tmux.wait_for(&["top-exit=0"]);
        assert!(!tmux.alternate_on(), "{backend}: alternate screen left");
        assert!(screen.lines().any(|l| l.starts_with("top-prompt$")), "prompt back:\n{screen}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn batch_prints_one_parsable_line_per_interval() {
    if let Some(reason) = super::backends::unavailable() {
        vmxray_events::test_util::skip(&reason);
        return;
    }
    let guest = Guest::start();
    let pid = guest.pid().to_string();
    let base = ["top", "--batch", "--count", "4", "--interval", "0.5s", "--pid", &pid];
    for backend in ["perf", "tracefs"] {
        let out = Command::new(BIN).args(base).args(["--backend", backend]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let mut lines = stdout.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(&header[..4], ["time", "events/s", "exits/s", "L1/s"], "{stdout}");
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows.len(), 4, "{stdout}");
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        for row in &rows {
            assert_eq!(row.len(), header.len(), "{stdout}");
            for v in &row[..column("p99_lat_ns")] {
                assert!(v.parse::<f64>().is_ok(), "{v} in {row:?}");
            }
        }
        // The guest exits to userspace all the time.
        let uexits: Vec<f64> =
            rows.iter().map(|r| r[column("uexits/s")].parse().unwrap()).collect();
        assert!(uexits.iter().filter(|u| **u > 100.0).count() >= 2, "{backend}: {stdout}");
        assert!(stderr.contains("% of a core"), "{stderr}");
    }
    let out = Command::new(BIN).args(base).args(["--backend", "perf", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snaps: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(snaps.len(), 4);
    let busy = snaps
        .iter()
        .filter(|s| s["interval"]["userspace_exits"].as_u64().unwrap_or(0) > 50)
        .count();
    assert!(busy >= 2, "{snaps:#?}");
    assert!(snaps.iter().all(|s| s["events"].is_array() && s["stuck"].is_array()));
}
