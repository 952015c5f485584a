//! Test support for every vmxray crate (feature `test-util`): [`EventBuilder`] builds event
//! sequences without readers, and [`skip`] is the rule for tests that need the machine
//! (trace-cmd, tracefs, /dev/kvm, root): they print `SKIP: <reason>` and pass, except under
//! `CI=true`, where a missing capability is a failure.
#![allow(missing_docs)]

use crate::codes::{
    ExceptionVector, ExitCode, ExitReason, IntrInfo, Isa, MmuPageRole, UserspaceExitReason,
    VmInstructionError,
};
use crate::event::VmFailKind;
use crate::{
    Entry, Event, EventKind, ExitFields, ExitInfo, InsnBytes, MmuPage, NestedVmenter, OtherEvent,
};

/// Skips the calling test with `reason`, or panics when the environment variable `CI` is
/// `true`.
pub fn skip(reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but this test cannot run: {reason}"
    );
    eprintln!("SKIP: {reason}");
}

/// Every binary trace committed under the repository's `samples/` (trace.dat and perf.data:
/// real VMX hosts under Bochs, the lab's recordings, trace-cmd's and perf's own captures),
/// sorted.
pub fn binary_samples() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("samples folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "dat" || x == "data") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples"), &mut out);
    out.sort();
    out
}

pub const EXCEPTION_NMI: u32 = 0;
pub const EXTERNAL_INTERRUPT: u32 = 1;
pub const CPUID: u32 = 10;
pub const HLT: u32 = 12;
pub const VMCLEAR: u32 = 19;
pub const VMLAUNCH: u32 = 20;
pub const VMPTRLD: u32 = 21;
pub const VMRESUME: u32 = 24;
pub const VMWRITE: u32 = 25;
pub const CR_ACCESS: u32 = 28;
pub const IO_INSTRUCTION: u32 = 30;
pub const EPT_VIOLATION: u32 = 48;
pub const INVEPT: u32 = 50;
pub const PREEMPTION_TIMER: u32 = 52;
pub const INVVPID: u32 = 53;
pub const PML_FULL: u32 = 62;
pub const FAILED_INVALID_STATE: u32 = 0x8000_0021;

/// L1 4-level shadow root: l4, 8-byte, wux, nxe (role 0x1704 of the real sample).
pub const ROLE_L1: u32 = 0x1704;
/// L2 shadow root (enable_ept=0): as L1 plus guest_mode.
pub const ROLE_L2: u32 = ROLE_L1 | 1 << 17;
/// guest_mmu root for a 4-level EPTP with A/D enabled.
pub const ROLE_GUEST_MMU: u32 = 4 | 7 << 8 | 1 << 17;
/// Direct root (nonpaging shadow / legacy TDP).
pub const ROLE_DIRECT: u32 = 4 | 1 << 7 | 7 << 8;
/// L1 root inside SMM.
pub const ROLE_SMM: u32 = ROLE_L1 | 1 << 24;

/// EPTP: PA 0x7000, 4-level walk (3 << 3), A/D (bit 6), WB (6).
pub const EPTP: u64 = 0x7000 | 3 << 3 | 1 << 6 | 6;

/// Builds an event sequence: one method per tracepoint, each returning the index of the event
/// it pushed, plus a few composite steps (an L1 exit handled by L0, a nested round trip).
/// Every event gets the builder's `pid` and a timestamp 10 after the previous one.
pub struct EventBuilder {
    pub events: Vec<Event>,
    pub pid: i32,
    pub vcpu: u32,
    ts: u64,
}

impl Default for EventBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn vmx(reason: u32) -> ExitCode {
    ExitCode::Vmx(ExitReason(reason))
}

pub fn info(reason: u32, rip: Option<u64>, info1: u64, intr: u32, vcpu: Option<u32>) -> ExitInfo {
    ExitInfo::from(ExitFields {
        reason: vmx(reason),
        isa: Some(Isa::Vmx),
        guest_rip: rip,
        info1: Some(info1),
        info2: Some(0),
        intr_info: Some(IntrInfo(intr)),
        error_code: Some(0),
        vcpu_id: vcpu,
        requests: None,
    })
}

impl EventBuilder {
    pub fn new() -> Self {
        Self { events: Vec::new(), pid: 1000, vcpu: 0, ts: 1_000 }
    }

