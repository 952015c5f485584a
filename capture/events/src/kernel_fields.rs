//! The typed events back under the kernel's names ([`EventKind::kernel_fields`], the inverse of
//! [`crate::KnownEvent::decode`]), and the human decodings derived from them
//! ([`EventKind::decoded`]: names of codes, interruption info, exit qualifications, MMU
//! roles, instruction mnemonics, and the interrupt/MMIO/SPTE events in the kernel's wording). Renderers (`vmxray dump`, the TUI, `convert`) use these, so
//! that every output names and decodes a field the same way.

use std::borrow::Cow;
use std::fmt;

use crate::codes::{ExitCode, Isa};
use crate::event::{EventKind, ExitInfo, MmuPage, ROLE_KNOWN_FIELD};
use crate::fields::{FieldValue, Fields};

/// How the kernel prints a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Radix {
    /// Decimal.
    Dec,
    /// Hexadecimal with `0x`.
    Hex,
}

/// A field value borrowed from the typed event (so that rendering a line allocates nothing).
#[derive(Clone, Copy, Debug)]
pub enum Val<'a> {
    /// An unsigned integer (flags are 0 or 1).
    U64(u64),
    /// A signed integer.
    I64(i64),
    /// A string.
    Str(&'a str),
    /// A byte array.
    Bytes(&'a [u8]),
}

impl Val<'_> {
    /// The value as an owned [`FieldValue`].
    pub fn to_owned(self) -> FieldValue {
        match self {
            Val::U64(v) => FieldValue::U64(v),
            Val::I64(v) => FieldValue::I64(v),
            Val::Str(s) => FieldValue::Str(s.into()),
            Val::Bytes(b) => FieldValue::Bytes(b.into()),
        }
    }
}

/// A field with the kernel's name, its value and how to print it.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    /// The kernel's name.
    pub name: &'static str,
    /// The value.
    pub value: Val<'a>,
    /// How the kernel prints it.
    pub radix: Radix,
}

