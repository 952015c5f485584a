//! The model's state: per vCPU, what the trace has proven so far.
//!
//! Every fact is an `Option` (or an explicit `Unknown` variant): `None` means "the trace has not
//! shown it since the start or since the last loss of events", never a default. A `Lost` event
//! clears every fact of every vCPU ([`VcpuState::forget`]); rules that need a fact stay silent
//! until an event re-establishes it. This is the "resynchronizing" state.
//!
//! The state is plain data and cheap to clone, so a caller (the TUI) can keep
//! [`crate::Model`] snapshots every few thousand events and replay forward to any event.

use std::fmt;

use serde::Serialize;
use vmxray_events::codes::{ExitCode, IntrInfo, MmuPageRole};

use crate::anomaly::EventIndex;

/// A value the trace showed, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// The value.
    pub value: u64,
    /// The event that showed it.
    pub at: EventIndex,
}

impl Observed {
    /// A value seen at `at`.
    pub fn new(value: u64, at: EventIndex) -> Self {
        Self { value, at }
    }
}

/// Which level the vCPU runs (§2.2 of the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// Not established: start of the trace, or events were lost. Rules needing the level are
    /// silent until a nested event re-establishes it.
    Unknown,
    /// L1 (or a non-nested guest) runs; proven by a nested exit or a nested VM-entry since.
    L1,
    /// A nested VM-Enter happened (`kvm_nested_vmenter`) and hardware has not run L2 yet.
    L2Pending {
        /// The `kvm_nested_vmenter`.
        since: EventIndex,
    },
    /// Hardware ran L2 (a `kvm_entry` after the nested VM-Enter, or a `kvm_nested_vmexit`).
    L2Run,
}

impl Mode {
    /// The architectural level, when known.
    pub fn level(self) -> Option<Level> {
        match self {
            Self::Unknown => None,
            Self::L1 => Some(Level::L1),
            Self::L2Pending { .. } | Self::L2Run => Some(Level::L2),
        }
    }
}

/// The guest level that runs: the one level type of every crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    /// The guest hypervisor (or a plain guest).
    L1,
    /// The nested guest.
    L2,
}

impl Level {
    /// `L1`, `L2`.
    pub fn label(self) -> &'static str {
        match self {
            Self::L1 => "L1",
            Self::L2 => "L2",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("unknown"),
            Self::L1 => f.write_str("L1"),
            Self::L2Pending { since } => write!(f, "L2 entered at {since}, not yet run"),
            Self::L2Run => f.write_str("L2"),
        }
    }
}

impl fmt::Display for EntryCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vmlaunch => "VMLAUNCH",
            Self::Vmresume => "VMRESUME/VMRUN",
            Self::Rsm => "RSM into L2",
            Self::Restore => "KVM_SET_NESTED_STATE",
            Self::Unexplained => "unexplained",
            Self::Unattributed => "cause not in the trace",
            Self::Inferred => "inferred from VMLAUNCH/VMRESUME and an L2 entry",
        })
    }
}

impl fmt::Display for LaunchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Clear => "clear",
            Self::Launched => "launched",
        })
    }
}

/// What started a nested VM-Enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryCause {
    /// VMLAUNCH (20).
    Vmlaunch,
    /// VMRESUME (24), or SVM VMRUN.
    Vmresume,
    /// RSM back into L2 (`kvm_smm_transition leaving` before it).
    Rsm,
    /// `KVM_SET_NESTED_STATE` (no VMLAUNCH/VMRESUME/RSM, outside exit handling).
    Restore,
    /// Nothing in the trace explains it: KVM was handling an L1 exit that was not
    /// VMLAUNCH/VMRESUME.
    Unexplained,
    /// The trace cannot tell (start of the trace or events lost before it).
    Unattributed,
    /// Inferred from a VMLAUNCH/VMRESUME exit and an L2 `kvm_entry` (kernels before 6.1).
    Inferred,
}

/// Launch state of a vmcs12, as far as the trace proves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchState {
    /// Not proven (VMCLEAR's operand is not traced).
    Unknown,
    /// Clear: its last VMLAUNCH ended in a failed VM-entry.
    Clear,
    /// Launched: it exited from L2 after a successful entry.
    Launched,
}