    /// The index the next event gets.
    pub fn next(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn push(&mut self, kind: EventKind) -> u64 {
        self.ts += 10;
        self.events.push(Event {
            ts: self.ts,
            cpu: 0,
            pid: self.pid,
            tgid: None,
            comm: None,
            kind,
        });
        self.events.len() as u64 - 1
    }

    pub fn exit_full(&mut self, reason: u32, rip: u64, info1: u64, intr: u32) -> u64 {
        let i = info(reason, Some(rip), info1, intr, Some(self.vcpu));
        self.push(EventKind::KvmExit(i))
    }

    pub fn exit(&mut self, reason: u32, rip: u64) -> u64 {
        self.exit_full(reason, rip, 0, 0)
    }

    pub fn nested_vmexit_full(&mut self, reason: u32, rip: u64, info1: u64, intr: u32) -> u64 {
        let i = info(reason, Some(rip), info1, intr, Some(self.vcpu));
        self.push(EventKind::KvmNestedVmexit(i))
    }

    pub fn inject_full(&mut self, reason: u32, info1: u64, intr: u32) -> u64 {
        let i = ExitInfo::from(ExitFields {
            guest_rip: None,
            vcpu_id: None,
            ..info(reason, None, info1, intr, None).fields()
        });
        self.push(EventKind::KvmNestedVmexitInject(i))
    }

    pub fn inject(&mut self, reason: u32) -> u64 {
        self.inject_full(reason, 0, 0)
    }

    pub fn entry(&mut self, rip: u64) -> u64 {
        self.entry_intr(rip, None)
    }

    pub fn entry_intr(&mut self, rip: u64, intr: Option<u32>) -> u64 {
        self.push(EventKind::KvmEntry(Entry {
            vcpu_id: self.vcpu,
            rip: Some(rip),
            immediate_exit: Some(false),
            intr_info: intr.map(IntrInfo),
            error_code: intr.map(|_| 0),
        }))
    }

    /// `kvm_nested_vmenter` from L1 rip 0x100; `pgd` is GUEST_CR3 (ept=false) or the EPTP.
    pub fn vmenter(&mut self, vmcs: u64, nested_rip: u64, ept: bool, pgd: u64) -> u64 {
        self.vmenter_inj(vmcs, nested_rip, ept, pgd, 0)
    }

    pub fn vmenter_inj(
        &mut self,
        vmcs: u64,
        nested_rip: u64,
        ept: bool,
        pgd: u64,
        inj: u32,
    ) -> u64 {
        self.push(EventKind::KvmNestedVmenter(NestedVmenter {
            rip: 0x100,
            vmcs,
            nested_rip,
            int_ctl: 0,
            event_inj: IntrInfo(inj),
            tdp_enabled: Some(ept),
            guest_pgd: Some(pgd),
            isa: Some(Isa::Vmx),
        }))
    }

    pub fn vmenter_failed(&mut self, msg: &str, err: u32) -> u64 {
        self.push(EventKind::KvmNestedVmenterFailed {
            msg: msg.into(),
            err: VmInstructionError(err),
            kind: VmFailKind::of_message(msg),
        })
    }

    pub fn cr(&mut self, write: bool, cr: u32, val: u64) -> u64 {
        self.push(EventKind::KvmCr { write, cr, val })
    }

    pub fn get_page(&mut self, gfn: u64, role: u32, created: bool) -> u64 {
        self.push(EventKind::KvmMmuGetPage {
            page: MmuPage {
                mmu_valid_gen: Some(0),
                gfn,
                role: MmuPageRole(role),
                role_known: u32::MAX,
                root_count: 0,
                unsync: false,
            },
            created,
        })
    }

    pub fn smm(&mut self, entering: bool) -> u64 {
        self.push(EventKind::KvmSmmTransition { vcpu_id: self.vcpu, smbase: 0x30000, entering })
    }

    pub fn lost(&mut self) -> u64 {
        self.push(EventKind::Lost { count: Some(10) })
    }

    pub fn page_fault(&mut self, address: u64, error_code: u64) -> u64 {
        self.push(EventKind::KvmPageFault {
            vcpu_id: Some(self.vcpu),
            guest_rip: Some(0),
            fault_address: address,
            error_code,
        })
    }

    pub fn inj_exception(&mut self, vector: u8) -> u64 {
        self.push(EventKind::KvmInjException {
            exception: ExceptionVector(vector),
            has_error: false,
            error_code: 0,
            reinjected: Some(false),
        })
    }

    pub fn userspace_exit(&mut self, reason: u32) -> u64 {
        self.push(EventKind::KvmUserspaceExit { reason: UserspaceExitReason(reason), errno: None })
    }

    pub fn emulate(&mut self, rip: u64, bytes: &[u8], failed: bool) -> u64 {
        self.push(EventKind::KvmEmulateInsn {
            rip,
            csbase: 0,
            insn: InsnBytes::new(bytes, bytes.len()),
            flags: 0,
            failed,
        })
    }

    pub fn walk(&mut self, addr: u64, pferr: u32) -> u64 {
        self.push(EventKind::KvmMmuPagetableWalk { addr, pferr })
    }

    pub fn pml_full(&mut self) -> u64 {
        let vcpu_id = self.vcpu;
        self.push(EventKind::KvmPmlFull { vcpu_id })
    }

    pub fn other(&mut self, name: &str) -> u64 {
        self.push(EventKind::Other(Box::new(OtherEvent {
            system: "kvm".into(),
            name: name.into(),
            fields: Default::default(),
        })))
    }

    // ---- composite steps ----

    /// An exit from L1 that L0 handles, and the entry after the 3-byte instruction.
    pub fn l1_exit(&mut self, reason: u32, rip: u64) -> u64 {
        let at = self.exit(reason, rip);
        self.entry(rip + 3);
        at
    }

    /// Establishes L1 (a nested exit whose vmcs12 the trace does not know) and enters it.
    pub fn establish_l1(&mut self) {
        self.exit(EXTERNAL_INTERRUPT, 0xdead);
        self.inject(EXTERNAL_INTERRUPT);
        self.entry(0x200);
    }

    /// VMLAUNCH/VMRESUME from L1 at `l1_rip`, nested entry, L2 runs at `nested_rip`.
    /// Returns the index of the `kvm_nested_vmenter`.
    pub fn enter_l2(
        &mut self,
        insn: u32,
        l1_rip: u64,
        vmcs: u64,
        nested_rip: u64,
        ept: bool,
        pgd: u64,
    ) -> u64 {
        self.exit(insn, l1_rip);
        let at = self.vmenter(vmcs, nested_rip, ept, pgd);
        self.entry(nested_rip);
        at
    }

    /// A hardware exit from L2 reflected to L1, and L1 resuming at `host_rip`.
    /// Returns the index of the inject.
    pub fn reflect(&mut self, reason: u32, l2_rip: u64, host_rip: u64) -> u64 {
        self.exit(reason, l2_rip);
        self.nested_vmexit_full(reason, l2_rip, 0, 0);
        let at = self.inject(reason);
        self.entry(host_rip);
        at
    }
}
