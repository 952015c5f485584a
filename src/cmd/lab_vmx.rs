//! `vmxray lab --vmx`: lab scenarios on a real VMX KVM (a Debian kernel booted in Bochs).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use vmxray_samples::lab::Scenario;
use vmxray_samples::lab::vmx::{self, ExtraFile, Kernel, Plan, Progress, Step, StepResult};

/// Options of `vmxray lab --vmx`.
#[derive(clap::Args)]
#[command(next_help_heading = "Real VMX (--vmx)")]
pub struct VmxArgs {
    /// Kernel generation(s) of the emulated host: 6.1, 6.12 or all (one boot each).
    #[arg(long, value_delimiter = ',', default_value = "6.1", requires = "vmx")]
    pub kernel: Vec<String>,
    /// kvm_intel ept: on (EPT), off (shadow paging), or both (each scenario twice).
    #[arg(long, value_enum, default_value_t = EptArg::On, requires = "vmx")]
    pub ept: EptArg,
    /// Wall-clock limit for each boot (10m, 900s).
    #[arg(long, value_parser = super::record::parse_duration, default_value = "20m", requires = "vmx")]
    pub timeout: Duration,
    /// Guest-time limit for each step inside the emulated host.
    #[arg(long, value_parser = super::record::parse_duration, default_value = "5m", requires = "vmx")]
    pub step_timeout: Duration,
    /// Keep the work directory (ISO, results disk, serial console, Bochs log, every step's
    /// stdout/stderr/dmesg); it is always kept when something failed.
    #[arg(long, requires = "vmx")]
    pub keep: bool,
    /// Copy a host file into the emulated host's root: HOST:GUEST (GUEST absolute).
    /// Repeatable.
    #[arg(long, value_name = "HOST:GUEST", requires = "vmx")]
    pub extra: Vec<String>,
    /// An argument added to every vmxray command run in the emulated host. Repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true, requires = "vmx")]
    pub guest_arg: Vec<String>,
    /// A custom step, NAME=COMMAND (split at whitespace; `{out}` is the step's directory,
    /// whose trace.dat* files are brought back as NAME-KERNEL.dat*; a perf.data written as
    /// `{out}/trace.dat.data` comes back as NAME-KERNEL.dat.data). Repeatable.
    #[arg(long, value_name = "NAME=COMMAND", requires = "vmx")]
    pub vmx_step: Vec<String>,
    /// The vmxray binary to run inside (default: this one).
    #[arg(long, value_name = "PATH", requires = "vmx")]
    pub vmxray: Option<PathBuf>,
    /// Bochs CPU model (it must have VMX).
    #[arg(long, default_value = vmx::DEFAULT_CPU_MODEL, requires = "vmx")]
    pub cpu_model: String,
}

/// `--ept` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EptArg {
    /// ept=1.
    On,
    /// ept=0: shadow paging.
    Off,
    /// Both, one step each.
    Both,
}

/// What `vmxray lab` options the guest's command gets, beyond the scenario.
pub struct GuestRecording {
    /// `--profile` value.
    pub profile: String,
    /// `--flight-recorder SIZE --trigger T...`, already as arguments.
    pub flight: Vec<String>,
}

/// A scenario of `--vmx`: a lab guest, or an L1 Linux running one as L2.
enum VmxScenario {
    /// A `vmxray lab` scenario, run as it is.
    Lab,
    /// `linux-l1[=N]`: QEMU runs an L1 Linux whose KVM runs `lab io-loop=N` as L2; L0 is
    /// recorded with `vmxray record`.
    L1Linux(u64),
}

fn parse_scenario(s: &str) -> anyhow::Result<VmxScenario> {
    if let Some(rest) = s.strip_prefix("linux-l1") {
        let n = match rest.strip_prefix(['=', ':']) {
            Some(n) => n.parse().with_context(|| format!("bad count in {s:?}"))?,
            None if rest.is_empty() => 50,
            None => bail!("unknown scenario {s:?}"),
        };
        return Ok(VmxScenario::L1Linux(n));
    }
    s.parse::<Scenario>().map(|_| VmxScenario::Lab).map_err(anyhow::Error::msg)
}

/// One step's host-side bookkeeping.
struct Planned {
    step: Step,
    /// `trace.dat` becomes this file name in the output directory.
    output_stem: String,
}

