//! Renders events as the ftrace `trace` file does: the header, then one line per event with
//! the `comm-pid [cpu] flags ts: name: body` context (kernel `trace_print_context()`) and the
//! body printed by the event's own `TP_printk` for the chosen kernel.
//!
//! The bodies follow the print formats of the format files under
//! `shared/samples/real/raw/tracefs/events/` (6.18, same as 6.14 for these events) and, for the
//! older layouts, reference §1: which generation to print is decided by which fields the event
//! carries (`None` means "this kernel's layout does not have it"), the way a reader of that
//! kernel's format files would see them. Only the MMU role word needs the kernel version (its
//! bit 4 flipped meaning in 5.14/5.18).

use std::fmt::Write as _;

use vmxray_events::codes::{ExitCode, Isa, MmuPageRole, UserspaceExitReason};
use vmxray_events::fields::Fields;
use vmxray_events::{Entry, Event, EventKind, ExitInfo, MmuPage, NestedVmenter};

use super::KernelVersion;

/// How to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// The kernel whose print formats and header to use.
    pub kernel: KernelVersion,
    /// `#P:` in the header (CPUs in the trace instance).
    pub nr_cpus: u32,
    /// The `record-tgid` column (`(  TGID)` after the pid), which tells a host's VMs apart.
    pub tgid: bool,
}

/// The whole `trace` file: header and one line per event.
pub fn render_trace(events: &[Event], opts: &TextOptions) -> String {
    let mut out = String::with_capacity(events.len() * 140 + 1024);
    out.push_str(&header(events.len(), opts));
    for e in events {
        let line = render_line(e, opts.kernel);
        if opts.tgid {
            out.push_str(&with_tgid(&line, e.tgid));
        } else {
            out.push_str(&line);
        }
        out.push('\n');
    }
    out
}

/// The `trace` file header for the kernel, with irq-info on.
pub fn header(entries: usize, opts: &TextOptions) -> String {
    let mut h = String::new();
    if opts.tgid {
        return header_with_tgid(entries, opts);
    }
    h.push_str("# tracer: nop\n#\n");
    let _ = writeln!(
        h,
        "# entries-in-buffer/entries-written: {entries}/{entries}   #P:{}",
        opts.nr_cpus
    );
    h.push_str("#\n");
    if opts.kernel.has_migrate_disable_flag() {
        h.push_str(
            "#                                _-----=> irqs-off/BH-disabled\n\
             #                               / _----=> need-resched\n\
             #                              | / _---=> hardirq/softirq\n\
             #                              || / _--=> preempt-depth\n\
             #                              ||| / _-=> migrate-disable\n\
             #                              |||| /     delay\n\
             #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n\
             #              | |         |   |||||     |         |\n",
        );
    } else {
        h.push_str(
            "#                                _-----=> irqs-off\n\
             #                               / _----=> need-resched\n\
             #                              | / _---=> hardirq/softirq\n\
             #                              || / _--=> preempt-depth\n\
             #                              ||| /     delay\n\
             #           TASK-PID     CPU#  ||||   TIMESTAMP  FUNCTION\n\
             #              | |         |   ||||      |         |\n",
        );
    }
    h
}

/// The header of a `record-tgid` trace (the TGID column heading).
fn header_with_tgid(entries: usize, opts: &TextOptions) -> String {
    let mut h = String::new();
    h.push_str("# tracer: nop\n#\n");
    let _ = writeln!(
        h,
        "# entries-in-buffer/entries-written: {entries}/{entries}   #P:{}",
        opts.nr_cpus
    );
    h.push_str(
        "#\n\
         #                                          _-----=> irqs-off/BH-disabled\n\
         #                                         / _----=> need-resched\n\
         #                                        | / _---=> hardirq/softirq\n\
         #                                        || / _--=> preempt-depth\n\
         #                                        ||| / _-=> migrate-disable\n\
         #                                        |||| /     delay\n\
         #           TASK-PID       TGID    CPU#  |||||  TIMESTAMP  FUNCTION\n\
         #              | |           |       |   |||||     |         |\n",
    );
    h
}

