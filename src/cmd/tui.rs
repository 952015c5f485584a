//! `vmxray tui [FILE]`: the terminal browser of anomalies, timelines, model state and
//! statistics. Without FILE it opens the bundled sample (`samples/sim/muen-buggy-6.1.txt`,
//! embedded in the binary).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use vmxray_tui::Source;

/// Arguments of `vmxray tui`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace (any format vmxray reads; `-` for stdin). Without it: the bundled sample with
    /// the most interesting anomalies (a Muen-like L1 on a KVM with the stale GUEST_CR3 bug).
    pub file: Option<PathBuf>,
}

/// Runs `vmxray tui`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = match args.file {
        // Keys then come from /dev/tty (crossterm reads it when stdin is not a terminal).
        Some(path) if path.as_os_str() == "-" => Source::File(path),
        Some(path) => {
            std::fs::metadata(&path).with_context(|| format!("Cannot open {}", path.display()))?;
            Source::File(path)
        }
        None => Source::Bundled,
    };
    if !std::io::stdout().is_terminal() {
        bail!(
            "The browser needs a terminal on stdout (`vmxray replay` and `vmxray dump` print plain text)"
        );
    }
    vmxray_tui::run(source).context("Terminal error")?;
    Ok(ExitCode::SUCCESS)
}