pub(crate) fn hex(name: &'static str, v: u64) -> Field<'static> {
    Field { name, value: Val::U64(v), radix: Radix::Hex }
}

pub(crate) fn dec(name: &'static str, v: u64) -> Field<'static> {
    Field { name, value: Val::U64(v), radix: Radix::Dec }
}

pub(crate) fn flag(name: &'static str, v: bool) -> Field<'static> {
    dec(name, u64::from(v))
}

/// Where [`typed_fields`] puts the fields, in order.
pub(crate) struct Sink<F>(F);

impl<'a, F: FnMut(Field<'a>)> Sink<F> {
    pub(crate) fn push(&mut self, f: Field<'a>) {
        (self.0)(f);
    }

    pub(crate) fn extend(&mut self, fields: impl IntoIterator<Item = Field<'a>>) {
        fields.into_iter().for_each(&mut self.0);
    }

    pub(crate) fn opt(&mut self, f: Option<Field<'a>>) {
        self.extend(f);
    }
}

/// Hands the typed event's fields to `f` under the kernel's names, in the kernel's order (the
/// inverse of [`crate::KnownEvent::decode`]; fields the layout lacked stay absent). Untyped events
/// give nothing here: see [`EventKind::untyped_fields`].
pub fn typed_fields<'a>(kind: &'a EventKind, f: impl FnMut(Field<'a>)) {
    let out = &mut Sink(f);
    match kind {
        EventKind::KvmExit(info) | EventKind::KvmNestedVmexit(info) => {
            exit_fields(out, info, "exit_reason", "info1", "info2", "intr_info", "error_code");
            out.opt(info.vcpu_id().map(|v| dec("vcpu_id", u64::from(v))));
            out.opt(info.requests().map(|v| hex("requests", v)));
        }
        EventKind::KvmNestedVmexitInject(info) => exit_fields(
            out,
            info,
            "exit_code",
            "exit_info1",
            "exit_info2",
            "exit_int_info",
            "exit_int_info_err",
        ),
        EventKind::KvmEntry(e) => {
            out.push(dec("vcpu_id", u64::from(e.vcpu_id)));
            out.opt(e.rip.map(|v| hex("rip", v)));
            out.opt(e.immediate_exit.map(|v| flag("immediate_exit", v)));
            out.opt(e.intr_info.map(|v| hex("intr_info", u64::from(v.0))));
            out.opt(e.error_code.map(|v| hex("error_code", u64::from(v))));
        }
        EventKind::KvmCr { write, cr, val } => {
            out.extend([flag("rw", *write), dec("cr", u64::from(*cr)), hex("val", *val)]);
        }
        EventKind::KvmNestedVmenter(v) => {
            out.extend([hex("rip", v.rip), hex("vmcb", v.vmcs), hex("nested_rip", v.nested_rip)]);
            out.extend([
                hex("int_ctl", u64::from(v.int_ctl)),
                hex("event_inj", u64::from(v.event_inj.0)),
            ]);
            out.opt(v.tdp_enabled.map(|t| flag("tdp_enabled", t)));
            out.opt(v.guest_pgd.map(|p| hex("guest_pgd", p)));
            out.opt(v.isa.map(|i| dec("isa", u64::from(i.raw()))));
        }
        EventKind::KvmNestedVmenterFailed { msg, err, kind: _ } => {
            out.push(Field { name: "msg", value: Val::Str(msg), radix: Radix::Dec });
            out.push(dec("err", u64::from(err.0)));
        }
        EventKind::KvmNestedIntrVmexit { rip } => out.push(hex("rip", *rip)),
        EventKind::KvmPageFault { vcpu_id, guest_rip, fault_address, error_code } => {
            out.opt(vcpu_id.map(|v| dec("vcpu_id", u64::from(v))));
            out.opt(guest_rip.map(|v| hex("guest_rip", v)));
            out.extend([hex("fault_address", *fault_address), hex("error_code", *error_code)]);
        }
        EventKind::KvmInjException { exception, has_error, error_code, reinjected } => {
            out.extend([dec("exception", u64::from(exception.0)), flag("has_error", *has_error)]);
            out.push(hex("error_code", u64::from(*error_code)));
            out.opt(reinjected.map(|r| flag("reinjected", r)));
        }
        EventKind::KvmInjVirq { vector, soft, reinjected } => {
            out.push(hex("vector", u64::from(*vector)));
            out.opt(soft.map(|s| flag("soft", s)));
            out.opt(reinjected.map(|r| flag("reinjected", r)));
        }
        EventKind::KvmUserspaceExit { reason, errno } => {
            out.push(dec("reason", u64::from(reason.0)));
            if let Some(e) = errno {
                out.push(Field {
                    name: "errno",
                    value: Val::I64(i64::from(*e)),
                    radix: Radix::Dec,
                });
            }
        }
        EventKind::KvmEmulateInsn { rip, csbase, insn, flags, failed } => {
            out.extend([hex("rip", *rip), hex("csbase", *csbase)]);
            out.push(dec("len", insn.as_slice().len() as u64));
            out.push(Field { name: "insn", value: Val::Bytes(insn.as_slice()), radix: Radix::Hex });
            out.extend([dec("flags", u64::from(*flags)), flag("failed", *failed)]);
        }
        EventKind::KvmSmmTransition { vcpu_id, smbase, entering } => {
            out.extend([dec("vcpu_id", u64::from(*vcpu_id)), hex("smbase", *smbase)]);
            out.push(flag("entering", *entering));
        }
        EventKind::KvmPio { write, port, size, count, val } => {
            out.extend([flag("rw", *write), hex("port", u64::from(*port))]);
            out.extend([dec("size", u64::from(*size)), dec("count", u64::from(*count))]);
            out.opt(val.map(|v| hex("val", u64::from(v))));
        }
        EventKind::KvmMsr { write, index, data, exception } => {
            out.extend([flag("write", *write), hex("ecx", u64::from(*index)), hex("data", *data)]);
            out.push(flag("exception", *exception));
        }
        EventKind::KvmCpuid { function, index, rax, rbx, rcx, rdx, found, used_max_basic } => {
            out.push(hex("function", u64::from(*function)));
            out.opt(index.map(|i| hex("index", u64::from(i))));
            out.extend([hex("rax", *rax), hex("rbx", *rbx), hex("rcx", *rcx), hex("rdx", *rdx)]);
            out.opt(found.map(|f| flag("found", f)));
            out.opt(used_max_basic.map(|f| flag("used_max_basic", f)));
        }
        EventKind::KvmMmuGetPage { page, created } => {
            page_fields(out, page);
            out.push(flag("created", *created));
        }
        EventKind::KvmMmuPrepareZapPage { page }
        | EventKind::KvmMmuSyncPage { page }
        | EventKind::KvmMmuUnsyncPage { page } => page_fields(out, page),
        EventKind::KvmMmuPagetableWalk { addr, pferr } => {
            out.extend([hex("addr", *addr), hex("pferr", u64::from(*pferr))]);
        }
        EventKind::KvmMmuPagingElement { pte, level } => {
            out.extend([hex("pte", *pte), dec("level", u64::from(*level))]);
        }
        EventKind::KvmMmuWalkerError { pferr } => out.push(hex("pferr", u64::from(*pferr))),
        EventKind::KvmPmlFull { vcpu_id } => out.push(dec("vcpu_id", u64::from(*vcpu_id))),
        EventKind::Irq(e) => e.kernel_fields(out),
        EventKind::Mmio(e) => e.kernel_fields(out),
        EventKind::Spte(e) => e.kernel_fields(out),
        EventKind::QemuRunExit { cpu_index, reason } => {
            out.extend([
                dec("cpu_index", u64::from(*cpu_index)),
                dec("reason", u64::from(reason.0)),
            ]);
        }
        EventKind::Lost { count } => out.opt(count.map(|c| dec("count", c))),
        // Not a tracepoint: vmxray's marker.
        EventKind::Segment { index, reason } => {
            out.push(dec("index", u64::from(*index)));
            out.push(Field { name: "reason", value: Val::Str(reason.name()), radix: Radix::Dec });
        }
        // Untyped events keep their own fields: see `EventKind::untyped_fields`.
        EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Context(_)
        | EventKind::Printk(_)
        | EventKind::Other(_) => {}
    }
}

fn exit_fields<'a>(
    out: &mut Sink<impl FnMut(Field<'a>)>,
    info: &ExitInfo,
    reason: &'static str,
    info1: &'static str,
    info2: &'static str,
    intr: &'static str,
    err: &'static str,
) {
    out.push(hex(reason, info.reason().raw()));
    if let Some(rip) = info.guest_rip() {
        out.push(hex("guest_rip", rip));
    }
    if let Some(isa) = info.isa() {
        out.push(dec("isa", u64::from(isa.raw())));
    }
    out.extend(info.info1().map(|v| hex(info1, v)));
    out.extend(info.info2().map(|v| hex(info2, v)));
    out.extend(info.intr_info().map(|v| hex(intr, u64::from(v.0))));
    out.extend(info.error_code().map(|v| hex(err, u64::from(v))));
}

fn page_fields<'a>(out: &mut Sink<impl FnMut(Field<'a>)>, page: &MmuPage) {
    out.extend(page.mmu_valid_gen.map(|g| dec("mmu_valid_gen", g)));
    out.extend([hex("gfn", page.gfn), hex("role", u64::from(page.role.0))]);
    out.extend([dec("root_count", u64::from(page.root_count)), flag("unsync", page.unsync)]);
    // Not a kernel field: present only when the input (a text rendering) did not determine
    // every role bit, so that decoding gives back the same `role_known`.
    if page.role_known != MmuPage::ROLE_ALL_KNOWN {
        out.push(hex(ROLE_KNOWN_FIELD, u64::from(page.role_known)));
    }
}

