//! L0: what KVM does, and traces, for what L1 and L2 do on one vCPU.
//!
//! [`Vcpu`] holds KVM's per-vCPU nested state (mode, current vmptr, the cached vmcs12s, the one
//! vmcs02's GUEST_CR3, the MMU roots) and the operations of reference §2 as methods that emit
//! the tracepoints in KVM's order. The buggy behaviours of §3 are branches on [`KvmFlavour`]
//! inside these methods, nowhere else, so a scenario script is the same for both flavours.

use std::collections::{BTreeMap, BTreeSet};

use vmxray_events::codes::{IntrInfo, Isa, MmuPageRole};
use vmxray_events::fields::{FieldValue, Fields};
use vmxray_events::{Event, EventKind, MmuPage, NestedVmenter};

use super::kernel::{HwExit, KernelVersion, SvmExit};
use super::rng::Rng;
use super::truth::{Vmcs12Field, Vmcs12Write, Writer};
use super::{Bug, KvmFlavour};

/// VMX basic exit reasons used by the scenarios (SDM appendix C).
pub(crate) mod reason {
    pub(crate) const EXCEPTION_NMI: u32 = 0;
    pub(crate) const EXTERNAL_INTERRUPT: u32 = 1;
    pub(crate) const TRIPLE_FAULT: u32 = 2;
    pub(crate) const CPUID: u32 = 10;
    pub(crate) const HLT: u32 = 12;
    pub(crate) const VMCALL: u32 = 18;
    pub(crate) const VMLAUNCH: u32 = 20;
    pub(crate) const VMPTRLD: u32 = 21;
    pub(crate) const VMRESUME: u32 = 24;
    pub(crate) const CR_ACCESS: u32 = 28;
    pub(crate) const IO_INSTRUCTION: u32 = 30;
    pub(crate) const MSR_WRITE: u32 = 32;
    pub(crate) const EPT_VIOLATION: u32 = 48;
    pub(crate) const INVEPT: u32 = 50;
    pub(crate) const PREEMPTION_TIMER: u32 = 52;
    pub(crate) const PML_FULL: u32 = 62;
    pub(crate) const INVALID_STATE: u32 = 33;
    pub(crate) const LDTR_TR: u32 = 47;
    pub(crate) const EPT_MISCONFIG: u32 = 49;
}

/// SVM exit codes used by the scenarios (APM vol. 2, appendix C; reference §4.2).
pub(crate) mod svm {
    pub(crate) const EXCP_GP: u64 = 0x04d;
    pub(crate) const INTR: u64 = 0x060;
    pub(crate) const CPUID: u64 = 0x072;
    pub(crate) const RSM: u64 = 0x073;
    pub(crate) const IOIO: u64 = 0x07b;
    pub(crate) const MSR: u64 = 0x07c;
    pub(crate) const VMRUN: u64 = 0x080;
    pub(crate) const NPF: u64 = 0x400;
    /// `SVM_EXIT_SW`: the code KVM gives the silent #VMEXIT it performs itself (SMI entry).
    pub(crate) const SW: u64 = 0xf000_0000;
}

/// Interruption-information values (reference §4.5).
pub(crate) mod intr {
    /// #PF, hardware exception with error code.
    pub(crate) const PF: u32 = 0x8000_0b0e;
    /// #UD.
    pub(crate) const UD: u32 = 0x8000_0306;
    /// #GP, hardware exception with error code.
    pub(crate) const GP: u32 = 0x8000_0b0d;
    /// External interrupt with `vector`.
    pub(crate) fn ext(vector: u8) -> u32 {
        0x8000_0000 | u32::from(vector)
    }
}

/// Host interrupt vectors seen in `kvm_exit EXTERNAL_INTERRUPT` (Linux x86 host).
pub(crate) const HOST_LOCAL_TIMER_VECTOR: u8 = 0xec;
pub(crate) const HOST_RESCHEDULE_VECTOR: u8 = 0xfd;

/// Which level the vCPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// L1 (vmcs01).
    L1,
    /// L2 (vmcs02) for the current vmcs12.
    L2,
}

/// What a nested VM-enter led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entered {
    /// Hardware entered L2 (`kvm_entry` emitted).
    Running,
    /// The HLT-activity path (§2.5): L2 state loaded, vmcs02 never ran, the vCPU blocks.
    Halted,
}

/// KVM's cached copy of one vmcs12 (what L1 wrote, plus what L0 synced at exits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Vmcs12 {
    pub(crate) guest_rip: u64,
    pub(crate) guest_cr3: u64,
    pub(crate) eptp: u64,
    pub(crate) nested_ept: bool,
    pub(crate) launched: bool,
    pub(crate) activity_hlt: bool,
    pub(crate) entry_intr: u32,
    pub(crate) host_rip: u64,
    pub(crate) host_cr3: u64,
    /// Enlightened VMCS (Hyper-V): `kvm_nested_vmenter.vmcs` is all ones.
    pub(crate) evmcs: bool,
}

/// A site of the injected bug, in this vCPU's local event indices.
#[derive(Clone, Debug)]
pub(crate) struct LocalSite {
    pub(crate) bug: Bug,
    pub(crate) trigger: usize,
    pub(crate) first_difference: usize,
    pub(crate) divergence: usize,
    pub(crate) note: &'static str,
    /// For a loop: the local index of the first event of every round.
    pub(crate) cycle_starts: Vec<usize>,
}

/// A landmark ([`super::truth::Landmark`]) in this vCPU's local event indices.
#[derive(Clone, Debug)]
pub(crate) struct LocalLandmark {
    pub(crate) what: &'static str,
    pub(crate) at: usize,
    pub(crate) evidence: Vec<usize>,
    pub(crate) note: &'static str,
}

/// One vCPU thread: its identity, clock, output, and KVM's state for it.
pub(crate) struct Vcpu {
    pub(crate) id: u32,
    pub(crate) pid: i32,
    pub(crate) cpu: u32,
    pub(crate) comm: vmxray_events::Comm,
    /// The vCPU thread's clock (ns); only moves forward.
    pub(crate) now: u64,
    pub(crate) rng: Rng,
    pub(crate) kernel: KernelVersion,
    pub(crate) kvm: KvmFlavour,
    /// L0 uses EPT (`enable_ept`); otherwise shadow paging for every level.
    pub(crate) l0_ept: bool,
    pub(crate) events: Vec<Event>,
    pub(crate) writes: Vec<(usize, Vmcs12Write)>,
    pub(crate) sites: Vec<LocalSite>,
    pub(crate) landmarks: Vec<LocalLandmark>,
    /// No more events on this vCPU (it shut down or blocked forever).
    pub(crate) dead: bool,

