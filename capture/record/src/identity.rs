//! Which VM each vCPU thread belongs to, written into the recording.
//!
//! trace.dat records carry a pid but no tgid, and a host runs many VMs, each with its vCPU 0.
//! So the recorder finds the VMM processes itself and writes one identity line per VMM thread
//! into its own instance's `trace_marker` (format: `vmxray_events::identity`): every file it
//! writes says which process — which VM — each thread belongs to, and the VM's name.
//!
//! A process is a VMM when it holds KVM file descriptors (`/proc/PID/fd/*` →
//! `anon_inode:kvm-vm` or `anon_inode:kvm-vcpu:N`). A thread runs vCPU N when its name says so
//! (QEMU's `CPU N/KVM`, Firecracker's `fc_vcpu N`, Cloud Hypervisor's `vcpuN`, crosvm's
//! `crosvm_vcpuN`); otherwise the vCPU is left to the trace's own `vcpu_id` fields. The VM's
//! name comes from the command line (QEMU's `-name guest=NAME`, Firecracker's `--id NAME`).
//!
//! A scan runs when recording starts and then every [`RESCAN`]: new threads get their line;
//! in flight-recorder mode every line is written again each time, so that the window kept
//! before a trigger always holds them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmxray_events::identity::ThreadIdentity;

/// How often the VMM threads are looked for again.
pub const RESCAN: Duration = Duration::from_millis(500);

/// Every thread of every VMM process visible in `proc` (normally `/proc`). With `only`, just
/// those processes. (One scan; [`Scanner`] remembers what it found between scans.)
pub fn scan(proc: &Path, only: &[u32]) -> Vec<ThreadIdentity> {
    Scanner::default().scan(proc, only)
}

/// How long a process is looked at again at every scan after it was first seen: a VMM opens
/// `/dev/kvm` early, but maybe after its first scan.
pub const YOUNG: Duration = Duration::from_secs(10);
/// How often an older process found without a KVM descriptor is looked at again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Scans that remember the processes that are not VMMs.
///
/// Telling whether a process holds a KVM descriptor reads the link of each of its open files:
/// done for every process at every [`RESCAN`], it was a third of an idle `vmxray top`'s CPU
/// time. A process found without one is looked at again at each scan while it is
/// [`YOUNG`] (its age from `/proc/PID/stat`), then every [`RECHECK`]: a VMM that opens
/// `/dev/kvm` later than that after it started gets its identity lines up to [`RECHECK`]
/// later. VMMs are scanned every time (their new threads); a new process, or a pid used
/// again, is looked at at once.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Processes without a KVM descriptor: pid → (inode of `/proc/PID`, first seen, last
    /// looked at). The inode tells a pid used again by another process (a new directory).
    others: HashMap<i32, (u64, Instant, Instant)>,
}

impl Scanner {
    /// See [`scan`].
    pub fn scan(&mut self, proc: &Path, only: &[u32]) -> Vec<ThreadIdentity> {
        self.scan_at(proc, only, Instant::now())
    }

    fn scan_at(&mut self, proc: &Path, only: &[u32], now: Instant) -> Vec<ThreadIdentity> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(proc) else { return out };
        let mut pids: Vec<(i32, u64)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.ino())))
            .collect();
        pids.sort_unstable();
        // Forget the processes gone.
        let present: HashSet<i32> = pids.iter().map(|(p, _)| *p).collect();
        self.others.retain(|pid, _| present.contains(pid));
        let mut uptime = None;
        for (tgid, ino) in pids {
            if !only.is_empty() && !only.iter().any(|p| i64::from(*p) == i64::from(tgid)) {
                continue;
            }
            let known = self.others.get(&tgid).filter(|(i, ..)| *i == ino);
            let first_seen = match known {
                Some((_, first, _)) => *first,
                None => {
                    let uptime = *uptime.get_or_insert_with(|| read_uptime(proc));
                    uptime
                        .zip(started_after_boot(proc, tgid))
                        .and_then(|(up, start)| now.checked_sub(up.saturating_sub(start)))
                        .unwrap_or(now)
                }
            };
            if known.is_some_and(|(_, first, last)| {
                now.duration_since(*first) >= YOUNG && now.duration_since(*last) < RECHECK
            }) {
                continue;
            }
            let dir = proc.join(tgid.to_string());
            if !holds_kvm(&dir) {
                self.others.insert(tgid, (ino, first_seen, now));
                continue;
            }
            self.others.remove(&tgid);
            threads_of(&dir, tgid, &mut out);
        }
        out
    }
}

