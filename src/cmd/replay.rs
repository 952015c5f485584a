//! `vmxray replay FILE...`: replays each trace through the nested-VMX/MMU model and prints the
//! anomalies, then a per-trace summary (events, lost and skipped counts, kernel fingerprint, and
//! the rules the trace could not check, with why).
//!
//! Output is streamed: anomalies are printed as the model finds them, so memory does not grow
//! with the trace.
//!
//! Exit status: 0 when no anomaly at or above `--fail-on` (default `warning`), 1 otherwise,
//! 2 when an input cannot be read.
//!
//! # JSON Lines wire format (`--format jsonl`)
//!
//! One JSON object per line, each with a `"type"`:
//!
//! ```text
//! {"type":"anomaly","input":"t.dat","at":1234,"ts":1198880325000,"segment":0,"vcpu":0,"vm":0,
//!  "thread":null,"rule":"changed_subject_cr3","severity":"critical","evidence":[12,40,41],
//!  "message":"…","commit":"04f11ef45810 …"}
//! {"type":"summary","input":"t.dat","events":56789,"lost_events":0,"lost_markers":0,
//!  "skipped":0,"unknown_events":0,"non_trace_lines":0,"truncated":0,"excerpt":false,"segments":0,
//!  "kernel_at_least":"6.1","vcpus":[0,1],
//!  "vms":[{"id":0,"tgid":4242,"name":"guest0","inferred":false,"vcpus":[[0,4250],[1,4251]]}],
//!  "anomalies":{"info":0,"warning":0,"error":0,"critical":1},
//!  "rules":[{"rule":"livelock","status":"checked","checks":812,"anomalies":0},
//!           {"rule":"late_vmfail_l1_cr3","status":"not_checkable","why":"…"}]}
//! ```
//!
//! With `--explain`, a `{"type":"explain","input":…,"vcpus":[…],"rules":[…],"loops":…}` line
//! follows each summary: the facts of [`vmxray_replay::explain::Explanation`].
//!
//! - `at` and `evidence` are 0-based event indices in the input's time order (what `vmxray dump`
//!   numbers); `ts` is the event's timestamp in the trace clock's units (`null` when the input
//!   did not say it: text pasted without its timestamps).
//! - `segment` is the capture the anomaly belongs to when the input holds several (0, then 1,
//!   2, ... after each of the reader's segment markers); the model starts afresh at each.
//! - `excerpt` says whether the input is an excerpt rather than a complete trace
//!   (`vmxray_capture::TraceMeta::excerpt`), `segments` how many captures follow the first,
//!   `non_trace_lines` how many lines of prose the reader skipped, `truncated` how many records
//!   of text were cut short (read with what they show, the rest unknown).
//! - `vcpu` is the vCPU id and `vm` its VM (the index in the summary's `vms`), or both null
//!   when the event could only be attributed to a thread (`thread` is then its pid). A host
//!   trace holds many VMs, each with its vCPU 0.
//! - `vms` lists the VMs: the VMM process (`tgid`) and name when the trace says them,
//!   `inferred` when it carries no tgid and the VMs were told apart by their vCPU threads,
//!   and each vCPU with its thread.
//! - `severity` is one of `info`, `warning`, `error`, `critical`.
//! - One `summary` line follows the anomalies of each input; `anomalies` counts every anomaly of
//!   the enabled rules, including those below `--severity`.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use vmxray_analyze::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use vmxray_capture::{ReadError, ReadOptions, ReadStats, TraceMeta};
use vmxray_events::{Event, EventKind};
use vmxray_replay::explain::{Explainer, Explanation};
use vmxray_replay::{
    Actor, Anomaly, Model, ModelConfig, RuleId, RuleSet, RuleStatus, Severity, TraceSummary,
};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table and a summary per input.
    Text,
    /// JSON Lines (see the module documentation for the wire format).
    Jsonl,
}

