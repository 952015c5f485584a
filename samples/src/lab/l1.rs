//! The `vmx-*` lab scenarios: our own bare-metal L1 hypervisor (`samples/vmx/l1/`, C) run as
//! the L1 guest of the KVM under test, so that real KVM takes its nested-VMX paths while
//! `vmxray record` captures them, and the L1 reports what it did as ground truth.
//!
//! The L1 needs a KVM that offers VMX to its guests (`kvm_intel` with `nested=1`); on any
//! other backend [`build`] fails with [`LabError::NoNestedVmx`] before creating a vCPU.
//!
//! **Contract with the L1** (`samples/vmx/l1/proto.h`, mirrored here): the flat image is
//! loaded at [`L1_LOAD_GPA`] and every vCPU starts there in 64-bit mode with RDI = scenario,
//! RSI = parameter, RDX = vCPU index. IA32_FEATURE_CONTROL is set (locked, VMXON outside
//! SMX) as a host-initiated MSR write. The L1 reports through `out 0x511, eax`, EAX being the
//! guest-physical address of a 128-byte [`Record`]; its last record is `done` or `fail`. A
//! vCPU restarted by INIT/SIPI reports from its real-mode trampoline with `out 0x512, al`.
//!
//! **Ground truth** ([`Truth`], written as `<trace>.truth.json` by `vmxray lab`): every
//! VMWRITE of GUEST_CR3, EPT_POINTER, GUEST_RIP and HOST_CR3 per VMCS address, every VM exit the L1
//! handled (reason, qualification, GUEST_RIP and GUEST_CR3 read back), every VMX
//! instruction with its outcome, and the L1's own checks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, Msrs, kvm_mp_state, kvm_msr_entry,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use super::vm::GuestView;
use super::{LabError, LabExit, Outcome, Vm, current_tid};

/// Where the L1 image is loaded and entered.
pub const L1_LOAD_GPA: u64 = 0x10_0000;
/// The port the L1 reports records through.
pub const PORT_RECORD: u16 = 0x511;
/// The port of the INIT/SIPI trampoline.
pub const PORT_SIPI_ALIVE: u16 = 0x512;
/// The boot vCPU's stack top (below the image).
const BSP_STACK: u64 = L1_LOAD_GPA;
/// The second vCPU's stack top.
const AP_STACK: u64 = 0xf_0000;
/// The highest image size that fits below the end of guest memory with room for its .bss.
const MAX_IMAGE: usize = 0x8_0000;
/// IA32_FEATURE_CONTROL: locked, VMXON outside SMX.
const MSR_IA32_FEATURE_CONTROL: u32 = 0x3a;
const FEATURE_CONTROL_LOCKED_VMXON: u64 = 0x5;
/// Records a vCPU may send before the loader gives up on it.
const MAX_RECORDS: usize = 100_000;
/// The size of one record.
const RECORD_SIZE: usize = 128;

/// The environment variable naming the L1 image.
pub const IMAGE_ENV: &str = "VMXRAY_L1_IMAGE";
/// Set to 1 to print every L1 record on stderr as it arrives (debugging a hung L1).
pub const VERBOSE_ENV: &str = "VMXRAY_L1_VERBOSE";

