//! Nested deaths and failures of issue 15: a nested VM-entry that fails KVM's checks, an L2
//! triple fault reflected to L1 (and one KVM causes by emulating L2's LTR with a stale CR0.WP),
//! nSVM's return from SMM into L2, and nSVM's event injection lost across a save and restore.
//!
//! | scenario | what every flavour shows | buggy flavour |
//! |---|---|---|
//! | `failed-nested-entry` | VMRESUME of a clear vmcs12 and VMLAUNCH with bad controls (`kvm_nested_vmenter_failed` before any vmenter, L1 at the next instruction); VMLAUNCH with a bad guest CR0, then a bad VMCS link pointer (`kvm_nested_vmenter` → `kvm_nested_vmenter_failed "<check>"` → `kvm_entry` at HOST_RIP, no inject; the `l1-vmfail-*` recordings); then a good launch | none: fixed only (no KVM bug is known on this path) |
//! | `nested-triple-fault` | L2 `ud2` with an empty IDT: `EXCEPTION_NMI` #UD → `kvm_inj_exception #UD` → `TRIPLE_FAULT` → `kvm_nested_vmexit_inject TRIPLE_FAULT` (the `l1-triple-fault-*` recordings); a second L2's LTR exits to L0 (`LDTR_TR`), which emulates it | (l) the emulator's write to the TSS descriptor fails on a stale CR0.WP (`kvm_mmu_walker_error` P\|W), `kvm_inj_exception #PF (0x3)`, its delivery fails: a second TRIPLE_FAULT reflected to L1 |
//! | `nsvm-migrate` | `vmrun` → `kvm_nested_vmrun` with `event_inj` 0x80000036; the vCPU leaves for userspace before L2 runs (`KVM_EXIT_INTR`: the VMM saves and restores it); an interrupt for L1 arrives; KVM enters L2 delivering the event, and the interrupt exits L2 afterwards (`kvm_nested_intr_vmexit`) | (n) `nested_run_pending` was not restored: the interrupt exits to L1 before L2 ever ran, and the event L1 injected is gone |
//! | `nsvm-rsm` | `vmrun` → `kvm_nested_vmenter` isa=svm; an SMI in L2 (`kvm_nested_vmexit_inject` 0xf0000000, `kvm_smm_transition entering`); RSM (`kvm_exit rsm`, `kvm_emulate_insn 0f aa`, `kvm_smm_transition leaving`, `kvm_nested_vmenter` with no VMRUN); L2's first #VMEXIT (`npf`) reflected to L1 | (m) L1 resumes at the RSM instruction (`kvm_entry rip <RSM>`), #GP, Hyper-V bugchecks |

use vmxray_events::codes::{IntrInfo, Isa};
use vmxray_events::{EventKind, NestedVmenter};

use super::Bug;
use super::engine::{Mode, Vcpu, Vmcs12, eptp, intr, reason, role, svm};
use super::kernel::{HwExit, SvmExit};
use super::truth::{Vmcs12Field, Writer};

/// A KVM-like L1 (Linux): its `vmx_vmexit` and the VMRESUME in `__vmx_vcpu_run`.
const LX_HOST_RIP: u64 = 0xffff_ffff_c0a1_3f40;
const LX_VMENTRY_RIP: u64 = 0xffff_ffff_c0a1_3e9b;
const LX_CODE: u64 = 0xffff_ffff_c0a0_0000;

/// L2 exits L1 intercepts (port I/O), L1 advancing the L2 RIP past each.
fn reflected_io(v: &mut Vcpu, l2_code: u64, exits: u64) {
    for _ in 0..exits {
        v.l2_run(l2_code, &[]);
        v.l2_noise(25);
        v.l2_run(l2_code, &[]);
        let rip = v.l2_rip;
        v.l2_exit_reflect(HwExit::new(reason::IO_INSTRUCTION, 0).qual(0x03f8_0000));
        v.l1_step(0x40, 1_000, 5_000);
        v.l1_vmwrite(Vmcs12Field::GuestRip, rip + 1, false);
        v.l1_rip = LX_VMENTRY_RIP;
        v.l1_vmentry();
    }
}

fn lx_vmcs12(guest_rip: u64, guest_cr3: u64, pml4: u64) -> Vmcs12 {
    Vmcs12 {
        guest_rip,
        guest_cr3,
        eptp: eptp(pml4),
        nested_ept: true,
        launched: false,
        activity_hlt: false,
        entry_intr: 0,
        host_rip: LX_HOST_RIP,
        host_cr3: 0x0000_0000_0a81_6000,
        evmcs: false,
    }
}

