//! The simulator of KVM's nested-VMX behaviour.
//!
//! A scenario scripts what L1 (a hypervisor running N L2 subjects, each with its own vmcs12,
//! CR3 or EPTP and RIP) and its L2s do; the engine emits what KVM (L0) traces for that
//! behaviour, following `shared/reference/nested-vmx-model.md` §2, with the tracepoint layouts of
//! the chosen kernel (§1). The KVM flavour is either fixed or buggy with one of the bugs of §3;
//! a buggy run emits exactly the §3 signature and says where in [`GroundTruth`].
//!
//! ```text
//!   Scenario script (L1/L2 behaviour)          engine::Vcpu (L0 = KVM, fixed or buggy)
//!   "subject B idles in HLT" ──────────────►  kvm_exit HLT, kvm_nested_vmexit, wakeup, inject …
//!   one event list per vCPU thread ──► merged by (ts, cpu) ──► Simulation { events, truth }
//! ```
//!
//! Everything is deterministic in the seed: each vCPU draws from its own stream, so the fixed
//! and the buggy flavour of one seed are identical until the bug's first difference.
//!
//! What each buggy flavour emits ([`BugSite::divergence`] is the key event):
//!
//! | bug | scenario | buggy signature | fixed flavour instead |
//! |---|---|---|---|
//! | (a) | `muen` (6.1+) | `kvm_nested_vmenter vmcs: B … guest_cr3: <subject A's CR3>` after B's HLT-path entry (`vmenter` → `kvm_vcpu_wakeup` → inject PREEMPTION_TIMER, no `kvm_entry`) | B's own CR3 |
//! | (a) | `muen-ept`, or 5.10 | B then runs on A's page tables: `kvm_exit EXCEPTION_NMI` (#PF, `0x80000b0e`) reflected to L1 | B runs normally |
//! | (b) | `late-vmfail` | `kvm_nested_vmenter_failed "hardware VM-instruction error: VMENTRY_INVALID_CONTROL_FIELD"` → `kvm_mmu_get_page gfn <shadow-root HPA>>12> new` → L1 triple-faults | `kvm_mmu_get_page gfn <L1 CR3>>12> existing`, L1 reads CR3 back (`kvm_cr cr_read 3`) and relaunches |
//! | (c) | `invept` | `kvm_exit INVEPT` … `kvm_exit VMRESUME` → `kvm_nested_vmenter` → `kvm_entry` (no root load) | `kvm_mmu_get_page gfn EPTP>>12 … existing` + `kvm_mmu_sync_page` before the entry |
//! | (d) | `init` | INIT/SIPI (`kvm_apic_ipi`), two `kvm_vcpu_wakeup`, `kvm_entry rip 0x0` with no root load → TRIPLE_FAULT, `KVM_EXIT_SHUTDOWN` | four direct PAE roots (`gfn 0 … direct`) before the entry |
//! | (e) | `evmcs-restore` | restore `kvm_nested_vmenter vmcs: 0xffffffffffffffff` (rip 0xfff0), inject EXTERNAL_INTERRUPT before any L2 entry, then Hyper-V writes the crash MSRs 0x40000100–105 and `KVM_EXIT_SYSTEM_EVENT` | EOI (MSR 0x40000070) and VMRESUME at the same `nested_rip` |
//! | (f) | `dirty-log` | no EPT violations for L2 writes while logging; `kvm_exit PML_FULL` + `kvm_nested_vmexit PML_FULL` + `kvm_pml_full` in L2 | one `EPT_VIOLATION` (qual `0x1aa`) + `kvm_page_fault` per first write |
//! | (g)–(k) | the stuck-vCPU loops (`ept-livelock`, `irq-reinject-loop`, `exception-delivery-loop`, `efault-loop`, `eoi-loop`) | the same cycle of exits until the trace ends; `cycle_starts` lists every round, `divergence` is the third | progress, or (i) a clean internal error |
//! | (l) | `nested-triple-fault` | emulating L2's LTR: `kvm_mmu_walker_error` P\|W, `kvm_inj_exception #PF (0x3)`, TRIPLE_FAULT reflected to L1 | the LTR completes |
//! | (m) | `nsvm-rsm` | after RSM into L2, L2's first #VMEXIT: `kvm_entry` of L1 at the RSM instruction's RIP, then #GP | L1 after its VMRUN |
//!
//! The simulator was compared with real KVM (6.1 and 6.12 under Bochs) step by step
//! ([`compare`], `examples/sim_vs_real.rs`, samples/README "Simulator vs real KVM").