    pub(crate) mode: Mode,
    pub(crate) l1_rip: u64,
    pub(crate) l1_cr3: u64,
    pub(crate) vmcs12s: BTreeMap<u64, Vmcs12>,
    pub(crate) current: Option<u64>,
    /// L2's live RIP and CR3 while it is the current level.
    pub(crate) l2_rip: u64,
    pub(crate) l2_cr3: u64,
    /// The single vmcs02's GUEST_CR3 (reference §3a: `hw_vmcs02_cr3`).
    pub(crate) vmcs02_cr3: u64,
    /// L2 is halted (HLT emulated by L0, or the HLT-activity entry path).
    pub(crate) l2_halted: bool,
    /// The EPTP whose guest_mmu root is loaded, if any.
    pub(crate) guest_mmu_root: Option<u64>,
    /// The shadow root_mmu root (gfn, role word) loaded, with the shadow MMU.
    pub(crate) shadow_root: Option<(u64, u32)>,
    /// Shadow pages that exist (for `created` = new/existing).
    pub(crate) shadow_pages: BTreeSet<(u64, u32)>,
    /// guest_mmu pages made unsync by L1 writes, synced at the next root load.
    pub(crate) unsync_pages: Vec<(u64, u32)>,
    /// Entries in the vCPU's PML buffer (512 = full).
    pub(crate) pml_entries: u32,
    /// Userspace has dirty logging on for the L1 memslots.
    pub(crate) dirty_logging: bool,
    /// L2 GPAs already dirtied (write-enabled again) since logging was turned on.
    pub(crate) dirtied: BTreeSet<u64>,
}

/// `kvm_mmu_page_role` words (reference §1.13), before the kernel's bit-4 convention.
pub(crate) mod role {
    pub(crate) const ACC_ALL: u32 = 7 << 8;
    pub(crate) const DIRECT: u32 = 1 << 7;
    pub(crate) const EFER_NX: u32 = 1 << 12;
    pub(crate) const CR0_WP: u32 = 1 << 13;
    pub(crate) const GUEST_MODE: u32 = 1 << 17;
    /// A 64-bit (4-level) shadow root of a paging guest.
    pub(crate) const LONG_MODE_ROOT: u32 = 4 | ACC_ALL | EFER_NX | CR0_WP;
    /// A nested-EPT (guest_mmu) root: direct 0, guest_mode 1, A/D on, 4-level walk.
    pub(crate) const SHADOW_EPT_ROOT: u32 = 4 | ACC_ALL | GUEST_MODE;
    /// A guest_mmu leaf page (level 1).
    pub(crate) const SHADOW_EPT_LEAF: u32 = 1 | ACC_ALL | GUEST_MODE;
    /// The TDP-MMU root L2 runs on when L1 does not use nested EPT: direct, guest_mode.
    pub(crate) const TDP_GUEST_MODE_ROOT: u32 =
        4 | DIRECT | ACC_ALL | EFER_NX | CR0_WP | GUEST_MODE;
    /// A direct PAE root of an unpaged guest (after RESET/INIT, shadow MMU).
    pub(crate) const DIRECT_PAE_ROOT: u32 = 2 | DIRECT | ACC_ALL | EFER_NX;
}

const PML_ENTRIES: u32 = 512;

impl Vcpu {
    pub(crate) fn new(
        id: u32,
        pid: i32,
        start: u64,
        rng: Rng,
        kernel: KernelVersion,
        kvm: KvmFlavour,
    ) -> Self {
        Self {
            id,
            pid,
            cpu: id,
            comm: vmxray_events::Comm::from(format!("CPU {id}/KVM")),
            now: start,
            rng,
            kernel,
            kvm,
            l0_ept: true,
            events: Vec::new(),
            writes: Vec::new(),
            sites: Vec::new(),
            landmarks: Vec::new(),
            dead: false,
            mode: Mode::L1,
            l1_rip: 0,
            l1_cr3: 0,
            vmcs12s: BTreeMap::new(),
            current: None,
            l2_rip: 0,
            l2_cr3: 0,
            vmcs02_cr3: 0,
            l2_halted: false,
            guest_mmu_root: None,
            shadow_root: None,
            shadow_pages: BTreeSet::new(),
            unsync_pages: Vec::new(),
            pml_entries: 0,
            dirty_logging: false,
            dirtied: BTreeSet::new(),
        }
    }

    // ---- output --------------------------------------------------------------------------

    /// Emits one event at the current time, then lets a little handler time pass.
    pub(crate) fn ev(&mut self, kind: EventKind) -> usize {
        let idx = self.events.len();
        self.events.push(Event {
            ts: self.now,
            cpu: self.cpu,
            pid: self.pid,
            tgid: None,
            comm: Some(self.comm.clone()),
            kind,
        });
        self.now += self.rng.range(150, 900);
        idx
    }

    /// The local index the next event will get.
    pub(crate) fn next_index(&self) -> usize {
        self.events.len()
    }

    /// Guest execution time between an entry and the next exit.
    pub(crate) fn run_for(&mut self, lo_ns: u64, hi_ns: u64) {
        self.now += self.rng.range(lo_ns, hi_ns);
    }

    pub(crate) fn other(
        &mut self,
        system: &str,
        name: &str,
        fields: &[(&str, FieldValue)],
    ) -> usize {
        let mut f = Fields::new();
        for (n, v) in fields {
            f.push(*n, v.clone());
        }
        // Decoded as every reader decodes it: the events vmxray types (interrupt controller,
        // MMIO, SPTE) become typed, anything else stays untyped.
        let kind = EventKind::decode(system, name, &f).unwrap_or_else(|e| {
            panic!("the simulator's {system}:{name} lacks a field its decoder needs: {e}")
        });
        self.ev(kind)
    }

    /// `kvm_vcpu_wakeup` after the vCPU blocked for `ns`.
    pub(crate) fn wakeup(&mut self, ns: u64) -> usize {
        self.now += ns;
        self.other(
            "kvm",
            "kvm_vcpu_wakeup",
            &[
                ("ns", FieldValue::U64(ns)),
                ("waited", FieldValue::U64(1)),
                ("valid", FieldValue::U64(1)),
            ],
        )
    }

