//! The tracefs mount and our private instance in it.
//!
//! What a careful recorder touches (reference/trace-formats.md §1): nothing global. Everything
//! is set inside `instances/vmxray-<pid>[-n]` — events, filters, clock, buffer size, pid filter,
//! `tracing_on` — and the instance is removed on every exit path ([`Instance`]'s `Drop`). The
//! only global reads are `saved_cmdlines`, `printk_formats` and the event format files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::RecordError;

/// Reads a tracefs file whole. tracefs files report size 0, and some (`events/header_page`,
/// `events/header_event`) return only what the *first* read asked for and then EOF: a
/// 32-byte probe read (what `std::fs::read` starts with on a 0-size file) truncates them.
/// So the first read asks for 64 KiB.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn read_string(path: &Path) -> io::Result<String> {
    read_file(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The standard mount point, used when tracefs is not mounted anywhere.
pub const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";

/// A tracefs mount.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs in `/proc/mounts`; when it is not mounted and we are root, mounts it at
    /// [`DEFAULT_MOUNT`] (and leaves it mounted, as any tracing tool does: other tools may start
    /// using it at once, so unmounting later would be unsafe).
    pub fn find_or_mount() -> Result<Self, RecordError> {
        if let Some(root) = Self::find() {
            return Ok(Self { root });
        }
        if !rustix::process::geteuid().is_root() {
            return Err(RecordError::NoTracefs { reason: "not mounted, and mounting needs root" });
        }
        rustix::mount::mount(
            "nodev",
            DEFAULT_MOUNT,
            "tracefs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .map_err(|e| RecordError::Mount { path: DEFAULT_MOUNT.into(), source: e.into() })?;
        Ok(Self { root: PathBuf::from(DEFAULT_MOUNT) })
    }

    /// The tracefs mount from `/proc/mounts`, if any.
    pub fn find() -> Option<PathBuf> {
        let mounts = fs::read_to_string("/proc/mounts").ok()?;
        mounts.lines().find_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "tracefs").then(|| PathBuf::from(unescape_mount_path(dir)))
        })
    }

    /// A tracefs at a known path (tests).
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads a file of the top level (read-only use).
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, RecordError> {
        let path = self.root.join(rel);
        read_file(&path).map_err(|source| RecordError::Tracefs { path, source })
    }

    /// Removes instances left by recordings that were killed (`vmxray-<pid>[-n]` whose process
    /// is gone). Returns their names.
    ///
    /// Only done from the initial pid namespace: there every process of the machine is visible
    /// in `/proc`, so a missing pid is a dead recorder. From inside a container, a recorder of
    /// another namespace would look dead while it runs, and its instance is left alone.
    pub fn remove_stale_instances(&self) -> Vec<String> {
        let mut removed = Vec::new();
        // PROC_PID_INIT_INO (include/linux/proc_ns.h).
        let initial_ns =
            fs::read_link("/proc/self/ns/pid").is_ok_and(|ns| ns.as_os_str() == "pid:[4026531836]");
        if !initial_ns {
            return removed;
        }
        let Ok(dir) = fs::read_dir(self.root.join("instances")) else { return removed };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("vmxray-") else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let _ = fs::write(entry.path().join("tracing_on"), "0");
            if fs::remove_dir(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }
}

/// `/proc/mounts` escapes spaces and a few other bytes as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Our private tracefs instance; removed (tracing off, events off, `rmdir`) when dropped.
#[derive(Debug)]
pub struct Instance {
    tracefs: Tracefs,
    name: String,
    dir: PathBuf,
    removed: bool,
}

