//! Text, JSON and CSV renderings of a [`StatsReport`].

use std::fmt::Write as _;
use std::io::{self, Write};
use std::str::FromStr;

use super::report::{ExitReport, ExitRow, Level, StatsReport, TimeUnit, level_label};

mod context_text;

/// Output formats of `vmxray stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Tables for people.
    Text,
    /// The whole [`StatsReport`] as one JSON document (schema in the crate docs).
    Json,
    /// One row per (reason, level, vCPU) group, with a header.
    Csv,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            other => Err(format!("Unknown format `{other}`: expected text, json or csv")),
        }
    }
}

/// Writes `report` in `format`.
pub fn write_report(report: &StatsReport, format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Text => out.write_all(render_text(report).as_bytes()),
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report).map_err(io::Error::other)?;
            out.write_all(b"\n")
        }
        Format::Csv => out.write_all(render_csv(report).as_bytes()),
    }
}

/// The CSV header (one row per group follows).
pub const CSV_HEADER: &str = "reason,reason_code,isa,level,vcpu,count,percent,without_latency,\
l0_handled,reflected,latency_count,time_percent,total,min,p50,p90,p99,p999,max,mean,stddev,\
time_unit";

fn render_csv(report: &StatsReport) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let unit = unit_name(report.time_unit);
    for row in report.exits.iter().flat_map(|e| &e.groups) {
        let mut fields: Vec<String> = vec![
            row.reason.as_ref().map_or_else(String::new, |r| r.name.clone()),
            row.reason.as_ref().map_or_else(String::new, |r| r.code.to_string()),
            row.reason.as_ref().map_or_else(String::new, |r| r.isa.clone()),
            level_label(row.level).to_owned(),
            row.vcpu.map_or_else(String::new, |v| v.label()),
            row.count.to_string(),
            format!("{:.4}", row.percent),
            row.without_latency.to_string(),
            row.l0_handled.to_string(),
            row.reflected.to_string(),
        ];
        match &row.latency {
            Some(l) => fields.extend([
                l.count.to_string(),
                format!("{:.4}", row.time_percent),
                l.total.to_string(),
                l.min.to_string(),
                l.p50.to_string(),
                l.p90.to_string(),
                l.p99.to_string(),
                l.p999.to_string(),
                l.max.to_string(),
                format!("{:.3}", l.mean),
                format!("{:.3}", l.stddev),
            ]),
            None => {
                fields.extend(std::iter::once("0".to_owned()).chain((0..10).map(|_| String::new())))
            }
        }
        fields.push(unit.to_owned());
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Ns => "ns",
        TimeUnit::Raw => "raw",
    }
}

/// A column-aligned table: the columns listed in `left` are left-aligned, the rest right-aligned.
struct Table {
    header: Vec<String>,
    left: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first `left` columns are left-aligned.
    fn new(header: &[&str], left: usize) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            left: (0..left).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::from(" ");
            for (i, cell) in line.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if self.left.contains(&i) {
                    let _ = write!(text, " {cell:<w$}");
                } else {
                    let _ = write!(text, " {cell:>w$}");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
    }
}

const LATENCY_HEADER: [&str; 11] =
    ["NO-LAT", "TIME%", "TOTAL", "MIN", "P50", "P90", "P99", "P99.9", "MAX", "MEAN", "STDDEV"];

fn latency_cells(row: &ExitRow) -> Vec<String> {
    let mut cells = vec![row.without_latency.to_string()];
    match &row.latency {
        Some(l) => cells.extend([
            format!("{:.2}%", row.time_percent),
            l.total.to_string(),
            l.min.to_string(),
            l.p50.to_string(),
            l.p90.to_string(),
            l.p99.to_string(),
            l.p999.to_string(),
            l.max.to_string(),
            format!("{:.1}", l.mean),
            format!("{:.1}", l.stddev),
        ]),
        None => cells.extend((0..10).map(|_| "-".to_owned())),
    }
    cells
}

fn with_latency_header<'a>(lead: &[&'a str]) -> Vec<&'a str> {
    lead.iter().copied().chain(LATENCY_HEADER).collect()
}