// ---- failed nested VM-entry (fixed only) ----------------------------------------------------

/// L1 makes the entry mistakes the real `l1-vmfail-*` recordings show, then gets it right.
pub(super) fn failed_nested_entry(v: &mut Vcpu, iterations: u32) {
    let vmptr = 0x0000_0000_6f3a_2000u64;
    let l2_code = 0xffff_ffff_8100_0000u64;
    v.l1_rip = LX_CODE + 0x4_4000;
    v.l1_cr3 = 0x0000_0000_0a81_6000;
    v.l1_setup_vmcs12(vmptr, lx_vmcs12(l2_code + 0x1_0000, 0x0000_0000_0260_a000, 0x4e7d_1000));
    v.enter();
    v.l1_step(0x80, 2_000, 6_000);
    v.l1_vmptrld(vmptr);
    // VMRESUME of a vmcs12 that was never launched: VMfail 5, caught before the vmenter.
    vmfail(v, reason::VMRESUME, "vmcs12->launch_state == launch");
    // VMLAUNCH with pin-based controls KVM does not allow: VMfail 7, before the vmenter.
    v.l1_step(0x60, 2_000, 6_000);
    vmfail(
        v,
        reason::VMLAUNCH,
        "!vmx_control_verify(vmcs12->pin_based_vm_exec_control, vmx->nested.msrs.pinbased_ctls_low, vmx->nested.msrs.pinbased_ctls_high)",
    );
    // VMLAUNCH with a guest CR0 KVM rejects, then with a bad VMCS link pointer: the checks
    // after nested_vmx_enter_non_root_mode's tracepoint; L1 gets an INVALID_STATE exit.
    v.l1_step(0x60, 2_000, 6_000);
    entry_fails_guest_checks(v, "!nested_guest_cr0_valid(vcpu, vmcs12->guest_cr0)", 0);
    v.l1_step(0x90, 3_000, 9_000);
    entry_fails_guest_checks(v, "hdr.revision_id != VMCS12_REVISION", 4);
    // Fixed up: the launch succeeds and L2 runs.
    v.l1_step(0x90, 3_000, 9_000);
    v.l1_rip = LX_VMENTRY_RIP;
    v.l1_vmentry();
    reflected_io(v, l2_code, u64::from(iterations.min(8)));
    v.l2_run(l2_code, &[]);
    v.l2_slice_end();
}

/// VMLAUNCH/VMRESUME that fails a check before `kvm_nested_vmenter` (VMfailValid): the failed
/// check's message, L1 at the next instruction.
fn vmfail(v: &mut Vcpu, exit: u32, check: &'static str) {
    v.l1_rip = LX_VMENTRY_RIP;
    let rip = v.l1_rip;
    let at = v.hw_exit(HwExit::new(exit, rip), false);
    let failed = v.ev(EventKind::KvmNestedVmenterFailed {
        msg: check.into(),
        err: vmxray_events::codes::VmInstructionError(0),
        kind: vmxray_events::VmFailKind::of_message(check),
    });
    v.l1_rip = rip + 3;
    v.enter();
    v.landmark(
        "nested-vmfail",
        failed,
        vec![at],
        "a VMLAUNCH/VMRESUME failed KVM's checks before the entry (VMfail): L1 goes on at the next instruction",
    );
}

/// VMLAUNCH whose guest state fails KVM's checks after `kvm_nested_vmenter`: KVM loads
/// vmcs12's host state and sets the exit reason itself (`vmentry_fail_vmexit`), so there is no
/// `kvm_nested_vmexit_inject`; L1 runs at HOST_RIP with VM_EXIT_REASON 0x80000021 and
/// qualification `qual` (the `l1-vmfail-*` recordings, samples/README "Model discrepancies").
fn entry_fails_guest_checks(v: &mut Vcpu, check: &'static str, qual: u64) {
    let vmptr = v.current.unwrap_or(0);
    let vmcs12 =
        v.vmcs12s.get(&vmptr).cloned().unwrap_or_else(|| super::engine::empty_vmcs12(vmptr));
    v.l1_rip = LX_VMENTRY_RIP;
    let rip = v.l1_rip;
    let at = v.hw_exit(HwExit::new(reason::VMLAUNCH, rip), false);
    let vmenter = v.next_index();
    v.enter_non_root_mode(&vmcs12, rip);
    let failed = v.ev(EventKind::KvmNestedVmenterFailed {
        msg: check.into(),
        err: vmxray_events::codes::VmInstructionError(0),
        kind: vmxray_events::VmFailKind::of_message(check),
    });
    let name = v.vmptr_name(vmptr);
    v.record(
        name,
        Vmcs12Field::ExitReason,
        u64::from(reason::INVALID_STATE | 0x8000_0000),
        Writer::L0Exit,
        true,
    );
    v.mode = Mode::L1;
    v.l1_rip = vmcs12.host_rip;
    v.l1_cr3 = vmcs12.host_cr3;
    v.enter();
    let evidence = if v.kernel.has_nested_vmenter() { vec![at, vmenter] } else { vec![at] };
    v.landmark(
        "failed-nested-entry",
        failed,
        evidence,
        if qual == 0 {
            "nested VM-entry failed on the guest state (INVALID_STATE, qualification 0): no inject, L1 at HOST_RIP"
        } else {
            "nested VM-entry failed on the VMCS link pointer (INVALID_STATE, qualification 4): no inject, L1 at HOST_RIP"
        },
    );
}

