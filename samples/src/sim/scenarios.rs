//! The scenario scripts: what L1 and its L2s do, per vCPU. KVM's side is in [`super::engine`].

use vmxray_events::codes::{ExceptionVector, UserspaceExitReason};
use vmxray_events::irq::{AcceptIrq, DeliveryMode, IcrLow, IrqEvent, PartialWord};
use vmxray_events::{EventKind, FieldValue};

use super::engine::{Entered, Mode, Vcpu, Vmcs12, eptp, intr, reason, role};
use super::kernel::HwExit;
use super::rng::Rng;
use super::truth::{BugSite, GroundTruth, Landmark, VcpuThread, Vmcs12Field, Writer};
use super::{Bug, Scenario, SimConfig, Simulation};

/// Where a separation kernel's code lives (identity-mapped L1, Muen-like addresses).
const SK_SCHED_RIP: u64 = 0x0000_0000_0010_2a40;
const SK_VMENTRY_RIP: u64 = 0x0000_0000_0010_4d80;
const SK_HOST_RIP: u64 = 0x0000_0000_0010_4e10;
/// A KVM-like L1 (Linux): its `vmx_vmexit` and the VMRESUME in `__vmx_vcpu_run`.
const LX_HOST_RIP: u64 = 0xffff_ffff_c0a1_3f40;
const LX_VMENTRY_RIP: u64 = 0xffff_ffff_c0a1_3e9b;
const LX_CODE: u64 = 0xffff_ffff_c0a0_0000;

/// Runs one validated configuration: every script in turn, then the per-vCPU streams merged.
pub(crate) fn run(cfg: &SimConfig) -> Simulation {
    let mut vcpus = Vec::new();
    for mut job in plan(cfg, false) {
        (job.script)(&mut job.vcpus);
        vcpus.extend(job.vcpus);
    }
    vcpus.sort_by_key(|v| v.id);
    merge(cfg, vcpus)
}

/// What one script drives: its vCPUs, in id order (one, or the two of `init`), and what it
/// does with them. Each vCPU draws from its own random stream and keeps its own clock, so
/// scripts run in any order, or at once on their own threads ([`super::stream`]).
pub(crate) struct Job {
    /// The vCPUs the script drives.
    pub(crate) vcpus: Vec<Vcpu>,
    /// The script.
    pub(crate) script: Script,
}

/// A script: what it does with its vCPUs.
pub(crate) type Script = Box<dyn FnOnce(&mut [Vcpu]) + Send>;

/// The scripts of a configuration. With `unbounded`, every main loop runs until the vCPU is
/// stopped (a streaming run that has the events it wants marks it dead) instead of for
/// `iterations` rounds, and the background vCPUs run as long; `iterations` still places what
/// happens once (the SMI of `smm`).
pub(crate) fn plan(cfg: &SimConfig, unbounded: bool) -> Vec<Job> {
    let root = Rng::new(cfg.seed);
    let mut meta = root.fork(0x6d65_7461);
    let base_pid = i32::try_from(meta.range(1_200, 60_000)).unwrap_or(4_000);
    let start = meta.range(80, 4_000) * 1_000_000_000 + meta.range(0, 999_999_999);
    let n = cfg.vcpu_count();
    let vcpus: Vec<Vcpu> = (0..n)
        .map(|id| {
            let pid = base_pid + 3 + i32::try_from(id).unwrap_or(0);
            let offset = u64::from(id) * 1_700 + meta.range(0, 900);
            Vcpu::new(id, pid, start + offset, root.fork(u64::from(id) + 1), cfg.kernel, cfg.kvm)
        })
        .collect();
    let iters = cfg.iterations;
    let rounds = if unbounded { u32::MAX } else { iters };
    let subjects = cfg.subjects;
    let mut jobs: Vec<Job> = Vec::new();
    let mut vcpus = vcpus.into_iter();
    let Some(v0) = vcpus.next() else { return jobs };
    let mut background = true;
    match cfg.scenario {
        Scenario::SepKernel | Scenario::SepKernelNoEpt | Scenario::Noise => {
            let mut p = SepParams::new(subjects, rounds, cfg.scenario != Scenario::SepKernelNoEpt);
            if cfg.scenario == Scenario::Noise {
                p.noise = 70;
                p.l1_dirty_logging = true;
            }
            for v in std::iter::once(v0).chain(vcpus.by_ref()) {
                let p = p.clone();
                jobs.push(solo(v, move |v| sep_kernel(v, &p)));
            }
            background = false;
        }
        Scenario::Muen | Scenario::MuenEpt | Scenario::MuenShadow => {
            let mut p =
                SepParams::new(subjects.max(2), rounds.max(4), cfg.scenario == Scenario::MuenEpt);
            p.idle_subject = Some(1);
            let mut v0 = v0;
            v0.l0_ept = cfg.scenario != Scenario::MuenShadow;
            p.cr3_switches = v0.l0_ept;
            jobs.push(solo(v0, move |v| sep_kernel(v, &p)));
        }
        Scenario::LateVmFail => jobs.push(solo(v0, move |v| late_vmfail(v, rounds))),
        Scenario::Invept => jobs.push(solo(v0, move |v| invept(v, rounds.max(2)))),
        Scenario::Init => {
            let mut pair = vec![v0];
            pair.extend(vcpus.next());
            jobs.push(Job {
                vcpus: pair,
                script: Box::new(move |vs: &mut [Vcpu]| {
                    if let [bsp, ap, ..] = vs {
                        init(bsp, ap, iters, unbounded);
                    }
                }),
            });
        }
        Scenario::EvmcsRestore => jobs.push(solo(v0, move |v| evmcs_restore(v, rounds))),
        Scenario::DirtyLog => jobs.push(solo(v0, move |v| dirty_log(v, rounds.max(5)))),
        Scenario::Smm => {
            let smi_round = iters.max(2) / 2;
            jobs.push(solo(v0, move |v| smm(v, rounds.max(2), smi_round)));
        }
        // Issue 15's stuck and dying vCPUs: a fixed number of rounds even when streaming.
        Scenario::EptLivelock => jobs.push(solo(v0, move |v| super::stuck::ept_livelock(v, iters))),
        Scenario::IrqReinjectLoop => {
            jobs.push(solo(v0, move |v| super::stuck::irq_reinject_loop(v, iters)));
        }
        Scenario::ExceptionDeliveryLoop => {
            jobs.push(solo(v0, move |v| super::stuck::exception_delivery_loop(v, iters)));
        }
        Scenario::EfaultLoop => jobs.push(solo(v0, move |v| super::stuck::efault_loop(v, iters))),
        Scenario::EoiLoop => jobs.push(solo(v0, move |v| super::stuck::eoi_loop(v, iters))),
        Scenario::FailedNestedEntry => {
            jobs.push(solo(v0, move |v| super::nested_faults::failed_nested_entry(v, iters)));
        }
        Scenario::NestedTripleFault => {
            jobs.push(solo(v0, move |v| super::nested_faults::nested_triple_fault(v, iters)));
        }
        Scenario::NsvmRsm => jobs.push(solo(v0, move |v| super::nested_faults::nsvm_rsm(v, iters))),
        Scenario::NsvmMigrate => {
            jobs.push(solo(v0, move |v| super::nested_faults::nsvm_migrate(v, iters)));
        }
    }
    // The stuck-vCPU scenarios run a VM without nesting: its other vCPUs are plain guests
    // (on shadow paging where the scenario's L0 is); the AMD one's are plain SVM guests.
    match cfg.scenario {
        Scenario::EptLivelock
        | Scenario::IrqReinjectLoop
        | Scenario::ExceptionDeliveryLoop
        | Scenario::EfaultLoop => {
            let l0_ept = cfg.scenario != Scenario::ExceptionDeliveryLoop;
            for v in vcpus.by_ref() {
                jobs.push(solo(v, move |v| {
                    v.l0_ept = l0_ept;
                    v.l1_rip = 0xffff_ffff_8100_0000 + u64::from(v.id) * 0x40;
                    v.enter();
                    super::stuck::plain_guest(v, 2 + iters.min(6));
                }));
            }
            background = false;
        }
        Scenario::NsvmRsm | Scenario::NsvmMigrate => {
            for v in vcpus.by_ref() {
                jobs.push(solo(v, move |v| {
                    super::nested_faults::svm_plain_guest(v, 2 + iters.min(6))
                }));
            }
            background = false;
        }
        _ => {}
    }
    if background {
        // Other vCPUs: the same L1 runs its own subjects there; plain fixed-KVM noise.
        // enable_ept is a host-wide module parameter: without it, no vCPU has nested EPT.
        let l0_ept =
            !matches!(cfg.scenario, Scenario::LateVmFail | Scenario::Init | Scenario::MuenShadow);
        let rounds = if unbounded { u32::MAX } else { iters.min(6) };
        for mut v in vcpus {
            v.l0_ept = l0_ept;
            let mut p = SepParams::new(subjects.min(3), rounds, l0_ept);
            p.vmptr_base += 0x10_0000;
            jobs.push(solo(v, move |v| sep_kernel(v, &p)));
        }
    }
    jobs
}

