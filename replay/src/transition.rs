//! The state machine proper: how each event changes a vCPU's [`VcpuState`] (§2 of the
//! reference). Rules have already looked at the pre-state when this runs.

use vmxray_events::codes::{ExitCode, ExitReason, Isa, SvmExitCode, VmxBasicReason};
use vmxray_events::{Event, EventKind, ExitInfo, NestedVmenter, VmFailKind};

use crate::anomaly::EventIndex;
use crate::model::{Transition, Vmcs12Field};
use crate::state::{
    EntryCause, Features, L0Paging, LastExit, LaunchState, Level, Mode, NestedExit, Observed,
    PendingLaunch, RootLoad, SmmStash, SmmState, VcpuState, is_cr3_root, pgd_gfn,
};

/// Records what the event's mere existence and layout say about the kernel (§1.15).
pub(crate) fn note_features(f: &mut Features, kind: &EventKind) {
    match kind {
        EventKind::KvmExit(info) => {
            f.kvm_exit = true;
            f.exit_vcpu_id |= info.vcpu_id().is_some();
            f.v5_10 |= info.intr_info().is_some();
            f.v6_14 |= info.requests().is_some();
        }
        EventKind::KvmEntry(e) => {
            f.kvm_entry = true;
            f.v5_10 |= e.rip.is_some();
            f.v6_9 |= e.immediate_exit.is_some();
            f.v6_14 |= e.intr_info.is_some();
        }
        EventKind::KvmNestedVmenter(v) => f.nested_vmenter |= v.guest_pgd.is_some(),
        EventKind::KvmNestedVmexit(_) => f.nested_vmexit = true,
        EventKind::KvmCr { .. } => f.kvm_cr = true,
        EventKind::KvmInjException { reinjected, .. } => f.v5_19 |= reinjected.is_some(),
        EventKind::KvmMmuGetPage { .. } => {
            f.mmu_pages = true;
            f.mmu_get_page = true;
        }
        EventKind::KvmMmuPrepareZapPage { .. }
        | EventKind::KvmMmuSyncPage { .. }
        | EventKind::KvmMmuUnsyncPage { .. } => f.mmu_pages = true,
        EventKind::KvmEmulateInsn { .. } => f.emulator = true,
        EventKind::KvmNestedVmexitInject(_)
        | EventKind::KvmNestedVmenterFailed { .. }
        | EventKind::KvmNestedIntrVmexit { .. }
        | EventKind::KvmPageFault { .. }
        | EventKind::KvmInjVirq { .. }
        | EventKind::KvmUserspaceExit { .. }
        | EventKind::KvmSmmTransition { .. }
        | EventKind::KvmPio { .. }
        | EventKind::KvmMsr { .. }
        | EventKind::KvmCpuid { .. }
        | EventKind::KvmMmuPagetableWalk { .. }
        | EventKind::KvmMmuPagingElement { .. }
        | EventKind::KvmMmuWalkerError { .. }
        | EventKind::Lost { .. }
        | EventKind::KvmPmlFull { .. }
        | EventKind::Irq(_)
        | EventKind::Mmio(_)
        | EventKind::Spte(_)
        | EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Context(_)
        | EventKind::Printk(_)
        | EventKind::QemuRunExit { .. }
        | EventKind::Segment { .. }
        | EventKind::Other(_) => {}
    }
}

/// The nested-entry instruction an exit reports, if any.
pub fn launch_cause(reason: ExitCode) -> Option<EntryCause> {
    match reason {
        ExitCode::Vmx(r) if r.failed_vmentry() => None,
        ExitCode::Vmx(r) => match r.basic() {
            VmxBasicReason::VMLAUNCH => Some(EntryCause::Vmlaunch),
            VmxBasicReason::VMRESUME => Some(EntryCause::Vmresume),
            _ => None,
        },
        ExitCode::Svm(SvmExitCode::VMRUN) => Some(EntryCause::Vmresume),
        ExitCode::Svm(_) | ExitCode::Raw(_) => None,
    }
}

fn set_mode(st: &mut VcpuState, to: Mode, out: &mut Vec<Transition>) {
    if st.mode != to {
        out.push(Transition::Mode { from: st.mode, to });
        st.mode = to;
    }
}