/// A scenario of the L1 hypervisor (its number is the L1's `SCN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxScenario {
    /// `vmx-io`: one subject with nested EPT: VMLAUNCH, two I/O exits, a HLT exit.
    Io,
    /// `vmx-rr[=N]`: N subjects (default 3) round-robin on the preemption timer with nested
    /// EPT; VMPTRLD per switch, all VMCLEARed after round 2 and VMLAUNCHed again.
    RoundRobin(u32),
    /// `vmx-noept[=N]`: the round robin without nested EPT (L1 gives GUEST_CR3 only).
    RoundRobinNoEpt(u32),
    /// `vmx-hlt`: the Muen pattern, no nested EPT: subject 1 idles in HLT with HLT exiting
    /// off, so KVM re-enters it in activity state HLT (the bug (a) path).
    Hlt,
    /// `vmx-hlt-ept`: the same with nested EPT.
    HltEpt,
    /// `vmx-invept`: L1 edits EPT12, INVEPT single-context and all-context, INVVPID; the
    /// subject's reads prove each new mapping.
    Invept,
    /// `vmx-vmfail`: VMRESUME of a clear VMCS (VMfail 5), an invalid pin control (VMfail 7),
    /// two invalid guest states (entry-failure exits, reason 0x80000021), then a good launch.
    VmFail,
    /// `vmx-init`: two vCPUs; INIT to vCPU 1 in L2 (INIT_SIGNAL exit), again in VMX root
    /// (latched until VMXOFF), then SIPI to a real-mode trampoline.
    Init,
    /// `vmx-triple-fault`: an L2 triple fault reflected to L1 as TRIPLE_FAULT.
    TripleFault,
    /// `vmx-hwfail`: an invalid guest state that KVM leaves to the hardware (GUEST_RFLAGS bit
    /// 1 clear): vmcs02's entry fails, L1 must see the entry-failure exit; then a good launch.
    HwFail,
    /// `vmx-late-vmfail`: a VMLAUNCH that KVM's checks accept and only the CPU rejects (TPR
    /// shadow, TPR threshold 0xf above VTPR 0: VMfail 7, bug (b)'s trigger); L1 reads CR3
    /// before and after it, then launches for real.
    LateVmFail,
    /// `vmx-pae-pdpte`: an L2 in 32-bit PAE paging under nested EPT, vmcs12's GUEST_PDPTR0-3
    /// valid and GUEST_CR3 at a page of 0xff bytes (no valid PDPTEs): the entry must succeed
    /// (the CPU takes the PDPTEs from the VMCS), blind bug x2's trigger.
    PaePdpte,
    /// `vmx-ept-upper-nox`: an EPT12 PDE without X over RWX leaves; L2's first fetch takes an
    /// EPT violation whose qualification must say readable and writable, not executable
    /// (bits 5:3 = 0b011), blind bug x1's trigger; then the PDE gets its X.
    EptUpperNoX,
    /// `vmx-lmsw`: L1 owns CR0.TS and CR0.MP; L2's `lmsw` sets TS while RAX leaves it clear:
    /// the LMSW must exit to L1 (blind bug x3's trigger), and GUEST_CR0.TS stays as L1 left it.
    Lmsw,
    /// `vmx-dirty`: the loader logs the dirty pages of L1's memory (KVM_MEM_LOG_DIRTY_PAGES)
    /// while L2, under nested EPT with A/D bits, writes 1024 L2 pages that EPT12 maps onto
    /// four L1 frames, in three rounds; after each round L1 asks how many frames are in the
    /// log (fetched and cleared each time): all four must be (bug (f)'s trigger).
    Dirty,
}

impl VmxScenario {
    /// Every scenario with its default parameter (for lists and tests).
    pub const ALL: [Self; 15] = [
        Self::Io,
        Self::RoundRobin(3),
        Self::RoundRobinNoEpt(3),
        Self::Hlt,
        Self::HltEpt,
        Self::Invept,
        Self::VmFail,
        Self::Init,
        Self::TripleFault,
        Self::HwFail,
        Self::LateVmFail,
        Self::PaePdpte,
        Self::EptUpperNoX,
        Self::Lmsw,
        Self::Dirty,
    ];

    /// The L1's scenario number and parameter (RDI, RSI).
    fn code(self) -> (u64, u64) {
        match self {
            Self::Io => (1, 0),
            Self::RoundRobin(n) => (2, u64::from(n)),
            Self::RoundRobinNoEpt(n) => (3, u64::from(n)),
            Self::Hlt => (4, 0),
            Self::HltEpt => (5, 0),
            Self::Invept => (6, 0),
            Self::VmFail => (7, 0),
            Self::Init => (8, 0),
            Self::TripleFault => (9, 0),
            Self::HwFail => (10, 0),
            Self::LateVmFail => (11, 0),
            Self::PaePdpte => (12, 0),
            Self::EptUpperNoX => (13, 0),
            Self::Lmsw => (14, 0),
            Self::Dirty => (15, 0),
        }
    }