/// A job driving one vCPU.
fn solo(v: Vcpu, script: impl FnOnce(&mut Vcpu) + Send + 'static) -> Job {
    Job {
        vcpus: vec![v],
        script: Box::new(move |vs: &mut [Vcpu]| {
            if let Some(v) = vs.first_mut() {
                script(v);
            }
        }),
    }
}

// ---- merging ----------------------------------------------------------------------------

/// Merges the per-thread event lists by (timestamp, CPU): each CPU's buffer is in time order
/// and the reader merges buffers by timestamp, as tracefs readers do.
fn merge(cfg: &SimConfig, vcpus: Vec<Vcpu>) -> Simulation {
    let mut order: Vec<(u64, u32, usize, usize)> = Vec::new();
    for (vi, v) in vcpus.iter().enumerate() {
        for (li, e) in v.events.iter().enumerate() {
            order.push((e.ts, e.cpu, vi, li));
        }
    }
    order.sort_unstable();
    let mut global: Vec<Vec<usize>> = vcpus.iter().map(|v| vec![0; v.events.len()]).collect();
    for (gi, &(_, _, vi, li)) in order.iter().enumerate() {
        global[vi][li] = gi;
    }
    let total = order.len();
    let map = |vi: usize, li: usize| global[vi].get(li).copied().unwrap_or(total);
    let mut occurrences = Vec::new();
    let mut landmarks = Vec::new();
    let mut writes = Vec::new();
    for (vi, v) in vcpus.iter().enumerate() {
        for s in &v.sites {
            occurrences.push(BugSite {
                bug: s.bug,
                vcpu: v.id,
                trigger: map(vi, s.trigger),
                first_difference: map(vi, s.first_difference),
                divergence: map(vi, s.divergence),
                note: s.note,
                cycle_starts: s.cycle_starts.iter().map(|&li| map(vi, li)).collect(),
            });
        }
        for l in &v.landmarks {
            landmarks.push(Landmark {
                what: l.what,
                vcpu: v.id,
                at: map(vi, l.at),
                evidence: l.evidence.iter().map(|&li| map(vi, li)).collect(),
                note: l.note,
            });
        }
        for (li, w) in &v.writes {
            let mut w = w.clone();
            w.before_event = map(vi, *li);
            writes.push(w);
        }
    }
    occurrences.sort_by_key(|s| s.divergence);
    landmarks.sort_by_key(|l| l.at);
    writes.sort_by_key(|w| (w.ts, w.vcpu));
    let threads = vcpus
        .iter()
        .map(|v| VcpuThread { vcpu_id: v.id, pid: v.pid, comm: v.comm.to_string(), cpu: v.cpu })
        .collect();
    let events = order.iter().map(|&(_, _, vi, li)| vcpus[vi].events[li].clone()).collect();
    let truth = GroundTruth {
        scenario: cfg.scenario.name(),
        kernel: cfg.kernel,
        kvm: cfg.kvm,
        seed: cfg.seed,
        bug: occurrences.first().cloned(),
        occurrences,
        vcpus: threads,
        landmarks,
        vmcs12_writes: writes,
    };
    Simulation { events, truth }
}

// ---- the separation kernel --------------------------------------------------------------

#[derive(Clone)]
struct SepParams {
    subjects: u32,
    iterations: u32,
    nested_ept: bool,
    /// Percent chance of L0-kept noise between L2 instructions.
    noise: u64,
    /// Muen: this subject has HLT exiting disabled and idles in HLT for a few rounds.
    idle_subject: Option<usize>,
    /// L1's memory is dirty-logged (PML in L1 is normal).
    l1_dirty_logging: bool,
    /// Subjects switch between their page tables now and then (off: each keeps its CR3, as
    /// the real L1's subjects do; with L0 on shadow paging an L2 MOV CR3 that L0 handles
    /// leaves vmcs12.GUEST_CR3 stale, reference §2.7 "Open point", not simulated there).
    cr3_switches: bool,
    vmptr_base: u64,
}

impl SepParams {
    fn new(subjects: u32, iterations: u32, nested_ept: bool) -> Self {
        Self {
            subjects,
            iterations,
            nested_ept,
            noise: 30,
            idle_subject: None,
            l1_dirty_logging: false,
            cr3_switches: true,
            vmptr_base: 0x0000_0000_0800_0000,
        }
    }
}

struct Subject {
    vmptr: u64,
    code: u64,
    cr3s: Vec<u64>,
    /// Crashed in L1's eyes (a #PF it intercepts): no longer scheduled.
    crashed: bool,
}