    pub(crate) fn msr(&mut self, write: bool, index: u32, data: u64) -> usize {
        self.ev(EventKind::KvmMsr { write, index, data, exception: false })
    }

    pub(crate) fn mark(
        &mut self,
        bug: Bug,
        trigger: usize,
        first_difference: usize,
        divergence: usize,
        note: &'static str,
    ) {
        self.sites.push(LocalSite {
            bug,
            trigger,
            first_difference,
            divergence,
            note,
            cycle_starts: Vec::new(),
        });
    }

    /// Marks a landmark (local indices).
    pub(crate) fn landmark(
        &mut self,
        what: &'static str,
        at: usize,
        evidence: Vec<usize>,
        note: &'static str,
    ) {
        self.landmarks.push(LocalLandmark { what, at, evidence, note });
    }

    /// Records a vmcs12 field write (the ground truth), when the value changes.
    pub(crate) fn record(
        &mut self,
        vmptr: u64,
        field: Vmcs12Field,
        value: u64,
        writer: Writer,
        always: bool,
    ) {
        if !always {
            let last =
                self.writes.iter().rev().find(|(_, w)| w.vmcs12 == vmptr && w.field == field);
            if last.is_some_and(|(_, w)| w.value == value) {
                return;
            }
        }
        let w = Vmcs12Write {
            ts: self.now,
            before_event: 0,
            vcpu: self.id,
            vmcs12: vmptr,
            field,
            value,
            writer,
        };
        self.writes.push((self.events.len(), w));
    }

    /// The vmcs12 GPA as the trace and the truth name it (all ones for an eVMCS).
    pub(crate) fn vmptr_name(&self, vmptr: u64) -> u64 {
        if self.vmcs12s.get(&vmptr).is_some_and(|v| v.evmcs) { u64::MAX } else { vmptr }
    }

    // ---- MMU -----------------------------------------------------------------------------

    /// A role word in this kernel's layout: bit 4 is `has_4_byte_gpte` on 6.x and
    /// `gpte_is_8_bytes` on 5.10; every simulated page has 8-byte gptes.
    pub(crate) fn role(&self, base: u32) -> MmuPageRole {
        MmuPageRole(if self.kernel.role_bit4_is_8_byte() { base | 0x10 } else { base })
    }

    /// `kvm_mmu_get_page` for a root (or any shadow page): `new` the first time.
    pub(crate) fn get_page(&mut self, gfn: u64, role_base: u32) -> usize {
        let created = self.shadow_pages.insert((gfn, role_base));
        let role = self.role(role_base);
        self.ev(EventKind::KvmMmuGetPage { page: MmuPage::with_role(Some(0), gfn, role), created })
    }

    fn page(&self, gfn: u64, role_base: u32, unsync: bool) -> MmuPage {
        MmuPage { unsync, ..MmuPage::with_role(Some(0), gfn, self.role(role_base)) }
    }

    /// An L1 write to a guest_mmu page (EPT12 edit): the page goes unsync.
    pub(crate) fn unsync_page(&mut self, gfn: u64) -> usize {
        self.shadow_pages.insert((gfn, role::SHADOW_EPT_LEAF));
        let page = self.page(gfn, role::SHADOW_EPT_LEAF, false);
        self.unsync_pages.push((gfn, role::SHADOW_EPT_LEAF));
        self.ev(EventKind::KvmMmuUnsyncPage { page })
    }

    /// `kvm_mmu_load` for L2 before a hardware entry: the guest_mmu root for the EPTP (nested
    /// EPT), or the guest_mode shadow root for L2's CR3 (L0 without EPT); then sync.
    fn load_l2_mmu(&mut self, v: &Vmcs12) {
        if self.l0_ept && v.nested_ept {
            if self.guest_mmu_root != Some(v.eptp) {
                self.get_page(v.eptp >> 12, role::SHADOW_EPT_ROOT);
                self.guest_mmu_root = Some(v.eptp);
                self.sync_unsync_pages();
            }
        } else if self.l0_ept {
            // L2 without nested EPT runs on L0's TDP MMU with role.guest_mode set: the VM's
            // first L2 entry allocates that direct root (`kvm_mmu_get_page l4 direct guest_mode
            // gfn 0 new`, as in the real l1-hlt/l1-noept recordings); later entries, on any
            // vCPU, reuse it without an event (TDP-MMU roots are per VM; the simulated VM's
            // first L2 entry is vCPU 0's).
            let root = (0, role::TDP_GUEST_MODE_ROOT);
            if self.id == 0 && !self.shadow_pages.contains(&root) {
                self.get_page(root.0, root.1);
            }
        } else {
            let root = (self.l2_cr3 >> 12, role::LONG_MODE_ROOT | role::GUEST_MODE);
            if self.shadow_root != Some(root) {
                self.get_page(root.0, root.1);
                self.shadow_root = Some(root);
            }
        }
    }

    fn sync_unsync_pages(&mut self) {
        for (gfn, role_base) in std::mem::take(&mut self.unsync_pages) {
            let page = self.page(gfn, role_base, true);
            self.ev(EventKind::KvmMmuSyncPage { page });
        }
    }

    // ---- exits and entries ---------------------------------------------------------------

    /// A hardware VM-exit: `kvm_exit`, and in L2 `kvm_nested_vmexit` (reference §1.3), unless
    /// `fastpath` (L0's own preemption timer on kernels that take it in the fastpath).
    pub(crate) fn hw_exit(&mut self, x: HwExit, fastpath: bool) -> usize {
        let idx = self.ev(self.kernel.exit_event(false, self.id, &x, 0));
        if self.mode == Mode::L2 && !fastpath {
            self.ev(self.kernel.exit_event(true, self.id, &x, 0));
        }
        idx
    }

    /// A hardware exit of the current level at its RIP.
    pub(crate) fn exit_here(&mut self, x: HwExit) -> usize {
        let rip = self.rip();
        self.hw_exit(HwExit { rip, ..x }, false)
    }

    /// The current level's RIP.
    pub(crate) fn rip(&self) -> u64 {
        match self.mode {
            Mode::L1 => self.l1_rip,
            Mode::L2 => self.l2_rip,
        }
    }

