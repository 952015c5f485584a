//! The rules: one module per rule, each documenting what it checks, the KVM commit it encodes
//! and the exact event sequence it matches.
//!
//! A rule sees the actor's state *before* the event (`Ctx::vcpu`), keeps at most a few event
//! indices of its own (its `State`, reset when events are lost), counts every decidable
//! instance with `Ctx::checked` (so a trace that never gives it one reports it "not
//! checkable"), and reports with `Ctx::report`.
//!
//! `check` dispatches each event to the rules that look at that kind of event; matching on the
//! event kind once keeps replay at tens of millions of events per second. The handlers of the
//! frequent kinds (entries, exits, nested entries and exits) are `#[inline]`: called out of
//! line, their calls and the reloads of `Ctx` around them were 6 % of replay.

use vmxray_events::{Event, EventKind};

use crate::anomaly::{Actor, Anomaly, EventIndex, RuleId, Severity};
use crate::model::{Findings, ModelConfig};
use crate::state::{Features, VcpuState};

pub mod changed_subject_cr3;
pub mod early_vmfail_resume;
pub mod emulation_ud_in_l2;
pub mod entry_without_exit;
pub mod ept_violation_permitted_access;
pub mod evmcs_restore_stale_exit;
pub mod exit_while_run_pending;
pub mod guest_mmu_root_not_reacquired;
pub mod guest_mmu_root_role;
pub mod hlt_cancelled_exit_state;
pub mod host_rip_mismatch;
pub mod invvpid_root_not_reacquired;
pub mod l2_entry_mismatch;
pub mod l2_pf_not_handled_by_l0;
pub mod late_vmfail_l1_cr3;
pub mod late_vmfail_resume;
pub mod launch_state;
pub mod level_eoi_line_asserted;
pub mod livelock;
pub mod lmsw_exit_routing;
pub mod nested_vmexit_mismatch;
pub mod nested_vmexit_outside_l2;
pub mod pae_pdptes_from_cr3;
pub mod pml_full_in_l2;
pub mod reset_root_role;
pub mod role_change_root_reload;
pub mod root_gfn_not_cr3;
pub mod root_wrong_level;
pub mod root_wrong_smm;
pub mod rsm_l1_state;
pub mod smm_nested_return;
pub mod unexplained_vmenter;
pub mod vmptr_without_vmptrld;

/// What a rule sees of one event.
pub(crate) struct Ctx<'a> {
    /// The event's index.
    pub at: EventIndex,
    /// Its actor.
    pub actor: Actor,
    /// The actor's state before the event.
    pub vcpu: &'a VcpuState,
    /// What the trace revealed about the kernel (including this event).
    pub features: &'a Features,
    /// Model configuration.
    pub config: &'a ModelConfig,
    pub(crate) findings: &'a mut Findings,
}

impl Ctx<'_> {
    /// Counts one decidable instance of `rule`.
    pub fn checked(&mut self, rule: RuleId) {
        self.findings.checks[rule.index()] += 1;
    }

    /// Reports an anomaly at the current event.
    pub fn report(
        &mut self,
        rule: RuleId,
        severity: Severity,
        evidence: &[EventIndex],
        message: impl FnOnce() -> String,
    ) {
        if !self.findings.enabled.contains(rule) {
            return;
        }
        let (severity, message) = match rule.gap_explainable() {
            Some(omitted) if self.config.excerpt && severity > Severity::Info => (
                Severity::Info,
                format!("{} (excerpt: {omitted} may be among the lines it leaves out)", message()),
            ),
            _ => (severity, message()),
        };
        let mut evidence = evidence.to_vec();
        evidence.sort_unstable();
        evidence.dedup();
        self.findings.report(Anomaly {
            rule,
            severity,
            vcpu: self.actor,
            at: self.at,
            evidence,
            message,
        });
    }
}