fn subjects_for(v: &Vcpu, p: &SepParams) -> Vec<Subject> {
    (0..u64::from(p.subjects))
        .map(|s| {
            let slot = u64::from(v.id) * 32 + s;
            let cr3_base = if p.nested_ept {
                // L2 GPAs (each subject has its own guest-physical space; distinct anyway).
                0x0000_0000_0200_0000 + s * 0x10_0000
            } else {
                // L1 GPAs, Muen-like (`16#0000000010ff9000#` in the original report).
                0x0000_0000_1000_0000 + slot * 0x10_0000 + 0xf9000
            };
            Subject {
                vmptr: p.vmptr_base + slot * 0x1000,
                code: 0x0000_0000_0040_0000 + s * 0x1_0000,
                cr3s: (0..3).map(|k| cr3_base - k * 0x1000).collect(),
                crashed: false,
            }
        })
        .collect()
}

/// An L1 separation kernel (Muen-like) on one vCPU: N subjects round-robin, one vmcs12 each,
/// time slices ended by L1's VMX preemption timer (emulated by L0, so the slice end is a host
/// interrupt kept by L0 followed by a synthesized PREEMPTION_TIMER exit).
fn sep_kernel(v: &mut Vcpu, p: &SepParams) {
    let mut subjects = subjects_for(v, p);
    v.l1_rip = SK_SCHED_RIP;
    v.l1_cr3 = 0x0000_0000_001f_e000;
    v.dirty_logging = p.l1_dirty_logging;
    if p.l1_dirty_logging {
        // Migration of L1 under way: the PML buffer already holds L1 GPAs.
        v.pml_entries = u32::try_from(v.rng.range(470, 505)).unwrap_or(480);
    }
    for (s, subj) in subjects.iter().enumerate() {
        let pml4 = 0x0000_0000_3000_0000 + (u64::from(v.id) * 32 + s as u64) * 0x10_0000;
        let host_cr3 = v.l1_cr3;
        v.l1_setup_vmcs12(
            subj.vmptr,
            Vmcs12 {
                guest_rip: subj.code,
                guest_cr3: subj.cr3s[0],
                eptp: if p.nested_ept { eptp(pml4) } else { 0 },
                nested_ept: p.nested_ept,
                launched: false,
                activity_hlt: false,
                entry_intr: 0,
                host_rip: SK_HOST_RIP,
                host_cr3,
                evmcs: false,
            },
        );
    }
    v.enter();
    // Muen bug (a) bookkeeping: rounds the idle subject has spent halted.
    let mut idle_rounds = 0u32;
    let mut stale_synced = false;
    for round in 0..p.iterations {
        for s in 0..subjects.len() {
            if v.dead {
                return;
            }
            if subjects[s].crashed {
                continue;
            }
            v.l1_rip = SK_SCHED_RIP;
            v.l1_step(0x20, 800, 4_000);
            if v.rng.chance(15) {
                v.l1_host_interrupt(super::engine::HOST_LOCAL_TIMER_VECTOR);
            }
            if v.rng.chance(25) {
                v.l1_wrmsr_tsc_deadline();
            }
            let pages = u32::try_from(v.rng.range(0, 6)).unwrap_or(0);
            v.l1_dirty_pages(pages);
            if subjects.len() > 1 || round == 0 {
                v.l1_vmptrld(subjects[s].vmptr);
            }
            let idle = p.idle_subject == Some(s);
            if idle && round > 0 && idle_rounds >= 2 {
                // L1 wakes its idle subject with a virtual interrupt (vector 0x30).
                v.l1_vmwrite(Vmcs12Field::VmEntryIntrInfo, u64::from(intr::ext(0x30)), false);
            }
            v.l1_rip = SK_VMENTRY_RIP;
            let expected_cr3 = subjects[s].cr3s[0];
            let vmenter_idx = v.next_index() + 1;
            let entered = v.l1_vmentry();
            if idle
                && stale_synced
                && v.sites.first().is_some_and(|site| site.divergence == usize::MAX)
            {
                // The first re-entry of the poisoned vmcs12: with nested_ept=n (6.1+) its
                // kvm_nested_vmenter shows the other subject's CR3.
                let shown = v.current_vmcs12().map(|x| x.guest_cr3);
                if v.kernel.has_nested_vmenter()
                    && !p.nested_ept
                    && shown != Some(expected_cr3)
                    && let Some(site) = v.sites.first_mut()
                {
                    site.first_difference = vmenter_idx;
                    site.divergence = vmenter_idx;
                }
            }
            match entered {
                Entered::Halted => {
                    // §2.5: no kvm_entry; the vCPU blocks until L1's preemption timer fires.
                    let blocked = v.rng.range(200_000, 900_000);
                    v.wakeup(blocked);
                    let cr3_now = v.vmcs02_cr3;
                    let inject = v.nested_vmexit(reason::PREEMPTION_TIMER, 0, 0, 0, 0);
                    idle_rounds += 1;
                    if cr3_now != expected_cr3 && !stale_synced && v.kvm.has(Bug::HltStaleCr3) {
                        stale_synced = true;
                        v.mark(
                            Bug::HltStaleCr3,
                            inject,
                            usize::MAX,
                            usize::MAX,
                            "synthesized exit after an HLT-cancelled nested VM-Enter synced the \
                             previous subject's CR3 into this vmcs12",
                        );
                    }
                }
                Entered::Running => {
                    let crash =
                        idle && v.current_vmcs12().is_some_and(|x| x.guest_cr3 != expected_cr3);
                    run_subject_slice(v, &mut subjects[s], p, idle, crash, &mut idle_rounds);
                    if crash {
                        subjects[s].crashed = true;
                    }
                }
            }
        }
    }
}

/// One time slice of a subject that hardware entered.
fn run_subject_slice(
    v: &mut Vcpu,
    subj: &mut Subject,
    p: &SepParams,
    idle: bool,
    crash: bool,
    idle_rounds: &mut u32,
) {
    let cr3s: &[u64] = if idle || !p.cr3_switches { &[] } else { &subj.cr3s };
    v.l2_run(subj.code, cr3s);
    if crash {
        // The subject runs on another subject's page tables: its next fetch faults, and L1
        // (which intercepts #PF to detect crashed subjects) gets EXCEPTION_NMI.
        let addr = v.l2_rip;
        let x = HwExit::new(reason::EXCEPTION_NMI, 0).qual(addr).intr(intr::PF, 0x14);
        let idx = v.l2_exit_reflect(x);
        if let Some(site) = v.sites.first_mut()
            && site.divergence == usize::MAX
        {
            site.first_difference = idx;
            site.divergence = idx;
        }
        v.l1_step(0x80, 2_000, 9_000);
        return;
    }
    if idle && *idle_rounds == 0 {
        // HLT exiting is off: L2's HLT exits to L0, which emulates it (§2.5 "How a Muen-style
        // L1 reaches this"); the vCPU blocks in L2 until L1's preemption timer fires.
        v.l2_exit_l0(HwExit::new(reason::HLT, 0), false, |v| {
            v.l2_rip += 1;
            v.l2_halted = true;
        });
        let blocked = v.rng.range(200_000, 900_000);
        v.wakeup(blocked);
        v.nested_vmexit(reason::PREEMPTION_TIMER, 0, 0, 0, 0);
        *idle_rounds += 1;
        return;
    }
    if idle {
        *idle_rounds = 0;
    }
    // The slice ends either while the subject runs (a host timer interrupt, then the
    // synthesized PREEMPTION_TIMER) or while L1 handles the subject's last exit (the entry
    // after it is an immediate exit, as the real recordings show).
    let expires_in_l1 = v.rng.chance(50);
    let service_exits = v.rng.range(0, 2).max(u64::from(expires_in_l1));
    for n in 0..service_exits {
        v.l2_noise(p.noise);
        v.l2_run(subj.code, cr3s);
        reflect_service_exit(v);
        // L1 handles the exit, advances the subject's RIP, and resumes it.
        v.l1_step(0x60, 1_500, 8_000);
        v.l1_rip = SK_VMENTRY_RIP;
        if expires_in_l1 && n + 1 == service_exits {
            v.l1_vmentry_timer_expired();
            return;
        }
        if v.l1_vmentry() == Entered::Halted {
            return;
        }
        v.l2_run(subj.code, cr3s);
    }
    v.l2_noise(p.noise);
    v.l2_run(subj.code, cr3s);
    v.l2_slice_end();
}

