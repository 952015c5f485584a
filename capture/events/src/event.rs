//! The typed event record every reader produces.
//!
//! One [`Event`] per tracepoint hit: when (in the trace clock's units), where (CPU), who (pid and
//! comm of the thread that hit it) and what ([`EventKind`]). KVM's vocabulary is typed, one
//! variant per tracepoint, so that later stages match on variants rather than strings; every
//! other tracepoint is kept as [`EventKind::Other`] with all of its fields. Fields that a
//! tracepoint gained over kernel versions are `Option`s: `None` means "this kernel's layout does
//! not have it", never zero.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::codes::{
    ExceptionVector, ExitCode, ExitReason, IntrInfo, Isa, MmuPageRole, SvmExitCode,
    UserspaceExitReason, VmInstructionError,
};
use crate::context::{ContextEvent, ContextHit};
use crate::fields::{FieldLookup, Fields};
use crate::identity::ThreadIdentity;
use crate::irq::IrqEvent;
use crate::mmio::MmioEvent;
use crate::spte::SpteEvent;
use crate::vmcs::probe::{self, ProbeEvent};
use crate::vmcs::record::{self, FieldRecord};
use crate::vmcs::{RECORD_EVENT, RECORD_SYSTEM};

/// A thread's command name, shared between the events of that thread. One pointer wide (the
/// name lives behind it), so that an event stays within its size budget.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm(Arc<Box<str>>);

impl Comm {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Comm {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Self {
        Self(Arc::new(name.into()))
    }
}

impl From<String> for Comm {
    fn from(name: String) -> Self {
        Self(Arc::new(name.into_boxed_str()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One trace event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Timestamp in the trace clock's units (nanoseconds for ns clocks; the reader says which clock).
    pub ts: u64,
    /// The CPU whose buffer recorded the event.
    pub cpu: u32,
    /// The pid (kernel tid) of the thread that hit the tracepoint; 0 is the idle task.
    pub pid: i32,
    /// The thread's process (tgid), when the input says it (ftrace's `record-tgid` column,
    /// perf's pid/tid); for a VMM's vCPU thread, the VM.
    pub tgid: Option<i32>,
    /// The thread's comm, when the input says it.
    pub comm: Option<Comm>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The [`Event::ts`] of an event whose input does not say when it happened: a line of
    /// text pasted without its timestamp column (ftrace's `context-info` off, or an excerpt
    /// whose columns were cut away). Such an event's place in the stream is its position in
    /// the input; consumers must test [`Event::time`] before doing arithmetic with `ts`
    /// (latencies, time ranges, durations) and print it as unknown.
    pub const TS_UNKNOWN: u64 = u64::MAX;

    /// The timestamp, `None` when the input did not say it ([`Event::TS_UNKNOWN`]).
    pub fn time(&self) -> Option<u64> {
        (self.ts != Self::TS_UNKNOWN).then_some(self.ts)
    }

    /// The tracepoint's system (`kvm`, `kvmmmu`, or the system of an [`EventKind::Other`]).
    pub fn system(&self) -> &str {
        self.kind.system()
    }

    /// The tracepoint's bare name (`kvm_exit`).
    pub fn name(&self) -> &str {
        self.kind.name()
    }

    /// The vCPU id the event itself carries (`vcpu_id` field), if any. Events without one are
    /// attributed to a vCPU by thread in the replay model.
    pub fn vcpu(&self) -> Option<u32> {
        self.kind.vcpu_id()
    }
}

/// The exit information shared by `kvm_exit`, `kvm_nested_vmexit` and
/// `kvm_nested_vmexit_inject` (which use the same `TRACE_EVENT_KVM_EXIT` fields since 5.10).
///
/// On VMX: `info1` is the exit qualification, `info2` the IDT-vectoring information, `intr_info`
/// `VM_EXIT_INTR_INFO` and `error_code` its error code. On SVM: `exit_info_1`, `exit_info_2`,
/// `exit_int_info`, `exit_int_info_err`.
///
/// Fields a layout generation lacks read as `None`. They are stored as values plus a presence
/// mask, not as `Option`s, because this is the largest payload of [`EventKind`] and so sets
/// the size of every event (eight `Option`s made it 112 bytes; it is 56): readers move
/// millions of events per second. Build one from [`ExitFields`]; read fields through the
/// accessors or [`ExitInfo::fields`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    isa: Option<Isa>,
    /// The exit reason as its raw integer and which [`ExitCode`] variant holds it (`REASON_*`):
    /// 9 bytes where the enum takes 16.
    reason_raw: u64,
    reason_kind: u8,
    /// Which of the optional fields below are present (`HAS_*` bits); absent ones hold 0.
    present: u8,
    guest_rip: u64,
    info1: u64,
    info2: u64,
    requests: u64,
    intr_info: IntrInfo,
    error_code: u32,
    vcpu_id: u32,
}

/// [`ExitInfo`] with every field spelled out: what readers fill and what
/// [`ExitInfo::fields`] gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitFields {
    /// The exit reason / exit code.
    pub reason: ExitCode,
    /// The `isa` field (1 VMX, 2 SVM), when the layout has it.
    pub isa: Option<Isa>,
    /// The guest RIP at the exit (`guest_rip`; `rip` in the ≤5.9 nested layout).
    pub guest_rip: Option<u64>,
    /// Exit qualification (VMX) / `exit_info_1` (SVM).
    pub info1: Option<u64>,
    /// IDT-vectoring info (VMX) / `exit_info_2` (SVM).
    pub info2: Option<u64>,
    /// Exit interruption information (5.10+, or the nested layouts).
    pub intr_info: Option<IntrInfo>,
    /// Exit interruption error code.
    pub error_code: Option<u32>,
    /// The vCPU (≥5.3 for `kvm_exit`).
    pub vcpu_id: Option<u32>,
    /// `vcpu->requests` at the exit (6.14+).
    pub requests: Option<u64>,
}

impl ExitInfo {
    const HAS_GUEST_RIP: u8 = 1 << 0;
    const HAS_INFO1: u8 = 1 << 1;
    const HAS_INFO2: u8 = 1 << 2;
    const HAS_REQUESTS: u8 = 1 << 3;
    const HAS_INTR_INFO: u8 = 1 << 4;
    const HAS_ERROR_CODE: u8 = 1 << 5;
    const HAS_VCPU_ID: u8 = 1 << 6;
    const REASON_VMX: u8 = 0;
    const REASON_SVM: u8 = 1;
    const REASON_RAW: u8 = 2;

    /// The `isa` field (1 VMX, 2 SVM), when the layout has it.
    pub fn isa(&self) -> Option<Isa> {
        self.isa
    }

    /// The exit reason / exit code.
    #[inline]
    pub fn reason(&self) -> ExitCode {
        let raw = self.reason_raw;
        match self.reason_kind {
            Self::REASON_VMX => {
                u32::try_from(raw).map_or(ExitCode::Raw(raw), |r| ExitCode::Vmx(ExitReason(r)))
            }
            Self::REASON_SVM => ExitCode::Svm(SvmExitCode(raw)),
            _ => ExitCode::Raw(raw),
        }
    }

    #[inline]
    fn get<T>(&self, bit: u8, value: T) -> Option<T> {
        (self.present & bit != 0).then_some(value)
    }

    /// The guest RIP at the exit (`guest_rip`; `rip` in the ≤5.9 nested layout).
    #[inline]
    pub fn guest_rip(&self) -> Option<u64> {
        self.get(Self::HAS_GUEST_RIP, self.guest_rip)
    }

    /// Exit qualification (VMX) / `exit_info_1` (SVM).
    #[inline]
    pub fn info1(&self) -> Option<u64> {
        self.get(Self::HAS_INFO1, self.info1)
    }

    /// IDT-vectoring info (VMX) / `exit_info_2` (SVM).
    #[inline]
    pub fn info2(&self) -> Option<u64> {
        self.get(Self::HAS_INFO2, self.info2)
    }

    /// Exit interruption information (5.10+, or the nested layouts).
    #[inline]
    pub fn intr_info(&self) -> Option<IntrInfo> {
        self.get(Self::HAS_INTR_INFO, self.intr_info)
    }

    /// Exit interruption error code.
    #[inline]
    pub fn error_code(&self) -> Option<u32> {
        self.get(Self::HAS_ERROR_CODE, self.error_code)
    }

    /// The vCPU (≥5.3 for `kvm_exit`).
    #[inline]
    pub fn vcpu_id(&self) -> Option<u32> {
        self.get(Self::HAS_VCPU_ID, self.vcpu_id)
    }

    /// `vcpu->requests` at the exit (6.14+).
    pub fn requests(&self) -> Option<u64> {
        self.get(Self::HAS_REQUESTS, self.requests)
    }

