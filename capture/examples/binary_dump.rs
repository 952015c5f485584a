//! Prints every event of a trace in `vmxray dump`'s normalized line format (the same
//! `render::OrderedWriter` and thread attribution), then the read statistics. It is `vmxray
//! dump` without the CLI crates, so `scripts/bench-binary.sh` can time dump output against
//! `trace-cmd report` with a release build of this crate alone:
//! `cargo run --release -p vmxray-capture --example binary_dump -- FILE [--permissive] [--one-thread]`.

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;

use vmxray_capture::printfmt::PrintCatalog;
use vmxray_capture::render::{Format, OrderedWriter};
use vmxray_capture::{ReadOptions, open};
use vmxray_events::Attribution;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut path = None;
    let (mut permissive, mut parallel) = (false, true);
    for arg in std::env::args_os().skip(1) {
        match arg.to_str() {
            Some("--permissive") => permissive = true,
            Some("--one-thread") => parallel = false,
            _ => path = Some(PathBuf::from(arg)),
        }
    }
    let path = path.ok_or("usage: binary_dump FILE [--permissive] [--one-thread]")?;
    let mut reader = open(&path, ReadOptions { permissive, ..ReadOptions::default() })?;
    let clock = reader.meta().clock.clone();
    let out = std::io::stdout().lock();
    let mut out = OrderedWriter::new(out, clock, Format::Text, parallel);
    if let Some(formats) = reader.event_formats() {
        out = out.with_print(Arc::new(PrintCatalog::new(formats)));
    }
    let mut attribution = Attribution::default();
    let mut failed = None;
    for ev in reader.by_ref() {
        match ev {
            Ok(event) => {
                let vcpu = attribution.attribute(&event).actor.vcpu_id();
                out.push(event, vcpu)?;
            }
            Err(e) => failed = Some(e),
        }
    }
    drop(out.finish()?);
    eprintln!("stats: {}", serde_json::to_string(reader.stats())?);
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(())
}