    /// vCPUs the scenario runs on.
    pub fn vcpus(self) -> usize {
        if self == Self::Init { 2 } else { 1 }
    }

    /// Parses a `vmx-*` name with its optional count (`None` when the name is not ours).
    pub fn parse(name: &str, count: Option<u64>) -> Option<Result<Self, String>> {
        let subjects = |default: u32| match count {
            None => Ok(default),
            Some(n @ 1..=7) => Ok(u32::try_from(n).unwrap_or(default)),
            Some(n) => Err(format!("{name}={n}: the L1 runs 1 to 7 subjects")),
        };
        let no_count = |s: Self| match count {
            None => Ok(s),
            Some(_) => Err(format!("{name} takes no count")),
        };
        Some(match name {
            "vmx-io" => no_count(Self::Io),
            "vmx-rr" => subjects(3).map(Self::RoundRobin),
            "vmx-noept" => subjects(3).map(Self::RoundRobinNoEpt),
            "vmx-hlt" => no_count(Self::Hlt),
            "vmx-hlt-ept" => no_count(Self::HltEpt),
            "vmx-invept" => no_count(Self::Invept),
            "vmx-vmfail" => no_count(Self::VmFail),
            "vmx-init" => no_count(Self::Init),
            "vmx-triple-fault" => no_count(Self::TripleFault),
            "vmx-hwfail" => no_count(Self::HwFail),
            "vmx-late-vmfail" => no_count(Self::LateVmFail),
            "vmx-pae-pdpte" => no_count(Self::PaePdpte),
            "vmx-ept-upper-nox" => no_count(Self::EptUpperNoX),
            "vmx-lmsw" => no_count(Self::Lmsw),
            "vmx-dirty" => no_count(Self::Dirty),
            _ => return None,
        })
    }

    /// The names, for help texts.
    pub const NAMES: &'static str = "vmx-io, vmx-rr[=N], vmx-noept[=N], vmx-hlt, vmx-hlt-ept, \
                                     vmx-invept, vmx-vmfail, vmx-init, vmx-triple-fault, vmx-hwfail, \
                                     vmx-late-vmfail, vmx-pae-pdpte, vmx-ept-upper-nox, vmx-lmsw, \
                                     vmx-dirty";
}

impl fmt::Display for VmxScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io => f.write_str("vmx-io"),
            Self::RoundRobin(n) => write!(f, "vmx-rr={n}"),
            Self::RoundRobinNoEpt(n) => write!(f, "vmx-noept={n}"),
            Self::Hlt => f.write_str("vmx-hlt"),
            Self::HltEpt => f.write_str("vmx-hlt-ept"),
            Self::Invept => f.write_str("vmx-invept"),
            Self::VmFail => f.write_str("vmx-vmfail"),
            Self::Init => f.write_str("vmx-init"),
            Self::TripleFault => f.write_str("vmx-triple-fault"),
            Self::HwFail => f.write_str("vmx-hwfail"),
            Self::LateVmFail => f.write_str("vmx-late-vmfail"),
            Self::PaePdpte => f.write_str("vmx-pae-pdpte"),
            Self::EptUpperNoX => f.write_str("vmx-ept-upper-nox"),
            Self::Lmsw => f.write_str("vmx-lmsw"),
            Self::Dirty => f.write_str("vmx-dirty"),
        }
    }
}

impl FromStr for VmxScenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, count) = match s.split_once(['=', ':']) {
            Some((name, n)) => {
                (name, Some(n.parse::<u64>().map_err(|_| format!("bad count in {s:?}"))?))
            }
            None => (s, None),
        };
        Self::parse(name, count)
            .unwrap_or_else(|| Err(format!("unknown scenario {s:?}: expected {}", Self::NAMES)))
    }
}

/// The VMCS fields whose VMWRITEs the L1 reports, by encoding.
pub fn field_name(encoding: u64) -> Option<&'static str> {
    Some(match encoding {
        0x6802 => "GUEST_CR3",
        0x201a => "EPT_POINTER",
        0x681e => "GUEST_RIP",
        0x6c02 => "HOST_CR3",
        _ => return None,
    })
}

