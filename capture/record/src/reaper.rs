//! Removes the tracefs instance of a recorder that dies without removing it (SIGKILL, a crash).
//!
//! A signal handler cannot run on SIGKILL, so the instance would outlive the recorder with its
//! events enabled and its buffers allocated until the next recording removed it. Instead, the
//! recorder starts a small watcher process (`sh`, in its own process group so that a signal to
//! the recorder's group does not take it along) that polls every 200 ms: once the recorder's
//! process is gone and the instance still exists, it turns tracing off and removes the
//! instance (the kernel closed the dead recorder's files, so `rmdir` succeeds). When the
//! recorder removes the instance itself, it stops the watcher.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The watcher's loop: `$1` the instance directory, `$2` the recorder's pid.
const SCRIPT: &str = r#"while [ -d "$1" ] && kill -0 "$2" 2>/dev/null; do sleep 0.2; done
if [ -d "$1" ]; then
  echo 0 > "$1/tracing_on" 2>/dev/null
  echo 0 > "$1/events/enable" 2>/dev/null
  echo > "$1/set_event_pid" 2>/dev/null
  i=0
  while [ -d "$1" ] && ! rmdir "$1" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
fi"#;

/// The watcher of one instance; stopped when dropped.
#[derive(Debug)]
pub struct Reaper {
    child: Option<Child>,
}

impl Reaper {
    /// Starts watching `instance` for this process. Without `sh` the recording goes on
    /// unwatched (a SIGKILL then leaves the instance to the next recording).
    pub fn spawn(instance: &Path) -> Self {
        let child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("vmxray-reaper")
            .arg(instance)
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        Self { child }
    }

    /// True when a watcher runs.
    pub fn watching(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by its handle (its pid).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
