//! Event bodies → fields with the kernel's field names.
//!
//! A body is one of:
//! - a `name=value` list: `trace-cmd report -R` (`addr=1000 insn=ARRAY[ff, c0]`), ftrace's
//!   `fields` option (`gfn=0x2 (2) unsync=(0)`), or libtraceevent's `[FAILED TO PARSE] a=1 b=2`;
//! - the kernel's `TP_printk` rendering, in any of the generations listed in
//!   `shared/reference/nested-vmx-model.md` §1 (parsed back by hand for every typed event);
//! - trace-cmd's kvm plugin rendering (`plugin_kvm.c`), which replaces the kernel's for
//!   `kvm_exit`, `kvm_entry`, `kvm_emulate_insn`, the nested exits and the kvmmmu page events.
//!
//! `trace-cmd report -R` prints a field in bare hex (no `0x`) when the kernel's print format
//! converts it with a bare `%x`/`%llx` (`addr=1000` is 0x1000), so a digit-only value is read as
//! hex for exactly those fields of the typed events ([`bare_hex`]) and as decimal otherwise.
//! Values of untyped events are read as decimal unless they carry `0x` or a hex letter.

use vmxray_events::codes::{
    ExceptionVector, ExitCode, Isa, MmuPageRole, SvmExitCode, UserspaceExitReason,
    VmInstructionError, VmxBasicReason,
};
use vmxray_events::event::{KnownEvent, MmuPage, ROLE_KNOWN_FIELD};

use super::body_devices as devices;
use super::fields::{FieldBuf, Name, Val, eq_tiny, span};

/// What a body yielded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Fields for the typed decoder.
    Fields,
    /// The rendering omits a field the typed event needs (trace-cmd's plugin prints
    /// `kvm_mmu_prepare_zap_page` without its gfn): keep the event untyped, with what it has.
    Incomplete(&'static str),
}

/// Parses the body of a typed event. `Err` carries the renderings that were expected.
pub(crate) fn parse_known(
    known: KnownEvent,
    body: &str,
    out: &mut FieldBuf,
) -> Result<Parsed, &'static str> {
    if let Some(rest) = body.strip_prefix("[FAILED TO PARSE]") {
        return if parse_kv(body, rest.trim_start(), None, out) {
            Ok(Parsed::Fields)
        } else {
            Err("`name=value` fields after [FAILED TO PARSE]")
        };
    }
    let kv_allowed = known != KnownEvent::KvmNestedVmenterFailed || body.starts_with("msg=");
    if kv_allowed && starts_with_assignment(body) {
        return if parse_kv(body, body, Some(known), out) {
            devices::after_raw_fields(known, body, out);
            Ok(Parsed::Fields)
        } else {
            Err("`name=value` fields")
        };
    }
    let ok = match known {
        KnownEvent::KvmExit | KnownEvent::KvmNestedVmexit | KnownEvent::KvmNestedVmexitInject => {
            exit_family(known, body, out)
        }
        KnownEvent::KvmEntry => entry(body, out),
        KnownEvent::KvmCr => rw_reg(body, out, "cr_", "rw", "cr", "val", None),
        KnownEvent::KvmMsr => rw_reg(body, out, "msr_", "write", "ecx", "data", Some("exception")),
        KnownEvent::KvmPio => pio(body, out),
        KnownEvent::KvmCpuid => cpuid(body, out),
        KnownEvent::KvmPageFault => labels(
            body,
            out,
            &[
                ("vcpu", "vcpu_id", Radix::Dec),
                ("rip", "guest_rip", Radix::Hex),
                ("address", "fault_address", Radix::Hex),
                ("error_code", "error_code", Radix::Hex),
            ],
        ),
        KnownEvent::KvmInjException => inj_exception(body, out),
        KnownEvent::KvmInjVirq => inj_virq(body, out),
        KnownEvent::KvmUserspaceExit => userspace_exit(body, out),
        KnownEvent::KvmEmulateInsn => emulate_insn(body, out),
        KnownEvent::KvmSmmTransition => smm_transition(body, out),
        KnownEvent::KvmNestedVmenter | KnownEvent::KvmNestedVmrun => nested_vmenter(body, out),
        KnownEvent::KvmNestedVmenterFailed => vmenter_failed(body, out),
        KnownEvent::KvmNestedIntrVmexit => labels(body, out, &[("rip", "rip", Radix::Hex)]),
        KnownEvent::KvmMmuGetPage
        | KnownEvent::KvmMmuPrepareZapPage
        | KnownEvent::KvmMmuSyncPage
        | KnownEvent::KvmMmuUnsyncPage => {
            return match mmu_page(known, body, out) {
                Some(parsed) => Ok(parsed),
                None => Err(expected(known)),
            };
        }
        KnownEvent::KvmMmuPagetableWalk => {
            labels(body, out, &[("addr", "addr", Radix::Hex), ("pferr", "pferr", Radix::Hex)])
        }
        KnownEvent::KvmMmuPagingElement => {
            labels(body, out, &[("pte", "pte", Radix::Hex), ("level", "level", Radix::Dec)])
        }
        KnownEvent::KvmMmuWalkerError => labels(body, out, &[("pferr", "pferr", Radix::Hex)]),
        KnownEvent::KvmPmlFull => pml_full(body, out),
        KnownEvent::KvmSetIrq => devices::set_irq(body, out),
        KnownEvent::KvmIoapicSetIrq => devices::ioapic_set_irq(body, out),
        KnownEvent::KvmIoapicDelayedEoiInj => devices::ioapic_delayed_eoi_inj(body, out),
        KnownEvent::KvmMsiSetIrq => devices::msi_set_irq(body, out),
        KnownEvent::KvmPicSetIrq => devices::pic_set_irq(body, out),
        KnownEvent::KvmApic => devices::apic(body, out),
        KnownEvent::KvmApicAcceptIrq | KnownEvent::KvmApicvAcceptIrq => {
            devices::accept_irq(body, out)
        }
        KnownEvent::KvmApicIpi => devices::apic_ipi(body, out),
        KnownEvent::KvmEoi | KnownEvent::KvmPvEoi => devices::eoi(body, out),
        KnownEvent::KvmApicvInhibitChanged => devices::apicv_inhibit_changed(body, out),
        KnownEvent::KvmMmio => devices::mmio(body, out),
        KnownEvent::VcpuMatchMmio => devices::vcpu_match_mmio(body, out),
        KnownEvent::FastPageFault => devices::fast_page_fault(body, out),
        KnownEvent::KvmTdpMmuSpteChanged => devices::tdp_mmu_spte_changed(body, out),
        KnownEvent::KvmMmuSpteRequested => devices::spte_requested(body, out),
        KnownEvent::KvmMmuSetSpte => devices::set_spte(body, out),
        KnownEvent::QemuRunExit => qemu_run_exit(body, out),
    };
    if ok.is_some() { Ok(Parsed::Fields) } else { Err(expected(known)) }
}