/// A subject exit that L1 intercepts: CPUID, port I/O or a hypercall. L1 then advances the
/// subject's RIP past the instruction (a shadowed VMWRITE: no exit, but in the truth).
fn reflect_service_exit(v: &mut Vcpu) {
    let (x, len) = match v.rng.below(3) {
        0 => (HwExit::new(reason::CPUID, 0), 2),
        1 => (HwExit::new(reason::IO_INSTRUCTION, 0).qual(0x03f8_0000), 1),
        _ => (HwExit::new(reason::VMCALL, 0), 3),
    };
    let rip = v.l2_rip;
    v.l2_exit_reflect(x);
    v.l1_step(0x30, 1_000, 5_000);
    v.l1_vmwrite(Vmcs12Field::GuestRip, rip + len, false);
}

// ---- (b) late VM-Fail with EPT off ------------------------------------------------------

fn late_vmfail(v: &mut Vcpu, iterations: u32) {
    v.l0_ept = false;
    let l1_cr3 = 0x0000_0000_3a41_c000;
    let l2_cr3 = 0x0000_0000_0513_7000;
    let vmptr = 0x0000_0000_7a2e_1000;
    let shadow_root_hpa = 0x0000_0001_0a3c_5000;
    v.l1_rip = LX_CODE + 0x1_2000;
    v.enter();
    // L1 loads its CR3 (every CR3 access exits without EPT): reference §3b step 1.
    v.l1_step(0x40, 2_000, 6_000);
    v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x3), 3, move |v| {
        v.ev(EventKind::KvmCr { write: true, cr: 3, val: l1_cr3 });
        v.get_page(l1_cr3 >> 12, role::LONG_MODE_ROOT);
        v.shadow_root = Some((l1_cr3 >> 12, role::LONG_MODE_ROOT));
    });
    v.l1_cr3 = l1_cr3;
    v.l1_setup_vmcs12(
        vmptr,
        Vmcs12 {
            guest_rip: 0x0000_0000_0010_0000,
            guest_cr3: l2_cr3,
            eptp: 0,
            nested_ept: false,
            launched: false,
            activity_hlt: false,
            entry_intr: 0,
            host_rip: LX_HOST_RIP,
            host_cr3: l1_cr3,
            evmcs: false,
        },
    );
    v.l1_step(0x100, 3_000, 9_000);
    v.l1_vmptrld(vmptr);
    v.l1_rip = LX_VMENTRY_RIP;
    let r1 = v.l1_rip;
    // VMLAUNCH passes every CC() check, then the hardware fails the entry (§2.6).
    v.hw_exit(HwExit::new(reason::VMLAUNCH, r1), false);
    let snapshot =
        v.current_vmcs12().cloned().unwrap_or_else(|| super::engine::empty_vmcs12(vmptr));
    v.enter_non_root_mode(&snapshot, r1);
    v.get_page(l2_cr3 >> 12, role::LONG_MODE_ROOT | role::GUEST_MODE);
    v.enter();
    v.ev(EventKind::KvmNestedVmenterFailed {
        msg: "hardware VM-instruction error: ".into(),
        err: vmxray_events::codes::VmInstructionError::ENTRY_INVALID_CONTROL_FIELD,
        kind: vmxray_events::VmFailKind::LateHardware,
    });
    // nested_vmx_restore_host_state: vcpu->arch.cr3 = vmcs01.GUEST_CR3, then
    // kvm_mmu_reset_context. Fixed: L1's CR3 was stashed there at entry. Buggy: the shadow
    // root's HPA still is.
    v.mode = Mode::L1;
    let restored = if v.kvm.has(Bug::LateVmFailCr3) { shadow_root_hpa } else { l1_cr3 };
    let idx = v.get_page(restored >> 12, role::LONG_MODE_ROOT);
    v.shadow_root = Some((restored >> 12, role::LONG_MODE_ROOT));
    if v.kvm.has(Bug::LateVmFailCr3) {
        v.mark(
            Bug::LateVmFailCr3,
            idx,
            idx,
            idx,
            "after the late VM-Fail, L1's root is acquired for gfn = shadow-root HPA >> 12 instead of its CR3 >> 12",
        );
    }
    v.l1_rip = r1 + 3;
    v.enter();
    if v.kvm.has(Bug::LateVmFailCr3) {
        l1_dies_on_garbage_cr3(v);
        return;
    }
    // L1 looks at its state (a CR3 read exits without EPT) and retries with a fixed vmcs12.
    v.l1_step(0x30, 2_000, 6_000);
    v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x13), 3, move |v| {
        v.ev(EventKind::KvmCr { write: false, cr: 3, val: l1_cr3 });
    });
    v.l1_step(0x200, 5_000, 20_000);
    v.l1_rip = LX_VMENTRY_RIP;
    if v.l1_vmentry() != Entered::Running {
        return;
    }
    let cr3s = [l2_cr3, l2_cr3 + 0x3000, l2_cr3 + 0x8000];
    for _ in 0..iterations {
        if v.dead {
            break;
        }
        v.l2_run(0x0000_0000_0010_0000, &[]);
        v.l2_noise(30);
        // Without EPT every L2 MOV CR3 exits; L0 handles it (L1 did not ask for CR3 exits).
        let next = cr3s[v.rng.below(cr3s.len())];
        let exit_rip = v.l2_rip;
        v.l2_exit_l0(HwExit::new(reason::CR_ACCESS, 0).qual(0x3), true, move |v| {
            v.ev(EventKind::KvmCr { write: true, cr: 3, val: next });
            v.l2_cr3 = next;
            v.get_page(next >> 12, role::LONG_MODE_ROOT | role::GUEST_MODE);
            v.shadow_root = Some((next >> 12, role::LONG_MODE_ROOT | role::GUEST_MODE));
            v.l2_rip = exit_rip + 3;
        });
        v.l2_run(0x0000_0000_0010_0000, &[]);
        reflect_service_exit(v);
        v.l1_step(0x40, 2_000, 8_000);
        v.l1_rip = LX_VMENTRY_RIP;
        if v.l1_vmentry() != Entered::Running {
            return;
        }
    }
    v.l2_run(0x0000_0000_0010_0000, &[]);
    v.l2_slice_end();
}