    /// `kvm_entry` into the current level (for L2, with vmcs12's pending entry injection).
    pub(crate) fn enter(&mut self) -> usize {
        let (rip, inj) = match self.mode {
            Mode::L1 => (self.l1_rip, 0),
            Mode::L2 => {
                let inj =
                    self.current.and_then(|p| self.vmcs12s.get(&p)).map_or(0, |v| v.entry_intr);
                (self.l2_rip, inj)
            }
        };
        self.ev(self.kernel.entry_event(self.id, rip, IntrInfo(inj), 0, false))
    }

    /// `kvm_entry` with an event KVM injects itself (exception or interrupt into this level).
    pub(crate) fn enter_injecting(&mut self, inj: u32, err: u32) -> usize {
        let rip = self.rip();
        self.ev(self.kernel.entry_event(self.id, rip, IntrInfo(inj), err, false))
    }

    /// `kvm_entry … [immediate exit]`: KVM enters the current level only to take an exit right
    /// away (its own preemption timer set to 0), because an event is pending that it could not
    /// deliver before this entry (`req_immediate_exit`).
    pub(crate) fn enter_immediate_exit(&mut self) -> usize {
        let (rip, inj) = match self.mode {
            Mode::L1 => (self.l1_rip, 0),
            Mode::L2 => (self.l2_rip, self.current_vmcs12().map_or(0, |v| v.entry_intr)),
        };
        self.ev(self.kernel.entry_event(self.id, rip, IntrInfo(inj), 0, true))
    }

    /// KVM emulates a VMX instruction with a memory operand (VMPTRLD, VMCLEAR, INVEPT,
    /// INVVPID, VMXON): it walks L1's page tables to read the operand (`kvm_mmu_pagetable_walk`
    /// and one `kvm_mmu_paging_element` per level; the real recordings show this for every such
    /// exit). `levels` is how deep L1 maps the operand (2 with 2 MiB pages).
    pub(crate) fn walk_operand(&mut self, gva: u64, levels: u32) {
        self.walk_guest(gva, 0, levels);
    }

    /// A walk of the running level's page tables for `gva` that succeeds: the walk event and
    /// one `kvm_mmu_paging_element` per level (`levels` deep, 2 MiB leaves above level 1).
    pub(crate) fn walk_guest(&mut self, gva: u64, pferr: u32, levels: u32) {
        self.ev(EventKind::KvmMmuPagetableWalk { addr: gva, pferr });
        let leaf_level = 5 - levels.clamp(1, 4);
        for level in (leaf_level..=4).rev() {
            let pte = if level == leaf_level {
                // A 2 MiB (PS) or 4 KiB leaf, present, writable, accessed (and dirty).
                let page_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
                (gva & !page_mask) | if level > 1 { 0xe3 } else { 0x63 }
            } else {
                (0x3000 + u64::from(4 - level) * 0x1000) | 0x23
            };
            self.ev(EventKind::KvmMmuPagingElement { pte, level });
        }
    }

    /// L1 executes an instruction of `len` bytes that exits; L0 handles it (`handler`) and
    /// resumes L1 after it.
    pub(crate) fn l1_exit(&mut self, x: HwExit, len: u64, handler: impl FnOnce(&mut Self)) {
        debug_assert_eq!(self.mode, Mode::L1);
        self.exit_here(x);
        handler(self);
        self.l1_rip += len;
        self.enter();
    }

    /// L1 advances through its own code.
    pub(crate) fn l1_step(&mut self, bytes: u64, lo_ns: u64, hi_ns: u64) {
        self.l1_rip += bytes;
        self.run_for(lo_ns, hi_ns);
    }

    /// A host interrupt while L1 runs (kept by L0).
    pub(crate) fn l1_host_interrupt(&mut self, vector: u8) {
        self.l1_exit(
            HwExit::new(reason::EXTERNAL_INTERRUPT, 0).intr(intr::ext(vector), 0),
            0,
            |_| {},
        );
    }

    /// L1 programs its TSC deadline timer (x2APIC MSR 0x6e0).
    pub(crate) fn l1_wrmsr_tsc_deadline(&mut self) {
        let deadline = self.now.wrapping_mul(3).wrapping_add(0x1000);
        self.l1_exit(HwExit::new(reason::MSR_WRITE, 0), 2, move |v| {
            v.msr(true, 0x6e0, deadline);
        });
    }

    /// L1 executes VMPTRLD: releasing a different current vmcs12 frees all guest_mmu roots
    /// (`nested_release_vmcs12`, reference §2.9).
    pub(crate) fn l1_vmptrld(&mut self, vmptr: u64) {
        // The operand is a pointer in L1's memory (the real L1 keeps it on its stack).
        let operand = self.l1_operand_gva();
        let levels = self.l1_operand_levels();
        self.l1_exit(HwExit::new(reason::VMPTRLD, 0).qual(0x8), 5, move |v| {
            v.walk_operand(operand, levels);
            if v.current != Some(vmptr) {
                v.guest_mmu_root = None;
            }
            v.current = Some(vmptr);
        });
    }

    /// Where L1 keeps a VMX instruction's memory operand (its stack).
    pub(crate) fn l1_operand_gva(&self) -> u64 {
        if self.l1_rip >= 0xffff_8000_0000_0000 {
            0xffff_c900_0003_bd80
        } else {
            0x0000_0000_000f_fec0
        }
    }

    /// How many paging levels L1 walks for its operand: 2 MiB pages for an identity-mapped
    /// separation kernel (3 levels), 4 KiB pages for a Linux-like L1 (4).
    pub(crate) fn l1_operand_levels(&self) -> u32 {
        if self.l1_rip >= 0xffff_8000_0000_0000 { 4 } else { 3 }
    }