pub mod compare;
pub mod dat;
mod engine;
pub mod host;
mod kernel;
mod nested_faults;
mod rng;
mod scenarios;
pub mod stream;
mod stuck;
pub mod text;
mod text_devices;
mod truth;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use vmxray_events::Event;

pub use kernel::{KernelVersion, UnknownKernel};
pub use truth::{BugSite, GroundTruth, Landmark, VcpuThread, Vmcs12Field, Vmcs12Write, Writer};

/// One list per enum: the variants, `ALL` in declaration order and the command-line names come
/// from one table, so a new variant cannot be left out of `ALL` (which `--list`, parsing and the
/// sample tests iterate).
macro_rules! named_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident {
        $( $(#[$doc:meta])* $variant:ident = $text:literal, )*
    }) => {
        $(#[$m])* $vis enum $name { $( $(#[$doc])* $variant, )* }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$(Self::$variant,)*];

            /// The command-line name.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }
        }
    };
}

named_enum! {
    /// A known failure the buggy flavour reproduces: the KVM nested-VMX bugs of reference §3,
    /// (a)–(f), then the stuck and dying vCPUs of issue 15, (g)–(m) — KVM bugs with their fix,
    /// or, where the real cause was the VMM or its device model, that cause (no fix commit).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Bug {
        /// (a) Stale vmcs02.GUEST_CR3 after a nested VM-Enter cancelled by HLT (fixed by
        /// `04f11ef45810`): the synthesized exit copies the last hardware-run L2's CR3 into the
        /// halted L2's vmcs12.
        HltStaleCr3 = "hlt-stale-cr3",
        /// (b) Wrong L1 CR3 after a late VM-Fail with EPT disabled (`f087a02941fe`): L1 resumes
        /// with KVM's shadow-root HPA as its CR3.
        LateVmFailCr3 = "late-vmfail-cr3",
        /// (c) INVEPT emulation did not invalidate guest_mmu roots (`f8aa7e3958bc`).
        InveptNoRootReload = "invept-no-reload",
        /// (d) MMU context/role not reset at vCPU RESET/INIT (`0aa1837533e5`).
        InitMmuNotReset = "init-mmu-reset",
        /// (e) eVMCS not mapped after a nested-state restore (`f5c7e8425f18`): an exit before
        /// the first L2 entry never reaches the eVMCS.
        EvmcsStaleExit = "evmcs-stale-exit",
        /// (f) PML enabled for L2, so the log holds L2 GPAs (`1f4e5fc83a42`): PML_FULL in L2, no
        /// write faults while logging.
        PmlInL2 = "pml-in-l2",
        /// (g) 6.1.y `is_page_fault_stale()` compared the mmu_notifier sequence as an `int`: past
        /// 2^31 every fault looks stale and is retried forever (stable fix "KVM: x86/mmu: Fix an
        /// sign-extension bug with mmu_seq that hangs vCPUs"; upstream `ba6e3fe25543`, 6.3): the
        /// same EPT violation at one RIP/GPA, the interrupt it interrupted re-injected each time.
        MmuSeqLivelock = "mmu-seq-livelock",
        /// (h) A level-triggered interrupt line that is never de-asserted (the VMM's device
        /// model; not a KVM bug): every EOI re-raises the same vector at the same RIP.
        IrqLineStuck = "irq-line-stuck",
        /// (i) MMIO during event delivery emulated as if it were the instruction at RIP
        /// (`47ef3ef843c0` VMX, `7bd7ff99110a` SVM, 6.14): with the IDT in MMIO space KVM
        /// emulates, injects #UD, and that delivery faults the same way, forever.
        MmioVectoringLoop = "mmio-vectoring-loop",
        /// (j) A memslot KVM cannot fault in (gVisor mapped vdso/vvar into guest memory; not a
        /// KVM bug): the same EPT violation returns `-EFAULT` to a VMM that runs the vCPU again.
        EfaultMemslot = "efault-memslot",
        /// (k) x2APIC Suppress-EOI-Broadcast advertised with a split IRQCHIP that cannot honour
        /// it (kvm-x86 `6517dfbcc918`, bugzilla 220549): L1's EOI of a level interrupt L2 has not
        /// serviced goes to userspace, which re-raises it; L1 resumes L2, which exits at once.
        SplitIrqchipEoi = "split-irqchip-eoi",
        /// (l) KVM's emulator checked write permissions with a stale CR0.WP once CR0.WP was
        /// guest-owned (`cf9f4c0eb169`): emulating L2's LTR faults, the injected #PF cannot be
        /// delivered, L2 triple-faults and the fault is reflected to L1.
        Cr0WpStaleEmulation = "cr0wp-stale-emulation",
        /// (m) nSVM lost L1's state kept in VMCB01 during SMM (`37be407b2ce8`, after the VMCB
        /// split 4995a3685f1b): after RSM back into L2, L2's first #VMEXIT resumes L1 at the RSM
        /// instruction.
        NsvmRsmVmcb01 = "nsvm-rsm-vmcb01",
        /// (n) nSVM did not restore `nested_run_pending` with the nested state
        /// (`81f76adad560`): a vCPU saved between VMRUN and L2's first entry takes an interrupt
        /// as a nested #VMEXIT before L2 ran, and the event L1 injected is lost.
        NsvmRunPendingLost = "nsvm-run-pending-lost",
    }
}