/// Runs before the rules: corrects the level when the event proves the model's belief wrong.
///
/// A `kvm_exit` in L2 must be followed, on that vCPU, by `kvm_nested_vmexit`. When something
/// else follows, hardware was running L1: KVM left guest mode without any event (vCPU reset,
/// `KVM_SET_NESTED_STATE`, `vmx_leave_nested`). The exit is then reinterpreted as an L1 exit.
pub(crate) fn settle(st: &mut VcpuState, ev: &Event, out: &mut Vec<Transition>) {
    let Some(exit_at) = st.exit_awaiting_nested else { return };
    // Untyped events (irq, sched, ... hit in the vCPU thread's interrupt context) prove nothing,
    // nor do the interrupt-controller, MMIO and SPTE events (an APIC timer or an irqfd may
    // deliver from interrupt context on the vCPU's thread; they were untyped when this rule
    // was written). Nor do vmxray's own records, prints, QEMU's view of KVM_RUN, or
    // kvm_pml_full (hit in either level).
    if matches!(
        ev.kind,
        EventKind::KvmNestedVmexit(_)
            | EventKind::Other(_)
            | EventKind::VmcsField(_)
            | EventKind::VmcsProbe(_)
            | EventKind::Identity(_)
            | EventKind::Context(_)
            | EventKind::Printk(_)
            | EventKind::QemuRunExit { .. }
            | EventKind::Segment { .. }
            | EventKind::KvmPmlFull { .. }
            | EventKind::Irq(_)
            | EventKind::Mmio(_)
            | EventKind::Spte(_)
    ) {
        return;
    }
    st.exit_awaiting_nested = None;
    // free_nested on the silent exit released the current vmcs12.
    st.current_vmptr = None;
    st.last_entered_vmptr = None;
    st.awaiting_host_rip = None;
    set_mode(st, Mode::L1, out);
    if let Some(last) = st.last_exit.as_mut() {
        last.level = Some(Level::L1);
        if let Some(cause) = launch_cause(last.reason) {
            st.pending_launch = Some(PendingLaunch {
                at: exit_at,
                cause,
                rip: last.rip,
                l1_cr3: st.l1_cr3.map(|o| o.value),
            });
        }
    }
}