/// One nested exit of a vmcs12, as the model saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NestedExit {
    /// The `kvm_nested_vmexit_inject` (or the silent SMI exit's `kvm_smm_transition`).
    pub at: EventIndex,
    /// Its reason (None for a silent exit).
    pub reason: Option<ExitCode>,
    /// No `kvm_entry` ran L2 between the entry and this exit (the HLT path, §2.5).
    pub zero_instructions: bool,
}

/// Everything the trace showed about one vmcs12 (keyed by its GPA, `vmcs` of
/// `kvm_nested_vmenter`; all ones for an eVMCS). This is the one store of per-vmcs12 field
/// values; a field-history feature reads [`crate::Transition::Vmcs12Field`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vmcs12Record {
    /// The vmcs12 GPA.
    pub vmptr: u64,
    /// Entered through SVM (`vmcb12`).
    pub svm: bool,
    /// L1 enabled nested EPT at the last entry.
    pub nested_ept: Option<bool>,
    /// GUEST_CR3 at the last entry (nested_ept=n).
    pub guest_cr3: Option<Observed>,
    /// EPT_POINTER at the last entry (nested_ept=y).
    pub eptp: Option<Observed>,
    /// GUEST_RIP at the last entry.
    pub nested_rip: Option<Observed>,
    /// The event injected at the last entry.
    pub event_inj: IntrInfo,
    /// HOST_RIP, learned from the first `kvm_entry` after a nested exit.
    pub host_rip: Option<Observed>,
    /// [`Counters::vmwrite`] when HOST_RIP was learned.
    pub vmwrites_at_host_rip: u32,
    /// Launch state.
    pub launch: LaunchState,
    /// The last nested VM-Enter of this vmcs12.
    pub entered_at: Option<EventIndex>,
    /// How it was entered.
    pub entered_by: Option<EntryCause>,
    /// Hardware ran L2 (a `kvm_entry`) since that entry.
    pub ran_on_hw: bool,
    /// The last CR3 load L0 handled for this L2 (`kvm_cr` write in L2) since that entry.
    pub l2_cr3_load: Option<Observed>,
    /// Its last nested exit.
    pub last_exit: Option<NestedExit>,
    /// [`Counters::vmwrite`] when it last exited (an L1 VMWRITE since is evidence of a change).
    pub vmwrites_at_exit: u32,
    /// [`Counters::vmfunc`] when it last exited.
    pub vmfuncs_at_exit: u32,
    /// Last time the record was used (for bounded eviction).
    pub(crate) last_used: EventIndex,
}

impl Vmcs12Record {
    fn new(vmptr: u64, at: EventIndex) -> Self {
        Self {
            vmptr,
            svm: false,
            nested_ept: None,
            guest_cr3: None,
            eptp: None,
            nested_rip: None,
            event_inj: IntrInfo(0),
            host_rip: None,
            vmwrites_at_host_rip: 0,
            launch: LaunchState::Unknown,
            entered_at: None,
            entered_by: None,
            ran_on_hw: false,
            l2_cr3_load: None,
            last_exit: None,
            vmwrites_at_exit: 0,
            vmfuncs_at_exit: 0,
            last_used: at,
        }
    }

    /// L2's CR3 as the model knows it now: the entered GUEST_CR3 updated by visible L2 loads.
    pub fn l2_cr3(&self) -> Option<u64> {
        self.l2_cr3_load.or(self.guest_cr3).map(|o| o.value)
    }
}

/// The per-vCPU store of vmcs12 records, bounded: the least recently used record is dropped
/// beyond [`Vmcs12Store::CAPACITY`] (an L1 with more subjects than that only loses history).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Vmcs12Store {
    records: Vec<Vmcs12Record>,
}

impl Vmcs12Store {
    /// Maximum number of vmcs12 records kept per vCPU.
    pub const CAPACITY: usize = 64;

    /// The record of `vmptr`, if known.
    pub fn get(&self, vmptr: u64) -> Option<&Vmcs12Record> {
        self.records.iter().find(|r| r.vmptr == vmptr)
    }