    /// L1 writes a vmcs12 field through its shadow VMCS (no exit) or, for the fields KVM does
    /// not shadow, with a traced VMWRITE exit.
    pub(crate) fn l1_vmwrite(&mut self, field: Vmcs12Field, value: u64, traced: bool) {
        let vmptr = self.current.unwrap_or(0);
        if traced {
            self.l1_exit(HwExit::new(25, 0), 3, |_| {});
        } else {
            self.run_for(30, 120);
        }
        let name = self.vmptr_name(vmptr);
        if let Some(v) = self.vmcs12s.get_mut(&vmptr) {
            match field {
                Vmcs12Field::GuestCr3 => v.guest_cr3 = value,
                Vmcs12Field::EptPointer => v.eptp = value,
                Vmcs12Field::GuestRip => v.guest_rip = value,
                Vmcs12Field::GuestActivityState => v.activity_hlt = value == 1,
                Vmcs12Field::VmEntryIntrInfo => v.entry_intr = u32::try_from(value).unwrap_or(0),
                Vmcs12Field::HostRip => v.host_rip = value,
                Vmcs12Field::HostCr3 => v.host_cr3 = value,
                Vmcs12Field::EnableEpt => v.nested_ept = value != 0,
                Vmcs12Field::ExitReason | Vmcs12Field::LaunchState => {}
            }
        }
        self.record(name, field, value, Writer::L1, true);
    }

    /// L1 creates a vmcs12 (VMCLEAR + setup through the shadow VMCS), untraced except through
    /// the ground truth.
    pub(crate) fn l1_setup_vmcs12(&mut self, vmptr: u64, v: Vmcs12) {
        let name = if v.evmcs { u64::MAX } else { vmptr };
        for (field, value) in [
            (Vmcs12Field::LaunchState, u64::from(v.launched)),
            (Vmcs12Field::EnableEpt, u64::from(v.nested_ept)),
            (Vmcs12Field::EptPointer, v.eptp),
            (Vmcs12Field::GuestCr3, v.guest_cr3),
            (Vmcs12Field::GuestRip, v.guest_rip),
            (Vmcs12Field::GuestActivityState, u64::from(v.activity_hlt)),
            (Vmcs12Field::HostRip, v.host_rip),
            (Vmcs12Field::HostCr3, v.host_cr3),
        ] {
            self.record(name, field, value, Writer::L1, true);
        }
        self.vmcs12s.insert(vmptr, v);
    }

    /// L1 executes VMLAUNCH/VMRESUME of the current vmcs12 and the checks pass (reference
    /// §2.4): `kvm_exit`, `kvm_nested_vmenter` (6.1+), then either the HLT-activity path or
    /// the MMU load and `kvm_entry` at `nested_rip`.
    pub(crate) fn l1_vmentry(&mut self) -> Entered {
        let vmptr = self.current.unwrap_or(0);
        let v = self.vmcs12s.get(&vmptr).cloned().unwrap_or_else(|| empty_vmcs12(vmptr));
        let launch = !v.launched;
        let rip = self.l1_rip;
        self.hw_exit(
            HwExit::new(if launch { reason::VMLAUNCH } else { reason::VMRESUME }, rip),
            false,
        );
        self.enter_non_root_mode(&v, rip);
        // The HLT check happens after a successful enter (§2.5): no valid entry event.
        if v.activity_hlt && !IntrInfo(v.entry_intr).valid() {
            self.l2_halted = true;
            return Entered::Halted;
        }
        self.l2_hw_entry(&v);
        Entered::Running
    }

    /// L1 executes VMLAUNCH/VMRESUME of a running (not HLT) vmcs12 after its emulated VMX
    /// preemption timer expired while L1 itself ran (as in every slice end of the real
    /// `l1-rr-3`/`l1-hlt` recordings, 6.1 and 6.12): KVM cannot synthesize the timer's nested
    /// exit while the entry is pending (`nested_run_pending`), so it enters L2 with an
    /// immediate exit (`kvm_entry … [immediate exit]`), takes the hardware PREEMPTION_TIMER exit
    /// (`kvm_exit` + `kvm_nested_vmexit`), and then synthesizes L1's PREEMPTION_TIMER exit
    /// (`kvm_nested_vmexit_inject`). Returns the inject's local index.
    pub(crate) fn l1_vmentry_timer_expired(&mut self) -> usize {
        let vmptr = self.current.unwrap_or(0);
        let v = self.vmcs12s.get(&vmptr).cloned().unwrap_or_else(|| empty_vmcs12(vmptr));
        let rip = self.l1_rip;
        let r = if v.launched { reason::VMRESUME } else { reason::VMLAUNCH };
        self.hw_exit(HwExit::new(r, rip), false);
        self.enter_non_root_mode(&v, rip);
        self.load_l2_mmu(&v);
        self.enter_immediate_exit();
        self.vmcs02_cr3 = self.l2_cr3;
        let l2_rip = self.l2_rip;
        self.hw_exit(HwExit::new(reason::PREEMPTION_TIMER, l2_rip), false);
        self.nested_vmexit(reason::PREEMPTION_TIMER, 0, 0, 0, 0)
    }

    /// `nested_vmx_enter_non_root_mode`: the tracepoint, then `prepare_vmcs02`.
    pub(crate) fn enter_non_root_mode(&mut self, v: &Vmcs12, l1_rip: u64) {
        let vmptr = self.current.unwrap_or(0);
        if self.kernel.has_nested_vmenter() {
            self.ev(EventKind::KvmNestedVmenter(NestedVmenter {
                rip: l1_rip,
                vmcs: if v.evmcs { u64::MAX } else { vmptr },
                nested_rip: v.guest_rip,
                int_ctl: 0,
                event_inj: IntrInfo(v.entry_intr),
                tdp_enabled: Some(v.nested_ept),
                guest_pgd: Some(if v.nested_ept { v.eptp } else { v.guest_cr3 }),
                isa: Some(Isa::Vmx),
            }));
        }
        self.mode = Mode::L2;
        self.l2_rip = v.guest_rip;
        self.l2_cr3 = v.guest_cr3;
        self.l2_halted = false;
        // prepare_vmcs02: since 04f11ef45810 GUEST_CR3 is written on every nested VM-Enter
        // when L0 uses EPT. Before it, only the pre-entry MMU reload wrote it (bug a).
        if self.l0_ept && !self.kvm.has(Bug::HltStaleCr3) {
            self.vmcs02_cr3 = v.guest_cr3;
        }
    }

    /// The hardware entry into L2 after a nested VM-enter (MMU load, `kvm_entry`).
    pub(crate) fn l2_hw_entry(&mut self, v: &Vmcs12) {
        self.load_l2_mmu(v);
        self.enter();
        // The pre-entry reload (vmx_load_mmu_pgd) makes vmcs02 hold this L2's CR3.
        self.vmcs02_cr3 = self.l2_cr3;
        self.l2_halted = false;
    }