impl Bug {
    /// The letter: the reference's for (a)–(f), then issue 15's.
    pub fn letter(self) -> char {
        match self {
            Self::HltStaleCr3 => 'a',
            Self::LateVmFailCr3 => 'b',
            Self::InveptNoRootReload => 'c',
            Self::InitMmuNotReset => 'd',
            Self::EvmcsStaleExit => 'e',
            Self::PmlInL2 => 'f',
            Self::MmuSeqLivelock => 'g',
            Self::IrqLineStuck => 'h',
            Self::MmioVectoringLoop => 'i',
            Self::EfaultMemslot => 'j',
            Self::SplitIrqchipEoi => 'k',
            Self::Cr0WpStaleEmulation => 'l',
            Self::NsvmRsmVmcb01 => 'm',
            Self::NsvmRunPendingLost => 'n',
        }
    }

    /// The upstream (or kvm-x86) fix, when the failure is a KVM bug; `None` when the cause
    /// was outside KVM (a VMM or device model).
    pub fn fix_commit(self) -> Option<&'static str> {
        match self {
            Self::HltStaleCr3 => Some("04f11ef45810"),
            Self::LateVmFailCr3 => Some("f087a02941fe"),
            Self::InveptNoRootReload => Some("f8aa7e3958bc"),
            Self::InitMmuNotReset => Some("0aa1837533e5"),
            Self::EvmcsStaleExit => Some("f5c7e8425f18"),
            Self::PmlInL2 => Some("1f4e5fc83a42"),
            Self::MmuSeqLivelock => Some("ba6e3fe25543"),
            Self::MmioVectoringLoop => Some("47ef3ef843c0"),
            Self::SplitIrqchipEoi => Some("6517dfbcc918"),
            Self::Cr0WpStaleEmulation => Some("cf9f4c0eb169"),
            Self::NsvmRsmVmcb01 => Some("37be407b2ce8"),
            Self::NsvmRunPendingLost => Some("81f76adad560"),
            Self::IrqLineStuck | Self::EfaultMemslot => None,
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}) {}", self.letter(), self.name())
    }
}