/// Arguments of `vmxray replay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The traces (`-` for stdin).
    #[arg(required_unless_present = "list_rules")]
    pub files: Vec<PathBuf>,
    /// List the rules (name, severity, what each checks, the KVM commit it encodes) and exit.
    #[arg(long)]
    pub list_rules: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Only these rules (comma-separated names; default: all).
    #[arg(long, value_delimiter = ',', value_parser = parse_rule)]
    pub rules: Vec<RuleId>,
    /// Lowest severity shown (info, warning, error, critical).
    #[arg(long, default_value = "info", value_parser = parse_severity)]
    pub severity: Severity,
    /// Exit with status 1 when an anomaly at or above this severity is found.
    #[arg(long, default_value = "warning", value_parser = parse_severity)]
    pub fail_on: Severity,
    /// How many identical cycles of events in a row make a stuck vCPU (`livelock`; at least 2).
    #[arg(long, default_value_t = ModelConfig::default().loop_repeats, alias = "livelock-threshold")]
    pub loop_repeats: u32,
    /// Treat every input as an excerpt (a part of a trace, as pasted in a report): a vCPU
    /// whose every event is one loop seen twice is stuck, and a rule that finds only an
    /// absence reports at info. Pasted text the reader recognises as an excerpt is replayed
    /// this way without the flag.
    #[arg(long)]
    pub excerpt: bool,
    /// After the summary, what the model established: per vCPU the levels that ran, the
    /// nested VM-Enters and VM-Exits, each vmcs12 with what the trace showed of it, L1's CR3,
    /// the roots loaded; per rule how many instances it decided (so "no anomaly" reads as
    /// "checked this much").
    #[arg(long)]
    pub explain: bool,
    /// Skip unreadable records (counted and reported) instead of stopping.
    #[arg(long)]
    pub permissive: bool,
    /// Explicit VMCS field records to merge into each trace by timestamp (see `vmxray fields`).
    /// Repeatable.
    #[arg(long = "fields", value_name = "FILE")]
    pub fields: Vec<PathBuf>,
}

fn parse_rule(s: &str) -> Result<RuleId, String> {
    s.parse().map_err(|e: vmxray_replay::UnknownRule| {
        let names: Vec<&str> = RuleId::ALL.iter().map(|r| r.name()).collect();
        format!("{e}; rules: {}", names.join(", "))
    })
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse().map_err(|e: vmxray_replay::UnknownSeverity| e.to_string())
}

/// What to replay with and what to show.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Enabled rules.
    pub rules: RuleSet,
    /// Lowest severity shown.
    pub min_severity: Severity,
    /// Output format.
    pub format: Format,
    /// Identical cycles that make a stuck vCPU.
    pub loop_repeats: u32,
    /// The input is an excerpt.
    pub excerpt: bool,
    /// Print what the model established.
    pub explain: bool,
}

/// The result of one input.
#[derive(Debug)]
pub struct Outcome {
    /// The model's summary.
    pub summary: TraceSummary,
    /// Anomalies printed.
    pub shown: u64,
    /// What the model established (`--explain`).
    pub explanation: Option<Explanation>,
}