impl EventKind {
    /// Every field under the kernel's names: the inverse of [`crate::KnownEvent::decode`] for typed
    /// events, the kept fields for the others ([`EventKind::untyped_fields`]).
    pub fn kernel_fields(&self) -> Fields {
        if let Some(fields) = self.untyped_fields() {
            return fields.into_owned();
        }
        let mut fields = Fields::new();
        typed_fields(self, |f: Field<'_>| fields.push(f.name, f.value.to_owned()));
        fields
    }

    /// The fields of an event kept with its own fields ([`EventKind::Other`], vmxray's records:
    /// a printed record's print event, a merged record's `vmxray:vmcs_field` fields, a probe
    /// event's), `None` for the typed tracepoints.
    pub fn untyped_fields(&self) -> Option<Cow<'_, Fields>> {
        match self {
            Self::Other(o) => Some(Cow::Borrowed(&o.fields)),
            Self::VmcsField(v) => Some(match &v.source {
                Some(o) => Cow::Borrowed(&o.fields),
                None => Cow::Owned(v.record.to_fields()),
            }),
            Self::VmcsProbe(p) => Some(Cow::Borrowed(&p.source.fields)),
            Self::Identity(i) => Some(Cow::Borrowed(&i.source.fields)),
            Self::Context(c) => Some(Cow::Borrowed(&c.source.fields)),
            Self::Printk(p) => Some(Cow::Borrowed(&p.source.fields)),
            _ => None,
        }
    }