/// Bugs, flavours and scenarios serialize as their command-line names (`hlt-stale-cr3`,
/// `buggy:hlt-stale-cr3`, `muen`), so the ground truth's JSON reads like the command.
macro_rules! serialize_as_display {
    ($($ty:ty => $text:expr),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let f: fn(&$ty) -> String = $text;
                s.serialize_str(&f(self))
            }
        }
    )*};
}

serialize_as_display!(
    Bug => |b| b.name().to_owned(),
    KvmFlavour => |k| k.to_string(),
    Scenario => |s| s.name().to_owned()
);

/// A bug or flavour name `vmxray simulate` does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Unknown KVM flavour `{0}` (expected fixed, buggy, or buggy:BUG with BUG one of a-n or a bug name)"
)]
pub struct UnknownFlavour(pub String);

impl FromStr for Bug {
    type Err = UnknownFlavour;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .iter()
            .copied()
            .find(|b| s == b.name() || s.len() == 1 && s.starts_with(b.letter()))
            .ok_or_else(|| UnknownFlavour(s.to_owned()))
    }
}

/// Which KVM the simulator imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvmFlavour {
    /// KVM with every fix of §3.
    Fixed,
    /// KVM with this one bug (every other fix present).
    Buggy(Bug),
}

impl KvmFlavour {
    /// The bug, when buggy.
    pub fn bug(self) -> Option<Bug> {
        match self {
            Self::Fixed => None,
            Self::Buggy(bug) => Some(bug),
        }
    }

    /// True when this flavour has `bug`.
    pub fn has(self, bug: Bug) -> bool {
        self.bug() == Some(bug)
    }
}

impl fmt::Display for KvmFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed => f.write_str("fixed"),
            Self::Buggy(bug) => write!(f, "buggy:{}", bug.name()),
        }
    }
}

/// A flavour as `vmxray simulate --kvm` spells it: `fixed`, `buggy` (the scenario's bug; see
/// [`SimConfig::resolve`]) or `buggy:BUG`. `Ok(None)` for a bare `buggy`.
pub fn parse_flavour(s: &str) -> Result<Option<KvmFlavour>, UnknownFlavour> {
    match s.trim() {
        "fixed" => Ok(Some(KvmFlavour::Fixed)),
        "buggy" => Ok(None),
        other => match other.strip_prefix("buggy:") {
            Some(bug) => bug.parse().map(|b| Some(KvmFlavour::Buggy(b))),
            None => Err(UnknownFlavour(other.to_owned())),
        },
    }
}