    /// The record of `vmptr`, if known (mutable).
    pub fn get_mut(&mut self, vmptr: u64) -> Option<&mut Vmcs12Record> {
        self.records.iter_mut().find(|r| r.vmptr == vmptr)
    }

    /// The record of `vmptr`, created if needed.
    pub fn entry(&mut self, vmptr: u64, at: EventIndex) -> &mut Vmcs12Record {
        let pos = match self.records.iter().position(|r| r.vmptr == vmptr) {
            Some(pos) => pos,
            None => {
                if self.records.len() >= Self::CAPACITY
                    && let Some(oldest) = self
                        .records
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, r)| r.last_used)
                        .map(|(i, _)| i)
                {
                    self.records.swap_remove(oldest);
                }
                self.records.push(Vmcs12Record::new(vmptr, at));
                self.records.len() - 1
            }
        };
        let rec = &mut self.records[pos];
        rec.last_used = at;
        rec
    }

    /// Every record.
    pub fn iter(&self) -> impl Iterator<Item = &Vmcs12Record> {
        self.records.iter()
    }

    /// Marks every launch state unknown (VMCLEAR's operand is not traced).
    pub fn forget_launch_states(&mut self) {
        for r in &mut self.records {
            r.launch = LaunchState::Unknown;
        }
    }

    /// Drops every record.
    pub fn clear(&mut self) {
        self.records.clear();
    }
}

/// How many L1 instructions of each kind exited so far on this vCPU (wrapping). Rules compare
/// snapshots ("was there a VMWRITE since this vmcs12 exited?") instead of keeping event lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// VMWRITE (25) exits in L1.
    pub vmwrite: u32,
    /// VMPTRLD (21) exits in L1.
    pub vmptrld: u32,
    /// VMCLEAR (19) exits in L1.
    pub vmclear: u32,
    /// INVEPT (50) exits in L1.
    pub invept: u32,
    /// INVVPID (53) exits in L1.
    pub invvpid: u32,
    /// VMFUNC (59) exits (EPTP switching handled by L0).
    pub vmfunc: u32,
}

/// A shadow-MMU root the trace showed being loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RootLoad {
    /// The guest frame it shadows.
    pub gfn: u64,
    /// Its role.
    pub role: MmuPageRole,
    /// A new page (else an existing one).
    pub created: bool,
    /// The `kvm_mmu_get_page`.
    pub at: EventIndex,
}

/// The latest hardware exit of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LastExit {
    /// The `kvm_exit`.
    pub at: EventIndex,
    /// Reason.
    pub reason: ExitCode,
    /// Guest RIP.
    pub rip: Option<u64>,
    /// Exit qualification.
    pub info1: Option<u64>,
    /// IDT-vectoring info.
    pub info2: Option<u64>,
    /// Exit interruption information.
    pub intr_info: Option<IntrInfo>,
    /// Its error code.
    pub error_code: Option<u32>,
    /// The level it exited from, when known.
    pub level: Option<Level>,
}

/// A VMLAUNCH/VMRESUME (or VMRUN) exit from L1 not yet followed by its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PendingLaunch {
    /// The `kvm_exit`.
    pub at: EventIndex,
    /// VMLAUNCH or VMRESUME.
    pub cause: EntryCause,
    /// L1's RIP at the instruction.
    pub rip: Option<u64>,
    /// L1's CR3 at the instruction, when known.
    pub l1_cr3: Option<u64>,
}

/// SMM state of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmmState {
    /// No `kvm_smm_transition` since the start or the last loss.
    Unknown,
    /// Inside SMM.
    In,
    /// Outside SMM.
    Out,
}

/// What an SMI taken in L2 stashed (`vmx_enter_smm`): RSM must return to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SmmStash {
    /// The `kvm_smm_transition entering`.
    pub at: EventIndex,
    /// The vmcs12 that was current.
    pub vmptr: Option<u64>,
}

