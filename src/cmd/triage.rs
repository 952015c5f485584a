//! `vmxray triage FILE`: the post-mortem of every shutdown, triple fault, internal error or
//! failed VM-entry in a trace, written as a narrative a KVM developer can paste into a bug
//! report (or as one JSON document with `--format json`).
//!
//! Exit status: 0 when the trace has no fatal event and no stuck vCPU, 1 when it has, 2 when
//! it cannot be read.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use super::triage_qemu;

use anyhow::Context;
use vmxray_analyze::pass::{Pass, PassConfig, Sink, StatsMode, Stepped};
use vmxray_capture::read::text::qemu_dump;
use vmxray_capture::{ReadError, ReadOptions};
use vmxray_events::{Event, EventKind};
use vmxray_replay::story::insn_text;
use vmxray_replay::triage::{ChainLink, ContextChange, Triage, TriageConfig};
use vmxray_replay::{Actor, Transition, TriageReport};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The narrative.
    Text,
    /// The triage report as one JSON document.
    Json,
}

/// Arguments of `vmxray triage`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace (`-` for stdin).
    pub file: PathBuf,
    /// How many of the vCPU's last events to show per crash.
    #[arg(long, default_value_t = 40)]
    pub window: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Skip unreadable records (counted and reported) instead of stopping.
    #[arg(long)]
    pub permissive: bool,
}