/// Time since boot (`PROC/uptime`).
fn read_uptime(proc: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(proc.join("uptime")).ok()?;
    Duration::try_from_secs_f64(text.split_whitespace().next()?.parse().ok()?).ok()
}

/// When process `pid` started, after boot (`PROC/PID/stat`, field 22, in clock ticks).
fn started_after_boot(proc: &Path, pid: i32) -> Option<Duration> {
    let text = std::fs::read_to_string(proc.join(format!("{pid}/stat"))).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let after_name = &text[text.rfind(')')? + 1..];
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let per_second = rustix::param::clock_ticks_per_second();
    (per_second > 0).then(|| Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second))
}

/// The identities of the threads of the VMM process `tgid` (its `/proc` directory `dir`).
fn threads_of(dir: &Path, tgid: i32, out: &mut Vec<ThreadIdentity>) {
    let vm = vm_name(&std::fs::read(dir.join("cmdline")).unwrap_or_default());
    let Ok(tasks) = std::fs::read_dir(dir.join("task")) else { return };
    let mut tids: Vec<i32> =
        tasks.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    for pid in tids {
        let comm = std::fs::read_to_string(dir.join(format!("task/{pid}/comm")))
            .map(|c| c.trim_end().to_owned())
            .ok();
        out.push(ThreadIdentity {
            pid,
            tgid,
            vcpu: comm.as_deref().and_then(vcpu_of_name),
            comm: comm.map(Into::into),
            vm: vm.clone().map(Into::into),
        });
    }
}

fn holds_kvm(process: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(process.join("fd")) else { return false };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            t.starts_with("anon_inode:kvm-vm") || t.starts_with("anon_inode:kvm-vcpu")
        })
    })
}

/// The vCPU a thread's name says it runs: QEMU's `CPU N/KVM`, or a name with `vcpu` followed
/// by the number (`fc_vcpu N`, `vcpuN`, `crosvm_vcpuN`).
pub fn vcpu_of_name(comm: &str) -> Option<u32> {
    let lower = comm.to_ascii_lowercase();
    let number = |s: &str| -> Option<u32> {
        let digits: String =
            s.trim_start_matches([' ', '_']).chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if let Some(rest) = lower.strip_prefix("cpu ")
        && rest.ends_with("/kvm")
    {
        return number(rest);
    }
    number(&lower[lower.find("vcpu")? + 4..])
}

/// The VM's name on a VMM's command line (NUL-separated).
pub fn vm_name(cmdline: &[u8]) -> Option<String> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for (i, arg) in args.iter().enumerate() {
        let value = match arg.as_str() {
            "-name" | "--name" | "--id" => args.get(i + 1)?.clone(),
            other => match other.strip_prefix("--id=").or_else(|| other.strip_prefix("-name=")) {
                Some(v) => v.to_owned(),
                None => continue,
            },
        };
        // QEMU: `-name guest=NAME,debug-threads=on` or `-name NAME`.
        let name = value
            .split(',')
            .find_map(|part| part.strip_prefix("guest="))
            .unwrap_or_else(|| value.split(',').next().unwrap_or(&value));
        if !name.is_empty() {
            return Some(name.to_owned());
        }
    }
    None
}