// ---- nested triple faults ------------------------------------------------------------------

/// A KVM-like L1 runs two L2s. The first executes `ud2` with an empty IDT: L0 intercepts #UD
/// and re-injects it into L2, the delivery fails, the TRIPLE_FAULT exit is reflected to L1
/// (every flavour). The second boots Linux and executes LTR; L0 intercepts descriptor-table
/// instructions (UMIP emulation) and L1 does not, so L0's emulator runs it and sets the busy
/// bit in the TSS descriptor. With the stale-CR0.WP bug (cf9f4c0eb169, the excerpt
/// `nested-cr0wp-ltr-emulation-triple-fault.txt`) that write faults although L2 has CR0.WP=0,
/// KVM injects #PF (0x3), and its delivery fails in turn: TRIPLE_FAULT again.
pub(super) fn nested_triple_fault(v: &mut Vcpu, iterations: u32) {
    let buggy = v.kvm.has(Bug::Cr0WpStaleEmulation);
    let (first, second) = (0x0000_0000_6f3a_2000u64, 0x0000_0000_6f3a_4000u64);
    let l2_code = 0xffff_ffff_8100_0000u64;
    v.l1_rip = LX_CODE + 0x4_4000;
    v.l1_cr3 = 0x0000_0000_0a81_6000;
    v.l1_setup_vmcs12(first, lx_vmcs12(0x0000_0000_0010_01a0, 0x0000_0000_0014_0000, 0x1280_0000));
    v.l1_setup_vmcs12(second, lx_vmcs12(l2_code + 0x0100_0000, 0x0000_0000_0260_a000, 0x4e7d_1000));
    v.enter();
    v.l1_step(0x80, 2_000, 6_000);
    v.l1_vmptrld(first);
    v.l1_rip = LX_VMENTRY_RIP;
    v.l1_vmentry();
    reflected_io(v, 0x0000_0000_0010_0200, 2);
    // ud2 with an empty IDT (the l1-triple-fault recordings).
    v.l2_run(0x0000_0000_0010_0200, &[]);
    let ud = v.l2_rip;
    let exit = v.l2_exit_l0(HwExit::new(reason::EXCEPTION_NMI, 0).intr(intr::UD, 0), false, |v| {
        // KVM tries to emulate the faulting instruction (EMULTYPE_TRAP_UD): it fetches it
        // through L2's page tables and EPT12, cannot decode it, and injects #UD.
        v.walk_l2_two_dimensional(ud, 0x10, 3);
        v.inj_exception(6, None, false);
    });
    v.enter_injecting(intr::UD, 0);
    v.run_for(300, 900);
    let tf = v.hw_exit(HwExit::new(reason::TRIPLE_FAULT, ud), false);
    let inject = v.nested_vmexit(reason::TRIPLE_FAULT, 0, 0, 0, 0);
    v.landmark(
        "l2-triple-fault-reflected",
        inject,
        vec![exit, tf],
        "L2 triple-faulted (#UD with an empty IDT, re-injected by L0, undeliverable): KVM reflects TRIPLE_FAULT to L1",
    );
    // L1 tears that L2 down and boots the second one.
    v.l1_step(0x200, 20_000, 60_000);
    v.l1_wrmsr_tsc_deadline();
    v.l1_step(0x80, 2_000, 6_000);
    v.l1_vmptrld(second);
    v.l1_rip = LX_VMENTRY_RIP;
    v.l1_vmentry();
    reflected_io(v, l2_code, 1);
    // secondary_startup_64 → cpu_init_exception_handling: LTR.
    v.l2_run(l2_code, &[]);
    let ltr = 0xffff_ffff_8105_51b8u64;
    v.l2_rip = ltr;
    let trigger = v.exit_here(HwExit::new(reason::LDTR_TR, 0));
    v.walk_l2_two_dimensional(ltr, 0x10, 3);
    v.emulate_insn(ltr, &[0x0f, 0x00, 0xd8], false);
    let tss_desc = 0xffff_fe00_0020_1040u64;
    v.walk_l2_two_dimensional(tss_desc, 0, 4);
    v.walk_l2_two_dimensional(tss_desc + 8, 0, 4);
    // Setting the busy bit: a write access.
    v.walk_l2_two_dimensional(tss_desc, 0x2, 4);
    if !buggy {
        v.l2_rip = ltr + 3;
        v.enter();
        reflected_io(v, l2_code, u64::from(iterations.min(6)));
        v.l2_run(l2_code, &[]);
        v.l2_slice_end();
        return;
    }
    // The permission check used a stale CR0.WP: the walk "fails" with P|W, and the emulator
    // retries once before giving up.
    let first_difference = v.walker_error(0x3);
    v.walk_l2_two_dimensional(tss_desc, 0x2, 4);
    v.walker_error(0x3);
    let pf = v.inj_exception(14, Some(0x3), false);
    v.enter_injecting(intr::PF, 0x3);
    v.run_for(300, 900);
    let tf = v.hw_exit(HwExit::new(reason::TRIPLE_FAULT, ltr), false);
    let inject = v.nested_vmexit(reason::TRIPLE_FAULT, 0, 0, 0, 0);
    v.mark(
        Bug::Cr0WpStaleEmulation,
        trigger,
        first_difference,
        pf,
        "emulating L2's LTR, KVM's write to the TSS descriptor fails on a stale CR0.WP (walker error P|W): the #PF it injects cannot be delivered and L2 triple-faults",
    );
    v.landmark(
        "l2-triple-fault-reflected",
        inject,
        vec![trigger, pf, tf],
        "L2 triple-faulted delivering the #PF KVM's emulator injected while emulating LTR: KVM reflects TRIPLE_FAULT to L1",
    );
    // L1 reports its guest dead and goes on with its own work.
    v.l1_step(0x200, 20_000, 60_000);
    v.l1_wrmsr_tsc_deadline();
    v.l1_step(0x80, 2_000, 6_000);
    v.l1_host_interrupt(super::engine::HOST_LOCAL_TIMER_VECTOR);
}