    /// Every field spelled out.
    pub fn fields(&self) -> ExitFields {
        ExitFields {
            reason: self.reason(),
            isa: self.isa,
            guest_rip: self.guest_rip(),
            info1: self.info1(),
            info2: self.info2(),
            intr_info: self.intr_info(),
            error_code: self.error_code(),
            vcpu_id: self.vcpu_id(),
            requests: self.requests(),
        }
    }
}

impl From<ExitFields> for ExitInfo {
    #[inline]
    fn from(f: ExitFields) -> Self {
        let has = |present: bool, bit: u8| if present { bit } else { 0 };
        let reason_kind = match f.reason {
            ExitCode::Vmx(_) => Self::REASON_VMX,
            ExitCode::Svm(_) => Self::REASON_SVM,
            ExitCode::Raw(_) => Self::REASON_RAW,
        };
        Self {
            isa: f.isa,
            reason_raw: f.reason.raw(),
            reason_kind,
            present: has(f.guest_rip.is_some(), Self::HAS_GUEST_RIP)
                | has(f.info1.is_some(), Self::HAS_INFO1)
                | has(f.info2.is_some(), Self::HAS_INFO2)
                | has(f.requests.is_some(), Self::HAS_REQUESTS)
                | has(f.intr_info.is_some(), Self::HAS_INTR_INFO)
                | has(f.error_code.is_some(), Self::HAS_ERROR_CODE)
                | has(f.vcpu_id.is_some(), Self::HAS_VCPU_ID),
            guest_rip: f.guest_rip.unwrap_or(0),
            info1: f.info1.unwrap_or(0),
            info2: f.info2.unwrap_or(0),
            requests: f.requests.unwrap_or(0),
            intr_info: f.intr_info.unwrap_or(IntrInfo(0)),
            error_code: f.error_code.unwrap_or(0),
            vcpu_id: f.vcpu_id.unwrap_or(0),
        }
    }
}

impl From<ExitInfo> for ExitFields {
    fn from(info: ExitInfo) -> Self {
        info.fields()
    }
}

impl fmt::Debug for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.fields();
        f.debug_struct("ExitInfo")
            .field("reason", &e.reason)
            .field("isa", &e.isa)
            .field("guest_rip", &e.guest_rip)
            .field("info1", &e.info1)
            .field("info2", &e.info2)
            .field("intr_info", &e.intr_info)
            .field("error_code", &e.error_code)
            .field("vcpu_id", &e.vcpu_id)
            .field("requests", &e.requests)
            .finish()
    }
}

impl Serialize for ExitInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let e = self.fields();
        let mut st = s.serialize_struct("ExitInfo", 9)?;
        st.serialize_field("reason", &e.reason)?;
        st.serialize_field("isa", &e.isa)?;
        st.serialize_field("guest_rip", &e.guest_rip)?;
        st.serialize_field("info1", &e.info1)?;
        st.serialize_field("info2", &e.info2)?;
        st.serialize_field("intr_info", &e.intr_info)?;
        st.serialize_field("error_code", &e.error_code)?;
        st.serialize_field("vcpu_id", &e.vcpu_id)?;
        st.serialize_field("requests", &e.requests)?;
        st.end()
    }
}

/// `kvm_entry`: hardware is about to run the current level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The vCPU.
    pub vcpu_id: u32,
    /// RIP at entry (5.10+).
    pub rip: Option<u64>,
    /// Entry forced to exit immediately (6.9+).
    pub immediate_exit: Option<bool>,
    /// The event injected on this entry (6.14+).
    pub intr_info: Option<IntrInfo>,
    /// Its error code (6.14+).
    pub error_code: Option<u32>,
}

/// `kvm_nested_vmenter` (6.1+; VMX and SVM) and its SVM-only predecessor `kvm_nested_vmrun`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NestedVmenter {
    /// L1's RIP at VMLAUNCH/VMRESUME/VMRUN (not yet advanced).
    pub rip: u64,
    /// vmcs12 / vmcb12 GPA; all ones with eVMCS.
    pub vmcs: u64,
    /// vmcs12 GUEST_RIP: where L2 will run.
    pub nested_rip: u64,
    /// `guest_intr_status` (VMX) / `int_ctl` (SVM).
    pub int_ctl: u32,
    /// The event vmcs12 asks to inject on entry.
    pub event_inj: IntrInfo,
    /// L1 enabled nested EPT/NPT for L2.
    pub tdp_enabled: Option<bool>,
    /// vmcs12 EPTP when `tdp_enabled`, else vmcs12 GUEST_CR3 (6.1+).
    pub guest_pgd: Option<u64>,
    /// VMX or SVM (6.1+; `kvm_nested_vmrun` is SVM).
    pub isa: Option<Isa>,
}

impl NestedVmenter {
    /// The vmcs12 GUEST_CR3 this entry loads, when nested EPT is off and the layout has it.
    pub fn guest_cr3(&self) -> Option<u64> {
        match self.tdp_enabled {
            Some(false) => self.guest_pgd,
            Some(true) | None => None,
        }
    }

    /// The EPTP (or nested CR3 on SVM) this entry uses, when nested TDP is on.
    pub fn nested_tdp_root(&self) -> Option<u64> {
        match self.tdp_enabled {
            Some(true) => self.guest_pgd,
            Some(false) | None => None,
        }
    }

    /// True when L1 uses an enlightened VMCS (the vmcs field is all ones).
    pub fn is_evmcs(&self) -> bool {
        self.vmcs == u64::MAX
    }
}

/// Fields shared by the kvmmmu shadow-page events (`KVM_MMU_PAGE_FIELDS`).
///
/// `role` is the raw role word when the input carries it (binary readers, `-R`/`fields`
/// text, the plugin's `WORD:`), but the kernel's text rendering (`KVM_MMU_PAGE_PRINTK`,
/// mmutrace.h) prints only some role bits — never `guest_mode`, `smm`, `cr0_wp`,
/// `smep/smap_andnot_wp` or `passthrough` — and trace-cmd's plugin only bits 0–15 and whether
/// `smm` is set. `role_known` says which bits of `role` the input determined (a set bit =
/// known; unknown bits of `role` are 0 and mean nothing). Read role fields that a rendering may
/// omit through the `Option` accessors ([`MmuPage::guest_mode`], [`MmuPage::smm`], …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MmuPage {
    /// `mmu_valid_gen`.
    pub mmu_valid_gen: Option<u64>,
    /// The guest frame this page shadows (CR3 >> 12 for a 4/5-level root; 0 for direct roots).
    pub gfn: u64,
    /// The page's role word (bits outside `role_known` are 0).
    pub role: MmuPageRole,
    /// Which bits of `role` the input determined ([`MmuPage::ROLE_ALL_KNOWN`] for the raw
    /// word).
    pub role_known: u32,
    /// Root references (sampled before the increment in `kvm_mmu_get_page`).
    pub root_count: u32,
    /// The page is unsync.
    pub unsync: bool,
}

impl MmuPage {
    /// Every role bit known: the input carried the raw role word.
    pub const ROLE_ALL_KNOWN: u32 = u32::MAX;

    /// The kernel's page print (`KVM_MMU_PAGE_PRINTK`, every generation: ` pae` before 5.18,
    /// `%u-byte` since): level, bit 4, quadrant, direct, access, invalid, efer_nx, ad_disabled.
    pub const ROLE_KNOWN_KERNEL_PRINT: u32 = 0x0000_000f
        | MmuPageRole::BIT4
        | 0x0000_0060
        | MmuPageRole::DIRECT
        | 0x0000_0700
        | MmuPageRole::INVALID
        | MmuPageRole::EFER_NX
        | MmuPageRole::AD_DISABLED;

    /// trace-cmd's kvm plugin (`kvm_mmu_print_role`, pre-2019 layout): raw bits 0–15 and
    /// whether bits 24–31 (`smm`) are non-zero; never bits 16–23 (ad_disabled, guest_mode,
    /// passthrough).
    pub const ROLE_KNOWN_PLUGIN: u32 = 0x0000_ffff | MmuPageRole::SMM_MASK;

    /// A page whose raw role word is known.
    pub fn with_role(mmu_valid_gen: Option<u64>, gfn: u64, role: MmuPageRole) -> Self {
        Self {
            mmu_valid_gen,
            gfn,
            role,
            role_known: Self::ROLE_ALL_KNOWN,
            root_count: 0,
            unsync: false,
        }
    }

    /// True when every bit of `mask` is known.
    pub fn knows(&self, mask: u32) -> bool {
        self.role_known & mask == mask
    }

    /// `role.guest_mode` (bit 17), when the input determined it.
    pub fn guest_mode(&self) -> Option<bool> {
        self.knows(MmuPageRole::GUEST_MODE).then(|| self.role.guest_mode())
    }