/// Applies one event to its actor's state.
pub(crate) fn apply(
    st: &mut VcpuState,
    f: &mut Features,
    ev: &Event,
    at: EventIndex,
    out: &mut Vec<Transition>,
) {
    match &ev.kind {
        EventKind::KvmExit(info) => on_exit(st, f, info, at),
        EventKind::KvmNestedVmexit(_) => {
            st.cr3_unknown_level = None;
            set_mode(st, Mode::L2Run, out);
            st.pending_launch = None;
            st.exit_awaiting_nested = None;
        }
        EventKind::KvmNestedVmexitInject(info) => on_inject(st, info, at, out),
        EventKind::KvmNestedVmenter(v) => on_vmenter(st, v, at, out),
        EventKind::KvmNestedVmenterFailed { kind, .. } => {
            if *kind == VmFailKind::LateHardware {
                set_mode(st, Mode::L1, out);
                st.awaiting_host_rip = None;
                out.push(Transition::LateVmFail);
            } else if *kind == VmFailKind::EarlyHardware {
                // nested_early_check: the dummy VMLAUNCH after kvm_nested_vmenter failed; KVM
                // switches back to vmcs01 and VMfails, L2 never ran.
                set_mode(st, Mode::L1, out);
                st.pending_launch = None;
            } else if matches!(st.mode, Mode::L2Pending { .. }) {
                // A guest-state check after kvm_nested_vmenter (nested_vmx_check_guest_state,
                // the VMCS link pointer): a VM-exit with INVALID_STATE | FAILED_VMENTRY. KVM
                // loads vmcs12's host state itself (vmentry_fail_vmexit), without
                // nested_vmx_vmexit, so no kvm_nested_vmexit_inject is traced: L1 resumes at
                // HOST_RIP. Seen on real 6.1 and 6.12 (samples/real/vmx/l1-vmfail-*).
                let reason = ExitCode::Vmx(ExitReason(
                    ExitReason::FAILED_VMENTRY | u32::from(VmxBasicReason::INVALID_STATE.0),
                ));
                land_in_l1(st, reason, at, out);
            } else {
                // A VMfail before kvm_nested_vmenter (CC() or the early hardware check): L1
                // stays in root mode.
                st.pending_launch = None;
            }
        }
        EventKind::KvmEntry(e) => on_entry(st, f, e.rip, at, out),
        EventKind::KvmCr { write, cr, val } => on_cr(st, *write, *cr, *val, at, out),
        EventKind::KvmMmuGetPage { page, created } => {
            let role = page.role;
            let root = is_cr3_root(role) || (role.direct() && role.level() >= 4);
            if !root {
                return;
            }
            let eptp_root = !role.direct()
                && st
                    .current_record()
                    .and_then(|r| r.eptp)
                    .is_some_and(|e| pgd_gfn(e.value) == page.gfn);
            if f.l0_paging == L0Paging::Unknown && is_l1_root(st, f, page.guest_mode(), eptp_root) {
                f.l0_paging = if role.direct() { L0Paging::Tdp } else { L0Paging::Shadow };
            }
            if page.guest_mode() != Some(false) && eptp_root {
                f.guest_mmu_roots = true;
            }
            let load = RootLoad { gfn: page.gfn, role, created: *created, at };
            st.last_root = Some(load);
            let l2 = page.guest_mode().unwrap_or(!is_l1_root(st, f, None, eptp_root));
            if l2 {
                st.l2_root = Some(load);
            } else {
                st.l1_root = Some(load);
            }
            out.push(Transition::RootLoaded(load));
        }
        EventKind::KvmSmmTransition { entering, .. } => on_smm(st, f, *entering, at, out),
        EventKind::KvmUserspaceExit { .. } => {
            st.in_exit_handling = Some(false);
            // Userspace may set registers before the next run.
            st.awaiting_host_rip = None;
        }
        EventKind::KvmNestedIntrVmexit { .. }
        | EventKind::KvmPageFault { .. }
        | EventKind::KvmInjException { .. }
        | EventKind::KvmInjVirq { .. }
        | EventKind::KvmEmulateInsn { .. }
        | EventKind::KvmPio { .. }
        | EventKind::KvmMsr { .. }
        | EventKind::KvmCpuid { .. }
        | EventKind::KvmMmuPrepareZapPage { .. }
        | EventKind::KvmMmuSyncPage { .. }
        | EventKind::KvmMmuUnsyncPage { .. }
        | EventKind::KvmMmuPagetableWalk { .. }
        | EventKind::KvmMmuPagingElement { .. }
        | EventKind::KvmMmuWalkerError { .. }
        | EventKind::Lost { .. }
        | EventKind::KvmPmlFull { .. }
        | EventKind::Irq(_)
        | EventKind::Mmio(_)
        | EventKind::Spte(_)
        | EventKind::VmcsField(_)
        | EventKind::VmcsProbe(_)
        | EventKind::Identity(_)
        | EventKind::Context(_)
        | EventKind::Printk(_)
        | EventKind::QemuRunExit { .. }
        | EventKind::Segment { .. }
        | EventKind::Other(_) => {}
    }
}

/// Whether a root load belongs to L1 (`role.guest_mode` 0), for deciding how L0 translates L1
/// memory. The raw role word says it; the kernel's text rendering of kvmmmu pages does not
/// print `guest_mode` (mmutrace.h), so then the root is taken as L1's only when nothing could
/// make it an L2 root: it is not the current EPTP's guest_mmu root, and the vCPU is known to
/// run L1 with no VMLAUNCH/VMRESUME pending (L2 roots are loaded after `kvm_nested_vmenter`,
/// or between the VMLAUNCH/VMRESUME exit and the L2 `kvm_entry` before 6.1), or the trace has
/// shown no nested event at all. Otherwise the load teaches nothing.
fn is_l1_root(st: &VcpuState, f: &Features, guest_mode: Option<bool>, eptp_root: bool) -> bool {
    match guest_mode {
        Some(g) => !g,
        None => {
            !eptp_root
                && st.pending_launch.is_none()
                && match st.mode {
                    Mode::L1 => true,
                    Mode::Unknown => !f.nested_vmenter && !f.nested_vmexit,
                    Mode::L2Pending { .. } | Mode::L2Run => false,
                }
        }
    }
}

