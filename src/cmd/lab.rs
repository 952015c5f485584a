//! `vmxray lab`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmxray_capture::record::{Profile, RecordOptions};
use vmxray_samples::lab::{self, Scenario};

use super::record::ProfileArg;

/// Arguments of `vmxray lab`.
#[derive(clap::Args)]
pub struct Args {
    /// cr3-switch, triple-fault, pf-triple-fault, io-loop[=N], multi-vcpu[=N].
    pub scenario: Scenario,
    /// The trace.dat to write (default: SCENARIO.dat).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Event profile.
    #[arg(long, value_enum, default_value_t = ProfileArg::Exits)]
    pub profile: ProfileArg,
}

/// Runs `vmxray lab`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let output = args.output.unwrap_or_else(|| lab::default_output(args.scenario));
    let mut opts = RecordOptions::new(output);
    opts.profile = match args.profile {
        ProfileArg::Exits => Profile::Exits,
        ProfileArg::Mmu => Profile::Mmu,
        ProfileArg::All => Profile::All,
    };
    let run = lab::record(args.scenario, opts)
        .with_context(|| format!("Lab scenario {} failed", args.scenario))?;
    for (vcpu, exits) in run.outcome.exits.iter().enumerate() {
        let last = exits.last().map(|e| format!("{e:?}")).unwrap_or_default();
        eprintln!("vmxray lab: vCPU {vcpu}: {} exits to userspace, last {last}", exits.len());
    }
    for file in &run.report.files {
        eprintln!(
            "vmxray lab: wrote {} ({} events, {} lost, backend {})",
            file.display(),
            run.report.events_read(),
            run.report.lost_events(),
            lab::kvm_backend()
        );
    }
    Ok(ExitCode::SUCCESS)
}