    /// `role.smm` (bits 24–31), when the input determined it.
    pub fn smm(&self) -> Option<u8> {
        self.knows(MmuPageRole::SMM_MASK).then(|| self.role.smm())
    }

    /// `role.direct` (bit 7), when the input determined it (every rendering does).
    pub fn direct(&self) -> Option<bool> {
        self.knows(MmuPageRole::DIRECT).then(|| self.role.direct())
    }

    /// `role.ad_disabled` (bit 16), when the input determined it.
    pub fn ad_disabled(&self) -> Option<bool> {
        self.knows(MmuPageRole::AD_DISABLED).then(|| self.role.ad_disabled())
    }

    /// `role.has_4_byte_gpte` (bit 4 in the 6.x layout), when the input determined it.
    pub fn has_4_byte_gpte(&self) -> Option<bool> {
        self.knows(MmuPageRole::BIT4).then(|| self.role.has_4_byte_gpte())
    }
}

/// Instruction bytes from `kvm_emulate_insn` (at most 15).
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InsnBytes {
    len: u8,
    bytes: [u8; 15],
}

impl InsnBytes {
    /// The first `len` (≤ 15) bytes of `bytes`.
    pub fn new(bytes: &[u8], len: usize) -> Self {
        let len = len.min(15).min(bytes.len());
        let mut out = [0; 15];
        out[..len].copy_from_slice(&bytes[..len]);
        Self { len: u8::try_from(len).unwrap_or(15), bytes: out }
    }

    /// The instruction bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for InsnBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An explicit VMCS field record in the stream ([`crate::vmcs::record`]): a record merged
/// from a `--fields` file (`vmxray:vmcs_field`), or a `trace_printk`/`ftrace:print` line whose
/// text is a record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmcsFieldEvent {
    /// The record.
    pub record: FieldRecord,
    /// The print event it was read from, kept so that it renders as the input showed it;
    /// `None` for a record merged from a file.
    pub source: Option<OtherEvent>,
}

/// A thread's identity written by `vmxray record` ([`crate::identity`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdentityEvent {
    /// What the line says.
    pub identity: ThreadIdentity,
    /// The print event it was read from.
    pub source: OtherEvent,
}

/// A `trace_printk` / `trace_marker` line: `bprint`, `bputs`, `print` (`ftrace:print`),
/// trace-cmd's `tracing_mark_write`, or a print whose function name a developer made up
/// (`<hack>: Set DRs, DR6 = 0xffff0ff1`). Developers add such prints where a tracepoint lacks
/// a field, so their text is often the decisive evidence of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PrintkEvent {
    /// The function that printed, when the rendering names it (`bprint:  dump_vmcs: ...` in
    /// `trace-cmd report`, or the `<name>` an ftrace line shows in the event column).
    pub func: Option<Box<str>>,
    /// The message, without the function and a trailing newline.
    pub text: Box<str>,
    /// The print event as read, with all of its fields.
    pub source: OtherEvent,
}

impl PrintkEvent {
    /// The print an untyped event is, if it is one: a print tracepoint with a text
    /// ([`OtherEvent::print_text`]), or an event named `<...>` (ftrace prints a
    /// `trace_printk` with its caller in the event column; a made-up caller keeps its
    /// brackets).
    pub fn from_other(other: OtherEvent) -> Result<Self, OtherEvent> {
        let angle =
            other.name.len() > 2 && other.name.starts_with('<') && other.name.ends_with('>');
        let text = if angle {
            ["text", "buf", "msg"]
                .iter()
                .find_map(|n| other.fields.get(n).and_then(crate::FieldValue::as_str))
                .map(|t| t.trim_end_matches(['\n', '\0']))
        } else {
            other.print_text()
        };
        let Some(text) = text else { return Err(other) };
        let (func, text) = if angle {
            (Some(other.name.to_string().into_boxed_str()), text.trim())
        } else {
            match split_print_func(text) {
                // trace-cmd renders a trace_marker write as `tracing_mark_write: text`.
                Some(("tracing_mark_write", rest)) => (None, rest),
                Some((func, rest)) => (Some(func.into()), rest),
                None => (None, text.trim()),
            }
        };
        let text = text.into();
        Ok(Self { func, text, source: other })
    }
}

/// `func: message` at the start of a print's text: `func` a C identifier, possibly with a
/// compiler suffix (`vmx_dump_sel.constprop.0`).
fn split_print_func(text: &str) -> Option<(&str, &str)> {
    let (func, rest) = text.trim_start().split_once(':')?;
    let b = func.as_bytes();
    let ident = !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.'));
    (ident && (rest.is_empty() || rest.starts_with(' '))).then(|| (func, rest.trim()))
}

/// Why a reader started a new segment (another capture pasted into the same file) at an
/// [`EventKind::Segment`] marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentReason {
    /// The time went backwards (beyond the tolerance of per-CPU interleaving).
    TimeBack,
    /// An event identical to one already read (same time, thread and text): a line pasted
    /// again.
    RepeatedEvent,
    /// A tool's header (`cpus=N`, `# tracer:`) again after events.
    ToolHeader,
    /// A separator line (`=====`) between events.
    Separator,
    /// After lines of prose, events of threads the segment never showed.
    NewThreads,
    /// After lines of prose, a jump forward in time of more than the segmenter's limit.
    TimeJump,
}

impl SegmentReason {
    /// Every reason.
    pub const ALL: [Self; 6] = [
        Self::TimeBack,
        Self::RepeatedEvent,
        Self::ToolHeader,
        Self::Separator,
        Self::NewThreads,
        Self::TimeJump,
    ];

    /// The reason as printed (`time_back`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::TimeBack => "time_back",
            Self::RepeatedEvent => "repeated_event",
            Self::ToolHeader => "tool_header",
            Self::Separator => "separator",
            Self::NewThreads => "new_threads",
            Self::TimeJump => "time_jump",
        }
    }

    /// Parses [`SegmentReason::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for SegmentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event of the `vmcs` profile's dynamic probes ([`crate::vmcs::probe`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeHit {
    /// What the probe says.
    pub probe: ProbeEvent,
    /// The event with all of its fields (group `vmxray_<pid>`, the probe's name).
    pub source: OtherEvent,
}

/// Which of KVM's three sources of a failed nested VM-entry `kvm_nested_vmenter_failed` reports
/// (the message tells them apart; see the nested-VMX reference §1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmFailKind {
    /// A consistency check of KVM's (`CC()`: the message is the failed condition): the entry
    /// never reached hardware.
    Check,
    /// KVM's early hardware check (`nested_early_check`): the entry reached hardware, which
    /// refused it before loading any L2 state.
    EarlyHardware,
    /// A VM-Fail from hardware at the real entry of vmcs02 (`hardware VM-instruction error`):
    /// a late VM-Fail, after L2 state was loaded.
    LateHardware,
}

impl VmFailKind {
    /// The kind a `kvm_nested_vmenter_failed` message names.
    pub fn of_message(msg: &str) -> Self {
        if msg.starts_with("hardware VM-instruction error") {
            Self::LateHardware
        } else if msg.starts_with("early hardware check") {
            Self::EarlyHardware
        } else {
            Self::Check
        }
    }
}

/// A tracepoint the vocabulary does not type, with all of its fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OtherEvent {
    /// Its system (`kvm`, `sched`, ...); empty when the input does not say it.
    pub system: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
    /// Every field the input provided.
    pub fields: Fields,
}

impl OtherEvent {
    /// True when every event of an untyped tracepoint of `system` with these fields becomes a
    /// plain [`EventKind::Other`] that names no vCPU: a KVM tracepoint (`kvm`, `kvmmmu`) the
    /// vocabulary does not type, without a field that [`EventKind::untyped`] or the attribution
    /// reads (`vcpu_id`, or a print text's `buf`, `fmt`, `msg`, `text`). A consumer that reads
    /// no field of `Other` events may count these by name alone.
    pub fn is_plain_kvm<'a>(system: &str, field_names: impl IntoIterator<Item = &'a str>) -> bool {
        matches!(system, "kvm" | "kvmmmu")
            && field_names
                .into_iter()
                .all(|n| !matches!(n, "vcpu_id" | "buf" | "fmt" | "msg" | "text"))
    }

    /// The text of a `trace_printk` / `trace_marker` event (`ftrace:print`, `bprint`, `bputs`,
    /// trace-cmd's `tracing_mark_write`, or any untyped event with a string `buf` or `fmt`),
    /// without its trailing newline.
    pub fn print_text(&self) -> Option<&str> {
        let is_print = matches!(&*self.name, "print" | "bprint" | "bputs" | "tracing_mark_write");
        if !is_print && self.fields.get("buf").is_none() && self.fields.get("fmt").is_none() {
            return None;
        }
        ["buf", "fmt", "msg", "text"]
            .iter()
            .find_map(|n| self.fields.get(n).and_then(crate::FieldValue::as_str))
            .map(|t| t.trim_end_matches(['\n', '\0']))
    }
}

