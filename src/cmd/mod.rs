//! One module per subcommand; each exposes `Args` (clap) and `run(Args) -> anyhow::Result<ExitCode>`.

use std::io;
use std::process::ExitCode;

pub mod convert;
pub mod docs;
pub mod dump;
pub mod fields;
pub mod input;
pub mod lab;
pub mod lab_vmx;
pub mod plot;
pub mod record;
pub mod replay;
pub mod scan;
pub mod simulate;
pub mod stats;
pub mod top;
pub mod triage;
pub mod triage_qemu;
pub mod tui;

/// Exit status for usage or input errors.
pub const EXIT_ERROR: u8 = 2;

/// Prints an error with its whole cause chain once, and maps it to the exit status. A broken
/// pipe on stdout (`vmxray dump f | head`) is success.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    }) {
        return ExitCode::SUCCESS;
    }
    eprintln!("vmxray: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(EXIT_ERROR)
}