/// Runs `vmxray triage`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut reader = vmxray_capture::open(
        &args.file,
        ReadOptions { permissive: args.permissive, ..ReadOptions::default() },
    )?;
    let input = reader.meta().input.to_string();
    let mut config = TriageConfig { window: args.window.max(1), ..TriageConfig::default() };
    config.model.excerpt = reader.meta().excerpt;
    let report = triage_stream(&mut reader, config).with_context(|| format!("Triaging {input}"))?;
    let stats = reader.stats();
    let (lost, _) = stats.lost_total();
    // A pasted report often holds QEMU's own account of the death beside (or instead of) the
    // trace lines.
    let qemu = triage_qemu::reports(qemu_dump::find(&stats.non_trace));
    let qemu_fatal = qemu.iter().any(triage_qemu::fatal);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let (excerpt, segments) = (reader.meta().excerpt, stats.segments);
    match args.format {
        Format::Text => {
            out.write_all(render(&input, &report).as_bytes())?;
            if qemu_fatal && report.crashes.is_empty() {
                writeln!(out, "The input also holds QEMU's report of the vCPU's death:")?;
            }
            out.write_all(triage_qemu::render(&qemu).as_bytes())?;
            writeln!(
                out,
                "(read: {} events, {lost} lost, {} skipped; {})",
                stats.events,
                stats.skipped,
                super::replay::trace_kind(
                    excerpt,
                    segments,
                    stats.non_trace_lines,
                    stats.truncated
                )
            )?;
        }
        Format::Json => {
            // The report, and what the reader said about the input.
            let mut doc = serde_json::to_value(&report)?;
            if let Some(map) = doc.as_object_mut() {
                map.insert("excerpt".into(), excerpt.into());
                map.insert("segments".into(), segments.into());
                map.insert("non_trace_lines".into(), stats.non_trace_lines.into());
                map.insert("truncated".into(), stats.truncated.into());
                map.insert("qemu".into(), triage_qemu::to_json(&qemu)?);
            }
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(if report.crashes.is_empty() && report.stuck.is_empty() && !qemu_fatal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Triage of a stream of events.
pub fn triage_stream<I>(events: I, config: TriageConfig) -> Result<TriageReport, ReadError>
where
    I: IntoIterator<Item = Result<Event, ReadError>>,
{
    let mut sink = TriageSink(Triage::new(config));
    let mut pass = Pass::new(PassConfig { model: config.model, stats: StatsMode::Off });
    pass.run(events, &mut sink)?;
    Ok(sink.0.finish(pass.finish(None, None).summary))
}

/// Feeds the triage from a pass.
struct TriageSink(Triage);

impl Sink for TriageSink {
    fn event(&mut self, s: &Stepped<'_>) -> ControlFlow<()> {
        self.0.observe(s.event, &s.step(), s.model);
        ControlFlow::Continue(())
    }
}

fn who(actor: Actor, vms: &[vmxray_events::Vm]) -> String {
    match actor {
        Actor::Vcpu(v) if vms.len() <= 1 => format!("vCPU {}", v.id),
        Actor::Vcpu(v) => match vms.get(v.vm.0 as usize) {
            Some(vm) => format!("vCPU {} of VM {} ({})", v.id, v.vm.0, vm.label()),
            None => format!("vCPU {} of VM {}", v.id, v.vm.0),
        },
        Actor::Thread(pid) => format!("vCPU thread {pid} (the trace carries no vcpu_id)"),
    }
}

fn ec(e: Option<u32>) -> String {
    e.map_or_else(|| " (no error code)".to_owned(), |e| format!(" (error code {e:#x})"))
}

fn link_text(l: &ChainLink) -> String {
    match l {
        ChainLink::Injected { vector, error_code, reinjected, .. } => format!(
            "KVM injected {vector}{}{}",
            ec(*error_code),
            if *reinjected == Some(true) { " [reinjected]" } else { "" }
        ),
        ChainLink::PageFault { address, error_code, rip, .. } => format!(
            "page fault at {address:#x} error code {error_code:#x}{}",
            rip.map_or_else(String::new, |r| format!(" rip {r:#x}"))
        ),
        ChainLink::WalkerError { pferr, .. } => format!("guest page walk failed, pferr {pferr:#x}"),
        ChainLink::ExitException { reason, vector, qualification, error_code, nested, .. } => {
            format!(
                "{} {reason} with {vector}{}{}",
                if *nested { "nested exit to L1:" } else { "exit" },
                ec(*error_code),
                qualification.map_or_else(String::new, |q| format!(" qualification {q:#x}"))
            )
        }
        ChainLink::EmulationFailed { rip, insn, .. } => {
            format!("emulation of {} at rip {rip:#x} failed", insn_text(insn))
        }
        ChainLink::Printk { text, .. } => format!("printk: {text}"),
        ChainLink::VmenterFailed { msg, err, .. } => {
            let name = vmxray_events::codes::VmInstructionError(*err);
            if *err == 0 {
                format!("nested VM-entry check failed: {msg}")
            } else {
                format!("nested VM-entry failed: {msg}{name} ({err})")
            }
        }
    }
}

fn change_text(c: &ContextChange) -> Option<String> {
    Some(match c {
        ContextChange::CrWrite { cr, value, level, .. } => format!(
            "mov cr{cr} = {value:#x}{}",
            level.map_or_else(String::new, |l| format!(" ({l})"))
        ),
        ContextChange::Emulated { rip, insn, .. } => format!("emulated `{insn}` at rip {rip:#x}"),
        ContextChange::Model { transition, .. } => match transition {
            Transition::Mode { from, to } => format!("level {from} -> {to}"),
            Transition::Resynchronizing { .. } => "events lost: state dropped".to_owned(),
            Transition::NestedEntry { vmptr, cause } => {
                format!("nested VM-entry of vmcs12 {vmptr:#x} ({cause})")
            }
            Transition::NestedExit { reason } => format!(
                "nested VM-exit to L1 ({})",
                reason.map_or_else(|| "silent".to_owned(), |r| r.to_string())
            ),
            Transition::LateVmFail => "late VM-Fail unwound the nested entry".to_owned(),
            Transition::L1Cr3 { value } => format!("L1 CR3 = {value:#x}"),
            Transition::RootLoaded(r) => format!(
                "root loaded: gfn {:#x} [{}] ({})",
                r.gfn,
                r.role,
                if r.created { "new" } else { "existing" }
            ),
            Transition::Smm { entering } => {
                if *entering { "entered SMM" } else { "left SMM" }.to_owned()
            }
            Transition::Vmcs12Field { .. } => return None,
        },
    })
}

/// A one-line description of an event for the window listing.
pub fn describe_event(e: &Event) -> String {
    match &e.kind {
        EventKind::KvmExit(i)
        | EventKind::KvmNestedVmexit(i)
        | EventKind::KvmNestedVmexitInject(i) => {
            format!(
                "{} {}{}{}{}",
                e.name(),
                i.reason(),
                i.guest_rip().map_or_else(String::new, |r| format!(" rip {r:#x}")),
                i.info1().map_or_else(String::new, |q| format!(" info1 {q:#x}")),
                decoded_exit(i)
            )
        }
        EventKind::KvmEntry(en) => {
            format!("kvm_entry{}", en.rip.map_or_else(String::new, |r| format!(" rip {r:#x}")))
        }
        EventKind::KvmNestedVmenter(v) => format!(
            "kvm_nested_vmenter vmcs {:#x} nested_rip {:#x}{}",
            v.vmcs,
            v.nested_rip,
            v.guest_pgd.map_or_else(String::new, |p| format!(" pgd {p:#x}"))
        ),
        EventKind::KvmEmulateInsn { rip, insn, failed, .. } => format!(
            "kvm_emulate_insn {rip:#x}: {}{}",
            insn_text(insn.as_slice()),
            if *failed { " FAIL" } else { "" }
        ),
        EventKind::KvmMmuGetPage { page, created } => format!(
            "kvm_mmu_get_page {} gfn {:#x} [{}]",
            if *created { "new" } else { "existing" },
            page.gfn,
            page.role
        ),
        EventKind::KvmInjException { exception, has_error, error_code, .. } => format!(
            "kvm_inj_exception {exception}{}",
            if *has_error { format!(" ({error_code:#x})") } else { String::new() }
        ),
        EventKind::KvmUserspaceExit { reason, .. } => format!("kvm_userspace_exit {reason}"),
        EventKind::KvmCr { write, cr, val } => {
            format!("kvm_cr {} cr{cr} = {val:#x}", if *write { "write" } else { "read" })
        }
        EventKind::KvmPageFault { fault_address, error_code, .. } => {
            format!("kvm_page_fault {fault_address:#x} error {error_code:#x}")
        }
        EventKind::KvmMmuPagetableWalk { addr, pferr } => {
            format!("kvm_mmu_pagetable_walk {addr:#x} pferr {pferr:#x}")
        }
        EventKind::KvmMmuPagingElement { pte, level } => {
            format!("kvm_mmu_paging_element pte {pte:#x} level {level}")
        }
        EventKind::KvmMmuWalkerError { pferr } => format!("kvm_mmu_walker_error pferr {pferr:#x}"),
        EventKind::KvmNestedVmenterFailed { msg, err, .. } => {
            format!("kvm_nested_vmenter_failed {msg}{err}")
        }
        EventKind::KvmSmmTransition { entering, smbase, .. } => format!(
            "kvm_smm_transition {} SMM smbase {smbase:#x}",
            if *entering { "entering" } else { "leaving" }
        ),
        EventKind::KvmPio { write, port, val, .. } => format!(
            "kvm_pio {} port {port:#x}{}",
            if *write { "write" } else { "read" },
            val.map_or_else(String::new, |v| format!(" val {v:#x}"))
        ),
        EventKind::Irq(_) | EventKind::Mmio(_) | EventKind::Spte(_) => {
            let mut text = e.name().to_owned();
            e.kind.for_each_decoded(|name, value| text.push_str(&format!(" {name} {value}")));
            text
        }
        EventKind::Printk(p) => match &p.func {
            Some(func) => format!("{} {func}: {}", e.name(), p.text),
            None => format!("{} {}", e.name(), p.text),
        },
        EventKind::QemuRunExit { cpu_index, reason } => {
            format!("qemu kvm_run_exit cpu_index {cpu_index} {reason}")
        }
        EventKind::Segment { index, reason } => format!("segment {index} ({reason})"),
        EventKind::KvmNestedIntrVmexit { .. }
        | EventKind::KvmInjVirq { .. }
        | EventKind::KvmMsr { .. }
        | EventKind::KvmCpuid { .. }
        | EventKind::KvmMmuPrepareZapPage { .. }
        | EventKind::KvmMmuSyncPage { .. }
        | EventKind::KvmMmuUnsyncPage { .. }
        | EventKind::KvmPmlFull { .. }
        | EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Context(_)
        | EventKind::Lost { .. }
        | EventKind::Other(_) => e.name().to_owned(),
    }
}

/// The decoded qualification and IDT-vectoring information of an exit, as ` (…)`.
fn decoded_exit(i: &vmxray_events::ExitInfo) -> String {
    let mut parts = Vec::new();
    if let Some(q) = i.qualification() {
        parts.push(q.to_string());
    }
    if let Some(v) = i.idt_vectoring() {
        parts.push(format!("while delivering {v}"));
    }
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join("; ")) }
}

/// Renders the narrative.
pub fn render(input: &str, report: &TriageReport) -> String {
    let mut s = String::new();
    let n = report.crashes.len();
    let stuck = report.stuck.len();
    let _ = writeln!(
        s,
        "vmxray triage {input}: {} fatal event{}{}{}",
        n,
        if n == 1 { "" } else { "s" },
        if report.dropped_crashes > 0 {
            format!(" (and {} more not shown)", report.dropped_crashes)
        } else {
            String::new()
        },
        match stuck {
            0 => String::new(),
            1 => ", 1 stuck vCPU".to_owned(),
            k => format!(", {k} stuck vCPUs"),
        }
    );
    if n == 0 && stuck == 0 {
        let _ = writeln!(
            s,
            "No shutdown, triple fault, internal error, failed VM-entry or stuck vCPU in {} events.",
            report.summary.events
        );
    }
    for st in &report.stuck {
        let l = &st.found;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "== {}: {} from event {} to {}{} ==",
            who(l.vcpu, &report.summary.vms),
            l.kind.describe(),
            l.first,
            l.last,
            match (ts_text(l.first_ts), ts_text(l.last_ts)) {
                (Some(a), Some(b)) => format!(" (ts {a} to {b})"),
                _ => String::new(),
            }
        );
        let _ = writeln!(s, "\nWhat happened:");
        for line in &st.what_happened {
            let _ = writeln!(s, "  - {line}");
        }
        let _ = writeln!(s, "\nThe cycle:");
        for line in &l.cycle {
            let _ = writeln!(s, "  {line}");
        }
    }
    for c in &report.crashes {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "== {}: {} at event {}{} ==",
            who(c.vcpu, &report.summary.vms),
            c.kind.describe(),
            c.at,
            ts_text(c.ts).map(|t| format!(" (ts {t})")).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "Level: {}{}.",
            match (c.level, c.nested_seen) {
                (Some(l), _) => l.to_string(),
                (None, false) => "the guest (no nested virtualization in the trace)".to_owned(),
                (None, true) => "not established by the trace".to_owned(),
            },
            c.vmptr.map_or_else(String::new, |p| format!(", current vmcs12 {p:#x}"))
        );
        if let Some(r) = &c.vmcs12 {
            let mut parts = Vec::new();
            if let Some(cr3) = r.guest_cr3 {
                parts.push(format!("GUEST_CR3 {:#x}", cr3.value));
            }
            if let Some(eptp) = r.eptp {
                parts.push(format!("EPTP {:#x}", eptp.value));
            }
            if let Some(rip) = r.nested_rip {
                parts.push(format!("nested_rip {:#x}", rip.value));
            }
            if let Some(host) = r.host_rip {
                parts.push(format!("HOST_RIP {:#x}", host.value));
            }
            parts.push(format!("launch state {}", r.launch));
            let _ = writeln!(s, "vmcs12 {:#x} as last entered: {}.", r.vmptr, parts.join(", "));
        }
        if !c.what_happened.is_empty() {
            let _ = writeln!(s, "\nWhat happened:");
            for line in &c.what_happened {
                let _ = writeln!(s, "  - {line}");
            }
        }
        let _ = writeln!(s, "\nException chain (oldest first):");
        if c.exception_chain.is_empty() {
            let _ = writeln!(s, "  (none seen)");
        }
        for l in &c.exception_chain {
            let _ = writeln!(s, "  {:<8} {}", l.at().to_string(), link_text(l));
        }
        let _ = writeln!(s, "\nLast CR3 / root / level changes (oldest first):");
        let changes: Vec<_> = c
            .context_changes
            .iter()
            .filter_map(|ch| change_text(ch).map(|t| (ch.at(), t)))
            .collect();
        if changes.is_empty() {
            let _ = writeln!(s, "  (none seen)");
        }
        for (at, text) in changes {
            let _ = writeln!(s, "  {:<8} {text}", at.to_string());
        }
        let _ = writeln!(s, "\nAnomalies in the window:");
        if c.anomalies.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for a in &c.anomalies {
            let _ =
                writeln!(s, "  {:<8} {} {}: {}", a.at.to_string(), a.severity, a.rule, a.message);
        }
        let _ = writeln!(
            s,
            "\nLast {} events of {}:",
            c.last_events.len(),
            who(c.vcpu, &report.summary.vms)
        );
        for e in &c.last_events {
            let _ = writeln!(
                s,
                "  {:<8} {:>16} {}",
                e.at.to_string(),
                e.event.ts,
                describe_event(&e.event)
            );
        }
    }
    s
}