// ---- nSVM: RSM back into L2 ------------------------------------------------------------------

/// What the SVM scenario keeps about L1's VMRUN.
struct SvmL1 {
    vmcb12: u64,
    /// L1's RIP at its VMRUN (a #VMEXIT resumes it after the 3-byte instruction).
    vmrun_rip: u64,
    nested_cr3: u64,
    int_ctl: u32,
}

/// An nSVM L1 (CR3 `l1_cr3`) sets up its vmcb12 for an L2 at `l2_rip` with CR3 `l2_cr3` under
/// nested paging, and VMRUNs it.
fn svm_l1_runs_l2(v: &mut Vcpu, l1: &SvmL1, l1_cr3: u64, l2_rip: u64, l2_cr3: u64) {
    v.l1_rip = l1.vmrun_rip - 0x40;
    v.l1_cr3 = l1_cr3;
    v.l1_setup_vmcs12(
        l1.vmcb12,
        Vmcs12 {
            guest_rip: l2_rip,
            guest_cr3: l2_cr3,
            eptp: l1.nested_cr3,
            nested_ept: true,
            launched: false,
            activity_hlt: false,
            entry_intr: 0,
            host_rip: l1.vmrun_rip + 3,
            host_cr3: l1_cr3,
            evmcs: false,
        },
    );
    v.current = Some(l1.vmcb12);
    v.enter();
    v.l1_step(0x40, 2_000, 6_000);
    svm_vmrun(v, l1);
}

