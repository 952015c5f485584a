//! A private tmux server for the end-to-end tests of the terminal programs (`tui_e2e.rs`,
//! `top_e2e.rs`): one session in a fixed-size window, driven by keys, read back as text.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A tmux server on its own socket with one session, killed on drop.
pub struct Tmux {
    socket: String,
    session: &'static str,
}

impl Tmux {
    /// A server on `socket` whose session (created by the test's `new-session`) is `session`.
    pub fn new(socket: String, session: &'static str) -> Self {
        Self { socket, session }
    }

    /// Runs a tmux command on this server.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("runs tmux")
    }

    /// Sends keys to the session.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// The pane's text.
    pub fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", self.session]).stdout)
            .into_owned()
    }

    /// Whether the program runs on the alternate screen.
    pub fn alternate_on(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", self.session, "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Waits until the pane shows every one of `texts`.
    pub fn wait_for(&self, texts: &[&str]) -> String {
        self.wait_until(|screen| texts.iter().all(|t| screen.contains(t)), &format!("{texts:?}"))
    }

    /// Waits until the pane no longer shows `text`.
    pub fn wait_without(&self, text: &str) -> String {
        self.wait_until(|screen| !screen.contains(text), &format!("{text:?} to go"))
    }

    /// Waits until the pane's text satisfies `done` (what it waits for, for the failure).
    pub fn wait_until(&self, done: impl Fn(&str) -> bool, what: &str) -> String {
        // Generous: a condition, not a speed measurement (a loaded CI machine is slow).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.capture();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Why tmux cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    match Command::new("tmux").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("tmux -V failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => Some(format!("tmux not found ({e})")),
    }
}