/// The rules' own per-actor windows (bounded; reset on lost events).
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleStates {
    pub entry_without_exit: entry_without_exit::State,
    pub late_vmfail_l1_cr3: late_vmfail_l1_cr3::State,
    pub late_vmfail_resume: late_vmfail_resume::State,
    pub guest_mmu_root: guest_mmu_root_not_reacquired::State,
    pub invvpid_root: invvpid_root_not_reacquired::State,
    pub reset_root_role: reset_root_role::State,
    pub evmcs: evmcs_restore_stale_exit::State,
    pub vmptr: vmptr_without_vmptrld::State,
    pub early_vmfail: early_vmfail_resume::State,
    pub livelock: livelock::State,
    pub root_gfn: root_gfn_not_cr3::State,
    pub guest_mmu_role: guest_mmu_root_role::State,
    pub smm_return: smm_nested_return::State,
    pub rsm_l1: rsm_l1_state::State,
    pub l2_pf: l2_pf_not_handled_by_l0::State,
    pub role_change: role_change_root_reload::State,
    pub hlt_cancelled: hlt_cancelled_exit_state::State,
    pub emulation_ud: emulation_ud_in_l2::State,
    pub run_pending: exit_while_run_pending::State,
    pub level_eoi: level_eoi_line_asserted::State,
    pub lmsw: lmsw_exit_routing::State,
}

