//! Prints every event of a binary trace (trace.dat, perf.data, tracefs pages), one per line,
//! then the read statistics: `cargo run -p vmxray-capture --example binary_dump -- FILE`.

use std::io::Write;
use std::path::PathBuf;

use vmxray_capture::{ReadOptions, open};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: binary_dump FILE [--permissive]")?);
    let permissive = args.next().is_some_and(|a| a == "--permissive");
    let mut reader = open(&path, ReadOptions { permissive })?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut failed = None;
    for ev in reader.by_ref() {
        match ev {
            Ok(ev) => writeln!(
                out,
                "{}.{:09} [{:03}] {:>6} {:<16} {}:{} {:?}",
                ev.ts / 1_000_000_000,
                ev.ts % 1_000_000_000,
                ev.cpu,
                ev.pid,
                ev.comm.as_deref().unwrap_or("<...>"),
                ev.system(),
                ev.name(),
                ev.kind
            )?,
            Err(e) => failed = Some(e),
        }
    }
    out.flush()?;
    eprintln!("meta: {:?}", reader.meta());
    eprintln!("stats: {}", serde_json::to_string(reader.stats())?);
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(())
}
