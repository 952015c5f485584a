//! `vmxray dump`: every event, one normalized line or JSON object each.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use vmxray_capture::filter::{EventFilter, ReasonMatch, TimeRange};
use vmxray_capture::printfmt::{PrintCatalog, PrintTotals};
use vmxray_capture::render::{self, OrderedWriter};
use vmxray_events::Attribution;

use super::input;

/// Output format of `vmxray dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The normalized one-line text (documented in `vmxray_capture::render`).
    Text,
    /// One JSON object per line (documented in `vmxray_capture::render`).
    Jsonl,
}

/// Arguments of `vmxray dump`.
#[derive(clap::Args)]
pub struct Args {
    /// The trace (`-` for stdin): trace.dat, perf.data, tracefs directory, or text.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Keep only these vCPUs (events without a vcpu_id are attributed by their thread).
    #[arg(long, value_delimiter = ',')]
    pub vcpu: Vec<u32>,
    /// Keep only these CPUs.
    #[arg(long, value_delimiter = ',')]
    pub cpu: Vec<u32>,
    /// Keep only this VM's events (a host trace): its VMM process id, its name, or `vmK`
    /// (the K-th VM the trace shows, `vmxray replay` lists them).
    #[arg(long)]
    pub vm: Option<String>,
    /// Keep only these events: `kvm_exit`, `kvm:*`, `kvmmmu:kvm_mmu_*`, ...
    #[arg(long, value_delimiter = ',')]
    pub event: Vec<String>,
    /// Keep only exits with these reasons (name such as EPT_VIOLATION or npf, or number).
    #[arg(long, value_delimiter = ',')]
    pub reason: Vec<ReasonMatch>,
    /// Keep only events in FROM..TO (seconds for ns clocks, e.g. 665.84..666; raw units
    /// otherwise); either end may be left out.
    #[arg(long, value_name = "FROM..TO")]
    pub time: Option<String>,
    /// Skip bad records and lines (counted and reported at the end) instead of stopping.
    #[arg(long)]
    pub permissive: bool,
}

/// Runs `vmxray dump`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut reader = input::open(&args.file, args.permissive)?;
    let clock = reader.meta().clock.clone();
    let time = match &args.time {
        Some(t) => TimeRange::parse(t, clock.is_ns())?,
        None => TimeRange::default(),
    };
    let filter = EventFilter {
        vcpus: args.vcpu,
        cpus: args.cpu,
        events: args.event,
        reasons: args.reason,
        time,
    };
    let format = match args.format {
        Format::Text => render::Format::Text,
        Format::Jsonl => render::Format::Jsonl,
    };
    // Lines are rendered in batches on the thread pool while this thread reads on; untyped
    // events get their print-fmt `text` when the trace carries their format.
    let print = reader.event_formats().map(|f| Arc::new(PrintCatalog::new(f)));
    let mut out = OrderedWriter::new(io::stdout().lock(), clock.clone(), format, true);
    if let Some(catalog) = &print {
        out = out.with_print(Arc::clone(catalog));
    }
    let mut attribution = Attribution::default();
    let mut failure = None;
    for item in reader.by_ref() {
        let event = match item {
            Ok(event) => event,
            Err(err) => {
                failure = Some(err);
                break;
            }
        };
        let actor = attribution.attribute(&event).actor;
        let vcpu = actor.vcpu_id();
        if !filter.keeps(&event, vcpu)
            || args.vm.as_deref().is_some_and(|vm| !attribution.in_vm(actor, event.pid, vm))
        {
            continue;
        }
        out.push(event, vcpu)?;
    }
    drop(out.finish()?);
    input::write_read_summary(&mut io::stderr(), reader.meta(), reader.stats())?;
    if let Some(catalog) = &print {
        write_print_summary(&mut io::stderr(), &catalog.totals())?;
    }
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(input::exit_status(reader.stats(), ExitCode::SUCCESS)),
    }
}

/// Says how many untyped events could not be rendered as `trace-cmd report -N` renders them:
/// print fmts libtraceevent cannot parse either (`[FAILED TO PARSE]`, as trace-cmd prints), and
/// renderings that need data vmxray does not read (kallsyms, printk strings). Nothing when all
/// rendered.
fn write_print_summary(out: &mut impl io::Write, t: &PrintTotals) -> io::Result<()> {
    if t.failed_to_parse > 0 {
        writeln!(
            out,
            "print fmt: {} events as [FAILED TO PARSE] (a print fmt libtraceevent cannot parse \
             either; trace-cmd report -N prints the same)",
            t.failed_to_parse
        )?;
    }
    if t.partial > 0 {
        writeln!(
            out,
            "print fmt: {} events rendered without function symbols or printk strings \
             (trace-cmd may name them)",
            t.partial
        )?;
    }
    Ok(())
}
