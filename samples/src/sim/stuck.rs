//! The stuck vCPUs of issue 15: loops a vCPU never leaves. The buggy flavour loops until the
//! trace ends; the fixed flavour of the same seed makes progress (or, where KVM cannot deliver
//! an event, stops cleanly with an internal error).
//!
//! Each buggy run marks the loop in the ground truth ([`super::BugSite`]): `cycle_starts` holds
//! the first event (`kvm_exit`) of every round, `trigger` is the first round's, `divergence`
//! the third round's (three identical rounds: the detector's threshold, issue 15), and
//! `first_difference` the first event that differs from the fixed flavour of the same seed.
//!
//! | scenario | one round of the loop (buggy) | fixed flavour instead |
//! |---|---|---|
//! | `ept-livelock` (g) | `kvm_exit EPT_VIOLATION` (qual 0x683, IDT-vectoring IRQ 0xec) → `kvm_page_fault` → `kvm_inj_virq IRQ 0xec [reinjected]` → `kvm_entry` at the same RIP | two rounds (one stale retry), then the handler runs |
//! | `irq-reinject-loop` (h) | status read (`EPT_MISCONFIG`, `kvm_mmio`, KVM_EXIT_MMIO) → EOI (`MSR_WRITE` 0x80b, `kvm_apic`, `kvm_eoi`, `kvm_apic_accept_irq`, `kvm_msr`) → `kvm_inj_virq` of the same vector | the status read de-asserts the line (`kvm_set_irq … level 0`), the EOI raises nothing |
//! | `exception-delivery-loop` (i) | `kvm_exit EXCEPTION_NMI` #PF on the IDT (IDT-vectoring #UD) → `kvm_page_fault` → `kvm_emulate_insn 0f 0b failed` → `kvm_inj_exception #UD` → `kvm_entry` | `kvm_userspace_exit` KVM_EXIT_INTERNAL_ERROR (17) after the first #PF |
//! | `efault-loop` (j) | `kvm_exit EPT_VIOLATION` → `kvm_page_fault` → `fast_page_fault` → `kvm_fpu unload` → `kvm_userspace_exit reason error (14)` → `kvm_fpu load` → `kvm_entry` | the fault is fixed, the guest goes on |
//! | `eoi-loop` (k) | L1's EOI (`MSR_WRITE` 0x40000070, `kvm_eoi`, KVM_EXIT_IOAPIC_EOI) → IRQ re-raised (`kvm_msi_set_irq`, `kvm_apic_accept_irq`) → L1 VMRESUME (`event_inj`) → `kvm_entry [immediate exit]` → `PREEMPTION_TIMER` → inject `EXTERNAL_INTERRUPT` | L1 lets L2 service the device first; L1's EOI finds the line low |

use vmxray_events::EventKind;
use vmxray_events::fields::FieldValue;

use super::Bug;
use super::engine::{HOST_LOCAL_TIMER_VECTOR, Vcpu, Vmcs12, eptp, intr, reason};
use super::kernel::HwExit;

/// Rounds a buggy loop runs (the trace ends while the vCPU is still in it).
fn loop_rounds(iterations: u32) -> u32 {
    4 + iterations.min(60) * 2
}

/// `KVM_EXIT_MMIO`, `KVM_EXIT_INTERNAL_ERROR`, `KVM_EXIT_IOAPIC_EOI`.
const EXIT_MMIO: u32 = 6;
const EXIT_INTERNAL_ERROR: u32 = 17;
const EXIT_IOAPIC_EOI: u32 = 26;
/// The x2APIC EOI MSR and Hyper-V's synthetic EOI MSR.
const MSR_X2APIC_EOI: u32 = 0x80b;
const MSR_HV_EOI: u32 = 0x4000_0070;
/// `APIC_EOI`, the register offset `kvm_apic` names.
const APIC_EOI: u64 = 0xb0;

