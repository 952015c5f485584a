//! The TUI's anomaly pass on a trace file, as the loader runs it behind the UI (index neither
//! used nor saved), with the CPU time of each thread: where the pass's time goes, without
//! the bench's frames and jumps.
//!
//! ```text
//! cargo run --release -p vmxray-tui --example pass_rate -- m10.dat [RUNS]
//! ```
//!
//! Prints, per run, the wall time, the events per second and each thread's CPU time (from
//! `/proc/self/task/*/stat`, in clock ticks of 10 ms).

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmxray_tui::app::App;
use vmxray_tui::loader::{LoadOptions, Source, spawn_with};

/// CPU seconds (user + system) by thread (name/tid), over the process's live threads.
fn thread_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // "tid (comm) state ppid ... utime stime": the comm may hold spaces, so split after ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        let comm = head.split_once('(').map_or("?", |(_, c)| c);
        let name = format!("{comm}/{}", task.file_name().to_string_lossy());
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // After the comm: state is field 0, utime field 11, stime field 12.
        *out.entry(name).or_default() += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: pass_rate TRACE [RUNS]");
        std::process::exit(2);
    };
    let runs: u32 = std::env::args().nth(2).and_then(|r| r.parse().ok()).unwrap_or(1);
    for _ in 0..runs {
        let before = thread_cpu();
        let started = Instant::now();
        let mut app = App::new(spawn_with(Source::File(path.clone()), LoadOptions::READ_ONLY));
        // Threads end with the pass: sample them just before.
        let mut last = before.clone();
        // Polled every 2 ms, so that the end of the pass is seen within 2 ms (at 20 ms, the
        // wait for the next poll was up to 2 % of a 10 M-event pass); the threads' CPU times
        // every 20 ms.
        let mut polls = 0u32;
        while app.loading() {
            app.drain(Duration::from_millis(20));
            if polls.is_multiple_of(10) {
                for (name, t) in thread_cpu() {
                    let e = last.entry(name).or_default();
                    *e = e.max(t);
                }
            }
            polls = polls.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(2));
        }
        let wall = started.elapsed().as_secs_f64();
        let n = app.trace.len();
        let cpu: BTreeMap<String, f64> = last
            .iter()
            .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0.0)))
            .filter(|(_, t)| *t > 0.0)
            .collect();
        let total: f64 = cpu.values().sum();
        println!(
            "{n} events in {wall:.3} s = {:.2} M events/s; CPU {total:.2} s = {:.0} ns/event; {}",
            n as f64 / wall / 1e6,
            total * 1e9 / n.max(1) as f64,
            cpu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
        );
    }
}
