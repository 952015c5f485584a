//! Parses a trace text file (or `-` for stdin) and prints throughput; with `--dump`, prints
//! every event instead. Used by `scripts/bench-text.sh`.
//!
//! ```text
//! cargo run --release -p vmxray-capture --example text_parse -- report.txt
//! ```

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::Instant;

use vmxray_capture::{ReadOptions, open};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dump = args.iter().any(|a| a == "--dump");
    let permissive = args.iter().any(|a| a == "--permissive");
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: text_parse FILE|- [--dump] [--permissive]");
        std::process::exit(2);
    };
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    let mut reader = match open(Path::new(path), ReadOptions { permissive }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut events = 0u64;
    for event in reader.by_ref() {
        match event {
            Ok(e) => {
                events += 1;
                if dump {
                    println!("{e:?}");
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = reader.stats();
    eprintln!(
        "{events} events, {bytes} bytes in {secs:.3} s: {:.1} MB/s, {:.2} M events/s \
         (format {:?}, clock {}, cpus {:?}, lost {:?}, skipped {}, unknown {:?})",
        bytes as f64 / secs / 1e6,
        events as f64 / secs / 1e6,
        reader.meta().format,
        reader.meta().clock,
        reader.meta().cpus,
        stats.lost_total(),
        stats.skipped,
        stats.unknown_events,
    );
}