named_enum! {
    /// The scripted scenarios; `ALL` is the `--list` order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Scenario {
        /// A separation kernel (L1) running N subjects round-robin, one vmcs12 and one EPTP each
        /// (nested EPT); subjects switch CR3 without exits; noise on top.
        SepKernel = "sepkernel",
        /// The same with L1 not using EPT for its subjects (`nested_ept=n`, `guest_cr3`
        /// visible).
        SepKernelNoEpt = "sepkernel-noept",
        /// Muen-style L1 with HLT exiting disabled and a subject idling in HLT (nested_ept=n, so
        /// a stale CR3 shows in the next `kvm_nested_vmenter`): bug (a).
        Muen = "muen",
        /// The same with nested EPT (as Muen really runs): the stale CR3 shows only through the
        /// subject crashing once it runs on another subject's page tables: bug (a).
        MuenEpt = "muen-ept",
        /// The Muen pattern with L0 on shadow paging (`kvm_intel ept=0`, as the real
        /// `l1-hlt-shadow` recordings): guest_mode shadow roots per subject CR3. Bug (a) needs
        /// L0 EPT, so this one is fixed only.
        MuenShadow = "muen-shadow",
        /// L0 without EPT; L1 launches an L2 whose vmcs12 passes KVM's checks but fails the
        /// hardware ones (late VM-Fail): bug (b).
        LateVmFail = "late-vmfail",
        /// L1 edits EPT12 and issues INVEPT before resuming its L2: bug (c).
        Invept = "invept",
        /// L0 without EPT; vCPU 0 sends INIT/SIPI to vCPU 1, which was in long mode: bug (d).
        Init = "init",
        /// A Hyper-V-style L1 with an enlightened VMCS, restored by `KVM_SET_NESTED_STATE`
        /// (migration destination) with an interrupt pending: bug (e).
        EvmcsRestore = "evmcs-restore",
        /// Dirty logging (migration of L1) while L2 writes memory under nested EPT: bug (f).
        DirtyLog = "dirty-log",
        /// An SMI arrives while L2 runs; the SMM handler runs and RSM goes back into L2.
        Smm = "smm",
        /// Many vCPUs, each a separation kernel, with heavy fixed-KVM noise (L0 timer exits,
        /// external interrupts kept by L0, L1-level PML_FULL, EPT violations) that is not a bug.
        Noise = "noise",
        /// A guest whose EPT violation, taken while delivering an interrupt, is never fixed
        /// (the interrupt re-injected each round); fixed KVM fixes it and the guest goes on:
        /// bug (g).
        EptLivelock = "ept-livelock",
        /// A level-triggered device interrupt, EOIed and raised again at once: bug (h).
        IrqReinjectLoop = "irq-reinject-loop",
        /// A guest with its IDT in MMIO space takes #UD: KVM emulates the instruction at RIP,
        /// injects #UD, whose delivery faults the same way (fixed KVM: internal error): bug (i).
        ExceptionDeliveryLoop = "exception-delivery-loop",
        /// The same EPT violation answered with `-EFAULT` (`kvm_userspace_exit reason error
        /// (14)`) to a VMM that runs the vCPU again: bug (j).
        EfaultLoop = "efault-loop",
        /// A Hyper-V L1 (eVMCS) with a split IRQCHIP: a level interrupt for L2, L1's EOI exits to
        /// userspace, the IRQ is raised again, L1 resumes L2 with an immediate exit: bug (k).
        EoiLoop = "eoi-loop",
        /// VMLAUNCH of a vmcs12 whose guest state fails KVM's checks after
        /// `kvm_nested_vmenter` (no inject, back at HOST_RIP), then a good launch. Fixed only:
        /// no KVM bug is known for this path.
        FailedNestedEntry = "failed-nested-entry",
        /// L2 triple-faults and KVM reflects TRIPLE_FAULT to L1; L2's LTR emulated by L0: bug
        /// (l) (the emulator's #PF cannot be delivered, a second triple fault).
        NestedTripleFault = "nested-triple-fault",
        /// AMD: an SMI while L2 runs, RSM back into L2 (`kvm_nested_vmenter` isa=svm), L2's first
        /// #VMEXIT reflected to L1: bug (m).
        NsvmRsm = "nsvm-rsm",
        /// AMD: L1's VMRUN injects an event; the vCPU is saved and restored before L2 runs, with
        /// an interrupt for L1 pending: bug (n).
        NsvmMigrate = "nsvm-migrate",
    }
}

