//! A tiny event builder: one method per tracepoint, each returning the index of the event it
//! pushed, plus a few composite steps (an L1 exit handled by L0, a nested round trip).
#![allow(dead_code, missing_docs)]

use vmxray_capture::codes::{
    ExceptionVector, ExitCode, ExitReason, IntrInfo, Isa, MmuPageRole, UserspaceExitReason,
    VmInstructionError,
};
use vmxray_capture::{
    Entry, Event, EventKind, ExitFields, ExitInfo, InsnBytes, MmuPage, NestedVmenter, OtherEvent,
};
use vmxray_replay::{Anomaly, Model, RuleId, Severity};

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

pub struct Trace {
    pub events: Vec<Event>,
    pub pid: i32,
    pub vcpu: u32,
    ts: u64,
}

impl Default for Trace {
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

impl Trace {
    pub fn new() -> Self {
        Self { events: Vec::new(), pid: 1000, vcpu: 0, ts: 1_000 }
    }

    /// The index the next event gets.
    pub fn next(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn push(&mut self, kind: EventKind) -> u64 {
        self.ts += 10;
        self.events.push(Event { ts: self.ts, cpu: 0, pid: self.pid, comm: None, kind });
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

pub fn run(events: &[Event]) -> Vec<Anomaly> {
    Model::default().run(events)
}

/// The anomalies of one rule.
pub fn of(anomalies: &[Anomaly], rule: RuleId) -> Vec<Anomaly> {
    anomalies.iter().filter(|a| a.rule == rule).cloned().collect()
}

/// Asserts nothing above info was reported.
pub fn assert_clean(events: &[Event]) {
    let found: Vec<_> = run(events).into_iter().filter(|a| a.severity > Severity::Info).collect();
    assert!(found.is_empty(), "unexpected anomalies: {found:#?}");
}

/// Asserts exactly one anomaly of `rule`, at `at`, with `evidence` included in its evidence;
/// returns it.
pub fn assert_one(events: &[Event], rule: RuleId, at: u64, evidence: &[u64]) -> Anomaly {
    let all = run(events);
    let found = of(&all, rule);
    assert_eq!(found.len(), 1, "expected one {rule} anomaly, got {all:#?}");
    let a = found.into_iter().next().unwrap();
    assert_eq!(a.at.0, at, "{a}");
    for e in evidence {
        assert!(a.evidence.iter().any(|x| x.0 == *e), "evidence {e} missing from {a:?}");
    }
    a
}

/// A well-formed non-nested trace (shadow paging, SMM now and then), driven by `choices`.
pub fn well_formed_flat(choices: &[u8]) -> Trace {
    let mut t = Trace::new();
    let mut rip = 0x1_0000u64;
    let mut cr3_gfn = 0x100u64;
    let mut cr0 = 0x8005_0033u64;
    for (i, c) in choices.iter().enumerate() {
        rip += 4;
        if c % 16 == 15 {
            // Toggle CR0.WP: KVM resets the MMU context and reloads the root.
            t.exit(CR_ACCESS, rip);
            cr0 ^= 1 << 16;
            t.cr(true, 0, cr0);
            t.get_page(cr3_gfn, ROLE_L1, false);
            t.entry(rip + 3);
            continue;
        }
        match c % 8 {
            0 => {
                t.exit(CPUID, rip);
                t.entry(rip + 2);
            }
            1 => {
                t.exit(IO_INSTRUCTION, rip);
                t.userspace_exit(2);
                t.entry(rip + 1);
            }
            2 => {
                t.exit(CR_ACCESS, rip);
                cr3_gfn = 0x100 + u64::from(*c >> 3);
                t.cr(true, 3, cr3_gfn << 12);
                if c & 0x80 != 0 {
                    t.get_page(cr3_gfn, ROLE_L1, c & 0x40 != 0);
                }
                t.entry(rip + 3);
            }
            3 => {
                let cr2 = 0x40_0000 + (i as u64) * 0x1000;
                t.exit_full(EXCEPTION_NMI, rip, cr2, 0x8000_0b0e);
                t.page_fault(cr2, 2);
                t.walk(cr2, 2);
                if c & 0x80 != 0 {
                    t.inj_exception(14);
                }
                t.entry(rip);
            }
            4 => {
                t.exit(EXTERNAL_INTERRUPT, rip);
                t.entry(rip);
            }
            5 => {
                t.exit(EXTERNAL_INTERRUPT, rip);
                t.smm(true);
                t.get_page(0, ROLE_DIRECT | 1 << 24, false);
                t.entry(0x8000);
                t.exit_full(EXCEPTION_NMI, 0x8010, 0, 0x8000_0306);
                t.smm(false);
                t.get_page(cr3_gfn, ROLE_L1, false);
                t.entry(rip);
            }
            6 => {
                t.exit(HLT, rip);
                t.other("kvm_vcpu_wakeup");
                t.entry(rip + 1);
            }
            _ => {
                t.exit(31, rip);
                t.push(vmxray_capture::EventKind::KvmMsr {
                    write: false,
                    index: 0x10,
                    data: 0,
                    exception: false,
                });
                t.entry(rip + 2);
            }
        }
    }
    t
}

struct Vmcs {
    vmptr: u64,
    nested_rip: u64,
    ept: bool,
    pgd: u64,
    host_rip: u64,
    launched: bool,
}

/// A well-formed nested trace (L0 EPT; three vmcs12, nested EPT on one of them; HLT-path
/// entries; reflected and L0-handled L2 exits), driven by `choices`.
pub fn well_formed_nested(choices: &[u8]) -> Trace {
    nested(choices, false)
}

/// The same with L0 shadow paging (`enable_ept=0`): shadow roots for L1 and L2, L2 #PF handled
/// by L0 then reflected, L2 MOV CR3 reflected to L1 (which rewrites GUEST_CR3 through a shadow
/// VMCS), INVVPID.
pub fn well_formed_nested_shadow(choices: &[u8]) -> Trace {
    nested(choices, true)
}

fn nested(choices: &[u8], shadow: bool) -> Trace {
    let mut t = Trace::new();
    let l1_cr3_gfn = 0x55u64;
    let mut vmcs: Vec<Vmcs> = (0..3u64)
        .map(|i| Vmcs {
            vmptr: 0x1000_0000 + i * 0x1000,
            nested_rip: 0xa000 + i * 0x1000,
            ept: i == 2 && !shadow,
            pgd: if i == 2 { EPTP } else { 0x2000_0000 + i * 0x10_0000 },
            host_rip: 0x200 + i * 0x100,
            launched: false,
        })
        .collect();
    let mut cur: Option<usize> = None;
    let mut in_l2 = false;
    let mut l1_rip = 0x10_0000u64;
    let mut l2_step = 0u64;
    t.establish_l1();
    if shadow {
        t.exit(CR_ACCESS, 0x300);
        t.cr(true, 3, l1_cr3_gfn << 12);
        t.get_page(l1_cr3_gfn, ROLE_L1, true);
        t.entry(0x303);
    }
    for c in choices {
        if in_l2 && shadow && c % 4 == 3 {
            let Some(v) = cur.map(|i| &mut vmcs[i]) else { break };
            let rip = v.nested_rip;
            l2_step += 1;
            if c & 0x80 != 0 {
                // #PF: L0 walks L2's tables; a genuine guest fault goes to L1.
                let cr2 = 0x40_0000 + l2_step * 0x1000;
                t.exit_full(EXCEPTION_NMI, rip, cr2, 0x8000_0b0e);
                t.nested_vmexit_full(EXCEPTION_NMI, rip, cr2, 0x8000_0b0e);
                t.page_fault(cr2, 2);
                t.inject_full(EXCEPTION_NMI, cr2, 0x8000_0b0e);
            } else {
                // MOV CR3 intercepted by L1, which emulates it and rewrites GUEST_CR3.
                t.exit_full(CR_ACCESS, rip, 3, 0);
                t.nested_vmexit_full(CR_ACCESS, rip, 3, 0);
                t.inject_full(CR_ACCESS, 3, 0);
                v.pgd = 0x2000_0000 + l2_step * 0x1000;
                v.nested_rip += 3;
            }
            t.get_page(l1_cr3_gfn, ROLE_L1, false);
            t.entry(v.host_rip);
            v.launched = true;
            in_l2 = false;
            continue;
        }
        if in_l2 {
            let Some(v) = cur.map(|i| &mut vmcs[i]) else { break };
            let rip = v.nested_rip;
            match c % 3 {
                0 => {
                    l2_step += 1;
                    let gpa = 0x8000_0000 + l2_step * 0x1000;
                    t.exit_full(EPT_VIOLATION, rip, 0x182, 0);
                    t.nested_vmexit_full(EPT_VIOLATION, rip, 0x182, 0);
                    t.page_fault(gpa, 0x182);
                    t.entry(rip);
                }
                _ => {
                    let reason = if c % 3 == 1 { CPUID } else { EXTERNAL_INTERRUPT };
                    t.exit(reason, rip);
                    t.nested_vmexit_full(reason, rip, 0, 0);
                    t.inject(reason);
                    if shadow {
                        t.get_page(l1_cr3_gfn, ROLE_L1, false);
                    }
                    t.entry(v.host_rip);
                    if reason == CPUID {
                        v.nested_rip += 2;
                    }
                    v.launched = true;
                    in_l2 = false;
                }
            }
            continue;
        }
        l1_rip += 0x10;
        match c % 6 {
            0 | 1 => {
                t.l1_exit(CPUID, l1_rip);
            }
            2 => {
                t.l1_exit(VMPTRLD, l1_rip);
                cur = Some(usize::from(*c >> 3) % vmcs.len());
            }
            3 | 4 => {
                let Some(v) = cur.map(|i| &mut vmcs[i]) else { continue };
                t.exit(if v.launched { VMRESUME } else { VMLAUNCH }, l1_rip);
                t.vmenter(v.vmptr, v.nested_rip, v.ept, v.pgd);
                if v.ept {
                    t.get_page(v.pgd >> 12, ROLE_GUEST_MMU, !v.launched);
                }
                if shadow {
                    t.get_page(v.pgd >> 12, ROLE_L2, !v.launched);
                }
                if c % 6 == 4 && c & 0x80 != 0 {
                    // HLT activity: the timer fires before L2 runs.
                    t.inject(PREEMPTION_TIMER);
                    if shadow {
                        t.get_page(l1_cr3_gfn, ROLE_L1, false);
                    }
                    t.entry(v.host_rip);
                    v.launched = true;
                } else {
                    t.entry(v.nested_rip);
                    in_l2 = true;
                }
            }
            _ => {
                t.l1_exit(if shadow && c & 0x80 != 0 { INVVPID } else { VMWRITE }, l1_rip);
            }
        }
    }
    t
}