/// A Linux guest (no nesting) doing ordinary things: timer MSR writes, host interrupts, first
/// touches of memory (EPT violations KVM fixes at once).
pub(super) fn plain_guest(v: &mut Vcpu, steps: u32) {
    for _ in 0..steps {
        if v.dead {
            return;
        }
        v.l1_step(0x40, 5_000, 40_000);
        match v.rng.below(3) {
            0 => v.l1_wrmsr_tsc_deadline(),
            1 => v.l1_host_interrupt(HOST_LOCAL_TIMER_VECTOR),
            _ => {
                let gpa = (v.rng.range(0x100, 0x3ffff) << 12) | (v.rng.range(0, 0x1ff) << 3);
                let qual = if v.rng.chance(50) { 0x181 } else { 0x182 };
                let (kernel, id, rip) = (v.kernel, v.id, v.l1_rip);
                v.l1_exit(HwExit::new(reason::EPT_VIOLATION, 0).qual(qual), 0, move |v| {
                    v.ev(kernel.page_fault_event(id, rip, gpa, qual));
                });
            }
        }
    }
}

/// Starts a plain guest on `v` at a kernel RIP.
fn boot_plain(v: &mut Vcpu, rip: u64) {
    v.l1_rip = rip;
    v.l1_cr3 = 0x0000_0000_0b1e_4000;
    v.enter();
}

fn mark_loop(
    v: &mut Vcpu,
    bug: Bug,
    first_difference: usize,
    rounds: &[usize],
    note: &'static str,
) {
    let trigger = rounds.first().copied().unwrap_or(first_difference);
    let divergence = rounds.get(2).copied().unwrap_or(first_difference).max(first_difference);
    v.mark(bug, trigger.min(first_difference), first_difference, divergence, note);
    if let Some(site) = v.sites.last_mut() {
        site.cycle_starts = rounds.to_vec();
    }
}

fn untyped(v: &mut Vcpu, name: &str, fields: &[(&str, u64)]) -> usize {
    let f: Vec<(&str, FieldValue)> =
        fields.iter().map(|(n, x)| (*n, FieldValue::U64(*x))).collect();
    v.other("kvm", name, &f)
}

// ---- (g) the 6.1 mmu_seq livelock ----------------------------------------------------------

/// The guest's timer interrupt (vector 0xec) is delivered onto a stack page the EPT does not
/// map yet: an EPT violation during event delivery (IDT-vectoring info 0x800000ec), and KVM
/// re-injects the interrupt after handling the fault (`kvm_inj_virq … [reinjected]`). With the
/// 6.1 mmu_seq bug every fault is judged stale and never fixed (the excerpt
/// `ept-violation-livelock-mmu-seq.txt`); fixed KVM maps the page (after one legitimate stale
/// retry here) and the handler runs.
pub(super) fn ept_livelock(v: &mut Vcpu, iterations: u32) {
    let buggy = v.kvm.has(Bug::MmuSeqLivelock);
    boot_plain(v, 0xffff_ffff_c077_1a40);
    plain_guest(v, 3);
    // The guest's LAPIC timer (KVM's hv timer) expires: KVM injects IRQ 0xec.
    let rip = 0xffff_ffff_c077_1aa2u64;
    v.l1_step(0x20, 2_000, 9_000);
    v.l1_rip = rip;
    v.exit_here(HwExit::new(reason::PREEMPTION_TIMER, 0));
    v.inj_virq(0xec, false);
    v.enter();
    let gpa = 0x0000_0000_0259_4fe0u64;
    let qual = 0x683;
    let (kernel, id) = (v.kernel, v.id);
    let mut rounds = Vec::new();
    let mut round = 0;
    loop {
        v.run_for(300, 900);
        if round == 2 && !buggy {
            // The fault was fixed: the interrupt handler runs and programs the next deadline.
            v.l1_rip = 0xffff_ffff_8106_a2d5;
            v.l1_exit(HwExit::new(reason::MSR_WRITE, 0), 2, |v| {
                v.msr(true, 0x6e0, 0x0004_2f3a_9c00_0000);
            });
            plain_guest(v, 2 + iterations);
            return;
        }
        if round == 2 + loop_rounds(iterations) {
            break;
        }
        let x = HwExit::new(reason::EPT_VIOLATION, rip).qual(qual);
        let x = HwExit { idt_vectoring: u64::from(intr::ext(0xec)), ..x };
        rounds.push(v.hw_exit(x, false));
        v.ev(kernel.page_fault_event(id, rip, gpa, qual));
        v.inj_virq(0xec, true);
        v.enter();
        round += 1;
    }
    let first = rounds[2];
    mark_loop(
        v,
        Bug::MmuSeqLivelock,
        first,
        &rounds,
        "the same EPT violation (same RIP, GPA, qualification 0x683, IRQ 0xec in the IDT-vectoring info) every round, the interrupt re-injected, the fault never fixed",
    );
    v.dead = true;
}