/// What an event says: one variant per KVM tracepoint, plus markers and the catch-all.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EventKind {
    /// `kvm:kvm_exit`: a hardware VM-exit.
    KvmExit(ExitInfo),
    /// `kvm:kvm_entry`: about to enter the guest.
    KvmEntry(Entry),
    /// `kvm:kvm_cr`: a CR access that L0 handled.
    KvmCr { write: bool, cr: u32, val: u64 },
    /// `kvm:kvm_nested_vmenter` (or `kvm_nested_vmrun`).
    KvmNestedVmenter(NestedVmenter),
    /// `kvm:kvm_nested_vmexit`: a hardware exit while L2 runs (repeats the `kvm_exit`).
    KvmNestedVmexit(ExitInfo),
    /// `kvm:kvm_nested_vmexit_inject`: L1 now sees a VM-exit.
    KvmNestedVmexitInject(ExitInfo),
    /// `kvm:kvm_nested_vmenter_failed`: a nested VM-entry failed (`kind` from the message).
    KvmNestedVmenterFailed { msg: Box<str>, err: VmInstructionError, kind: VmFailKind },
    /// `kvm:kvm_nested_intr_vmexit` (SVM).
    KvmNestedIntrVmexit { rip: u64 },
    /// `kvm:kvm_page_fault`.
    KvmPageFault {
        vcpu_id: Option<u32>,
        guest_rip: Option<u64>,
        fault_address: u64,
        error_code: u64,
    },
    /// `kvm:kvm_inj_exception`.
    KvmInjException {
        exception: ExceptionVector,
        has_error: bool,
        error_code: u32,
        reinjected: Option<bool>,
    },
    /// `kvm:kvm_inj_virq`.
    KvmInjVirq { vector: u32, soft: Option<bool>, reinjected: Option<bool> },
    /// `kvm:kvm_userspace_exit`.
    KvmUserspaceExit { reason: UserspaceExitReason, errno: Option<i32> },
    /// `kvm:kvm_emulate_insn`.
    KvmEmulateInsn { rip: u64, csbase: u64, insn: InsnBytes, flags: u8, failed: bool },
    /// `kvm:kvm_smm_transition`.
    KvmSmmTransition { vcpu_id: u32, smbase: u64, entering: bool },
    /// `kvm:kvm_pio`.
    KvmPio { write: bool, port: u32, size: u32, count: u32, val: Option<u32> },
    /// `kvm:kvm_msr`.
    KvmMsr { write: bool, index: u32, data: u64, exception: bool },
    /// `kvm:kvm_cpuid`.
    KvmCpuid {
        function: u32,
        index: Option<u32>,
        rax: u64,
        rbx: u64,
        rcx: u64,
        rdx: u64,
        found: Option<bool>,
        used_max_basic: Option<bool>,
    },
    /// `kvmmmu:kvm_mmu_get_page` (`created`: a new page, else an existing one).
    KvmMmuGetPage { page: MmuPage, created: bool },
    /// `kvmmmu:kvm_mmu_prepare_zap_page`.
    KvmMmuPrepareZapPage { page: MmuPage },
    /// `kvmmmu:kvm_mmu_sync_page`.
    KvmMmuSyncPage { page: MmuPage },
    /// `kvmmmu:kvm_mmu_unsync_page`.
    KvmMmuUnsyncPage { page: MmuPage },
    /// `kvmmmu:kvm_mmu_pagetable_walk`.
    KvmMmuPagetableWalk { addr: u64, pferr: u32 },
    /// `kvmmmu:kvm_mmu_paging_element`.
    KvmMmuPagingElement { pte: u64, level: u32 },
    /// `kvmmmu:kvm_mmu_walker_error`.
    KvmMmuWalkerError { pferr: u32 },
    /// `kvm:kvm_pml_full`: the page-modification log filled up and exited.
    KvmPmlFull { vcpu_id: u32 },
    /// The interrupt-controller tracepoints (`kvm_set_irq`, IOAPIC, MSI, PIC, local APIC):
    /// one [`IrqEvent`] variant per tracepoint.
    Irq(IrqEvent),
    /// The MMIO tracepoints (`kvm_mmio`, `vcpu_match_mmio`).
    Mmio(MmioEvent),
    /// The kvmmmu fast-path and SPTE tracepoints (`fast_page_fault`,
    /// `kvm_tdp_mmu_spte_changed`, `kvm_mmu_spte_requested`, `kvm_mmu_set_spte`).
    Spte(SpteEvent),
    /// An explicit VMCS field record ([`VmcsFieldEvent`]).
    VmcsField(Box<VmcsFieldEvent>),
    /// A `vmcs`-profile probe event ([`ProbeHit`]).
    VmcsProbe(Box<ProbeHit>),
    /// A thread's identity (its VM) written by the recorder ([`IdentityEvent`]).
    Identity(Box<IdentityEvent>),
    /// A host tracepoint (scheduler, interrupts, softirqs, timers) typed for the analyses
    /// ([`crate::context`]), with the event it was read from.
    Context(Box<ContextHit>),
    /// A `trace_printk` / `trace_marker` print ([`PrintkEvent`]).
    Printk(Box<PrintkEvent>),
    /// QEMU's `kvm_run_exit` trace event (`15268@1647341556.928341:kvm_run_exit cpu_index 0,
    /// reason 8`): the `KVM_RUN` exit of QEMU's vCPU `cpu_index` as user space saw it, with
    /// the `KVM_EXIT_*` reason that `kvm_userspace_exit` shows from the kernel's side.
    QemuRunExit { cpu_index: u32, reason: UserspaceExitReason },
    /// A reader's marker: another capture pasted into the same input starts with the next
    /// event (segment `index` = 1, 2, ...; the first segment, 0, has no marker). Nothing seen
    /// before it describes what follows (see [`SegmentReason`] for why the reader split).
    Segment { index: u32, reason: SegmentReason },
    /// Events were lost here on `cpu` (ring-buffer overrun, `[LOST N EVENTS]`,
    /// `[EVENTS DROPPED]`, perf LOST records); `count` when the input says how many.
    Lost { count: Option<u64> },
    /// Any other tracepoint, with all of its fields.
    Other(Box<OtherEvent>),
}

/// A tracepoint the vocabulary types, identified by name once per format so that readers do
/// not compare strings per event. The discriminant indexes [`KnownEvent::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum KnownEvent {
    KvmExit,
    KvmEntry,
    KvmCr,
    KvmNestedVmenter,
    KvmNestedVmrun,
    KvmNestedVmexit,
    KvmNestedVmexitInject,
    KvmNestedVmenterFailed,
    KvmNestedIntrVmexit,
    KvmPageFault,
    KvmInjException,
    KvmInjVirq,
    KvmUserspaceExit,
    KvmEmulateInsn,
    KvmSmmTransition,
    KvmPio,
    KvmMsr,
    KvmCpuid,
    KvmMmuGetPage,
    KvmMmuPrepareZapPage,
    KvmMmuSyncPage,
    KvmMmuUnsyncPage,
    KvmMmuPagetableWalk,
    KvmMmuPagingElement,
    KvmMmuWalkerError,
    KvmPmlFull,
    KvmSetIrq,
    KvmIoapicSetIrq,
    KvmIoapicDelayedEoiInj,
    KvmMsiSetIrq,
    KvmPicSetIrq,
    KvmApic,
    KvmApicAcceptIrq,
    KvmApicvAcceptIrq,
    KvmApicIpi,
    KvmEoi,
    KvmPvEoi,
    KvmApicvInhibitChanged,
    KvmMmio,
    VcpuMatchMmio,
    FastPageFault,
    KvmTdpMmuSpteChanged,
    KvmMmuSpteRequested,
    KvmMmuSetSpte,
    QemuRunExit,
}

/// A known tracepoint lacked a field that every layout generation has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Event {event} has no usable field `{field}`")]
pub struct DecodeError {
    /// The event's name.
    pub event: &'static str,
    /// The missing or ill-typed field.
    pub field: &'static str,
}