fn plan_steps(
    scenarios: &[String],
    args: &VmxArgs,
    rec: &GuestRecording,
    kernel: Kernel,
) -> anyhow::Result<(Vec<Planned>, bool)> {
    let epts: &[bool] = match args.ept {
        EptArg::On => &[true],
        EptArg::Off => &[false],
        EptArg::Both => &[true, false],
    };
    let mut planned = Vec::new();
    let mut l1_linux = false;
    for text in scenarios {
        let scenario = parse_scenario(text)?;
        for &ept in epts {
            let paging = if ept { "ept" } else { "shadow" };
            let slug = text.replace(['=', ':'], "-");
            let name = format!("{slug}-{paging}");
            let mut argv: Vec<String> = Vec::new();
            let mut timeout = args.step_timeout;
            match scenario {
                VmxScenario::Lab => {
                    argv.extend(
                        ["vmxray", "lab", text, "--profile", &rec.profile].map(String::from),
                    );
                    argv.extend(rec.flight.iter().cloned());
                    argv.extend(args.guest_arg.iter().cloned());
                    argv.extend(["-o", "{out}/trace.dat"].map(String::from));
                }
                VmxScenario::L1Linux(n) => {
                    l1_linux = true;
                    // An L1 boot is ~1000 guest seconds of L0 time under Bochs.
                    timeout = timeout.max(Duration::from_secs(1800));
                    argv.extend(
                        ["vmxray", "record", "-q", "--profile", &rec.profile].map(String::from),
                    );
                    argv.extend(rec.flight.iter().cloned());
                    argv.extend(args.guest_arg.iter().cloned());
                    argv.extend(["-o", "{out}/trace.dat", "--", "/l1/run-l1.sh"].map(String::from));
                    argv.extend(["lab".to_owned(), format!("io-loop={n}"), "--no-record".into()]);
                }
            }
            planned.push(Planned {
                step: Step {
                    name,
                    kvm_intel: vec!["nested=1".into(), format!("ept={}", u8::from(ept))],
                    argv,
                    timeout,
                },
                output_stem: format!("{slug}-{paging}-{kernel}"),
            });
        }
    }
    for custom in &args.vmx_step {
        let (name, command) = custom
            .split_once('=')
            .with_context(|| format!("--vmx-step {custom:?}: NAME=COMMAND"))?;
        let argv: Vec<String> = command.split_whitespace().map(String::from).collect();
        planned.push(Planned {
            step: Step {
                name: name.to_owned(),
                kvm_intel: vec!["nested=1".into()],
                argv,
                timeout: args.step_timeout,
            },
            output_stem: format!("{name}-{kernel}"),
        });
    }
    Ok((planned, l1_linux))
}

fn parse_extra(spec: &str) -> anyhow::Result<ExtraFile> {
    let (host, guest) =
        spec.rsplit_once(':').with_context(|| format!("--extra {spec:?}: HOST:GUEST"))?;
    Ok(ExtraFile { host: PathBuf::from(host), guest: PathBuf::from(guest) })
}

/// Every kernel named by `--kernel` (`all` is every generation), in order, once.
fn kernels(names: &[String]) -> anyhow::Result<Vec<Kernel>> {
    let mut out = Vec::new();
    for name in names {
        let add: Vec<Kernel> = if name == "all" {
            Kernel::ALL.to_vec()
        } else {
            vec![name.parse().map_err(anyhow::Error::msg)?]
        };
        for kernel in add {
            if !out.contains(&kernel) {
                out.push(kernel);
            }
        }
    }
    Ok(out)
}