/// The per-vCPU state (one per [`crate::Actor`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VcpuState {
    /// Which level runs.
    pub mode: Mode,
    /// The vmcs12 made current (from `kvm_nested_vmenter.vmcs`; unknown after VMPTRLD/VMCLEAR
    /// until the next entry shows it).
    pub current_vmptr: Option<u64>,
    /// The last vmptr a nested entry showed (kept across VMPTRLD to compare).
    pub last_entered_vmptr: Option<u64>,
    /// Per-vmcs12 records.
    pub vmcs12: Vmcs12Store,
    /// L1's CR3 (`kvm_cr` write or read of CR3 while L1 runs).
    pub l1_cr3: Option<Observed>,
    /// A CR3 seen while the level was not established; adopted as L1's when a VMLAUNCH/VMRESUME
    /// proves the vCPU was in L1 (no nested event in between).
    pub cr3_unknown_level: Option<Observed>,
    /// The L2 that last ran on hardware: its vmptr and the CR3 it ran with (what vmcs02.GUEST_CR3
    /// holds, §3(a)).
    pub last_hw_l2: Option<(Option<u64>, Option<Observed>)>,
    /// The latest `kvm_exit`.
    pub last_exit: Option<LastExit>,
    /// A `kvm_exit` happened since the last `kvm_entry` (None: not established).
    pub exited_since_entry: Option<bool>,
    /// The last `kvm_entry` and its rip.
    pub last_entry: Option<(EventIndex, Option<u64>)>,
    /// KVM is handling an exit (a `kvm_exit` and no `kvm_entry`/`kvm_userspace_exit` since).
    pub in_exit_handling: Option<bool>,
    /// A VMLAUNCH/VMRESUME exit awaiting its outcome.
    pub pending_launch: Option<PendingLaunch>,
    /// A nested exit happened and the next `kvm_entry` should be at host_rip.
    pub awaiting_host_rip: Option<(EventIndex, Option<u64>)>,
    /// L1 instruction exit counters.
    pub counters: Counters,
    /// The latest root load.
    pub last_root: Option<RootLoad>,
    /// The latest root loaded for L1 (role.guest_mode 0).
    pub l1_root: Option<RootLoad>,
    /// The latest root loaded for L2 (role.guest_mode 1: guest_mmu or L2 shadow/TDP roots).
    pub l2_root: Option<RootLoad>,
    /// SMM.
    pub smm: SmmState,
    /// What an SMI from L2 stashed.
    pub smm_stash: Option<SmmStash>,
    /// The last CR0 written (kvm_cr), for paging state.
    pub cr0: Option<Observed>,
    /// A `kvm_smm_transition leaving` since the last `kvm_entry` (explains an RSM vmenter).
    pub smm_left_at: Option<EventIndex>,
    /// The VMLAUNCH/VMRESUME that started the current nested entry (until L1 runs again).
    pub entry_launch: Option<PendingLaunch>,
    /// A `kvm_exit` in L2 that must be followed by `kvm_nested_vmexit` (5.10+ kernels whose
    /// trace shows that event): if it is not, the vCPU was in L1 (KVM left guest mode silently:
    /// reset, `KVM_SET_NESTED_STATE`).
    pub exit_awaiting_nested: Option<EventIndex>,
    /// The last few values of every VMCS field the trace revealed (`crate::fields`).
    pub fields: crate::fields::FieldStore,
}

impl Default for VcpuState {
    fn default() -> Self {
        Self {
            mode: Mode::Unknown,
            current_vmptr: None,
            last_entered_vmptr: None,
            vmcs12: Vmcs12Store::default(),
            l1_cr3: None,
            cr3_unknown_level: None,
            last_hw_l2: None,
            last_exit: None,
            exited_since_entry: None,
            last_entry: None,
            in_exit_handling: None,
            pending_launch: None,
            awaiting_host_rip: None,
            counters: Counters::default(),
            last_root: None,
            l1_root: None,
            l2_root: None,
            smm: SmmState::Unknown,
            smm_stash: None,
            cr0: None,
            smm_left_at: None,
            entry_launch: None,
            exit_awaiting_nested: None,
            fields: crate::fields::FieldStore::default(),
        }
    }
}

impl VcpuState {
    /// Forgets everything the lost events may have changed (the counters keep counting, since
    /// rules only compare their differences).
    pub fn forget(&mut self) {
        let counters = self.counters;
        *self = Self { counters, ..Self::default() };
    }