// ---- (h) a level-triggered interrupt that stays asserted -----------------------------------

/// A device on GSI 19 (IOAPIC, level, vector 0x61) interrupts the guest; its handler reads the
/// device status (MMIO, which acknowledges the device) and EOIs through the x2APIC EOI MSR. If
/// the device model never de-asserts the line, KVM's IOAPIC raises the vector again at every
/// EOI and the vCPU runs the handler forever.
pub(super) fn irq_reinject_loop(v: &mut Vcpu, iterations: u32) {
    let stuck = v.kvm.has(Bug::IrqLineStuck);
    boot_plain(v, 0xffff_ffff_8100_2000);
    plain_guest(v, 2);
    let vector = 0x61u8;
    let status_rip = 0xffff_ffff_c0a0_2f13u64;
    let eoi_rip = 0xffff_ffff_8106_4b9au64;
    let mut rounds = Vec::new();
    let mut first_difference = None;
    let interrupts = 2 + iterations.min(4);
    for n in 0..interrupts {
        // The guest kicks the device (MMIO write), the VMM raises the line.
        v.l1_step(0x40, 4_000, 20_000);
        v.l1_rip = 0xffff_ffff_c0a0_2c40 + u64::from(n) * 0x10;
        mmio_exit(v, 2, &[0x89, 0x43, 0x10], 0xfebf_1010, 1);
        v.run_for(2_000, 8_000);
        raise_level_irq(v, vector);
        v.fpu(true);
        v.inj_virq(vector, false);
        v.enter();
        let mut round = 0;
        loop {
            v.run_for(600, 2_000);
            v.l1_rip = status_rip;
            let start = v.next_index();
            mmio_exit(v, 0, &[0x8b, 0x43, 0x0c], 0xfebf_100c, 0);
            v.run_for(1_000, 4_000);
            if !stuck {
                // Reading the status acknowledges the device: the VMM lowers the line.
                untyped(v, "kvm_set_irq", &[("gsi", 19), ("level", 0), ("irq_source_id", 0)]);
                ioapic_set_irq(v, vector);
            } else if first_difference.is_none() {
                first_difference = Some(v.next_index());
            }
            v.fpu(true);
            untyped(v, "kvm_mmio", &[("type", 1), ("len", 4), ("gpa", 0xfebf_100c), ("val", 1)]);
            v.l1_rip += 3;
            v.enter();
            v.run_for(300, 1_200);
            v.l1_rip = eoi_rip;
            v.exit_here(HwExit::new(reason::MSR_WRITE, 0));
            untyped(v, "kvm_apic", &[("rw", 1), ("reg", APIC_EOI), ("val", 0)]);
            untyped(v, "kvm_eoi", &[("apicid", 0), ("vector", u64::from(vector))]);
            if stuck {
                accept_irq(v, vector, true);
            }
            v.msr(true, MSR_X2APIC_EOI, 0);
            v.l1_rip += 2;
            if stuck {
                rounds.push(start);
                v.inj_virq(vector, false);
                v.enter();
                round += 1;
                if round == loop_rounds(iterations) {
                    mark_loop(
                        v,
                        Bug::IrqLineStuck,
                        first_difference.unwrap_or(start),
                        &rounds,
                        "the level-triggered line is never de-asserted: every EOI re-raises vector 0x61, the handler runs forever at the same RIPs",
                    );
                    v.dead = true;
                    return;
                }
            } else {
                v.enter();
                break;
            }
        }
        plain_guest(v, 2);
    }
}

