//! `vmxray lab`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmxray_record::{FlightOptions, Profile, RecordOptions, TriggerSpec};
use vmxray_samples::lab::{self, Scenario};

use super::record::{BackendArg, FormatArg, ProfileArg};

/// Arguments of `vmxray lab`.
#[derive(clap::Args)]
pub struct Args {
    /// cr3-switch, triple-fault, pf-triple-fault, io-loop[=N], multi-vcpu[=N], mmio, init-sipi;
    /// with nested VMX (kvm_intel nested=1), our own L1 hypervisor: vmx-io, vmx-rr[=N], vmx-noept[=N],
    /// vmx-hlt, vmx-hlt-ept, vmx-invept, vmx-vmfail, vmx-init, vmx-triple-fault (its ground
    /// truth goes to OUTPUT.truth.json). With --vmx: one or more, and linux-l1[=N] (an L1
    /// Linux under QEMU running io-loop=N as L2).
    #[arg(required_unless_present = "vmx_step")]
    pub scenario: Vec<String>,
    /// The L1 hypervisor image of the vmx-* scenarios (default: $VMXRAY_L1_IMAGE, else
    /// l1.bin or vmx-l1/l1.bin next to this binary or one directory up).
    #[arg(long, value_name = "FILE")]
    pub l1_image: Option<PathBuf>,
    /// The trace.dat to write (default: SCENARIO.dat). With --vmx: the directory for the
    /// traces, named SCENARIO-{ept,shadow}-KERNEL.dat (default: .).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Event profile.
    #[arg(long, value_enum, default_value_t = ProfileArg::Exits)]
    pub profile: ProfileArg,
    /// How to record (see `vmxray record`): the output is perf.data when its name ends in .data.
    #[arg(long, value_enum, default_value_t = BackendArg::Tracefs, conflicts_with = "vmx")]
    pub backend: BackendArg,
    /// Record as a flight recorder keeping SIZE per CPU (see `vmxray record`).
    #[arg(long, value_name = "SIZE", value_parser = super::record::parse_size, requires = "trigger")]
    pub flight_recorder: Option<u64>,
    /// Flight-recorder trigger (see `vmxray record`).
    #[arg(long, value_name = "TRIGGER", requires = "flight_recorder")]
    pub trigger: Vec<TriggerSpec>,
    /// Run the guest without recording it (a load for `vmxray record` benchmarks).
    #[arg(long, conflicts_with = "vmx")]
    pub no_record: bool,
    /// Run the scenario(s) on a real VMX KVM: vmxray records them inside a Debian kernel that
    /// Bochs runs on an emulated VMX CPU (see samples/vmx/README.md).
    #[arg(long)]
    pub vmx: bool,
    #[command(flatten)]
    pub vmx_args: super::lab_vmx::VmxArgs,
}