/// L1 runs with a garbage root: its next fetch faults, the #PF cannot be delivered, #DF
/// neither: triple fault, KVM_EXIT_SHUTDOWN.
fn l1_dies_on_garbage_cr3(v: &mut Vcpu) {
    let rip = v.l1_rip;
    let (kernel, id) = (v.kernel, v.id);
    v.hw_exit(HwExit::new(reason::EXCEPTION_NMI, rip).qual(rip).intr(intr::PF, 0x10), false);
    v.ev(kernel.page_fault_event(id, rip, rip, 0x10));
    v.ev(EventKind::KvmMmuPagetableWalk { addr: rip, pferr: 0x10 });
    v.ev(EventKind::KvmMmuPagingElement { pte: 0, level: 4 });
    v.ev(EventKind::KvmMmuWalkerError { pferr: 0x10 });
    inj_exception(v, ExceptionVector::PF, Some(0x10));
    v.enter_injecting(intr::PF, 0x10);
    v.run_for(300, 900);
    let mut x =
        HwExit::new(reason::EXCEPTION_NMI, rip).qual(0xffff_ffff_8200_0e00).intr(intr::PF, 0x10);
    x.idt_vectoring = u64::from(intr::PF);
    v.hw_exit(x, false);
    inj_exception(v, ExceptionVector::DF, Some(0));
    v.enter_injecting(0x8000_0b08, 0);
    v.run_for(300, 900);
    v.hw_exit(HwExit::new(reason::TRIPLE_FAULT, rip), false);
    v.ev(EventKind::KvmUserspaceExit { reason: UserspaceExitReason::SHUTDOWN, errno: Some(0) });
    v.dead = true;
}

fn inj_exception(v: &mut Vcpu, vector: ExceptionVector, err: Option<u32>) {
    let reinjected = v.kernel.injection_has_reinjected().then_some(false);
    v.ev(EventKind::KvmInjException {
        exception: vector,
        has_error: err.is_some(),
        error_code: err.unwrap_or(0),
        reinjected,
    });
}

// ---- (c) INVEPT -------------------------------------------------------------------------

/// A KVM-like L1 with one L2 and one EPTP; it maps L2 memory on EPT violations, and now and
/// then changes an EPT12 entry and flushes with INVEPT before resuming.
fn invept(v: &mut Vcpu, iterations: u32) {
    let vmptr = 0x0000_0000_6f3a_2000;
    let e = eptp(0x0000_0000_4e7d_1000);
    let l2_code = 0xffff_ffff_8100_0000;
    v.l1_rip = LX_CODE + 0x4_4000;
    v.l1_cr3 = 0x0000_0000_0a81_6000;
    v.l1_setup_vmcs12(
        vmptr,
        Vmcs12 {
            guest_rip: l2_code + 0x1_0000,
            guest_cr3: 0x0000_0000_0260_a000,
            eptp: e,
            nested_ept: true,
            launched: false,
            activity_hlt: false,
            entry_intr: 0,
            host_rip: LX_HOST_RIP,
            host_cr3: 0x0000_0000_0a81_6000,
            evmcs: false,
        },
    );
    v.enter();
    v.l1_step(0x80, 2_000, 6_000);
    v.l1_vmptrld(vmptr);
    v.l1_rip = LX_VMENTRY_RIP;
    v.l1_vmentry();
    let mut ept12_page = 0x0000_0000_4e7e_0000u64 >> 12;
    for round in 0..iterations {
        if v.dead {
            break;
        }
        v.l2_run(l2_code, &[]);
        v.l2_noise(30);
        v.l2_run(l2_code, &[]);
        // L2 touches a GPA that EPT12 does not map: L0 walks EPT12, finds nothing, and
        // reflects the EPT violation to L1.
        let gpa = v.rng.range(0x1_0000, 0x7_ffff) << 12;
        let qual = 0x181;
        let (kernel, id, rip) = (v.kernel, v.id, v.l2_rip);
        v.exit_here(HwExit::new(reason::EPT_VIOLATION, 0).qual(qual));
        v.ev(kernel.page_fault_event(id, rip, gpa, qual));
        // L0 walks EPT12 for the L2 GPA (read: PFERR_USER); the level-1 entry is not present,
        // so the walk fails (`kvm_mmu_walker_error`) and L0 reflects the EPT violation.
        v.ev(EventKind::KvmMmuPagetableWalk { addr: gpa, pferr: 0x4 });
        for level in (2..=4u32).rev() {
            let table = (e & !0xfff) + u64::from(5 - level) * 0x1000;
            v.ev(EventKind::KvmMmuPagingElement { pte: table | 0x107, level });
        }
        v.ev(EventKind::KvmMmuWalkerError { pferr: 0x4 });
        v.nested_vmexit(reason::EPT_VIOLATION, qual, 0, 0, 0);
        // L1 edits EPT12: the page is shadowed by guest_mmu, so the write faults into L0
        // and the shadow page goes unsync.
        v.l1_step(0x120, 2_000, 9_000);
        ept12_page += 1;
        let page_gpa = (ept12_page << 12) | (v.rng.range(0, 511) * 8);
        let (kernel, id, rip) = (v.kernel, v.id, v.l1_rip);
        v.l1_exit(HwExit::new(reason::EPT_VIOLATION, 0).qual(0x1aa), 0, move |v| {
            v.ev(kernel.page_fault_event(id, rip, page_gpa, 0x1aa));
            // The fast path cannot make a write-tracked (shadowed) page writable (the real
            // l1-invept recordings show it before the unsync): ret RET_PF_INVALID.
            let spte = 0x0200_0000_3084_3075 | (page_gpa & !0xfff);
            v.other(
                "kvmmmu",
                "fast_page_fault",
                &[
                    ("vcpu_id", FieldValue::U64(u64::from(id))),
                    ("cr2_or_gpa", FieldValue::U64(page_gpa)),
                    ("error_code", FieldValue::U64(0x3)),
                    ("sptep", FieldValue::U64(0xffff_8880_3e4d_2080)),
                    ("old_spte", FieldValue::U64(spte)),
                    ("new_spte", FieldValue::U64(spte)),
                    // RET_PF_INVALID in the 6.12+ numbering events carry (3 on 6.1; a
                    // writer of a 6.1 trace.dat converts it back).
                    ("ret", FieldValue::U64(4)),
                ],
            );
            v.unsync_page(page_gpa >> 12);
        });
        v.l1_step(0x40, 1_000, 4_000);
        let flush = round % 2 == 1 || round + 1 == iterations;
        let mut invept_idx = None;
        if flush {
            // INVEPT single-context. Fixed: the guest_mmu roots of that EPTP are freed
            // (f8aa7e3958bc). Buggy: the handler is a TODO.
            let buggy = v.kvm.has(Bug::InveptNoRootReload);
            invept_idx = Some(v.next_index());
            let operand = v.l1_operand_gva();
            v.l1_exit(HwExit::new(reason::INVEPT, 0).qual(0x50), 7, move |v| {
                v.walk_operand(operand, 4);
                if !buggy {
                    v.guest_mmu_root = None;
                }
            });
        }
        v.l1_step(0x60, 1_000, 4_000);
        v.l1_rip = LX_VMENTRY_RIP;
        let entry_idx = v.next_index() + 2;
        let had_root = v.guest_mmu_root.is_some();
        v.l1_vmentry();
        if let (Some(trigger), true) = (invept_idx, had_root && v.kvm.has(Bug::InveptNoRootReload))
        {
            let entry_idx = if v.kernel.has_nested_vmenter() { entry_idx } else { entry_idx - 1 };
            v.mark(
                Bug::InveptNoRootReload,
                trigger,
                entry_idx,
                entry_idx,
                "L2 entry after INVEPT without reacquiring the guest_mmu root (no kvm_mmu_get_page for EPTP>>12)",
            );
        }
    }
    v.l2_run(l2_code, &[]);
    v.l2_slice_end();
}

