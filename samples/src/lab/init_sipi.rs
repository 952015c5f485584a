//! `init-sipi`: the BSP sends INIT and SIPI to an AP that ran in long mode and now idles in HLT.
//!
//! KVM must reset the MMU context when INIT hits a vCPU whose CR0.PG was 1: the roots of the
//! old paging mode are unusable in the unpaged mode the vCPU restarts in (`0aa1837533e5` "KVM:
//! x86: Properly reset MMU context at vCPU RESET/INIT", bug (d) of the nested-VMX reference).
//! With shadow paging (`kvm_intel ept=0`) the fixed KVM loads direct roots before the AP's first
//! entry after the SIPI; the buggy one enters with the old 64-bit root.
//!
//! The sequence an OS uses to restart a CPU, made to fit one host CPU: only one vCPU thread is
//! busy at a time.
//!
//! 1. vCPU 1 (the AP) runs at [`AP_RIP`], a kernel-style address above 4 GiB, does `out 0x10`
//!    (the loader resumes it) and then `hlt`, which blocks its thread inside `KVM_RUN` (the
//!    in-kernel APIC handles HLT).
//! 2. vCPU 0 (the BSP) switches its APIC to x2APIC mode and writes the ICR twice: INIT, then
//!    SIPI with vector [`SIPI_VECTOR`]; then `out 0x12`.
//! 3. The AP wakes, KVM resets it and starts it in real mode at CS = vector << 8, IP 0: the
//!    trampoline at [`TRAMPOLINE_GPA`] does `out 0x11`.
//!
//! The AP's last exit before the reset is therefore its HLT at a 64-bit RIP, with no userspace
//! exit in between — what the trace needs to show an INIT/SIPI restart.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use kvm_bindings::{KVM_MP_STATE_RUNNABLE, kvm_mp_state};
use kvm_ioctls::VcpuFd;

use super::vm::PD_GPA;
use super::{LabError, LabExit, Outcome, PML4_GPA, Vm, current_tid, run_once};

/// The SIPI vector: the AP restarts at CS = `SIPI_VECTOR << 8`, IP 0.
pub const SIPI_VECTOR: u8 = 0x08;
/// Where the real-mode code runs (`SIPI_VECTOR << 12`).
pub const TRAMPOLINE_GPA: u64 = (SIPI_VECTOR as u64) << 12;
/// The BSP's code (identity-mapped).
pub const BSP_CODE_GPA: u64 = 0x1000;
/// The AP's code, physically.
pub const AP_CODE_GPA: u64 = 0x1c00;
/// Where the low 2 MiB are mapped a second time, as a kernel would map itself.
pub const HIGH_BASE: u64 = 0xffff_ffff_8000_0000;
/// The AP's first instruction.
pub const AP_RIP: u64 = HIGH_BASE + AP_CODE_GPA;
/// The page-directory-pointer table of the high mapping.
const HIGH_PDPT_GPA: u64 = 0xa000;
/// The AP's `out` before it idles.
pub const PORT_AP_BEFORE: u8 = 0x10;
/// The AP's `out` after the SIPI.
pub const PORT_AP_AFTER: u8 = 0x11;
/// The BSP's `out` after sending INIT and SIPI.
pub const PORT_BSP_DONE: u8 = 0x12;
/// How long the BSP waits after the AP re-entered `KVM_RUN` (guest time of the emulated host).
const AP_SETTLE: Duration = Duration::from_millis(200);
/// The AP's progress, as the BSP's thread sees it.
const AP_STARTING: u8 = 0;
const AP_IDLE: u8 = 1;
const AP_FAILED: u8 = 2;

/// The AP: `out 0x10, al; hlt; jmp back to hlt`.
fn ap_code() -> [u8; 5] {
    [0xe6, PORT_AP_BEFORE, 0xf4, 0xeb, 0xfd]
}

/// The BSP: x2APIC on, ICR = INIT to APIC ID 1, ICR = SIPI to APIC ID 1, `out 0x12, al`.
fn bsp_code() -> Vec<u8> {
    let mut c = Vec::new();
    let ecx = |c: &mut Vec<u8>, v: u32| {
        c.push(0xb9);
        c.extend_from_slice(&v.to_le_bytes());
    };
    ecx(&mut c, 0x1b); // IA32_APIC_BASE
    c.extend_from_slice(&[0x0f, 0x32]); // rdmsr
    c.extend_from_slice(&[0x0d, 0x00, 0x0c, 0x00, 0x00]); // or eax, EN | EXTD
    c.extend_from_slice(&[0x0f, 0x30]); // wrmsr
    ecx(&mut c, 0x830); // x2APIC ICR
    c.extend_from_slice(&[0xba, 0x01, 0x00, 0x00, 0x00]); // edx = destination APIC ID 1
    c.extend_from_slice(&[0xb8, 0x00, 0x45, 0x00, 0x00]); // eax = INIT, level assert
    c.extend_from_slice(&[0x0f, 0x30]); // wrmsr
    c.push(0xb8); // eax = STARTUP | vector
    c.extend_from_slice(&(0x4600 | u32::from(SIPI_VECTOR)).to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x30]); // wrmsr
    c.extend_from_slice(&[0xe6, PORT_BSP_DONE, 0xeb, 0xfe]); // out; jmp $
    c
}

