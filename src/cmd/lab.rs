//! `vmxray lab`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmxray_record::{FlightOptions, Profile, RecordOptions, TriggerSpec};
use vmxray_samples::lab::{self, Scenario};

use super::record::ProfileArg;

/// Arguments of `vmxray lab`.
#[derive(clap::Args)]
pub struct Args {
    /// cr3-switch, triple-fault, pf-triple-fault, io-loop[=N], multi-vcpu[=N], init-sipi.
    pub scenario: Scenario,
    /// The trace.dat to write (default: SCENARIO.dat).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Event profile.
    #[arg(long, value_enum, default_value_t = ProfileArg::Exits)]
    pub profile: ProfileArg,
    /// Record as a flight recorder keeping SIZE per CPU (see `vmxray record`).
    #[arg(long, value_name = "SIZE", value_parser = super::record::parse_size, requires = "trigger")]
    pub flight_recorder: Option<u64>,
    /// Flight-recorder trigger (see `vmxray record`).
    #[arg(long, value_name = "TRIGGER", requires = "flight_recorder")]
    pub trigger: Vec<TriggerSpec>,
    /// Run the guest without recording it (a load for `vmxray record` benchmarks).
    #[arg(long)]
    pub no_record: bool,
}

/// Runs `vmxray lab`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.no_record {
        let mut vm = lab::build(args.scenario)?;
        let started = std::time::Instant::now();
        let outcome = lab::run(args.scenario, &mut vm)?;
        let exits: usize = outcome.exits.iter().map(Vec::len).sum();
        eprintln!(
            "vmxray lab: {exits} exits to userspace in {:.2}s ({:.0}/s), not recorded",
            started.elapsed().as_secs_f64(),
            exits as f64 / started.elapsed().as_secs_f64().max(1e-9)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let output = args.output.unwrap_or_else(|| lab::default_output(args.scenario));
    let mut opts = RecordOptions::new(output);
    opts.profile = match args.profile {
        ProfileArg::Exits => Profile::Exits,
        ProfileArg::Mmu => Profile::Mmu,
        ProfileArg::All => Profile::All,
        ProfileArg::Vmcs => Profile::Vmcs,
    };
    if let Some(size) = args.flight_recorder {
        opts.flight = Some(FlightOptions {
            size,
            triggers: args.trigger,
            post_trigger: std::time::Duration::ZERO,
            max_dumps: 1,
        });
    }
    let run = lab::record(args.scenario, opts)
        .with_context(|| format!("Lab scenario {} failed", args.scenario))?;
    for (vcpu, exits) in run.outcome.exits.iter().enumerate() {
        let last = exits.last().map(|e| format!("{e:?}")).unwrap_or_default();
        eprintln!("vmxray lab: vCPU {vcpu}: {} exits to userspace, last {last}", exits.len());
    }
    if run.report.files.is_empty() {
        eprintln!("vmxray lab: no trigger fired; nothing written");
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
