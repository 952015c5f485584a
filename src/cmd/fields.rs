//! `vmxray fields [FILE] [--fields EXTRA.txt]`: the history of every VMCS field a trace reveals
//! (derived from tracepoints, see `vmxray_replay::fields`) and of the explicit records of
//! `--fields` files (format: `vmxray_events::vmcs::record`), merged by timestamp.
//!
//! By default each field's first value and every change are printed, in event order; `--all`
//! prints every observation. `--diff A,B` compares two VMCSs (`--diff 12@0x7000,12@0x8000`, as
//! of `--at` or the end) or one VMCS (`--vmcs`) at two events (`--diff 120,450`).
//!
//! # JSON Lines wire format (`--format jsonl`)
//!
//! ```text
//! {"type":"field","event":357,"ts":3836444031000,"vcpu":0,"vmcs":"vmcs12@0x8001000",
//!  "field":"GUEST_CR3","encoding":26626,"value":269447168,"mask":18446744073709551615,
//!  "learned":"derived","source":"kvm_nested_vmenter","previous":26865664,"changed":true}
//! {"type":"diff","field":"GUEST_RIP","encoding":26654,"left":{…observation…}|null,"right":…}
//! {"type":"summary","events":812,"observations":4711,"records":1,"skipped":0}
//! ```
//! `event` is the 0-based index in the merged stream (explicit records count as events, as in
//! `vmxray replay --fields`); `mask` is the set of value bits the source knows (roots reveal
//! only address bits); `learned` is `derived`, `written` or `read`.
//!
//! Exit status: 0, or 2 when an input cannot be read or lines/records were skipped
//! (`--permissive`).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;
use vmxray_analyze::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use vmxray_capture::read::fields_file::{self, FieldsFile};
use vmxray_capture::{ReadError, ReadOptions};
use vmxray_events::Event;
use vmxray_events::vmcs::{FieldEncoding, VmcsField, VmcsRef};
use vmxray_replay::ModelConfig;
use vmxray_replay::fields::{FieldDiff, differ};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One aligned line per observation.
    Text,
    /// JSON Lines (see the module documentation).
    Jsonl,
}

/// Arguments of `vmxray fields`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace (`-` for stdin); optional when `--fields` gives the records.
    #[arg(required_unless_present = "fields")]
    pub file: Option<PathBuf>,
    /// Only this VMCS: 01, 02, 12@GPA, 12@evmcs (also vmcs12@GPA).
    #[arg(long, value_parser = parse_vmcs)]
    pub vmcs: Option<VmcsRef>,
    /// Only this field: a name (GUEST_CR3) or an encoding (0x6802).
    #[arg(long, value_parser = parse_field)]
    pub field: Option<FieldEncoding>,
    /// Explicit field records to merge by timestamp (`<ts_ns> <cpu> <vcpu> <vmcs> <read|write>
    /// <field> <value>` per line). Repeatable.
    #[arg(long = "fields", value_name = "FILE")]
    pub fields: Vec<PathBuf>,
    /// Every observation, not only first values and changes.
    #[arg(long)]
    pub all: bool,
    /// Compare two VMCSs (A,B are VMCS names) or the `--vmcs` at two events (A,B are indices).
    #[arg(long, value_name = "A,B")]
    pub diff: Option<String>,
    /// With a VMCS diff: compare as of this event (default: the end).
    #[arg(long)]
    pub at: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Skip unreadable records and lines (counted, exit status 2) instead of stopping.
    #[arg(long)]
    pub permissive: bool,
}

fn parse_vmcs(s: &str) -> Result<VmcsRef, String> {
    s.parse().map_err(|e: vmxray_events::vmcs::UnknownVmcs| e.to_string())
}

fn parse_field(s: &str) -> Result<FieldEncoding, String> {
    FieldEncoding::parse(s).ok_or_else(|| {
        format!("unknown field {s:?} (a name such as GUEST_CR3 or an encoding such as 0x6802)")
    })
}

/// Reads and parses `--fields` files (records of all files, stably sorted by time).
pub fn load_fields(paths: &[PathBuf], permissive: bool) -> anyhow::Result<FieldsFile> {
    let mut all = FieldsFile::default();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read the field records {}", path.display()))?;
        let file = fields_file::parse_fields(&text, permissive)
            .with_context(|| format!("Cannot parse the field records {}", path.display()))?;
        all.records.extend(file.records);
        all.skipped += file.skipped;
        all.problems.extend(file.problems);
    }
    all.records.sort_by_key(|r| r.ts);
    Ok(all)
}

