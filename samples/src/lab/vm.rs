//! The one module of vmxray that uses `unsafe`: guest memory for KVM.
//!
//! A [`Vm`] owns an anonymous shared mapping registered as guest RAM at GPA 0 and a set of
//! vCPUs in 64-bit long mode (identity-mapped 2 MiB page, flat segments), as the Python guests
//! of `shared/tools/` set them up. Everything else (VM and vCPU ioctls) goes through rust-vmm's
//! safe `kvm-ioctls`; the two unsafe operations are mapping/unmapping the memory and handing it
//! to KVM, plus the byte copies into it.

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::LabError;

/// Guest RAM size: one 2 MiB large page.
pub const MEM_SIZE: usize = 0x20_0000;
/// Where guest code is loaded and starts.
pub const CODE_GPA: u64 = 0x1000;
/// The PDPT every PML4 points to.
pub const PDPT_GPA: u64 = 0x3000;
/// The page directory mapping GPA 0..2 MiB with one large page.
pub const PD_GPA: u64 = 0x4000;
/// The initial PML4 (CR3).
pub const PML4_GPA: u64 = 0x2000;

/// Guest memory: an anonymous `MAP_SHARED` mapping of [`MEM_SIZE`] bytes.
struct GuestMemory {
    host: *mut u8,
}

impl GuestMemory {
    fn new() -> Result<Self, LabError> {
        // SAFETY: an anonymous mapping with no address hint has no preconditions; the result
        // is checked against MAP_FAILED before use (mmap(2)).
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(LabError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self { host: host.cast() })
    }