fn on_exit(st: &mut VcpuState, f: &Features, info: &ExitInfo, at: EventIndex) {
    let level = st.level();
    // Since 5.10 every hardware exit from L2 is repeated by kvm_nested_vmexit, except exits a
    // fastpath handles: L0's own preemption timer in 6.x, and — conservatively, for kernels
    // whose fastpath served L2 too — MSR writes and HLT.
    let fastpath_candidate = info.reason().is_vmx(VmxBasicReason::PREEMPTION_TIMER)
        || info.reason().is_vmx(VmxBasicReason::MSR_WRITE)
        || info.reason().is_vmx(VmxBasicReason::HLT);
    st.exit_awaiting_nested =
        (st.mode == Mode::L2Run && f.nested_vmexit && f.v5_10 && !fastpath_candidate).then_some(at);
    st.last_exit = Some(LastExit {
        at,
        reason: info.reason(),
        rip: info.guest_rip(),
        info1: info.info1(),
        info2: info.info2(),
        intr_info: info.intr_info(),
        error_code: info.error_code(),
        level,
    });
    st.exited_since_entry = Some(true);
    st.in_exit_handling = Some(true);
    let basic = info.reason().vmx_basic();
    if basic == Some(VmxBasicReason::VMFUNC) {
        st.counters.vmfunc = st.counters.vmfunc.wrapping_add(1);
    }
    // In L2 these instructions are reflected to L1 and change nothing of L0's nested state.
    if level == Some(Level::L2) {
        return;
    }
    if let Some(cause) = launch_cause(info.reason()) {
        st.pending_launch = Some(PendingLaunch {
            at,
            cause,
            rip: info.guest_rip(),
            l1_cr3: st.l1_cr3.map(|o| o.value),
        });
    }
    let in_l1 = level == Some(Level::L1);
    match basic {
        Some(VmxBasicReason::VMWRITE) => st.counters.vmwrite = st.counters.vmwrite.wrapping_add(1),
        Some(VmxBasicReason::VMPTRLD) => {
            st.counters.vmptrld = st.counters.vmptrld.wrapping_add(1);
            st.current_vmptr = None;
        }
        Some(VmxBasicReason::VMCLEAR) => {
            st.counters.vmclear = st.counters.vmclear.wrapping_add(1);
            st.current_vmptr = None;
            st.vmcs12.forget_launch_states();
        }
        Some(VmxBasicReason::INVEPT) if in_l1 => {
            st.counters.invept = st.counters.invept.wrapping_add(1)
        }
        Some(VmxBasicReason::INVVPID) if in_l1 => {
            st.counters.invvpid = st.counters.invvpid.wrapping_add(1)
        }
        Some(_) | None => {}
    }
}

fn on_inject(st: &mut VcpuState, info: &ExitInfo, at: EventIndex, out: &mut Vec<Transition>) {
    land_in_l1(st, info.reason(), at, out);
}

/// A nested VM-exit with `reason` (traced by `kvm_nested_vmexit_inject`, or implied by a failed
/// entry): vmcs12 records it, L1 resumes at HOST_RIP.
fn land_in_l1(st: &mut VcpuState, reason: ExitCode, at: EventIndex, out: &mut Vec<Transition>) {
    st.cr3_unknown_level = None;
    let zero_instructions = matches!(st.mode, Mode::L2Pending { .. });
    let was_l2 = st.level() == Some(Level::L2);
    let failed_entry = matches!(reason, ExitCode::Vmx(r) if r.failed_vmentry());
    let counters = st.counters;
    if let Some(vmptr) = st.current_vmptr {
        let rec = st.vmcs12.entry(vmptr, at);
        rec.last_exit = Some(NestedExit { at, reason: Some(reason), zero_instructions });
        rec.vmwrites_at_exit = counters.vmwrite;
        rec.vmfuncs_at_exit = counters.vmfunc;
        if failed_entry {
            // prepare_vmcs12 leaves launch_state unchanged on a failed entry.
            if rec.entered_by == Some(EntryCause::Vmlaunch) {
                rec.launch = LaunchState::Clear;
            }
        } else if was_l2 {
            rec.launch = LaunchState::Launched;
        }
    }
    st.awaiting_host_rip = Some((at, st.current_vmptr));
    st.pending_launch = None;
    st.entry_launch = None;
    out.push(Transition::NestedExit { reason: Some(reason) });
    set_mode(st, Mode::L1, out);
}