/// Reports skipped lines of `--fields` files on stderr.
pub fn report_skipped(file: &FieldsFile) {
    if file.skipped == 0 {
        return;
    }
    eprintln!("vmxray: {} field record lines skipped (--permissive):", file.skipped);
    for p in &file.problems {
        eprintln!("  line {}: {}", p.line, p.kind);
    }
}

enum Diff {
    Vmcs(VmcsRef, VmcsRef),
    Times(VmcsRef, u64, u64),
}

fn parse_diff(spec: &str, vmcs: Option<VmcsRef>) -> anyhow::Result<Diff> {
    let Some((a, b)) = spec.split_once(',') else { bail!("--diff expects A,B, got {spec:?}") };
    if let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
        let Some(v) = vmcs else { bail!("--diff between two events needs --vmcs") };
        return Ok(Diff::Times(v, a, b));
    }
    match (a.parse::<VmcsRef>(), b.parse::<VmcsRef>()) {
        (Ok(a), Ok(b)) => Ok(Diff::Vmcs(a, b)),
        _ => bail!(
            "--diff expects two VMCS names (12@0x7000,12@0x8000) or two event indices, got {spec:?}"
        ),
    }
}

/// Runs `vmxray fields`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let diff = args.diff.as_deref().map(|d| parse_diff(d, args.vmcs)).transpose()?;
    let records = load_fields(&args.fields, args.permissive)?;
    report_skipped(&records);
    let nrecords = records.records.len();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut skipped = records.skipped;
    let outcome = match &args.file {
        Some(path) => {
            let mut reader = vmxray_capture::open(
                path,
                ReadOptions { permissive: args.permissive, ..ReadOptions::default() },
            )
            .with_context(|| format!("Cannot open {}", path.display()))?;
            let input = reader.meta().input.to_string();
            let merged = fields_file::merge(reader.by_ref(), records.records);
            let o = show(merged, &args, diff.as_ref(), &mut out)
                .with_context(|| format!("Reading {input}"))?;
            skipped += reader.stats().skipped;
            super::input::write_read_summary(&mut io::stderr(), reader.meta(), reader.stats())?;
            o
        }
        None => {
            let events = records.records.into_iter().map(|r| Ok::<_, ReadError>(r.to_event()));
            show(events, &args, diff.as_ref(), &mut out)?
        }
    };
    match args.format {
        Format::Text => writeln!(
            out,
            "{} events, {} field observations ({} shown), {nrecords} explicit records",
            outcome.events, outcome.observations, outcome.shown
        )?,
        Format::Jsonl => writeln!(
            out,
            "{}",
            json!({"type": "summary", "events": outcome.events, "observations": outcome.observations,
                   "shown": outcome.shown, "records": nrecords, "skipped": skipped})
        )?,
    }
    out.flush()?;
    Ok(if skipped > 0 { ExitCode::from(super::EXIT_ERROR) } else { ExitCode::SUCCESS })
}

struct Outcome {
    events: u64,
    observations: u64,
    shown: u64,
}

type Table = BTreeMap<(VmcsRef, FieldEncoding), VmcsField>;