/// A timestamp as printed, or None when the input did not give one (an excerpt's line
/// without time: [`Event::TS_UNKNOWN`]).
fn ts_text(ts: u64) -> Option<String> {
    (ts != Event::TS_UNKNOWN).then(|| ts.to_string())
}

#[cfg(test)]
mod tests {
    use vmxray_events::codes::{ExceptionVector, MmuPageRole, UserspaceExitReason};
    use vmxray_events::{InsnBytes, MmuPage};

    use super::*;

    fn ev(ts: u64, kind: EventKind) -> Result<Event, ReadError> {
        Ok(Event { ts, cpu: 0, pid: 23323, tgid: None, comm: Some("python3".into()), kind })
    }

    #[test]
    fn narrative_names_the_undelivered_ud_and_the_shutdown() {
        let emulate = |rip, bytes: &[u8], failed| EventKind::KvmEmulateInsn {
            rip,
            csbase: 0,
            insn: InsnBytes::new(bytes, bytes.len()),
            flags: 0,
            failed,
        };
        let events = vec![
            ev(
                1,
                EventKind::KvmMmuGetPage {
                    page: MmuPage {
                        mmu_valid_gen: Some(0),
                        gfn: 2,
                        role: MmuPageRole(0x1704),
                        role_known: u32::MAX,
                        root_count: 0,
                        unsync: false,
                    },
                    created: true,
                },
            ),
            ev(2, emulate(0x1007, &[0x0f, 0x22, 0xd8], false)),
            ev(3, emulate(0x105c, &[0x0f, 0x01, 0x1c, 0x25, 0x00, 0x70, 0x00, 0x00], false)),
            ev(4, emulate(0x1064, &[0x0f, 0x0b], false)),
            ev(5, emulate(0x1064, &[0x0f, 0x0b], true)),
            ev(
                6,
                EventKind::KvmInjException {
                    exception: ExceptionVector::UD,
                    has_error: false,
                    error_code: 0,
                    reinjected: Some(false),
                },
            ),
            ev(
                7,
                EventKind::KvmUserspaceExit { reason: UserspaceExitReason::SHUTDOWN, errno: None },
            ),
        ];
        let report = triage_stream(events, TriageConfig::default()).unwrap();
        let text = render("triple-fault.dat", &report);
        assert!(text.contains("1 fatal event"), "{text}");
        assert!(text.contains("KVM_EXIT_SHUTDOWN"), "{text}");
        assert!(text.contains("KVM injected #UD at #5"), "{text}");
        assert!(text.contains("no VM-entry delivered it"), "{text}");
        assert!(text.contains("`ud2` (0f 0b) at rip 0x1064 failed"), "{text}");
        assert!(text.contains("`lidt [0x7000]`"), "{text}");
        assert!(text.contains("emulated `mov cr3, rax` at rip 0x1007"), "{text}");
        assert!(text.contains("root loaded: gfn 0x2"), "{text}");
    }

