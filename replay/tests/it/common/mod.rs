//! The shared event builder (`vmxray_events::test_util`), the model run helpers and
//! generators of well-formed traces.
#![allow(dead_code, missing_docs)]

use vmxray_events::Event;
pub use vmxray_events::test_util::*;
use vmxray_replay::{Anomaly, Model, RuleId, Severity};

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
pub fn well_formed_flat(choices: &[u8]) -> EventBuilder {
    let mut t = EventBuilder::new();
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
                t.push(vmxray_events::EventKind::KvmMsr {
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
pub fn well_formed_nested(choices: &[u8]) -> EventBuilder {
    nested(choices, false)
}

/// The same with L0 shadow paging (`enable_ept=0`): shadow roots for L1 and L2, L2 #PF handled
/// by L0 then reflected, L2 MOV CR3 reflected to L1 (which rewrites GUEST_CR3 through a shadow
/// VMCS), INVVPID.
pub fn well_formed_nested_shadow(choices: &[u8]) -> EventBuilder {
    nested(choices, true)
}

fn nested(choices: &[u8], shadow: bool) -> EventBuilder {
    let mut t = EventBuilder::new();
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