fn on_vmenter(st: &mut VcpuState, v: &NestedVmenter, at: EventIndex, out: &mut Vec<Transition>) {
    let cause = entry_cause(st);
    if st.mode == Mode::Unknown
        && matches!(cause, EntryCause::Vmlaunch | EntryCause::Vmresume)
        && st.l1_cr3.is_none()
        && let Some(cr3) = st.cr3_unknown_level.take()
    {
        // The VMLAUNCH/VMRESUME proves the vCPU ran L1 since its last nested event.
        st.l1_cr3 = Some(cr3);
        out.push(Transition::L1Cr3 { value: cr3.value });
    }
    st.cr3_unknown_level = None;
    st.entry_launch = st.pending_launch.take();
    st.current_vmptr = Some(v.vmcs);
    st.last_entered_vmptr = Some(v.vmcs);
    st.awaiting_host_rip = None;
    let rec = st.vmcs12.entry(v.vmcs, at);
    rec.svm = v.isa == Some(Isa::Svm);
    rec.nested_ept = v.tdp_enabled;
    rec.guest_cr3 = v.guest_cr3().map(|c| Observed::new(c, at));
    rec.eptp = v.nested_tdp_root().map(|e| Observed::new(e, at));
    rec.nested_rip = Some(Observed::new(v.nested_rip, at));
    rec.event_inj = v.event_inj;
    rec.entered_at = Some(at);
    rec.entered_by = Some(cause);
    // nested_vmx_run's CC() checks passed: VMLAUNCH needs a clear vmcs12, VMRESUME a launched
    // one. A late VM-Fail or a failed entry leaves that state unchanged.
    match cause {
        EntryCause::Vmlaunch => rec.launch = LaunchState::Clear,
        EntryCause::Vmresume if !rec.svm => rec.launch = LaunchState::Launched,
        EntryCause::Vmresume
        | EntryCause::Rsm
        | EntryCause::Restore
        | EntryCause::Unexplained
        | EntryCause::Unattributed
        | EntryCause::Inferred => {}
    }
    rec.ran_on_hw = false;
    rec.l2_cr3_load = None;
    out.push(Transition::NestedEntry { vmptr: v.vmcs, cause });
    let mut field =
        |field, value| out.push(Transition::Vmcs12Field { vmptr: v.vmcs, field, value });
    field(Vmcs12Field::GuestRip, v.nested_rip);
    field(Vmcs12Field::EntryIntrInfo, u64::from(v.event_inj.0));
    field(Vmcs12Field::GuestIntrStatus, u64::from(v.int_ctl));
    if let Some(cr3) = v.guest_cr3() {
        field(Vmcs12Field::GuestCr3, cr3);
    }
    if let Some(eptp) = v.nested_tdp_root() {
        field(Vmcs12Field::EptPointer, eptp);
    }
    if cause == EntryCause::Rsm {
        st.smm_stash = None;
    }
    st.smm_left_at = None;
    set_mode(st, Mode::L2Pending { since: at }, out);
}

/// What explains a `kvm_nested_vmenter` given the state before it (invariant 3).
pub fn entry_cause(st: &VcpuState) -> EntryCause {
    if let Some(p) = st.pending_launch {
        return p.cause;
    }
    if st.smm_left_at.is_some() {
        return EntryCause::Rsm;
    }
    match st.in_exit_handling {
        Some(true) => EntryCause::Unexplained,
        Some(false) => EntryCause::Restore,
        None => EntryCause::Unattributed,
    }
}