/// What a typed event's text lacks that every kernel generation and trace-cmd's plugins print:
/// the record was cut (a mailer's hard wrap with its continuation lost, a paste cut short). The
/// fields the typed decoder takes as optional stay unknown; the record is counted as truncated
/// rather than read as whole. `None` for a complete record (or one whose short form is a real
/// rendering, like `kvm_entry: vcpu 0` before 5.10).
pub(crate) fn truncation(known: KnownEvent, body: &str, out: &FieldBuf) -> Option<&'static str> {
    // A cut leaves a prefix of the rendering: fields present after the missing ones mean a
    // rendering of its own (a patched kernel printing fewer fields), not a cut.
    let has_any = |names: &[&str]| names.iter().any(|n| out.has(body, n));
    const EXIT_INFO: &[&str] = &[
        "info1",
        "exit_info1",
        "info2",
        "exit_info2",
        "intr_info",
        "exit_int_info",
        "error_code",
        "exit_int_info_err",
    ];
    match known {
        KnownEvent::KvmExit | KnownEvent::KvmNestedVmexit => {
            if has_any(EXIT_INFO) {
                None
            } else if has_any(&["guest_rip", "rip"]) {
                Some("the exit information (info1, info2 …)")
            } else {
                Some("rip and the exit information")
            }
        }
        KnownEvent::KvmNestedVmexitInject => {
            (!has_any(EXIT_INFO)).then_some("the exit information (ext_inf1 …)")
        }
        // The kernel prints ` (MODE)` even without bytes, the plugin the bytes.
        KnownEvent::KvmEmulateInsn => (!has_any(&["flags", "insn"]))
            .then_some("the instruction bytes, mode and whether it failed"),
        KnownEvent::KvmSetIrq => {
            (!has_any(&["level", "irq_source_id"])).then_some("level and source")
        }
        KnownEvent::KvmNestedVmenter | KnownEvent::KvmNestedVmrun => {
            (!has_any(&["event_inj", "guest_pgd", "tdp_enabled"]))
                .then_some("event_inj and what follows it")
        }
        // `vcpu 0, rip 0x…`: the comma says more was printed.
        KnownEvent::KvmEntry => body.trim_end().ends_with(',').then_some("rip and what follows it"),
        _ => None,
    }
}

/// The renderings of each typed event, for error messages.
fn expected(known: KnownEvent) -> &'static str {
    match known {
        KnownEvent::KvmExit => {
            "`[vcpu N ]reason NAME rip 0x.. info1 0x.. info2 0x.. ...` or `reason NAME rip 0x.. info A B`"
        }
        KnownEvent::KvmNestedVmexit => {
            "the kvm_exit rendering, `rip: 0x.. reason: NAME ext_inf1: ...` or ` rip X reason NAME info1 X ...`"
        }
        KnownEvent::KvmNestedVmexitInject => {
            "`reason: NAME ext_inf1: 0x.. ext_inf2: 0x.. ext_int: 0x.. ext_int_err: 0x..`"
        }
        KnownEvent::KvmEntry => {
            "`vcpu N[, rip 0x..[ intr_info 0x.. error_code 0x..]][[immediate exit]]`"
        }
        KnownEvent::KvmCr => "`cr_read|cr_write N = 0x..`",
        KnownEvent::KvmMsr => "`msr_read|msr_write N = 0x..[ (#GP)]`",
        KnownEvent::KvmPio => "`pio_read|pio_write at 0x.. size N count N[ val 0x..]`",
        KnownEvent::KvmCpuid => {
            "`func X[ idx X] rax X rbx X rcx X rdx X[, cpuid entry found|not found]`"
        }
        KnownEvent::KvmPageFault => "`[vcpu N rip 0x.. ]address X error_code X`",
        KnownEvent::KvmInjException => "`#XX[ (0xERR)][ [reinjected]]`",
        KnownEvent::KvmInjVirq => "`IRQ|Soft/INTn 0xVEC[ [reinjected]]` or `irq N`",
        KnownEvent::KvmUserspaceExit => {
            "`reason KVM_EXIT_NAME (N)`, `reason restart (N)` or `reason error (N)`"
        }
        KnownEvent::KvmEmulateInsn => "`CS:RIP:BYTES (MODE)[ failed]` or `CS:RIP: BYTES[ FAIL]`",
        KnownEvent::KvmSmmTransition => "`vcpu N: entering|leaving SMM, smbase 0x..`",
        KnownEvent::KvmNestedVmenter | KnownEvent::KvmNestedVmrun => {
            "`rip: 0x.. vmcs|vmcb: 0x.. nested_rip: 0x.. int_ctl: 0x.. event_inj: 0x.. nested_ept=y|n guest_cr3|nested_eptp|nested_cr3: 0x..`"
        }
        KnownEvent::KvmNestedVmenterFailed => {
            "a message, optionally followed by a VM-instruction error name"
        }
        KnownEvent::KvmNestedIntrVmexit => "`rip: 0x..`",
        KnownEvent::KvmPmlFull => "`vcpu N: PML full`",
        KnownEvent::QemuRunExit => "`cpu_index N, reason N`",
        KnownEvent::KvmMmuGetPage
        | KnownEvent::KvmMmuPrepareZapPage
        | KnownEvent::KvmMmuSyncPage
        | KnownEvent::KvmMmuUnsyncPage => {
            "`sp gen N gfn X lN N-byte qN ACC[ invalid] [!]nxe [!]ad root N sync|unsync` or trace-cmd's `new|existing sp gfn X N qN ACC [!]pae [!]nxe [!]wp root N sync`"
        }
        KnownEvent::KvmMmuPagetableWalk => "`addr X pferr X FLAGS`",
        KnownEvent::KvmMmuPagingElement => "`pte X level N`",
        KnownEvent::KvmMmuWalkerError => "`pferr X FLAGS`",
        KnownEvent::KvmSetIrq => "`gsi N level N source N`",
        KnownEvent::KvmIoapicSetIrq => {
            "`pin N dst X vec N (MODE|physical|logical|edge|level[|masked])[ (coalesced)]`"
        }
        KnownEvent::KvmIoapicDelayedEoiInj => {
            "`dst X vec N (MODE|physical|logical|edge|level[|masked])`"
        }
        KnownEvent::KvmMsiSetIrq => "`dst X vec N (MODE|physical|logical|edge|level[|rh])`",
        KnownEvent::KvmPicSetIrq => "`chip N pin N (edge|level[|masked])[ (coalesced)]`",
        KnownEvent::KvmApic => "`apic_read|apic_write APIC_REG = 0x..`",
        KnownEvent::KvmApicAcceptIrq | KnownEvent::KvmApicvAcceptIrq => {
            "`apicid X vec N (MODE|edge|level)[ (coalesced)]`"
        }
        KnownEvent::KvmApicIpi => {
            "`dst X vec N (MODE|physical|logical|assert|de-assert|edge|level|SHORTHAND)`"
        }
        KnownEvent::KvmEoi | KnownEvent::KvmPvEoi => "`apicid X vector N`",
        KnownEvent::KvmApicvInhibitChanged => "`set|cleared reason=N, inhibits=0x..[ NAMES]`",
        KnownEvent::KvmMmio => "`mmio read|write|unsatisfied-read len N gpa 0x.. val 0x..`",
        KnownEvent::VcpuMatchMmio => "`gva 0x.. gpa 0x.. Read|Write GPA|GVA`",
        KnownEvent::FastPageFault => {
            "`vcpu N gva X error_code FLAGS sptep P old 0x.. new X spurious N fixed N`"
        }
        KnownEvent::KvmTdpMmuSpteChanged => "`as id N gfn X level N old_spte X new_spte X`",
        KnownEvent::KvmMmuSpteRequested => "`gfn X pfn X level N`",
        KnownEvent::KvmMmuSetSpte => "`gfn X spte X (rwx[u]) level N at X`",
    }
}