/// Runs `vmxray replay`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list_rules {
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        write_rule_list(&mut out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = Options {
        rules: if args.rules.is_empty() {
            RuleSet::all()
        } else {
            args.rules.iter().copied().collect()
        },
        min_severity: args.severity,
        format: args.format,
        loop_repeats: args.loop_repeats.max(2),
        excerpt: args.excerpt,
        explain: args.explain,
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failing = 0;
    let records = super::fields::load_fields(&args.fields, args.permissive)?;
    super::fields::report_skipped(&records);
    for file in &args.files {
        let mut reader = vmxray_capture::open(
            file,
            ReadOptions { permissive: args.permissive, ..ReadOptions::default() },
        )?;
        let input = reader.meta().input.to_string();
        // A pasted excerpt (the reader says so) is replayed as one: its cuts explain absences.
        let file_opts = Options { excerpt: opts.excerpt || reader.meta().excerpt, ..opts };
        let merged =
            vmxray_capture::read::fields_file::merge(reader.by_ref(), records.records.clone());
        let outcome = replay_stream(&input, merged, file_opts, &mut out)
            .with_context(|| format!("Replaying {input}"))?;
        let stats = reader.stats().clone();
        if opts.format == Format::Text {
            writeln!(
                out,
                "  {} anomalies shown (--severity {})",
                outcome.shown, opts.min_severity
            )?;
        }
        let read = Some((reader.meta(), &stats));
        write_summary(&input, &outcome.summary, read, opts, &mut out)?;
        if let Some(explanation) = &outcome.explanation {
            write_explanation(&input, explanation, opts.format, &mut out)?;
        }
        failing += outcome.summary.count_at_least(args.fail_on);
    }
    out.flush()?;
    Ok(if records.skipped > 0 {
        ExitCode::from(super::EXIT_ERROR)
    } else if failing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The stuck vCPUs of a summary, each with its cycle and totals.
fn write_loops<W: Write>(s: &TraceSummary, clock_ns: bool, out: &mut W) -> io::Result<()> {
    if s.loops.is_empty() {
        return Ok(());
    }
    writeln!(out, "  stuck vCPUs ({}):", s.loops.len() as u64 + s.loops_dropped)?;
    for l in &s.loops {
        // An excerpt's events may have no time (Event::TS_UNKNOWN): then no span.
        let known = l.first_ts != Event::TS_UNKNOWN && l.last_ts != Event::TS_UNKNOWN;
        let span = if known { l.last_ts.saturating_sub(l.first_ts) } else { 0 };
        let time = match (clock_ns, span) {
            (_, 0) => String::new(),
            (true, ns) => format!(" over {}", human_ns(ns)),
            (false, ticks) => format!(" over {ticks} clock ticks"),
        };
        writeln!(
            out,
            "    {} {}: {} cycles of {} event(s) from #{} to #{}{time}{}",
            l.vcpu,
            l.kind.describe(),
            l.repeats,
            l.cycle.len(),
            l.first.0,
            l.last.0,
            if l.ongoing { ", still looping at the end of the trace" } else { "" },
        )?;
        for line in &l.cycle {
            writeln!(out, "      {line}")?;
        }
    }
    if s.loops_dropped > 0 {
        writeln!(out, "    ({} more not kept)", s.loops_dropped)?;
    }
    Ok(())
}

/// `1.25 ms`-style durations.
fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", f / 1e6),
        _ => format!("{:.2} s", f / 1e9),
    }
}

/// Prints every rule with its default severity, what it checks and its KVM commit.
pub fn write_rule_list<W: Write>(out: &mut W) -> io::Result<()> {
    for rule in RuleId::ALL {
        writeln!(out, "{:<30} {:<8} {}", rule.name(), rule.default_severity(), rule.checks())?;
        writeln!(out, "{:<39} KVM: {}", "", rule.commit())?;
    }
    Ok(())
}

/// Replays one stream of events, printing the anomalies as they are found.
pub fn replay_stream<I, W>(
    input: &str,
    events: I,
    opts: Options,
    out: &mut W,
) -> anyhow::Result<Outcome>
where
    I: IntoIterator<Item = Result<Event, ReadError>>,
    W: Write,
{
    if opts.format == Format::Text {
        writeln!(out, "{input}")?;
        writeln!(
            out,
            "  {:<9} {:>16} {:<12} {:<8} {:<30} MESSAGE",
            "EVENT", "TS", "VCPU", "SEVERITY", "RULE"
        )?;
    }
    let config = PassConfig {
        model: ModelConfig {
            rules: opts.rules,
            loop_repeats: opts.loop_repeats,
            excerpt: opts.excerpt,
            ..ModelConfig::default()
        },
        stats: StatsMode::Off,
    };
    let mut pass = Pass::new(config);
    let mut printer = Printer {
        input,
        opts,
        out,
        shown: 0,
        segment: 0,
        failed: None,
        last_ts: HashMap::default(),
        run: None,
        explainer: opts.explain.then(Explainer::new),
        explanation: None,
    };
    pass.run(events, &mut printer)?;
    if let Some(e) = printer.failed {
        return Err(e.into());
    }
    let shown = printer.shown;
    let explanation = printer.explanation.take();
    Ok(Outcome { summary: pass.finish(None, None).summary, shown, explanation })
}

/// Prints the anomalies at or above the chosen severity as they are found.
struct Printer<'a, W> {
    input: &'a str,
    opts: Options,
    out: &'a mut W,
    shown: u64,
    /// The segment (capture) of the events stepped now.
    segment: u32,
    failed: Option<io::Error>,
    /// Each actor's last timestamp, for the anomalies of the trace's end (foldhash: it is
    /// written for every run of one actor's events).
    last_ts: HashMap<Actor, u64, foldhash::fast::RandomState>,
    /// The actor of the last events and its last timestamp, written to `last_ts` when another
    /// actor's event comes (a hash per run of events, not per event: SipHash per event was a
    /// tenth of `vmxray replay`'s time).
    run: Option<(Actor, u64)>,
    /// `--explain`: the collector, then what it concluded.
    explainer: Option<Explainer>,
    explanation: Option<Explanation>,
}