/// A rendered line with ftrace's `record-tgid` column after `comm-pid` (`(-------)` when the
/// kernel did not save the thread's tgid).
fn with_tgid(line: &str, tgid: Option<i32>) -> String {
    // `%16s-%-7d ` is 25 bytes (wider only for a pid over 7 digits: then at the first ` [`).
    let at = line.find(" [").map_or(25, |at| at.min(25));
    let column = tgid.map_or_else(|| "(-------)".to_owned(), |t| format!("({t:>7})"));
    format!("{} {column}{}", &line[..at], &line[at..])
}

/// The irq-info flags KVM's tracepoints carry: `kvm_entry`/`kvm_exit` fire in
/// `vmx_vcpu_run()` with IRQs off and preemption disabled; the handlers run with IRQs on and
/// preemption disabled; the wakeup and userspace-exit points are preemptible.
pub fn irq_flags(kind: &EventKind, kernel: KernelVersion) -> &'static str {
    let five = kernel.has_migrate_disable_flag();
    match kind {
        EventKind::KvmEntry(_) | EventKind::KvmExit(_) => {
            if five {
                "d..1."
            } else {
                "d..1"
            }
        }
        EventKind::KvmUserspaceExit { .. } => {
            if five {
                "....."
            } else {
                "...."
            }
        }
        EventKind::Other(o) if matches!(&*o.name, "kvm_vcpu_wakeup" | "kvm_fpu") => {
            if five {
                "....."
            } else {
                "...."
            }
        }
        _ => {
            if five {
                "...1."
            } else {
                "...1"
            }
        }
    }
}

/// One line with the flags KVM's tracepoints carry ([`irq_flags`]).
pub fn render_line(e: &Event, kernel: KernelVersion) -> String {
    render_line_with_flags(e, kernel, irq_flags(&e.kind, kernel))
}

/// One line with the given irq-info flags (`trace_print_context()`): `%16s-%-7d [%03d] flags
/// %5lu.%06lu: name: body`, timestamps of a ns clock printed as seconds and microseconds.
pub fn render_line_with_flags(e: &Event, kernel: KernelVersion, flags: &str) -> String {
    let comm = e.comm.as_deref().unwrap_or("<...>");
    let secs = e.ts / 1_000_000_000;
    let usecs = (e.ts % 1_000_000_000) / 1_000;
    format!(
        "{comm:>16}-{pid:<7} [{cpu:03}] {flags} {secs:>5}.{usecs:06}: {name}: {body}",
        pid = e.pid,
        cpu = e.cpu,
        name = event_name(&e.kind, kernel),
        body = render_body(&e.kind, kernel)
    )
}

/// The tracepoint's name on `kernel`: `kvm_smm_transition` was `kvm_enter_smm` before 5.14
/// ("KVM: x86: Rename SMM tracepoint to make it reflect reality").
pub fn event_name(kind: &EventKind, kernel: KernelVersion) -> &str {
    match kind {
        EventKind::KvmSmmTransition { .. } if kernel < KernelVersion::V6_1 => "kvm_enter_smm",
        // Before 6.1 only SVM traced nested entries, as `kvm_nested_vmrun` (reference §1.6).
        EventKind::KvmNestedVmenter(n)
            if !kernel.has_nested_vmenter() && n.isa == Some(Isa::Svm) =>
        {
            "kvm_nested_vmrun"
        }
        other => other.name(),
    }
}

