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

pub mod dat;
mod engine;
pub mod host;
mod kernel;
mod rng;
mod scenarios;
pub mod stream;
pub mod text;
mod truth;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use vmxray_events::Event;

pub use kernel::{KernelVersion, UnknownKernel};
pub use truth::{BugSite, GroundTruth, VcpuThread, Vmcs12Field, Vmcs12Write, Writer};

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
    /// A known KVM nested-VMX bug (reference §3), which the buggy flavour reproduces; `ALL` is in
    /// reference order (a)–(f).
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
    }
}

impl Bug {
    /// The reference's letter.
    pub fn letter(self) -> char {
        match self {
            Self::HltStaleCr3 => 'a',
            Self::LateVmFailCr3 => 'b',
            Self::InveptNoRootReload => 'c',
            Self::InitMmuNotReset => 'd',
            Self::EvmcsStaleExit => 'e',
            Self::PmlInL2 => 'f',
        }
    }

    /// The upstream fix.
    pub fn fix_commit(self) -> &'static str {
        match self {
            Self::HltStaleCr3 => "04f11ef45810",
            Self::LateVmFailCr3 => "f087a02941fe",
            Self::InveptNoRootReload => "f8aa7e3958bc",
            Self::InitMmuNotReset => "0aa1837533e5",
            Self::EvmcsStaleExit => "f5c7e8425f18",
            Self::PmlInL2 => "1f4e5fc83a42",
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
    "Unknown KVM flavour `{0}` (expected fixed, buggy, or buggy:BUG with BUG one of a-f or a bug name)"
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
            Self::SepKernel | Self::SepKernelNoEpt | Self::Smm | Self::Noise => &[],
        }
    }

    /// One line on what the scenario does.
    pub fn description(self) -> &'static str {
        match self {
            Self::SepKernel => "separation kernel, N subjects round-robin, nested EPT",
            Self::SepKernelNoEpt => "separation kernel, N subjects round-robin, nested_ept=n",
            Self::Muen => "Muen-style L1, HLT exiting off, a subject idles in HLT (nested_ept=n)",
            Self::MuenEpt => "Muen-style L1, HLT exiting off, a subject idles in HLT (nested EPT)",
            Self::LateVmFail => "L0 without EPT, late hardware VM-Fail of a nested VMLAUNCH",
            Self::Invept => "L1 edits EPT12, INVEPT, VMRESUME",
            Self::Init => "L0 without EPT, INIT/SIPI of a vCPU in long mode",
            Self::EvmcsRestore => "eVMCS L1 restored in guest mode, exit before the first L2 entry",
            Self::DirtyLog => "dirty logging while L2 writes memory under nested EPT",
            Self::Smm => "SMI while L2 runs, RSM back into L2",
            Self::Noise => "many vCPUs with fixed-KVM noise (timers, interrupts, PML in L1)",
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