/// Parses the body of an untyped event: a `name=value` list when it starts with one.
pub(crate) fn parse_other(body: &str, out: &mut FieldBuf) -> bool {
    if let Some(rest) = body.strip_prefix("[FAILED TO PARSE]") {
        return parse_kv(body, rest.trim_start(), None, out);
    }
    if let Some(probed) = body.strip_prefix('(') {
        // A kprobe event: `(ffffffff81431493) vcpu=0xffff... nr=0xd`, the probed address first.
        // (The kprobe format's own name for the address is `__probe_ip`.)
        let Some((ip, rest)) = probed.split_once(") ") else { return false };
        let Some(ip) = hex_digits(ip).filter(|_| starts_with_assignment(rest)) else {
            return false;
        };
        out.items.push((Name::Static("__probe_ip"), Val::U64(ip)));
        return parse_kv(body, rest, None, out);
    }
    starts_with_assignment(body) && parse_kv(body, body, None, out)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `ident=` at the start of `s`; returns the identifier's length.
fn assignment_at(s: &[u8]) -> Option<usize> {
    if !s.first().copied().is_some_and(is_ident_start) {
        return None;
    }
    let len = s.iter().position(|&c| !is_ident(c))?;
    (s[len] == b'=').then_some(len)
}

fn starts_with_assignment(body: &str) -> bool {
    assignment_at(body.as_bytes()).is_some()
}

/// `name=value name=value ...` where a value runs to the next ` ident=` (values may hold
/// spaces: strings, `ARRAY[ff, c0]`, `0x1 (1)`).
fn parse_kv(body: &str, list: &str, known: Option<KnownEvent>, out: &mut FieldBuf) -> bool {
    let b = list.as_bytes();
    let Some(mut name_len) = assignment_at(b) else { return list.is_empty() };
    let mut start = 0;
    loop {
        let value_at = start + name_len + 1;
        let mut next = None;
        let mut search = value_at;
        while let Some(sp) = memchr::memchr(b' ', &b[search..]) {
            let at = search + sp + 1;
            if let Some(len) = assignment_at(&b[at..]) {
                next = Some((at, len));
                break;
            }
            search = at;
        }
        let value_end = next.map_or(b.len(), |(at, _)| at - 1);
        let name = &list[start..start + name_len];
        let value = list[value_at..value_end].trim();
        let raw_hex = known.is_some_and(|k| bare_hex(k, name));
        let Some((a, z)) = span(body, name) else { return false };
        push_value(out, body, Name::Span(a, z), value, raw_hex);
        match next {
            Some((at, len)) => {
                start = at;
                name_len = len;
            }
            None => return true,
        }
    }
}

fn push_value(out: &mut FieldBuf, body: &str, name: Name, value: &str, raw_hex: bool) {
    if let Some(inner) = value.strip_prefix("ARRAY[").and_then(|v| v.strip_suffix(']')) {
        let bytes = inner.split(',').map(str::trim).filter(|s| !s.is_empty());
        if bytes.clone().all(|s| hex(s).is_some_and(|v| v <= 0xff)) {
            out.bytes(name, bytes.filter_map(|s| hex(s).and_then(|v| u8::try_from(v).ok())));
            return;
        }
    }
    if value.starts_with('<') && value.ends_with('>') {
        // `<INVALID-SIZE>`, `<OVERFLOW>`: the value is not in the text.
        return;
    }
    let v = match number(value, raw_hex) {
        Some(v) => v,
        None => match span(body, value) {
            Some((a, z)) => Val::Str(a, z),
            None => return,
        },
    };
    out.items.push((name, v));
}

/// A numeric value in any of the raw-field renderings, or `None` for a string.
fn number(value: &str, raw_hex: bool) -> Option<Val> {
    // ftrace `fields`: `0x1f (31)`, `(1)`, `'A' (65)`, `sym+0x1/0x2 (-123)`.
    if let Some((inner, open)) = value.strip_suffix(')').and_then(|i| Some((i, i.rfind('(')?))) {
        let head = inner[..open].trim();
        if let Some(h) = head.strip_prefix("0x").and_then(hex_digits) {
            return Some(Val::U64(h));
        }
        if let Ok(d) = inner[open + 1..].parse::<i64>() {
            return Some(if d < 0 { Val::I64(d) } else { Val::U64(d.unsigned_abs()) });
        }
    }
    let v = value.trim_end_matches(',');
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        return hex_digits(h).map(Val::U64);
    }
    if let Some(neg) = v.strip_prefix('-') {
        if neg.bytes().all(|c| c.is_ascii_digit()) {
            return v.parse::<i64>().ok().map(Val::I64);
        }
        return None;
    }
    if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) {
        return if raw_hex { hex_digits(v) } else { v.parse::<u64>().ok() }.map(Val::U64);
    }
    if v.bytes().any(|c| c.is_ascii_alphabetic()) && v.len() <= 16 {
        // Bare hex with a letter (`addr=1a00` in `-R`) is hex whatever the field.
        if v.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return hex_digits(v).map(Val::U64);
        }
    }
    None
}