fn exit_tables(
    exits: &ExitReport,
    vms: &[vmxray_events::Vm],
    unit: &str,
    ns_clock: bool,
    out: &mut String,
) {
    let (events_word, with, without) =
        (exits.total, exits.with_latency, exits.without_latency.total());
    let _ = writeln!(
        out,
        "{events_word} kvm_exit on {} vCPU(s): {with} with a latency, {without} without.",
        exits.by_vcpu.len()
    );
    let _ = writeln!(
        out,
        "Latency = time from a kvm_exit to the next kvm_entry of the same vCPU, in {unit}; \
         percentiles are nearest-rank within 0.4 %."
    );

    out.push_str("\nExit reasons (all vCPUs");
    out.push_str(if exits.nested { ", both levels)\n" } else { ")\n" });
    let mut table = Table::new(&with_latency_header(&["REASON", "COUNT", "EXITS%"]), 1);
    for row in exits.by_reason.iter().chain(std::iter::once(&exits.overall)) {
        let mut cells = vec![
            row.reason.as_ref().map_or_else(|| "all".to_owned(), |r| r.name.clone()),
            row.count.to_string(),
            format!("{:.2}%", row.percent),
        ];
        cells.extend(latency_cells(row));
        table.row(cells);
    }
    table.render(out);

    if let Some(levels) = &exits.levels {
        let _ = writeln!(
            out,
            "\nExit reasons by level: L1 {} exits, L2 {} exits (L0 handled {}, reflected to L1 {})",
            levels.l1, levels.l2, levels.l2_l0_handled, levels.l2_reflected
        );
        out.push_str(
            "  L2 = the kvm_exit is followed by kvm_nested_vmexit before the vCPU's next \
             kvm_entry; reflected = then by a kvm_nested_vmexit_inject with the same reason.\n",
        );
        let mut table = Table::new(
            &with_latency_header(&["REASON", "LEVEL", "COUNT", "EXITS%", "L0", "REFLECTED"]),
            2,
        );
        for row in &exits.by_reason_level {
            let mut cells = vec![
                row.reason.as_ref().map_or_else(String::new, |r| r.name.clone()),
                level_label(row.level).to_owned(),
                row.count.to_string(),
                format!("{:.2}%", row.percent),
                level_cell(row, row.l0_handled),
                level_cell(row, row.reflected),
            ];
            cells.extend(latency_cells(row));
            table.row(cells);
        }
        table.render(out);
        if !exits.synthesized_nested_exits.is_empty() {
            out.push_str(
                "\nNested exits synthesized for L1 (kvm_nested_vmexit_inject that reflects no L2 \
                 exit)\n",
            );
            let mut table = Table::new(&["REASON", "COUNT"], 1);
            for s in &exits.synthesized_nested_exits {
                table.row(vec![s.name.clone(), s.count.to_string()]);
            }
            table.render(out);
        }
    }

    if !exits.by_vm.is_empty() {
        out.push_str("\nPer VM (all reasons; vCPUs of VM k > 0 read vmK/N below)\n");
        let mut table = Table::new(&with_latency_header(&["VM", "NAME", "COUNT", "EXITS%"]), 2);
        for row in &exits.by_vm {
            let vm = row.vm.and_then(|id| vms.get(id.0 as usize));
            let mut cells = vec![
                row.vm.map_or_else(String::new, |id| format!("vm{}", id.0)),
                vm.map_or_else(String::new, |vm| {
                    if vm.inferred { format!("{} (inferred)", vm.label()) } else { vm.label() }
                }),
                row.count.to_string(),
                format!("{:.2}%", row.percent),
            ];
            cells.extend(latency_cells(row));
            table.row(cells);
        }
        table.render(out);
    }

    out.push_str("\nPer vCPU (all reasons)\n");
    let mut table = Table::new(&with_latency_header(&["VCPU", "COUNT", "EXITS%"]), 1);
    for row in &exits.by_vcpu {
        let mut cells = vec![
            row.vcpu.map_or_else(String::new, |v| v.label()),
            row.count.to_string(),
            format!("{:.2}%", row.percent),
        ];
        cells.extend(latency_cells(row));
        table.row(cells);
    }
    table.render(out);

    if exits.groups.len() <= TEXT_MAX_GROUPS {
        out.push_str("\nPer vCPU and reason\n");
        let mut lead = vec!["VCPU", "REASON"];
        if exits.nested {
            lead.extend(["LEVEL", "L0", "REFLECTED"]);
        }
        lead.extend(["COUNT", "EXITS%"]);
        let mut table = Table::new(&with_latency_header(&lead), 2);
        if exits.nested {
            table.left.push(2);
        }
        let mut rows: Vec<&ExitRow> = exits.groups.iter().collect();
        rows.sort_by(|a, b| a.vcpu.cmp(&b.vcpu).then_with(|| b.count.cmp(&a.count)));
        for row in rows {
            let mut cells = vec![
                row.vcpu.map_or_else(String::new, |v| v.label()),
                row.reason.as_ref().map_or_else(String::new, |r| r.name.clone()),
            ];
            if exits.nested {
                cells.extend([
                    level_label(row.level).to_owned(),
                    level_cell(row, row.l0_handled),
                    level_cell(row, row.reflected),
                ]);
            }
            cells.extend([row.count.to_string(), format!("{:.2}%", row.percent)]);
            cells.extend(latency_cells(row));
            table.row(cells);
        }
        table.render(out);
    } else {
        let _ = writeln!(
            out,
            "\n{} (vCPU, reason, level) groups: see --format csv or json for each.",
            exits.groups.len()
        );
    }

    if !exits.slowest.is_empty() {
        let _ = writeln!(out, "\nSlowest exits (exit→entry, {unit})");
        let mut lead = vec!["LATENCY", "KVM_EXIT AT", "VCPU", "REASON"];
        if exits.nested {
            lead.push("LEVEL");
        }
        let mut table = Table::new(&lead, 0);
        table.left = vec![2, 3, 4];
        for slow in &exits.slowest {
            let mut cells = vec![
                slow.latency.to_string(),
                timestamp(slow.exit_ts, ns_clock),
                slow.vcpu.label(),
                slow.reason.name.clone(),
            ];
            if exits.nested {
                cells.push(level_label(slow.level).to_owned());
            }
            table.row(cells);
        }
        table.render(out);
    }

    let u = &exits.without_latency;
    if u.total() > 0 {
        let _ = writeln!(
            out,
            "\nExits counted without a latency (NO-LAT): {} — trace ended before the next \
             kvm_entry: {}, events lost before it: {}, the vCPU exited again first: {}, clock \
             went backwards: {}, time unknown: {}",
            u.total(),
            u.trace_end,
            u.lost_events,
            u.next_exit,
            u.clock_backwards,
            u.unknown_time
        );
    }
    if exits.orphan_nested_vmexits > 0 {
        let _ = writeln!(
            out,
            "kvm_nested_vmexit without a preceding kvm_exit on its vCPU: {}",
            exits.orphan_nested_vmexits
        );
    }
}