fn show<I, E, W>(
    events: I,
    args: &Args,
    diff: Option<&Diff>,
    out: &mut W,
) -> anyhow::Result<Outcome>
where
    I: IntoIterator<Item = Result<Event, E>>,
    E: std::error::Error + Send + Sync + 'static,
    W: Write,
{
    if diff.is_none() && args.format == Format::Text {
        writeln!(
            out,
            "{:<9} {:>16} {:<5} {:<22} {:<30} {:<20} {:<8} SOURCE",
            "EVENT", "TS", "VCPU", "VMCS", "FIELD", "VALUE", "HOW"
        )?;
    }
    let mut sink = History {
        args,
        diff,
        out,
        outcome: Outcome { events: 0, observations: 0, shown: 0 },
        last: HashMap::default(),
        table: Table::new(),
        line: String::new(),
        snapshots: Vec::new(),
        wanted: match diff {
            Some(Diff::Times(_, a, b)) => vec![*a, *b],
            Some(Diff::Vmcs(..)) => args.at.into_iter().collect(),
            None => Vec::new(),
        },
        failed: None,
    };
    let mut pass =
        Pass::new(PassConfig { model: ModelConfig::with_field_streams(), stats: StatsMode::Off });
    pass.run(events, &mut sink)?;
    if let Some(e) = sink.failed.take() {
        return Err(e.into());
    }
    let History { table, snapshots, out, outcome: mut o, .. } = sink;
    let end = o.events.saturating_sub(1);
    let snapshot = |at: u64| -> Table {
        snapshots
            .iter()
            .find(|(a, _)| *a == at)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| if at >= end { table.clone() } else { Table::new() })
    };
    let diffs = match diff {
        None => return Ok(o),
        Some(Diff::Vmcs(a, b)) => {
            let t = snapshot(args.at.unwrap_or(end));
            sides(&t, *a, &t, *b)
        }
        Some(Diff::Times(v, from, to)) => {
            if *from > end || *to > end {
                bail!("--diff events must be at most {end}, the last event");
            }
            sides(&snapshot(*from), *v, &snapshot(*to), *v)
        }
    };
    for d in &diffs {
        o.shown += 1;
        write_diff(out, args.format, d)?;
    }
    if diffs.is_empty() && args.format == Format::Text {
        writeln!(out, "no differences")?;
    }
    Ok(o)
}

/// The field history as the pass reveals it: printed as it goes, or kept for `--diff`.
struct History<'a, W> {
    args: &'a Args,
    diff: Option<&'a Diff>,
    out: &'a mut W,
    outcome: Outcome,
    /// Each field's last observation (foldhash: written for every observation).
    last: HashMap<(VmcsRef, FieldEncoding), VmcsField, foldhash::fast::RandomState>,
    table: Table,
    /// The text line being written (reused).
    line: String,
    snapshots: Vec<(u64, Table)>,
    wanted: Vec<u64>,
    failed: Option<io::Error>,
}

impl<W: Write> Sink for History<'_, W> {
    fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
        let step = s.step();
        let at = step.at.0;
        self.outcome.events += 1;
        for obs in step.fields {
            self.outcome.observations += 1;
            let by_vmcs = matches!(self.diff, Some(Diff::Vmcs(..)));
            if self.args.vmcs.is_some_and(|v| v != obs.vmcs) && !by_vmcs {
                continue;
            }
            if self.args.field.is_some_and(|f| f != obs.field) {
                continue;
            }
            let prev = self.last.insert((obs.vmcs, obs.field), obs.clone());
            if self.diff.is_some() {
                self.table.insert((obs.vmcs, obs.field), obs.clone());
                continue;
            }
            let changed = prev.as_ref().is_some_and(|p| differ(p, obs));
            if self.args.all || prev.is_none() || changed {
                self.outcome.shown += 1;
                let previous = prev.as_ref().map(|p| p.value);
                let format = self.args.format;
                if let Err(e) = write_obs(self.out, &mut self.line, format, obs, previous, changed)
                {
                    self.failed = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        if self.wanted.contains(&at) {
            self.snapshots.push((at, self.table.clone()));
        }
        ControlFlow::Continue(())
    }
}

fn sides(lt: &Table, l: VmcsRef, rt: &Table, r: VmcsRef) -> Vec<FieldDiff> {
    let mut fields: Vec<FieldEncoding> = lt
        .keys()
        .filter(|(v, _)| *v == l)
        .chain(rt.keys().filter(|(v, _)| *v == r))
        .map(|(_, f)| *f)
        .collect();
    fields.sort_unstable();
    fields.dedup();
    fields
        .into_iter()
        .filter_map(|field| {
            let left = lt.get(&(l, field)).cloned();
            let right = rt.get(&(r, field)).cloned();
            let same = matches!((&left, &right), (Some(a), Some(b)) if !differ(a, b));
            (!same).then_some(FieldDiff { field, left, right })
        })
        .collect()
}

fn obs_json(o: &VmcsField) -> serde_json::Value {
    json!({
        "event": o.event, "ts": o.ts, "vcpu": o.vcpu, "vmcs": o.vmcs.to_string(),
        "field": o.field.to_string(), "encoding": o.field.0, "value": o.value, "mask": o.mask,
        "learned": o.learned.name(), "source": o.source,
    })
}

/// An observation's value, with its mask when only some bits are known: `0x1000`,
/// `0x0/0xffffffff`.
struct ValueText<'a>(&'a VmcsField);