/// Fields that the kernel prints with a bare `%x`/`%lx`/`%llx`, which `trace-cmd report -R`
/// therefore prints in hex without `0x`.
fn bare_hex(known: KnownEvent, field: &str) -> bool {
    match known {
        KnownEvent::KvmExit | KnownEvent::KvmNestedVmexit => matches!(field, "info1" | "info2"),
        KnownEvent::KvmCr => field == "cr",
        KnownEvent::KvmMsr => field == "ecx",
        KnownEvent::KvmCpuid => {
            matches!(field, "function" | "index" | "rax" | "rbx" | "rcx" | "rdx")
        }
        KnownEvent::KvmPageFault => matches!(field, "fault_address" | "error_code"),
        KnownEvent::KvmEmulateInsn => matches!(field, "csbase" | "rip"),
        KnownEvent::KvmMmuPagetableWalk => matches!(field, "addr" | "pferr"),
        KnownEvent::KvmMmuPagingElement => field == "pte",
        KnownEvent::KvmMmuWalkerError => field == "pferr",
        KnownEvent::KvmApicAcceptIrq
        | KnownEvent::KvmApicvAcceptIrq
        | KnownEvent::KvmEoi
        | KnownEvent::KvmPvEoi => field == "apicid",
        KnownEvent::KvmApicIpi => field == "dest_id",
        KnownEvent::FastPageFault => matches!(field, "cr2_or_gpa" | "gva" | "new_spte" | "sptep"),
        KnownEvent::KvmTdpMmuSpteChanged => matches!(field, "gfn" | "old_spte" | "new_spte"),
        KnownEvent::KvmMmuSpteRequested => matches!(field, "gfn" | "pfn"),
        KnownEvent::KvmMmuSetSpte => matches!(field, "gfn" | "spte" | "sptep"),
        // Printed in decimal, with `0x`, or only through expressions (`e`, `address`,
        // `data`, `elcr`, `icr_low`), which `-R` prints in decimal.
        KnownEvent::KvmSetIrq
        | KnownEvent::KvmIoapicSetIrq
        | KnownEvent::KvmIoapicDelayedEoiInj
        | KnownEvent::KvmMsiSetIrq
        | KnownEvent::KvmPicSetIrq
        | KnownEvent::KvmApic
        | KnownEvent::KvmApicvInhibitChanged
        | KnownEvent::KvmMmio
        | KnownEvent::VcpuMatchMmio => false,
        KnownEvent::KvmEntry
        | KnownEvent::KvmNestedVmenter
        | KnownEvent::KvmNestedVmrun
        | KnownEvent::KvmNestedVmexitInject
        | KnownEvent::KvmNestedVmenterFailed
        | KnownEvent::KvmNestedIntrVmexit
        | KnownEvent::KvmInjException
        | KnownEvent::KvmInjVirq
        | KnownEvent::KvmUserspaceExit
        | KnownEvent::KvmSmmTransition
        | KnownEvent::KvmPio
        | KnownEvent::KvmMmuGetPage
        | KnownEvent::KvmMmuPrepareZapPage
        | KnownEvent::KvmMmuSyncPage
        | KnownEvent::KvmMmuUnsyncPage
        | KnownEvent::KvmPmlFull
        | KnownEvent::QemuRunExit => false,
    }
}

/// Hex digits only (no sign, no prefix), at most 64 bits.
fn hex_digits(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    // One pass, digit values from a table. Leading zeros are fine; a 17th significant digit
    // would shift out the top of a value that already fills 61+ bits.
    let mut value = 0u64;
    for c in s.bytes() {
        let digit = HEX_VALUE[usize::from(c)];
        if digit == NOT_HEX || value >> 60 != 0 {
            return None;
        }
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

const NOT_HEX: u8 = 0xff;

/// The value of each hex digit byte, [`NOT_HEX`] for other bytes.
static HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    // `at` indexes, `c` is the same value as a byte (no casts in a constant).
    let (mut at, mut c) = (0, 0u8);
    while at < 256 {
        table[at] = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => NOT_HEX,
        };
        at += 1;
        c = c.wrapping_add(1);
    }
    table
};

/// Hex with an optional `0x`.
pub(super) fn hex(s: &str) -> Option<u64> {
    hex_digits(s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s))
}