/// An MMIO access KVM emulates and completes in userspace (`EPT_MISCONFIG`, `kvm_emulate_insn`,
/// `kvm_mmio`, `kvm_fpu unload`, KVM_EXIT_MMIO); `kind` 2 = write, 0 = read (unsatisfied until
/// the VMM answers).
fn mmio_exit(v: &mut Vcpu, kind: u64, insn: &[u8], gpa: u64, val: u64) {
    let rip = v.rip();
    v.exit_here(HwExit::new(reason::EPT_MISCONFIG, 0));
    v.emulate_insn(rip, insn, false);
    untyped(v, "kvm_mmio", &[("type", kind), ("len", 4), ("gpa", gpa), ("val", val)]);
    v.fpu(false);
    v.userspace_exit(EXIT_MMIO, 0);
}

/// The VMM raises GSI 19 (KVM_IRQ_LINE): `kvm_set_irq`, the in-kernel IOAPIC, the LAPIC.
fn raise_level_irq(v: &mut Vcpu, vector: u8) {
    untyped(v, "kvm_set_irq", &[("gsi", 19), ("level", 1), ("irq_source_id", 0)]);
    ioapic_set_irq(v, vector);
    accept_irq(v, vector, true);
}

/// `kvm_ioapic_set_irq` for pin 19: the redirection entry (vector, fixed, physical, level,
/// destination 0), as the kernel records it (`e`).
fn ioapic_set_irq(v: &mut Vcpu, vector: u8) {
    let entry = u64::from(vector) | (1 << 15);
    untyped(v, "kvm_ioapic_set_irq", &[("e", entry), ("pin", 19), ("coalesced", 0)]);
}

/// `kvm_apic_accept_irq` on APIC 0 (fixed delivery).
pub(super) fn accept_irq(v: &mut Vcpu, vector: u8, level: bool) {
    untyped(
        v,
        "kvm_apic_accept_irq",
        &[("apicid", 0), ("dm", 0), ("tm", u64::from(level)), ("vec", u64::from(vector))],
    );
}

// ---- (i) an exception whose delivery faults in MMIO ----------------------------------------