    /// L2 loads CR3 without exiting (L0 and L1 use EPT, no CR3-load exiting): the hardware
    /// vmcs02 GUEST_CR3 follows.
    pub(crate) fn l2_mov_cr3_silent(&mut self, cr3: u64) {
        self.l2_cr3 = cr3;
        if self.l0_ept {
            self.vmcs02_cr3 = cr3;
        }
    }

    /// L2 exits and L0 keeps the exit: `kvm_exit`, `kvm_nested_vmexit`, the handler, and, with
    /// `resume`, `kvm_entry` back into L2.
    pub(crate) fn l2_exit_l0(
        &mut self,
        x: HwExit,
        resume: bool,
        handler: impl FnOnce(&mut Self),
    ) -> usize {
        let idx = self.exit_here(x);
        handler(self);
        if resume {
            self.enter();
        }
        idx
    }

    /// L0's own VMX preemption timer fires while L2 runs (KVM's hv timer for L1's LAPIC timer).
    pub(crate) fn l2_l0_preemption_timer(&mut self) {
        let fastpath = self.kernel.l2_preemption_timer_fastpath();
        let rip = self.l2_rip;
        self.hw_exit(HwExit::new(reason::PREEMPTION_TIMER, rip), fastpath);
        self.enter();
    }

    /// L2 exits and the exit is reflected to L1 (reference §2.3).
    pub(crate) fn l2_exit_reflect(&mut self, x: HwExit) -> usize {
        let idx = self.exit_here(x);
        self.nested_vmexit(x.reason, x.qual, x.idt_vectoring, x.intr_info, x.error_code);
        idx
    }

    /// `nested_vmx_vmexit` (reference §2.7): sync vmcs02 → vmcs12, `kvm_nested_vmexit_inject`,
    /// load L1's host state, `kvm_entry` at host_rip. Returns the inject's local index.
    pub(crate) fn nested_vmexit(
        &mut self,
        reason: u32,
        qual: u64,
        idt: u64,
        intr: u32,
        err: u32,
    ) -> usize {
        let vmptr = self.current.unwrap_or(0);
        let name = self.vmptr_name(vmptr);
        let (rip, cr3, halted) = (self.l2_rip, self.vmcs02_cr3, self.l2_halted);
        let l0_ept = self.l0_ept;
        let mut host = (0, 0);
        let mut cleared_intr = false;
        if let Some(v) = self.vmcs12s.get_mut(&vmptr) {
            v.guest_rip = rip;
            // sync_vmcs02_to_vmcs12 reads GUEST_CR3 back only with L0 EPT.
            if l0_ept {
                v.guest_cr3 = cr3;
            }
            v.activity_hlt = halted;
            v.launched = true;
            cleared_intr = IntrInfo(v.entry_intr).valid();
            v.entry_intr = 0;
            host = (v.host_rip, v.host_cr3);
        }
        self.record(name, Vmcs12Field::GuestRip, rip, Writer::L0Exit, false);
        if l0_ept {
            self.record(name, Vmcs12Field::GuestCr3, cr3, Writer::L0Exit, false);
        }
        self.record(
            name,
            Vmcs12Field::GuestActivityState,
            u64::from(halted),
            Writer::L0Exit,
            false,
        );
        self.record(name, Vmcs12Field::ExitReason, u64::from(reason), Writer::L0Exit, true);
        self.record(name, Vmcs12Field::LaunchState, 1, Writer::L0Exit, false);
        if cleared_intr {
            self.record(name, Vmcs12Field::VmEntryIntrInfo, 0, Writer::L0Exit, false);
        }
        let inject = self.inject(reason, qual, idt, intr, err);
        self.mode = Mode::L1;
        self.l2_halted = false;
        self.l1_rip = host.0;
        self.l1_cr3 = host.1;
        // With the shadow MMU, L1's root comes back from prev_roots: no event (§2.7).
        self.enter();
        inject
    }

    /// `kvm_nested_vmexit_inject` (VMX argument order, reference §1.4).
    pub(crate) fn inject(
        &mut self,
        reason: u32,
        qual: u64,
        idt: u64,
        intr: u32,
        err: u32,
    ) -> usize {
        use vmxray_events::codes::{ExitCode, ExitReason};
        use vmxray_events::{ExitFields, ExitInfo};
        self.ev(EventKind::KvmNestedVmexitInject(ExitInfo::from(ExitFields {
            reason: ExitCode::Vmx(ExitReason(reason)),
            isa: Some(Isa::Vmx),
            guest_rip: None,
            info1: Some(qual),
            info2: Some(idt),
            intr_info: Some(IntrInfo(intr)),
            error_code: Some(err),
            vcpu_id: None,
            requests: None,
        })))
    }

    /// A host timer interrupt while L2 runs, kept by L0, after which L1's emulated VMX
    /// preemption timer (an hrtimer) has expired: KVM synthesizes PREEMPTION_TIMER to L1.
    pub(crate) fn l2_slice_end(&mut self) -> usize {
        let x =
            HwExit::new(reason::EXTERNAL_INTERRUPT, 0).intr(intr::ext(HOST_LOCAL_TIMER_VECTOR), 0);
        self.exit_here(x);
        self.nested_vmexit(reason::PREEMPTION_TIMER, 0, 0, 0, 0)
    }

