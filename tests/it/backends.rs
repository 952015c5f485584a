//! The two recording backends on the same real guests (issue 18).
//!
//! Each lab guest runs once while three recorders capture it *at the same time*, restricted to
//! the test thread and the threads it starts: tracefs → trace.dat, perf → trace.dat, perf →
//! perf.data. The events of the guest's vCPU threads must be the same in all three, one by one
//! (kind and every field, CPU, thread, order; the two backends stamp the same tracepoint hit
//! separately, so times agree within a bound), and the files must read back the same in the
//! peer tools: `trace-cmd report` prints the same lines for both trace.dat files, and
//! `perf script` prints for the perf.data what `trace-cmd report -N` (kernel print formats, as
//! perf uses) prints for the tracefs trace.dat. Nothing here depends on which KVM runs the
//! guests: whatever events it emits are compared.
//!
//! Then the recorder as a process: SIGINT and SIGKILL leave files that read (SIGKILL: up to the
//! last checkpoint; `--permissive` past it), no tracefs instance, no perf descriptor; `auto`
//! falls back to perf when tracefs is read-only (in a private mount namespace); the flight
//! recorder fires with the perf backend.
//!
//! Tests print `SKIP: <reason>` without /dev/kvm, root or tracefs, and fail instead under
//! `CI=true`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmxray_capture::{ReadOptions, open};
use vmxray_events::{Event, EventKind};
use vmxray_record::{Backend, OutputFormat, Profile, RecordOptions, Recorder};
use vmxray_samples::lab::{self, Scenario};

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

/// The most two backends' stamps of one tracepoint hit may differ (each probe reads the clock
/// itself; interrupts between them are the worst case).
const STAMP_SLACK_NS: u64 = 2_000_000;

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-backends-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Why the recorder cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Some("/dev/kvm cannot be opened".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root =
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return Some("recording needs root".into());
    }
    if vmxray_record::Tracefs::find().is_none() {
        return Some("tracefs is not mounted".into());
    }
    None
}

fn tool(name: &str) -> Option<String> {
    match Command::new(name).arg("--version").output() {
        Ok(_) => None,
        Err(e) => Some(format!("{name} not found ({e})")),
    }
}

/// Perf event descriptors this process holds.
fn perf_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("perf_event"))
        })
        .count()
}

fn options(path: PathBuf, backend: Backend, format: OutputFormat) -> RecordOptions {
    let mut opts = RecordOptions::new(path);
    opts.backend = backend;
    opts.output_format = format;
    opts.profile = Profile::All;
    // Identity lines are the recorder's own writes (and differ by design between backends).
    opts.identity = false;
    opts
}

/// The events of `tids` within `window` (mono clock, ns), per thread in file order.
fn events_of(path: &Path, tids: &[u32], window: (u64, u64)) -> BTreeMap<i32, Vec<Event>> {
    let reader = open(path, ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut out: BTreeMap<i32, Vec<Event>> = BTreeMap::new();
    for e in reader {
        let e = e.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if tids.iter().any(|t| i64::from(*t) == i64::from(e.pid))
            && (window.0..=window.1).contains(&e.ts)
        {
            out.entry(e.pid).or_default().push(e);
        }
    }
    out
}

fn kind_counts(events: &BTreeMap<i32, Vec<Event>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in events.values().flatten() {
        *counts.entry(format!("{}:{}", e.system(), e.name())).or_default() += 1;
    }
    counts
}

/// The two recordings hold the same events for every thread: same kinds and fields, CPU and
/// order, stamps within [`STAMP_SLACK_NS`].
fn assert_same(what: &str, a: &BTreeMap<i32, Vec<Event>>, b: &BTreeMap<i32, Vec<Event>>) {
    assert_eq!(kind_counts(a), kind_counts(b), "{what}: event counts differ");
    for (tid, left) in a {
        let right = &b[tid];
        assert_eq!(left.len(), right.len(), "{what}: thread {tid}");
        for (i, (l, r)) in left.iter().zip(right).enumerate() {
            assert_eq!(l.kind, r.kind, "{what}: thread {tid} event {i}");
            assert_eq!(l.cpu, r.cpu, "{what}: thread {tid} event {i} ({})", l.name());
            assert!(
                l.ts.abs_diff(r.ts) <= STAMP_SLACK_NS,
                "{what}: thread {tid} event {i} ({}) at {} and {}",
                l.name(),
                l.ts,
                r.ts
            );
        }
    }
}

/// `comm-pid [cpu] time: event: body` (trace-cmd report) or `comm tid [cpu] time: sys:event:
/// body` (perf script) → (tid, "cpu event body"), for the lines of `tids` within `window`.
fn report_lines(text: &str, tids: &[u32], window: (u64, u64)) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(open) = line.find(" [") else { continue };
        let head = line[..open].trim_end();
        let tid: Option<u32> = head.rsplit(['-', ' ']).next().and_then(|t| t.parse().ok());
        let Some(tid) = tid.filter(|t| tids.contains(t)) else { continue };
        let rest = &line[open + 2..];
        let Some((cpu, rest)) = rest.split_once(']') else { continue };
        // The time: "  123.456789: " (µs).
        let Some((time, rest)) = rest.split_once(": ") else { continue };
        let Some(ns) = report_time_ns(time.trim()) else { continue };
        if ns + 1_000 < window.0 || ns > window.1 {
            continue;
        }
        let rest = rest.trim_start();
        let Some((event, body)) = rest.split_once(": ") else { continue };
        let event = event.rsplit(':').next().unwrap_or(event);
        let cpu: u32 = cpu.trim().parse().unwrap_or(u32::MAX);
        out.push((tid, format!("{cpu} {event} {}", body.trim())));
    }
    out
}