/// A user process executes `ud2`; the guest's IDT is mapped onto MMIO (corrupted page tables,
/// L0 on shadow paging). KVM intercepts #UD, fails to emulate `ud2` and injects #UD; reading
/// the IDT entry faults (#PF on an MMIO page, IDT-vectoring #UD), and before 47ef3ef843c0 KVM
/// emulated the instruction at RIP for that fault: `ud2` again, #UD again, forever. Since, it
/// exits to userspace with an internal error (suberror DELIVERY_EV).
pub(super) fn exception_delivery_loop(v: &mut Vcpu, iterations: u32) {
    let buggy = v.kvm.has(Bug::MmioVectoringLoop);
    v.l0_ept = false;
    boot_plain(v, 0xffff_ffff_8100_3000);
    long_mode_steps(v, 3);
    let rip = 0x0000_5600_b39c_8132u64;
    let idt_entry = 0xffff_fe00_0000_0060u64;
    v.l1_step(0x20, 3_000, 9_000);
    v.l1_rip = rip;
    v.exit_here(HwExit::new(reason::EXCEPTION_NMI, 0).intr(intr::UD, 0));
    v.emulate_insn(rip, &[0x0f, 0x0b], true);
    v.inj_exception(6, None, false);
    v.enter_injecting(intr::UD, 0);
    let (kernel, id) = (v.kernel, v.id);
    let mut rounds = Vec::new();
    let mut first_difference = None;
    for round in 0..2 + loop_rounds(iterations) {
        v.run_for(300, 900);
        // The first access to the MMIO page is not present (err 0); later ones hit the MMIO
        // SPTE KVM installed (P|RSVD, err 9).
        let err = if round == 0 { 0 } else { 9 };
        let x = HwExit::new(reason::EXCEPTION_NMI, rip).qual(idt_entry).intr(intr::PF, err);
        let x = HwExit { idt_vectoring: u64::from(intr::UD), ..x };
        rounds.push(v.hw_exit(x, false));
        v.ev(kernel.page_fault_event(id, rip, idt_entry, u64::from(err)));
        if round == 0 {
            v.walk_guest(idt_entry, 0, 4);
        }
        if !buggy {
            let exit = rounds[0];
            let at = v.userspace_exit(EXIT_INTERNAL_ERROR, 0);
            v.landmark(
                "internal-error",
                at,
                vec![exit],
                "KVM cannot deliver #UD (its IDT entry is in MMIO): KVM_EXIT_INTERNAL_ERROR, suberror DELIVERY_EV",
            );
            v.dead = true;
            return;
        }
        if first_difference.is_none() {
            first_difference = Some(v.next_index());
        }
        v.emulate_insn(rip, &[0x0f, 0x0b], true);
        v.inj_exception(6, None, false);
        v.enter_injecting(intr::UD, 0);
    }
    mark_loop(
        v,
        Bug::MmioVectoringLoop,
        first_difference.unwrap_or(rounds[0]),
        &rounds,
        "#PF on the IDT entry (MMIO) while delivering #UD: KVM emulates the ud2 at RIP instead, injects #UD again, forever",
    );
    v.dead = true;
}

/// L1 on shadow paging doing ordinary things (CR3 loads exit, timer MSR writes).
fn long_mode_steps(v: &mut Vcpu, steps: u32) {
    use super::engine::role;
    for _ in 0..steps {
        v.l1_step(0x40, 5_000, 40_000);
        if v.rng.chance(50) {
            v.l1_wrmsr_tsc_deadline();
        } else {
            let cr3 = 0x0000_0000_0280_a000 + v.rng.range(0, 5) * 0x2000;
            v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x3), 3, move |v| {
                v.ev(EventKind::KvmCr { write: true, cr: 3, val: cr3 });
                let root = (cr3 >> 12, role::LONG_MODE_ROOT);
                if v.shadow_root != Some(root) {
                    v.get_page(root.0, root.1);
                    v.shadow_root = Some(root);
                }
            });
            v.l1_cr3 = cr3;
        }
    }
}

// ---- (j) EFAULT from KVM_RUN, and a VMM that runs the vCPU again ---------------------------