    /// Human decodings derived from the fields: names of codes, interruption info,
    /// CR-access qualifications, MMU roles.
    pub fn decoded(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        self.for_each_decoded(|name, value| out.push((name, value.to_string())));
        out
    }

    /// The decodings of [`EventKind::decoded`], handed to `f` one by one without building
    /// strings first.
    pub fn for_each_decoded(&self, mut f: impl FnMut(&'static str, &dyn fmt::Display)) {
        match self {
            Self::KvmExit(info)
            | Self::KvmNestedVmexit(info)
            | Self::KvmNestedVmexitInject(info) => {
                f("reason", &info.reason());
                if let Some(q) = info.qualification() {
                    f("qual", &q);
                }
                // On SVM `intr_info` is EXITINTINFO, the event being delivered: it is the
                // vectoring information below, not the exit's own interruption.
                if let Some(intr) = info
                    .intr_info()
                    .filter(|i| i.valid() && !matches!(info.reason(), ExitCode::Svm(_)))
                {
                    f("intr", &intr);
                }
                if let Some(v) = info.idt_vectoring() {
                    f("idt_vectoring", &v);
                }
            }
            Self::KvmEntry(e) => {
                if let Some(intr) = e.intr_info.filter(|i| i.valid()) {
                    f("inject", &intr);
                }
            }
            Self::KvmNestedVmenter(v) => {
                let label = match (v.isa, v.tdp_enabled) {
                    (_, Some(false)) => "guest_cr3",
                    (Some(Isa::Svm), Some(true)) => "nested_cr3",
                    (_, Some(true)) => "nested_eptp",
                    (_, None) => "guest_pgd",
                };
                if let Some(pgd) = v.guest_pgd {
                    f(label, &format_args!("{pgd:#x}"));
                }
                if v.is_evmcs() {
                    f("vmcs", &"evmcs");
                }
                if v.event_inj.valid() {
                    f("event_inj", &v.event_inj);
                }
            }
            Self::KvmNestedVmenterFailed { err, .. } if err.0 != 0 => {
                f("err", &err);
            }
            Self::KvmInjException { exception, .. } => f("exception", &exception),
            Self::KvmUserspaceExit { reason, .. } | Self::QemuRunExit { reason, .. } => {
                f("reason", &reason);
            }
            Self::Printk(p) => {
                if let Some(func) = &p.func {
                    f("func", func);
                }
                f("text", &p.text);
            }
            Self::KvmMmuGetPage { page, .. }
            | Self::KvmMmuPrepareZapPage { page }
            | Self::KvmMmuSyncPage { page }
            | Self::KvmMmuUnsyncPage { page } => f("role", &page.role),
            Self::KvmEmulateInsn { insn, .. } => {
                if let Some(m) = crate::insn::mnemonic(insn.as_slice()) {
                    f("insn", &m);
                }
            }
            Self::Irq(e) => e.for_each_decoded(&mut f),
            Self::Mmio(e) => e.for_each_decoded(&mut f),
            Self::Spte(e) => e.for_each_decoded(&mut f),
            _ => {}
        }
    }
}