/// One thing the L1 reported (`struct l1_record`, decoded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A line of text.
    Log {
        /// The vCPU.
        vcpu: u32,
        /// The text.
        text: String,
    },
    /// A VMWRITE of GUEST_CR3, EPT_POINTER, GUEST_RIP or HOST_CR3.
    Vmwrite {
        /// The vCPU.
        vcpu: u32,
        /// The current VMCS (its guest-physical address: vmcs12 for KVM).
        vmcs: u64,
        /// The field's name.
        field: String,
        /// The field's encoding.
        encoding: u64,
        /// The value written.
        value: u64,
    },
    /// A VM exit the L1 handled.
    Exit {
        /// The vCPU.
        vcpu: u32,
        /// The VMCS that exited.
        vmcs: u64,
        /// VM_EXIT_REASON (bit 31: failed VM entry).
        reason: u64,
        /// EXIT_QUALIFICATION.
        qualification: u64,
        /// GUEST_RIP read at the exit.
        guest_rip: u64,
        /// GUEST_CR3 read at the exit.
        guest_cr3: u64,
        /// How it was entered and which subject.
        text: String,
    },
    /// A VMX instruction and its outcome.
    VmxOp {
        /// The vCPU.
        vcpu: u32,
        /// `vmxon`, `vmclear`, `vmptrld`, `vmlaunch`, `vmresume`, `invept`, `invvpid`, `vmxoff`.
        op: String,
        /// The operand: a VMCS address, an EPTP or a VPID.
        operand: u64,
        /// The INVEPT/INVVPID type.
        op_type: u64,
        /// 0 VMsucceed, 1 VMfailInvalid, 2 VMfailValid.
        result: u64,
        /// VM_INSTRUCTION_ERROR after VMfailValid.
        error: u64,
    },
    /// A check the L1 made.
    Check {
        /// The vCPU.
        vcpu: u32,
        /// The current VMCS then.
        vmcs: u64,
        /// What was checked.
        what: String,
        /// The expected value.
        expected: u64,
        /// The value found.
        actual: u64,
        /// They are equal.
        ok: bool,
    },
    /// A subject's VMCS was set up.
    Subject {
        /// The vCPU.
        vcpu: u32,
        /// Its VMCS.
        vmcs: u64,
        /// The subject number.
        id: u64,
        /// Its GUEST_CR3.
        guest_cr3: u64,
        /// Its EPT_POINTER (0 without nested EPT).
        eptp: u64,
        /// Its VPID (0 without).
        vpid: u64,
        /// What it does.
        behaviour: String,
    },
    /// The scenario ended on this vCPU.
    Done {
        /// The vCPU.
        vcpu: u32,
        /// Checks that failed.
        failed_checks: u64,
    },
    /// The L1 gave up.
    Fail {
        /// The vCPU.
        vcpu: u32,
        /// Why.
        text: String,
    },
    /// The L1 asked how many pages of a range are in L0's dirty log; the loader fetched (and
    /// so cleared) the log and answered.
    Dirty {
        /// The vCPU.
        vcpu: u32,
        /// The first guest-physical address asked about.
        gpa: u64,
        /// Pages asked about, from `gpa` on.
        pages: u64,
        /// Pages in the log (`None`: the loader does not log dirty pages).
        logged: Option<u64>,
        /// Pages of the range in the log.
        dirty: u64,
        /// What was asked.
        text: String,
    },
    /// A vCPU restarted by INIT/SIPI reached its trampoline.
    SipiAlive {
        /// The vCPU.
        vcpu: u32,
    },
}

