//! VMCS-field streams: every vmcs01/vmcs02/vmcs12 field value the trace reveals, as
//! [`VmcsField`] observations.
//!
//! The model derives them while it steps ([`crate::Step::fields`]), from the state *before*
//! each event (its level and current vmcs12: nesting is not re-modelled here), and keeps the
//! last few values of every field per vCPU in [`FieldStore`] ([`crate::VcpuState::fields`]) so
//! that rules can cite a field's history. [`FieldHistory`] collects a whole trace's
//! observations for views (`vmxray fields`, the TUI's per-VMCS field table).
//!
//! # Derivation table
//!
//! | tracepoint | VMCS | fields (value) |
//! |---|---|---|
//! | `kvm_nested_vmenter` (VMX, 6.1+) | vmcs12@`vmcs` (eVMCS: `vmcs12@evmcs`) | `GUEST_RIP` (`nested_rip`), `VM_ENTRY_INTR_INFO_FIELD` (`event_inj`), `GUEST_INTR_STATUS` (`int_ctl`), `GUEST_CR3` (`guest_pgd`, nested_ept=n) or `EPT_POINTER` (`guest_pgd`, nested_ept=y), `SECONDARY_VM_EXEC_CONTROL` bit 1 (enable EPT, when set) |
//! | `kvm_nested_vmexit_inject` (VMX) | the current vmcs12 | `VM_EXIT_REASON`, `EXIT_QUALIFICATION` (`ext_inf1`), `IDT_VECTORING_INFO_FIELD` (`ext_inf2`), `VM_EXIT_INTR_INFO` (`ext_int`), `VM_EXIT_INTR_ERROR_CODE` (`ext_int_err`) |
//! | `kvm_exit` (VMX) in L1 / L2 | vmcs01 / vmcs02 | `VM_EXIT_REASON`, `EXIT_QUALIFICATION` (`info1`), `GUEST_RIP`; unless the entry failed: `IDT_VECTORING_INFO_FIELD` (`info2`), `VM_EXIT_INTR_INFO`, `VM_EXIT_INTR_ERROR_CODE` (when the interruption info says it is valid) |
//! | `kvm_entry` in L1 / L2 | vmcs01 / vmcs02 | `GUEST_RIP` (`rip`, 5.10+); 6.14+: `VM_ENTRY_INTR_INFO_FIELD` (`intr_info`), `VM_ENTRY_EXCEPTION_ERROR_CODE` (when delivered) |
//! | `kvm_entry` after a nested exit | the vmcs12 that exited | `HOST_RIP` (L1 resumes at it) |
//! | `kvm_cr` in L1 / L2 | vmcs01 / vmcs02 | `GUEST_CR0` / `GUEST_CR3` / `GUEST_CR4` (the guest's architectural value, see below) |
//! | root `kvm_mmu_get_page` (shadow MMU) | guest_mode + nested EPT: the current vmcs12; guest_mode: vmcs02; else vmcs01 | `EPT_POINTER` / `GUEST_CR3` / `GUEST_CR3`, address bits 51:12 only (`gfn << 12`) |
//! | `vmxray_*` probe events (`record --profile vmcs`) | see [`vmxray_events::vmcs::probe`] | `GUEST_CR3`/`HOST_CR3` of the current vmcs12, `EPT_POINTER`/`GUEST_CR3` of vmcs01/02, exit fields of the current vmcs12 |
//! | explicit records (`vmxray:vmcs_field`, `trace_printk` lines) | as written | as written (`written` / `read`) |
//!
//! **Caveats.** CR values are what the guest sees (KVM's `vcpu->arch.crN`): the hardware
//! `GUEST_CR0/CR4` differ in KVM-owned bits, and under shadow paging `GUEST_CR3` holds the
//! shadow root; a `kvm_cr` write is the *attempted* value (a #GP may follow). SVM events carry a
//! VMCB, not a VMCS: nothing is derived from them. Before 6.1 no event names the vmcs12, so no
//! vmcs12 field is derived. Never revealed by any tracepoint: `GUEST_ACTIVITY_STATE` (only
//! inferable from the HLT path), `HOST_CR3` (L1's CR3 after a nested exit is not traced unless a
//! probe or `kvm_cr` read shows it), the launch state (not a field), and every field L1 writes
//! through a shadow VMCS until an entry shows it.