/// The event's `TP_printk` output.
pub fn render_body(kind: &EventKind, kernel: KernelVersion) -> String {
    match kind {
        EventKind::KvmExit(x) => exit_body(x),
        EventKind::KvmNestedVmexit(x) => {
            if x.vcpu_id().is_some() {
                exit_body(x)
            } else {
                // ≤5.9 layout.
                format!(
                    "rip: 0x{:016x} reason: {} ext_inf1: 0x{:016x} ext_inf2: 0x{:016x} ext_int: 0x{:08x} ext_int_err: 0x{:08x}",
                    x.guest_rip().unwrap_or(0),
                    reason_text(x.reason(), x.isa()),
                    x.info1().unwrap_or(0),
                    x.info2().unwrap_or(0),
                    x.intr_info().map_or(0, |i| i.0),
                    x.error_code().unwrap_or(0)
                )
            }
        }
        EventKind::KvmNestedVmexitInject(x) => format!(
            "reason: {} ext_inf1: 0x{:016x} ext_inf2: 0x{:016x} ext_int: 0x{:08x} ext_int_err: 0x{:08x}",
            reason_text(x.reason(), x.isa()),
            x.info1().unwrap_or(0),
            x.info2().unwrap_or(0),
            x.intr_info().map_or(0, |i| i.0),
            x.error_code().unwrap_or(0)
        ),
        EventKind::KvmEntry(entry) => entry_body(entry),
        EventKind::KvmNestedVmenter(n)
            if !kernel.has_nested_vmenter() && n.isa == Some(Isa::Svm) =>
        {
            vmrun_body(n)
        }
        EventKind::KvmNestedVmenter(n) => vmenter_body(n),
        EventKind::KvmNestedVmenterFailed { msg, err, .. } => {
            let name = match err.0 {
                0 => String::new(),
                4 => "VMLAUNCH_NONCLEAR_VMCS".into(),
                5 => "VMRESUME_NONLAUNCHED_VMCS".into(),
                6 => "VMRESUME_AFTER_VMXOFF".into(),
                7 => "VMENTRY_INVALID_CONTROL_FIELD".into(),
                8 => "VMENTRY_INVALID_HOST_STATE_FIELD".into(),
                26 => "VMENTRY_EVENTS_BLOCKED_BY_MOV_SS".into(),
                other => format!("0x{other:x}"),
            };
            format!("{msg}{name}")
        }
        EventKind::KvmNestedIntrVmexit { rip } => format!("rip: 0x{rip:016x}"),
        EventKind::KvmCr { write, cr, val } => {
            format!("cr_{} {cr:x} = 0x{val:x}", if *write { "write" } else { "read" })
        }
        EventKind::KvmPageFault { vcpu_id, guest_rip, fault_address, error_code } => {
            match vcpu_id {
                Some(vcpu) => format!(
                    "vcpu {vcpu} rip 0x{:x} address 0x{fault_address:016x} error_code 0x{error_code:x}",
                    guest_rip.unwrap_or(0)
                ),
                None => format!("address {fault_address:x} error_code {error_code:x}"),
            }
        }
        EventKind::KvmInjException { exception, has_error, error_code, reinjected } => {
            let name = exception_name(exception.0);
            match reinjected {
                Some(re) => format!(
                    "{name}{}{}",
                    if *has_error { format!(" (0x{error_code:x})") } else { String::new() },
                    if *re { " [reinjected]" } else { "" }
                ),
                None => format!("{name} (0x{error_code:x})"),
            }
        }
        EventKind::KvmInjVirq { vector, soft, reinjected } => match soft {
            Some(soft) => format!(
                "{} 0x{vector:x}{}",
                if *soft { "Soft/INTn" } else { "IRQ" },
                if reinjected.unwrap_or(false) { " [reinjected]" } else { "" }
            ),
            None => format!("irq {vector}"),
        },
        EventKind::KvmUserspaceExit { reason, errno } => {
            userspace_exit_body(*reason, errno.unwrap_or(0))
        }
        EventKind::KvmEmulateInsn { rip, csbase, insn, flags, failed } => {
            let mode = match flags {
                0 => "real".to_owned(),
                3 => "vm16".into(),
                1 => "prot16".into(),
                5 => "prot32".into(),
                9 => "prot64".into(),
                other => format!("0x{other:x}"),
            };
            format!(
                "{csbase:x}:{rip:x}:{} ({mode}){}",
                hex_bytes(insn.as_slice()),
                if *failed { " failed" } else { "" }
            )
        }
        EventKind::KvmSmmTransition { vcpu_id, smbase, entering } => format!(
            "vcpu {vcpu_id}: {} SMM, smbase 0x{smbase:x}",
            if *entering { "entering" } else { "leaving" }
        ),
        EventKind::KvmPio { write, port, size, count, val } => {
            let rw = if *write { "write" } else { "read" };
            match val {
                Some(val) => format!(
                    "pio_{rw} at 0x{port:x} size {size} count {count} val 0x{val:x} {}",
                    if *count > 1 { "(...)" } else { "" }
                ),
                None => format!("pio_{rw} at 0x{port:x} size {size} count {count}"),
            }
        }
        EventKind::KvmMsr { write, index, data, exception } => format!(
            "msr_{} {index:x} = 0x{data:x}{}",
            if *write { "write" } else { "read" },
            if *exception { " (#GP)" } else { "" }
        ),
        EventKind::KvmCpuid { function, index, rax, rbx, rcx, rdx, found, used_max_basic } => {
            format!(
                "func {function:x} idx {:x} rax {rax:x} rbx {rbx:x} rcx {rcx:x} rdx {rdx:x}, cpuid entry {}{}",
                index.unwrap_or(0),
                if found.unwrap_or(true) { "found" } else { "not found" },
                if used_max_basic.unwrap_or(false) { ", used max basic" } else { "" }
            )
        }
        EventKind::KvmMmuGetPage { page, created } => {
            format!("{} {}", page_text(page, kernel), if *created { "new" } else { "existing" })
        }
        EventKind::KvmMmuPrepareZapPage { page }
        | EventKind::KvmMmuSyncPage { page }
        | EventKind::KvmMmuUnsyncPage { page } => page_text(page, kernel),
        EventKind::KvmMmuPagetableWalk { addr, pferr } => {
            format!("addr {addr:x} pferr {pferr:x} {}", pferr_flags(*pferr))
        }
        EventKind::KvmMmuPagingElement { pte, level } => format!("pte {pte:x} level {level}"),
        EventKind::KvmMmuWalkerError { pferr } => {
            format!("pferr {pferr:x} {}", pferr_flags(*pferr))
        }
        EventKind::Lost { count } => match count {
            Some(n) => format!("[LOST {n} EVENTS]"),
            None => "[LOST EVENTS]".into(),
        },
        EventKind::KvmPmlFull { vcpu_id } => format!("vcpu {vcpu_id}: PML full"),
        EventKind::Irq(_) | EventKind::Mmio(_) | EventKind::Spte(_) => {
            super::text_devices::body(kind).unwrap_or_default()
        }
        EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Printk(_)
        | EventKind::QemuRunExit { .. }
        | EventKind::Segment { .. }
        | EventKind::Context(_) => other_body(kind.name(), &kind.kernel_fields()),
        EventKind::Other(o) => other_body(&o.name, &o.fields),
    }
}