/// Decodes one 128-byte `struct l1_record`.
pub fn decode_record(bytes: &[u8; RECORD_SIZE]) -> Result<Record, String> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
    let kind = u32_at(0);
    let vcpu = u32_at(4);
    let (vmcs, a, b, c, d) = (u64_at(8), u64_at(16), u64_at(24), u64_at(32), u64_at(40));
    let raw = &bytes[48..];
    let text =
        String::from_utf8_lossy(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())])
            .into_owned();
    Ok(match kind {
        1 => Record::Log { vcpu, text },
        2 => Record::Vmwrite {
            vcpu,
            vmcs,
            field: field_name(a).unwrap_or("UNKNOWN").into(),
            encoding: a,
            value: b,
        },
        3 => Record::Exit {
            vcpu,
            vmcs,
            reason: a,
            qualification: b,
            guest_rip: c,
            guest_cr3: d,
            text,
        },
        4 => Record::VmxOp { vcpu, op: text, operand: vmcs, op_type: a, result: b, error: c },
        5 => Record::Check { vcpu, vmcs, what: text, expected: a, actual: b, ok: c == 1 },
        6 => Record::Done { vcpu, failed_checks: a },
        7 => Record::Fail { vcpu, text },
        8 => Record::Subject { vcpu, vmcs, id: a, guest_cr3: b, eptp: c, vpid: d, behaviour: text },
        // The question, before the loader answers it (`answer_dirty`).
        9 => Record::Dirty { vcpu, gpa: a, pages: c, logged: None, dirty: 0, text },
        other => return Err(format!("unknown record kind {other}")),
    })
}

/// How a vCPU's run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuEnd {
    /// The L1 sent `done`.
    Done,
    /// The L1 sent `fail`.
    Failed,
    /// The vCPU reached its INIT/SIPI trampoline.
    SipiAlive,
    /// KVM_EXIT_SHUTDOWN: L1 itself triple-faulted.
    Shutdown,
    /// Something else stopped it.
    Other(String),
}

impl fmt::Display for VcpuEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Done => f.write_str("done (the L1 reported success)"),
            Self::Failed => f.write_str("failed (the L1 reported a failed check)"),
            Self::SipiAlive => f.write_str("alive at its INIT/SIPI trampoline"),
            Self::Shutdown => f.write_str("KVM_EXIT_SHUTDOWN (L1 itself triple-faulted)"),
            Self::Other(why) => f.write_str(why),
        }
    }
}

/// What one vCPU did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuTruth {
    /// The vCPU index.
    pub vcpu: u32,
    /// The thread that ran it.
    pub tid: u32,
    /// How it ended.
    pub end: VcpuEnd,
}

/// The ground truth of one L1 run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// The scenario (`vmx-rr=3`).
    pub scenario: String,
    /// Per vCPU.
    pub vcpus: Vec<VcpuTruth>,
    /// Everything the L1 reported, per vCPU in its order, vCPU 0 first.
    pub records: Vec<Record>,
}

impl Truth {
    /// Checks the L1 made that failed.
    pub fn failed_checks(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| matches!(r, Record::Check { ok: false, .. })).collect()
    }

    /// True when every vCPU ended as planned and every check held.
    pub fn passed(&self) -> bool {
        self.failed_checks().is_empty()
            && !self.vcpus.is_empty()
            && self.vcpus.iter().all(|v| matches!(v.end, VcpuEnd::Done | VcpuEnd::SipiAlive))
    }

    /// Every value the L1 wrote to `field` (a [`field_name`]), as `(vmcs, value)` in the
    /// L1's order.
    pub fn writes(&self, field: &str) -> Vec<(u64, u64)> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Vmwrite { vmcs, field: f, value, .. } if f == field => {
                    Some((*vmcs, *value))
                }
                _ => None,
            })
            .collect()
    }
}

/// Finds the L1 image: `explicit`, else `$VMXRAY_L1_IMAGE`, else `l1.bin` or `vmx-l1/l1.bin`
/// next to the running binary or one directory up (cargo's `target/debug/vmxray` finds
/// `target/vmx-l1/l1.bin`, where `make -C samples/vmx/l1` puts it).
pub fn find_image(explicit: Option<&Path>) -> Result<PathBuf, LabError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(IMAGE_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for base in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
            for rel in ["l1.bin", "vmx-l1/l1.bin"] {
                let p = base.join(rel);
                if p.is_file() {
                    return Ok(p);
                }
                tried.push(p);
            }
        }
    }
    Err(LabError::NoL1Image { tried })
}