mod history;

pub use history::{FieldChange, FieldDiff, FieldHistory, differ};

use serde::Serialize;
use vmxray_events::codes::{ExitCode, Isa};
use vmxray_events::vmcs::probe::{ADDRESS_MASK, ProbeTarget};
use vmxray_events::vmcs::{FieldEncoding, Learned, VmcsField, VmcsRef};
use vmxray_events::{Event, EventKind, KnownEvent};

use crate::anomaly::{Actor, EventIndex};
use crate::state::{Level, Mode, VcpuState, is_cr3_root};

/// One field value as the store keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// The value.
    pub value: u64,
    /// The bits known.
    pub mask: u64,
    /// The event that showed it.
    pub at: EventIndex,
    /// How it was learned.
    pub learned: Learned,
    /// The tracepoint it came from.
    pub source: &'static str,
    /// The vCPU's L1 VMWRITE exit counter then (a later VMWRITE may explain a change).
    pub vmwrites: u32,
}

/// Where a field's values are kept: which VMCS, which field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    vmcs: VmcsRef,
    field: FieldEncoding,
}

impl Key {
    /// Its place in [`FieldStore::hint`]: a few bits mixed from the field and the VMCS.
    fn hint(self) -> usize {
        let vmcs = match self.vmcs {
            VmcsRef::Vmcs01 => 1,
            VmcsRef::Vmcs02 => 2,
            VmcsRef::Evmcs => 3,
            VmcsRef::Vmcs12 { gpa } => gpa >> 12,
        };
        let mixed =
            (u64::from(self.field.0) ^ vmcs.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The top bits of the product are the well-mixed ones.
        (mixed >> (64 - HINT_BITS)) as usize
    }
}

/// `log2` of [`FieldStore::hint`]'s length.
const HINT_BITS: u32 = 6;

/// The fields the model derives into the hardware VMCSs on nearly every exit and entry
/// ([`derive`]): kept at fixed places, so that recording one costs no lookup.
const HW_FIELDS: [FieldEncoding; 11] = [
    FieldEncoding::VM_EXIT_REASON,
    FieldEncoding::EXIT_QUALIFICATION,
    FieldEncoding::GUEST_RIP,
    FieldEncoding::IDT_VECTORING_INFO_FIELD,
    FieldEncoding::VM_EXIT_INTR_INFO,
    FieldEncoding::VM_EXIT_INTR_ERROR_CODE,
    FieldEncoding::VM_ENTRY_INTR_INFO_FIELD,
    FieldEncoding::VM_ENTRY_EXCEPTION_ERROR_CODE,
    FieldEncoding::GUEST_CR0,
    FieldEncoding::GUEST_CR3,
    FieldEncoding::GUEST_CR4,
];

/// The place of a field of vmcs01 or vmcs02 in [`FieldStore::hw`].
fn hw_place(key: Key) -> Option<(usize, usize)> {
    let vmcs = match key.vmcs {
        VmcsRef::Vmcs01 => 0,
        VmcsRef::Vmcs02 => 1,
        VmcsRef::Vmcs12 { .. } | VmcsRef::Evmcs => return None,
    };
    let field = match key.field {
        FieldEncoding::VM_EXIT_REASON => 0,
        FieldEncoding::EXIT_QUALIFICATION => 1,
        FieldEncoding::GUEST_RIP => 2,
        FieldEncoding::IDT_VECTORING_INFO_FIELD => 3,
        FieldEncoding::VM_EXIT_INTR_INFO => 4,
        FieldEncoding::VM_EXIT_INTR_ERROR_CODE => 5,
        FieldEncoding::VM_ENTRY_INTR_INFO_FIELD => 6,
        FieldEncoding::VM_ENTRY_EXCEPTION_ERROR_CODE => 7,
        FieldEncoding::GUEST_CR0 => 8,
        FieldEncoding::GUEST_CR3 => 9,
        FieldEncoding::GUEST_CR4 => 10,
        _ => return None,
    };
    Some((vmcs, field))
}

/// The values of one field: a ring of the last [`FieldStore::DEPTH`], so that recording a value
/// neither allocates nor moves the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    recent: [Seen; FieldStore::DEPTH],
    /// The oldest value's place in `recent`.
    head: u8,
    len: u8,
    last_used: EventIndex,
}