// ---- (d) INIT of a paging vCPU ----------------------------------------------------------

/// vCPU 0 (the BSP) restarts vCPU 1 with INIT/SIPI/SIPI while vCPU 1, which ran in long mode,
/// sits in its offline HLT loop. L0 uses shadow paging.
fn init(bsp: &mut Vcpu, ap: &mut Vcpu, iterations: u32, unbounded: bool) {
    for v in [&mut *bsp, &mut *ap] {
        v.l0_ept = false;
        v.l1_rip = 0xffff_ffff_8100_0000 + u64::from(v.id) * 0x40;
        v.l1_cr3 = 0x0000_0000_0280_a000;
        v.shadow_root = Some((v.l1_cr3 >> 12, role::LONG_MODE_ROOT));
        v.shadow_pages.insert((v.l1_cr3 >> 12, role::LONG_MODE_ROOT));
        v.enter();
    }
    // The AP runs processes, then goes offline (play_dead: cli; hlt).
    for _ in 0..iterations.min(4) {
        long_mode_noise(ap);
    }
    ap.l1_step(0x10, 2_000, 6_000);
    ap.l1_rip = 0xffff_ffff_8103_a6f1;
    ap.exit_here(HwExit::new(reason::HLT, 0));
    ap.l1_rip += 1;
    for _ in 0..iterations.min(4) {
        long_mode_noise(bsp);
    }
    // INIT, then SIPI with vector 0x99 (x2APIC ICR writes on the BSP).
    bsp.now = bsp.now.max(ap.now) + 20_000;
    send_ipi(bsp, 1, 0x4500);
    let woke = ap.wakeup(bsp.now.saturating_sub(ap.now) + 3_000);
    // kvm_vcpu_reset: CR0 = 0x60000010, CR4 = EFER = 0, and since 0aa1837533e5 (old CR0.PG
    // was 1) kvm_mmu_reset_context(). The AP then waits for SIPI.
    let buggy = ap.kvm.has(Bug::InitMmuNotReset);
    if !buggy {
        ap.shadow_root = None;
    }
    bsp.now = bsp.now.max(ap.now) + 150_000;
    send_ipi(bsp, 1, 0x4699);
    ap.wakeup(bsp.now.saturating_sub(ap.now) + 3_000);
    ap.l1_rip = 0;
    ap.l1_cr3 = 0;
    let first = ap.next_index();
    if ap.shadow_root.is_none() {
        // Unpaged guest on the shadow MMU: four direct PAE roots.
        for i in 0..4u64 {
            ap.get_page(i << 18, role::DIRECT_PAE_ROOT);
        }
        ap.shadow_root = Some((0, role::DIRECT_PAE_ROOT));
    } else {
        ap.mark(
            Bug::InitMmuNotReset,
            woke,
            first,
            first,
            "first entry after INIT/SIPI of a vCPU that had CR0.PG=1 reuses the long-mode root (no direct root acquired)",
        );
    }
    ap.enter();
    if buggy {
        ap.run_for(500, 3_000);
        ap.exit_here(HwExit::new(reason::TRIPLE_FAULT, 0));
        ap.ev(EventKind::KvmUserspaceExit {
            reason: UserspaceExitReason::SHUTDOWN,
            errno: Some(0),
        });
        ap.dead = true;
    } else {
        trampoline_to_long_mode(ap);
        for _ in 0..iterations.min(4) {
            long_mode_noise(ap);
        }
    }
    for _ in 0..iterations.min(3) {
        long_mode_noise(bsp);
    }
    if unbounded {
        // Both vCPUs go on until stopped, the one behind in time first, so that neither
        // runs far ahead of the other in the merged stream.
        while !(bsp.dead && ap.dead) {
            if !ap.dead && (bsp.dead || ap.now <= bsp.now) {
                long_mode_noise(ap);
            } else {
                long_mode_noise(bsp);
            }
        }
    }
}

/// x2APIC ICR write (MSR 0x830) to `dest` with `icr_low`: `kvm_msr`, `kvm_apic_ipi`,
/// `kvm_apic_accept_irq`.
fn send_ipi(v: &mut Vcpu, dest: u32, icr_low: u32) {
    v.l1_step(0x30, 1_000, 3_000);
    v.l1_exit(HwExit::new(reason::MSR_WRITE, 0), 2, move |v| {
        v.msr(true, 0x830, (u64::from(dest) << 32) | u64::from(icr_low));
        v.ev(EventKind::Irq(IrqEvent::ApicIpi {
            icr_low: IcrLow(PartialWord::full(u64::from(icr_low))),
            dest_id: dest,
        }));
        v.ev(EventKind::Irq(IrqEvent::ApicAcceptIrq(AcceptIrq {
            apicid: dest,
            delivery_mode: DeliveryMode(((icr_low >> 8) & 7) as u8),
            level: false,
            vector: (icr_low & 0xff) as u8,
            coalesced: None,
        })));
    });
}

