//! `init-sipi`: an INIT and a SIPI to a vCPU that ran with paging on, on one host CPU.
//!
//! KVM must reset the MMU context when INIT hits a vCPU whose CR0.PG was 1: the roots of the
//! old paging mode are unusable in the unpaged mode the vCPU restarts in (`0aa1837533e5` "KVM:
//! x86: Properly reset MMU context at vCPU RESET/INIT", bug (d) of the nested-VMX reference).
//! With shadow paging (`kvm_intel ept=0`) the fixed KVM loads direct roots before the first entry
//! after the SIPI; the buggy one enters with the old 64-bit root.
//!
//! The usual way to get there is a second vCPU sending INIT and SIPI through its APIC, which
//! needs two host CPUs for two busy vCPU threads. Here the loader plays the other CPU: the vCPU
//! is vCPU 1 (an AP; vCPU 0 is created but never runs), runs long-mode code until `out 0x10`,
//! then the loader latches an INIT (`KVM_SET_VCPU_EVENTS`, the `smi.latched_init` field KVM
//! also uses to migrate a pending INIT) and a SIPI (`KVM_SET_MP_STATE` SIPI_RECEIVED, vector
//! [`SIPI_VECTOR`]). The next `KVM_RUN` takes both in `kvm_apic_accept_events`: reset, then the
//! vCPU starts in real mode at `SIPI_VECTOR << 12`, where it does `out 0x11`. Both steps need
//! the in-kernel APIC.

use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    KVM_VCPUEVENT_VALID_SMM, kvm_mp_state,
};
use kvm_ioctls::VcpuFd;

use super::LabError;

/// The SIPI vector: the vCPU restarts at CS = `SIPI_VECTOR << 8`, IP 0.
pub const SIPI_VECTOR: u8 = 0x08;
/// Where the real-mode code runs (`SIPI_VECTOR << 12`).
pub const TRAMPOLINE_GPA: u64 = (SIPI_VECTOR as u64) << 12;
/// The vCPU that is INITed (an AP, so that INIT leaves it waiting for the SIPI).
pub const VCPU: usize = 1;
/// The port the long-mode code writes before the INIT.
pub const PORT_BEFORE: u8 = 0x10;
/// The port the real-mode code writes after the SIPI.
pub const PORT_AFTER: u8 = 0x11;

/// The real-mode code at [`TRAMPOLINE_GPA`]: `mov al, 0x42; out 0x11, al; jmp $`.
pub fn trampoline() -> [u8; 6] {
    [0xb0, 0x42, 0xe6, PORT_AFTER, 0xeb, 0xfe]
}

/// An AP starts UNINITIALIZED (waiting for INIT/SIPI) under the in-kernel APIC; the loader
/// starts it directly, in the long mode `Vm::add_vcpu` set up.
pub fn make_runnable(vcpu: &VcpuFd) -> Result<(), LabError> {
    vcpu.set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE })
        .map_err(|e| LabError::Kvm { op: "KVM_SET_MP_STATE", source: e })
}

/// Latches an INIT and a SIPI with [`SIPI_VECTOR`] for `vcpu`; the next `KVM_RUN` delivers both.
pub fn latch_init_sipi(vcpu: &VcpuFd) -> Result<(), LabError> {
    let mut events = vcpu
        .get_vcpu_events()
        .map_err(|e| LabError::Kvm { op: "KVM_GET_VCPU_EVENTS", source: e })?;
    events.flags = KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    events.smi.smm = 0;
    events.smi.latched_init = 1;
    events.sipi_vector = u32::from(SIPI_VECTOR);
    vcpu.set_vcpu_events(&events)
        .map_err(|e| LabError::Kvm { op: "KVM_SET_VCPU_EVENTS", source: e })?;
    vcpu.set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_SIPI_RECEIVED })
        .map_err(|e| LabError::Kvm { op: "KVM_SET_MP_STATE", source: e })
}