    /// L0-kept noise while L2 runs: host interrupts, L0's timer, EPT violations on L1 memory
    /// backing L2 (never a bug, never reflected).
    pub(crate) fn l2_noise(&mut self, percent: u64) {
        if !self.rng.chance(percent) {
            return;
        }
        self.run_for(2_000, 40_000);
        match self.rng.below(4) {
            0 => {
                let vec = if self.rng.chance(50) {
                    HOST_LOCAL_TIMER_VECTOR
                } else {
                    HOST_RESCHEDULE_VECTOR
                };
                let x = HwExit::new(reason::EXTERNAL_INTERRUPT, 0).intr(intr::ext(vec), 0);
                self.l2_exit_l0(x, true, |_| {});
            }
            1 => self.l2_l0_preemption_timer(),
            _ if !self.l0_ept => {
                // Shadow paging: #PF is always intercepted (§2.3) and L0 fixes its shadow page
                // tables itself; the exit qualification is the faulting address (CR2).
                let cr2 =
                    self.l2_rip & !0xfff | 0x0000_7f00_0000_0000 | self.rng.range(0, 0xfff) & !7;
                // A supervisor write to a page L0 has not shadowed yet (the subjects run at
                // CPL 0, as the real L1's do).
                let pferr = 0x2;
                let (kernel, id, rip) = (self.kernel, self.id, self.l2_rip);
                let x = HwExit::new(reason::EXCEPTION_NMI, 0).qual(cr2).intr(intr::PF, pferr);
                self.l2_exit_l0(x, true, move |v| {
                    v.ev(kernel.page_fault_event(id, rip, cr2, u64::from(pferr)));
                    // The shadow MMU walks L2's page tables for CR2 (the real recordings show
                    // the walk in every such exit).
                    v.walk_guest(cr2, pferr, 4);
                });
            }
            _ => {
                // EPT violation in L2 that L0 fixes by itself (L1 page not yet mapped by L0's
                // TDP / shadow EPT): read access, GLA valid, final translation.
                let gpa = (self.rng.range(0x100, 0x3ffff) << 12) | self.rng.range(0, 0xfff) & !7;
                let qual = 0x181;
                let rip = self.l2_rip;
                let kernel = self.kernel;
                let id = self.id;
                let nested_ept = self.current_vmcs12().is_some_and(|v| v.nested_ept);
                self.l2_exit_l0(HwExit::new(reason::EPT_VIOLATION, 0).qual(qual), true, move |v| {
                    v.ev(kernel.page_fault_event(id, rip, gpa, qual));
                    if nested_ept {
                        v.walk_ept12(gpa, qual);
                    }
                });
            }
        }
    }

    /// Under nested EPT, L0 handles an L2 EPT violation by walking EPT12 for the L2 GPA
    /// (`kvm_mmu_pagetable_walk` with the PFERR bits KVM derives from the qualification, one
    /// `kvm_mmu_paging_element` per level), as every such exit of the real recordings shows.
    pub(crate) fn walk_ept12(&mut self, l2_gpa: u64, qual: u64) {
        // read → USER, write → WRITE, fetch → FETCH, any of RWX permitted → PRESENT (§4.4).
        let pferr = u32::from(qual & 1 != 0) << 2
            | u32::from(qual & 2 != 0) << 1
            | u32::from(qual & 4 != 0) << 4
            | u32::from(qual & 0x38 != 0);
        self.walk_ept12_pferr(l2_gpa, pferr);
    }

    /// L0 walks L2's page tables for `gva` under nested EPT (emulating an L2 instruction): the
    /// outer walk (`pferr` = the access), an EPT12 walk (W|U: the A/D update) for every L2
    /// paging structure before its `kvm_mmu_paging_element`, and a last EPT12 walk of the page
    /// itself (U plus the access's W/F bits), as in the real `l1-triple-fault` recordings.
    /// `levels`: how many levels L2's tables have for `gva` (3 with 2 MiB pages).
    pub(crate) fn walk_l2_two_dimensional(&mut self, gva: u64, pferr: u32, levels: u32) {
        self.ev(EventKind::KvmMmuPagetableWalk { addr: gva, pferr });
        let leaf_level = 5 - levels.clamp(1, 4);
        let mut table = self.l2_cr3 & !0xfff;
        let mut page = gva & !0xfff;
        for level in (leaf_level..=4).rev() {
            self.walk_ept12_pferr(table, 0x6);
            let pte = if level == leaf_level {
                let page_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
                page = gva & !page_mask & 0x0000_ffff_ffff_f000;
                page | if level > 1 { 0xa3 } else { 0x23 }
            } else {
                table = table.wrapping_sub(0x8000) & 0x0000_ffff_ffff_f000;
                table | 0x23
            };
            self.ev(EventKind::KvmMmuPagingElement { pte, level });
        }
        self.walk_ept12_pferr(page, 0x4 | (pferr & 0x12));
    }

    /// An EPT12 walk for `l2_gpa` with KVM's PFERR bits for the access.
    pub(crate) fn walk_ept12_pferr(&mut self, l2_gpa: u64, pferr: u32) {
        self.ev(EventKind::KvmMmuPagetableWalk { addr: l2_gpa, pferr });
        let eptp = self.current_vmcs12().map_or(0, |v| v.eptp & !0xfff);
        for level in (1..=4u32).rev() {
            let pte = if level == 1 {
                l2_gpa & !0xfff | 0x37
            } else {
                (eptp + u64::from(5 - level) * 0x8000) | 0x107
            };
            self.ev(EventKind::KvmMmuPagingElement { pte, level });
        }
    }

    /// L2 executes instructions (and maybe switches CR3 silently, when `cr3s` is non-empty).
    pub(crate) fn l2_run(&mut self, code_base: u64, cr3s: &[u64]) {
        self.run_for(5_000, 80_000);
        self.l2_rip = code_base + self.rng.range(0, 0x3fff);
        if !cr3s.is_empty() && self.rng.chance(30) {
            let cr3 = cr3s[self.rng.below(cr3s.len())];
            if self.l0_ept {
                self.l2_mov_cr3_silent(cr3);
            } else {
                // Without EPT every MOV CR3 exits; L0 handles it (kvm_cr) and loads the
                // guest_mode shadow root for the new CR3.
                self.l2_exit_l0(HwExit::new(reason::CR_ACCESS, 0).qual(0x3), true, move |v| {
                    v.ev(EventKind::KvmCr { write: true, cr: 3, val: cr3 });
                    v.l2_cr3 = cr3;
                    let root = (cr3 >> 12, role::LONG_MODE_ROOT | role::GUEST_MODE);
                    if v.shadow_root != Some(root) {
                        v.get_page(root.0, root.1);
                        v.shadow_root = Some(root);
                    }
                    v.l2_rip += 3;
                });
            }
        }
    }