    /// The level, when known.
    #[inline]
    pub fn level(&self) -> Option<Level> {
        self.mode.level()
    }

    /// The current vmcs12 record.
    pub fn current_record(&self) -> Option<&Vmcs12Record> {
        self.current_vmptr.and_then(|p| self.vmcs12.get(p))
    }

    /// Whether the vCPU is resynchronizing (its level is not established).
    pub fn resynchronizing(&self) -> bool {
        matches!(self.mode, Mode::Unknown)
    }
}

/// What L0 uses to translate guest memory, as root loads show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum L0Paging {
    /// No root load seen (TDP MMU roots emit nothing).
    Unknown,
    /// Shadow paging (`enable_ept=0` or a shadow-only backend): non-direct L1 roots.
    Shadow,
    /// TDP with the legacy MMU: direct roots.
    Tdp,
}

/// What the trace's events reveal about the traced kernel (§1.15 version fingerprints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Features {
    /// `kvm_exit` events exist.
    pub kvm_exit: bool,
    /// `kvm_entry` events exist.
    pub kvm_entry: bool,
    /// `kvm_exit.vcpu_id` (≥ ~5.3).
    pub exit_vcpu_id: bool,
    /// `kvm_entry.rip` / `kvm_exit.intr_info` (≥ 5.10).
    pub v5_10: bool,
    /// `kvm_inj_exception.reinjected` (≥ 5.19).
    pub v5_19: bool,
    /// `kvm_nested_vmenter` exists (≥ 6.1): VMX nested entries are visible.
    pub nested_vmenter: bool,
    /// `kvm_nested_vmexit` seen.
    pub nested_vmexit: bool,
    /// `kvm_entry.immediate_exit` (≥ 6.9).
    pub v6_9: bool,
    /// `kvm_entry.intr_info` / `kvm_exit.requests` (≥ 6.14).
    pub v6_14: bool,
    /// `kvm_cr` events exist.
    pub kvm_cr: bool,
    /// kvmmmu page events exist.
    pub mmu_pages: bool,
    /// `kvm_mmu_get_page` exists: shadow-MMU root loads (guest_mmu included) are visible.
    pub mmu_get_page: bool,
    /// How L0 translates L1 memory.
    pub l0_paging: L0Paging,
    /// guest_mmu roots (shadow EPT, guest_mode 1, gfn = EPTP>>12) were seen.
    pub guest_mmu_roots: bool,
    /// `kvm_emulate_insn` seen (an emulator-only backend shows only these).
    pub emulator: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            kvm_exit: false,
            kvm_entry: false,
            exit_vcpu_id: false,
            v5_10: false,
            v5_19: false,
            nested_vmenter: false,
            nested_vmexit: false,
            v6_9: false,
            v6_14: false,
            kvm_cr: false,
            mmu_pages: false,
            mmu_get_page: false,
            l0_paging: L0Paging::Unknown,
            guest_mmu_roots: false,
            emulator: false,
        }
    }
}

impl Features {
    /// The oldest kernel consistent with the fields seen (a lower bound, §1.15).
    pub fn kernel_at_least(&self) -> &'static str {
        if self.v6_14 {
            "6.14"
        } else if self.v6_9 {
            "6.9"
        } else if self.nested_vmenter {
            "6.1"
        } else if self.v5_19 {
            "5.19"
        } else if self.v5_10 {
            "5.10"
        } else if self.exit_vcpu_id {
            "5.3"
        } else {
            "unknown"
        }
    }
}

/// True for a root-level shadow page as §1.16 describes them: a 4/5-level root, or a 32-bit
/// (4-byte gpte) level-2 quadrant root. PAE roots (level 2, 8-byte) are per-PDPTE and are not
/// treated as roots of CR3.
pub fn is_cr3_root(role: MmuPageRole) -> bool {
    !role.direct() && (role.level() >= 4 || (role.has_4_byte_gpte() && role.level() == 2))
}

/// The gfn a 4/5-level guest CR3 (or EPTP) points to: bits 51:12.
pub fn pgd_gfn(pgd: u64) -> u64 {
    (pgd & 0x000f_ffff_ffff_f000) >> 12
}