impl KnownEvent {
    /// The one table of typed tracepoints: system and name, in discriminant order (so that
    /// `ALL[k as usize]` is `k`'s row), then the older names a tracepoint had.
    pub const ALL: &'static [(KnownEvent, &'static str, &'static str)] = &[
        (Self::KvmExit, "kvm", "kvm_exit"),
        (Self::KvmEntry, "kvm", "kvm_entry"),
        (Self::KvmCr, "kvm", "kvm_cr"),
        (Self::KvmNestedVmenter, "kvm", "kvm_nested_vmenter"),
        (Self::KvmNestedVmrun, "kvm", "kvm_nested_vmrun"),
        (Self::KvmNestedVmexit, "kvm", "kvm_nested_vmexit"),
        (Self::KvmNestedVmexitInject, "kvm", "kvm_nested_vmexit_inject"),
        (Self::KvmNestedVmenterFailed, "kvm", "kvm_nested_vmenter_failed"),
        (Self::KvmNestedIntrVmexit, "kvm", "kvm_nested_intr_vmexit"),
        (Self::KvmPageFault, "kvm", "kvm_page_fault"),
        (Self::KvmInjException, "kvm", "kvm_inj_exception"),
        (Self::KvmInjVirq, "kvm", "kvm_inj_virq"),
        (Self::KvmUserspaceExit, "kvm", "kvm_userspace_exit"),
        (Self::KvmEmulateInsn, "kvm", "kvm_emulate_insn"),
        (Self::KvmSmmTransition, "kvm", "kvm_smm_transition"),
        (Self::KvmPio, "kvm", "kvm_pio"),
        (Self::KvmMsr, "kvm", "kvm_msr"),
        (Self::KvmCpuid, "kvm", "kvm_cpuid"),
        (Self::KvmMmuGetPage, "kvmmmu", "kvm_mmu_get_page"),
        (Self::KvmMmuPrepareZapPage, "kvmmmu", "kvm_mmu_prepare_zap_page"),
        (Self::KvmMmuSyncPage, "kvmmmu", "kvm_mmu_sync_page"),
        (Self::KvmMmuUnsyncPage, "kvmmmu", "kvm_mmu_unsync_page"),
        (Self::KvmMmuPagetableWalk, "kvmmmu", "kvm_mmu_pagetable_walk"),
        (Self::KvmMmuPagingElement, "kvmmmu", "kvm_mmu_paging_element"),
        (Self::KvmMmuWalkerError, "kvmmmu", "kvm_mmu_walker_error"),
        (Self::KvmPmlFull, "kvm", "kvm_pml_full"),
        (Self::KvmSetIrq, "kvm", "kvm_set_irq"),
        (Self::KvmIoapicSetIrq, "kvm", "kvm_ioapic_set_irq"),
        (Self::KvmIoapicDelayedEoiInj, "kvm", "kvm_ioapic_delayed_eoi_inj"),
        (Self::KvmMsiSetIrq, "kvm", "kvm_msi_set_irq"),
        (Self::KvmPicSetIrq, "kvm", "kvm_pic_set_irq"),
        (Self::KvmApic, "kvm", "kvm_apic"),
        (Self::KvmApicAcceptIrq, "kvm", "kvm_apic_accept_irq"),
        (Self::KvmApicvAcceptIrq, "kvm", "kvm_apicv_accept_irq"),
        (Self::KvmApicIpi, "kvm", "kvm_apic_ipi"),
        (Self::KvmEoi, "kvm", "kvm_eoi"),
        (Self::KvmPvEoi, "kvm", "kvm_pv_eoi"),
        (Self::KvmApicvInhibitChanged, "kvm", "kvm_apicv_inhibit_changed"),
        (Self::KvmMmio, "kvm", "kvm_mmio"),
        (Self::VcpuMatchMmio, "kvm", "vcpu_match_mmio"),
        (Self::FastPageFault, "kvmmmu", "fast_page_fault"),
        (Self::KvmTdpMmuSpteChanged, "kvmmmu", "kvm_tdp_mmu_spte_changed"),
        (Self::KvmMmuSpteRequested, "kvmmmu", "kvm_mmu_spte_requested"),
        (Self::KvmMmuSetSpte, "kvmmmu", "kvm_mmu_set_spte"),
        (Self::QemuRunExit, "qemu", "kvm_run_exit"),
        // Older names of the same tracepoints (same fields).
        (Self::KvmSmmTransition, "kvm", "kvm_enter_smm"), // before 5.14
    ];

    /// Classifies a tracepoint by name. `system` may be empty when the input does not print it
    /// (ftrace text); a non-empty system must match.
    pub fn lookup(system: &str, name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, sys, n)| *n == name && (system.is_empty() || system == *sys))
            .map(|(known, _, _)| *known)
    }

    /// The tracepoint's system.
    pub fn system(self) -> &'static str {
        Self::ALL[self as usize].1
    }

    /// The tracepoint's name.
    pub fn name(self) -> &'static str {
        Self::ALL[self as usize].2
    }

    /// Builds the typed event from the fields, for every layout generation of the tracepoint.
    pub fn decode(self, f: &impl FieldLookup) -> Result<EventKind, DecodeError> {
        let mut kind = EventKind::Lost { count: None };
        self.decode_into(f, &mut kind)?;
        Ok(kind)
    }

    /// [`KnownEvent::decode`] straight into `out` (left as it was on an error): a reader
    /// decoding into its buffer's slot saves moving the ~64-byte kind through a returned
    /// `Result` and reading it back at once, which stalled the decode in profiles.
    pub fn decode_into(self, f: &impl FieldLookup, out: &mut EventKind) -> Result<(), DecodeError> {
        *out = self.build(f)?;
        Ok(())
    }

    /// The decoder, inlined into [`KnownEvent::decode_into`] only: one copy of its body, so
    /// that every lookup passes the name literals a reader's lookup plan recorded.
    #[inline(always)]
    fn build(self, f: &impl FieldLookup) -> Result<EventKind, DecodeError> {
        let event = self.name();
        let need = |field: &'static str| f.uint(field).ok_or(DecodeError { event, field });
        let need32 = |field: &'static str| f.u32(field).ok_or(DecodeError { event, field });
        let isa = || f.uint("isa").and_then(Isa::from_raw);
        let intr = |field: &str| f.u32(field).map(IntrInfo);
        Ok(match self {
            Self::KvmExit => EventKind::KvmExit(exit_info(f, event)?),
            Self::KvmNestedVmexit if f.uint("exit_reason").is_some() => {
                // 5.10+: the kvm_exit layout.
                EventKind::KvmNestedVmexit(exit_info(f, event)?)
            }
            Self::KvmNestedVmexit => EventKind::KvmNestedVmexit(ExitInfo::from(ExitFields {
                // ≤5.9 layout: rip, exit_code, exit_info1/2, exit_int_info(_err), isa.
                reason: ExitCode::from_raw(need("exit_code")?, isa()),
                isa: isa(),
                guest_rip: f.uint("rip"),
                info1: f.uint("exit_info1"),
                info2: f.uint("exit_info2"),
                intr_info: intr("exit_int_info"),
                error_code: f.u32("exit_int_info_err"),
                vcpu_id: f.u32("vcpu_id"),
                requests: None,
            })),
            Self::KvmNestedVmexitInject => {
                EventKind::KvmNestedVmexitInject(ExitInfo::from(ExitFields {
                    reason: ExitCode::from_raw(need("exit_code")?, isa()),
                    isa: isa(),
                    guest_rip: None,
                    info1: f.uint("exit_info1"),
                    info2: f.uint("exit_info2"),
                    intr_info: intr("exit_int_info"),
                    error_code: f.u32("exit_int_info_err"),
                    vcpu_id: None,
                    requests: None,
                }))
            }
            Self::KvmEntry => EventKind::KvmEntry(Entry {
                vcpu_id: need32("vcpu_id")?,
                rip: f.uint("rip"),
                immediate_exit: f.flag("immediate_exit"),
                intr_info: intr("intr_info"),
                error_code: f.u32("error_code"),
            }),
            Self::KvmCr => {
                EventKind::KvmCr { write: need("rw")? != 0, cr: need32("cr")?, val: need("val")? }
            }
            Self::KvmNestedVmenter | Self::KvmNestedVmrun => {
                EventKind::KvmNestedVmenter(NestedVmenter {
                    rip: need("rip")?,
                    vmcs: f
                        .uint("vmcb")
                        .or_else(|| f.uint("vmcs"))
                        .ok_or(DecodeError { event, field: "vmcb" })?,
                    nested_rip: need("nested_rip")?,
                    int_ctl: f.u32("int_ctl").unwrap_or(0),
                    event_inj: IntrInfo(f.u32("event_inj").unwrap_or(0)),
                    tdp_enabled: f.flag("tdp_enabled").or_else(|| f.flag("npt")),
                    guest_pgd: f.uint("guest_pgd"),
                    isa: isa().or((self == Self::KvmNestedVmrun).then_some(Isa::Svm)),
                })
            }
            Self::KvmNestedVmenterFailed => {
                let msg = f.string("msg").ok_or(DecodeError { event, field: "msg" })?;
                EventKind::KvmNestedVmenterFailed {
                    kind: VmFailKind::of_message(msg),
                    msg: msg.into(),
                    err: VmInstructionError(f.u32("err").unwrap_or(0)),
                }
            }
            Self::KvmNestedIntrVmexit => EventKind::KvmNestedIntrVmexit { rip: need("rip")? },
            Self::KvmPageFault => EventKind::KvmPageFault {
                vcpu_id: f.u32("vcpu_id"),
                guest_rip: f.uint("guest_rip"),
                fault_address: f
                    .uint("fault_address")
                    .ok_or(DecodeError { event, field: "fault_address" })?,
                error_code: need("error_code")?,
            },
            Self::KvmInjException => EventKind::KvmInjException {
                exception: ExceptionVector(
                    u8::try_from(need("exception")?)
                        .map_err(|_| DecodeError { event, field: "exception" })?,
                ),
                has_error: f.flag("has_error").unwrap_or(false),
                error_code: f.u32("error_code").unwrap_or(0),
                reinjected: f.flag("reinjected"),
            },
            Self::KvmInjVirq => EventKind::KvmInjVirq {
                vector: f
                    .u32("vector")
                    .or_else(|| f.u32("irq"))
                    .ok_or(DecodeError { event, field: "vector" })?,
                soft: f.flag("soft"),
                reinjected: f.flag("reinjected"),
            },
            Self::KvmUserspaceExit => EventKind::KvmUserspaceExit {
                reason: UserspaceExitReason(need32("reason")?),
                errno: f.int("errno", 4).and_then(|v| i32::try_from(v).ok()),
            },
            Self::KvmEmulateInsn => {
                let bytes = f.bytes("insn").unwrap_or(&[]);
                let len = f.uint("len").map_or(bytes.len(), |l| {
                    usize::try_from(l).unwrap_or(usize::MAX).min(bytes.len())
                });
                EventKind::KvmEmulateInsn {
                    rip: need("rip")?,
                    csbase: f.uint("csbase").unwrap_or(0),
                    insn: InsnBytes::new(bytes, len),
                    flags: f.uint("flags").map_or(0, |v| (v & 0xff) as u8),
                    failed: f.flag("failed").unwrap_or(false),
                }
            }
            Self::KvmSmmTransition => EventKind::KvmSmmTransition {
                vcpu_id: need32("vcpu_id")?,
                smbase: need("smbase")?,
                entering: need("entering")? != 0,
            },
            Self::KvmPio => EventKind::KvmPio {
                write: need("rw")? != 0,
                port: need32("port")?,
                size: need32("size")?,
                count: f.u32("count").unwrap_or(1),
                val: f.u32("val"),
            },
            Self::KvmMsr => EventKind::KvmMsr {
                write: need("write")? != 0,
                index: need32("ecx")?,
                data: need("data")?,
                exception: f.flag("exception").unwrap_or(false),
            },
            Self::KvmCpuid => EventKind::KvmCpuid {
                function: need32("function")?,
                index: f.u32("index"),
                rax: need("rax")?,
                rbx: need("rbx")?,
                rcx: need("rcx")?,
                rdx: need("rdx")?,
                found: f.flag("found"),
                used_max_basic: f.flag("used_max_basic"),
            },
            Self::KvmMmuGetPage => EventKind::KvmMmuGetPage {
                page: mmu_page(f, event)?,
                created: f.flag("created").unwrap_or(false),
            },
            Self::KvmMmuPrepareZapPage => {
                EventKind::KvmMmuPrepareZapPage { page: mmu_page(f, event)? }
            }
            Self::KvmMmuSyncPage => EventKind::KvmMmuSyncPage { page: mmu_page(f, event)? },
            Self::KvmMmuUnsyncPage => EventKind::KvmMmuUnsyncPage { page: mmu_page(f, event)? },
            Self::KvmMmuPagetableWalk => {
                EventKind::KvmMmuPagetableWalk { addr: need("addr")?, pferr: need32("pferr")? }
            }
            Self::KvmMmuPagingElement => {
                EventKind::KvmMmuPagingElement { pte: need("pte")?, level: need32("level")? }
            }
            Self::KvmMmuWalkerError => EventKind::KvmMmuWalkerError { pferr: need32("pferr")? },
            Self::KvmPmlFull => EventKind::KvmPmlFull { vcpu_id: need32("vcpu_id")? },
            Self::KvmSetIrq
            | Self::KvmIoapicSetIrq
            | Self::KvmIoapicDelayedEoiInj
            | Self::KvmMsiSetIrq
            | Self::KvmPicSetIrq
            | Self::KvmApic
            | Self::KvmApicAcceptIrq
            | Self::KvmApicvAcceptIrq
            | Self::KvmApicIpi
            | Self::KvmEoi
            | Self::KvmPvEoi
            | Self::KvmApicvInhibitChanged => EventKind::Irq(IrqEvent::decode(self, f)?),
            Self::KvmMmio | Self::VcpuMatchMmio => EventKind::Mmio(MmioEvent::decode(self, f)?),
            Self::FastPageFault
            | Self::KvmTdpMmuSpteChanged
            | Self::KvmMmuSpteRequested
            | Self::KvmMmuSetSpte => EventKind::Spte(SpteEvent::decode(self, f)?),
            Self::QemuRunExit => EventKind::QemuRunExit {
                cpu_index: need32("cpu_index")?,
                reason: UserspaceExitReason(need32("reason")?),
            },
        })
    }
}