impl<W: Write> Printer<'_, W> {
    fn print(
        &mut self,
        anomalies: &[Anomaly],
        ts: impl Fn(&Anomaly) -> Option<u64>,
    ) -> ControlFlow<()> {
        for anomaly in anomalies.iter().filter(|a| a.severity >= self.opts.min_severity) {
            self.shown += 1;
            let at = (ts(anomaly), self.segment);
            if let Err(e) = write_anomaly(self.input, anomaly, at, self.opts.format, self.out) {
                self.failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

impl<W: Write> Sink for Printer<'_, W> {
    fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
        let step = s.step();
        if let EventKind::Segment { index, reason } = s.event.kind {
            self.segment = index;
            // A new capture: no time of the previous one is the time of its vCPUs.
            self.last_ts.clear();
            self.run = None;
            if self.opts.format == Format::Text
                && let Err(e) = writeln!(
                    self.out,
                    "  --- segment {index} ({reason}): another capture starts at event {}; the \
                     model starts afresh",
                    step.at
                )
            {
                self.failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        if let (Some(actor), Some(ts)) = (step.actor, s.event.time()) {
            match &mut self.run {
                Some((a, t)) if *a == actor => *t = ts,
                run => {
                    if let Some((a, t)) = run.replace((actor, ts)) {
                        self.last_ts.insert(a, t);
                    }
                }
            }
        }
        if let Some(explainer) = &mut self.explainer {
            let mode = step.actor.and_then(|a| s.model.state(a)).map(|st| st.mode);
            explainer.observe(s.event, &step, mode);
        }
        let ts = s.event.time();
        self.print(step.anomalies, |_| ts)
    }

    fn end(&mut self, anomalies: &[Anomaly], model: &Model) {
        self.explanation = self.explainer.take().map(|e| e.finish(model));
        let mut last_ts = std::mem::take(&mut self.last_ts);
        if let Some((actor, ts)) = self.run.take() {
            last_ts.insert(actor, ts);
        }
        let _ = self.print(anomalies, |a| last_ts.get(&a.vcpu).copied());
    }
}

fn write_anomaly<W: Write>(
    input: &str,
    a: &Anomaly,
    (ts, segment): (Option<u64>, u32),
    format: Format,
    out: &mut W,
) -> io::Result<()> {
    match format {
        Format::Text => {
            let evidence: Vec<String> = a.evidence.iter().map(|e| e.to_string()).collect();
            let evidence = if evidence.is_empty() {
                String::new()
            } else {
                format!(" [evidence {}]", evidence.join(" "))
            };
            writeln!(
                out,
                "  {:<9} {:>16} {:<12} {:<8} {:<30} {}{}",
                a.at.to_string(),
                ts.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                a.vcpu.to_string(),
                a.severity.name(),
                a.rule.name(),
                a.message,
                evidence
            )
        }
        Format::Jsonl => {
            let (vcpu, vm, thread) = match a.vcpu {
                Actor::Vcpu(v) => (Some(v.id), Some(v.vm.0), None),
                Actor::Thread(t) => (None, None, Some(t)),
            };
            let line = json!({
                "type": "anomaly",
                "input": input,
                "at": a.at.0,
                "ts": ts,
                "segment": segment,
                "vcpu": vcpu,
                "vm": vm,
                "thread": thread,
                "rule": a.rule.name(),
                "severity": a.severity.name(),
                "evidence": a.evidence.iter().map(|e| e.0).collect::<Vec<_>>(),
                "message": a.message,
                "commit": a.rule.commit(),
            });
            writeln!(out, "{line}")
        }
    }
}

/// Prints what the model established (`--explain`): text after the summary, or one
/// `{"type":"explain","input":…}` line with the same facts.
fn write_explanation<W: Write>(
    input: &str,
    e: &Explanation,
    format: Format,
    out: &mut W,
) -> io::Result<()> {
    match format {
        Format::Text => writeln!(out, "{e}"),
        Format::Jsonl => {
            let mut line = json!({ "type": "explain", "input": input });
            if let (Some(obj), Ok(serde_json::Value::Object(facts))) =
                (line.as_object_mut(), serde_json::to_value(e))
            {
                obj.extend(facts);
            }
            writeln!(out, "{line}")
        }
    }
}

/// Prints the per-input summary.
pub fn write_summary<W: Write>(
    input: &str,
    s: &TraceSummary,
    read: Option<(&TraceMeta, &ReadStats)>,
    opts: Options,
    out: &mut W,
) -> io::Result<()> {
    let stats = read.map(|(_, st)| st);
    let excerpt = read.is_some_and(|(meta, _)| meta.excerpt);
    let clock_ns = read.is_none_or(|(meta, _)| meta.clock.is_ns());
    let segments = stats.map_or(0, |st| st.segments);
    let non_trace = stats.map_or(0, |st| st.non_trace_lines);
    let truncated = stats.map_or(0, |st| st.truncated);
    let (lost_read, uncounted) = stats.map_or((0, false), ReadStats::lost_total);
    let lost_events = lost_read.max(s.lost_events);
    let skipped = stats.map_or(0, |st| st.skipped);
    let unknown: u64 = stats.map_or(0, |st| st.unknown_events.values().sum());
    match opts.format {
        Format::Jsonl => {
            let rules: Vec<_> = s
                .rules
                .iter()
                .map(|r| match r.status {
                    RuleStatus::Checked { checks, anomalies } => json!({
                        "rule": r.rule.name(), "status": "checked",
                        "checks": checks, "anomalies": anomalies,
                    }),
                    RuleStatus::NotCheckable { why } => json!({
                        "rule": r.rule.name(), "status": "not_checkable", "why": why,
                    }),
                })
                .collect();
            let line = json!({
                "type": "summary",
                "input": input,
                "events": s.events,
                "lost_events": lost_events,
                "lost_uncounted": uncounted,
                "lost_markers": s.lost_markers,
                "skipped": skipped,
                "unknown_events": unknown,
                "non_trace_lines": non_trace,
                "truncated": truncated,
                "excerpt": excerpt,
                "segments": segments,
                "kernel_at_least": s.features.kernel_at_least(),
                "vcpus": s.vcpus,
                "vms": s.vms,
                "loops": s.loops,
                "loops_dropped": s.loops_dropped,
                "anomalies": {
                    "info": s.by_severity[0], "warning": s.by_severity[1],
                    "error": s.by_severity[2], "critical": s.by_severity[3],
                },
                "rules": rules,
            });
            writeln!(out, "{line}")
        }
        Format::Text => {
            let total: u64 = s.by_severity.iter().sum();
            writeln!(
                out,
                "  {} events, {} vCPU(s); {total} anomalies ({} critical, {} error, {} warning, {} info)",
                s.events,
                s.vcpus.len(),
                s.by_severity[3],
                s.by_severity[2],
                s.by_severity[1],
                s.by_severity[0],
            )?;
            writeln!(out, "  {}", trace_kind(excerpt, segments, non_trace, truncated))?;
            if s.vms.len() > 1 {
                let how = if s.vms.iter().any(|vm| vm.inferred) {
                    " (no tgid in the trace: told apart by their vCPU threads; which vCPUs share a VM is inferred)"
                } else {
                    ""
                };
                writeln!(out, "  {} VMs{how}:", s.vms.len())?;
                for vm in &s.vms {
                    let vcpus: Vec<String> =
                        vm.vcpus.iter().map(|(id, pid)| format!("{id} (thread {pid})")).collect();
                    writeln!(out, "    vm{} {}: vCPUs {}", vm.id.0, vm.label(), vcpus.join(", "))?;
                }
            }
            write_loops(s, clock_ns, out)?;
            writeln!(
                out,
                "  lost: {lost_events} events in {} markers{}; skipped: {skipped}; unknown events: {unknown}; kernel >= {}",
                s.lost_markers,
                if uncounted { " (some uncounted)" } else { "" },
                s.features.kernel_at_least(),
            )?;
            let not_checkable: Vec<_> = s
                .rules
                .iter()
                .filter_map(|r| match r.status {
                    RuleStatus::NotCheckable { why } => Some((r.rule, why)),
                    RuleStatus::Checked { .. } => None,
                })
                .collect();
            if !not_checkable.is_empty() {
                writeln!(out, "  not checkable on this trace ({}):", not_checkable.len())?;
                for (rule, why) in not_checkable {
                    writeln!(out, "    {:<30} needs {why}", rule.name())?;
                }
            }
            writeln!(out)
        }
    }
}

/// `complete trace`, or `excerpt` with what makes it one (for the text summaries), and the
/// records of text that were cut short.
pub fn trace_kind(excerpt: bool, segments: u32, non_trace_lines: u64, truncated: u64) -> String {
    let cut =
        (truncated > 0).then(|| format!("{truncated} records incomplete, read as far as they go"));
    if !excerpt {
        return match cut {
            Some(cut) => format!("complete trace; {cut}"),
            None => "complete trace".to_owned(),
        };
    }
    let mut what = Vec::new();
    what.extend(cut);
    if segments > 0 {
        what.push(format!("{} captures", segments + 1));
    }
    if non_trace_lines > 0 {
        what.push(format!("{non_trace_lines} non-trace lines skipped"));
    }
    if what.is_empty() {
        "excerpt (gaps in it are the poster's cuts)".to_owned()
    } else {
        format!("excerpt ({}; gaps in it are the poster's cuts)", what.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use vmxray_events::Entry;

    use super::*;

    fn entry(ts: u64) -> Result<Event, ReadError> {
        Ok(Event {
            ts,
            cpu: 0,
            pid: 7,
            tgid: None,
            comm: None,
            kind: EventKind::KvmEntry(Entry {
                vcpu_id: 3,
                rip: Some(0x1000),
                immediate_exit: None,
                intr_info: None,
                error_code: None,
            }),
        })
    }

    fn exit(ts: u64) -> Result<Event, ReadError> {
        Ok(Event {
            ts,
            cpu: 0,
            pid: 7,
            tgid: None,
            comm: None,
            kind: EventKind::KvmExit(vmxray_events::ExitInfo::from(vmxray_events::ExitFields {
                reason: vmxray_events::codes::ExitCode::Vmx(vmxray_events::codes::ExitReason(10)),
                isa: None,
                guest_rip: Some(0x1000),
                info1: Some(0),
                info2: Some(0),
                intr_info: None,
                error_code: None,
                vcpu_id: Some(3),
                requests: None,
            })),
        })
    }

    /// entry, exit, entry, entry: the last entry has no exit before it.
    fn stream() -> Vec<Result<Event, ReadError>> {
        vec![entry(1), exit(2), entry(5), entry(9)]
    }

    fn opts(format: Format) -> Options {
        Options {
            rules: RuleSet::all(),
            min_severity: Severity::Info,
            format,
            loop_repeats: 3,
            excerpt: false,
            explain: false,
        }
    }

    #[test]
    fn an_anomaly_of_the_trace_end_has_its_vcpus_last_time() {
        // A real excerpt (gVisor #6757) whose vCPU 1 fails KVM_RUN the same way to its end;
        // then the same followed by two events of another vCPU. The loop, reported at the end,
        // is at vCPU 1's last event both times, not at the trace's.
        let excerpt = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/samples/real/excerpts/efault-loop-vvar-in-guest-memory.txt"
        );
        let other_vcpu = "             exe-110349  [007] d... 410259.258880: kvm_entry: vcpu 2, \
             rip 0x1000\n             exe-110349  [007] d... 410259.258890: kvm_exit: vcpu 2 \
             reason HLT rip 0x1000 info1 0x0000000000000000 info2 0x0000000000000000 intr_info \
             0x00000000 error_code 0x00000000\n";
        for tail in ["", other_vcpu] {
            let mut text = std::fs::read_to_string(excerpt).unwrap();
            text.push_str(tail);
            let name = format!("vmxray-end-ts-{}-{}.txt", std::process::id(), tail.len());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, text).unwrap();
            let reader = vmxray_capture::open(&path, ReadOptions::default()).unwrap();
            let _ = std::fs::remove_file(&path);
            assert!(reader.meta().excerpt);
            let mut out = Vec::new();
            let opts = Options { excerpt: true, ..opts(Format::Text) };
            let outcome = replay_stream("t.txt", reader, opts, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(outcome.shown, 1, "{text}");
            let row = text.lines().find(|l| l.contains("livelock")).expect("the loop is reported");
            assert!(row.contains(" 410259258871000 vcpu 1 "), "{row}");
        }
    }

    #[test]
    fn text_table_and_summary() {
        let mut out = Vec::new();
        let outcome = replay_stream("t.dat", stream(), opts(Format::Text), &mut out).unwrap();
        write_summary("t.dat", &outcome.summary, None, opts(Format::Text), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(outcome.shown, 1);
        assert!(text.contains("entry_without_exit"), "{text}");
        assert!(text.contains("vcpu 3"), "{text}");
        assert!(text.contains("not checkable on this trace"), "{text}");
        assert!(text.contains("late_vmfail_l1_cr3"), "{text}");
        assert_eq!(outcome.summary.count_at_least(Severity::Warning), 1);
        assert_eq!(outcome.summary.count_at_least(Severity::Critical), 0);
    }

    #[test]
    fn jsonl_lines_parse_and_follow_the_wire_format() {
        let mut out = Vec::new();
        let outcome = replay_stream("t.dat", stream(), opts(Format::Jsonl), &mut out).unwrap();
        write_summary("t.dat", &outcome.summary, None, opts(Format::Jsonl), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "anomaly");
        assert_eq!(lines[0]["rule"], "entry_without_exit");
        assert_eq!(lines[0]["severity"], "error");
        assert_eq!(lines[0]["at"], 3);
        assert_eq!(lines[0]["ts"], 9);
        assert_eq!(lines[0]["vcpu"], 3);
        assert_eq!(lines[0]["evidence"], json!([2]));
        assert_eq!(lines[1]["type"], "summary");
        assert_eq!(lines[1]["events"], 4);
        assert_eq!(lines[1]["anomalies"]["error"], 1);
        let rules = lines[1]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), RuleId::COUNT);
        assert!(
            rules.iter().any(|r| r["status"] == "checked" && r["rule"] == "entry_without_exit")
        );
    }

    #[test]
    fn rule_selection_and_severity_filter() {
        let only_livelock: RuleSet = [RuleId::Livelock].into_iter().collect();
        let mut out = Vec::new();
        let o = replay_stream(
            "t",
            stream(),
            Options { rules: only_livelock, ..opts(Format::Text) },
            &mut out,
        )
        .unwrap();
        assert_eq!(o.shown, 0);
        assert_eq!(o.summary.rules.len(), 1);
        let mut out = Vec::new();
        let o = replay_stream(
            "t",
            stream(),
            Options { min_severity: Severity::Critical, ..opts(Format::Text) },
            &mut out,
        )
        .unwrap();
        assert_eq!(o.shown, 0);
        assert_eq!(o.summary.count_at_least(Severity::Error), 1);
    }

    #[test]
    fn rule_list_names_every_rule_and_commit() {
        let mut out = Vec::new();
        write_rule_list(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for rule in RuleId::ALL {
            assert!(text.contains(rule.name()) && text.contains(rule.commit()));
        }
    }

    #[test]
    fn parsers_name_the_choices() {
        assert!(parse_rule("nope").unwrap_err().contains("changed_subject_cr3"));
        assert_eq!(parse_severity("error"), Ok(Severity::Error));
        assert!(parse_severity("loud").is_err());
    }
}
