//! `vmxray lab`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmxray_record::{FlightOptions, RecordOptions, TriggerSpec};
use vmxray_samples::lab::{self, Scenario};

use super::record::{BackendArg, FormatArg, ProfileArg};

/// Arguments of `vmxray lab`.
#[derive(clap::Args)]
pub struct Args {
    /// cr3-switch, triple-fault, pf-triple-fault, io-loop[=N], multi-vcpu[=N], mmio, init-sipi;
    /// with nested VMX (kvm_intel nested=1), our own L1 hypervisor: vmx-io, vmx-rr[=N], vmx-noept[=N],
    /// vmx-hlt, vmx-hlt-ept, vmx-invept, vmx-vmfail, vmx-init, vmx-triple-fault, vmx-hwfail,
    /// vmx-late-vmfail, vmx-pae-pdpte, vmx-ept-upper-nox, vmx-lmsw, vmx-dirty (its ground truth goes to OUTPUT.truth.json). With --vmx: one or more, and linux-l1[=N] (an L1
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
    /// Run N copies of the scenario at once, each in its own process: N VMs with the same
    /// vCPU ids, recorded together into one host trace (as a production host runs many VMs).
    /// Inside the real-VMX lab: `--vmx --vmx-step 'NAME=vmxray lab SCENARIO --vms N -o
    /// {out}/trace.dat'`.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with = "vmx")]
    pub vms: u32,
    /// With --no-record: build the VM, print `ready`, and run it once a line comes on stdin
    /// (how --vms starts its VMs together, after the recorder has named their processes).
    #[arg(long, hide = true, requires = "no_record")]
    pub start_on_stdin: bool,
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
    if args.vms > 1 {
        return run_vms(scenario, &args);
    }
    let build = |scenario: Scenario| match scenario {
        Scenario::Vmx(vmx) => lab::l1::find_image(args.l1_image.as_deref())
            .and_then(|image| lab::l1::build(vmx, &image)),
        other => lab::build(other),
    };
    if args.no_record {
        let mut vm = build(scenario)?;
        if args.start_on_stdin {
            use std::io::{BufRead, Write};
            println!("ready");
            std::io::stdout().flush()?;
            std::io::stdin().lock().read_line(&mut String::new())?;
        }
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
    let output = args.output.clone().unwrap_or_else(|| lab::default_output(scenario));
    let opts = record_options(&args, output.clone());
    let run = build(scenario)
        .and_then(|vm| lab::record_vm(scenario, vm, opts))
        .with_context(|| format!("Lab scenario {scenario} failed"))?;
    for (vcpu, exits) in run.outcome.exits.iter().enumerate() {
        let last = exits.last().map(ToString::to_string).unwrap_or_default();
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

/// How `vmxray lab` records into `output`.
fn record_options(args: &Args, output: PathBuf) -> RecordOptions {
    let mut opts = RecordOptions::new(output.clone());
    opts.backend = args.backend.backend();
    opts.output_format = FormatArg::Auto.format(&output);
    opts.profile = args.profile.profile();
    if let Some(size) = args.flight_recorder {
        opts.flight = Some(FlightOptions {
            size,
            triggers: args.trigger.clone(),
            post_trigger: std::time::Duration::ZERO,
            max_dumps: 1,
        });
    }
    opts
}

/// `--vms N`: N processes of `vmxray lab SCENARIO --no-record` at once, recorded together
/// (the recorder follows this thread and the processes it starts, nothing else of the host).
fn run_vms(scenario: Scenario, args: &Args) -> anyhow::Result<ExitCode> {
    if let Scenario::Vmx(_) = scenario {
        anyhow::bail!("--vms runs the plain scenarios (the vmx-* ones write one ground truth)");
    }
    let exe = std::env::current_exe().context("Cannot find this vmxray binary")?;
    // Every VM is built (its process holds its KVM descriptors) before any runs, and runs
    // once `wait` has passed: time for the recorder to write which process each thread is.
    let start_all = |wait: std::time::Duration| -> anyhow::Result<Vec<std::process::Child>> {
        use std::io::{BufRead, Write};
        let mut children = Vec::new();
        for _ in 0..args.vms {
            let mut child = std::process::Command::new(&exe)
                .args(["lab", &scenario.to_string(), "--no-record", "--start-on-stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("Cannot start {}", exe.display()))?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                std::io::BufReader::new(out).read_line(&mut line)?;
            }
            anyhow::ensure!(line.trim() == "ready", "A VM of --vms did not start ({line:?})");
            children.push(child);
        }
        std::thread::sleep(wait);
        for child in &mut children {
            if let Some(mut input) = child.stdin.take() {
                input.write_all(b"go\n")?;
            }
        }
        Ok(children)
    };
    let mut statuses = Vec::new();
    let report = if args.no_record {
        for mut child in start_all(std::time::Duration::ZERO)? {
            statuses.push(child.wait()?);
        }
        None
    } else {
        let output = args.output.clone().unwrap_or_else(|| {
            let one = lab::default_output(scenario);
            PathBuf::from(format!("vms{}-{}", args.vms, one.display()))
        });
        let mut opts = record_options(args, output);
        opts.threads = lab::current_tid().into_iter().collect();
        let mut recorder =
            vmxray_record::Recorder::start(opts).context("Cannot start recording")?;
        let mut children = start_all(2 * vmxray_record::identity::RESCAN)?;
        recorder.wait(None, || {
            children.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)))
        });
        let report = recorder.finish().context("Recording failed")?;
        for mut child in children {
            statuses.push(child.wait()?);
        }
        Some(report)
    };
    for (i, status) in statuses.iter().enumerate() {
        eprintln!("vmxray lab: VM {i} ({scenario}, its own process): {status}");
    }
    if let Some(report) = &report {
        for file in &report.files {
            eprintln!(
                "vmxray lab: wrote {} ({} events of {} VMs, {} lost, backend {}, recorded with {})",
                file.display(),
                report.events_read(),
                args.vms,
                report.lost_events(),
                lab::kvm_backend(),
                report.backend
            );
        }
    }
    Ok(if statuses.iter().all(std::process::ExitStatus::success) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
        eprintln!("vmxray lab: L1 vCPU {} ended: {}", v.vcpu, v.end);
    }
    Ok(if truth.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