/// The real-mode code at [`TRAMPOLINE_GPA`]: `mov al, 0x42; out 0x11, al; jmp $`.
fn trampoline() -> [u8; 6] {
    [0xb0, 0x42, 0xe6, PORT_AP_AFTER, 0xeb, 0xfe]
}

/// Builds the VM: in-kernel interrupt controller, the high mapping, both vCPUs.
pub(super) fn build(vm: &mut Vm) -> Result<(), LabError> {
    vm.create_irqchip()?;
    vm.write_u64(PML4_GPA + 511 * 8, HIGH_PDPT_GPA | 3)?;
    vm.write_u64(HIGH_PDPT_GPA + 510 * 8, PD_GPA | 3)?;
    vm.write(BSP_CODE_GPA, &bsp_code())?;
    vm.write(AP_CODE_GPA, &ap_code())?;
    vm.write(TRAMPOLINE_GPA, &trampoline())?;
    vm.add_vcpu(BSP_CODE_GPA)?;
    let ap = vm.add_vcpu(AP_RIP)?;
    // An AP starts UNINITIALIZED (waiting for INIT/SIPI) under the in-kernel APIC; start it
    // directly, in the long mode add_vcpu set up.
    let vcpu = vm.vcpu(ap).ok_or(LabError::VcpuPanicked(ap))?;
    vcpu.set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE })
        .map_err(|e| LabError::Kvm { op: "KVM_SET_MP_STATE", source: e })
}

fn expect(vcpu: usize, got: LabExit, port: u8, what: &'static str) -> Result<LabExit, LabError> {
    if got == LabExit::IoOut(u16::from(port)) {
        Ok(got)
    } else {
        Err(LabError::UnexpectedExit { vcpu, expected: what, got: got.to_string() })
    }
}

fn run_ap(ap: &mut VcpuFd, state: &AtomicU8) -> Result<Vec<LabExit>, LabError> {
    let before = run_once(ap)
        .and_then(|got| expect(1, got, PORT_AP_BEFORE, "the AP's out 0x10 in long mode"))
        .inspect_err(|_| state.store(AP_FAILED, Ordering::Release))?;
    state.store(AP_IDLE, Ordering::Release);
    // Blocks in HLT until INIT and SIPI arrive, then runs the trampoline.
    let after = expect(1, run_once(ap)?, PORT_AP_AFTER, "the AP's out 0x11 after INIT/SIPI")?;
    Ok(vec![before, after])
}

fn run_bsp(bsp: &mut VcpuFd, state: &AtomicU8) -> Result<Vec<LabExit>, LabError> {
    loop {
        match state.load(Ordering::Acquire) {
            AP_STARTING => std::thread::sleep(Duration::from_millis(1)),
            AP_IDLE => break,
            _ => return Ok(Vec::new()), // the AP's error is the run's error
        }
    }
    std::thread::sleep(AP_SETTLE);
    Ok(vec![expect(0, run_once(bsp)?, PORT_BSP_DONE, "the BSP's out 0x12 after INIT/SIPI")?])
}

/// Runs the scenario: the AP on a thread of its own, the BSP on this one.
pub(super) fn run(vm: &mut Vm) -> Result<Outcome, LabError> {
    let state = AtomicU8::new(AP_STARTING);
    let (bsp, rest) = vm.vcpus_mut().split_at_mut(1);
    let (bsp, ap) = (&mut bsp[0], rest.first_mut().ok_or(LabError::VcpuPanicked(1))?);
    let (ap_result, bsp_result) = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("vcpu1".into())
            .spawn_scoped(s, || run_ap(ap, &state).map(|e| (e, current_tid().unwrap_or(0))));
        let bsp_result = run_bsp(bsp, &state);
        let ap_result = match handle {
            Ok(h) => h.join().unwrap_or(Err(LabError::VcpuPanicked(1))),
            Err(_) => Err(LabError::VcpuPanicked(1)),
        };
        (ap_result, bsp_result)
    });
    let (ap_exits, ap_tid) = ap_result?;
    let mut outcome = Outcome::default();
    outcome.exits.push(bsp_result?);
    outcome.vcpu_tids.push(current_tid().unwrap_or(0));
    outcome.exits.push(ap_exits);
    outcome.vcpu_tids.push(ap_tid);
    Ok(outcome)
}