/// True when KVM offers VMX to its guests (CPUID.1:ECX bit 5 in the supported CPUID).
fn kvm_offers_vmx(vm: &Vm) -> Result<bool, LabError> {
    let cpuid = vm
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| LabError::Kvm { op: "KVM_GET_SUPPORTED_CPUID", source: e })?;
    Ok(cpuid.as_slice().iter().any(|e| e.function == 1 && e.ecx & (1 << 5) != 0))
}

/// Builds the VM: in-kernel irqchip, the image at [`L1_LOAD_GPA`], the scenario's vCPUs.
pub fn build(scenario: VmxScenario, image: &Path) -> Result<Vm, LabError> {
    let bytes = std::fs::read(image)
        .map_err(|source| LabError::L1Image { path: image.to_path_buf(), source })?;
    if bytes.is_empty() || bytes.len() > MAX_IMAGE {
        return Err(LabError::L1ImageSize { path: image.to_path_buf(), size: bytes.len() });
    }
    let mut vm = Vm::with_dirty_log(scenario == VmxScenario::Dirty)?;
    if !kvm_offers_vmx(&vm)? {
        return Err(LabError::NoNestedVmx { backend: super::kvm_backend() });
    }
    vm.create_irqchip()?;
    vm.write(L1_LOAD_GPA, &bytes)?;
    let (code, param) = scenario.code();
    for index in 0..scenario.vcpus() {
        let id = vm.add_vcpu(L1_LOAD_GPA)?;
        let vcpu = vm.vcpu(id).ok_or(LabError::VcpuPanicked(id))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_FEATURE_CONTROL,
            data: FEATURE_CONTROL_LOCKED_VMXON,
            ..Default::default()
        }])
        .map_err(|_| LabError::UnexpectedExit {
            vcpu: id,
            expected: "an MSR list",
            got: "a KVM MSR list allocation failure".into(),
        })?;
        let written =
            vcpu.set_msrs(&msrs).map_err(|e| LabError::Kvm { op: "KVM_SET_MSRS", source: e })?;
        if written != 1 {
            return Err(LabError::FeatureControl { vcpu: id });
        }
        let mut regs =
            vcpu.get_regs().map_err(|e| LabError::Kvm { op: "KVM_GET_REGS", source: e })?;
        regs.rdi = code;
        regs.rsi = param;
        regs.rdx = index as u64;
        regs.rsp = if index == 0 { BSP_STACK } else { AP_STACK };
        vcpu.set_regs(&regs).map_err(|e| LabError::Kvm { op: "KVM_SET_REGS", source: e })?;
        if index > 0 {
            // With the in-kernel LAPIC an AP starts waiting for INIT/SIPI; ours starts in
            // long mode like the BSP and is INITed later by the scenario itself.
            vcpu.set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE })
                .map_err(|e| LabError::Kvm { op: "KVM_SET_MP_STATE", source: e })?;
        }
    }
    Ok(vm)
}