/// A long-mode L1 (no nesting) doing ordinary things: process switches (every CR3 load
/// exits without EPT), timer MSR writes, host interrupts.
fn long_mode_noise(v: &mut Vcpu) {
    if v.dead {
        return;
    }
    v.l1_step(0x40, 5_000, 40_000);
    match v.rng.below(3) {
        0 => {
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
        1 => v.l1_wrmsr_tsc_deadline(),
        _ => v.l1_host_interrupt(super::engine::HOST_LOCAL_TIMER_VECTOR),
    }
}

/// The AP trampoline: protected mode, CR3, PAE, EFER.LME, paging (each CR write exits
/// without unrestricted guest).
fn trampoline_to_long_mode(v: &mut Vcpu) {
    let pgd = 0x0000_0000_0009_c000;
    v.l1_step(0x20, 500, 2_000);
    v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x0), 3, |v| {
        v.ev(EventKind::KvmCr { write: true, cr: 0, val: 0x11 });
    });
    v.l1_step(0x20, 500, 2_000);
    v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x4), 3, |v| {
        v.ev(EventKind::KvmCr { write: true, cr: 4, val: 0x20 });
    });
    v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x3), 3, move |v| {
        v.ev(EventKind::KvmCr { write: true, cr: 3, val: pgd });
    });
    v.l1_exit(HwExit::new(reason::MSR_WRITE, 0), 2, |v| {
        v.msr(true, 0xc000_0080, 0x900);
    });
    v.l1_exit(HwExit::new(reason::CR_ACCESS, 0).qual(0x0), 3, move |v| {
        v.ev(EventKind::KvmCr { write: true, cr: 0, val: 0x8000_0011 });
        v.get_page(pgd >> 12, role::LONG_MODE_ROOT);
        v.shadow_root = Some((pgd >> 12, role::LONG_MODE_ROOT));
    });
    v.l1_cr3 = pgd;
    v.l1_rip = 0xffff_ffff_8100_0100;
}

// ---- (e) eVMCS restore ------------------------------------------------------------------

/// Migration destination of a Hyper-V-style L1 (enlightened VMCS) that was in L2: userspace
/// restores the nested state in guest mode, an L1 interrupt is pending, so KVM takes a nested
/// exit before the first L2 entry.
fn evmcs_restore(v: &mut Vcpu, iterations: u32) {
    let evmcs_gpa = 0x0000_0000_0b4d_6000;
    let e = eptp(0x0000_0000_2c31_5000);
    let host_rip = 0xffff_f800_0c21_4a30u64;
    let l2_code = 0xffff_f806_1200_0000u64;
    let vmcs = Vmcs12 {
        guest_rip: l2_code + 0x3_1a7c,
        guest_cr3: 0x0000_0000_001a_d000,
        eptp: e,
        nested_ept: true,
        launched: true,
        activity_hlt: false,
        entry_intr: 0,
        host_rip,
        host_cr3: 0x0000_0000_0061_5000,
        evmcs: true,
    };
    // KVM_SET_NESTED_STATE on a fresh vCPU (RIP still at the reset vector): §2.12.
    for (field, value) in [
        (Vmcs12Field::LaunchState, 1),
        (Vmcs12Field::EnableEpt, 1),
        (Vmcs12Field::EptPointer, vmcs.eptp),
        (Vmcs12Field::GuestCr3, vmcs.guest_cr3),
        (Vmcs12Field::GuestRip, vmcs.guest_rip),
        (Vmcs12Field::HostRip, vmcs.host_rip),
        (Vmcs12Field::HostCr3, vmcs.host_cr3),
    ] {
        v.record(u64::MAX, field, value, Writer::L0Restore, true);
    }
    v.vmcs12s.insert(evmcs_gpa, vmcs.clone());
    v.current = Some(evmcs_gpa);
    v.l1_rip = 0xfff0;
    v.enter_non_root_mode(&vmcs, 0xfff0);
    v.run_for(40_000, 200_000);
    // First KVM_RUN: L1's timer interrupt is pending, so vmx_check_nested_events exits to L1
    // (acknowledge-on-exit: the vector is in the exit information).
    let inject = v.nested_vmexit(reason::EXTERNAL_INTERRUPT, 0, 0, intr::ext(0xd1), 0);
    v.run_for(1_000, 5_000);
    if v.kvm.has(Bug::EvmcsStaleExit) {
        // The exit never reached the eVMCS (f2c7ef3ba955 cancelled the request that maps it):
        // Hyper-V reads stale exit information, finds it inconsistent, and bugchecks through
        // the Hyper-V crash MSRs.
        v.l1_rip = host_rip + 0x1_b3c0;
        let first = v.next_index();
        for (msr, value) in (0x4000_0100u32..).zip([0x20001u64, 0x11, 0xffff_f806_1203_1a7c, 0, 0])
        {
            v.l1_step(0x10, 300, 1_500);
            v.l1_exit(HwExit::new(reason::MSR_WRITE, 0), 2, move |v| {
                v.msr(true, msr, value);
            });
        }
        v.l1_step(0x10, 300, 1_500);
        v.exit_here(HwExit::new(reason::MSR_WRITE, 0));
        v.msr(true, 0x4000_0105, 0x8000_0000_0000_0000);
        v.ev(EventKind::KvmUserspaceExit {
            reason: UserspaceExitReason::SYSTEM_EVENT,
            errno: Some(0),
        });
        v.dead = true;
        v.mark(
            Bug::EvmcsStaleExit,
            inject,
            first,
            first,
            "after a nested exit taken before the first L2 entry of an eVMCS restore, L1 acts on stale exit data (Hyper-V bugcheck via crash MSRs)",
        );
        return;
    }
    // Hyper-V handles its interrupt: EOI through the synthetic EOI MSR, then resumes L2 at
    // the same RIP (L2 executed nothing since the restore).
    v.l1_rip = host_rip + 0x2_0410;
    v.l1_exit(HwExit::new(reason::MSR_WRITE, 0), 2, |v| {
        v.msr(true, 0x4000_0070, 0);
    });
    for _ in 0..iterations {
        if v.dead {
            break;
        }
        v.l1_step(0x80, 2_000, 9_000);
        v.l1_rip = host_rip + 0x6a1;
        if v.l1_vmentry() != Entered::Running {
            return;
        }
        v.l2_run(l2_code, &[]);
        v.l2_noise(30);
        v.l2_run(l2_code, &[]);
        let rip = v.l2_rip;
        v.l2_exit_reflect(HwExit::new(reason::VMCALL, 0));
        v.l1_step(0x40, 1_000, 6_000);
        v.l1_vmwrite(Vmcs12Field::GuestRip, rip + 3, false);
    }
}

// ---- (f) dirty logging while L2 runs ----------------------------------------------------

