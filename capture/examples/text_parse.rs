//! Parses a trace text file (or `-` for stdin) and prints throughput; with `--dump`, prints
//! every event instead. Used by `scripts/bench-text.sh`.
//!
//! By default the input is opened as `vmxray` opens it ([`vmxray_capture::open`]): blocks of
//! lines are parsed in parallel when the rayon pool has more than one thread. `--one-thread`
//! parses line by line on the main thread instead ([`TextReader::one_thread`]), for the
//! single-threaded figure; `--block=BYTES` sets the block size of the parallel reader
//! ([`TextReader::with_block_size`]).
//!
//! ```text
//! cargo run --release -p vmxray-capture --example text_parse -- report.txt [--one-thread]
//! ```

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::BufReader;
use std::path::Path;
use std::time::Instant;

use vmxray_capture::read::text::TextReader;
use vmxray_capture::{EventReader, ReadError, ReadOptions, open};

/// The buffer `open` gives text inputs.
const TEXT_BUFFER: usize = 256 * 1024;

/// How the text is read: as `open` reads it, line by line, or in blocks of a given size.
#[derive(Clone, Copy)]
enum Mode {
    Open,
    OneThread,
    Blocks(usize),
}

fn reader(path: &str, opts: ReadOptions, mode: Mode) -> Result<Box<dyn EventReader>, String> {
    let name = vmxray_capture::read::input_name(Path::new(path));
    let input: Box<dyn std::io::BufRead + Send> = match mode {
        Mode::Open => return open(Path::new(path), opts).map_err(|e: ReadError| e.to_string()),
        Mode::OneThread | Mode::Blocks(_) if path == "-" => {
            Box::new(BufReader::with_capacity(TEXT_BUFFER, std::io::stdin()))
        }
        Mode::OneThread | Mode::Blocks(_) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
            Box::new(BufReader::with_capacity(TEXT_BUFFER, file))
        }
    };
    Ok(match mode {
        Mode::Blocks(size) => Box::new(TextReader::with_block_size(name, input, opts, size)),
        Mode::Open | Mode::OneThread => Box::new(TextReader::one_thread(name, input, opts)),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dump = args.iter().any(|a| a == "--dump");
    let permissive = args.iter().any(|a| a == "--permissive");
    let one_thread = args.iter().any(|a| a == "--one-thread");
    let block = args.iter().find_map(|a| a.strip_prefix("--block=")?.parse().ok());
    let mode = match (one_thread, block) {
        (true, _) => Mode::OneThread,
        (false, Some(size)) => Mode::Blocks(size),
        (false, None) => Mode::Open,
    };
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!(
            "usage: text_parse FILE|- [--dump] [--permissive] [--one-thread | --block=BYTES]"
        );
        std::process::exit(2);
    };
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    let mut reader = match reader(path, ReadOptions { permissive, ..ReadOptions::default() }, mode)
    {
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
    let threads = if one_thread { 1 } else { rayon::current_num_threads() };
    eprintln!(
        "{events} events, {bytes} bytes in {secs:.3} s: {:.1} MB/s, {:.2} M events/s \
         ({threads} thread(s); format {:?}, clock {}, cpus {:?}, lost {:?}, skipped {}, \
         unknown {:?})",
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