impl Slot {
    const EMPTY: Self = Self {
        recent: [Seen {
            value: 0,
            mask: 0,
            at: EventIndex(0),
            learned: Learned::Derived,
            source: "",
            vmwrites: 0,
        }; FieldStore::DEPTH],
        head: 0,
        len: 0,
        last_used: EventIndex(0),
    };

    /// Oldest first.
    fn recent(&self) -> impl ExactSizeIterator<Item = &Seen> + DoubleEndedIterator + Clone {
        (0..usize::from(self.len))
            .map(move |i| &self.recent[(usize::from(self.head) + i) % FieldStore::DEPTH])
    }

    fn latest(&self) -> Option<&Seen> {
        let len = usize::from(self.len);
        (len > 0).then(|| &self.recent[(usize::from(self.head) + len - 1) % FieldStore::DEPTH])
    }

    fn push(&mut self, seen: Seen) {
        self.last_used = seen.at;
        let len = usize::from(self.len);
        if len == FieldStore::DEPTH {
            self.recent[usize::from(self.head)] = seen;
            self.head =
                if usize::from(self.head) + 1 == FieldStore::DEPTH { 0 } else { self.head + 1 };
        } else {
            self.recent[(usize::from(self.head) + len) % FieldStore::DEPTH] = seen;
            self.len += 1;
        }
    }
}

/// The last few values of every field a vCPU's trace revealed (bounded: at most
/// [`FieldStore::CAPACITY`] fields besides the hardware VMCSs' usual ones,
/// [`FieldStore::DEPTH`] values each), so that the model stays cheap to clone and rules can cite
/// a field's history.
///
/// Recording runs for several fields of nearly every event: the hardware VMCSs' usual fields
/// have fixed places; the others are found through a direct-mapped hint (checked against the
/// key, so a stale or colliding hint only costs the scan it would have saved) in front of a scan
/// of the dense key array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldStore {
    /// vmcs01's and vmcs02's [`HW_FIELDS`].
    hw: [[Slot; HW_FIELDS.len()]; 2],
    keys: Vec<Key>,
    /// Parallel to `keys`.
    slots: Vec<Slot>,
    /// An index into `keys` per [`Key::hint`], perhaps stale.
    hint: [u16; 1 << HINT_BITS],
}

impl Default for FieldStore {
    fn default() -> Self {
        Self {
            hw: [[Slot::EMPTY; HW_FIELDS.len()]; 2],
            keys: Vec::new(),
            slots: Vec::new(),
            hint: [0; 1 << HINT_BITS],
        }
    }
}

impl Serialize for FieldStore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            vmcs: VmcsRef,
            field: FieldEncoding,
            recent: Vec<&'a Seen>,
            last_used: EventIndex,
        }
        serializer.collect_seq(self.entries().map(|(k, s)| Entry {
            vmcs: k.vmcs,
            field: k.field,
            recent: s.recent().collect(),
            last_used: s.last_used,
        }))
    }
}

impl FieldStore {
    /// Fields kept per vCPU besides the hardware VMCSs' usual ones (least recently updated
    /// dropped first).
    pub const CAPACITY: usize = 512;
    /// Values kept per field.
    pub const DEPTH: usize = 4;

    /// The latest value of a field.
    pub fn latest(&self, vmcs: VmcsRef, field: FieldEncoding) -> Option<&Seen> {
        self.slot(Key { vmcs, field })?.latest()
    }