/// Runs one vCPU until its L1 says `done` or `fail` (or it stops otherwise).
fn run_vcpu(
    vcpu: &mut VcpuFd,
    index: usize,
    mem: &GuestView<'_>,
) -> Result<(Vec<Record>, VcpuEnd, Vec<LabExit>), LabError> {
    let mut records = Vec::new();
    let mut exits = Vec::new();
    let verbose = std::env::var_os(VERBOSE_ENV).is_some_and(|v| v == "1");
    let vcpu_no = u32::try_from(index).unwrap_or(u32::MAX);
    while records.len() < MAX_RECORDS {
        let exit = vcpu.run().map_err(|e| LabError::Kvm { op: "KVM_RUN", source: e })?;
        match exit {
            VcpuExit::IoOut(PORT_RECORD, data) => {
                exits.push(LabExit::IoOut(PORT_RECORD));
                let mut gpa = [0u8; 4];
                let n = data.len().min(4);
                gpa[..n].copy_from_slice(&data[..n]);
                let mut raw = [0u8; RECORD_SIZE];
                mem.read(u64::from(u32::from_le_bytes(gpa)), &mut raw)?;
                let mut record = decode_record(&raw).map_err(|got| LabError::UnexpectedExit {
                    vcpu: index,
                    expected: "an L1 record",
                    got,
                })?;
                if let Record::Dirty { gpa: first, pages, logged, dirty, .. } = &mut record {
                    (*logged, *dirty) = answer_dirty(mem, *first, *pages)?;
                    // The answer goes into the record's b and d (proto.h, REC_DIRTY).
                    let at = u64::from(u32::from_le_bytes(gpa));
                    mem.write(at + 24, &logged.unwrap_or(u64::MAX).to_le_bytes())?;
                    mem.write(at + 40, &dirty.to_le_bytes())?;
                }
                if verbose {
                    eprintln!("vmxray lab: L1 {record:?}");
                }
                let end = match &record {
                    Record::Done { .. } => Some(VcpuEnd::Done),
                    Record::Fail { .. } => Some(VcpuEnd::Failed),
                    _ => None,
                };
                records.push(record);
                if let Some(end) = end {
                    return Ok((records, end, exits));
                }
            }
            VcpuExit::IoOut(PORT_SIPI_ALIVE, _) => {
                exits.push(LabExit::IoOut(PORT_SIPI_ALIVE));
                records.push(Record::SipiAlive { vcpu: vcpu_no });
                return Ok((records, VcpuEnd::SipiAlive, exits));
            }
            VcpuExit::Shutdown => {
                exits.push(LabExit::Shutdown);
                return Ok((records, VcpuEnd::Shutdown, exits));
            }
            other => {
                let got = super::exit_name(&other);
                exits.push(LabExit::Other(got.clone()));
                return Ok((records, VcpuEnd::Other(got), exits));
            }
        }
    }
    Ok((records, VcpuEnd::Other(format!("more than {MAX_RECORDS} records")), exits))
}

/// Fetches (and so clears) the dirty log: how many pages it holds (`None` without dirty
/// logging) and how many of the `pages` pages from `gpa` on are among them.
fn answer_dirty(mem: &GuestView<'_>, gpa: u64, pages: u64) -> Result<(Option<u64>, u64), LabError> {
    let Some(log) = mem.take_dirty_log()? else {
        return Ok((None, 0));
    };
    let logged = log.iter().map(|w| u64::from(w.count_ones())).sum();
    let is_dirty = |page: u64| {
        usize::try_from(page / 64)
            .ok()
            .and_then(|word| log.get(word))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    };
    let first = gpa >> 12;
    let dirty = (first..first.saturating_add(pages.min(1 << 20))).filter(|&p| is_dirty(p)).count();
    Ok((Some(logged), dirty as u64))
}

