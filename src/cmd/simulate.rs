//! `vmxray simulate`: runs a scripted nested-VMX scenario through the simulator of KVM's
//! behaviour and writes the trace as ftrace `trace` text (and, with `--truth`, the ground truth
//! as JSON).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmxray_samples::sim::{self, KernelVersion, Scenario, SimConfig};

/// Arguments of `vmxray simulate`.
#[derive(clap::Args)]
pub struct Args {
    /// The scenario (see --list).
    #[arg(required_unless_present = "list")]
    pub scenario: Option<String>,
    /// List the scenarios, one per line: name, the bugs it can inject, what it does.
    #[arg(long)]
    pub list: bool,
    /// KVM flavour: `fixed`, `buggy` (the scenario's bug) or `buggy:BUG` (a-m or a bug name).
    #[arg(long, default_value = "fixed")]
    pub kvm: String,
    /// Kernel whose tracepoint layouts to emit: 5.10, 6.1 or 6.14.
    #[arg(long, default_value = "6.1")]
    pub kernel: String,
    /// Seed; the same seed and knobs give the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// vCPUs (scenarios raise it to what they need).
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// L2 subjects per L1.
    #[arg(long, default_value_t = 3)]
    pub subjects: u32,
    /// Rounds of the scenario's main loop.
    #[arg(long, default_value_t = 4)]
    pub iterations: u32,
    /// Output file (`-` for stdout).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// Also write the ground truth (bug sites, vmcs12 field writes) as JSON to this file.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// With the scenario `host`: one VM of the host, `SCENARIO[:KVM][@SEED]` (KVM as for
    /// --kvm; the seed defaults to --seed + its position). Repeatable; the VMs run at once,
    /// each with its own process and vCPU threads, interleaved in one host trace.
    #[arg(long = "vm", value_name = "SCENARIO[:KVM][@SEED]")]
    pub vms: Vec<String>,
    /// With `host`: leave out ftrace's record-tgid column, so that the VMs must be told apart
    /// by their vCPU threads.
    #[arg(long)]
    pub no_tgid: bool,
}

/// Runs `vmxray simulate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list {
        let mut out = io::stdout().lock();
        let rows: Vec<(&str, String, &str)> = Scenario::ALL
            .iter()
            .map(|sc| {
                let bugs: Vec<String> =
                    sc.bugs().iter().map(|b| format!("{}({})", b.name(), b.letter())).collect();
                let bugs = if bugs.is_empty() { "-".to_owned() } else { bugs.join(",") };
                (sc.name(), bugs, sc.description())
            })
            .collect();
        let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(16).max(16);
        let bug_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(24).max(24);
        for (name, bugs, description) in rows {
            writeln!(out, "{name:<name_width$} {bugs:<bug_width$} {description}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.scenario.as_deref().unwrap_or_default();
    if name == "host" {
        return run_host(&args);
    }
    let scenario: Scenario = name.parse()?;
    let flavour = sim::parse_flavour(&args.kvm)?;
    let kernel: KernelVersion = args.kernel.parse()?;
    let config = SimConfig::new(scenario)
        .kvm(SimConfig::resolve(scenario, flavour)?)
        .kernel(kernel)
        .seed(args.seed)
        .vcpus(args.vcpus)
        .subjects(args.subjects)
        .iterations(args.iterations);
    let simulation = sim::simulate(&config)?;
    let text = sim::text::render_trace(&simulation.events, &simulation.text_options());
    if args.output.as_os_str() == "-" {
        io::stdout().lock().write_all(text.as_bytes())?;
    } else {
        std::fs::write(&args.output, text)
            .with_context(|| format!("Cannot write {}", args.output.display()))?;
    }
    if let Some(path) = &args.truth {
        let file =
            File::create(path).with_context(|| format!("Cannot create {}", path.display()))?;
        let mut w = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, &simulation.truth)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmxray simulate host --vm ... --vm ...`.
fn run_host(args: &Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.vms.is_empty(), "The host scenario needs at least one --vm");
    let kernel: KernelVersion = args.kernel.parse()?;
    let mut configs = Vec::new();
    for (i, spec) in args.vms.iter().enumerate() {
        let (spec, seed) = match spec.split_once('@') {
            Some((s, seed)) => (s, seed.parse().with_context(|| format!("Bad seed in {spec}"))?),
            None => (spec.as_str(), args.seed + i as u64),
        };
        let (scenario, kvm) = spec.split_once(':').unwrap_or((spec, "fixed"));
        let scenario: Scenario = scenario.parse()?;
        let flavour = sim::parse_flavour(kvm)?;
        configs.push(
            SimConfig::new(scenario)
                .kvm(SimConfig::resolve(scenario, flavour)?)
                .kernel(kernel)
                .seed(seed)
                .vcpus(args.vcpus)
                .subjects(args.subjects)
                .iterations(args.iterations),
        );
    }
    let host = sim::host::simulate_host(&configs)?;
    let text = sim::text::render_trace(&host.events, &host.text_options(!args.no_tgid));
    if args.output.as_os_str() == "-" {
        io::stdout().lock().write_all(text.as_bytes())?;
    } else {
        std::fs::write(&args.output, text)
            .with_context(|| format!("Cannot write {}", args.output.display()))?;
    }
    if let Some(path) = &args.truth {
        let file =
            File::create(path).with_context(|| format!("Cannot create {}", path.display()))?;
        let mut w = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, &host.truth())?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