/// A set of [`KnownEvent`]s (a bit per kind), e.g. the kinds a consumer reads only to count
/// them (`vmxray_capture::ReadOptions::count_only`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KnownSet(u64);

// Every kind has its bit.
const _: () = assert!((KnownEvent::QemuRunExit as usize) < KnownSet::CAPACITY);

impl KnownSet {
    /// How many kinds a set can hold (more than there are).
    pub const CAPACITY: usize = u64::BITS as usize;

    /// No kind.
    pub const EMPTY: Self = Self(0);

    /// The set of `kinds`.
    pub const fn of(kinds: &[KnownEvent]) -> Self {
        let mut bits = 0u64;
        let mut i = 0;
        while i < kinds.len() {
            bits |= 1 << kinds[i] as u32;
            i += 1;
        }
        Self(bits)
    }

    /// True when `kind` is in the set.
    #[inline]
    pub const fn contains(self, kind: KnownEvent) -> bool {
        self.0 & (1 << kind as u32) != 0
    }

    /// True when the set holds no kind.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds of both sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The pseudo-field a text reader adds when its rendering determines only some role bits
/// (see [`MmuPage::role_known`]); absent means the raw word (all bits known).
pub const ROLE_KNOWN_FIELD: &str = "vmxray_role_known";

/// The fields of `kvm_exit`, and of `kvm_nested_vmexit` from 5.10 on (the same layout).
#[inline(always)]
fn exit_info(f: &impl FieldLookup, event: &'static str) -> Result<ExitInfo, DecodeError> {
    let reason = f.uint("exit_reason").ok_or(DecodeError { event, field: "exit_reason" })?;
    let isa = f.uint("isa").and_then(Isa::from_raw);
    Ok(ExitInfo::from(ExitFields {
        reason: ExitCode::from_raw(reason, isa),
        isa,
        guest_rip: f.uint("guest_rip"),
        info1: f.uint("info1"),
        info2: f.uint("info2"),
        intr_info: f.u32("intr_info").map(IntrInfo),
        error_code: f.u32("error_code"),
        vcpu_id: f.u32("vcpu_id"),
        requests: f.uint("requests"),
    }))
}

fn mmu_page(f: &impl FieldLookup, event: &'static str) -> Result<MmuPage, DecodeError> {
    let role_known = f.u32(ROLE_KNOWN_FIELD).unwrap_or(MmuPage::ROLE_ALL_KNOWN);
    let raw = f.u32("role").ok_or(DecodeError { event, field: "role" })?;
    let role = MmuPageRole::bit4_to_or_from_6x(u64::from(raw), f.role_bit4_inverted());
    let role = u32::try_from(role).unwrap_or(raw);
    Ok(MmuPage {
        mmu_valid_gen: f.uint("mmu_valid_gen"),
        gfn: f.uint("gfn").ok_or(DecodeError { event, field: "gfn" })?,
        role: MmuPageRole(role & role_known),
        role_known,
        root_count: f.u32("root_count").unwrap_or(0),
        unsync: f.flag("unsync").unwrap_or(false),
    })
}

impl EventKind {
    /// Decodes a tracepoint by name: typed when the vocabulary knows it, else
    /// [`EventKind::untyped`] with every field.
    pub fn decode(
        system: &str,
        name: &str,
        fields: &impl FieldLookup,
    ) -> Result<EventKind, DecodeError> {
        match KnownEvent::lookup(system, name) {
            Some(known) => known.decode(fields),
            None => Ok(Self::untyped(system.into(), name.into(), fields.to_fields())),
        }
    }