impl std::fmt::Display for ValueText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = self.0;
        if o.mask == u64::MAX {
            write!(f, "{:#x}", o.value)
        } else {
            write!(f, "{:#x}/{:#x}", o.value, o.mask)
        }
    }
}

/// Appends `value` to `line`, padded with spaces to `width` characters (what `{:<width}`
/// does, for a `Display` that ignores the width).
fn push_padded(line: &mut String, value: impl std::fmt::Display, width: usize) {
    use std::fmt::Write as _;
    let start = line.len();
    let _ = write!(line, "{value}");
    let n = line[start..].chars().count();
    line.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
}

/// Writes one observation. A text line is built in `line` (reused) and written at once: the
/// columns' padding, written through `out`'s formatting adapter, went there one character at
/// a time, and `vmxray fields` prints millions of lines.
fn write_obs<W: Write>(
    out: &mut W,
    line: &mut String,
    format: Format,
    o: &VmcsField,
    previous: Option<u64>,
    changed: bool,
) -> io::Result<()> {
    use std::fmt::Write as _;
    match format {
        Format::Text => {
            line.clear();
            let _ = write!(line, "{:<9} {:>16} ", o.event, o.ts);
            match o.vcpu {
                Some(v) => push_padded(line, v, 5),
                None => push_padded(line, "-", 5),
            }
            line.push(' ');
            push_padded(line, o.vmcs, 22);
            line.push(' ');
            push_padded(line, o.field, 30);
            line.push(' ');
            push_padded(line, ValueText(o), 20);
            let _ = write!(line, " {:<8} {}", o.learned.name(), o.source);
            if let (true, Some(p)) = (changed, previous) {
                let _ = write!(line, " (was {p:#x})");
            }
            line.push('\n');
            out.write_all(line.as_bytes())
        }
        Format::Jsonl => {
            let mut v = obs_json(o);
            v["type"] = json!("field");
            v["previous"] = json!(previous);
            v["changed"] = json!(changed);
            writeln!(out, "{v}")
        }
    }
}

fn write_diff<W: Write>(out: &mut W, format: Format, d: &FieldDiff) -> io::Result<()> {
    match format {
        Format::Text => {
            let side = |o: &Option<VmcsField>| {
                o.as_ref().map_or("(unknown)".to_string(), |o| {
                    format!("{} {} (event {}, {})", o.vmcs, ValueText(o), o.event, o.source)
                })
            };
            writeln!(out, "{:<30} {}  |  {}", d.field.to_string(), side(&d.left), side(&d.right))
        }
        Format::Jsonl => writeln!(
            out,
            "{}",
            json!({"type": "diff", "field": d.field.to_string(), "encoding": d.field.0,
                   "left": d.left.as_ref().map(obs_json), "right": d.right.as_ref().map(obs_json)})
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_row_has_the_header_columns() {
        let field = |vcpu, mask| VmcsField {
            ts: 3_836_442_143_062,
            vcpu,
            vmcs: VmcsRef::Vmcs12 { gpa: 0x800_0000 },
            field: FieldEncoding(0x681e),
            value: 0x40_0000,
            mask,
            learned: vmxray_events::vmcs::Learned::Derived,
            event: 14,
            source: "kvm_nested_vmenter",
        };
        let mut line = String::new();
        let mut out = Vec::new();
        let rows = [
            (field(Some(0), u64::MAX), Some(0x1000), true),
            (field(None, 0xffff_ffff), None, false),
            (field(Some(12345), u64::MAX), Some(0x1000), false),
        ];
        for (o, previous, changed) in &rows {
            write_obs(&mut out, &mut line, Format::Text, o, *previous, *changed).unwrap();
        }
        // The columns of the header (`{:<9} {:>16} {:<5} {:<22} {:<30} {:<20} {:<8}`).
        let want = "\
14           3836442143062 0     vmcs12@0x8000000       GUEST_RIP                      \
0x400000             derived  kvm_nested_vmenter (was 0x1000)
14           3836442143062 -     vmcs12@0x8000000       GUEST_RIP                      \
0x400000/0xffffffff  derived  kvm_nested_vmenter
14           3836442143062 12345 vmcs12@0x8000000       GUEST_RIP                      \
0x400000             derived  kvm_nested_vmenter
";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