/// A timestamp as trace-cmd prints it (`665.848433123` s) for ns clocks, raw otherwise.
fn timestamp(ts: u64, ns_clock: bool) -> String {
    if ns_clock {
        format!("{}.{:09}", ts / 1_000_000_000, ts % 1_000_000_000)
    } else {
        ts.to_string()
    }
}

fn level_cell(row: &ExitRow, value: u64) -> String {
    match row.level {
        Some(Level::L2) => value.to_string(),
        Some(Level::L1) | None => "-".to_owned(),
    }
}

/// Above this many (vCPU, reason, level) groups the text leaves them to CSV/JSON.
const TEXT_MAX_GROUPS: usize = 64;

/// Emulated instructions shown in text; JSON has them all.
const TEXT_MAX_INSNS: usize = 25;

fn render_text(report: &StatsReport) -> String {
    let mut out = String::new();
    match &report.input {
        Some(input) => {
            let _ = write!(
                out,
                "vmxray stats: {} ({}, clock {}",
                input.name, input.format, input.clock
            );
            if let Some(cpus) = input.cpus {
                let _ = write!(out, ", {cpus} CPUs");
            }
            if let Some(kernel) = &input.kernel {
                let _ = write!(out, ", kernel {kernel}");
            }
            out.push_str(if input.excerpt { ", excerpt" } else { ", complete trace" });
            if input.segments > 0 {
                let _ = write!(out, ", {} captures", input.segments + 1);
            }
            out.push_str(")\n");
        }
        None => out.push_str("vmxray stats\n"),
    }
    let unit = match (report.time_unit, &report.input) {
        (TimeUnit::Ns, _) => "ns".to_owned(),
        (TimeUnit::Raw, Some(input)) => format!("raw `{}` clock units (not ns)", input.clock),
        (TimeUnit::Raw, None) => "raw clock units (not ns)".to_owned(),
    };
    let _ = writeln!(out, "{} events.", report.events_total);
    match &report.exits {
        Some(exits) => {
            exit_tables(exits, &report.vms, &unit, report.time_unit == TimeUnit::Ns, &mut out);
        }
        None => out.push_str(
            "\nNo kvm_exit events: this trace has no VM exits, so there are no exit reasons and \
             no exit latencies to report.\nKVM backends that run the guest through the \
             instruction emulator (such as PVM) emit no kvm_exit or \
             kvm_entry;\notherwise enable kvm:kvm_exit and kvm:kvm_entry when recording. What \
             the trace does contain follows.\n",
        ),
    }

    match (&report.host_context, &report.exits) {
        (Some(context), Some(_)) => {
            context_text::host_context(context, &unit, report.time_unit == TimeUnit::Ns, &mut out)
        }
        (None, Some(_)) => out.push_str(
            "\nHost context: none (the trace has no sched_switch, irq, softirq or hrtimer \
             events; record with --profile context to see where exit time went on the host).\n",
        ),
        (_, None) => {}
    }

    let emu = &report.emulated_instructions;
    if emu.total > 0 {
        let _ = writeln!(
            out,
            "\nEmulated instructions (kvm_emulate_insn): {} in total, {} failed, {} distinct",
            emu.total,
            emu.failed,
            emu.by_insn.len()
        );
        let mut table = Table::new(&["COUNT", "FAILED", "BYTES", "INSTRUCTION"], 0);
        table.left = vec![2, 3];
        for row in emu.by_insn.iter().take(TEXT_MAX_INSNS) {
            table.row(vec![
                row.count.to_string(),
                row.failed.to_string(),
                row.bytes.clone(),
                row.mnemonic.clone().unwrap_or_else(|| "?".to_owned()),
            ]);
        }
        table.render(&mut out);
        if emu.by_insn.len() > TEXT_MAX_INSNS {
            let _ = writeln!(
                out,
                "  ... {} more distinct instructions (all of them in --format json)",
                emu.by_insn.len() - TEXT_MAX_INSNS
            );
        }
        if emu.other > 0 {
            let _ = writeln!(out, "  {} more beyond the distinct-instruction limit", emu.other);
        }
    }

    if !report.injected_exceptions.is_empty() {
        out.push_str("\nInjected exceptions (kvm_inj_exception)\n");
        let mut table =
            Table::new(&["VECTOR", "NAME", "COUNT", "WITH-ERROR-CODE", "REINJECTED"], 2);
        for row in &report.injected_exceptions {
            table.row(vec![
                row.vector.to_string(),
                row.name.clone(),
                row.count.to_string(),
                row.with_error_code.to_string(),
                row.reinjected.to_string(),
            ]);
        }
        table.render(&mut out);
    }

    if !report.userspace_exits.is_empty() {
        out.push_str("\nExits to userspace (kvm_userspace_exit)\n");
        let mut table = Table::new(&["REASON", "CODE", "COUNT", "ERRNO!=0"], 1);
        for row in &report.userspace_exits {
            table.row(vec![
                row.reason.clone(),
                row.code.to_string(),
                row.count.to_string(),
                row.errors.to_string(),
            ]);
        }
        table.render(&mut out);
    }

    if !report.pio.is_empty() {
        out.push_str("\nPort I/O (kvm_pio)\n");
        let mut table = Table::new(&["DIR", "PORT", "SIZE", "COUNT"], 1);
        for row in &report.pio {
            table.row(vec![
                row.direction.clone(),
                format!("0x{:x}", row.port),
                row.size.to_string(),
                row.count.to_string(),
            ]);
        }
        table.render(&mut out);
    }

    if !report.events_by_name.is_empty() {
        out.push_str("\nEvents by name\n");
        let mut table = Table::new(&["EVENT", "COUNT"], 1);
        for row in &report.events_by_name {
            table.row(vec![row.name.clone(), row.count.to_string()]);
        }
        table.render(&mut out);
    }

    if !report.notes.is_empty() {
        out.push('\n');
        for note in &report.notes {
            let _ = writeln!(out, "Note: {note}");
        }
    }

    out.push('\n');
    let losses = &report.losses;
    let (lost, uncounted) = losses.lost_total();
    if losses.lost.is_empty() {
        out.push_str("Lost events: none.\n");
    } else {
        let per_cpu: Vec<String> = losses
            .lost
            .iter()
            .map(|l| {
                let counted = l.markers - l.uncounted_markers.min(l.markers);
                let mut parts = Vec::new();
                if counted > 0 {
                    parts.push(format!("{} in {counted} marker(s)", l.events));
                }
                if l.uncounted_markers > 0 {
                    parts.push(format!("{} marker(s) without a count", l.uncounted_markers));
                }
                format!("CPU {}: {}", l.cpu, parts.join(", "))
            })
            .collect();
        match (lost, uncounted) {
            (0, 1..) => out.push_str("Lost events: an unknown number"),
            (_, 1..) => {
                let _ = write!(out, "Lost events: at least {lost}");
            }
            (_, 0) => {
                let _ = write!(out, "Lost events: {lost}");
            }
        }
        let _ = writeln!(out, " ({}).", per_cpu.join("; "));
    }
    let _ = writeln!(out, "Skipped records/lines: {}.", losses.skipped);
    if losses.non_trace_lines > 0 {
        let _ = writeln!(out, "Non-trace lines skipped: {}.", losses.non_trace_lines);
    }
    for problem in &losses.problems {
        let _ = writeln!(out, "  skipped: {problem}");
    }
    if !losses.unknown_events.is_empty() {
        let list: Vec<String> =
            losses.unknown_events.iter().map(|u| format!("{} ×{}", u.name, u.count)).collect();
        let _ = writeln!(out, "Unknown events: {}.", list.join(", "));
    }
    out
}