/// Writes identity lines into an instance's `trace_marker` until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    /// Scans now, writes the lines, and keeps rescanning on a thread. `repeat_all` writes every
    /// line at each scan (flight recorder), else only new threads'.
    pub fn start(marker: PathBuf, only: Vec<u32>, repeat_all: bool) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().append(true).open(&marker)?;
        let mut written: BTreeSet<(i32, i32)> = BTreeSet::new();
        let mut lines = 0u64;
        let mut scanner = Scanner::default();
        let found = scanner.scan(Path::new("/proc"), &only);
        write_new(&mut file, &found, &mut written, false, &mut lines);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle =
            std::thread::Builder::new().name("vmxray-identity".into()).spawn(move || {
                let mut last = Instant::now();
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= RESCAN {
                        last = Instant::now();
                        let found = scanner.scan(Path::new("/proc"), &only);
                        write_new(&mut file, &found, &mut written, repeat_all, &mut lines);
                    }
                }
                lines
            })?;
        Ok(Self { stop, handle: Some(handle) })
    }

    /// Stops rescanning; returns how many lines were written after the first scan.
    pub fn stop(mut self) -> u64 {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn write_new(
    file: &mut std::fs::File,
    found: &[ThreadIdentity],
    written: &mut BTreeSet<(i32, i32)>,
    repeat_all: bool,
    lines: &mut u64,
) {
    for id in found {
        if written.insert((id.pid, id.tgid)) || repeat_all {
            // One write per line: trace_marker turns each write into one event. A failed write
            // (tracing off, a full buffer) loses a line, never the recording.
            if file.write_all(id.to_line().as_bytes()).is_ok() {
                *lines += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_the_vcpu_and_command_lines_the_vm() {
        for (name, vcpu) in [
            ("CPU 3/KVM", Some(3)),
            ("fc_vcpu 1", Some(1)),
            ("vcpu0", Some(0)),
            ("crosvm_vcpu12", Some(12)),
            ("qemu-system-x86", None),
            ("vmxray-cpu0", None),
            ("IO mon_iothread", None),
        ] {
            assert_eq!(vcpu_of_name(name), vcpu, "{name}");
        }
        let qemu = b"qemu-system-x86_64\0-name\0guest=web1,debug-threads=on\0-smp\0two\0";
        assert_eq!(vm_name(qemu).as_deref(), Some("web1"));
        assert_eq!(vm_name(b"qemu-system-x86_64\0-name\0db\0").as_deref(), Some("db"));
        assert_eq!(vm_name(b"firecracker\0--id\0fc-7\0").as_deref(), Some("fc-7"));
        assert_eq!(vm_name(b"python3\0guest.py\0"), None);
    }

    #[test]
    fn a_fake_proc_with_one_vmm_gives_its_threads() {
        let root = std::env::temp_dir().join(format!("vmxray-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let vmm = root.join("4000");
        for (tid, comm) in [(4000, "qemu-system-x86"), (4005, "CPU 0/KVM"), (4006, "CPU 1/KVM")] {
            std::fs::create_dir_all(vmm.join(format!("task/{tid}"))).unwrap();
            std::fs::write(vmm.join(format!("task/{tid}/comm")), format!("{comm}\n")).unwrap();
        }
        std::fs::create_dir_all(vmm.join("fd")).unwrap();
        std::os::unix::fs::symlink("anon_inode:kvm-vcpu:0", vmm.join("fd/12")).unwrap();
        std::fs::write(vmm.join("cmdline"), b"qemu\0-name\0guest=g0\0").unwrap();
        let other = root.join("4100");
        std::fs::create_dir_all(other.join("fd")).unwrap();
        std::fs::create_dir_all(other.join("task/4100")).unwrap();
        let found = scan(&root, &[]);
        let _ = std::fs::remove_dir_all(&root);
        let lines: Vec<String> = found.iter().map(ThreadIdentity::to_line).collect();
        assert_eq!(
            lines,
            [
                r#"vmxray_identity: pid=4000 tgid=4000 comm="qemu-system-x86" vm="g0""#,
                r#"vmxray_identity: pid=4005 tgid=4000 vcpu=0 comm="CPU 0/KVM" vm="g0""#,
                r#"vmxray_identity: pid=4006 tgid=4000 vcpu=1 comm="CPU 1/KVM" vm="g0""#,
            ]
        );
    }

    #[test]
    fn a_process_without_kvm_is_looked_at_again_while_young_then_every_recheck() {
        let root =
            std::env::temp_dir().join(format!("vmxray-identity-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let proc_dir = root.join("4100");
        std::fs::create_dir_all(proc_dir.join("fd")).unwrap();
        std::fs::create_dir_all(proc_dir.join("task/4100")).unwrap();
        std::fs::write(proc_dir.join("task/4100/comm"), "qemu\n").unwrap();
        let t0 = Instant::now();
        let mut scanner = Scanner::default();
        let pids = |found: Vec<ThreadIdentity>| found.iter().map(|i| i.pid).collect::<Vec<_>>();
        assert!(scanner.scan_at(&root, &[], t0).is_empty());
        // Still without at its last young scan, and when old.
        assert!(scanner.scan_at(&root, &[], t0 + YOUNG - RESCAN).is_empty());
        let old = t0 + YOUNG + RESCAN;
        assert!(scanner.scan_at(&root, &[], old).is_empty());
        // It opens KVM: not looked at again until RECHECK passed.
        std::os::unix::fs::symlink("anon_inode:kvm-vm", proc_dir.join("fd/6")).unwrap();
        let seen = |d: Duration, scanner: &mut Scanner| pids(scanner.scan_at(&root, &[], old + d));
        assert!(seen(RESCAN, &mut scanner).is_empty());
        assert_eq!(seen(RECHECK, &mut scanner), [4100]);
        // A VMM is scanned every time.
        assert_eq!(seen(RECHECK + RESCAN, &mut scanner), [4100]);
        // A young process is looked at at every scan.
        let young = root.join("4200");
        std::fs::create_dir_all(young.join("fd")).unwrap();
        std::fs::create_dir_all(young.join("task/4200")).unwrap();
        assert_eq!(seen(RECHECK * 2, &mut scanner), [4100]);
        std::os::unix::fs::symlink("anon_inode:kvm-vcpu:0", young.join("fd/9")).unwrap();
        assert_eq!(seen(RECHECK * 2 + RESCAN, &mut scanner), [4100, 4200]);
        // A one-off scan remembers nothing.
        assert_eq!(pids(scan(&root, &[])), [4100, 4200]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_process_age_comes_from_its_stat_line() {
        let root = std::env::temp_dir().join(format!("vmxray-identity-age-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("4300/fd")).unwrap();
        // A name with a space and a parenthesis; field 22 (start time) is 250 ticks.
        let mut stat = String::from("4300 (a) b) S");
        for field in 4..=21 {
            stat.push_str(&format!(" {field}"));
        }
        stat.push_str(" 250 7 8\n");
        std::fs::write(root.join("4300/stat"), stat).unwrap();
        std::fs::write(root.join("uptime"), "1000.50 1.00\n").unwrap();
        let tick = 1_000_000_000 / rustix::param::clock_ticks_per_second();
        assert_eq!(started_after_boot(&root, 4300), Some(Duration::from_nanos(250 * tick)));
        assert_eq!(read_uptime(&root), Some(Duration::from_millis(1_000_500)));
        // Started long ago: old at its first scan, not looked at again before RECHECK.
        let t0 = Instant::now();
        let mut scanner = Scanner::default();
        assert!(scanner.scan_at(&root, &[], t0).is_empty());
        std::os::unix::fs::symlink("anon_inode:kvm-vm", root.join("4300/fd/3")).unwrap();
        assert!(scanner.scan_at(&root, &[], t0 + RESCAN).is_empty());
        assert_eq!(scanner.scan_at(&root, &[], t0 + RECHECK).len(), 0, "no task dir, no threads");
        assert!(scanner.others.is_empty(), "found a VMM at the recheck");
        let _ = std::fs::remove_dir_all(&root);
    }
}