fn on_entry(
    st: &mut VcpuState,
    f: &Features,
    rip: Option<u64>,
    at: EventIndex,
    out: &mut Vec<Transition>,
) {
    // Before 6.1 a VMX nested entry has no event: a VMLAUNCH/VMRESUME exit followed by an
    // entry that is neither at the instruction (fault) nor after it (VMfail) entered L2.
    if !f.nested_vmenter
        && !matches!(st.mode, Mode::L2Pending { .. } | Mode::L2Run)
        && let Some(launch) = st.pending_launch
        && let (Some(entry_rip), Some(launch_rip)) = (rip, launch.rip)
    {
        if entry_rip != launch_rip && entry_rip != launch_rip.wrapping_add(3) {
            // As in on_vmenter: the VMLAUNCH/VMRESUME proves the vCPU ran L1 since its last
            // nested event, so a CR3 seen while the level was unknown was L1's.
            if st.l1_cr3.is_none()
                && let Some(cr3) = st.cr3_unknown_level.take()
            {
                st.l1_cr3 = Some(cr3);
                out.push(Transition::L1Cr3 { value: cr3.value });
            }
            st.cr3_unknown_level = None;
            st.current_vmptr = None;
            st.entry_launch = Some(launch);
            out.push(Transition::NestedEntry { vmptr: u64::MAX, cause: EntryCause::Inferred });
            set_mode(st, Mode::L2Run, out);
        } else {
            set_mode(st, Mode::L1, out);
        }
    }
    match st.mode {
        Mode::L2Pending { .. } => {
            if let Some(vmptr) = st.current_vmptr {
                st.vmcs12.entry(vmptr, at).ran_on_hw = true;
            }
            set_mode(st, Mode::L2Run, out);
        }
        Mode::L1 => {
            if let Some((_, vmptr)) = st.awaiting_host_rip.take()
                && let (Some(vmptr), Some(rip)) = (vmptr, rip)
            {
                let vmwrites = st.counters.vmwrite;
                let rec = st.vmcs12.entry(vmptr, at);
                // (Re)learn HOST_RIP when unknown or when L1 may have rewritten it since.
                if rec.host_rip.is_none() || rec.vmwrites_at_host_rip != vmwrites {
                    rec.host_rip = Some(Observed::new(rip, at));
                    rec.vmwrites_at_host_rip = vmwrites;
                    out.push(Transition::Vmcs12Field {
                        vmptr,
                        field: Vmcs12Field::HostRip,
                        value: rip,
                    });
                }
            }
            st.entry_launch = None;
        }
        Mode::L2Run | Mode::Unknown => {}
    }
    if st.level() == Some(Level::L2) {
        let cr3 = st.current_record().and_then(|r| r.l2_cr3_load.or(r.guest_cr3));
        st.last_hw_l2 = Some((st.current_vmptr, cr3));
    }
    st.exited_since_entry = Some(false);
    st.last_entry = Some((at, rip));
    st.in_exit_handling = Some(false);
    st.pending_launch = None;
    st.smm_left_at = None;
}

fn on_cr(
    st: &mut VcpuState,
    write: bool,
    cr: u32,
    val: u64,
    at: EventIndex,
    out: &mut Vec<Transition>,
) {
    if cr == 0 && write {
        st.cr0 = Some(Observed::new(val, at));
    }
    if cr != 3 {
        return;
    }
    match st.level() {
        Some(Level::L1) => {
            st.l1_cr3 = Some(Observed::new(val, at));
            out.push(Transition::L1Cr3 { value: val });
        }
        Some(Level::L2) => {
            if write && let Some(vmptr) = st.current_vmptr {
                st.vmcs12.entry(vmptr, at).l2_cr3_load = Some(Observed::new(val, at));
            }
        }
        None => st.cr3_unknown_level = Some(Observed::new(val, at)),
    }
}

fn on_smm(
    st: &mut VcpuState,
    f: &Features,
    entering: bool,
    at: EventIndex,
    out: &mut Vec<Transition>,
) {
    out.push(Transition::Smm { entering });
    st.awaiting_host_rip = None;
    if entering {
        st.smm = SmmState::In;
        if st.level() == Some(Level::L2) {
            // vmx_enter_smm: silent nested_vmx_vmexit(-1), no inject event.
            let zero_instructions = matches!(st.mode, Mode::L2Pending { .. });
            if let Some(vmptr) = st.current_vmptr {
                let rec = st.vmcs12.entry(vmptr, at);
                rec.last_exit = Some(NestedExit { at, reason: None, zero_instructions });
            }
            st.smm_stash = Some(SmmStash { at, vmptr: st.current_vmptr });
            out.push(Transition::NestedExit { reason: None });
            set_mode(st, Mode::L1, out);
        } else if st.level() == Some(Level::L1) {
            st.smm_stash = None;
        }
    } else {
        st.smm = SmmState::Out;
        st.smm_left_at = Some(at);
        // vmx_leave_smm: an SMI taken in L2 (smm.guest_mode) returns into L2 through
        // nested_vmx_enter_non_root_mode (§2.11 RSM step 3). From 6.1 its kvm_nested_vmenter
        // follows; before, nothing else shows the re-entry.
        if !f.nested_vmenter
            && let Some(stash) = st.smm_stash.take()
        {
            st.current_vmptr = stash.vmptr;
            out.push(Transition::NestedEntry {
                vmptr: stash.vmptr.unwrap_or(u64::MAX),
                cause: EntryCause::Rsm,
            });
            set_mode(st, Mode::L2Pending { since: at }, out);
        }
    }
}