fn params_line(step: &StepResult) -> String {
    ["nested", "ept", "vpid", "unrestricted_guest", "enable_shadow_vmcs", "pml", "enable_apicv"]
        .iter()
        .filter_map(|p| step.module_param("kvm_intel", p).map(|v| format!("{p}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn top(counts: &std::collections::BTreeMap<String, u64>, n: usize) -> String {
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = sorted.iter().take(n).map(|(k, v)| format!("{k} {v}")).collect();
    if sorted.len() > n {
        parts.push(format!("+{} more", sorted.len() - n));
    }
    parts.join(", ")
}

/// Brings one step's traces out and reports them; `Err` describes what is wrong with it.
fn collect_step(result: &StepResult, stem: &str, out_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let entries = std::fs::read_dir(&result.dir).map_err(|e| e.to_string())?;
    let mut names: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names.iter().filter(|n| n.starts_with("trace.dat")) {
        let target = out_dir.join(format!("{stem}.dat{}", &name["trace.dat".len()..]));
        std::fs::copy(result.dir.join(name), &target)
            .map_err(|e| format!("cannot copy {name} to {}: {e}", target.display()))?;
        written.push(target);
    }
    // `vmxray record -- COMMAND` exits with COMMAND's status when it fails, and says so.
    let command_failed = result.stderr.contains("vmxray record: the command exited with");
    if result.status != Some(0) || command_failed {
        let status = match result.status {
            Some(0) => "its command failed".to_owned(),
            Some(s) => format!("exit {s}"),
            None => "did not finish".to_owned(),
        };
        return Err(format!("{status}; its stderr:\n{}", result.stderr.trim_end()));
    }
    Ok(written)
}

fn report_trace(path: &Path) -> Result<(), String> {
    let summary = vmx::summarize(path).map_err(|e| format!("vmxray cannot read it: {e}"))?;
    eprintln!(
        "      {}: {} events, {} lost, kernel {}",
        path.display(),
        summary.events,
        summary.lost,
        summary.kernel.as_deref().unwrap_or("?")
    );
    if !summary.exit_reasons.is_empty() {
        eprintln!("        kvm_exit: {}", top(&summary.exit_reasons, 8));
    }
    if !summary.nested_exit_reasons.is_empty() {
        eprintln!("        kvm_nested_vmexit: {}", top(&summary.nested_exit_reasons, 8));
    }
    let nested: u64 = summary
        .by_name
        .iter()
        .filter(|(name, _)| name.starts_with("kvm_nested"))
        .map(|(_, n)| n)
        .sum();
    if nested > 0 {
        let names: std::collections::BTreeMap<String, u64> = summary
            .by_name
            .iter()
            .filter(|(name, _)| name.starts_with("kvm_nested"))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        eprintln!("        nested events: {}", top(&names, 8));
    }
    // A step's perf.data (`-o {out}/trace.dat.data`, vmxray's perf backend or perf itself) is
    // read back by vmxray only: trace-cmd reads trace.dat.
    let perf_data = path.extension().is_some_and(|e| e == "data");
    match if perf_data { None } else { vmx::trace_cmd_report(path) } {
        None if perf_data => {
            eprintln!("        perf.data: read back with vmxray's perf.data reader")
        }
        None => eprintln!("        trace-cmd report: not checked (trace-cmd is not installed)"),
        Some(Ok(report)) => eprintln!(
            "        trace-cmd report: {} lines ({} [FAILED TO PARSE])",
            report.lines, report.failed_to_parse
        ),
        Some(Err(e)) => return Err(format!("trace-cmd report failed: {e}")),
    }
    if summary.events == 0 {
        return Err("the trace holds no event".into());
    }
    Ok(())
}

/// Runs `vmxray lab --vmx`.
pub fn run(
    scenarios: &[String],
    output: Option<PathBuf>,
    rec: GuestRecording,
    args: &VmxArgs,
) -> anyhow::Result<ExitCode> {
    let out_dir = output.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("Cannot create {}", out_dir.display()))?;
    let vmxray = match &args.vmxray {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("Cannot find this vmxray binary")?,
    };
    let extra = args.extra.iter().map(|s| parse_extra(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut failures = Vec::new();
    for kernel in kernels(&args.kernel)? {
        let (planned, l1_linux) = plan_steps(scenarios, args, &rec, kernel)?;
        if planned.is_empty() {
            bail!("Nothing to run: name a scenario or a --vmx-step");
        }
        let mut plan = Plan::new(kernel, vmxray.clone(), vmx::new_work_dir(kernel.as_str()));
        plan.steps = planned.iter().map(|p| p.step.clone()).collect();
        plan.extra_files = extra.clone();
        plan.l1_linux = l1_linux;
        plan.timeout = args.timeout;
        plan.cpu_model = args.cpu_model.clone();
        eprintln!(
            "vmxray lab --vmx: kernel {kernel}, {} step(s), work directory {}",
            plan.steps.len(),
            plan.work_dir.display()
        );
        let run = vmx::run(&plan, &mut |progress| match progress {
            Progress::Building => eprintln!("  building the boot image"),
            Progress::Booting => eprintln!("  booting Bochs ({})", plan.cpu_model),
            Progress::Guest(line) => eprintln!("  {line}"),
        })
        .with_context(|| format!("The real-VMX lab run on kernel {kernel} failed"))?;
        eprintln!(
            "vmxray lab --vmx: kernel {} ({kernel}) on Bochs {}, {:.0} s wall",
            run.kernel_release().unwrap_or("?"),
            plan.cpu_model,
            run.wall.as_secs_f64()
        );
        let mut kernel_failed = false;
        for p in &planned {
            let Some(result) = run.steps.iter().find(|r| r.name == p.step.name) else {
                failures.push(format!("{}: never ran", p.step.name));
                kernel_failed = true;
                continue;
            };
            eprintln!(
                "  {} ({}, {:.1} guest s): {}",
                p.step.name,
                result.status.map_or("?".into(), |s| format!("exit {s}")),
                result.guest_seconds.unwrap_or(f64::NAN),
                params_line(result)
            );
            let checked = collect_step(result, &p.output_stem, &out_dir).and_then(|written| {
                if written.is_empty() {
                    return Err("no trace.dat".into());
                }
                written
                    .iter()
                    .filter(|w| w.extension().is_some_and(|e| e == "dat" || e == "data"))
                    .try_for_each(|w| report_trace(w))
            });
            if let Err(e) = checked {
                eprintln!("    FAILED: {e}");
                failures.push(format!("{} on {kernel}: {e}", p.step.name));
                kernel_failed = true;
            }
        }
        if kernel_failed || args.keep {
            eprintln!("  work directory kept: {}", run.work_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&run.work_dir);
        }
    }
    if !failures.is_empty() {
        bail!("{} step(s) failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(ExitCode::SUCCESS)
}