/// gVisor's KVM platform mapped vdso/vvar (a range KVM cannot fault in) into guest memory: the
/// EPT violation on it fails with `-EFAULT` (`fast_page_fault` does not fix it, the slow path
/// returns the error), and the VMM enters the vCPU again, which faults the same way (GitHub
/// google/gvisor#6757, the excerpt `efault-loop-vvar-in-guest-memory.txt`). With a memslot KVM
/// can use, the fault is fixed.
pub(super) fn efault_loop(v: &mut Vcpu, iterations: u32) {
    let bad = v.kvm.has(Bug::EfaultMemslot);
    boot_plain(v, 0x0000_5600_b39c_7f00);
    plain_guest(v, 3);
    let rip = 0x0000_5600_b39c_8132u64;
    let gpa = 0x0000_3fef_4281_2000u64;
    let (kernel, id) = (v.kernel, v.id);
    let mut rounds = Vec::new();
    let mut first_difference = None;
    v.l1_step(0x20, 2_000, 9_000);
    v.l1_rip = rip;
    for _ in 0..loop_rounds(iterations) {
        rounds.push(v.exit_here(HwExit::new(reason::EPT_VIOLATION, 0).qual(0x181)));
        v.ev(kernel.page_fault_event(id, rip, gpa, 0x181));
        v.other(
            "kvmmmu",
            "fast_page_fault",
            &[
                ("vcpu_id", FieldValue::U64(u64::from(id))),
                ("cr2_or_gpa", FieldValue::U64(gpa)),
                ("error_code", FieldValue::U64(0x4)),
                ("sptep", FieldValue::U64(0xffff_9a3e_ce97_aa90)),
                ("old_spte", FieldValue::U64(0)),
                ("new_spte", FieldValue::U64(0)),
                // RET_PF_INVALID (6.12+ numbering, which events carry): the fast path could
                // not fix it.
                ("ret", FieldValue::U64(4)),
            ],
        );
        if !bad {
            // The slow path maps the page: the guest goes on.
            v.enter();
            plain_guest(v, 3 + iterations);
            return;
        }
        if first_difference.is_none() {
            first_difference = Some(v.next_index());
        }
        v.fpu(false);
        v.userspace_exit(0, -14);
        // The VMM (gVisor) does not fix the mapping and runs the vCPU again.
        v.run_for(8_000, 20_000);
        v.fpu(true);
        v.enter();
        v.run_for(300, 900);
    }
    mark_loop(
        v,
        Bug::EfaultMemslot,
        first_difference.unwrap_or(rounds[0]),
        &rounds,
        "the same EPT violation every round, KVM_RUN fails with EFAULT (kvm_userspace_exit reason error (14)) and the VMM runs the vCPU again",
    );
    v.dead = true;
}

// ---- (k) the split-irqchip EOI loop of a nested Hyper-V ------------------------------------