    /// Copies `bytes` to guest physical address `gpa`.
    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), LabError> {
        let start = usize::try_from(gpa).map_err(|_| LabError::OutOfMemory { gpa })?;
        if start.checked_add(bytes.len()).is_none_or(|end| end > MEM_SIZE) {
            return Err(LabError::OutOfMemory { gpa });
        }
        // SAFETY: `start..start+len` lies inside the MEM_SIZE-byte mapping (checked above), the
        // mapping lives as long as `self`, and `bytes` cannot overlap it (it is a Rust slice of
        // our own memory). The guest may run concurrently; it only ever sees plain bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.host.add(start), bytes.len()) };
        Ok(())
    }

    /// Copies `out.len()` bytes from guest physical address `gpa`.
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), LabError> {
        let start = usize::try_from(gpa).map_err(|_| LabError::OutOfMemory { gpa })?;
        if start.checked_add(out.len()).is_none_or(|end| end > MEM_SIZE) {
            return Err(LabError::OutOfMemory { gpa });
        }
        // SAFETY: `start..start+len` lies inside the MEM_SIZE-byte mapping (checked above),
        // which lives as long as `self`; `out` is our own buffer. A vCPU writing the same
        // bytes concurrently can only make them stale, never invalid (plain bytes).
        unsafe { std::ptr::copy_nonoverlapping(self.host.add(start), out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

// SAFETY: the mapping is plain shared memory owned by `GuestMemory` until its `Drop`; every
// access goes through the bounds-checked byte copies above, which are as valid from any
// thread as from the one that made the mapping (the vCPUs write it concurrently anyway).
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send`: `&GuestMemory` only offers bounds-checked copies in and out.
unsafe impl Sync for GuestMemory {}

/// Access to guest memory while the vCPUs are borrowed for running ([`Vm::split`]).
pub struct GuestView<'a> {
    mem: &'a GuestMemory,
    vm: &'a VmFd,
    dirty_log: bool,
}

impl GuestView<'_> {
    /// Copies `out.len()` bytes from guest physical address `gpa`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), LabError> {
        self.mem.read(gpa, out)
    }

    /// Copies `bytes` to guest physical address `gpa` (an answer to the guest).
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), LabError> {
        self.mem.write(gpa, bytes)
    }

    /// The dirty log of guest RAM (one bit per 4 KiB page, page `n` at bit `n % 64` of word
    /// `n / 64`), fetched and cleared with KVM_GET_DIRTY_LOG; `None` when the VM was made
    /// without [`Vm::with_dirty_log`].
    pub fn take_dirty_log(&self) -> Result<Option<Vec<u64>>, LabError> {
        if !self.dirty_log {
            return Ok(None);
        }
        self.vm
            .get_dirty_log(0, MEM_SIZE)
            .map(Some)
            .map_err(|e| LabError::Kvm { op: "KVM_GET_DIRTY_LOG", source: e })
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `host` came from mmap with MEM_SIZE and is unmapped once, here; KVM's memory
        // slot is gone by now because `Vm` drops its VmFd (and vCPUs) before its memory.
        unsafe { libc::munmap(self.host.cast(), MEM_SIZE) };
    }
}

/// A tiny VM: 2 MiB of RAM, long mode, page tables at [`PML4_GPA`].
pub struct Vm {
    // Field order is drop order: vCPUs and the VM go before the memory they use.
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    kvm: Kvm,
    mem: GuestMemory,
    dirty_log: bool,
}

impl Vm {
    /// Creates the VM with its memory and the identity page tables.
    pub fn new() -> Result<Self, LabError> {
        Self::with_dirty_log(false)
    }

    /// [`Vm::new`], with KVM_MEM_LOG_DIRTY_PAGES on guest RAM when `dirty_log` is set: KVM
    /// logs the pages the guest writes, read with `GuestView::take_dirty_log`.
    pub fn with_dirty_log(dirty_log: bool) -> Result<Self, LabError> {
        let kvm = Kvm::new().map_err(|e| LabError::Kvm { op: "open /dev/kvm", source: e })?;
        let vm = kvm.create_vm().map_err(|e| LabError::Kvm { op: "KVM_CREATE_VM", source: e })?;
        let mem = GuestMemory::new()?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if dirty_log { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.host as u64,
        };
        // SAFETY: the region describes exactly the mapping `mem` owns, which outlives the VM
        // (field order above), as KVM_SET_USER_MEMORY_REGION requires (kvm-ioctls docs).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| LabError::Kvm { op: "KVM_SET_USER_MEMORY_REGION", source: e })?;
        let vm = Self { vcpus: Vec::new(), vm, kvm, mem, dirty_log };
        vm.write_u64(PML4_GPA, PDPT_GPA | 3)?;
        vm.write_u64(PDPT_GPA, PD_GPA | 3)?;
        vm.write_u64(PD_GPA, 0x83)?; // present, writable, 2 MiB page at 0
        Ok(vm)
    }

    /// Writes bytes into guest memory.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), LabError> {
        self.mem.write(gpa, bytes)
    }

    /// Creates the in-kernel interrupt controllers (local APICs, IOAPIC, PIC); before any
    /// vCPU. Needed for guests that halt in the kernel or send IPIs.
    pub fn create_irqchip(&self) -> Result<(), LabError> {
        self.vm.create_irq_chip().map_err(|e| LabError::Kvm { op: "KVM_CREATE_IRQCHIP", source: e })
    }

    /// The KVM system handle (capabilities, supported CPUID).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The vCPUs to run, and read access to guest memory at the same time.
    pub fn split(&mut self) -> (&mut [VcpuFd], GuestView<'_>) {
        (&mut self.vcpus, GuestView { mem: &self.mem, vm: &self.vm, dirty_log: self.dirty_log })
    }

    /// Writes a little-endian u64 into guest memory.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), LabError> {
        self.mem.write(gpa, &v.to_le_bytes())
    }

    /// Adds a PML4 at `gpa` that maps the same 2 MiB (another CR3 value for the same space).
    pub fn add_pml4(&self, gpa: u64) -> Result<(), LabError> {
        self.write_u64(gpa, PDPT_GPA | 3)
    }

    /// Adds a vCPU in long mode at `rip` with CR3 = [`PML4_GPA`] and the host's supported CPUID.
    pub fn add_vcpu(&mut self, rip: u64) -> Result<usize, LabError> {
        let id = self.vcpus.len();
        let vcpu = self
            .vm
            .create_vcpu(id as u64)
            .map_err(|e| LabError::Kvm { op: "KVM_CREATE_VCPU", source: e })?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| LabError::Kvm { op: "KVM_GET_SUPPORTED_CPUID", source: e })?;
        vcpu.set_cpuid2(&cpuid).map_err(|e| LabError::Kvm { op: "KVM_SET_CPUID2", source: e })?;
        let mut sregs =
            vcpu.get_sregs().map_err(|e| LabError::Kvm { op: "KVM_GET_SREGS", source: e })?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 8,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment { selector: 16, type_: 3, db: 1, l: 0, ..code };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.cr0 = 0x8000_0031; // PG | NE | ET | PE
        sregs.cr3 = PML4_GPA;
        sregs.cr4 = 0x20; // PAE
        sregs.efer = 0x500; // LMA | LME
        vcpu.set_sregs(&sregs).map_err(|e| LabError::Kvm { op: "KVM_SET_SREGS", source: e })?;
        let mut regs =
            vcpu.get_regs().map_err(|e| LabError::Kvm { op: "KVM_GET_REGS", source: e })?;
        regs.rip = rip;
        regs.rflags = 2;
        regs.rsp = 0x10_0000;
        vcpu.set_regs(&regs).map_err(|e| LabError::Kvm { op: "KVM_SET_REGS", source: e })?;
        self.vcpus.push(vcpu);
        Ok(id)
    }

    /// The vCPUs, to run them (each may be moved to its own thread with `split_vcpus`).
    pub fn vcpu(&mut self, id: usize) -> Option<&mut VcpuFd> {
        self.vcpus.get_mut(id)
    }

    /// All vCPUs at once, for running them in threads.
    pub fn vcpus_mut(&mut self) -> &mut [VcpuFd] {
        &mut self.vcpus
    }
}