pub(super) fn dec(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    // One pass (a check, then `parse`, was two).
    let mut value = 0u64;
    for c in s.bytes() {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

#[derive(Clone, Copy)]
pub(super) enum Radix {
    Dec,
    Hex,
}

fn radix(r: Radix, s: &str) -> Option<u64> {
    match r {
        Radix::Dec => dec(s),
        Radix::Hex => hex(s),
    }
}

fn token_label(tok: &str) -> &str {
    let b = tok.as_bytes();
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b':' || b[end - 1] == b',') {
        end -= 1;
    }
    &tok[..end]
}

/// `label value label value ...`: every label of `spec` found is read; other tokens are
/// ignored. Fails when no label matched or a value does not parse.
pub(super) fn labels(
    body: &str,
    out: &mut FieldBuf,
    spec: &[(&str, &'static str, Radix)],
) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let mut found = false;
    while let Some(tok) = it.next() {
        let label = token_label(tok);
        if let Some(&(_, field, r)) = spec.iter().find(|(l, _, _)| eq_tiny(l, label)) {
            let v = it.next().map(token_label)?;
            out.u64(field, radix(r, v)?);
            found = true;
        }
    }
    found.then_some(())
}

/// Words that end a multi-word exit reason.
fn is_exit_label(tok: &str) -> bool {
    matches!(
        token_label(tok),
        "rip"
            | "info"
            | "info1"
            | "info2"
            | "ext_inf1"
            | "ext_inf2"
            | "ext_int"
            | "ext_int_err"
            | "int_info"
            | "int_info_err"
            | "intr_info"
            | "intr"
            | "error_code"
            | "requests"
            | "vcpu"
    )
}

/// `kvm_exit`, `kvm_nested_vmexit`, `kvm_nested_vmexit_inject` in every generation:
/// - ≤5.2 `reason %s rip 0x%lx info %llx %llx`; 5.3 `vcpu %u ` before it; ~5.8 reason flags;
/// - 5.10 `vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x
///   error_code 0x%08x`; 6.14 ` requests 0x%016llx` after it;
/// - ≤5.9 `kvm_nested_vmexit`: `rip: 0x%016llx reason: %s%s%s ext_inf1: 0x%016llx ext_inf2:
///   0x%016llx ext_int: 0x%08x ext_int_err: 0x%08x`; `kvm_nested_vmexit_inject` without `rip:`;
/// - trace-cmd's plugin: `reason %s rip 0x%llx[ func] info %llx %llx` (kvm_exit),
///   ` rip %llx[ func] reason %s info1 %llx info2 %llx int_info %llx int_info_err %llx`.
fn exit_family(known: KnownEvent, body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace().peekable();
    let (mut vcpu, mut reason, mut rip, mut info1, mut info2) = (None, None, None, None, None);
    let (mut intr, mut err, mut requests, mut old_names) = (None, None, None, false);
    let mut after_rip = false;
    while let Some(tok) = it.next() {
        let label = token_label(tok);
        let mut next_hex = || it.next().and_then(|t| hex(token_label(t)));
        match label {
            "vcpu" => vcpu = Some(dec(it.next().map(token_label)?)?),
            "reason" => {
                let first = it.next()?;
                let mut last = first;
                while let Some(&t) = it.peek() {
                    if is_exit_label(t) {
                        break;
                    }
                    last = t;
                    it.next();
                }
                let (a, _) = span(body, first)?;
                let (_, z) = span(body, last)?;
                reason = Some(exit_reason(body.get(a as usize..z as usize)?)?);
            }
            "rip" => {
                rip = Some(next_hex()?);
                after_rip = true;
                continue;
            }
            "info" => {
                info1 = Some(next_hex()?);
                info2 = Some(it.next().and_then(hex)?);
            }
            "info1" => info1 = Some(next_hex()?),
            "info2" => info2 = Some(next_hex()?),
            "ext_inf1" => (info1, old_names) = (Some(next_hex()?), true),
            "ext_inf2" => (info2, old_names) = (Some(next_hex()?), true),
            // `intr` after `info` in a libtraceevent plugin's rendering.
            "intr_info" | "intr" => intr = Some(next_hex()?),
            "ext_int" | "int_info" => (intr, old_names) = (Some(next_hex()?), true),
            "error_code" => err = Some(next_hex()?),
            "ext_int_err" | "int_info_err" => (err, old_names) = (Some(next_hex()?), true),
            "requests" => requests = Some(next_hex()?),
            // trace-cmd's plugin may print the guest function after the rip.
            _ if after_rip => {}
            _ => return None,
        }
        after_rip = false;
    }
    let (code, isa) = reason?;
    let old = known == KnownEvent::KvmNestedVmexitInject || old_names;
    let name = |new: &'static str, old_name: &'static str| if old { old_name } else { new };
    out.u64(name("exit_reason", "exit_code"), code);
    if let Some(isa) = isa {
        out.u64("isa", u64::from(isa.raw()));
    }
    if let Some(v) = rip {
        out.u64(name("guest_rip", "rip"), v);
    }
    for (v, new, old_name) in [
        (info1, "info1", "exit_info1"),
        (info2, "info2", "exit_info2"),
        (intr, "intr_info", "exit_int_info"),
        (err, "error_code", "exit_int_info_err"),
    ] {
        if let Some(v) = v {
            out.u64(name(new, old_name), v);
        }
    }
    if let Some(v) = vcpu {
        out.u64("vcpu_id", v);
    }
    if let Some(v) = requests {
        out.u64("requests", v);
    }
    Some(())
}

/// An exit reason as printed: a VMX name with flag names (`INVALID_STATE FAILED_VMENTRY`), an
/// SVM name (`npf`, `PF excp`), a number `__print_symbolic` could not name (`0x4e`), or the
/// plugin's `UNKNOWN (78)` / `EXIT_NPF`.
pub(crate) fn exit_reason(text: &str) -> Option<(u64, Option<Isa>)> {
    match ExitCode::from_name(text) {
        Some(ExitCode::Vmx(r)) => return Some((u64::from(r.0), Some(Isa::Vmx))),
        Some(ExitCode::Svm(c)) => return Some((c.0, Some(Isa::Svm))),
        Some(ExitCode::Raw(r)) => return Some((r, None)),
        None => {}
    }
    if let Some(n) = text.strip_prefix("UNKNOWN (").and_then(|t| t.strip_suffix(')')) {
        return Some((dec(n)?, None));
    }
    if let Some(svm) = text.strip_prefix("EXIT_") {
        return plugin_svm_reason(svm).map(|c| (c, Some(Isa::Svm)));
    }
    let mut words = text.split_ascii_whitespace();
    let first = words.next()?;
    let (mut raw, mut vmx) = match VmxBasicReason::from_name_any(first) {
        Some(basic) => (u64::from(basic.0), true),
        None => (hex(first).filter(|_| first.starts_with("0x"))?, false),
    };
    for flag in words {
        match flag {
            "FAILED_VMENTRY" => raw |= 0x8000_0000,
            other => raw |= hex(other).filter(|_| other.starts_with("0x"))?,
        }
        vmx = true;
    }
    Some((raw, vmx.then_some(Isa::Vmx)))
}

/// trace-cmd's plugin names SVM exits `EXIT_<UAPI NAME>`; map them onto the kernel's names.
fn plugin_svm_reason(name: &str) -> Option<u64> {
    let kernel = match name {
        "INTR" => "interrupt".to_owned(),
        "IOIO" => "io".to_owned(),
        "VMMCALL" => "hypercall".to_owned(),
        "ERR" => "invalid_guest_state".to_owned(),
        "TR_READ" => "read_rt".to_owned(),
        "TR_WRITE" => "write_rt".to_owned(),
        "MWAIT_COND" => return Some(0x8c),
        _ => {
            if let Some(exc) = name.strip_prefix("EXCP_") {
                format!("{exc} excp")
            } else if let Some(table) = name.strip_suffix("_READ") {
                format!("read_{}", table.to_ascii_lowercase())
            } else if let Some(table) = name.strip_suffix("_WRITE").filter(|t| t.ends_with("TR")) {
                format!("write_{}", table.to_ascii_lowercase())
            } else {
                name.to_ascii_lowercase()
            }
        }
    };
    SvmExitCode::from_name(&kernel).map(|c| c.0)
}

/// `kvm_entry`: `vcpu %u` (≤5.9), `vcpu %u, rip 0x%lx` (5.10), `...%s` with `[immediate exit]`
/// (6.9), `vcpu %u, rip 0x%lx intr_info 0x%08x error_code 0x%08x%s` (6.14); trace-cmd's plugin
/// ` vcpu %u rip 0x%llx[ func]`.
fn entry(body: &str, out: &mut FieldBuf) -> Option<()> {
    let immediate = body.contains("[immediate exit]");
    let mut it = body.split_ascii_whitespace();
    let (mut vcpu, mut after_rip) = (None, false);
    let mut intr_seen = false;
    while let Some(tok) = it.next() {
        match token_label(tok) {
            "vcpu" => vcpu = Some(dec(before_bracket(it.next()).map(token_label)?)?),
            "rip" => {
                out.u64("rip", hex(before_bracket(it.next())?)?);
                after_rip = true;
                continue;
            }
            "intr_info" => {
                out.u64("intr_info", hex(before_bracket(it.next())?)?);
                intr_seen = true;
            }
            "error_code" => out.u64("error_code", hex(before_bracket(it.next())?)?),
            "exit]" => {}
            t if t.starts_with("[immediate") => {}
            _ if after_rip => {}
            _ => return None,
        }
        after_rip = false;
    }
    out.u64("vcpu_id", vcpu?);
    // The flag exists from 6.9; only the 6.14 print (with intr_info) proves its absence.
    if immediate || intr_seen {
        out.flag("immediate_exit", immediate);
    }
    Some(())
}

fn before_bracket(t: Option<&str>) -> Option<&str> {
    t.map(|t| t.split('[').next().unwrap_or(t))
}

/// `cr_%s %x = 0x%lx` and `msr_%s %x = 0x%llx%s` (` (#GP)`).
fn rw_reg(
    body: &str,
    out: &mut FieldBuf,
    prefix: &str,
    rw: &'static str,
    reg: &'static str,
    val: &'static str,
    exception: Option<&'static str>,
) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let write = match it.next()?.strip_prefix(prefix)? {
        "read" => false,
        "write" => true,
        _ => return None,
    };
    let r = hex(it.next()?)?;
    if it.next()? != "=" {
        return None;
    }
    let v = hex(it.next()?)?;
    let gp = match it.next() {
        None => false,
        Some("(#GP)") if exception.is_some() => true,
        Some(_) => return None,
    };
    out.flag(rw, write);
    out.u64(reg, r);
    out.u64(val, v);
    if let Some(name) = exception {
        out.flag(name, gp);
    }
    Some(())
}

/// `pio_%s at 0x%x size %d count %d val 0x%x %s` (older kernels: no `val`).
fn pio(body: &str, out: &mut FieldBuf) -> Option<()> {
    let (first, rest) = body.split_once(' ')?;
    let write = match first {
        "pio_read" => false,
        "pio_write" => true,
        _ => return None,
    };
    out.flag("rw", write);
    labels(
        rest,
        out,
        &[
            ("at", "port", Radix::Hex),
            ("size", "size", Radix::Dec),
            ("count", "count", Radix::Dec),
            ("val", "val", Radix::Hex),
        ],
    )?;
    (out.has(body, "port") && out.has(body, "size")).then_some(())
}

/// `func %x idx %x rax %lx rbx %lx rcx %lx rdx %lx, cpuid entry %s%s` (older: no `idx`, no
/// `found`).
fn cpuid(body: &str, out: &mut FieldBuf) -> Option<()> {
    labels(
        body,
        out,
        &[
            ("func", "function", Radix::Hex),
            ("idx", "index", Radix::Hex),
            ("rax", "rax", Radix::Hex),
            ("rbx", "rbx", Radix::Hex),
            ("rcx", "rcx", Radix::Hex),
            ("rdx", "rdx", Radix::Hex),
        ],
    )?;
    if body.contains("cpuid entry") {
        out.flag("found", !body.contains("not found"));
        out.flag("used_max_basic", body.contains("used max basic"));
    }
    Some(())
}

/// ≥5.19 `%s%s%s%s%s`: `#PF (0x2) [reinjected]`, `#UD`; older `%s (0x%x)` (the code always
/// printed, so `has_error` and `reinjected` are then unknown).
fn inj_exception(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let name = it.next()?;
    let vector = match ExceptionVector::from_name(name) {
        Some(v) => u64::from(v.0),
        None => hex(name).filter(|_| name.starts_with("0x"))?,
    };
    let mut code = None;
    let mut reinjected = false;
    for tok in it {
        if tok == "[reinjected]" {
            reinjected = true;
        } else if let Some(c) = tok.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
            code = Some(hex(c)?);
        } else {
            return None;
        }
    }
    out.u64("exception", vector);
    out.flag("has_error", code.is_some());
    out.u64("error_code", code.unwrap_or(0));
    if reinjected || code.is_none() {
        out.flag("reinjected", reinjected);
    }
    Some(())
}

