//! What the model reports: [`Anomaly`] values naming a [`RuleId`], a [`Severity`], the vCPU, the
//! event where the divergence became certain and the events that prove it.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The 0-based position of an event in the stream given to [`crate::Model::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct EventIndex(pub u64);

impl fmt::Display for EventIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

pub use vmxray_events::Actor;

/// How bad a divergence is. Ordered: `Info < Warning < Error < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; not a divergence from KVM's documented behaviour.
    Info,
    /// Likely a divergence, but an untraced legitimate cause exists (shadow VMCS writes, ...).
    Warning,
    /// KVM did not do what it must do.
    Error,
    /// A known, severe KVM bug signature (guest state corruption across subjects).
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 4] = [Self::Info, Self::Warning, Self::Error, Self::Critical];

    /// The one rank of a severity: 0 (info) to 3 (critical), the index into [`Severity::ALL`]
    /// and into per-severity counters; the scan's `severity_rank` column.
    pub fn rank(self) -> usize {
        match self {
            Self::Info => 0,
            Self::Warning => 1,
            Self::Error => 2,
            Self::Critical => 3,
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A severity name that is not one of `info`, `warning`, `error`, `critical`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown severity `{0}`: expected info, warning, error or critical")]
pub struct UnknownSeverity(pub String);

impl FromStr for Severity {
    type Err = UnknownSeverity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|sev| sev.name() == s).ok_or_else(|| UnknownSeverity(s.into()))
    }
}

macro_rules! rules {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $sev:ident, $commit:literal, $checks:literal, $needs:literal; )*) => {
        /// Every rule the model checks. The documentation of each lives in its module under
        /// [`crate::rules`]; [`RuleId::commit`] names the KVM behaviour it encodes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum RuleId {
            $( $(#[$doc])* $variant, )*
        }

        impl RuleId {
            /// Every rule, in report order.
            pub const ALL: &'static [RuleId] = &[$(Self::$variant,)*];
            /// Number of rules.
            pub const COUNT: usize = Self::ALL.len();

            /// The rule's stable name (used by `--rules` and the JSON Lines output).
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// The severity the rule reports at (some rules raise it for a stronger signature).
            pub fn default_severity(self) -> Severity {
                match self { $(Self::$variant => Severity::$sev,)* }
            }

            /// The KVM commit (hash, or subject and lore Message-Id) whose behaviour the rule checks.
            pub fn commit(self) -> &'static str {
                match self { $(Self::$variant => $commit,)* }
            }

            /// One line: what the rule checks.
            pub fn checks(self) -> &'static str {
                match self { $(Self::$variant => $checks,)* }
            }

            /// What a trace must contain for the rule to be decidable; shown as the reason when
            /// a trace never gave the rule anything to check.
            pub fn needs(self) -> &'static str {
                match self { $(Self::$variant => $needs,)* }
            }

            /// Dense index (for per-rule counters).
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

