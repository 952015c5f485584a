//! `vmxray simulate`: runs a scripted nested-VMX scenario through the simulator of KVM's
//! behaviour and writes the trace as ftrace `trace` text or as trace.dat v7 (with a real
//! kernel's event formats; `--format dat` or an output named `*.dat`), and, with `--truth`, the
//! ground truth as JSON.
//!
//! `--events N` makes a trace of any size: every loop of the scenario runs until the trace
//! holds N events, the scripts on their own threads and the events streamed to the output
//! (memory does not grow with N; the truth's vmcs12 writes, with `--truth`, are kept in memory).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Instant;

use anyhow::Context;
use vmxray_samples::sim::dat::{DatSink, DatSummary};
use vmxray_samples::sim::stream::{Length, simulate_stream};
use vmxray_samples::sim::{self, GroundTruth, KernelVersion, Scenario, SimConfig};

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
    /// Output format: `text` (ftrace `trace`) or `dat` (trace.dat v7, zstd, with the event
    /// formats of a real 6.1 or 6.14-layout kernel). Default: `dat` for an output named `*.dat`.
    #[arg(long, value_parser = ["text", "dat"])]
    pub format: Option<String>,
    /// Make a trace of exactly N events (fewer only if every vCPU's script ends first): the
    /// scenario's loops run until then, streamed to the output at a few M events/s.
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
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
    let dat = wants_dat(&args)?;
    if let Some(n) = args.events {
        let truth =
            if dat { stream_dat(&args, &config, n)? } else { stream_text(&args, &config, n)? };
        return write_truth(args.truth.as_deref(), &truth);
    }
    let simulation = sim::simulate(&config)?;
    if dat {
        let mut sink = DatSink::create(&args.output, config.kernel, config.vcpu_count())
            .with_context(|| format!("Cannot write {}", args.output.display()))?;
        for e in &simulation.events {
            sink.push(e).with_context(|| format!("Cannot write {}", args.output.display()))?;
        }
        report_zeroed(&sink.finish()?);
    } else {
        let text = sim::text::render_trace(&simulation.events, &simulation.text_options());
        if args.output.as_os_str() == "-" {
            io::stdout().lock().write_all(text.as_bytes())?;
        } else {
            std::fs::write(&args.output, text)
                .with_context(|| format!("Cannot write {}", args.output.display()))?;
        }
    }
    write_truth(args.truth.as_deref(), &simulation.truth)
}

/// Whether to write trace.dat: `--format`, else the output's extension.
fn wants_dat(args: &Args) -> anyhow::Result<bool> {
    let dat = match args.format.as_deref() {
        Some(f) => f == "dat",
        None => args.output.extension().is_some_and(|e| e == "dat"),
    };
    anyhow::ensure!(
        !(dat && args.output.as_os_str() == "-"),
        "trace.dat output needs a file (-o FILE): it is written with seeks"
    );
    Ok(dat)
}

fn write_truth(path: Option<&std::path::Path>, truth: &GroundTruth) -> anyhow::Result<ExitCode> {
    if let Some(path) = path {
        let file =
            File::create(path).with_context(|| format!("Cannot create {}", path.display()))?;
        let mut w = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, truth)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Fields of the formats no event carried: the formats and the simulated layout disagree.
fn report_zeroed(summary: &DatSummary) {
    for (field, n) in &summary.zeroed {
        eprintln!("simulate: {field} is not simulated: written as 0 in {n} events");
    }
}

fn rate_line(what: &str, n: u64, started: Instant, bytes: Option<u64>) {
    let secs = started.elapsed().as_secs_f64();
    let size = bytes.map_or(String::new(), |b| format!(", {:.1} MB", b as f64 / 1e6));
    eprintln!(
        "simulate: {n} events {what} in {secs:.2} s ({:.2} M events/s{size})",
        n as f64 / secs.max(1e-9) / 1e6
    );
}

/// `--events N -o FILE.dat`: streamed into trace.dat.
fn stream_dat(args: &Args, config: &SimConfig, n: u64) -> anyhow::Result<GroundTruth> {
    let started = Instant::now();
    let out = &args.output;
    let mut sink = DatSink::create(out, config.kernel, config.vcpu_count())
        .with_context(|| format!("Cannot write {}", out.display()))?;
    let summary =
        simulate_stream(config, Length::Events(n), args.truth.is_some(), |e| sink.push(e))
            .with_context(|| format!("Cannot write {}", out.display()))?;
    let written = sink.finish().with_context(|| format!("Cannot write {}", out.display()))?;
    report_zeroed(&written);
    short_of(summary.events, n);
    rate_line("written as trace.dat", summary.events, started, Some(written.file_bytes));
    Ok(summary.truth)
}

fn short_of(got: u64, asked: u64) {
    if got < asked {
        eprintln!(
            "simulate: the scenario ended after {got} events (every vCPU's script finished), \
             fewer than the {asked} asked for"
        );
    }
}

/// `--events N` as ftrace text: the header, then one line per event as it comes.
fn stream_text(args: &Args, config: &SimConfig, n: u64) -> anyhow::Result<GroundTruth> {
    let started = Instant::now();
    let opts = sim::text::TextOptions {
        kernel: config.kernel,
        nr_cpus: config.vcpu_count().max(2),
        tgid: false,
    };
    let to_stdout = args.output.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.output)
                .with_context(|| format!("Cannot create {}", args.output.display()))?,
        )
    };
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let header = sim::text::header(usize::try_from(n).unwrap_or(usize::MAX), &opts);
    w.write_all(header.as_bytes())?;
    let summary = simulate_stream(config, Length::Events(n), args.truth.is_some(), |e| {
        w.write_all(sim::text::render_line(e, config.kernel).as_bytes())?;
        w.write_all(b"\n")
    })
    .with_context(|| format!("Cannot write {}", args.output.display()))?;
    w.flush()?;
    drop(w);
    short_of(summary.events, n);
    if summary.events < n && !to_stdout {
        // The header counted N entries: rewrite it with the real count.
        fix_text_header(
            &args.output,
            &header,
            &sim::text::header(usize::try_from(summary.events).unwrap_or(usize::MAX), &opts),
        )?;
    }
    if !to_stdout {
        let bytes = std::fs::metadata(&args.output).map(|m| m.len()).ok();
        rate_line("written as text", summary.events, started, bytes);
    }
    Ok(summary.truth)
}

/// Replaces the first `old.len()` bytes of `path` (the header) by `new`, through a copy.
fn fix_text_header(path: &std::path::Path, old: &str, new: &str) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom};
    let tmp = path.with_extension("header-fix.tmp");
    {
        let mut src = File::open(path)?;
        src.seek(SeekFrom::Start(old.len() as u64))?;
        let mut dst = File::create(&tmp)?;
        dst.write_all(new.as_bytes())?;
        io::copy(&mut src, &mut dst)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
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
    anyhow::ensure!(
        args.events.is_none() && !wants_dat(args)?,
        "The host scenario writes text only (its VMs are told apart by the tgid column, which \
         trace.dat output does not carry) and has no --events"
    );
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