    /// L2 writes to a page while L0 has dirty logging on (reference §3f).
    ///
    /// Fixed: the guest_mmu SPTE is write-protected (SPTE_AD_WRPROT_ONLY), so the first write
    /// after logging started faults: `kvm_exit EPT_VIOLATION`, `kvm_nested_vmexit`,
    /// `kvm_page_fault` at the L2 GPA, `kvm_entry`. Buggy: PML logs the L2 GPA silently and a
    /// full log gives a PML_FULL exit while in L2. Returns the local index of a PML_FULL exit.
    pub(crate) fn l2_write_page(&mut self, l2_gpa: u64) -> Option<usize> {
        self.run_for(300, 3_000);
        if !self.dirty_logging {
            return None;
        }
        if self.kvm.has(Bug::PmlInL2) {
            if self.dirtied.insert(l2_gpa) {
                self.pml_entries += 1;
            }
            if self.pml_entries >= PML_ENTRIES {
                return Some(self.pml_full());
            }
            return None;
        }
        if self.dirtied.insert(l2_gpa) {
            // write | EPT readable | executable | GLA valid | final translation
            let qual = 0x1aa;
            let (kernel, id, rip) = (self.kernel, self.id, self.l2_rip);
            self.l2_exit_l0(HwExit::new(reason::EPT_VIOLATION, 0).qual(qual), true, move |v| {
                v.ev(kernel.page_fault_event(id, rip, l2_gpa, qual));
            });
        }
        None
    }

    /// A hardware PML_FULL exit handled by L0 (`kvm_pml_full`), in either level.
    pub(crate) fn pml_full(&mut self) -> usize {
        let idx = self.exit_here(HwExit::new(reason::PML_FULL, 0));
        let vcpu_id = self.id;
        self.ev(EventKind::KvmPmlFull { vcpu_id });
        self.pml_entries = 0;
        self.enter();
        idx
    }

    /// L1 writes to its own memory while dirty logging is on: PML logs L1 GPAs, as designed;
    /// a full buffer is an L1 PML_FULL exit (not a bug).
    pub(crate) fn l1_dirty_pages(&mut self, pages: u32) {
        if !self.dirty_logging {
            return;
        }
        self.pml_entries += pages;
        if self.pml_entries >= PML_ENTRIES {
            self.pml_full();
        }
    }

    // ---- events every scenario may need ------------------------------------------------

    /// `kvm_inj_exception` in this kernel's layout.
    pub(crate) fn inj_exception(
        &mut self,
        vector: u8,
        err: Option<u32>,
        reinjected: bool,
    ) -> usize {
        let reinjected = self.kernel.injection_has_reinjected().then_some(reinjected);
        self.ev(EventKind::KvmInjException {
            exception: vmxray_events::codes::ExceptionVector(vector),
            has_error: err.is_some(),
            error_code: err.unwrap_or(0),
            reinjected,
        })
    }

    /// `kvm_inj_virq` (an external interrupt injected into the running level).
    pub(crate) fn inj_virq(&mut self, vector: u8, reinjected: bool) -> usize {
        let newer = self.kernel.injection_has_reinjected();
        self.ev(EventKind::KvmInjVirq {
            vector: u32::from(vector),
            soft: newer.then_some(false),
            reinjected: newer.then_some(reinjected),
        })
    }

    /// `kvm_userspace_exit`: KVM_RUN returns to the VMM (`errno` < 0 for an error).
    pub(crate) fn userspace_exit(&mut self, reason: u32, errno: i32) -> usize {
        self.ev(EventKind::KvmUserspaceExit {
            reason: vmxray_events::codes::UserspaceExitReason(reason),
            errno: Some(errno),
        })
    }

    /// `kvm_fpu load|unload` (KVM_RUN entry and exit of the vCPU thread).
    pub(crate) fn fpu(&mut self, load: bool) -> usize {
        self.other("kvm", "kvm_fpu", &[("load", FieldValue::U64(u64::from(load)))])
    }

    /// `kvm_emulate_insn` for `insn` at `rip` (64-bit code).
    pub(crate) fn emulate_insn(&mut self, rip: u64, insn: &[u8], failed: bool) -> usize {
        self.ev(EventKind::KvmEmulateInsn {
            rip,
            csbase: 0,
            insn: vmxray_events::InsnBytes::new(insn, insn.len()),
            flags: 9,
            failed,
        })
    }

    /// `kvm_mmu_walker_error` (a guest walk that failed with `pferr`).
    pub(crate) fn walker_error(&mut self, pferr: u32) -> usize {
        self.ev(EventKind::KvmMmuWalkerError { pferr })
    }

    /// An SVM #VMEXIT: `kvm_exit` (isa 2) and, in L2, `kvm_nested_vmexit` (`svm_handle_exit`
    /// traces it for every exit in guest mode).
    pub(crate) fn svm_exit(&mut self, x: SvmExit) -> usize {
        let idx = self.ev(self.kernel.svm_exit_event(false, self.id, &x));
        if self.mode == Mode::L2 {
            self.ev(self.kernel.svm_exit_event(true, self.id, &x));
        }
        idx
    }

    /// `kvm_nested_vmexit_inject` on SVM (`nested_svm_vmexit` traces it for every nested
    /// #VMEXIT, the SMI's `SVM_EXIT_SW` included).
    pub(crate) fn svm_inject(&mut self, code: u64, info1: u64, info2: u64) -> usize {
        use vmxray_events::codes::{ExitCode, SvmExitCode};
        use vmxray_events::{ExitFields, ExitInfo};
        self.ev(EventKind::KvmNestedVmexitInject(ExitInfo::from(ExitFields {
            reason: ExitCode::Svm(SvmExitCode(code)),
            isa: Some(Isa::Svm),
            guest_rip: None,
            info1: Some(info1),
            info2: Some(info2),
            intr_info: Some(IntrInfo(0)),
            error_code: Some(0),
            vcpu_id: None,
            requests: None,
        })))
    }

    /// KVM's cached copy of the current vmcs12.
    pub(crate) fn current_vmcs12(&self) -> Option<&Vmcs12> {
        self.current.and_then(|p| self.vmcs12s.get(&p))
    }
}

/// A fresh vmcs12 for `vmptr` (never launched).
pub(crate) fn empty_vmcs12(_vmptr: u64) -> Vmcs12 {
    Vmcs12 {
        guest_rip: 0,
        guest_cr3: 0,
        eptp: 0,
        nested_ept: false,
        launched: false,
        activity_hlt: false,
        entry_intr: 0,
        host_rip: 0,
        host_cr3: 0,
        evmcs: false,
    }
}

/// An EPTP with write-back memory type, a 4-level walk and A/D flags enabled.
pub(crate) fn eptp(pml4_gpa: u64) -> u64 {
    pml4_gpa | 0x5e
}