rules! {
    /// §3(a), invariant 7.
    ChangedSubjectCr3 = "changed_subject_cr3", Warning,
        "04f11ef45810 KVM: nVMX: Always write vmcs02.GUEST_CR3 during nested VM-Enter",
        "a vmcs12's GUEST_CR3 changed between its exit and its next entry with no L2 CR3 load and no L1 VMWRITE; critical when it is the CR3 of the L2 that last ran on hardware",
        "two kvm_nested_vmenter (6.1+) of one vmcs12 with nested_ept=n, and either no L2 kvm_entry between them or shadow paging (kvm_cr logs every L2 CR3 load)";
    /// §2.5/§3(a), invariant 6.
    HltCancelledExitState = "hlt_cancelled_exit_state", Error,
        "04f11ef45810 KVM: nVMX: Always write vmcs02.GUEST_CR3 during nested VM-Enter (regression from fd3edd4a9066)",
        "after an entry that never reached hardware (HLT activity), the synthesized exit reports exactly the entered state (nested_rip, GUEST_CR3); with nested EPT (GUEST_CR3 untraced) the next run does not fault into L1 at once (warning: consequence only)",
        "a kvm_nested_vmenter followed by kvm_nested_vmexit_inject with no kvm_entry between, then the next entry of that vmcs12";
    /// §3(b), invariant 9.
    LateVmfailL1Cr3 = "late_vmfail_l1_cr3", Error,
        "f087a02941fe KVM: nVMX: Stash L1's CR3 in vmcs01.GUEST_CR3 on nested entry w/o EPT (first fix 2b27924bb1d4)",
        "after a late (hardware) VM-Fail, L1's next root gfn or CR3 read equals its CR3 at the VMLAUNCH/VMRESUME, and L1 runs again rather than shutting down",
        "kvm_nested_vmenter_failed \"hardware VM-instruction error\", a known L1 CR3 (kvm_cr), and a later L1 root load, CR3 read, or KVM_EXIT_SHUTDOWN (before L1's next kvm_entry, or after one with no root load)";
    /// §2.6, invariant 9.
    LateVmfailResume = "late_vmfail_resume", Error,
        "4f350c6dbcb9 kvm: nVMX: Handle deferred early VMLAUNCH/VMRESUME failure properly",
        "a late VM-Fail emits no kvm_nested_vmexit_inject and L1 resumes after its VMLAUNCH/VMRESUME",
        "kvm_nested_vmenter_failed \"hardware VM-instruction error\" after a VMLAUNCH/VMRESUME kvm_exit with a rip (5.10+)";
    /// §3(c), invariants 11 and 12.
    GuestMmuRootNotReacquired = "guest_mmu_root_not_reacquired", Error,
        "f8aa7e3958bc KVM: nVMX: Invalidate all EPTP contexts when emulating INVEPT for L1 (refined by ce8fe7b77bd8)",
        "after INVEPT, or VMPTRLD/VMCLEAR that released the current vmcs12, the next nested-EPT L2 entry reacquires its guest_mmu root before the first L2 kvm_entry",
        "kvmmmu events showing guest_mmu root loads (shadow EPT), nested_ept=y entries, and an INVEPT/VMPTRLD/VMCLEAR exit in L1";
    /// §2.9, invariant 13.
    InvvpidRootNotReacquired = "invvpid_root_not_reacquired", Warning,
        "25b62c6274ed KVM: nVMX: Free only guest_mode (L2) roots on INVVPID w/o EPT",
        "with enable_ept=0, after an INVVPID exit in L1 the next L2 entry acquires a guest_mode root",
        "shadow paging (non-direct kvm_mmu_get_page roots in L1 and L2) and an INVVPID exit in L1";
    /// §3(d), invariant 16.
    ResetRootRole = "reset_root_role", Error,
        "0aa1837533e5 KVM: x86: Properly reset MMU context at vCPU RESET/INIT",
        "after RESET (entry at 0xfff0) or INIT/SIPI (entry at RIP 0 right after a 64-bit exit) of a vCPU that had paging on, a direct root (guest_mode 0, smm 0) is loaded before the entry",
        "shadow paging (kvm_mmu_get_page roots) and a kvm_entry at rip 0xfff0, or at rip 0 right after a kvm_exit at a 64-bit rip, once paging was on";
    /// §3(e), invariant 19.
    EvmcsRestoreStaleExit = "evmcs_restore_stale_exit", Warning,
        "f5c7e8425f18 KVM: nVMX: Always make an attempt to map eVMCS after migration",
        "after an eVMCS nested-state restore and an asynchronous exit before any L2 entry, L1 resumes L2 at the restored RIP and does not bugcheck (Hyper-V crash MSRs): it did not act on a stale exit",
        "a kvm_nested_vmenter with vmcs -1 and no VMLAUNCH/VMRESUME/RSM before it";
    /// §3(f), invariant 20.
    PmlFullInL2 = "pml_full_in_l2", Error,
        "1f4e5fc83a42 KVM: x86: fix nested guest live migration with PML",
        "no hardware PML_FULL exit (62) or kvm_pml_full event occurs while L2 runs",
        "a vCPU known to be in L2 (kvm_nested_vmenter / kvm_nested_vmexit)";
    /// Blind bug x1 (issue 16).
    EptViolationPermittedAccess = "ept_violation_permitted_access", Error,
        "0780516a18f8 KVM: nVMX: fix EPT permissions as reported in exit qualification",
        "an EPT violation reflected to L1 names in its qualification (bits 2:0) an access that its permission bits (5:3: R, W, X of EPT12) do not allow",
        "kvm_nested_vmexit_inject of an EPT_VIOLATION with its qualification (ext_inf1)";
    /// Blind bug x2 (issue 16), §3(g).
    PaePdptesFromCr3 = "pae_pdptes_from_cr3", Error,
        "7ca29de21362 KVM: nVMX: fix CR3 load if L2 uses PAE paging and EPT",
        "a nested VM-entry with nested EPT does not fail on loading PAE PDPTEs from L2's CR3 (with EPT they come from vmcs12's GUEST_PDPTR0-3): no ENTRY_FAIL_PDPTE consistency check with nested_ept=y",
        "kvm_nested_vmenter (6.1+) with nested_ept=y; a failure shows as kvm_nested_vmenter_failed \"!load_pdptrs(vcpu, cr3)\"";
    /// Blind bug x3 (issue 16), invariant 21.
    LmswExitRouting = "lmsw_exit_routing", Error,
        "e1d39b17e044 KVM: nVMX: Fix handling of lmsw instruction",
        "an L2 lmsw is reflected to L1 exactly when its source (qualification bits 31:16) changes a CR0 bit L1 owns (vmcs12 CR0 guest/host mask and read shadow)",
        "an L2 kvm_exit CR_ACCESS of type LMSW and vmcs12's CR0_GUEST_HOST_MASK and CR0_READ_SHADOW from VMCS-field records (replay --fields, trace_printk lines): no tracepoint carries them";
    /// Invariant 1.
    EntryWithoutExit = "entry_without_exit", Error,
        "4f350c6dbcb9 (late VM-Fail is the only entry with no exit) and kvm_nested_vmenter_failed from the CC() series (Sean Christopherson, 2020)",
        "two kvm_entry of one vCPU have a kvm_exit between them, or a late VM-Fail",
        "kvm_entry and kvm_exit events";
    /// Invariant 2 (first half).
    NestedVmexitOutsideL2 = "nested_vmexit_outside_l2", Error,
        "KVM: x86: Use common definition for kvm_nested_vmexit tracepoint (Sean Christopherson, 5.10)",
        "kvm_nested_vmexit appears only while L2 is active",
        "a vCPU known to be in L1 (kvm_nested_vmexit_inject or kvm_nested_vmenter seen)";
    /// Invariant 2 (second half).
    NestedVmexitMismatch = "nested_vmexit_mismatch", Error,
        "KVM: x86: Use common definition for kvm_nested_vmexit tracepoint (Sean Christopherson, 5.10)",
        "kvm_nested_vmexit repeats reason/info1/info2/intr_info/error_code of the vCPU's latest kvm_exit",
        "kvm_nested_vmexit with the 5.10+ layout right after a kvm_exit";
    /// Invariant 3.
    UnexplainedVmenter = "unexplained_vmenter", Error,
        "KVM: x86: Print guest pgd in kvm_nested_vmenter() (Matlack/Zhang series, 6.1)",
        "a kvm_nested_vmenter follows a VMLAUNCH/VMRESUME exit, an RSM (SMM leave), or is a nested-state restore (outside exit handling)",
        "kvm_nested_vmenter (6.1+) and kvm_exit events";
    /// Invariants 4 and 10.
    HostRipMismatch = "host_rip_mismatch", Error,
        "nested_vmx_vmexit/load_vmcs12_host_state (vmx/nested.c); 4f350c6dbcb9 for the VMFail exception",
        "after a nested exit (kvm_nested_vmexit_inject or a failed entry) the next kvm_entry is at the vmcs12's HOST_RIP (learned from its earlier exits) unless L1 VMWRITEd",
        "two nested exits of one vmcs12 followed by kvm_entry with rip (5.10+), with no VMWRITE kvm_exit between them (the field a VMWRITE writes is not traced, so any may have changed HOST_RIP)";
    /// Invariant 5.
    L2EntryMismatch = "l2_entry_mismatch", Error,
        "KVM: x86: Print guest pgd in kvm_nested_vmenter() (6.1); 3e633e7e7d07 for kvm_entry.intr_info (6.14)",
        "the first L2 kvm_entry after kvm_nested_vmenter is at nested_rip, and (6.14+) injects event_inj",
        "kvm_nested_vmenter (6.1+) followed by kvm_entry with rip (5.10+)";
    /// Invariants 10 and 24.
    LaunchState = "launch_state", Error,
        "prepare_vmcs12 launch_state handling (vmx/nested.c); VMXERR_VMLAUNCH_NONCLEAR_VMCS / VMRESUME_NONLAUNCHED_VMCS",
        "a failed VM-entry leaves the vmcs12 clear (a later VMRESUME must VMfail); a launched vmcs12 cannot be VMLAUNCHed without VMCLEAR",
        "kvm_nested_vmenter (6.1+) and VMLAUNCH/VMRESUME exits";
    /// Invariant 24.
    VmptrWithoutVmptrld = "vmptr_without_vmptrld", Error,
        "nested_vmx_run uses nested.current_vmptr, changed only by VMPTRLD/VMCLEAR (handle_vmptrld, vmx/nested.c)",
        "the vmcs of consecutive kvm_nested_vmenter changes only after a VMPTRLD exit (restores and eVMCS excepted)",
        "two kvm_nested_vmenter (6.1+) from VMLAUNCH/VMRESUME";
    /// Invariant 8.
    EarlyVmfailResume = "early_vmfail_resume", Warning,
        "nested_vmx_fail / nested_vmx_check_controls (CC() checks, vmx/nested.c)",
        "a VMfail caught before kvm_nested_vmenter leaves L1 in root mode at rip + 3, with no MMU role change",
        "kvm_nested_vmenter_failed before kvm_nested_vmenter and kvm_entry with rip (5.10+)";
    /// The EPT_VIOLATION livelock report.
    Livelock = "livelock", Warning,
        "\"Deadlock due to EPT_VIOLATION\" (kvm list, 2023-05-23)",
        "the same fault exit (reason, rip, qualification) does not repeat N times with nothing else happening",
        "kvm_exit with rip";
    /// Invariant 14 and §1.16 (shadow MMU).
    RootGfnNotCr3 = "root_gfn_not_cr3", Error,
        "kvm_mmu_new_pgd / mmu_alloc_shadow_roots (mmu/mmu.c): a shadow root shadows the guest's CR3",
        "the root loaded after a MOV to CR3 (kvm_cr) shadows that CR3 (gfn = CR3 >> 12)",
        "kvm_cr writes of CR3 (shadow paging) followed by kvm_mmu_get_page of a root";
    /// Invariant 14.
    RootWrongLevel = "root_wrong_level", Error,
        "kvm_mmu_page_role.guest_mode, set from is_guest_mode() by kvm_calc_*_root_page_role (mmu/mmu.c) so that L1 and L2 never share roots",
        "every root loaded in L2 has guest_mode 1 and every root loaded in L1 has guest_mode 0",
        "kvm_mmu_get_page roots with their raw role word (guest_mode is not in the kernel's text rendering: use trace.dat, perf.data or `trace-cmd report -R`) on a vCPU whose level is known (nested tracepoints)";
    /// Invariant 14.
    RootWrongSmm = "root_wrong_smm", Error,
        "699023e23965 KVM: x86: add SMM to the MMU role, support SMRAM address space; kvm_smm_changed resets the MMU",
        "role.smm is non-zero exactly between kvm_smm_transition entering and leaving",
        "kvm_smm_transition and later kvm_mmu_get_page roots with their raw role word (smm is not in the kernel's text rendering)";
    /// Invariant 15.
    GuestMmuRootRole = "guest_mmu_root_role", Error,
        "272b0a998d08 KVM: nVMX: Don't clobber nested MMU's A/D status on EPTP switch; kvm_calc_shadow_ept_root_page_role",
        "a guest_mmu root has direct 0, 8-byte gptes, ad_disabled = !EPTP[6] and level = EPTP walk length",
        "kvm_mmu_get_page for EPTP>>12 after a nested_ept=y kvm_nested_vmenter";
    /// Invariant 17.
    RoleChangeRootReload = "role_change_root_reload", Error,
        "KVM_MMU_CR0_ROLE_BITS / KVM_MMU_CR4_ROLE_BITS in kvm_post_set_cr0/cr4 and kvm_smm_changed -> kvm_mmu_reset_context (x86.c, smm.c); 0aa1837533e5 for RESET/INIT",
        "a change of CR0.PG/WP, a CR4 paging bit or SMM is followed by a root load (direct iff paging is off) before the next kvm_entry",
        "shadow-MMU root loads (kvm_mmu_get_page) and kvm_cr writes of CR0/CR4 after a known value, or kvm_smm_transition";
    /// Invariant 18.
    SmmNestedReturn = "smm_nested_return", Error,
        "vmx_leave_smm -> nested_vmx_enter_non_root_mode(from_vmentry=false) (vmx/vmx.c, 4.x SMM series)",
        "an RSM that leaves SMM entered from L2 re-enters the same vmcs12 (kvm_nested_vmenter) before the next kvm_entry",
        "kvm_smm_transition entering while L2 is active";
    /// nSVM RSM into L2 (issue 15).
    RsmL1State = "rsm_l1_state", Error,
        "37be407b2ce8 KVM: nSVM: Fix L1 state corruption upon return from SMM (after the VMCB split 4995a3685f1b)",
        "after an RSM that re-entered L2, L2's first exit reflected to L1 resumes L1 where L1 was, not at the RSM instruction",
        "kvm_exit with rip before kvm_smm_transition leaving, a kvm_nested_vmenter/kvm_nested_vmrun, kvm_nested_vmexit_inject and the next kvm_entry rip";
    /// Emulation failure in L2 answered with #UD (issue 15, the Hyper-V `rep movs` report).
    EmulationUdInL2 = "emulation_ud_in_l2", Warning,
        "342993f96ab2 KVM: x86: clear stale x86_emulate_ctxt->intercept value (the 5.6-rc4 regression of 07721feee46b with c44b4c6ab80e)",
        "a plain data move (mov, movs, stos, lods, cmps, scas) L0 emulates for L2 does not fail; a failure in L2 becomes a #UD in L2 (info for other instructions: KVM's designed answer)",
        "kvm_emulate_insn of a data move while KVM handles an exit of L2 (kvm_nested_vmexit), and for a report the FAIL followed by kvm_inj_exception #UD";
    /// Nested VM-exit while the nested run is pending (issue 15, the nSVM migration report).
    ExitWhileRunPending = "exit_while_run_pending", Error,
        "81f76adad560 KVM: nSVM: correctly restore nested_run_pending on migration (nVMX carries it in KVM_STATE_NESTED_RUN_PENDING)",
        "no nested VM-exit other than a failed entry comes between a VMLAUNCH/VMRESUME/VMRUN that injects an event and L2's first kvm_entry (it would discard the event)",
        "kvm_nested_vmenter/kvm_nested_vmrun with a valid event_inj after a VMLAUNCH/VMRESUME/VMRUN exit, then kvm_nested_intr_vmexit or kvm_nested_vmexit_inject";
    /// A level-triggered EOI broadcast to userspace with the line asserted (issue 15, bugzilla
    /// 220549).
    LevelEoiLineAsserted = "level_eoi_line_asserted", Warning,
        "6517dfbcc918 KVM: x86: Add x2APIC \"features\" to control EOI broadcast suppression (kernel bugzilla 220549)",
        "an EOI of a level-triggered interrupt that KVM forwards to the userspace I/O APIC (KVM_EXIT_IOAPIC_EOI) comes after its line was lowered (else the I/O APIC re-delivers it at once)",
        "kvm_set_irq of a GSI with its delivery (kvm_msi_set_irq or kvm_ioapic_set_irq, level-triggered), then kvm_eoi of that vector";
    /// Invariant 22.
    L2PfNotHandledByL0 = "l2_pf_not_handled_by_l0", Warning,
        "vmx_need_pf_intercept / nested_vmx_l0_wants_exit (vmx/nested.c)",
        "with enable_ept=0 an L2 #PF reaches L1 only after L0 handled it (kvm_page_fault with CR2 = ext_inf1)",
        "shadow paging and an EXCEPTION_NMI #PF kvm_nested_vmexit_inject";
}