/// Runs `vmxray lab`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.vmx {
        let rec = super::lab_vmx::GuestRecording {
            profile: clap::ValueEnum::to_possible_value(&args.profile)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default(),
            flight: args
                .flight_recorder
                .map(|size| vec!["--flight-recorder".to_owned(), size.to_string()])
                .into_iter()
                .flatten()
                .chain(args.trigger.iter().flat_map(|t| ["--trigger".to_owned(), t.to_string()]))
                .collect(),
        };
        return super::lab_vmx::run(&args.scenario, args.output, rec, &args.vmx_args);
    }
    let scenario: Scenario = match args.scenario.as_slice() {
        [one] => one.parse().map_err(anyhow::Error::msg)?,
        _ => anyhow::bail!("Name one scenario (several need --vmx)"),
    };
    let build = |scenario: Scenario| match scenario {
        Scenario::Vmx(vmx) => lab::l1::find_image(args.l1_image.as_deref())
            .and_then(|image| lab::l1::build(vmx, &image)),
        other => lab::build(other),
    };
    if args.no_record {
        let mut vm = build(scenario)?;
        let started = std::time::Instant::now();
        let outcome = lab::run(scenario, &mut vm)?;
        let exits: usize = outcome.exits.iter().map(Vec::len).sum();
        eprintln!(
            "vmxray lab: {exits} exits to userspace in {:.2}s ({:.0}/s), not recorded",
            started.elapsed().as_secs_f64(),
            exits as f64 / started.elapsed().as_secs_f64().max(1e-9)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let output = args.output.unwrap_or_else(|| lab::default_output(scenario));
    let mut opts = RecordOptions::new(output.clone());
    opts.backend = args.backend.backend();
    opts.output_format = FormatArg::Auto.format(&output);
    opts.profile = match args.profile {
        ProfileArg::Exits => Profile::Exits,
        ProfileArg::Mmu => Profile::Mmu,
        ProfileArg::All => Profile::All,
        ProfileArg::Vmcs => Profile::Vmcs,
        ProfileArg::Context => Profile::Context,
    };
    if let Some(size) = args.flight_recorder {
        opts.flight = Some(FlightOptions {
            size,
            triggers: args.trigger,
            post_trigger: std::time::Duration::ZERO,
            max_dumps: 1,
        });
    }
    let run = build(scenario)
        .and_then(|vm| lab::record_vm(scenario, vm, opts))
        .with_context(|| format!("Lab scenario {scenario} failed"))?;
    for (vcpu, exits) in run.outcome.exits.iter().enumerate() {
        let last = exits.last().map(|e| format!("{e:?}")).unwrap_or_default();
        eprintln!("vmxray lab: vCPU {vcpu}: {} exits to userspace, last {last}", exits.len());
    }
    if run.report.files.is_empty() {
        eprintln!("vmxray lab: no trigger fired; nothing written");
    }
    for file in &run.report.files {
        eprintln!(
            "vmxray lab: wrote {} ({} events, {} lost, backend {}, recorded with {})",
            file.display(),
            run.report.events_read(),
            run.report.lost_events(),
            lab::kvm_backend(),
            run.report.backend
        );
    }
    match &run.outcome.l1_truth {
        Some(truth) => l1_report(truth, &output),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Writes the L1's ground truth next to the trace and says how the L1 run went: exit status
/// 1 when a check failed or a vCPU did not end as planned.
fn l1_report(truth: &lab::l1::Truth, trace: &std::path::Path) -> anyhow::Result<ExitCode> {
    use lab::l1::Record;
    let path = lab::l1::truth_path(trace);
    // One record per line: small, diffable, still one JSON document.
    let records: Vec<String> =
        truth.records.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    let json = format!(
        "{{\"scenario\":{},\"vcpus\":{},\"records\":[\n{}\n]}}\n",
        serde_json::to_string(&truth.scenario)?,
        serde_json::to_string(&truth.vcpus)?,
        records.join(",\n")
    );
    std::fs::write(&path, json).with_context(|| format!("Cannot write {}", path.display()))?;
    let count = |f: fn(&Record) -> bool| truth.records.iter().filter(|r| f(r)).count();
    eprintln!(
        "vmxray lab: L1 ground truth in {}: {} VM exits, {} logged VMWRITEs, {} checks ({} failed)",
        path.display(),
        count(|r| matches!(r, Record::Exit { .. })),
        count(|r| matches!(r, Record::Vmwrite { .. })),
        count(|r| matches!(r, Record::Check { .. })),
        truth.failed_checks().len()
    );
    for r in &truth.records {
        match r {
            Record::Check { ok: false, what, expected, actual, vcpu, .. } => eprintln!(
                "vmxray lab: L1 vCPU {vcpu}: check failed: {what}: expected {expected:#x}, got {actual:#x}"
            ),
            Record::Fail { vcpu, text } => eprintln!("vmxray lab: L1 vCPU {vcpu} failed: {text}"),
            _ => {}
        }
    }
    for v in &truth.vcpus {
        eprintln!("vmxray lab: L1 vCPU {} ended: {:?}", v.vcpu, v.end);
    }
    Ok(if truth.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
