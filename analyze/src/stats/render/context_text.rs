//! The text of the host-context section ([`crate::context`]).

use std::fmt::Write as _;

use super::Table;
use crate::context::HostContextReport;

/// Writes the section; `unit` names the time unit, `ns` says whether it is ns.
pub(super) fn host_context(report: &HostContextReport, unit: &str, ns: bool, out: &mut String) {
    let s = report.sources;
    let mut had: Vec<&str> = Vec::new();
    for (present, name) in [
        (s.sched_switch, "sched_switch"),
        (s.sched_wakeup, "sched_wakeup"),
        (s.irq, "irq"),
        (s.softirq, "softirq"),
        (s.hrtimer, "hrtimer"),
    ] {
        if present {
            had.push(name);
        }
    }
    let _ = writeln!(
        out,
        "\nHost context of exits (from {}): {} exits attributed, {} not (host events out of \
         time order with them)",
        had.join(", "),
        report.attributed,
        report.unattributed
    );
    let _ = writeln!(
        out,
        "  exit→entry time split into in KVM (vCPU thread on its CPU), scheduled out (BLOCKED: \
         of it, asleep until woken), irq and softirq on its CPU, in {unit}; the parts add up to \
         the latency."
    );
    if !s.sched_switch {
        out.push_str("  No sched_switch in the trace: time scheduled out is counted in KVM.\n");
    }
    let mut table = Table::new(
        &["REASON", "COUNT", "LATENCY", "IN-KVM", "SCHED-OUT", "BLOCKED", "IRQ", "SOFTIRQ"],
        1,
    );
    let pct = |v: u64, all: u64| {
        if all == 0 {
            "-".to_owned()
        } else {
            format!("{v} ({:.1}%)", v as f64 * 100.0 / all as f64)
        }
    };
    let overall_latency = report.overall.total();
    for (name, count, latency, p) in report
        .by_reason
        .iter()
        .map(|r| (r.reason.name.as_str(), r.count, r.latency, &r.parts))
        .chain(std::iter::once(("all", report.attributed, overall_latency, &report.overall)))
    {
        table.row(vec![
            name.to_owned(),
            count.to_string(),
            latency.to_string(),
            pct(p.in_kvm, latency),
            pct(p.scheduled_out, latency),
            pct(p.blocked, latency),
            pct(p.irq, latency),
            pct(p.softirq, latency),
        ]);
    }
    table.render(out);
    if !report.outliers.is_empty() {
        out.push_str("\nOutliers: the slowest exits and where their time went\n");
        for exit in &report.outliers {
            let _ = writeln!(out, "  {} (vCPU {}, at {})", exit.cause(ns), exit.vcpu, exit.ts);
        }
    }
}