impl RuleId {
    /// For a rule that finds an *absence* (an event KVM must emit between two others), the
    /// event an excerpt's cuts may have left out. In an excerpt such a finding is reported at
    /// [`Severity::Info`] with this named: the poster's cut, not KVM, is the likelier cause.
    pub fn gap_explainable(self) -> Option<&'static str> {
        Some(match self {
            Self::EntryWithoutExit => "the kvm_exit between the two entries",
            Self::NestedVmexitOutsideL2 => "the kvm_nested_vmenter that entered L2",
            Self::UnexplainedVmenter => "the VMLAUNCH/VMRESUME exit or the RSM before the entry",
            Self::VmptrWithoutVmptrld => "the VMPTRLD exit",
            Self::LaunchState => "the VMCLEAR or VMLAUNCH exit",
            Self::SmmNestedReturn => "the kvm_nested_vmenter of the return",
            Self::RoleChangeRootReload => "the root load",
            Self::ResetRootRole => "the root load",
            Self::GuestMmuRootNotReacquired => "the root load",
            Self::InvvpidRootNotReacquired => "the root load",
            Self::L2PfNotHandledByL0 => "the kvm_page_fault",
            Self::HostRipMismatch => "a VMWRITE exit",
            Self::L2EntryMismatch => "an exit and entry in between",
            Self::ChangedSubjectCr3
            | Self::HltCancelledExitState
            | Self::LateVmfailL1Cr3
            | Self::LateVmfailResume
            | Self::EvmcsRestoreStaleExit
            | Self::PmlFullInL2
            | Self::EptViolationPermittedAccess
            | Self::PaePdptesFromCr3
            | Self::LmswExitRouting
            | Self::NestedVmexitMismatch
            | Self::EarlyVmfailResume
            | Self::Livelock
            | Self::RootGfnNotCr3
            | Self::RootWrongLevel
            | Self::RootWrongSmm
            | Self::GuestMmuRootRole
            | Self::RsmL1State
            // Decides for itself: an exit at the reset RIP proves no entry was cut.
            | Self::ExitWhileRunPending
            | Self::LevelEoiLineAsserted
            | Self::EmulationUdInL2 => return None,
        })
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule name that no rule has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown rule `{0}` (see `vmxray replay --help` for the list)")]
pub struct UnknownRule(pub String);

impl FromStr for RuleId {
    type Err = UnknownRule;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|r| r.name() == s).ok_or_else(|| UnknownRule(s.into()))
    }
}

