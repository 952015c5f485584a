//! Prints every event of a trace in `vmxray dump`'s normalized line format (the same
//! `render::Line` and thread attribution), then the read statistics. It is `vmxray dump`
//! without the CLI crates, so `scripts/bench-binary.sh` can time dump output against
//! `trace-cmd report` with a release build of this crate alone:
//! `cargo run --release -p vmxray-capture --example binary_dump -- FILE`.

use std::io::Write;
use std::path::PathBuf;

use vmxray_capture::filter::VcpuByThread;
use vmxray_capture::render::Line;
use vmxray_capture::{ReadOptions, open};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: binary_dump FILE [--permissive]")?);
    let permissive = args.next().is_some_and(|a| a == "--permissive");
    let mut reader = open(&path, ReadOptions { permissive })?;
    let clock = reader.meta().clock.clone();
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out.lock());
    let mut by_thread = VcpuByThread::default();
    let mut failed = None;
    for ev in reader.by_ref() {
        match ev {
            Ok(event) => {
                let vcpu = by_thread.observe(&event);
                writeln!(out, "{}", Line { event: &event, clock: &clock, vcpu })?;
            }
            Err(e) => failed = Some(e),
        }
    }
    out.flush()?;
    eprintln!("stats: {}", serde_json::to_string(reader.stats())?);
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(())
}
