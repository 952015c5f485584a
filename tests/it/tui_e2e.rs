//! `vmxray tui` in a real terminal (tmux): open the bundled sample, jump to the most severe
//! anomaly, check that the State view shows the divergent GUEST_CR3, resize, quit, and check
//! that the terminal is restored (alternate screen left, the shell prompt back).
//!
//! Prints `SKIP: <reason>` without tmux, and fails instead under `CI=true`
//! (`scripts/setup.sh` installs tmux).

use crate::tmux::{self, Tmux};

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

#[test]
fn browse_the_bundled_sample_in_tmux() {
    if let Some(reason) = tmux::missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tmux is required under CI=true (scripts/setup.sh installs it): {reason}"
        );
        println!("SKIP: {reason}");
        return;
    }
    let tmux = Tmux::new(format!("vmxray-e2e-{}", std::process::id()), "e2e");
    // A plain shell with a recognizable prompt, in a fixed-size window.
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "e2e",
        "-x",
        "150",
        "-y",
        "45",
        "env",
        "PS1=e2e-prompt$ ",
        "TERM=xterm-256color",
        "sh",
    ]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    tmux.wait_for(&["e2e-prompt$"]);
    tmux.keys(&[&format!("{BIN} tui; echo tui-exit=$?"), "Enter"]);

    // The Anomalies view opens on the most severe anomaly.
    tmux.wait_for(&["Anomalies (2)", "critical", "changed_subject_cr3"]);
    assert!(tmux.alternate_on(), "the browser runs on the alternate screen");

    // Enter: its event in the timeline.
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["Events 451/534", "kvm_nested_vmenter"]);

    // The State view: the vmcs12 whose GUEST_CR3 went stale, with the divergent value.
    tmux.keys(&["Tab"]);
    let state = tmux.wait_for(&["After event #450", "vmcs12 known to this vCPU"]);
    let row = state.lines().find(|l| l.contains("▶ 0x8001000")).expect("current vmcs12 row");
    assert!(row.contains("0x100f9000"), "divergent CR3 missing: {row}");
    assert!(state.contains("GUEST_CR3: 0x101f9000 → 0x100f9000"), "{state}");

    // Resize at any time: the screen follows.
    assert!(tmux.run(&["resize-window", "-t", "e2e", "-x", "100", "-y", "30"]).status.success());
    tmux.keys(&["j"]);
    tmux.wait_for(&["After event #451"]);

    // Help, then quit: the terminal is restored.
    tmux.keys(&["?"]);
    tmux.wait_for(&["Keys (any key closes)"]);
    tmux.keys(&["Escape"]);
    // Wait for the help to close: an Escape and a `q` read together are Alt-q to a terminal.
    tmux.wait_without("Keys (any key closes)");
    tmux.keys(&["q"]);
    let screen = tmux.wait_for(&["tui-exit=0"]);
    assert!(!tmux.alternate_on(), "alternate screen left");
    assert!(screen.lines().any(|l| l.starts_with("e2e-prompt$")), "prompt back:\n{screen}");
    assert!(!screen.contains("Anomalies (2)"), "the browser's screen is gone:\n{screen}");
}