    /// An event no tracepoint decoder types: vmxray's own records (an explicit VMCS field
    /// record, merged or printed by `trace_printk`; a `vmcs`-profile probe event) are recognized
    /// here, once, for every reader; anything else is [`EventKind::Other`].
    pub fn untyped(system: Arc<str>, name: Arc<str>, fields: Fields) -> EventKind {
        let other = OtherEvent { system, name, fields };
        if &*other.system == RECORD_SYSTEM && &*other.name == RECORD_EVENT {
            if let Some(record) = FieldRecord::from_fields(&other.fields) {
                return Self::VmcsField(Box::new(VmcsFieldEvent { record, source: None }));
            }
        } else if let Some(identity) = other.print_text().and_then(ThreadIdentity::parse) {
            return Self::Identity(Box::new(IdentityEvent { identity, source: other }));
        } else if let Some(record) = record::from_print(&other) {
            return Self::VmcsField(Box::new(VmcsFieldEvent { record, source: Some(other) }));
        } else if let Some(probe) = probe::decode(&other.system, &other.name, &other.fields) {
            return Self::VmcsProbe(Box::new(ProbeHit { probe, source: other }));
        } else if let Some(event) = ContextEvent::decode(&other.system, &other.name, &other.fields)
        {
            return Self::Context(Box::new(ContextHit { event, source: other }));
        }
        match PrintkEvent::from_other(other) {
            Ok(print) => Self::Printk(Box::new(print)),
            Err(other) => Self::Other(Box::new(other)),
        }
    }

    /// The typed tracepoint this is, if it is one.
    #[inline]
    pub fn known(&self) -> Option<KnownEvent> {
        Some(match self {
            Self::KvmExit(_) => KnownEvent::KvmExit,
            Self::KvmEntry(_) => KnownEvent::KvmEntry,
            Self::KvmCr { .. } => KnownEvent::KvmCr,
            Self::KvmNestedVmenter(_) => KnownEvent::KvmNestedVmenter,
            Self::KvmNestedVmexit(_) => KnownEvent::KvmNestedVmexit,
            Self::KvmNestedVmexitInject(_) => KnownEvent::KvmNestedVmexitInject,
            Self::KvmNestedVmenterFailed { .. } => KnownEvent::KvmNestedVmenterFailed,
            Self::KvmNestedIntrVmexit { .. } => KnownEvent::KvmNestedIntrVmexit,
            Self::KvmPageFault { .. } => KnownEvent::KvmPageFault,
            Self::KvmInjException { .. } => KnownEvent::KvmInjException,
            Self::KvmInjVirq { .. } => KnownEvent::KvmInjVirq,
            Self::KvmUserspaceExit { .. } => KnownEvent::KvmUserspaceExit,
            Self::KvmEmulateInsn { .. } => KnownEvent::KvmEmulateInsn,
            Self::KvmSmmTransition { .. } => KnownEvent::KvmSmmTransition,
            Self::KvmPio { .. } => KnownEvent::KvmPio,
            Self::KvmMsr { .. } => KnownEvent::KvmMsr,
            Self::KvmCpuid { .. } => KnownEvent::KvmCpuid,
            Self::KvmMmuGetPage { .. } => KnownEvent::KvmMmuGetPage,
            Self::KvmMmuPrepareZapPage { .. } => KnownEvent::KvmMmuPrepareZapPage,
            Self::KvmMmuSyncPage { .. } => KnownEvent::KvmMmuSyncPage,
            Self::KvmMmuUnsyncPage { .. } => KnownEvent::KvmMmuUnsyncPage,
            Self::KvmMmuPagetableWalk { .. } => KnownEvent::KvmMmuPagetableWalk,
            Self::KvmMmuPagingElement { .. } => KnownEvent::KvmMmuPagingElement,
            Self::KvmMmuWalkerError { .. } => KnownEvent::KvmMmuWalkerError,
            Self::KvmPmlFull { .. } => KnownEvent::KvmPmlFull,
            Self::Irq(e) => e.known(),
            Self::Mmio(e) => e.known(),
            Self::Spte(e) => e.known(),
            Self::QemuRunExit { .. } => KnownEvent::QemuRunExit,
            Self::VmcsField(_)
            | Self::VmcsProbe(_)
            | Self::Identity(_)
            | Self::Context(_)
            | Self::Printk(_)
            | Self::Segment { .. }
            | Self::Lost { .. }
            | Self::Other(_) => {
                return None;
            }
        })
    }

    /// The untyped event behind a vmxray record or an [`EventKind::Other`], with its fields.
    pub fn untyped_source(&self) -> Option<&OtherEvent> {
        match self {
            Self::Other(o) => Some(o),
            Self::VmcsField(v) => v.source.as_ref(),
            Self::VmcsProbe(p) => Some(&p.source),
            Self::Identity(i) => Some(&i.source),
            Self::Context(c) => Some(&c.source),
            Self::Printk(p) => Some(&p.source),
            _ => None,
        }
    }

    /// The tracepoint's system.
    pub fn system(&self) -> &str {
        if let Some(known) = self.known() {
            return known.system();
        }
        match self {
            Self::Lost { .. } | Self::Segment { .. } => "vmxray",
            Self::VmcsField(v) => v.source.as_ref().map_or(RECORD_SYSTEM, |o| &o.system),
            Self::Printk(p) => &p.source.system,
            Self::VmcsProbe(p) => &p.source.system,
            Self::Identity(i) => &i.source.system,
            Self::Context(c) => &c.source.system,
            Self::Other(o) => &o.system,
            _ => "",
        }
    }

    /// The tracepoint's bare name.
    pub fn name(&self) -> &str {
        if let Some(known) = self.known() {
            return known.name();
        }
        match self {
            Self::Lost { .. } => "lost_events",
            Self::Segment { .. } => "segment",
            Self::VmcsField(v) => v.source.as_ref().map_or(RECORD_EVENT, |o| &o.name),
            Self::Printk(p) => &p.source.name,
            Self::VmcsProbe(p) => &p.source.name,
            Self::Identity(i) => &i.source.name,
            Self::Context(c) => &c.source.name,
            Self::Other(o) => &o.name,
            _ => "",
        }
    }

    /// The `vcpu_id` the event carries, if its layout has one (an explicit VMCS field record
    /// names its vCPU too, but not the thread's: see [`EventKind::binds_thread`]).
    pub fn vcpu_id(&self) -> Option<u32> {
        match self {
            Self::KvmExit(info) | Self::KvmNestedVmexit(info) => info.vcpu_id(),
            Self::KvmEntry(entry) => Some(entry.vcpu_id),
            Self::KvmPageFault { vcpu_id, .. } => *vcpu_id,
            Self::KvmSmmTransition { vcpu_id, .. } | Self::KvmPmlFull { vcpu_id } => Some(*vcpu_id),
            Self::VmcsField(v) => Some(v.record.vcpu),
            Self::Spte(e) => e.vcpu_id(),
            // `kvm_eoi.apicid` is the vCPU id too, but the vocabulary binds a thread to a vCPU
            // only through fields named `vcpu_id`; `kvm_apic_accept_irq.apicid` is the target's,
            // traced by the sender.
            Self::Irq(_) | Self::Mmio(_) => None,
            Self::KvmNestedVmexitInject(_)
            | Self::KvmCr { .. }
            | Self::KvmNestedVmenter(_)
            | Self::KvmNestedVmenterFailed { .. }
            | Self::KvmNestedIntrVmexit { .. }
            | Self::KvmInjException { .. }
            | Self::KvmInjVirq { .. }
            | Self::KvmUserspaceExit { .. }
            | Self::KvmEmulateInsn { .. }
            | Self::KvmPio { .. }
            | Self::KvmMsr { .. }
            | Self::KvmCpuid { .. }
            | Self::KvmMmuGetPage { .. }
            | Self::KvmMmuPrepareZapPage { .. }
            | Self::KvmMmuSyncPage { .. }
            | Self::KvmMmuUnsyncPage { .. }
            | Self::KvmMmuPagetableWalk { .. }
            | Self::KvmMmuPagingElement { .. }
            | Self::KvmMmuWalkerError { .. }
            | Self::QemuRunExit { .. }
            | Self::Segment { .. }
            | Self::Lost { .. } => None,
            Self::VmcsProbe(p) => p.source.fields.u32("vcpu_id"),
            Self::Identity(_) | Self::Printk(_) | Self::Context(_) => None,
            Self::Other(o) => o.fields.u32("vcpu_id"),
        }
    }