    /// The last few values of a field, oldest first.
    pub fn history(
        &self,
        vmcs: VmcsRef,
        field: FieldEncoding,
    ) -> impl ExactSizeIterator<Item = &Seen> + DoubleEndedIterator + Clone {
        self.slot(Key { vmcs, field }).unwrap_or(&Slot::EMPTY).recent()
    }

    /// Every (VMCS, field) with its latest value.
    pub fn iter(&self) -> impl Iterator<Item = (VmcsRef, FieldEncoding, &Seen)> {
        self.entries().filter_map(|(k, s)| Some((k.vmcs, k.field, s.latest()?)))
    }

    /// Every field seen, with its values.
    fn entries(&self) -> impl Iterator<Item = (Key, &Slot)> {
        let hw =
            self.hw.iter().zip([VmcsRef::Vmcs01, VmcsRef::Vmcs02]).flat_map(|(slots, vmcs)| {
                slots.iter().zip(HW_FIELDS).map(move |(s, field)| (Key { vmcs, field }, s))
            });
        hw.chain(self.keys.iter().copied().zip(&self.slots)).filter(|(_, s)| s.len > 0)
    }

    fn slot(&self, key: Key) -> Option<&Slot> {
        match hw_place(key) {
            Some((vmcs, field)) => Some(&self.hw[vmcs][field]),
            None => self.find(key).map(|i| &self.slots[i]),
        }
    }

    fn find(&self, key: Key) -> Option<usize> {
        let hinted = usize::from(self.hint[key.hint()]);
        if self.keys.get(hinted) == Some(&key) {
            return Some(hinted);
        }
        self.keys.iter().position(|k| *k == key)
    }

    /// Records an observation.
    pub fn record(&mut self, obs: &VmcsField, vmwrites: u32) {
        let seen = Seen {
            value: obs.value,
            mask: obs.mask,
            at: EventIndex(obs.event),
            learned: obs.learned,
            source: obs.source,
            vmwrites,
        };
        let key = Key { vmcs: obs.vmcs, field: obs.field };
        if let Some((vmcs, field)) = hw_place(key) {
            self.hw[vmcs][field].push(seen);
            return;
        }
        let pos = match self.find(key) {
            Some(p) => p,
            None => {
                if self.keys.len() >= Self::CAPACITY
                    && let Some(oldest) = self
                        .slots
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(i, _)| i)
                {
                    self.keys.swap_remove(oldest);
                    self.slots.swap_remove(oldest);
                }
                self.keys.push(key);
                self.slots.push(Slot::EMPTY);
                self.keys.len() - 1
            }
        };
        // CAPACITY fits in the hint's u16.
        self.hint[key.hint()] = u16::try_from(pos).unwrap_or(u16::MAX);
        self.slots[pos].push(seen);
    }
}

/// The hardware VMCS of a level.
fn hw_vmcs(level: Level) -> VmcsRef {
    match level {
        Level::L1 => VmcsRef::Vmcs01,
        Level::L2 => VmcsRef::Vmcs02,
    }
}

/// The fields rules read from [`FieldStore`]: what a model without field streams
/// ([`crate::ModelConfig::field_streams`]) still derives. A rule that reads another field lists
/// it here (a test checks the rules' sources against this list).
pub const RULE_FIELDS: &[FieldEncoding] = &[
    FieldEncoding::GUEST_CR3,
    // lmsw_exit_routing: only explicit records reveal them.
    FieldEncoding::CR0_GUEST_HOST_MASK,
    FieldEncoding::CR0_READ_SHADOW,
];

/// Every field an exit, an entry or a reflected exit implies ([`derive`]).
const EXIT_ENTRY_FIELDS: &[FieldEncoding] = &[
    FieldEncoding::VM_EXIT_REASON,
    FieldEncoding::EXIT_QUALIFICATION,
    FieldEncoding::GUEST_RIP,
    FieldEncoding::IDT_VECTORING_INFO_FIELD,
    FieldEncoding::VM_EXIT_INTR_INFO,
    FieldEncoding::VM_EXIT_INTR_ERROR_CODE,
    FieldEncoding::HOST_RIP,
    FieldEncoding::VM_ENTRY_INTR_INFO_FIELD,
    FieldEncoding::VM_ENTRY_EXCEPTION_ERROR_CODE,
];

