//! The lab: tiny real guests on `/dev/kvm`, recorded by `vmxray record` in-process.
//!
//! Each [`Scenario`] is a few bytes of 64-bit guest code with a known outcome (ported from the
//! Python guests in `shared/tools/`). [`record`] runs one under a recording restricted to the
//! calling thread and its children (`set_event_pid` + `event-fork`), so recordings made at the
//! same time by other threads or processes never mix.

mod init_sipi;
pub mod l1;
#[allow(unsafe_code)]
mod vm;
pub mod vmx;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmxray_record::{RecordError, RecordOptions, RecordReport, Recorder};

pub use vm::{CODE_GPA, MEM_SIZE, PML4_GPA, Vm};

/// A lab guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Cycles CR3 through [`CR3_SWITCH_ROOTS`] three times, then `out 0x10` and `hlt`.
    Cr3Switch,
    /// Two CR3 switches, `out 0x10`, `lidt` of an empty IDT, `ud2`: the #UD cannot be
    /// delivered → double fault → triple fault → `KVM_EXIT_SHUTDOWN`.
    TripleFault,
    /// `lidt` of an empty IDT, then a write to an unmapped page: the #PF cannot be delivered →
    /// triple fault → `KVM_EXIT_SHUTDOWN`.
    PfTripleFault,
    /// `inc eax; out 0x10, al; jmp` run for N `KVM_RUN`s: N `KVM_EXIT_IO` exits.
    IoLoop(u64),
    /// Two vCPUs, each in its own thread, each doing N (default 100) IO exits on its own port
    /// (0x10 and 0x11).
    MultiVcpu(u64),
    /// `out 0x10`, a write and a read of [`MMIO_GPA`] (mapped by the guest's page tables, but
    /// no memslot backs it: two `KVM_EXIT_MMIO`, EPT misconfig/violation exits with EPT), then
    /// `hlt`.
    Mmio,
    /// Our own bare-metal L1 hypervisor running nested guests ([`l1`]; needs nested VMX).
    Vmx(l1::VmxScenario),
    /// vCPU 1 runs long-mode code above 4 GiB to `out 0x10` and idles in HLT; vCPU 0 sends it
    /// INIT and SIPI (vector 8) through its x2APIC and does `out 0x12`; vCPU 1 restarts in real
    /// mode at 0x8000 and does `out 0x11` (the MMU reset at INIT, bug (d); see
    /// `init_sipi.rs`). Needs the in-kernel APIC.
    InitSipi,
}

/// The CR3 values `cr3-switch` loads, in order (the last is the initial one).
pub const CR3_SWITCH_ROOTS: [u64; 4] = [0x5000, 0x6000, 0x7000, PML4_GPA];

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = match s.split_once(['=', ':']) {
            Some((name, n)) => {
                (name, Some(n.parse::<u64>().map_err(|_| format!("bad count in {s:?}"))?))
            }
            None => (s, None),
        };
        Ok(match name {
            "cr3-switch" => Self::Cr3Switch,
            "triple-fault" => Self::TripleFault,
            "pf-triple-fault" => Self::PfTripleFault,
            "io-loop" => Self::IoLoop(n.unwrap_or(1000)),
            "multi-vcpu" => Self::MultiVcpu(n.unwrap_or(100)),
            "mmio" => Self::Mmio,
            "init-sipi" => Self::InitSipi,
            _ => match l1::VmxScenario::parse(name, n) {
                Some(vmx) => Self::Vmx(vmx?),
                None => {
                    return Err(format!(
                        "unknown scenario {s:?}: expected cr3-switch, triple-fault, \
                         pf-triple-fault, io-loop[=N], multi-vcpu[=N], mmio, init-sipi, {}",
                        l1::VmxScenario::NAMES
                    ));
                }
            },
        })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cr3Switch => f.write_str("cr3-switch"),
            Self::TripleFault => f.write_str("triple-fault"),
            Self::PfTripleFault => f.write_str("pf-triple-fault"),
            Self::IoLoop(n) => write!(f, "io-loop={n}"),
            Self::MultiVcpu(n) => write!(f, "multi-vcpu={n}"),
            Self::Mmio => f.write_str("mmio"),
            Self::Vmx(s) => s.fmt(f),
            Self::InitSipi => f.write_str("init-sipi"),
        }
    }
}