/// `%s 0x%x%s` (`IRQ 0x20`, `Soft/INTn 0x80 [reinjected]`) or the older `irq %u`.
fn inj_virq(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let kind = it.next()?;
    let value = it.next()?;
    match kind {
        "irq" => out.u64("irq", dec(value)?),
        "IRQ" | "Soft/INTn" => {
            out.u64("vector", hex(value)?);
            out.flag("soft", kind != "IRQ");
            let reinjected = match it.next() {
                None => false,
                Some("[reinjected]") => true,
                Some(_) => return None,
            };
            out.flag("reinjected", reinjected);
        }
        _ => return None,
    }
    Some(())
}

/// `reason %s (%d)`: a `KVM_EXIT_*` name with `errno` ≥ 0 (0 in practice), or `restart` /
/// `error` with the negated errno. The exit reason is not printed in the latter case; it is
/// reported as `KVM_EXIT_UNKNOWN` (0).
fn userspace_exit(body: &str, out: &mut FieldBuf) -> Option<()> {
    let rest = body.strip_prefix("reason ")?.trim();
    let (name, number) = match rest.rsplit_once(" (") {
        Some((n, num)) => (n, Some(dec(num.strip_suffix(')')?)?)),
        None => (rest, None),
    };
    match name {
        "restart" | "error" => {
            let errno = i64::try_from(number?).ok()?;
            out.u64("reason", 0);
            out.items.push((Name::Static("errno"), Val::I64(-errno)));
        }
        _ => {
            let reason = match (UserspaceExitReason::from_name(name), number) {
                (_, Some(n)) => n,
                (Some(r), None) => u64::from(r.0),
                (None, None) => return None,
            };
            out.u64("reason", reason);
            if number.is_some() {
                out.u64("errno", 0);
            }
        }
    }
    Some(())
}