    /// True when the thread that hit the event runs the vCPU it carries: false for explicit
    /// VMCS field records, which name a vCPU from outside (a file, or another thread's
    /// `trace_printk`).
    pub fn binds_thread(&self) -> bool {
        !matches!(self, Self::VmcsField(_))
    }

    /// The exit reason, for the three exit tracepoints.
    pub fn exit_reason(&self) -> Option<ExitCode> {
        match self {
            Self::KvmExit(info)
            | Self::KvmNestedVmexit(info)
            | Self::KvmNestedVmexitInject(info) => Some(info.reason()),
            _ => None,
        }
    }
}

// Readers move millions of events per second, so the size of an event is a budget: the largest
// payload (`ExitInfo`, 56 bytes) sets it, and larger ones are boxed.
const _: () = assert!(std::mem::size_of::<Event>() == 96);
const _: () = assert!(std::mem::size_of::<EventKind>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_kvm_events_are_the_untyped_kvm_ones_that_name_no_vcpu() {
        assert!(OtherEvent::is_plain_kvm("kvm", ["load"]), "kvm_fpu");
        assert!(OtherEvent::is_plain_kvm("kvmmmu", ["gfn", "spte"]));
        assert!(!OtherEvent::is_plain_kvm("kvm", ["vcpu_id", "tsc"]), "binds a thread");
        assert!(!OtherEvent::is_plain_kvm("kvm", ["buf"]), "a print text");
        assert!(!OtherEvent::is_plain_kvm("sched", ["prev_pid"]), "a host event");
        assert!(!OtherEvent::is_plain_kvm("task", ["pid"]), "task_newtask");
        // The attribution reads `vcpu_id` from an untyped event, so such a format is kept.
        let mut f = Fields::new();
        f.push("vcpu_id", FieldValue::U64(3));
        let e = EventKind::untyped("kvm".into(), "kvm_hv_timer_state".into(), f);
        assert_eq!(e.vcpu_id(), Some(3));
    }

    #[test]
    fn a_known_set_holds_exactly_its_kinds() {
        let set = KnownSet::of(&[KnownEvent::KvmExit, KnownEvent::QemuRunExit]);
        for &(k, _, _) in KnownEvent::ALL {
            let want = matches!(k, KnownEvent::KvmExit | KnownEvent::QemuRunExit);
            assert_eq!(set.contains(k), want, "{k:?}");
            assert!(!KnownSet::EMPTY.contains(k));
        }
        assert!(KnownSet::EMPTY.is_empty() && !set.is_empty());
        let other = KnownSet::of(&[KnownEvent::KvmEntry]);
        assert!(set.union(other).contains(KnownEvent::KvmEntry));
        assert!(set.union(other).contains(KnownEvent::KvmExit));
        assert!(!set.union(other).contains(KnownEvent::KvmCr));
        assert_eq!(KnownSet::of(&[]), KnownSet::EMPTY);
    }

    #[test]
    fn the_name_table_is_in_discriminant_order() {
        for (known, system, name) in KnownEvent::ALL {
            assert_eq!(KnownEvent::ALL[*known as usize].0, *known, "{name}");
            assert_eq!(KnownEvent::lookup(system, name), Some(*known));
            assert_eq!(KnownEvent::lookup("", name), Some(*known));
        }
        assert_eq!(KnownEvent::KvmSmmTransition.name(), "kvm_smm_transition");
        assert_eq!(KnownEvent::lookup("kvm", "kvm_enter_smm"), Some(KnownEvent::KvmSmmTransition));
        assert_eq!(KnownEvent::lookup("kvmmmu", "kvm_exit"), None);
    }

    proptest::proptest! {
        /// The compact store gives back exactly the fields it was built from, compares as they
        /// do, and prints as the derived `Debug` of the old all-`Option` struct did.
        #[test]
        fn exit_info_keeps_exactly_its_fields(
            raw in proptest::prelude::any::<(u32, Option<u64>, Option<u64>, Option<u64>)>(),
            more in proptest::prelude::any::<(Option<u32>, Option<u32>, Option<u32>, Option<u64>)>(),
            vmx in proptest::prelude::any::<Option<bool>>(),
        ) {
            let isa = vmx.map(|v| if v { Isa::Vmx } else { Isa::Svm });
            let f = ExitFields {
                reason: ExitCode::from_raw(u64::from(raw.0), isa),
                isa,
                guest_rip: raw.1,
                info1: raw.2,
                info2: raw.3,
                intr_info: more.0.map(IntrInfo),
                error_code: more.1,
                vcpu_id: more.2,
                requests: more.3,
            };
            let info = ExitInfo::from(f);
            proptest::prop_assert_eq!(info.fields(), f);
            proptest::prop_assert_eq!(
                format!("{info:?}"),
                format!("{f:?}").replacen("ExitFields", "ExitInfo", 1)
            );
            let other = ExitInfo::from(ExitFields { info1: f.info1.xor(Some(0)), ..f });
            proptest::prop_assert_ne!(info, other);
        }
    }
    use crate::codes::{ExitReason, VmxBasicReason};
    use crate::fields::FieldValue;

    fn fields(pairs: &[(&str, u64)]) -> Fields {
        let mut f = Fields::new();
        for (n, v) in pairs {
            f.push(*n, FieldValue::U64(*v));
        }
        f
    }

    #[test]
    fn kvm_exit_every_generation() {
        // ≤5.2: exit_reason, guest_rip, isa, info1, info2.
        let old = fields(&[
            ("exit_reason", 48),
            ("guest_rip", 0x1000),
            ("isa", 1),
            ("info1", 0x181),
            ("info2", 0),
        ]);
        let EventKind::KvmExit(info) = EventKind::decode("kvm", "kvm_exit", &old).unwrap() else {
            panic!("not a kvm_exit")
        };
        assert_eq!(info.reason(), ExitCode::Vmx(ExitReason(48)));
        assert_eq!(info.vcpu_id(), None);
        assert_eq!(info.intr_info(), None);
        assert_eq!(info.requests(), None);
        // 6.14: everything.
        let new = fields(&[
            ("exit_reason", 0x8000_0021),
            ("guest_rip", 0x1000),
            ("isa", 1),
            ("info1", 0),
            ("info2", 0),
            ("intr_info", 0),
            ("error_code", 0),
            ("vcpu_id", 3),
            ("requests", 0x40),
        ]);
        let kind = EventKind::decode("", "kvm_exit", &new).unwrap();
        assert_eq!(kind.vcpu_id(), Some(3));
        let ExitCode::Vmx(r) = kind.exit_reason().unwrap() else { panic!() };
        assert!(r.failed_vmentry() && r.basic() == VmxBasicReason::INVALID_STATE);
    }

    #[test]
    fn nested_vmexit_old_and_new_layouts_agree() {
        let old = fields(&[
            ("rip", 0x2000),
            ("exit_code", 30),
            ("exit_info1", 7),
            ("exit_info2", 0),
            ("exit_int_info", 0),
            ("exit_int_info_err", 0),
            ("isa", 1),
        ]);
        let new = fields(&[
            ("exit_reason", 30),
            ("guest_rip", 0x2000),
            ("isa", 1),
            ("info1", 7),
            ("info2", 0),
            ("intr_info", 0),
            ("error_code", 0),
        ]);
        let a = EventKind::decode("kvm", "kvm_nested_vmexit", &old).unwrap();
        let b = EventKind::decode("kvm", "kvm_nested_vmexit", &new).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn missing_required_field_is_an_error_not_zero() {
        let err = EventKind::decode("kvm", "kvm_cr", &fields(&[("rw", 1)])).unwrap_err();
        assert_eq!(err.field, "cr");
    }

    #[test]
    fn unknown_events_keep_all_fields() {
        let f = fields(&[("vcpu_id", 2), ("x", 9)]);
        let kind = EventKind::decode("kvm", "kvm_fpu", &f).unwrap();
        assert_eq!(kind.name(), "kvm_fpu");
        assert_eq!(kind.vcpu_id(), Some(2));
        let EventKind::Other(o) = kind else { panic!() };
        assert_eq!(o.fields, f);
    }

    #[test]
    fn every_known_event_is_named_as_in_the_table() {
        for (known, _, name) in KnownEvent::ALL {
            // kvm_enter_smm is the pre-5.14 name of kvm_smm_transition.
            if *name != "kvm_enter_smm" {
                assert_eq!(known.name(), *name);
            }
        }
    }

    #[test]
    fn system_must_match_when_given() {
        assert_eq!(KnownEvent::lookup("sched", "kvm_exit"), None);
        assert_eq!(KnownEvent::lookup("", "kvm_mmu_get_page"), Some(KnownEvent::KvmMmuGetPage));
    }
}