/// "123.456789" (seconds) → nanoseconds, exactly.
fn report_time_ns(time: &str) -> Option<u64> {
    let (secs, frac) = time.split_once('.').unwrap_or((time, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ns: u64 = format!("{frac:0<9}").parse().ok()?;
    secs.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Equal line lists per thread, or the first difference with its neighbours. Threads are
/// compared one by one: perf and the tracefs ring buffer each take their own timestamp of an
/// event, so two threads' events a few nanoseconds apart may interleave differently; a
/// thread's own events keep their order in both.
fn assert_lines_eq(what: &str, a: &[(u32, String)], b: &[(u32, String)]) {
    let by_thread = |l: &[(u32, String)]| {
        let mut l = l.to_vec();
        l.sort_by_key(|(tid, _)| *tid);
        l
    };
    let (a, b) = (&by_thread(a)[..], &by_thread(b)[..]);
    if let Some(i) = (0..a.len().max(b.len())).find(|i| a.get(*i) != b.get(*i)) {
        let show = |l: &[(u32, String)]| {
            l.iter()
                .skip(i.saturating_sub(2))
                .take(5)
                .map(|(t, s)| format!("  {t} {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{what}: {} and {} lines, first difference at line {i}:\n{}\n---\n{}",
            a.len(),
            b.len(),
            show(a),
            show(b)
        );
    }
}

fn run_tool(program: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(program).args(args).arg(file).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{program} {args:?} {}", file.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn perf_and_tracefs_record_the_same_lab_events() {
    if let Some(reason) = unavailable().or_else(|| tool("trace-cmd")).or_else(|| tool("perf")) {
        vmxray_events::test_util::skip(&reason);
        return;
    }
    let dir = out_dir();
    let fds_before = perf_fds();
    for (scenario, filter) in [
        ("io-loop=300", None),
        ("mmio", None),
        ("triple-fault", None),
        ("multi-vcpu=150", None),
        ("cr3-switch", None),
        // A filter, given to tracefs as an instance filter and to perf as SET_FILTER.
        ("io-loop=20", Some("kvm_pio:val < 5")),
    ] {
        let s: Scenario = scenario.parse().unwrap();
        let name = scenario.replace('=', "-") + if filter.is_some() { "-filtered" } else { "" };
        let paths = [
            dir.join(format!("{name}-tracefs.dat")),
            dir.join(format!("{name}-perf.dat")),
            dir.join(format!("{name}-perf.data")),
        ];
        let mut vm = lab::build(s).unwrap();
        let tid = lab::current_tid().unwrap();
        let mut recorders = Vec::new();
        for (path, backend, format) in [
            (&paths[0], Backend::Tracefs, OutputFormat::TraceDat),
            (&paths[1], Backend::Perf, OutputFormat::TraceDat),
            (&paths[2], Backend::Perf, OutputFormat::PerfData),
        ] {
            let mut opts = options(path.clone(), backend, format);
            opts.threads = vec![tid];
            opts.filters = filter.iter().map(ToString::to_string).collect();
            recorders.push(Recorder::start(opts).unwrap_or_else(|e| panic!("{scenario}: {e}")));
        }
        assert!(perf_fds() > fds_before, "the perf recorders hold descriptors while recording");
        // The guest runs in a window both backends saw whole: quiet margins around it, so that
        // no event of the test thread straddles an edge (the two stamp each hit separately).
        let t0 = vmxray_record::perf::clock_now(1);
        std::thread::sleep(Duration::from_millis(20));
        let outcome = lab::run(s, &mut vm).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let window = (t0, vmxray_record::perf::clock_now(1));
        let reports: Vec<_> = recorders.into_iter().map(|r| r.finish().unwrap()).collect();
        drop(vm);
        assert_eq!(perf_fds(), fds_before, "{scenario}: perf descriptors left open");
        for r in &reports {
            assert!(!r.lost_anything(), "{scenario}: {} lost events", r.backend);
        }
        let tids = &outcome.vcpu_tids;
        let recorded: Vec<BTreeMap<i32, Vec<Event>>> =
            paths.iter().map(|p| events_of(p, tids, window)).collect();

        // Something real was recorded: every vCPU thread's userspace exits, as the guest made
        // them.
        let exits: usize = outcome.exits.iter().map(Vec::len).sum();
        let userspace = recorded[0]
            .values()
            .flatten()
            .filter(|e| matches!(e.kind, EventKind::KvmUserspaceExit { .. }))
            .count();
        assert_eq!(userspace, exits, "{scenario}: userspace exits recorded vs made");
        assert_eq!(recorded[0].len(), tids.len(), "{scenario}: every vCPU thread has events");
        if filter.is_some() {
            let pio = recorded[0]
                .values()
                .flatten()
                .filter(|e| matches!(e.kind, EventKind::KvmPio { .. }))
                .count();
            assert_eq!(pio, 4, "{scenario}: kvm_pio with val 1..4 only");
        }
        assert_same(&format!("{scenario}: perf trace.dat"), &recorded[0], &recorded[1]);
        assert_same(&format!("{scenario}: perf.data"), &recorded[0], &recorded[2]);

        // The peers read them the same way.
        let report = |p: &Path, args: &[&str]| {
            report_lines(&run_tool("trace-cmd", &[&["report"], args].concat(), p), tids, window)
        };
        let tracefs_report = report(&paths[0], &[]);
        assert!(!tracefs_report.is_empty(), "{scenario}: trace-cmd report shows the guest");
        let what = format!("{scenario}: trace-cmd report of the two trace.dat");
        assert_lines_eq(&what, &tracefs_report, &report(&paths[1], &[]));
        let perf_script =
            report_lines(&run_tool("perf", &["script", "-i"], &paths[2]), tids, window);
        let what = format!("{scenario}: perf script vs trace-cmd report -N");
        assert_lines_eq(&what, &report(&paths[0], &["-N"]), &perf_script);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recorder process, its pid, and the instances directory before it started.
fn spawn_recorder(args: &[&str], out: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn instance_of(pid: u32) -> bool {
    let root = vmxray_record::Tracefs::find().unwrap_or_default();
    std::fs::read_dir(root.join("instances"))
        .map(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name == format!("vmxray-{pid}") || name.starts_with(&format!("vmxray-{pid}-"))
            })
        })
        .unwrap_or(false)
}

fn guest(n: u64) -> std::process::Child {
    Command::new(BIN)
        .args(["lab", &format!("io-loop={n}"), "--no-record"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

fn count_events(path: &Path, permissive: bool) -> (usize, bool) {
    let mut args = vec!["dump"];
    if permissive {
        args.push("--permissive");
    }
    let out = Command::new(BIN).args(&args).arg(path).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("kvm:")).count();
    (lines, out.status.code() == Some(0))
}

#[test]
fn sigint_and_sigkill_leave_readable_files_and_nothing_behind() {
    if let Some(reason) = unavailable().or_else(|| tool("perf")) {
        vmxray_events::test_util::skip(&reason);
        return;
    }
    let dir = out_dir().join("signals");
    std::fs::create_dir_all(&dir).unwrap();
    for (backend, file) in [("perf", "sig.data"), ("perf", "sig.dat"), ("tracefs", "sig.dat")] {
        for sig in ["-INT", "-KILL"] {
            let path = dir.join(format!("{backend}{sig}-{file}"));
            let mut load = guest(2_000_000);
            let mut rec = spawn_recorder(&["-q", "--backend", backend], &path);
            // Until a checkpoint (one a second) holds the guest's events, as a strict read sees
            // them (a loaded machine may start the guest late; --permissive would also count the
            // records after the last checkpoint): what a kill must leave readable.
            std::thread::sleep(Duration::from_millis(2500));
            let deadline = Instant::now() + Duration::from_secs(60);
            while count_events(&path, false).0 <= 1000 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
            }
            assert!(rec.try_wait().unwrap().is_none(), "{backend} {sig}: the recorder runs");
            if backend == "tracefs" {
                assert!(instance_of(rec.id()), "the tracefs recorder has its instance");
            }
            signal(rec.id(), sig);
            let status = rec.wait().unwrap();
            let _ = load.kill();
            let _ = load.wait();
            let what = format!("{backend} {sig} {}", path.display());
            if sig == "-INT" {
                assert!(status.success(), "{what}: {status}");
            }
            // No instance left: SIGINT cleans up, SIGKILL is cleaned by the watcher.
            let deadline = Instant::now() + Duration::from_secs(3);
            while instance_of(rec.id()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(!instance_of(rec.id()), "{what}: tracefs instance left behind");
            // The file reads: all of it after SIGINT, up to the last checkpoint after SIGKILL.
            let (events, clean) = count_events(&path, false);
            assert!(clean, "{what}: vmxray dump failed");
            assert!(events > 1000, "{what}: {events} events");
            let (salvaged, _) = count_events(&path, true);
            assert!(salvaged >= events, "{what}: --permissive read {salvaged} < {events}");
            if path.extension().is_some_and(|e| e == "data") && sig == "-INT" {
                let out = Command::new("perf").args(["script", "-i"]).arg(&path).output().unwrap();
                assert!(out.status.success(), "{what}: perf script");
                let lines = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("kvm:kvm_userspace_exit"))
                    .count();
                assert!(lines > 1000, "{what}: perf script shows {lines} userspace exits");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_falls_back_to_perf_when_tracefs_is_read_only() {
    if let Some(reason) = unavailable().or_else(|| tool("unshare")) {
        vmxray_events::test_util::skip(&reason);
        return;
    }
    let root = vmxray_record::Tracefs::find().unwrap();
    let path = out_dir().join("fallback.dat");
    // A private mount namespace whose tracefs mount is read-only: nothing outside changes.
    let script = format!(
        "mount -o remount,bind,ro '{root}' && exec '{BIN}' record -q --backend auto -o '{out}' -- '{BIN}' lab io-loop=200 --no-record",
        root = root.display(),
        out = path.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recording with perf instead"), "{stderr}");
    assert!(stderr.contains("backend perf"), "{stderr}");
    let io = open(&path, ReadOptions::default())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| matches!(e.kind, EventKind::KvmUserspaceExit { .. }))
        .count();
    assert!(io >= 200, "{io} userspace exits");
    // The outer tracefs is still writable (the remount stayed in the namespace).
    let probe = root.join("instances").join(format!("vmxray-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).unwrap();
    std::fs::remove_dir(&probe).unwrap();
}

#[test]
fn flight_recorder_fires_with_the_perf_backend() {
    if let Some(reason) = unavailable() {
        vmxray_events::test_util::skip(&reason);
        return;
    }
    let path = out_dir().join("flight-perf.dat");
    let out = Command::new(BIN)
        .args([
            "lab",
            "triple-fault",
            "--backend",
            "perf",
            "--flight-recorder",
            "1M",
            "--trigger",
            "shutdown",
            "-o",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recorded with perf"), "{stderr}");
    let triage = Command::new(BIN).arg("triage").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&triage.stdout);
    assert!(text.contains("KVM_EXIT_SHUTDOWN"), "{text}");
}