/// Kernel `%x:%llx:%s (%s)%s` (`0:1000:ff c0 (prot64)`, ` failed`); trace-cmd's plugin
/// `%llx:%llx[ func]: %s%s` (`0:1000: ff c0`, ` FAIL`; disassembly instead of bytes when built
/// with udis86, and no mode).
/// The `(MODE)[ failed]` ending of the kernel's `kvm_emulate_insn` rendering: the bytes before
/// it (possibly none), the mode flags and `failed`; None for another rendering.
fn mode_suffix(rest: &str) -> Option<(&str, u64, bool)> {
    let open = rest.rfind('(')?;
    let close = open + rest[open..].find(')')?;
    let flags = match &rest[open + 1..close] {
        "real" => 0,
        "prot16" => 1,
        "vm16" => 3,
        "prot32" => 5,
        "prot64" => 9,
        other => hex(other).filter(|_| other.starts_with("0x"))?,
    };
    let failed = match rest[close + 1..].trim() {
        "" => false,
        "failed" => true,
        _ => return None,
    };
    Some((rest[..open].trim(), flags, failed))
}

fn emulate_insn(body: &str, out: &mut FieldBuf) -> Option<()> {
    let (cs, rest) = body.split_once(':')?;
    let (rip_text, rest) = rest.split_once(':')?;
    let rip_tok = rip_text.split_ascii_whitespace().next()?;
    out.u64("csbase", hex(cs)?);
    out.u64("rip", hex(rip_tok)?);
    let (bytes, failed) = if let Some((bytes, flags, failed)) = mode_suffix(rest) {
        // The kernel's print fmt: `BYTES (MODE)[ failed]`, or ` (MODE)[ failed]` with no bytes
        // when KVM could not fetch the instruction.
        out.u64("flags", flags);
        (bytes, failed)
    } else if rest.starts_with(' ') || rest.is_empty() {
        // Plugin rendering.
        let text = rest.trim();
        if text == "FAIL" {
            ("", true)
        } else if let Some(t) = text.strip_suffix(" FAIL") {
            (t, true)
        } else {
            (text, false)
        }
    } else {
        return None;
    };
    // `ff c0 e6`: two hex digits per byte, one space between bytes.
    let b = bytes.as_bytes();
    let is_bytes = (b.len() + 1) % 3 == 0
        && b.chunks(3).all(|c| {
            c[0].is_ascii_hexdigit()
                && c[1].is_ascii_hexdigit()
                && c.get(2).is_none_or(|&s| s == b' ')
        });
    if is_bytes && !b.is_empty() {
        let n = (b.len() + 1) / 3;
        out.u64("len", u64::try_from(n).ok()?);
        let nibble = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c.wrapping_sub(b'A').wrapping_add(10) & 0xf,
        };
        out.bytes(Name::Static("insn"), b.chunks(3).map(|c| (nibble(c[0]) << 4) | nibble(c[1])));
    } else if bytes.is_empty() {
        out.u64("len", 0);
    }
    out.flag("failed", failed);
    Some(())
}

/// `vcpu %u: %s SMM, smbase 0x%llx`.
fn smm_transition(body: &str, out: &mut FieldBuf) -> Option<()> {
    let rest = body.strip_prefix("vcpu ")?;
    let (vcpu, rest) = rest.split_once(": ")?;
    let (dir, smbase) = rest.split_once(" SMM, smbase ")?;
    out.u64("vcpu_id", dec(vcpu)?);
    out.flag(
        "entering",
        match dir {
            "entering" => true,
            "leaving" => false,
            _ => return None,
        },
    );
    out.u64("smbase", hex(smbase.trim())?);
    Some(())
}

/// `kvm_pml_full`: `vcpu N: PML full`.
fn pml_full(body: &str, out: &mut FieldBuf) -> Option<()> {
    let vcpu = body.strip_prefix("vcpu ")?.strip_suffix(": PML full")?;
    out.u64("vcpu_id", dec(vcpu)?);
    Some(())
}

/// QEMU's `kvm_run_exit` trace event: `cpu_index %d, reason %d` (the `KVM_EXIT_*` number).
fn qemu_run_exit(body: &str, out: &mut FieldBuf) -> Option<()> {
    let rest = body.strip_prefix("cpu_index ")?;
    let (cpu, reason) = rest.split_once(", reason ")?;
    out.u64("cpu_index", dec(cpu.trim())?);
    out.u64("reason", dec(reason.trim())?);
    Some(())
}

/// `kvm_nested_vmenter` (6.1+: labels `vmcs`/`vmcb`, `nested_ept`/`nested_npt` as `: on|off` or
/// `=y|n`, then `guest_pgd:` or `guest_cr3:`/`nested_eptp:`/`nested_cr3:`) and the older SVM
/// `kvm_nested_vmrun` (`vmcb: nrip: ... npt: on|off`).
fn nested_vmenter(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let mut isa = None;
    while let Some(tok) = it.next() {
        // `nested_ept=y`: the value is glued to the label.
        let (label, glued) = match tok.split_once('=') {
            Some((l, v)) => (l, Some(v)),
            None => (token_label(tok), None),
        };
        let mut value = || glued.or_else(|| it.next()).map(token_label);
        match label {
            "rip" => out.u64("rip", hex(value()?)?),
            "vmcs" | "vmcb" => {
                out.u64("vmcb", hex(value()?)?);
                isa = Some(if label == "vmcs" { Isa::Vmx } else { Isa::Svm });
            }
            "nested_rip" | "nrip" => out.u64("nested_rip", hex(value()?)?),
            "int_ctl" => out.u64("int_ctl", hex(value()?)?),
            "event_inj" => out.u64("event_inj", hex(value()?)?),
            "npt" | "nested_ept" | "nested_npt" => {
                let on = match value()? {
                    "y" | "on" => true,
                    "n" | "off" => false,
                    _ => return None,
                };
                out.flag("tdp_enabled", on);
                if label == "nested_ept" {
                    isa = Some(Isa::Vmx);
                }
            }
            "guest_pgd" | "guest_cr3" | "nested_eptp" | "nested_cr3" => {
                out.u64("guest_pgd", hex(value()?)?);
            }
            // `guest_cr3` wrapped by hand at its underscore (`... guest` / `cr3: 0x...`).
            "guest" => match value()? {
                "cr3" | "pgd" => out.u64("guest_pgd", hex(value()?)?),
                _ => return None,
            },
            _ => return None,
        }
    }
    if let Some(isa) = isa {
        out.u64("isa", u64::from(isa.raw()));
    }
    Some(())
}

/// `%s%s`: the message, then the `VMX_VMENTER_INSTRUCTION_ERRORS` name when `err` ≠ 0.
fn vmenter_failed(body: &str, out: &mut FieldBuf) -> Option<()> {
    let (msg, err) = match body.rsplit_once(' ') {
        Some((head, last)) => match VmInstructionError::from_name(last) {
            Some(e) => (&body[..head.len() + 1], u64::from(e.0)),
            None if head.ends_with("error:") && last.starts_with("0x") => {
                (&body[..head.len() + 1], hex(last)?)
            }
            None => (body, 0),
        },
        None => match VmInstructionError::from_name(body) {
            Some(e) => ("", u64::from(e.0)),
            None => (body, 0),
        },
    };
    out.str("msg", body, msg);
    out.u64("err", err);
    Some(())
}