/// Hyper-V on AMD (Gen2 WS2016, as in the report) runs L2; an SMI arrives while L2 runs; the
/// SMM handler returns with RSM back into L2 (`svm_leave_smm` → `enter_svm_guest_mode`: a
/// `kvm_nested_vmenter` with no VMRUN); L2's first #VMEXIT (an NPF L1 must handle) goes to
/// L1. Before 37be407b2ce8, VMCB01 had held the SMM state, L1's own state was lost, and L1
/// resumed at the RSM instruction's RIP (the excerpt `nsvm-rsm-l1-state-corruption.txt`).
pub(super) fn nsvm_rsm(v: &mut Vcpu, iterations: u32) {
    let buggy = v.kvm.has(Bug::NsvmRsmVmcb01);
    let l1 = SvmL1 {
        vmcb12: 0x0000_0000_0822_4000,
        vmrun_rip: 0xffff_f800_2a21_4c07,
        nested_cr3: 0x0000_0000_01bd_3000,
        int_ctl: 0x0102_0000,
    };
    let l2_code = 0xffff_ffff_ffbb_0000u64;
    let (smbase, rsm_rip) = (0x7ffb_3000u64, 0x7ffb_b280u64);
    svm_l1_runs_l2(v, &l1, 0x0000_0000_0061_5000, l2_code + 0xe000, 0x0000_0000_0013_a000);
    let smi_round = iterations.clamp(2, 6) / 2;
    for round in 0..iterations.clamp(2, 6) {
        svm_l2_work(v, l2_code);
        if round == smi_round {
            // The SMI kicks the vCPU out of L2 (a host interrupt), and KVM enters SMM: the
            // silent #VMEXIT SVM still traces (SVM_EXIT_SW), then the SMM transition.
            let rip = v.l2_rip;
            v.svm_exit(SvmExit { code: svm::INTR, rip, ..SvmExit::default() });
            let l2_rip_at_smi = svm_vmexit(v, &l1, svm::SW, 0, 0);
            let id = v.id;
            v.ev(EventKind::KvmSmmTransition { vcpu_id: id, smbase, entering: true });
            v.guest_mmu_root = None;
            v.l1_rip = 0x8000;
            v.enter();
            // The SMM handler talks to the chipset (APM port), then RSM.
            v.l1_step(0x30, 3_000, 15_000);
            let port = 0xb3u64;
            let rip = v.l1_rip;
            v.svm_exit(SvmExit {
                code: svm::IOIO,
                rip,
                info1: (port << 16) | 0x11,
                info2: rip + 2,
                ..SvmExit::default()
            });
            v.ev(EventKind::KvmPio { write: false, port: 0xb3, size: 1, count: 1, val: Some(0) });
            v.userspace_exit(2, 0);
            v.l1_rip += 2;
            v.enter();
            v.l1_step(0x40, 2_000, 9_000);
            v.l1_rip = rsm_rip;
            let rsm = v.svm_exit(SvmExit { code: svm::RSM, rip: rsm_rip, ..SvmExit::default() });
            v.emulate_insn(rsm_rip, &[0x0f, 0xaa], false);
            v.ev(EventKind::KvmSmmTransition { vcpu_id: id, smbase, entering: false });
            // svm_leave_smm: back into L2 from the SMRAM copy (nested_run_pending). The buggy
            // KVM leaves VMCB01 as SMM left it: L1's state to resume at the next #VMEXIT is
            // the RSM instruction's (the truth's "HOST_RIP" of this vmcb12: where L1 resumes).
            if buggy {
                v.record(l1.vmcb12, Vmcs12Field::HostRip, rsm_rip, Writer::L0Entry, true);
            }
            v.l2_rip = l2_rip_at_smi;
            svm_enter_l2(v, &l1, rsm_rip);
            // L2's first #VMEXIT: an NPF on memory L1 has not mapped in its NPT.
            v.run_for(400, 1_500);
            let gpa = 0x0000_0000_001a_b000u64;
            let rip = v.l2_rip;
            let exit_info1 = 0x0000_0002_0000_0006u64;
            v.svm_exit(SvmExit {
                code: svm::NPF,
                rip,
                info1: exit_info1,
                info2: gpa,
                ..SvmExit::default()
            });
            let (kernel, id) = (v.kernel, v.id);
            v.ev(kernel.page_fault_event(id, rip, gpa, exit_info1));
            v.ev(EventKind::KvmMmuPagetableWalk { addr: gpa, pferr: 0x6 });
            v.walker_error(0x6);
            svm_vmexit(v, &l1, svm::NPF, exit_info1, gpa);
            if buggy {
                // VMCB01 held SMM state: L1 "resumes" at the RSM instruction, outside SMM.
                v.l1_rip = rsm_rip;
                let wrong = v.enter();
                v.mark(
                    Bug::NsvmRsmVmcb01,
                    rsm,
                    wrong,
                    wrong,
                    "after RSM into L2, L2's first #VMEXIT resumes L1 at the RSM instruction's RIP (VMCB01 held SMM state): L1's state was corrupted",
                );
                l1_dies_at_rsm(v, rsm_rip);
                return;
            }
            let fixed_entry = v.enter();
            v.landmark(
                "rsm-into-l2-first-exit",
                fixed_entry,
                vec![rsm],
                "after RSM into L2, L2's first #VMEXIT resumes L1 after its VMRUN",
            );
            // L1 maps the page in its NPT and runs L2 again.
            v.l1_step(0x80, 2_000, 8_000);
            svm_vmrun(v, &l1);
            continue;
        }
    }
    // L1's timer interrupt ends L2's slice: the host interrupt kicks the vCPU out of L2 and
    // KVM delivers L1's interrupt as a nested INTR #VMEXIT (`kvm_nested_intr_vmexit`).
    v.l2_run(l2_code, &[]);
    let rip = v.l2_rip;
    v.svm_exit(SvmExit { code: svm::INTR, rip, ..SvmExit::default() });
    v.ev(EventKind::KvmNestedIntrVmexit { rip });
    svm_vmexit(v, &l1, svm::INTR, 0, 0);
    v.enter();
}