/// A rule reads one of [`EXIT_ENTRY_FIELDS`]: without field streams, exits and entries must
/// still be derived.
const EXIT_ENTRY_RULE_FIELDS: bool = {
    let mut i = 0;
    let mut any = false;
    while i < RULE_FIELDS.len() {
        let mut j = 0;
        while j < EXIT_ENTRY_FIELDS.len() {
            any |= RULE_FIELDS[i].0 == EXIT_ENTRY_FIELDS[j].0;
            j += 1;
        }
        i += 1;
    }
    any
};

struct Out<'a> {
    at: EventIndex,
    ts: u64,
    vcpu: Option<u32>,
    source: &'static str,
    out: &'a mut Vec<VmcsField>,
    /// Every field, or only [`RULE_FIELDS`].
    all: bool,
}

impl Out<'_> {
    fn push(
        &mut self,
        vmcs: VmcsRef,
        field: FieldEncoding,
        value: u64,
        mask: u64,
        learned: Learned,
    ) {
        if !self.all && !RULE_FIELDS.contains(&field) {
            return;
        }
        let bits = field.value_bits();
        let width = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
        self.out.push(VmcsField {
            ts: self.ts,
            vcpu: self.vcpu,
            vmcs,
            field,
            value: value & width,
            mask: mask & width,
            learned,
            event: self.at.0,
            source: self.source,
        });
    }

    fn derived(&mut self, vmcs: VmcsRef, field: FieldEncoding, value: u64) {
        self.push(vmcs, field, value, u64::MAX, Learned::Derived);
    }
}

/// The field observations one event implies, given its actor's state *before* the event:
/// every field (`all`), or only [`RULE_FIELDS`].
///
/// Inlined up to the test of the event's kind: without `all`, most events of a trace imply no
/// field a rule reads, and skip the call.
#[inline]
pub fn derive(
    st: &VcpuState,
    actor: Actor,
    event: &Event,
    at: EventIndex,
    all: bool,
    out: &mut Vec<VmcsField>,
) {
    if all || may_imply_rule_fields(&event.kind) {
        derive_fields(st, actor, event, at, all, out);
    }
}

/// The event kinds [`derive`] learns no field from, as one pattern: the gate
/// ([`may_imply_rule_fields`]) and the derivation ([`derive_fields`]) both match every kind
/// exhaustively, and must agree on these.
macro_rules! kinds_implying_no_field {
    () => {
        EventKind::KvmNestedVmexit(_)
            | EventKind::KvmNestedVmenterFailed { .. }
            | EventKind::KvmNestedIntrVmexit { .. }
            | EventKind::KvmPageFault { .. }
            | EventKind::KvmInjException { .. }
            | EventKind::KvmInjVirq { .. }
            | EventKind::KvmUserspaceExit { .. }
            | EventKind::KvmEmulateInsn { .. }
            | EventKind::KvmSmmTransition { .. }
            | EventKind::KvmPio { .. }
            | EventKind::KvmMsr { .. }
            | EventKind::KvmCpuid { .. }
            | EventKind::KvmMmuPrepareZapPage { .. }
            | EventKind::KvmMmuSyncPage { .. }
            | EventKind::KvmMmuUnsyncPage { .. }
            | EventKind::KvmMmuPagetableWalk { .. }
            | EventKind::KvmMmuPagingElement { .. }
            | EventKind::KvmMmuWalkerError { .. }
            | EventKind::KvmPmlFull { .. }
            | EventKind::Irq(_)
            | EventKind::Mmio(_)
            | EventKind::Spte(_)
            | EventKind::Identity(_)
            | EventKind::Context(_)
            | EventKind::Printk(_)
            | EventKind::QemuRunExit { .. }
            | EventKind::Segment { .. }
            | EventKind::Other(_)
            | EventKind::Lost { .. }
    };
}