/// The kvmmmu shadow-page events, kernel and plugin renderings; the role word is rebuilt from
/// what the text determines (other bits are 0, and the pseudo-field
/// [`vmxray_events::event::ROLE_KNOWN_FIELD`] says which bits are known — see
/// [`vmxray_events::MmuPage::role_known`]):
/// - kernel ≥5.18 `sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s` (+ ` new`
///   / ` existing` for get_page): level, has_4_byte_gpte, quadrant, direct, access, invalid,
///   efer_nx, ad_disabled — not cr0_wp, smep/smap, guest_mode, passthrough, smm;
/// - older kernels print ` pae` (8-byte gptes) after the level, or no `gen`;
/// - trace-cmd's plugin, with the pre-2019 layout: `new|existing sp gfn %llx ` (get_page only)
///   then `%u q%u%s %s%s %spae %snxe %swp%s%s%s root %u sync|unsync`: it prints raw bits 0–15
///   (bit 4 as `pae`) and whether bits 24–31 are set (` smm`), never bits 16–23; `WORD: %08x`
///   when the file's endianness differs.
fn mmu_page(known: KnownEvent, body: &str, out: &mut FieldBuf) -> Option<Parsed> {
    let mut it = body.split_ascii_whitespace().peekable();
    let (mut level, mut byte4, mut pae, mut plugin) = (None, None, None::<bool>, false);
    // The plugin of old trace-cmds: `%u/%u` (level/guest levels) and `[!]pge`.
    let mut old_plugin = false;
    let (mut role, mut word, mut gfn, mut root, mut unsync, mut created) =
        (0u32, None, None, None, None, None);
    while let Some(tok) = it.next() {
        match tok {
            "sp" => {}
            "new" | "existing" => created = Some(tok == "new"),
            "gen" => out.u64("mmu_valid_gen", dec(it.next()?)?),
            "gfn" => gfn = Some(hex(it.next()?)?),
            "WORD:" => word = Some(u32::try_from(hex(it.next()?)?).ok()?),
            "root" => root = Some(dec(it.next()?)?),
            "sync" | "unsync" => unsync = Some(tok == "unsync"),
            "direct" => role |= 1 << 7,
            "invalid" => role |= 1 << 11,
            "nxe" => role |= 1 << 12,
            "!nxe" => {}
            "ad" => {}
            "!ad" => role |= 1 << 16,
            "pae" => pae = Some(true),
            "!pae" => pae = Some(false),
            "wp" | "!wp" => {
                plugin = true;
                if tok == "wp" {
                    role |= 1 << 13;
                }
            }
            "smep" => role |= 1 << 14,
            "smap" => role |= 1 << 15,
            "smm" => role |= 1 << 24,
            "pge" | "!pge" => old_plugin = true,
            _ => {
                if let Some(q) = tok.strip_prefix('q') {
                    role |= (u32::try_from(dec(q)?).ok()? & 3) << 5;
                } else if let Some(l) = tok.strip_prefix('l') {
                    level = Some(dec(l)?);
                } else if let Some(n) = tok.strip_suffix("-byte") {
                    byte4 = Some(dec(n)? == 4);
                } else if let Some(acc) = MmuPageRole::ACCESS_NAMES.iter().position(|a| *a == tok) {
                    role |= u32::try_from(acc).ok()? << 8;
                } else if level.is_none() && dec(tok).is_some() {
                    level = dec(tok);
                } else if let Some((l, guest_levels)) = tok.split_once('/')
                    && level.is_none()
                {
                    // Two guest levels: 32-bit paging, 4-byte gptes.
                    level = Some(dec(l)?);
                    byte4 = Some(dec(guest_levels)? == 2);
                    old_plugin = true;
                } else {
                    return None;
                }
            }
        }
    }
    let role_known = match (word, plugin, old_plugin) {
        (Some(_), _, _) => MmuPage::ROLE_ALL_KNOWN,
        (None, true, _) => MmuPage::ROLE_KNOWN_PLUGIN,
        // Level, guest levels, quadrant, direct, access, invalid, nxe; no A/D bit.
        (None, false, true) => MmuPage::ROLE_KNOWN_KERNEL_PRINT & !(1 << 16),
        (None, false, false) => MmuPage::ROLE_KNOWN_KERNEL_PRINT,
    };
    if role_known != MmuPage::ROLE_ALL_KNOWN {
        out.u64(ROLE_KNOWN_FIELD, u64::from(role_known));
    }
    let role = match word {
        Some(w) => w,
        None => {
            role |= u32::try_from(level?).ok()? & 0xf;
            // Bit 4 in the 6.x layout is has_4_byte_gpte. The plugin prints the raw bit as
            // `pae`; old kernels printed ` pae` for 8-byte gptes (cr4_pae=1).
            let bit4 = match (byte4, plugin, pae) {
                (Some(four), _, _) => four,
                (None, true, p) => p.unwrap_or(false),
                (None, false, p) => !p.unwrap_or(false),
            };
            role | (u32::from(bit4) << 4)
        }
    };
    out.u64("role", u64::from(role));
    out.u64("root_count", root?);
    out.flag("unsync", unsync?);
    if let Some(c) = created {
        out.flag("created", c);
    } else if known == KnownEvent::KvmMmuGetPage {
        return None;
    }
    match gfn {
        Some(g) => {
            out.u64("gfn", g);
            Some(Parsed::Fields)
        }
        None => Some(Parsed::Incomplete("no gfn in trace-cmd's kvm plugin rendering")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_take_any_number_of_leading_zeros_and_at_most_16_others() {
        assert_eq!(hex_digits("0"), Some(0));
        assert_eq!(hex_digits("fF"), Some(0xff));
        assert_eq!(hex_digits("000000000000000000001a"), Some(0x1a));
        assert_eq!(hex_digits("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(hex_digits("1ffffffffffffffff"), None);
        assert_eq!(hex_digits(""), None);
        assert_eq!(hex_digits("12g"), None);
        assert_eq!(hex_digits("0x12"), None);
        assert_eq!(hex("0x12"), Some(0x12));
        assert_eq!(hex("0X0"), Some(0));
        assert_eq!(dec("0042"), Some(42));
        assert_eq!(dec("18446744073709551615"), Some(u64::MAX));
        assert_eq!(dec("18446744073709551616"), None);
        assert_eq!(dec("+1"), None);
        assert_eq!(dec(""), None);
    }
}