/// An AMD L1 (Linux KVM, as in the report) runs L2; its virtual device raises vector 0x36 for
/// L2, so L1 resumes L2 with VMRUN and EVENTINJ 0x80000036. Before KVM enters L2 the vCPU
/// thread is kicked out to userspace (`KVM_EXIT_INTR`) and the VMM saves and restores the vCPU
/// in place (a snapshot load; `KVM_GET/SET_NESTED_STATE` are not traced); meanwhile L1's timer
/// fires. With `nested_run_pending` restored, KVM enters L2 delivering the event first and the
/// interrupt exits L2 afterwards. Before 81f76adad560 the flag was lost: the interrupt makes
/// KVM exit to L1 (`kvm_nested_intr_vmexit`) before L2 ever ran, and the event L1 injected is
/// gone (the excerpt `nsvm-migration-lost-event-injection.txt`, where the restore was a
/// migration and the capture after it another file).
pub(super) fn nsvm_migrate(v: &mut Vcpu, iterations: u32) {
    let buggy = v.kvm.has(Bug::NsvmRunPendingLost);
    let l1 = SvmL1 {
        vmcb12: 0x0000_0001_0359_4000,
        vmrun_rip: 0xffff_ffff_a068_8ffa,
        nested_cr3: 0x0000_0000_0bd3_3000,
        int_ctl: 0x0100_0001,
    };
    let l2_code = 0xffff_ffff_814b_0000u64;
    svm_l1_runs_l2(v, &l1, 0x0000_0000_0a71_2000, l2_code + 0x3b01, 0x0000_0000_0012_c000);
    let rounds = iterations.clamp(2, 6);
    for _ in 0..rounds / 2 {
        svm_l2_work(v, l2_code);
    }
    // L2 exits on CPUID; L1 emulates it and injects its device's interrupt with the next
    // VMRUN (EVENTINJ is written into vmcb12 memory: no exit).
    v.l2_run(l2_code, &[]);
    let rip = v.l2_rip;
    v.svm_exit(SvmExit { code: svm::CPUID, rip, ..SvmExit::default() });
    svm_vmexit(v, &l1, svm::CPUID, 0, 0);
    v.enter();
    v.l1_step(0x40, 1_000, 5_000);
    v.l1_vmwrite(Vmcs12Field::GuestRip, rip + 2, false);
    v.l1_vmwrite(Vmcs12Field::VmEntryIntrInfo, u64::from(intr::ext(0x36)), false);
    v.l2_rip = rip + 2;
    v.l1_rip = l1.vmrun_rip;
    v.svm_exit(SvmExit { code: svm::VMRUN, rip: l1.vmrun_rip, ..SvmExit::default() });
    let vmrun = svm_nested_vmrun(v, &l1, l1.vmrun_rip);
    // A signal kicks the thread out before the entry; the VMM saves and restores the vCPU.
    v.userspace_exit(10, 0);
    v.run_for(20_000, 60_000);
    super::stuck::accept_irq(v, 0xf3, false);
    if buggy {
        // nested_run_pending lost: svm_check_nested_events turns L1's interrupt into a nested
        // #VMEXIT before L2 ran; the EVENTINJ dies with the vmcb02 state.
        let rip = v.l2_rip;
        let exit = v.ev(EventKind::KvmNestedIntrVmexit { rip });
        svm_vmexit(v, &l1, svm::INTR, 0, 0);
        v.enter();
        v.mark(
            Bug::NsvmRunPendingLost,
            vmrun,
            exit,
            exit,
            "the nested INTR #VMEXIT before L2's first entry discards the event L1 injected with VMRUN: nested_run_pending was not restored with the nested state",
        );
    } else {
        // nested_run_pending restored: the entry delivers the event; the interrupt exits L2
        // once it ran.
        v.enter();
        v.l2_run(l2_code, &[]);
        let rip = v.l2_rip;
        v.svm_exit(SvmExit { code: svm::INTR, rip, ..SvmExit::default() });
        v.ev(EventKind::KvmNestedIntrVmexit { rip });
        svm_vmexit(v, &l1, svm::INTR, 0, 0);
        v.enter();
    }
    // L1 handles its interrupt and runs L2 on (which, in the buggy flavour, never gets its
    // interrupt).
    v.l1_step(0x80, 2_000, 8_000);
    svm_vmrun(v, &l1);
    for _ in 0..rounds - rounds / 2 {
        svm_l2_work(v, l2_code);
    }
    v.l2_run(l2_code, &[]);
    let rip = v.l2_rip;
    v.svm_exit(SvmExit { code: svm::INTR, rip, ..SvmExit::default() });
    v.ev(EventKind::KvmNestedIntrVmexit { rip });
    svm_vmexit(v, &l1, svm::INTR, 0, 0);
    v.enter();
}