    /// The window line of an exit carries its decoded qualification and the event it
    /// interrupted: `ept-violation-livelock-mmu-seq.txt`'s `info 683 800000ec`.
    #[test]
    fn exit_lines_carry_the_decoded_qualification() {
        use vmxray_events::codes::{ExitCode, ExitReason, IntrInfo, Isa};
        use vmxray_events::{ExitFields, ExitInfo};
        let exit = |info1, info2| {
            EventKind::KvmExit(ExitInfo::from(ExitFields {
                reason: ExitCode::Vmx(ExitReason(48)),
                isa: Some(Isa::Vmx),
                guest_rip: Some(0xffff_ffff_8100_0000),
                info1: Some(info1),
                info2: Some(info2),
                intr_info: Some(IntrInfo(0)),
                error_code: Some(0),
                vcpu_id: Some(0),
                requests: None,
            }))
        };
        let line = describe_event(&ev(1, exit(0x683, 0x8000_00ec)).unwrap());
        assert!(
            line.ends_with(
                " info1 0x683 (read+write, not present, paging-structure access; while \
                 delivering external interrupt 0xec)"
            ),
            "{line}"
        );
        let line = describe_event(&ev(1, exit(0x181, 0)).unwrap());
        assert!(line.ends_with(" info1 0x181 (read, not present, final translation)"), "{line}");
    }

    #[test]
    fn no_crash_says_so() {
        let report = triage_stream(Vec::new(), TriageConfig::default()).unwrap();
        assert!(render("x", &report).contains("No shutdown"));
    }
}