/// Why a lab run failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A KVM ioctl failed.
    #[error("{op} failed")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("Cannot map guest memory")]
    Mmap(#[source] std::io::Error),
    /// A write outside guest memory (a bug in a scenario).
    #[error("Guest address {gpa:#x} is outside the {MEM_SIZE:#x}-byte guest memory")]
    OutOfMemory {
        /// The address.
        gpa: u64,
    },
    /// The guest did something its scenario does not expect.
    #[error("vCPU {vcpu}: expected {expected}, the guest exited with {got}")]
    UnexpectedExit {
        /// The vCPU.
        vcpu: usize,
        /// What the scenario expected.
        expected: &'static str,
        /// What happened.
        got: String,
    },
    /// The KVM under test does not offer VMX to its guests.
    #[error(
        "This KVM ({backend}) offers no VMX to its guests, so our L1 hypervisor cannot run: the \
         vmx-* scenarios need kvm_intel loaded with nested=1 (run them in the emulated VMX host)"
    )]
    NoNestedVmx {
        /// The KVM module in use.
        backend: &'static str,
    },
    /// No L1 image was found.
    #[error(
        "No L1 image (build it with `make -C samples/vmx/l1`, or name it with --l1-image or \
         ${env}); looked for {}",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        env = l1::IMAGE_ENV
    )]
    NoL1Image {
        /// The places looked at.
        tried: Vec<PathBuf>,
    },
    /// The L1 image could not be read.
    #[error("Cannot read the L1 image {}", path.display())]
    L1Image {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The L1 image is empty or too large for the guest memory.
    #[error("The L1 image {} has {size} bytes; expected 1 to 512 KiB", path.display())]
    L1ImageSize {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: usize,
    },
    /// KVM refused IA32_FEATURE_CONTROL.
    #[error("vCPU {vcpu}: KVM refused the IA32_FEATURE_CONTROL write (no nested VMX?)")]
    FeatureControl {
        /// The vCPU.
        vcpu: usize,
    },
    /// A vCPU thread panicked.
    #[error("vCPU {0}'s thread panicked")]
    VcpuPanicked(usize),
    /// The recording failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A vCPU exit as the lab saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabExit {
    /// `KVM_EXIT_IO`, an `out` to this port.
    IoOut(u16),
    /// `KVM_EXIT_HLT`.
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`.
    Shutdown,
    /// Anything else, by name.
    Other(String),
}

impl fmt::Display for LabExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoOut(port) => write!(f, "KVM_EXIT_IO (out to port {port:#x})"),
            Self::Hlt => f.write_str("KVM_EXIT_HLT"),
            Self::Shutdown => f.write_str("KVM_EXIT_SHUTDOWN"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// What the guest did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Exits per vCPU, in order.
    pub exits: Vec<Vec<LabExit>>,
    /// The kernel thread ids that ran each vCPU.
    pub vcpu_tids: Vec<u32>,
    /// What our L1 hypervisor reported (the `vmx-*` scenarios).
    pub l1_truth: Option<l1::Truth>,
}

/// Assembles guest code.
#[derive(Default)]
struct Code(Vec<u8>);

impl Code {
    fn mov_rax(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&[0x48, 0xc7, 0xc0]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn mov_cr3_rax(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x0f, 0x22, 0xd8]);
        self
    }
    fn load_cr3(&mut self, v: u64) -> &mut Self {
        self.mov_rax(u32::try_from(v).unwrap_or(0)).mov_cr3_rax()
    }
    fn out(&mut self, port: u8) -> &mut Self {
        self.0.extend_from_slice(&[0xe6, port]);
        self
    }
    fn hlt(&mut self) -> &mut Self {
        self.0.push(0xf4);
        self
    }
    /// `lidt [abs32]`.
    fn lidt(&mut self, at: u32) -> &mut Self {
        self.0.extend_from_slice(&[0x0f, 0x01, 0x1c, 0x25]);
        self.0.extend_from_slice(&at.to_le_bytes());
        self
    }
    fn ud2(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x0f, 0x0b]);
        self
    }
    /// `mov eax, [abs32]`.
    fn load_eax(&mut self, at: u32) -> &mut Self {
        self.0.extend_from_slice(&[0x8b, 0x04, 0x25]);
        self.0.extend_from_slice(&at.to_le_bytes());
        self
    }
    /// `mov [abs32], eax`.
    fn store_eax(&mut self, at: u32) -> &mut Self {
        self.0.extend_from_slice(&[0x89, 0x04, 0x25]);
        self.0.extend_from_slice(&at.to_le_bytes());
        self
    }
    /// `inc eax; out port, al; jmp back` (an endless IO loop).
    fn io_loop(&mut self, port: u8) -> &mut Self {
        self.0.extend_from_slice(&[0xff, 0xc0, 0xe6, port, 0xeb, 0xfa]);
        self
    }
}

/// Where the empty IDT's descriptor (limit 0, base 0) lives.
const EMPTY_IDTR_GPA: u64 = 0x9000;
/// An address no page table maps (PDPT entry 1 is not present).
const UNMAPPED_GVA: u32 = 0x4000_0000;
/// A guest-physical address with no memslot (guest memory is [`MEM_SIZE`] bytes at 0); the
/// `mmio` guest maps it 1:1 with a second 2 MiB page.
pub const MMIO_GPA: u64 = 0x20_0000;
/// Where the second vCPU's code goes.
const CODE2_GPA: u64 = 0x1800;

fn describe(exit: &VcpuExit<'_>) -> LabExit {
    match exit {
        VcpuExit::IoOut(port, _) => LabExit::IoOut(*port),
        VcpuExit::Hlt => LabExit::Hlt,
        VcpuExit::Shutdown => LabExit::Shutdown,
        other => LabExit::Other(exit_name(other)),
    }
}

/// A KVM exit the lab does not expect, in KVM's words (`KVM_EXIT_…`) with what the run
/// structure says about it.
pub(crate) fn exit_name(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::IoOut(port, _) => format!("KVM_EXIT_IO (out to port {port:#x})"),
        VcpuExit::IoIn(port, _) => format!("KVM_EXIT_IO (in from port {port:#x})"),
        VcpuExit::MmioRead(gpa, _) => format!("KVM_EXIT_MMIO (read of {gpa:#x})"),
        VcpuExit::MmioWrite(gpa, _) => format!("KVM_EXIT_MMIO (write to {gpa:#x})"),
        VcpuExit::Hlt => "KVM_EXIT_HLT".into(),
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN".into(),
        VcpuExit::FailEntry(reason, cpu) => {
            format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x} on CPU {cpu})")
        }
        VcpuExit::InternalError => "KVM_EXIT_INTERNAL_ERROR".into(),
        VcpuExit::SystemEvent(kind, _) => format!("KVM_EXIT_SYSTEM_EVENT (type {kind})"),
        VcpuExit::IoapicEoi(vector) => format!("KVM_EXIT_IOAPIC_EOI (vector {vector})"),
        VcpuExit::MemoryFault { gpa, size, .. } => {
            format!("KVM_EXIT_MEMORY_FAULT ({size} bytes at {gpa:#x})")
        }
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN".into(),
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION".into(),
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG".into(),
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN".into(),
        VcpuExit::Intr => "KVM_EXIT_INTR".into(),
        VcpuExit::Unsupported(code) => format!("KVM exit reason {code}"),
        // The s390, PowerPC and Hyper-V exits: not on an x86 lab guest.
        _ => "a KVM exit the lab does not handle".into(),
    }
}

fn run_once(vcpu: &mut VcpuFd) -> Result<LabExit, LabError> {
    let mut exit = vcpu.run().map_err(|e| LabError::Kvm { op: "KVM_RUN", source: e })?;
    // No device behind MMIO: reads return zeros, not what the last exit left in kvm_run.
    if let VcpuExit::MmioRead(_, data) = &mut exit {
        data.fill(0);
    }
    Ok(describe(&exit))
}

/// Runs until an exit that is not an IO exit (at most `max` runs).
fn run_until_stop(vcpu: &mut VcpuFd, max: usize) -> Result<Vec<LabExit>, LabError> {
    let mut exits = Vec::new();
    for _ in 0..max {
        let exit = run_once(vcpu)?;
        let stop = !matches!(exit, LabExit::IoOut(_));
        exits.push(exit);
        if stop {
            break;
        }
    }
    Ok(exits)
}

fn io_loop(vcpu: &mut VcpuFd, index: usize, n: u64) -> Result<Vec<LabExit>, LabError> {
    let mut exits = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let exit = run_once(vcpu)?;
        if !matches!(exit, LabExit::IoOut(_)) {
            return Err(LabError::UnexpectedExit {
                vcpu: index,
                expected: "an IO exit",
                got: exit.to_string(),
            });
        }
        exits.push(exit);
    }
    Ok(exits)
}

/// The kernel thread id of the calling thread (from `/proc/thread-self`).
pub fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Builds the VM of a scenario.
pub fn build(scenario: Scenario) -> Result<Vm, LabError> {
    if let Scenario::Vmx(vmx) = scenario {
        return l1::build(vmx, &l1::find_image(None)?);
    }
    let mut vm = Vm::new()?;
    if let Scenario::InitSipi = scenario {
        init_sipi::build(&mut vm)?;
        return Ok(vm);
    }
    let mut code = Code::default();
    match scenario {
        Scenario::Cr3Switch => {
            for root in CR3_SWITCH_ROOTS {
                vm.add_pml4(root)?;
            }
            for _ in 0..3 {
                for root in CR3_SWITCH_ROOTS {
                    code.load_cr3(root);
                }
            }
            code.out(0x10).hlt();
        }
        Scenario::TripleFault => {
            vm.write(EMPTY_IDTR_GPA, &[0; 10])?;
            for root in [0x5000, 0x6000] {
                vm.add_pml4(root)?;
            }
            code.load_cr3(0x5000).load_cr3(0x6000).load_cr3(PML4_GPA).out(0x10);
            code.lidt(u32::try_from(EMPTY_IDTR_GPA).unwrap_or(0)).ud2();
        }
        Scenario::PfTripleFault => {
            vm.write(EMPTY_IDTR_GPA, &[0; 10])?;
            code.out(0x10).lidt(u32::try_from(EMPTY_IDTR_GPA).unwrap_or(0));
            code.store_eax(UNMAPPED_GVA).hlt();
        }
        Scenario::IoLoop(_) | Scenario::Vmx(_) => {
            code.io_loop(0x10);
        }
        Scenario::Mmio => {
            vm.write_u64(vm::PD_GPA + 8, MMIO_GPA | 0x83)?;
            let mmio = u32::try_from(MMIO_GPA).unwrap_or(0);
            code.out(0x10).mov_rax(0x42).store_eax(mmio).load_eax(mmio).out(0x10).hlt();
        }
        Scenario::MultiVcpu(_) => {
            code.io_loop(0x10);
            let mut second = Code::default();
            second.io_loop(0x11);
            vm.write(CODE2_GPA, &second.0)?;
        }
        Scenario::InitSipi => {} // built above
    }
    vm.write(CODE_GPA, &code.0)?;
    vm.add_vcpu(CODE_GPA)?;
    if let Scenario::MultiVcpu(_) = scenario {
        vm.add_vcpu(CODE2_GPA)?;
    }
    Ok(vm)
}

/// Runs a built scenario to its end.
pub fn run(scenario: Scenario, vm: &mut Vm) -> Result<Outcome, LabError> {
    let tid = current_tid().unwrap_or(0);
    let mut outcome = Outcome::default();
    match scenario {
        Scenario::Vmx(vmx) => return l1::run(vmx, vm),
        Scenario::Cr3Switch | Scenario::TripleFault | Scenario::PfTripleFault => {
            let vcpu = vm.vcpu(0).ok_or(LabError::VcpuPanicked(0))?;
            outcome.exits.push(run_until_stop(vcpu, 16)?);
            outcome.vcpu_tids.push(tid);
        }
        Scenario::IoLoop(n) => {
            let vcpu = vm.vcpu(0).ok_or(LabError::VcpuPanicked(0))?;
            outcome.exits.push(io_loop(vcpu, 0, n)?);
            outcome.vcpu_tids.push(tid);
        }
        Scenario::Mmio => {
            let vcpu = vm.vcpu(0).ok_or(LabError::VcpuPanicked(0))?;
            let mut exits = Vec::new();
            // IO, MMIO write, MMIO read (answered with zeros), IO, HLT.
            for _ in 0..8 {
                let exit = run_once(vcpu)?;
                let stop = matches!(exit, LabExit::Hlt | LabExit::Shutdown);
                exits.push(exit);
                if stop {
                    break;
                }
            }
            outcome.exits.push(exits);
            outcome.vcpu_tids.push(tid);
        }
        Scenario::MultiVcpu(n) => {
            let results: Vec<Result<(Vec<LabExit>, u32), LabError>> = std::thread::scope(|s| {
                let handles: Vec<_> = vm
                    .vcpus_mut()
                    .iter_mut()
                    .enumerate()
                    .map(|(i, vcpu)| {
                        std::thread::Builder::new()
                            .name(format!("vcpu{i}"))
                            .spawn_scoped(s, move || {
                                io_loop(vcpu, i, n).map(|e| (e, current_tid().unwrap_or(0)))
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
            for r in results {
                let (exits, tid) = r?;
                outcome.exits.push(exits);
                outcome.vcpu_tids.push(tid);
            }
        }
        Scenario::InitSipi => outcome = init_sipi::run(vm)?,
    }
    Ok(outcome)
}

/// A recorded lab run.
#[derive(Debug)]
pub struct LabRun {
    /// What the recorder did.
    pub report: RecordReport,
    /// What the guest did.
    pub outcome: Outcome,
}

/// Runs `scenario` while recording it with `opts` (restricted to the calling thread and the
/// threads it starts), and returns both sides. `opts.output` is written unless `opts` is a
/// flight recorder whose trigger never fires.
pub fn record(scenario: Scenario, opts: RecordOptions) -> Result<LabRun, LabError> {
    record_vm(scenario, build(scenario)?, opts)
}

/// [`record`] for a VM already built (with [`build`], or [`l1::build`] for an explicit L1
/// image).
pub fn record_vm(
    scenario: Scenario,
    mut vm: Vm,
    mut opts: RecordOptions,
) -> Result<LabRun, LabError> {
    opts.threads = current_tid().into_iter().collect();
    let recorder = Recorder::start(opts)?;
    let outcome = run(scenario, &mut vm);
    // Stop before the VM is torn down: its teardown is not part of the scenario.
    let report = recorder.finish()?;
    drop(vm);
    Ok(LabRun { report, outcome: outcome? })
}

/// The KVM module in use: `kvm_intel`, `kvm_amd`, `kvm_pvm`, or `unknown`.
pub fn kvm_backend() -> &'static str {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists())
        .unwrap_or("unknown")
}

/// True when the host's KVM uses shadow paging (no EPT/NPT): guest page tables are shadowed,
/// so each guest CR3 gets its own shadow root (`kvm_mmu_get_page` with `direct` clear).
pub fn host_uses_shadow_paging() -> bool {
    let param = |p: &str| std::fs::read_to_string(p).map(|v| v.trim().to_string());
    match kvm_backend() {
        "kvm_intel" => param("/sys/module/kvm_intel/parameters/ept").is_ok_and(|v| v == "N"),
        "kvm_amd" => {
            param("/sys/module/kvm_amd/parameters/npt").is_ok_and(|v| v == "0" || v == "N")
        }
        _ => true,
    }
}

/// Default output name for a scenario.
pub fn default_output(scenario: Scenario) -> PathBuf {
    PathBuf::from(format!("{}.dat", scenario.to_string().replace('=', "-")))
}