impl Scenario {
    /// The bugs this scenario can inject.
    pub fn bugs(self) -> &'static [Bug] {
        match self {
            Self::Muen | Self::MuenEpt => &[Bug::HltStaleCr3],
            Self::LateVmFail => &[Bug::LateVmFailCr3],
            Self::Invept => &[Bug::InveptNoRootReload],
            Self::Init => &[Bug::InitMmuNotReset],
            Self::EvmcsRestore => &[Bug::EvmcsStaleExit],
            Self::DirtyLog => &[Bug::PmlInL2],
            Self::EptLivelock => &[Bug::MmuSeqLivelock],
            Self::IrqReinjectLoop => &[Bug::IrqLineStuck],
            Self::ExceptionDeliveryLoop => &[Bug::MmioVectoringLoop],
            Self::EfaultLoop => &[Bug::EfaultMemslot],
            Self::EoiLoop => &[Bug::SplitIrqchipEoi],
            Self::NestedTripleFault => &[Bug::Cr0WpStaleEmulation],
            Self::NsvmRsm => &[Bug::NsvmRsmVmcb01],
            Self::NsvmMigrate => &[Bug::NsvmRunPendingLost],
            Self::SepKernel
            | Self::SepKernelNoEpt
            | Self::MuenShadow
            | Self::Smm
            | Self::Noise
            | Self::FailedNestedEntry => &[],
        }
    }

    /// One line on what the scenario does.
    pub fn description(self) -> &'static str {
        match self {
            Self::SepKernel => "separation kernel, N subjects round-robin, nested EPT",
            Self::SepKernelNoEpt => "separation kernel, N subjects round-robin, nested_ept=n",
            Self::Muen => "Muen-style L1, HLT exiting off, a subject idles in HLT (nested_ept=n)",
            Self::MuenEpt => "Muen-style L1, HLT exiting off, a subject idles in HLT (nested EPT)",
            Self::MuenShadow => "Muen-style L1, HLT exiting off, L0 on shadow paging (ept=0)",
            Self::LateVmFail => "L0 without EPT, late hardware VM-Fail of a nested VMLAUNCH",
            Self::Invept => "L1 edits EPT12, INVEPT, VMRESUME",
            Self::Init => "L0 without EPT, INIT/SIPI of a vCPU in long mode",
            Self::EvmcsRestore => "eVMCS L1 restored in guest mode, exit before the first L2 entry",
            Self::DirtyLog => "dirty logging while L2 writes memory under nested EPT",
            Self::Smm => "SMI while L2 runs, RSM back into L2",
            Self::Noise => "many vCPUs with fixed-KVM noise (timers, interrupts, PML in L1)",
            Self::EptLivelock => {
                "EPT violation during interrupt delivery, never fixed (6.1 mmu_seq)"
            }
            Self::IrqReinjectLoop => "level-triggered IRQ raised again after every EOI",
            Self::ExceptionDeliveryLoop => {
                "IDT in MMIO: emulate, inject #UD, delivery faults again"
            }
            Self::EfaultLoop => "EPT violation answered with EFAULT, the VMM runs the vCPU again",
            Self::EoiLoop => "nested Hyper-V, split irqchip: EOI to userspace, IRQ re-raised",
            Self::FailedNestedEntry => "nested VM-entry failing KVM's guest-state checks",
            Self::NestedTripleFault => "L2 triple faults reflected to L1; L2 LTR emulated by L0",
            Self::NsvmRsm => "AMD: SMI in L2, RSM back into L2, L2's first #VMEXIT to L1",
            Self::NsvmMigrate => {
                "AMD: VMRUN injecting an event, vCPU saved and restored before L2 runs"
            }
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario name `vmxray simulate` does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown scenario `{0}` (see `vmxray simulate --list`)")]
pub struct UnknownScenario(pub String);

impl FromStr for Scenario {
    type Err = UnknownScenario;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|sc| sc.name() == s.trim())
            .ok_or_else(|| UnknownScenario(s.to_owned()))
    }
}

/// One simulation's knobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// Fixed or buggy KVM.
    pub kvm: KvmFlavour,
    /// The kernel whose tracepoint layouts are emitted.
    pub kernel: KernelVersion,
    /// The seed: same seed and knobs, same bytes.
    pub seed: u64,
    /// vCPUs (each on its own physical CPU); scenarios raise it to what they need.
    pub vcpus: u32,
    /// L2 subjects per L1 (where the scenario has several).
    pub subjects: u32,
    /// Rounds of the scenario's main loop.
    pub iterations: u32,
}