/// A set of rules (a bit set over [`RuleId`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleSet(u64);

impl RuleSet {
    /// Every rule.
    pub fn all() -> Self {
        Self(if RuleId::COUNT >= 64 { u64::MAX } else { (1u64 << RuleId::COUNT) - 1 })
    }

    /// No rule.
    pub fn none() -> Self {
        Self(0)
    }

    /// Adds a rule.
    pub fn with(mut self, rule: RuleId) -> Self {
        self.0 |= 1 << rule.index();
        self
    }

    /// Whether `rule` is in the set.
    pub fn contains(self, rule: RuleId) -> bool {
        self.0 & (1 << rule.index()) != 0
    }
}

impl FromIterator<RuleId> for RuleSet {
    fn from_iter<I: IntoIterator<Item = RuleId>>(iter: I) -> Self {
        iter.into_iter().fold(Self::none(), Self::with)
    }
}

/// One divergence between the trace and what KVM must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// The rule that found it.
    pub rule: RuleId,
    /// How bad it is.
    pub severity: Severity,
    /// The vCPU (or thread) it concerns.
    pub vcpu: Actor,
    /// The event at which the divergence became certain.
    pub at: EventIndex,
    /// The earlier events that prove it, oldest first (bounded: a rule keeps a few indices,
    /// never a history).
    pub evidence: Vec<EventIndex>,
    /// What is wrong, with the values involved.
    pub message: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}: {}", self.at, self.severity, self.vcpu, self.rule, self.message)
    }
}