/// `TRACE_EVENT_KVM_EXIT` (5.10+): `vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2
/// 0x%016llx intr_info 0x%08x error_code 0x%08x` and, 6.14+, ` requests 0x%016llx`.
fn exit_body(x: &ExitInfo) -> String {
    let mut s = String::new();
    if let Some(vcpu) = x.vcpu_id() {
        let _ = write!(s, "vcpu {vcpu} ");
    }
    let _ = write!(
        s,
        "reason {} rip 0x{:x} info1 0x{:016x} info2 0x{:016x}",
        reason_text(x.reason(), x.isa()),
        x.guest_rip().unwrap_or(0),
        x.info1().unwrap_or(0),
        x.info2().unwrap_or(0)
    );
    if let Some(intr) = x.intr_info() {
        let _ = write!(
            s,
            " intr_info 0x{:08x} error_code 0x{:08x}",
            intr.0,
            x.error_code().unwrap_or(0)
        );
    }
    if let Some(req) = x.requests() {
        let _ = write!(s, " requests 0x{req:016x}");
    }
    s
}

/// `kvm_print_exit_reason`: VMX prints the basic reason's name (or `0x%lx` via
/// `__print_symbolic`'s fallback), then a space and the names of the upper flag bits
/// (`__print_flags`, only FAILED_VMENTRY is named; leftovers print as hex).
fn reason_text(reason: ExitCode, isa: Option<Isa>) -> String {
    match (reason, isa) {
        (ExitCode::Vmx(_), _) | (ExitCode::Raw(_), Some(Isa::Vmx)) => {
            let raw = u32::try_from(reason.raw() & 0xffff_ffff).unwrap_or(0);
            let basic = raw & 0xffff;
            let mut s = match vmxray_events::codes::VmxBasicReason(
                u16::try_from(basic).unwrap_or(0),
            )
            .name()
            {
                Some(name) => name.to_owned(),
                None => format!("0x{basic:x}"),
            };
            let upper = raw & !0xffff;
            if upper != 0 {
                s.push(' ');
                let mut rest = upper;
                let mut first = true;
                if rest & 0x8000_0000 != 0 {
                    s.push_str("FAILED_VMENTRY");
                    rest &= !0x8000_0000;
                    first = false;
                }
                if rest != 0 {
                    if !first {
                        s.push(' ');
                    }
                    let _ = write!(s, "0x{rest:x}");
                }
            }
            s
        }
        (ExitCode::Svm(c), _) => match c.name() {
            Some(name) => name.to_owned(),
            None => format!("0x{:x}", c.0),
        },
        (ExitCode::Raw(raw), _) => format!("0x{raw:x}"),
    }
}