/// A configuration the simulator refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The scenario cannot inject that bug.
    #[error("Scenario `{scenario}` cannot inject bug {bug} (it can inject: {can})")]
    BugNotInScenario {
        /// The scenario.
        scenario: Scenario,
        /// The bug asked for.
        bug: Bug,
        /// What it can inject, comma separated (or "none").
        can: String,
    },
    /// A bare `buggy` for a scenario without a bug.
    #[error("Scenario `{0}` has no bug to inject; use --kvm fixed")]
    NoBugInScenario(Scenario),
    /// A knob out of range.
    #[error("Knob {knob} = {value} is out of range {min}..={max}")]
    KnobOutOfRange {
        /// The knob's name.
        knob: &'static str,
        /// Its value.
        value: u32,
        /// The smallest value allowed.
        min: u32,
        /// The largest value allowed.
        max: u32,
    },
}

impl SimConfig {
    /// The defaults: fixed KVM, kernel 6.1, seed 1, 2 vCPUs, 3 subjects, 4 iterations.
    pub fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            kvm: KvmFlavour::Fixed,
            kernel: KernelVersion::V6_1,
            seed: 1,
            vcpus: 2,
            subjects: 3,
            iterations: 4,
        }
    }

    /// Sets the flavour.
    pub fn kvm(mut self, kvm: KvmFlavour) -> Self {
        self.kvm = kvm;
        self
    }

    /// Sets the kernel.
    pub fn kernel(mut self, kernel: KernelVersion) -> Self {
        self.kernel = kernel;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the vCPU count.
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    /// Sets the subject count.
    pub fn subjects(mut self, subjects: u32) -> Self {
        self.subjects = subjects;
        self
    }

    /// Sets the iteration count.
    pub fn iterations(mut self, iterations: u32) -> Self {
        self.iterations = iterations;
        self
    }

    /// The vCPUs the run has: `vcpus`, raised to what the scenario needs (`init` 2, `noise`
    /// 4). vCPU `k` runs on CPU `k`.
    pub fn vcpu_count(&self) -> u32 {
        let needed = match self.scenario {
            Scenario::Init => 2,
            Scenario::Noise => 4,
            _ => 1,
        };
        self.vcpus.max(needed)
    }

    /// The flavour for `--kvm buggy` without a bug name: the scenario's only bug.
    pub fn resolve(
        scenario: Scenario,
        flavour: Option<KvmFlavour>,
    ) -> Result<KvmFlavour, SimError> {
        match flavour {
            Some(f) => Ok(f),
            None => scenario
                .bugs()
                .first()
                .map(|b| KvmFlavour::Buggy(*b))
                .ok_or(SimError::NoBugInScenario(scenario)),
        }
    }

    /// Checks the knobs and the flavour against the scenario.
    pub fn validate(&self) -> Result<(), SimError> {
        if let KvmFlavour::Buggy(bug) = self.kvm
            && !self.scenario.bugs().contains(&bug)
        {
            let can: Vec<&str> = self.scenario.bugs().iter().map(|b| b.name()).collect();
            return Err(SimError::BugNotInScenario {
                scenario: self.scenario,
                bug,
                can: if can.is_empty() { "none".into() } else { can.join(", ") },
            });
        }
        for (knob, value, min, max) in [
            ("vcpus", self.vcpus, 1, 64),
            ("subjects", self.subjects, 1, 32),
            ("iterations", self.iterations, 1, 10_000),
        ] {
            if !(min..=max).contains(&value) {
                return Err(SimError::KnobOutOfRange { knob, value, min, max });
            }
        }
        Ok(())
    }
}

/// The result of a simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulation {
    /// The events, in trace order (merged per CPU by timestamp).
    pub events: Vec<Event>,
    /// What the simulator knows.
    pub truth: GroundTruth,
}

impl Simulation {
    /// Text-rendering options matching this run (its kernel; `#P:` = its CPUs, at least 2).
    pub fn text_options(&self) -> text::TextOptions {
        let cpus = self.truth.vcpus.iter().map(|v| v.cpu + 1).max().unwrap_or(1);
        text::TextOptions { kernel: self.truth.kernel, nr_cpus: cpus.max(2), tgid: false }
    }
}

/// Runs one scenario.
pub fn simulate(config: &SimConfig) -> Result<Simulation, SimError> {
    config.validate()?;
    Ok(scenarios::run(config))
}
