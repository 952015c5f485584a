//! The pass `vmxray stats FILE` runs (reader → attribution-only model → exit statistics and the
//! host-context analysis → the text report), without the CLI's crates: a release build of this
//! crate alone times and profiles it (`vmxray` links polars, a slow build). Its output is
//! `vmxray stats FILE`'s for a trace read cleanly (without the read summary).
//! `cargo run --release -p vmxray-analyze --example stats_pass -- FILE`.

/// The allocator the `vmxray` binary uses (see `src/main.rs`), so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;

use vmxray_analyze::context::HostContext;
use vmxray_analyze::pass::{Pass, PassConfig, StatsMode};
use vmxray_analyze::stats::{ExitStats, Format, write_report};
use vmxray_capture::{ReadOptions, open};
use vmxray_replay::ModelConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path: PathBuf = std::env::args_os().nth(1).ok_or("usage: stats_pass FILE")?.into();
    let mut reader =
        open(&path, ReadOptions { permissive: false, count_only: ExitStats::COUNT_ONLY })?;
    let mut pass =
        Pass::new(PassConfig { model: ModelConfig::attribution_only(), stats: StatsMode::Report });
    let mut context = HostContext::possible_in(&*reader).then(HostContext::new);
    pass.run_counted(&mut *reader, |r| r.counted_before(), &mut context)?;
    let mut report = pass
        .finish(Some(reader.meta()), Some(reader.stats()))
        .stats
        .ok_or("a statistics pass without statistics")?;
    report.host_context = context.and_then(HostContext::finish);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write_report(&report, Format::Text, &mut out)?;
    out.flush()?;
    Ok(())
}