/// Runs a built L1 scenario to its end on all its vCPUs (one thread each).
pub fn run(scenario: VmxScenario, vm: &mut Vm) -> Result<Outcome, LabError> {
    let (vcpus, mem) = vm.split();
    type VcpuResult = Result<(Vec<Record>, VcpuEnd, Vec<LabExit>, u32), LabError>;
    let results: Vec<VcpuResult> = std::thread::scope(|s| {
        let mem = &mem;
        let handles: Vec<_> = vcpus
            .iter_mut()
            .enumerate()
            .map(|(i, vcpu)| {
                std::thread::Builder::new().name(format!("l1-vcpu{i}")).spawn_scoped(s, move || {
                    run_vcpu(vcpu, i, mem)
                        .map(|(r, end, exits)| (r, end, exits, current_tid().unwrap_or(0)))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h {
                Ok(h) => h.join().unwrap_or(Err(LabError::VcpuPanicked(i))),
                Err(_) => Err(LabError::VcpuPanicked(i)),
            })
            .collect()
    });
    let mut outcome = Outcome::default();
    let mut truth = Truth { scenario: scenario.to_string(), ..Truth::default() };
    for (index, result) in results.into_iter().enumerate() {
        let (records, end, exits, tid) = result?;
        truth.vcpus.push(VcpuTruth { vcpu: u32::try_from(index).unwrap_or(u32::MAX), tid, end });
        truth.records.extend(records);
        outcome.exits.push(exits);
        outcome.vcpu_tids.push(tid);
    }
    outcome.l1_truth = Some(truth);
    Ok(outcome)
}

/// The truth file written next to a trace: `<trace>.truth.json`.
pub fn truth_path(trace: &Path) -> PathBuf {
    let mut name = trace.as_os_str().to_owned();
    name.push(".truth.json");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in VmxScenario::ALL {
            assert_eq!(s.to_string().parse::<VmxScenario>(), Ok(s));
        }
        assert_eq!("vmx-rr=5".parse::<VmxScenario>(), Ok(VmxScenario::RoundRobin(5)));
        assert!("vmx-rr=9".parse::<VmxScenario>().is_err());
        assert!("vmx-io=2".parse::<VmxScenario>().is_err());
        assert!("vmx-nope".parse::<VmxScenario>().unwrap_err().contains("vmx-triple-fault"));
    }

    fn raw(kind: u32, vcpu: u32, words: [u64; 5], text: &str) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..4].copy_from_slice(&kind.to_le_bytes());
        b[4..8].copy_from_slice(&vcpu.to_le_bytes());
        for (i, w) in words.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        b[48..48 + text.len()].copy_from_slice(text.as_bytes());
        b
    }

    #[test]
    fn records_decode_as_proto_h_lays_them_out() {
        let r = decode_record(&raw(2, 0, [0x150000, 0x6802, 0x10a000, 0, 0], "")).unwrap();
        assert_eq!(
            r,
            Record::Vmwrite {
                vcpu: 0,
                vmcs: 0x150000,
                field: "GUEST_CR3".into(),
                encoding: 0x6802,
                value: 0x10a000
            }
        );
        let r =
            decode_record(&raw(3, 1, [0x151000, 52, 0, 0x100200, 0x10b000], "vmresume subject 1"))
                .unwrap();
        assert!(
            matches!(r, Record::Exit { vcpu: 1, reason: 52, guest_cr3: 0x10b000, ref text, .. } if text == "vmresume subject 1")
        );
        let r = decode_record(&raw(5, 0, [0, 7, 5, 0, 0], "error")).unwrap();
        assert!(matches!(r, Record::Check { ok: false, expected: 7, actual: 5, .. }));
        let r =
            decode_record(&raw(9, 0, [0, 0x109000, 0, 4, u64::MAX], "frames 109000+4")).unwrap();
        assert!(
            matches!(r, Record::Dirty { gpa: 0x109000, pages: 4, logged: None, dirty: 0, ref text, .. } if text == "frames 109000+4")
        );
        assert!(decode_record(&raw(99, 0, [0; 5], "")).is_err());
        // A text that fills the whole field has no terminator: still decoded.
        let full = "x".repeat(80);
        assert!(
            matches!(decode_record(&raw(1, 0, [0; 5], &full)).unwrap(), Record::Log { text, .. } if text.len() == 80)
        );
    }

    #[test]
    fn truth_summaries() {
        let truth = Truth {
            scenario: "vmx-io".into(),
            vcpus: vec![VcpuTruth { vcpu: 0, tid: 1, end: VcpuEnd::Done }],
            records: vec![
                Record::Vmwrite {
                    vcpu: 0,
                    vmcs: 0x1000,
                    field: "GUEST_CR3".into(),
                    encoding: 0x6802,
                    value: 0x5000,
                },
                Record::Check {
                    vcpu: 0,
                    vmcs: 0x1000,
                    what: "x".into(),
                    expected: 1,
                    actual: 1,
                    ok: true,
                },
            ],
        };
        assert!(truth.passed());
        assert_eq!(truth.writes("GUEST_CR3"), [(0x1000, 0x5000)]);
        let json = serde_json::to_string(&truth).unwrap();
        assert!(json.contains(r#""kind":"vmwrite""#), "{json}");
        assert_eq!(serde_json::from_str::<Truth>(&json).unwrap(), truth);
        let mut failed = truth.clone();
        failed.vcpus[0].end = VcpuEnd::Shutdown;
        assert!(!failed.passed());
    }

    #[test]
    fn truth_sits_next_to_the_trace() {
        assert_eq!(truth_path(Path::new("out/x.dat")), Path::new("out/x.dat.truth.json"));
    }
}
