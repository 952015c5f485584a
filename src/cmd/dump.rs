//! `vmxray dump`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `vmxray dump`.
#[derive(clap::Args)]
pub struct Args {
    /// The trace (`-` for stdin).
    pub file: PathBuf,
}

/// Runs `vmxray dump`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("{}: no reader is wired in yet", args.file.display())
}