/// Whether an event of this kind may imply one of [`RULE_FIELDS`] ([`derive_fields`] derives
/// nothing at all from the kinds that say `false` here, or only fields rules do not read).
fn may_imply_rule_fields(kind: &EventKind) -> bool {
    match kind {
        EventKind::KvmNestedVmenter(_)
        | EventKind::KvmCr { .. }
        | EventKind::KvmMmuGetPage { .. }
        | EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_) => true,
        EventKind::KvmExit(_) | EventKind::KvmEntry(_) | EventKind::KvmNestedVmexitInject(_) => {
            EXIT_ENTRY_RULE_FIELDS
        }
        kinds_implying_no_field!() => false,
    }
}

/// [`derive`] for an event that may imply a field (out of line).
fn derive_fields(
    st: &VcpuState,
    actor: Actor,
    event: &Event,
    at: EventIndex,
    all: bool,
    out: &mut Vec<VmcsField>,
) {
    let vcpu = actor.vcpu_id();
    let mut o = Out { at, ts: event.ts, vcpu, source: static_name(&event.kind), out, all };
    let current12 = st.current_vmptr.map(VmcsRef::vmcs12);
    match &event.kind {
        EventKind::KvmNestedVmenter(v) => {
            if v.isa == Some(Isa::Svm) {
                return;
            }
            let vmcs = VmcsRef::vmcs12(v.vmcs);
            o.derived(vmcs, FieldEncoding::GUEST_RIP, v.nested_rip);
            o.derived(vmcs, FieldEncoding::VM_ENTRY_INTR_INFO_FIELD, u64::from(v.event_inj.0));
            o.derived(vmcs, FieldEncoding::GUEST_INTR_STATUS, u64::from(v.int_ctl));
            if let Some(cr3) = v.guest_cr3() {
                o.derived(vmcs, FieldEncoding::GUEST_CR3, cr3);
            }
            if let Some(eptp) = v.nested_tdp_root() {
                o.derived(vmcs, FieldEncoding::EPT_POINTER, eptp);
                // nested_cpu_has_ept(): SECONDARY_EXEC_ENABLE_EPT (bit 1) is set.
                o.push(vmcs, FieldEncoding::SECONDARY_VM_EXEC_CONTROL, 2, 2, Learned::Derived);
            }
        }
        EventKind::KvmNestedVmexitInject(info) => {
            let (ExitCode::Vmx(reason), Some(vmcs)) = (info.reason(), current12) else { return };
            // nested_vmx_vmexit passes these vmcs12 fields, after prepare_vmcs12 (§1.4).
            o.derived(vmcs, FieldEncoding::VM_EXIT_REASON, u64::from(reason.0));
            let fields = [
                (FieldEncoding::EXIT_QUALIFICATION, info.info1()),
                (FieldEncoding::IDT_VECTORING_INFO_FIELD, info.info2()),
                (FieldEncoding::VM_EXIT_INTR_INFO, info.intr_info().map(|i| u64::from(i.0))),
                (FieldEncoding::VM_EXIT_INTR_ERROR_CODE, info.error_code().map(u64::from)),
            ];
            for (field, value) in fields {
                if let Some(value) = value {
                    o.derived(vmcs, field, value);
                }
            }
        }
        EventKind::KvmExit(info) => {
            let (ExitCode::Vmx(reason), Some(level)) = (info.reason(), st.level()) else { return };
            let vmcs = hw_vmcs(level);
            o.derived(vmcs, FieldEncoding::VM_EXIT_REASON, u64::from(reason.0));
            if let Some(q) = info.info1() {
                o.derived(vmcs, FieldEncoding::EXIT_QUALIFICATION, q);
            }
            if reason.failed_vmentry() {
                // vmx_get_exit_info reports only the qualification after a failed entry.
                return;
            }
            if let Some(rip) = info.guest_rip() {
                o.derived(vmcs, FieldEncoding::GUEST_RIP, rip);
            }
            if let Some(idt) = info.info2() {
                o.derived(vmcs, FieldEncoding::IDT_VECTORING_INFO_FIELD, idt);
            }
            if let Some(intr) = info.intr_info() {
                o.derived(vmcs, FieldEncoding::VM_EXIT_INTR_INFO, u64::from(intr.0));
                if intr.valid()
                    && intr.error_code_valid()
                    && let Some(err) = info.error_code()
                {
                    o.derived(vmcs, FieldEncoding::VM_EXIT_INTR_ERROR_CODE, u64::from(err));
                }
            }
        }
        EventKind::KvmEntry(e) => {
            if let (Mode::L1, Some((_, Some(vmptr))), Some(rip)) =
                (st.mode, st.awaiting_host_rip, e.rip)
            {
                // The first entry after a nested exit runs L1 at vmcs12's HOST_RIP.
                o.derived(VmcsRef::vmcs12(vmptr), FieldEncoding::HOST_RIP, rip);
            }
            let Some(level) = st.level() else { return };
            let vmcs = hw_vmcs(level);
            if let Some(rip) = e.rip {
                o.derived(vmcs, FieldEncoding::GUEST_RIP, rip);
            }
            if let Some(intr) = e.intr_info {
                o.derived(vmcs, FieldEncoding::VM_ENTRY_INTR_INFO_FIELD, u64::from(intr.0));
                if intr.valid()
                    && intr.error_code_valid()
                    && let Some(err) = e.error_code
                {
                    o.derived(vmcs, FieldEncoding::VM_ENTRY_EXCEPTION_ERROR_CODE, u64::from(err));
                }
            }
        }
        EventKind::KvmCr { cr, val, .. } => {
            let Some(level) = st.level() else { return };
            let field = match cr {
                0 => FieldEncoding::GUEST_CR0,
                3 => FieldEncoding::GUEST_CR3,
                4 => FieldEncoding::GUEST_CR4,
                _ => return,
            };
            o.derived(hw_vmcs(level), field, *val);
        }
        EventKind::KvmMmuGetPage { page, .. } => {
            let role = page.role;
            if !is_cr3_root(role) || vcpu.is_none() {
                return;
            }
            let value = page.gfn << 12;
            let nested_ept = st.current_record().and_then(|r| r.nested_ept) == Some(true);
            let (vmcs, field) = match (role.guest_mode(), nested_ept, current12) {
                (true, true, Some(v12)) => (v12, FieldEncoding::EPT_POINTER),
                (true, true, None) => return,
                (true, false, _) => (VmcsRef::Vmcs02, FieldEncoding::GUEST_CR3),
                (false, _, _) => (VmcsRef::Vmcs01, FieldEncoding::GUEST_CR3),
            };
            o.push(vmcs, field, value, ADDRESS_MASK, Learned::Derived);
        }
        EventKind::VmcsField(v) => {
            let rec = &v.record;
            o.source = match v.source.as_ref().map(|s| &*s.name) {
                Some("print") => "print",
                Some("bprint") => "bprint",
                Some("bputs") => "bputs",
                Some(_) | None => vmxray_events::vmcs::RECORD_EVENT,
            };
            o.vcpu = Some(rec.vcpu);
            o.push(rec.vmcs, rec.field, rec.value, u64::MAX, rec.access.into());
        }
        EventKind::VmcsProbe(hit) => {
            let p = &hit.probe;
            o.source = "vmxray_probe";
            let guest = p.guest_mode.or_else(|| st.level().map(|l| l == Level::L2));
            for fact in &p.facts {
                let Some(guest) = guest else { continue };
                let field = if guest { fact.in_guest } else { fact.in_host };
                let vmcs = match fact.target {
                    ProbeTarget::CurrentVmcs12 => match current12 {
                        Some(v) => v,
                        None => continue,
                    },
                    ProbeTarget::LoadedVmcs => hw_vmcs(if guest { Level::L2 } else { Level::L1 }),
                };
                let learned = if fact.write { Learned::Written } else { Learned::Read };
                o.push(vmcs, field, fact.value, fact.mask, learned);
            }
        }
        kinds_implying_no_field!() => {}
    }
}

/// The tracepoint's name as a `'static` string (typed events; `other` for the rest).
fn static_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Lost { .. } => "lost_events",
        kind => kind.known().map_or("other", KnownEvent::name),
    }
}