/// Hyper-V as L1 (enlightened VMCS, nested EPT) with Windows (Credential Guard) as L2 and a
/// split IRQCHIP (bugzilla 220549, the excerpt `bz220549-split-irqchip-eoi-tracepoints.txt`): a
/// level interrupt (GSI 19, vector 0x81) for L2's device arrives while L2 runs and exits to L1.
/// With KVM advertising x2APIC Suppress-EOI-Broadcast that the split IRQCHIP cannot honour, L1
/// EOIs at once expecting no broadcast; the EOI reaches the userspace IOAPIC, the line is still
/// asserted (L2 has not serviced the device), the IRQ is raised again, and L1's VMRESUME of L2
/// is cut short by an immediate exit that reflects it again. Fixed (6517dfbcc918): L1 first lets
/// L2 service the device, and its EOI finds the line low.
pub(super) fn eoi_loop(v: &mut Vcpu, iterations: u32) {
    let buggy = v.kvm.has(Bug::SplitIrqchipEoi);
    let evmcs_gpa = 0x0000_0000_0b4d_6000u64;
    let host_rip = 0xffff_f848_9b64_142cu64;
    let vmresume_rip = 0xffff_f848_9b64_1308u64;
    let eoi_rip = 0xffff_f848_9b73_2dafu64;
    let l2_code = 0xffff_f803_1964_0000u64;
    let handler = 0xffff_f803_1964_a708u64;
    let vector = 0x81u8;
    v.l1_rip = host_rip;
    v.l1_cr3 = 0x0000_0000_0061_5000;
    v.l1_setup_vmcs12(
        evmcs_gpa,
        Vmcs12 {
            guest_rip: l2_code + 0xb2b6,
            guest_cr3: 0x0000_0000_001a_d000,
            eptp: eptp(0x0000_0001_019a_7000),
            nested_ept: true,
            launched: false,
            activity_hlt: false,
            entry_intr: 0,
            host_rip,
            host_cr3: 0x0000_0000_0061_5000,
            evmcs: true,
        },
    );
    // The enlightened VMCS is made current through the VP assist page: no VMPTRLD.
    v.current = Some(evmcs_gpa);
    v.enter();
    v.l1_step(0x40, 2_000, 6_000);
    v.l1_rip = vmresume_rip;
    v.l1_vmentry();
    let mut rounds = Vec::new();
    let mut first_difference = None;
    for n in 0..2 + iterations.min(4) {
        v.l2_run(l2_code, &[]);
        v.l2_noise(30);
        v.l2_run(l2_code, &[]);
        // L2 kicks its device (MMIO write, completed by the VMM), which raises the level line:
        // in split-IRQCHIP mode the userspace IOAPIC sends it as an MSI.
        v.l2_rip = l2_code + 0x7_3c10 + u64::from(n) * 8;
        l2_mmio_write(v, 0x8111_1024, 0x4);
        v.run_for(2_000, 8_000);
        raise_msi(v, vector);
        v.fpu(true);
        v.l2_rip += 3;
        // L1 intercepts external interrupts (acknowledge on exit): a nested exit.
        let trigger = v.nested_vmexit(reason::EXTERNAL_INTERRUPT, 0, 0, intr::ext(vector), 0);
        if buggy {
            let mut round = 0;
            loop {
                v.run_for(600, 2_000);
                // L1 EOIs at once: with EOI broadcast suppressed it expects the IOAPIC to see
                // nothing until L2 has serviced the device.
                v.l1_rip = eoi_rip;
                let start = v.exit_here(HwExit::new(reason::MSR_WRITE, 0));
                if first_difference.is_none() {
                    first_difference = Some(start);
                }
                rounds.push(start);
                l1_eoi(v, vector);
                // The line is still asserted: the userspace IOAPIC raises it again.
                v.run_for(3_000, 9_000);
                v.fpu(true);
                untyped(
                    v,
                    "kvm_msi_set_irq",
                    &[("address", 0xfee0_0000), ("data", msi_data(vector))],
                );
                accept_irq(v, vector, true);
                v.l1_rip = eoi_rip + 2;
                v.enter();
                // L1 resumes L2 to let it service the interrupt; KVM must first deliver L1's
                // own pending interrupt, so the entry exits at once.
                v.l1_step(0x30, 1_000, 3_000);
                v.l1_vmwrite(
                    super::truth::Vmcs12Field::VmEntryIntrInfo,
                    u64::from(intr::ext(vector)),
                    false,
                );
                v.l1_rip = vmresume_rip;
                l1_vmresume_immediate_exit(v, handler);
                v.nested_vmexit(reason::EXTERNAL_INTERRUPT, 0, 0, intr::ext(vector), 0);
                round += 1;
                if round == loop_rounds(iterations) {
                    mark_loop(
                        v,
                        Bug::SplitIrqchipEoi,
                        first_difference.unwrap_or(trigger),
                        &rounds,
                        "L1 EOIs the level interrupt before L2 serviced the device: KVM_EXIT_IOAPIC_EOI, the IRQ is raised again, L1's VMRESUME exits at once (immediate exit) and the interrupt is reflected again",
                    );
                    if let Some(site) = v.sites.last_mut() {
                        site.trigger = trigger;
                    }
                    v.dead = true;
                    return;
                }
            }
        }
        // Fixed: L1 reflects the interrupt into L2 and resumes it.
        v.run_for(600, 2_000);
        v.l1_step(0x30, 1_000, 3_000);
        v.l1_vmwrite(
            super::truth::Vmcs12Field::VmEntryIntrInfo,
            u64::from(intr::ext(vector)),
            false,
        );
        v.l1_rip = vmresume_rip;
        v.l1_vmentry();
        // L2's handler acknowledges the device (the VMM lowers the line) and EOIs; L1
        // intercepts L2's EOI and EOIs its own APIC, which exits to the userspace IOAPIC.
        v.run_for(2_000, 6_000);
        v.l2_rip = handler + 0x1f;
        l2_mmio_write(v, 0x8111_1024, 0x8);
        v.run_for(1_000, 4_000);
        untyped(v, "kvm_set_irq", &[("gsi", 19), ("level", 0), ("irq_source_id", 0)]);
        v.fpu(true);
        v.l2_rip += 3;
        v.enter();
        v.run_for(1_000, 4_000);
        v.l2_rip = handler + 0x84;
        v.l2_exit_reflect(HwExit::new(reason::MSR_WRITE, 0));
        v.run_for(600, 2_000);
        v.l1_rip = eoi_rip;
        v.exit_here(HwExit::new(reason::MSR_WRITE, 0));
        l1_eoi(v, vector);
        v.run_for(3_000, 9_000);
        v.fpu(true);
        v.l1_rip = eoi_rip + 2;
        v.enter();
        v.l1_step(0x30, 1_000, 3_000);
        let l2_next = handler + 0x86;
        v.l1_vmwrite(super::truth::Vmcs12Field::GuestRip, l2_next, false);
        v.l1_rip = vmresume_rip;
        v.l1_vmentry();
    }
    v.l2_run(l2_code, &[]);
    v.l2_slice_end();
}