/// Another vCPU of the AMD guest, outside nesting: host interrupts and timer MSR writes.
pub(super) fn svm_plain_guest(v: &mut Vcpu, steps: u32) {
    v.l1_rip = 0xffff_f800_2a20_0000 + u64::from(v.id) * 0x100;
    v.enter();
    for _ in 0..steps {
        v.l1_step(0x40, 5_000, 40_000);
        let rip = v.l1_rip;
        if v.rng.chance(50) {
            v.svm_exit(SvmExit { code: svm::INTR, rip, ..SvmExit::default() });
        } else {
            v.svm_exit(SvmExit { code: svm::MSR, rip, info1: 1, ..SvmExit::default() });
            let deadline = v.now.wrapping_mul(3);
            v.msr(true, 0x6e0, deadline);
            v.l1_rip += 2;
        }
        v.enter();
    }
}

/// L1 executes VMRUN: `kvm_exit vmrun`, then L2 is entered.
fn svm_vmrun(v: &mut Vcpu, l1: &SvmL1) {
    v.l1_rip = l1.vmrun_rip;
    let rip = v.l1_rip;
    v.svm_exit(SvmExit { code: svm::VMRUN, rip, info1: 0, info2: 0, ..SvmExit::default() });
    let vmcb12 = v.current_vmcs12().cloned();
    v.l2_rip = vmcb12.map_or(0, |x| x.guest_rip);
    svm_enter_l2(v, l1, rip);
}

/// `enter_svm_guest_mode`: `kvm_nested_vmenter` (isa svm; before 6.1 `kvm_nested_vmrun`, no
/// `guest_pgd`), the NPT root of L2 (a shadow page of L1's NPT, guest_mode), `kvm_entry`.
fn svm_enter_l2(v: &mut Vcpu, l1: &SvmL1, l1_rip: u64) {
    svm_nested_vmrun(v, l1, l1_rip);
    v.enter();
}

/// `enter_svm_guest_mode`: `kvm_nested_vmrun` (with vmcb12's EVENTINJ) and L2's guest_mmu
/// root; L2 is current but not entered yet. Returns the `kvm_nested_vmrun`.
fn svm_nested_vmrun(v: &mut Vcpu, l1: &SvmL1, l1_rip: u64) -> usize {
    let newer = v.kernel.has_nested_vmenter();
    let nested_rip = v.l2_rip;
    let event_inj = v.current_vmcs12().map_or(0, |x| x.entry_intr);
    let at = v.ev(EventKind::KvmNestedVmenter(NestedVmenter {
        rip: l1_rip,
        vmcs: l1.vmcb12,
        nested_rip,
        int_ctl: l1.int_ctl,
        event_inj: IntrInfo(event_inj),
        tdp_enabled: Some(true),
        guest_pgd: newer.then_some(l1.nested_cr3),
        isa: Some(Isa::Svm),
    }));
    v.mode = Mode::L2;
    if v.guest_mmu_root != Some(l1.nested_cr3) {
        v.get_page(l1.nested_cr3 >> 12, role::LONG_MODE_ROOT | role::GUEST_MODE);
        v.guest_mmu_root = Some(l1.nested_cr3);
    }
    at
}