fn dirty_log(v: &mut Vcpu, iterations: u32) {
    let vmptr = 0x0000_0000_5d02_7000;
    let e = eptp(0x0000_0000_1b9c_2000);
    let l2_code = 0xffff_ffff_8100_0000;
    v.l1_rip = LX_CODE + 0x3_2000;
    v.l1_cr3 = 0x0000_0000_0b1e_4000;
    v.l1_setup_vmcs12(
        vmptr,
        Vmcs12 {
            guest_rip: l2_code + 0x20_0000,
            guest_cr3: 0x0000_0000_0431_1000,
            eptp: e,
            nested_ept: true,
            launched: false,
            activity_hlt: false,
            entry_intr: 0,
            host_rip: LX_HOST_RIP,
            host_cr3: 0x0000_0000_0b1e_4000,
            evmcs: false,
        },
    );
    v.enter();
    v.l1_step(0x40, 2_000, 6_000);
    v.l1_vmptrld(vmptr);
    v.l1_rip = LX_VMENTRY_RIP;
    v.l1_vmentry();
    let mut first_logged_write = None;
    for round in 0..iterations {
        if v.dead {
            break;
        }
        if round == 1 {
            // Userspace (the migration thread) turns on dirty logging for L1's memslots; the
            // PML buffer already holds L1 GPAs logged before.
            v.dirty_logging = true;
            v.pml_entries = u32::try_from(v.rng.range(430, 480)).unwrap_or(440);
        }
        if round > 1 && round % 3 == 1 {
            // KVM_CLEAR_DIRTY_LOG: pages are write-protected again.
            v.dirtied.clear();
        }
        v.l2_run(l2_code, &[]);
        let base = v.rng.range(0x1_0000, 0x3_0000) << 12;
        for page in 0..v.rng.range(24, 40) {
            let gpa = base + page * 0x1000;
            if v.dirty_logging && first_logged_write.is_none() && !v.dirtied.contains(&gpa) {
                first_logged_write = Some(v.next_index());
            }
            if let Some(idx) = v.l2_write_page(gpa)
                && v.sites.is_empty()
            {
                let first = first_logged_write.unwrap_or(idx);
                v.mark(
                    Bug::PmlInL2,
                    first,
                    first,
                    idx,
                    "PML is enabled in vmcs02: L2 writes do not fault while dirty logging is on and a PML_FULL exit occurs in L2",
                );
            }
        }
        v.l2_noise(20);
        v.l2_run(l2_code, &[]);
        let rip = v.l2_rip;
        v.l2_exit_reflect(HwExit::new(reason::IO_INSTRUCTION, 0).qual(0x0cf8_0000 | 0x3));
        v.l1_step(0x80, 2_000, 9_000);
        v.l1_vmwrite(Vmcs12Field::GuestRip, rip + 1, false);
        v.l1_rip = LX_VMENTRY_RIP;
        if v.l1_vmentry() != Entered::Running {
            return;
        }
    }
    v.l2_run(l2_code, &[]);
    v.l2_slice_end();
}

// ---- SMM --------------------------------------------------------------------------------

/// An SMI reaches the vCPU while L2 runs: silent nested exit, SMM entry, the firmware's SMI
/// handler, RSM (an intercepted #UD, emulated), and back into L2 through
/// `nested_vmx_enter_non_root_mode` (a `kvm_nested_vmenter` with no VMRESUME before it).
fn smm(v: &mut Vcpu, iterations: u32, smi_round: u32) {
    let vmptr = 0x0000_0000_3c11_8000;
    let e = eptp(0x0000_0000_1f20_4000);
    let l2_code = 0xffff_ffff_8100_0000;
    let smbase = 0x0003_0000;
    v.l1_rip = LX_CODE + 0x5_1000;
    v.l1_cr3 = 0x0000_0000_0c3a_7000;
    v.l1_setup_vmcs12(
        vmptr,
        Vmcs12 {
            guest_rip: l2_code + 0x8_8000,
            guest_cr3: 0x0000_0000_0711_2000,
            eptp: e,
            nested_ept: true,
            launched: false,
            activity_hlt: false,
            entry_intr: 0,
            host_rip: LX_HOST_RIP,
            host_cr3: 0x0000_0000_0c3a_7000,
            evmcs: false,
        },
    );
    v.enter();
    v.l1_step(0x40, 2_000, 6_000);
    v.l1_vmptrld(vmptr);
    v.l1_rip = LX_VMENTRY_RIP;
    v.l1_vmentry();
    for round in 0..iterations {
        if v.dead {
            break;
        }
        v.l2_run(l2_code, &[]);
        v.l2_noise(30);
        v.l2_run(l2_code, &[]);
        if round == smi_round {
            // The SMI IPI kicks the vCPU out of L2 (host reschedule vector).
            let x = HwExit::new(reason::EXTERNAL_INTERRUPT, 0)
                .intr(intr::ext(super::engine::HOST_RESCHEDULE_VECTOR), 0);
            v.exit_here(x);
            smi_in_l2(v, smbase, vmptr);
        }
        reflect_service_exit(v);
        v.l1_step(0x40, 1_000, 6_000);
        v.l1_rip = LX_VMENTRY_RIP;
        if v.l1_vmentry() != Entered::Running {
            return;
        }
    }
    v.l2_run(l2_code, &[]);
    v.l2_slice_end();
}

fn smi_in_l2(v: &mut Vcpu, smbase: u64, vmptr: u64) {
    // vmx_enter_smm: silent nested_vmx_vmexit(-1): vmcs12 synced, no inject.
    let (rip, cr3) = (v.l2_rip, v.vmcs02_cr3);
    let l2_rip_at_smi = rip;
    if let Some(x) = v.vmcs12s.get_mut(&vmptr) {
        x.guest_rip = rip;
        x.guest_cr3 = cr3;
    }
    v.record(vmptr, Vmcs12Field::GuestRip, rip, Writer::L0Exit, false);
    v.record(vmptr, Vmcs12Field::GuestCr3, cr3, Writer::L0Exit, false);
    v.mode = Mode::L1;
    let id = v.id;
    v.ev(EventKind::KvmSmmTransition { vcpu_id: id, smbase, entering: true });
    // role.smm changed: kvm_mmu_reset_context frees every root, guest_mmu's included.
    v.guest_mmu_root = None;
    v.l1_rip = 0x8000;
    v.enter();
    // The SMI handler talks to the chipset (APM status port, handled in userspace).
    for _ in 0..v.rng.range(1, 2) {
        v.l1_step(0x30, 3_000, 15_000);
        v.l1_exit(HwExit::new(reason::IO_INSTRUCTION, 0).qual(0x00b3_0008), 1, |v| {
            v.ev(EventKind::KvmPio { write: false, port: 0xb3, size: 1, count: 1, val: Some(0) });
            v.ev(EventKind::KvmUserspaceExit { reason: UserspaceExitReason::IO, errno: Some(0) });
        });
    }
    v.l1_step(0x40, 2_000, 9_000);
    let rsm_rip = v.l1_rip;
    v.exit_here(HwExit::new(reason::EXCEPTION_NMI, 0).intr(intr::UD, 0));
    v.ev(EventKind::KvmSmmTransition { vcpu_id: id, smbase, entering: false });
    // vmx_leave_smm: smm.guest_mode was set, so back into L2 (from_vmentry = false).
    let snapshot =
        v.current_vmcs12().cloned().unwrap_or_else(|| super::engine::empty_vmcs12(vmptr));
    v.enter_non_root_mode(&snapshot, rsm_rip);
    v.l2_rip = l2_rip_at_smi;
    v.l2_hw_entry(&snapshot);
}