/// Runs every rule interested in `event`.
pub(crate) fn check(ctx: &mut Ctx<'_>, rs: &mut RuleStates, event: &Event) {
    livelock::on_event(ctx, &mut rs.livelock, event);
    match &event.kind {
        EventKind::KvmExit(info) => {
            pml_full_in_l2::on_exit(ctx, info);
            lmsw_exit_routing::on_exit(ctx, &mut rs.lmsw, info);
            l2_pf_not_handled_by_l0::on_exit(&mut rs.l2_pf);
            guest_mmu_root_not_reacquired::on_exit(ctx, &mut rs.guest_mmu_root, info);
            invvpid_root_not_reacquired::on_exit(ctx, &mut rs.invvpid_root, info);
            reset_root_role::on_exit(ctx, &mut rs.reset_root_role, info);
            emulation_ud_in_l2::disarm(&mut rs.emulation_ud);
            exit_while_run_pending::disarm(&mut rs.run_pending);
        }
        EventKind::KvmNestedVmexit(info) => {
            nested_vmexit_outside_l2::on_nested_vmexit(ctx, info);
            nested_vmexit_mismatch::on_nested_vmexit(ctx, info);
        }
        EventKind::KvmNestedVmexitInject(info) => {
            late_vmfail_resume::on_inject(ctx, &mut rs.late_vmfail_resume);
            guest_mmu_root_not_reacquired::on_inject(&mut rs.guest_mmu_root);
            invvpid_root_not_reacquired::on_inject(&mut rs.invvpid_root);
            guest_mmu_root_role::on_inject(&mut rs.guest_mmu_role);
            evmcs_restore_stale_exit::on_inject(ctx, &mut rs.evmcs, info);
            l2_pf_not_handled_by_l0::on_inject(ctx, &mut rs.l2_pf, info);
            reset_root_role::disturb(&mut rs.reset_root_role);
            hlt_cancelled_exit_state::on_inject(ctx, &mut rs.hlt_cancelled, info);
            rsm_l1_state::on_inject(ctx, &mut rs.rsm_l1);
            exit_while_run_pending::on_inject(ctx, &mut rs.run_pending, info.reason());
            ept_violation_permitted_access::on_inject(ctx, info);
            lmsw_exit_routing::on_inject(ctx, &mut rs.lmsw, info);
            emulation_ud_in_l2::disarm(&mut rs.emulation_ud);
        }
        EventKind::KvmNestedVmenter(v) => {
            unexplained_vmenter::on_vmenter(ctx, v);
            changed_subject_cr3::on_vmenter(ctx, v);
            hlt_cancelled_exit_state::on_vmenter(ctx, &mut rs.hlt_cancelled, v);
            launch_state::on_vmenter(ctx, v);
            pae_pdptes_from_cr3::on_vmenter(ctx, v);
            vmptr_without_vmptrld::on_vmenter(ctx, &mut rs.vmptr, v);
            guest_mmu_root_not_reacquired::on_vmenter(ctx, &mut rs.guest_mmu_root, v);
            guest_mmu_root_role::on_vmenter(&mut rs.guest_mmu_role, ctx.at, v);
            invvpid_root_not_reacquired::on_vmenter(ctx, &mut rs.invvpid_root, v);
            evmcs_restore_stale_exit::on_vmenter(ctx, &mut rs.evmcs, v);
            smm_nested_return::on_vmenter(ctx, &mut rs.smm_return, v);
            rsm_l1_state::on_vmenter(ctx, &mut rs.rsm_l1);
            late_vmfail_l1_cr3::disarm(&mut rs.late_vmfail_l1_cr3);
            lmsw_exit_routing::disarm(&mut rs.lmsw);
            reset_root_role::disturb(&mut rs.reset_root_role);
            exit_while_run_pending::disarm(&mut rs.run_pending);
            emulation_ud_in_l2::disarm(&mut rs.emulation_ud);
        }
        EventKind::KvmNestedVmenterFailed { kind, msg, .. } => {
            pae_pdptes_from_cr3::on_vmenter_failed(ctx, *kind, msg);
            entry_without_exit::on_vmenter_failed(&mut rs.entry_without_exit, ctx.at, *kind);
            late_vmfail_resume::on_vmenter_failed(ctx, &mut rs.late_vmfail_resume, *kind);
            late_vmfail_l1_cr3::on_vmenter_failed(ctx, &mut rs.late_vmfail_l1_cr3, *kind);
            early_vmfail_resume::on_vmenter_failed(ctx, &mut rs.early_vmfail, *kind);
        }
        EventKind::KvmEntry(e) => {
            entry_without_exit::on_entry(ctx, &mut rs.entry_without_exit);
            host_rip_mismatch::on_entry(ctx, e);
            l2_entry_mismatch::on_entry(ctx, e);
            guest_mmu_root_not_reacquired::on_entry(ctx, &mut rs.guest_mmu_root);
            invvpid_root_not_reacquired::on_entry(ctx, &mut rs.invvpid_root);
            guest_mmu_root_role::on_entry(&mut rs.guest_mmu_role);
            reset_root_role::on_entry(ctx, &mut rs.reset_root_role, e);
            early_vmfail_resume::on_entry(ctx, &mut rs.early_vmfail, e);
            late_vmfail_l1_cr3::on_entry(ctx, &mut rs.late_vmfail_l1_cr3);
            late_vmfail_resume::on_entry(ctx, &mut rs.late_vmfail_resume, e);
            smm_nested_return::on_entry(ctx, &mut rs.smm_return);
            rsm_l1_state::on_entry(ctx, &mut rs.rsm_l1, e.rip);
            root_gfn_not_cr3::on_entry(&mut rs.root_gfn);
            lmsw_exit_routing::on_entry(ctx, &mut rs.lmsw);
            role_change_root_reload::on_entry(ctx, &mut rs.role_change);
            exit_while_run_pending::on_entry(ctx, &mut rs.run_pending);
            emulation_ud_in_l2::disarm(&mut rs.emulation_ud);
            level_eoi_line_asserted::disarm(&mut rs.level_eoi);
        }
        EventKind::KvmCr { write, cr, val } => {
            root_gfn_not_cr3::on_cr(ctx, &mut rs.root_gfn, *write, *cr, *val);
            late_vmfail_l1_cr3::on_cr(ctx, &mut rs.late_vmfail_l1_cr3, *write, *cr, *val);
            role_change_root_reload::on_cr(ctx, &mut rs.role_change, *write, *cr, *val);
        }
        EventKind::KvmMmuGetPage { page, .. } => {
            root_gfn_not_cr3::on_get_page(ctx, &mut rs.root_gfn, page);
            root_wrong_level::on_get_page(ctx, page);
            root_wrong_smm::on_get_page(ctx, page);
            guest_mmu_root_not_reacquired::on_get_page(ctx, &mut rs.guest_mmu_root, page);
            guest_mmu_root_role::on_get_page(ctx, &mut rs.guest_mmu_role, page);
            invvpid_root_not_reacquired::on_get_page(ctx, &mut rs.invvpid_root, page);
            reset_root_role::on_get_page(ctx, &mut rs.reset_root_role, page);
            late_vmfail_l1_cr3::on_get_page(ctx, &mut rs.late_vmfail_l1_cr3, page);
            early_vmfail_resume::on_get_page(ctx, &mut rs.early_vmfail, page);
            role_change_root_reload::on_get_page(ctx, &mut rs.role_change, page);
        }
        EventKind::KvmPageFault { fault_address, .. } => {
            l2_pf_not_handled_by_l0::on_page_fault(&mut rs.l2_pf, ctx.at, *fault_address);
            root_gfn_not_cr3::close(&mut rs.root_gfn);
        }
        EventKind::KvmMmuPagetableWalk { .. } => root_gfn_not_cr3::close(&mut rs.root_gfn),
        EventKind::KvmSmmTransition { entering, .. } => {
            smm_nested_return::on_smm(ctx, &mut rs.smm_return, *entering);
            rsm_l1_state::on_smm(ctx, &mut rs.rsm_l1, *entering);
            role_change_root_reload::on_smm(ctx, &mut rs.role_change);
            reset_root_role::disturb(&mut rs.reset_root_role);
            hlt_cancelled_exit_state::on_silent_exit(&mut rs.hlt_cancelled);
        }
        EventKind::KvmPmlFull { .. } => pml_full_in_l2::on_pml_full_event(ctx),
        EventKind::VmcsField(v) => changed_subject_cr3::on_record(ctx, &v.record),
        EventKind::KvmUserspaceExit { reason, .. } => {
            let ioapic_eoi = *reason == vmxray_events::codes::UserspaceExitReason::IOAPIC_EOI;
            level_eoi_line_asserted::on_userspace_exit(ctx, &mut rs.level_eoi, ioapic_eoi);
            late_vmfail_l1_cr3::on_userspace_exit(ctx, &mut rs.late_vmfail_l1_cr3, *reason);
            reset_root_role::disturb(&mut rs.reset_root_role);
            emulation_ud_in_l2::disarm(&mut rs.emulation_ud);
        }
        EventKind::KvmMsr { write, index, .. } => {
            evmcs_restore_stale_exit::on_msr(ctx, &mut rs.evmcs, *write, *index);
        }
        EventKind::KvmInjException { exception, .. } => {
            role_change_root_reload::on_inj_exception(&mut rs.role_change);
            emulation_ud_in_l2::on_inj_exception(ctx, &mut rs.emulation_ud, *exception);
        }
        EventKind::KvmEmulateInsn { rip, insn, failed, .. } => {
            emulation_ud_in_l2::on_emulate(ctx, &mut rs.emulation_ud, *rip, insn, *failed);
        }
        EventKind::Irq(irq) => {
            let lines = &mut ctx.findings.irq_lines;
            let mut taken = std::mem::take(lines);
            level_eoi_line_asserted::on_irq(ctx, &mut taken, &mut rs.level_eoi, irq);
            ctx.findings.irq_lines = taken;
        }
        EventKind::KvmNestedIntrVmexit { rip } => {
            exit_while_run_pending::on_intr_vmexit(ctx, &mut rs.run_pending, *rip);
        }
        EventKind::KvmInjVirq { .. }
        | EventKind::KvmPio { .. }
        | EventKind::KvmCpuid { .. }
        | EventKind::KvmMmuPrepareZapPage { .. }
        | EventKind::KvmMmuSyncPage { .. }
        | EventKind::KvmMmuUnsyncPage { .. }
        | EventKind::KvmMmuPagingElement { .. }
        | EventKind::KvmMmuWalkerError { .. }
        | EventKind::Mmio(_)
        | EventKind::Spte(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Context(_)
        | EventKind::Printk(_)
        | EventKind::QemuRunExit { .. }
        | EventKind::Segment { .. }
        | EventKind::Other(_)
        | EventKind::Lost { .. } => {}
    }
}

/// `0x…` formatting for messages.
pub(crate) fn hex(v: u64) -> String {
    format!("{v:#x}")
}
