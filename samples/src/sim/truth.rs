//! What the simulator knows and a trace reader can only infer: the bug it injected, where the
//! stream diverges, and every value written to every vmcs12.

use serde::Serialize;

use super::{Bug, KernelVersion, KvmFlavour};

/// The ground truth of one simulated run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroundTruth {
    /// The scenario's name (`vmxray simulate --list`).
    pub scenario: &'static str,
    /// The kernel whose tracepoint layouts were emitted.
    pub kernel: KernelVersion,
    /// Fixed KVM, or buggy with the named bug.
    pub kvm: KvmFlavour,
    /// The seed.
    pub seed: u64,
    /// The first occurrence of the injected bug (None in the fixed flavour, or if the run was
    /// too short for the bug to trigger).
    pub bug: Option<BugSite>,
    /// Every occurrence, first one included, in stream order.
    pub occurrences: Vec<BugSite>,
    /// The simulated vCPU threads.
    pub vcpus: Vec<VcpuThread>,
    /// Events a detector or triage must point at whatever the flavour (a failed nested entry,
    /// a triple fault reflected to L1, a VM killed by an internal error), in stream order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub landmarks: Vec<Landmark>,
    /// Every value written to a vmcs12 field, by L1 (VMWRITE, also the untraced shadow-VMCS
    /// ones) or by L0 (the sync at a nested VM-exit, a nested-state restore), in time order.
    pub vmcs12_writes: Vec<Vmcs12Write>,
}

/// Where one occurrence of a bug shows in the event stream. All three are indices into
/// [`super::Simulation::events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BugSite {
    /// The bug.
    pub bug: Bug,
    /// The vCPU it happened on.
    pub vcpu: u32,
    /// The event at which the buggy KVM does the wrong thing (for (a) the synthesized exit that
    /// syncs the stale CR3; for (e) the exit taken before the eVMCS is mapped). The fixed
    /// flavour has the same event at the same place in this vCPU's stream.
    pub trigger: usize,
    /// The first event of this vCPU whose content differs from what the fixed flavour (same
    /// seed and knobs) emits there.
    pub first_difference: usize,
    /// The event a correct model must flag: the §3 signature's key event.
    pub divergence: usize,
    /// One sentence on what the signature looks like.
    pub note: &'static str,
    /// For a stuck vCPU (a loop), the first event (`kvm_exit`) of every round of the cycle, in
    /// order: a loop detector reports the cycle once, with this many repeats; `divergence` is
    /// the third round's (`max` with `first_difference`). Empty for a bug that is not a loop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cycle_starts: Vec<usize>,
}

/// An event of the run that a detector or triage must point at, bug or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Landmark {
    /// What it is (`failed-nested-entry`, `l2-triple-fault-reflected`, `internal-error`, …).
    pub what: &'static str,
    /// The vCPU.
    pub vcpu: u32,
    /// The key event (index into [`super::Simulation::events`]).
    pub at: usize,
    /// The events that explain it (the failed check, the exception whose delivery failed, …).
    pub evidence: Vec<usize>,
    /// One sentence.
    pub note: &'static str,
}

/// One simulated vCPU thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VcpuThread {
    /// The vCPU id (`vcpu_id` fields).
    pub vcpu_id: u32,
    /// The thread's pid (`common_pid`).
    pub pid: i32,
    /// The thread's comm (`CPU 0/KVM`).
    pub comm: String,
    /// The physical CPU it runs on.
    pub cpu: u32,
}

/// A vmcs12 field the simulator tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Vmcs12Field {
    /// `GUEST_CR3`.
    GuestCr3,
    /// `EPT_POINTER`.
    EptPointer,
    /// `GUEST_RIP`.
    GuestRip,
    /// `GUEST_ACTIVITY_STATE` (0 active, 1 HLT).
    GuestActivityState,
    /// `VM_ENTRY_INTR_INFO_FIELD`.
    VmEntryIntrInfo,
    /// `HOST_RIP`.
    HostRip,
    /// `HOST_CR3`.
    HostCr3,
    /// `VM_EXIT_REASON`.
    ExitReason,
    /// The launch state (1 launched, 0 clear); not a field L1 can VMREAD, but part of the vmcs12.
    LaunchState,
    /// Secondary controls bit "enable EPT" as L1 set it (1 nested EPT).
    EnableEpt,
}

/// Who wrote a vmcs12 field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Writer {
    /// L1: VMWRITE (traced or shadowed), VMCLEAR, or its initial setup.
    L1,
    /// L0 at a nested VM-exit (`sync_vmcs02_to_vmcs12` / `prepare_vmcs12`).
    L0Exit,
    /// L0 at a successful nested VM-entry (launch state).
    L0Entry,
    /// L0 restoring nested state (`KVM_SET_NESTED_STATE`).
    L0Restore,
}

/// One write of one vmcs12 field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vmcs12Write {
    /// When the write happened (trace clock, ns).
    pub ts: u64,
    /// The index of the first event emitted after the write (the value holds from that event
    /// on); `events.len()` if none follows.
    pub before_event: usize,
    /// The vCPU.
    pub vcpu: u32,
    /// The vmcs12's guest-physical address (its `current_vmptr`); all ones for an eVMCS.
    pub vmcs12: u64,
    /// The field.
    pub field: Vmcs12Field,
    /// The new value.
    pub value: u64,
    /// Who wrote it.
    pub writer: Writer,
}

impl GroundTruth {
    /// The history of one field of one vmcs12: `(ts, value, writer)` in time order.
    pub fn field_history(&self, vmcs12: u64, field: Vmcs12Field) -> Vec<(u64, u64, Writer)> {
        self.vmcs12_writes
            .iter()
            .filter(|w| w.vmcs12 == vmcs12 && w.field == field)
            .map(|w| (w.ts, w.value, w.writer))
            .collect()
    }

    /// The bug injected, if the flavour is buggy.
    pub fn injected(&self) -> Option<Bug> {
        match self.kvm {
            KvmFlavour::Fixed => None,
            KvmFlavour::Buggy(bug) => Some(bug),
        }
    }
}