/// L1's EOI through Hyper-V's synthetic EOI MSR: `kvm_apic`, `kvm_eoi`, `kvm_msr`, and, for a
/// level interrupt with a split IRQCHIP, KVM_EXIT_IOAPIC_EOI.
fn l1_eoi(v: &mut Vcpu, vector: u8) {
    untyped(v, "kvm_apic", &[("rw", 1), ("reg", APIC_EOI), ("val", 0)]);
    untyped(v, "kvm_eoi", &[("apicid", 0), ("vector", u64::from(vector))]);
    v.msr(true, MSR_HV_EOI, 0);
    v.fpu(false);
    v.userspace_exit(EXIT_IOAPIC_EOI, 0);
}

/// The MSI the userspace IOAPIC sends for GSI 19: `kvm_set_irq`, `kvm_msi_set_irq`,
/// `kvm_apic_accept_irq`.
fn raise_msi(v: &mut Vcpu, vector: u8) {
    untyped(v, "kvm_set_irq", &[("gsi", 19), ("level", 1), ("irq_source_id", 0)]);
    untyped(v, "kvm_msi_set_irq", &[("address", 0xfee0_0000), ("data", msi_data(vector))]);
    accept_irq(v, vector, true);
}

/// MSI data: the vector, fixed delivery, level-triggered, asserted.
fn msi_data(vector: u8) -> u64 {
    u64::from(vector) | (1 << 14) | (1 << 15)
}

/// An L2 MMIO write L0 emulates and completes in userspace (`EPT_MISCONFIG` +
/// `kvm_nested_vmexit`, `kvm_emulate_insn`, `kvm_mmio`, KVM_EXIT_MMIO).
fn l2_mmio_write(v: &mut Vcpu, gpa: u64, val: u64) {
    let rip = v.l2_rip;
    v.exit_here(HwExit::new(reason::EPT_MISCONFIG, 0));
    v.emulate_insn(rip, &[0x89, 0x46, 0x24], false);
    untyped(v, "kvm_mmio", &[("type", 2), ("len", 4), ("gpa", gpa), ("val", val)]);
    v.fpu(false);
    v.userspace_exit(EXIT_MMIO, 0);
}

/// L1's VMRESUME entered with an immediate exit: `kvm_exit VMRESUME`, `kvm_nested_vmenter`,
/// `kvm_entry … [immediate exit]`, then the hardware PREEMPTION_TIMER exit (`kvm_exit` +
/// `kvm_nested_vmexit`) at L2's interrupt handler (the entry delivered L1's event first).
fn l1_vmresume_immediate_exit(v: &mut Vcpu, handler: u64) {
    let vmptr = v.current.unwrap_or(0);
    let vmcs12 =
        v.vmcs12s.get(&vmptr).cloned().unwrap_or_else(|| super::engine::empty_vmcs12(vmptr));
    let rip = v.l1_rip;
    v.hw_exit(HwExit::new(reason::VMRESUME, rip), false);
    v.enter_non_root_mode(&vmcs12, rip);
    v.enter_immediate_exit();
    v.vmcs02_cr3 = v.l2_cr3;
    v.l2_rip = handler;
    v.hw_exit(HwExit::new(reason::PREEMPTION_TIMER, handler), false);
}