/// `kvm_entry`: 5.10–6.8 `vcpu %u, rip 0x%lx`; 6.9 adds `%s` (`[immediate exit]`); 6.14
/// `vcpu %u, rip 0x%lx intr_info 0x%08x error_code 0x%08x%s`.
fn entry_body(e: &Entry) -> String {
    let imm = if e.immediate_exit.unwrap_or(false) { "[immediate exit]" } else { "" };
    match (e.rip, e.intr_info) {
        (Some(rip), Some(intr)) => format!(
            "vcpu {}, rip 0x{rip:x} intr_info 0x{:08x} error_code 0x{:08x}{imm}",
            e.vcpu_id,
            intr.0,
            e.error_code.unwrap_or(0)
        ),
        (Some(rip), None) => format!("vcpu {}, rip 0x{rip:x}{imm}", e.vcpu_id),
        (None, _) => format!("vcpu {}", e.vcpu_id),
    }
}

/// `kvm_nested_vmenter` (6.1+): labels follow `isa` and `tdp_enabled`.
fn vmenter_body(n: &NestedVmenter) -> String {
    let vmx = n.isa != Some(Isa::Svm);
    let tdp = n.tdp_enabled.unwrap_or(false);
    format!(
        "rip: 0x{:016x} {}: 0x{:016x} nested_rip: 0x{:016x} int_ctl: 0x{:08x} event_inj: 0x{:08x} nested_{}={} {}: 0x{:016x}",
        n.rip,
        if vmx { "vmcs" } else { "vmcb" },
        n.vmcs,
        n.nested_rip,
        n.int_ctl,
        n.event_inj.0,
        if vmx { "ept" } else { "npt" },
        if tdp { "y" } else { "n" },
        if !tdp {
            "guest_cr3"
        } else if vmx {
            "nested_eptp"
        } else {
            "nested_cr3"
        },
        n.guest_pgd.unwrap_or(0)
    )
}