impl Instance {
    /// Creates `instances/vmxray-<pid>` (`-<n>` appended for the second and later instance of
    /// this process), with tracing off.
    pub fn create(tracefs: &Tracefs) -> Result<Self, RecordError> {
        let pid = std::process::id();
        loop {
            let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
            let name = if n == 0 { format!("vmxray-{pid}") } else { format!("vmxray-{pid}-{n}") };
            let dir = tracefs.root.join("instances").join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    let instance = Self { tracefs: tracefs.clone(), name, dir, removed: false };
                    instance.write("tracing_on", "0")?;
                    return Ok(instance);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(RecordError::Instance { path: dir, source }),
            }
        }
    }

    /// The instance's name (`vmxray-<pid>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tracefs it lives in.
    pub fn tracefs(&self) -> &Tracefs {
        &self.tracefs
    }

    /// Writes a control file of the instance.
    pub fn write(&self, rel: &str, value: &str) -> Result<(), RecordError> {
        let path = self.dir.join(rel);
        fs::write(&path, value).map_err(|source| RecordError::Tracefs { path, source })
    }

    /// Reads a file of the instance.
    pub fn read(&self, rel: &str) -> Result<String, RecordError> {
        let path = self.dir.join(rel);
        read_string(&path).map_err(|source| RecordError::Tracefs { path, source })
    }

    /// True when the instance has this event (`events/<sys>/<event>/enable` exists).
    pub fn has_event(&self, system: &str, event: &str) -> bool {
        self.dir.join("events").join(system).join(event).join("enable").exists()
    }

    /// Turns tracing off in the instance (idempotent, errors ignored: used on exit paths).
    pub fn stop_tracing(&self) {
        let _ = fs::write(self.dir.join("tracing_on"), "0");
    }

    /// Disables everything and removes the instance. Readers of its files must be closed.
    pub fn remove(mut self) -> Result<(), RecordError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), RecordError> {
        if self.removed {
            return Ok(());
        }
        self.stop_tracing();
        let _ = fs::write(self.dir.join("events/enable"), "0");
        let _ = fs::write(self.dir.join("set_event_pid"), "");
        // rmdir fails with EBUSY while a file of the instance is open; readers close theirs
        // before we get here, but a reader thread may still be closing: retry briefly.
        let mut last = None;
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => {
                    self.removed = true;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.removed = true;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(RecordError::Instance {
            path: self.dir.clone(),
            source: last.unwrap_or_else(|| io::Error::other("rmdir failed")),
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            eprintln!("vmxray: {e}");
        }
    }
}

/// Per-CPU `stats` of an instance (`per_cpu/cpuN/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// `entries`: events still in the buffer.
    pub entries: u64,
    /// `overrun`: events overwritten (overwrite mode) — lost.
    pub overrun: u64,
    /// `commit overrun`.
    pub commit_overrun: u64,
    /// `dropped events` (non-overwrite mode) — lost.
    pub dropped: u64,
    /// `read events`: events consumed by readers.
    pub read: u64,
    /// The text as the kernel printed it.
    pub text: String,
}

impl CpuStats {
    /// Parses the `stats` text.
    pub fn parse(text: &str) -> Self {
        let mut s = Self { text: text.to_string(), ..Self::default() };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let Ok(v) = value.trim().parse::<u64>() else { continue };
            match key.trim() {
                "entries" => s.entries = v,
                "overrun" => s.overrun = v,
                "commit overrun" => s.commit_overrun = v,
                "dropped events" => s.dropped = v,
                "read events" => s.read = v,
                _ => {}
            }
        }
        s
    }

    /// Events the kernel lost on this CPU.
    pub fn lost(&self) -> u64 {
        self.overrun + self.dropped + self.commit_overrun
    }
}

/// The CPUs tracefs has `per_cpu/cpuN` for (online or not), in order.
pub fn tracefs_cpus(instance: &Instance) -> Vec<u32> {
    let mut cpus: Vec<u32> = fs::read_dir(instance.dir.join("per_cpu"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("cpu")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    cpus.sort_unstable();
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parse() {
        let s = CpuStats::parse(
            "entries: 3\noverrun: 5316\ncommit overrun: 0\nbytes: 10\noldest event ts:     0.000000\nnow ts:   839.434905\ndropped events: 2\nread events: 7\n",
        );
        assert_eq!((s.entries, s.overrun, s.dropped, s.read, s.lost()), (3, 5316, 2, 7, 5318));
    }

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/sys/kernel/tracing"), "/sys/kernel/tracing");
    }
}