/// `nested_svm_vmexit` to L1: `kvm_nested_vmexit_inject` (isa svm), vmcb12 synced, L1 after
/// its VMRUN. Returns L2's RIP at the exit.
fn svm_vmexit(v: &mut Vcpu, l1: &SvmL1, code: u64, info1: u64, info2: u64) -> u64 {
    let l2_rip = v.l2_rip;
    let mut cleared_inj = false;
    if let Some(x) = v.vmcs12s.get_mut(&l1.vmcb12) {
        x.guest_rip = l2_rip;
        x.launched = true;
        // The event VMRUN injected was delivered (or, before L2 ran, discarded).
        cleared_inj = IntrInfo(x.entry_intr).valid();
        x.entry_intr = 0;
    }
    v.record(l1.vmcb12, Vmcs12Field::GuestRip, l2_rip, Writer::L0Exit, false);
    if cleared_inj {
        v.record(l1.vmcb12, Vmcs12Field::VmEntryIntrInfo, 0, Writer::L0Exit, false);
    }
    v.svm_inject(code, info1, info2);
    v.mode = Mode::L1;
    v.l1_rip = l1.vmrun_rip + 3;
    l2_rip
}

/// L2 runs and exits: NPFs L0 handles (walking L1's NPT), a CPUID L1 intercepts.
fn svm_l2_work(v: &mut Vcpu, l2_code: u64) {
    v.l2_run(l2_code, &[]);
    if v.rng.chance(60) {
        let gpa = (v.rng.range(0x100, 0x3ffff) << 12) | (v.rng.range(0, 0x1ff) << 3);
        let rip = v.l2_rip;
        let info1 = 0x0000_0001_0000_0004u64;
        v.svm_exit(SvmExit { code: svm::NPF, rip, info1, info2: gpa, ..SvmExit::default() });
        let (kernel, id) = (v.kernel, v.id);
        v.ev(kernel.page_fault_event(id, rip, gpa, info1));
        v.walk_guest(gpa, 0x4, 4);
        v.enter();
        v.l2_run(l2_code, &[]);
    }
    let rip = v.l2_rip;
    v.svm_exit(SvmExit { code: svm::CPUID, rip, ..SvmExit::default() });
    let vmcb12 = v.current.unwrap_or(0);
    let l1 = SvmL1 {
        vmcb12,
        vmrun_rip: v.current_vmcs12().map_or(0, |x| x.host_rip - 3),
        nested_cr3: v.current_vmcs12().map_or(0, |x| x.eptp),
        int_ctl: 0,
    };
    svm_vmexit(v, &l1, svm::CPUID, 0, 0);
    v.enter();
    v.l1_step(0x40, 1_000, 5_000);
    v.l1_vmwrite(Vmcs12Field::GuestRip, rip + 2, false);
    v.l2_rip = rip + 2;
    let l1 = SvmL1 { int_ctl: 0x0102_0000, ..l1 };
    svm_vmrun(v, &l1);
}

/// L1 at the RSM instruction outside SMM: RSM raises #GP (emulated: `kvm_emulate_insn 0f aa`,
/// `kvm_inj_exception #GP (0x0)`), and Hyper-V bugchecks through the crash MSRs.
fn l1_dies_at_rsm(v: &mut Vcpu, rsm_rip: u64) {
    v.run_for(300, 900);
    v.svm_exit(SvmExit { code: svm::EXCP_GP, rip: rsm_rip, ..SvmExit::default() });
    v.emulate_insn(rsm_rip, &[0x0f, 0xaa], false);
    v.inj_exception(13, Some(0), false);
    v.enter_injecting(intr::GP, 0);
    v.l1_rip = 0xffff_f800_2a3f_1b40;
    for (msr, value) in (0x4000_0100u32..).zip([0x1e_u64, 0xffff_ffff_c000_0096, 0x7ffb_b280, 0, 0])
    {
        v.l1_step(0x10, 300, 1_500);
        let rip = v.l1_rip;
        v.svm_exit(SvmExit { code: svm::MSR, rip, info1: 1, ..SvmExit::default() });
        v.msr(true, msr, value);
        v.l1_rip += 2;
        v.enter();
    }
    v.l1_step(0x10, 300, 1_500);
    let rip = v.l1_rip;
    v.svm_exit(SvmExit { code: svm::MSR, rip, info1: 1, ..SvmExit::default() });
    v.msr(true, 0x4000_0105, 0x8000_0000_0000_0000);
    v.userspace_exit(24, 0);
    v.dead = true;
}