/// `kvm_nested_vmrun` (SVM, before 6.1): `rip: 0x%016llx vmcb: 0x%016llx nrip: 0x%016llx
/// int_ctl: 0x%08x event_inj: 0x%08x npt: %s`.
fn vmrun_body(n: &NestedVmenter) -> String {
    format!(
        "rip: 0x{:016x} vmcb: 0x{:016x} nrip: 0x{:016x} int_ctl: 0x{:08x} event_inj: 0x{:08x} npt: {}",
        n.rip,
        n.vmcs,
        n.nested_rip,
        n.int_ctl,
        n.event_inj.0,
        if n.tdp_enabled.unwrap_or(false) { "on" } else { "off" }
    )
}

/// `KVM_MMU_PAGE_PRINTK()`: `sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s`.
fn page_text(p: &MmuPage, kernel: KernelVersion) -> String {
    const ACCESS: [&str; 8] = ["---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"];
    let r: MmuPageRole = p.role;
    let bit4 = r.0 & 0x10 != 0;
    let bytes = if kernel.role_bit4_is_8_byte() == bit4 { 8 } else { 4 };
    format!(
        "sp gen {} gfn {:x} l{} {bytes}-byte q{}{} {}{} {}nxe {}ad root {} {}",
        p.mmu_valid_gen.unwrap_or(0),
        p.gfn,
        r.level(),
        r.quadrant(),
        if r.direct() { " direct" } else { "" },
        ACCESS[usize::from(r.access())],
        if r.invalid() { " invalid" } else { "" },
        if r.efer_nx() { "" } else { "!" },
        if r.ad_disabled() { "!" } else { "" },
        p.root_count,
        if p.unsync { "unsync" } else { "sync" }
    )
}

/// `__print_flags(pferr, "|", P W U PK SS SGX RSVD F)` in the table's order.
fn pferr_flags(pferr: u32) -> String {
    const FLAGS: [(u32, &str); 8] = [
        (1 << 0, "P"),
        (1 << 1, "W"),
        (1 << 2, "U"),
        (1 << 5, "PK"),
        (1 << 6, "SS"),
        (1 << 15, "SGX"),
        (1 << 3, "RSVD"),
        (1 << 4, "F"),
    ];
    let mut parts = Vec::new();
    let mut rest = pferr;
    for (bit, name) in FLAGS {
        if rest & bit != 0 {
            parts.push(name.to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("0x{rest:x}"));
    }
    parts.join("|")
}

/// `kvm_inj_exception`'s `__print_symbolic` table (`#DE`…`#SX`; vectors 2, 9, 15 and others
/// have no name and print in hex).
fn exception_name(vector: u8) -> String {
    let name = match vector {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        28 => "#HV",
        29 => "#VC",
        30 => "#SX",
        other => return format!("0x{other:x}"),
    };
    name.to_owned()
}

/// `kvm_userspace_exit`: `reason %s (%d)`; the kernel's table stops at KVM_EXIT_X86_WRMSR (30).
fn userspace_exit_body(reason: UserspaceExitReason, errno: i32) -> String {
    if errno < 0 {
        let what = if errno == -4 { "restart" } else { "error" };
        return format!("reason {what} ({})", -i64::from(errno));
    }
    let name = match reason.name() {
        Some(name) if reason.0 <= 30 => name.to_owned(),
        _ => format!("0x{:x}", reason.0),
    };
    format!("reason {name} ({})", reason.0)
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The untyped events the simulator emits, by their 6.18 print formats; any other event as
/// `name=value` pairs. (The interrupt-controller events are typed: `text_devices`.)
fn other_body(name: &str, f: &Fields) -> String {
    use vmxray_events::FieldLookup;
    let u = |n: &str| f.uint(n).unwrap_or(0);
    match name {
        "kvm_vcpu_wakeup" => format!(
            "{} time {} ns, polling {}",
            if u("waited") != 0 { "wait" } else { "poll" },
            u("ns"),
            if u("valid") != 0 { "valid" } else { "invalid" }
        ),
        "kvm_fpu" => (if u("load") != 0 { "load" } else { "unload" }).to_owned(),
        _ => {
            let mut s = String::new();
            for (i, (n, v)) in f.0.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                let _ = write!(s, "{n}={v}");
            }
            s
        }
    }
}
