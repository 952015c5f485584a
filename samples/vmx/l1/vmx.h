/* VMX definitions for the vmxray L1 test hypervisor.
 *
 * Field encodings, control bits and capability MSRs as the Intel SDM, Vol. 3, Appendix A
 * (VMX capability reporting) and Appendix B (field encodings) define them. Every instruction
 * wrapper returns the VMX outcome instead of hiding it: 0 = VMsucceed, 1 = VMfailInvalid
 * (CF), 2 = VMfailValid (ZF; the error is in VM_INSTRUCTION_ERROR).
 */
#ifndef VMXRAY_L1_VMX_H
#define VMXRAY_L1_VMX_H

#include <stdint.h>

/* Capability MSRs (SDM Appendix A). */
#define MSR_IA32_FEATURE_CONTROL 0x03a
#define MSR_IA32_APIC_BASE 0x01b
#define MSR_IA32_VMX_BASIC 0x480
#define MSR_IA32_VMX_PINBASED_CTLS 0x481
#define MSR_IA32_VMX_PROCBASED_CTLS 0x482
#define MSR_IA32_VMX_EXIT_CTLS 0x483
#define MSR_IA32_VMX_ENTRY_CTLS 0x484
#define MSR_IA32_VMX_MISC 0x485
#define MSR_IA32_VMX_CR0_FIXED0 0x486
#define MSR_IA32_VMX_CR0_FIXED1 0x487
#define MSR_IA32_VMX_CR4_FIXED0 0x488
#define MSR_IA32_VMX_CR4_FIXED1 0x489
#define MSR_IA32_VMX_PROCBASED_CTLS2 0x48b
#define MSR_IA32_VMX_EPT_VPID_CAP 0x48c
#define MSR_IA32_VMX_TRUE_PINBASED_CTLS 0x48d
#define MSR_IA32_VMX_TRUE_PROCBASED_CTLS 0x48e
#define MSR_IA32_VMX_TRUE_EXIT_CTLS 0x48f
#define MSR_IA32_VMX_TRUE_ENTRY_CTLS 0x490
#define MSR_EFER 0xc0000080
#define MSR_X2APIC_SVR 0x80f
#define MSR_X2APIC_ICR 0x830

#define FEATURE_CONTROL_LOCKED (1u << 0)
#define FEATURE_CONTROL_VMXON_OUTSIDE_SMX (1u << 2)
#define VMX_BASIC_TRUE_CTLS (1ull << 55)

#define CR0_MP (1ul << 1)
#define CR0_TS (1ul << 3)
#define CR4_PAE (1ul << 5)
#define CR4_VMXE (1ul << 13)

/* 16-bit fields. */
#define VIRTUAL_PROCESSOR_ID 0x0000
#define GUEST_ES_SELECTOR 0x0800
#define GUEST_CS_SELECTOR 0x0802
#define GUEST_SS_SELECTOR 0x0804
#define GUEST_DS_SELECTOR 0x0806
#define GUEST_FS_SELECTOR 0x0808
#define GUEST_GS_SELECTOR 0x080a
#define GUEST_LDTR_SELECTOR 0x080c
#define GUEST_TR_SELECTOR 0x080e
#define HOST_ES_SELECTOR 0x0c00
#define HOST_CS_SELECTOR 0x0c02
#define HOST_SS_SELECTOR 0x0c04
#define HOST_DS_SELECTOR 0x0c06
#define HOST_FS_SELECTOR 0x0c08
#define HOST_GS_SELECTOR 0x0c0a
#define HOST_TR_SELECTOR 0x0c0c

/* 64-bit fields. */
#define VIRTUAL_APIC_PAGE_ADDR 0x2012
#define EPT_POINTER 0x201a
#define GUEST_PHYSICAL_ADDRESS 0x2400
#define VMCS_LINK_POINTER 0x2800
#define GUEST_IA32_DEBUGCTL 0x2802
#define GUEST_IA32_EFER 0x2806
#define GUEST_PDPTR0 0x280a
#define GUEST_PDPTR1 0x280c
#define GUEST_PDPTR2 0x280e
#define GUEST_PDPTR3 0x2810
#define HOST_IA32_EFER 0x2c02

/* 32-bit fields. */
#define PIN_BASED_VM_EXEC_CONTROL 0x4000
#define CPU_BASED_VM_EXEC_CONTROL 0x4002
#define EXCEPTION_BITMAP 0x4004
#define PAGE_FAULT_ERROR_CODE_MASK 0x4006
#define PAGE_FAULT_ERROR_CODE_MATCH 0x4008
#define CR3_TARGET_COUNT 0x400a
#define VM_EXIT_CONTROLS 0x400c
#define VM_EXIT_MSR_STORE_COUNT 0x400e
#define VM_EXIT_MSR_LOAD_COUNT 0x4010
#define VM_ENTRY_CONTROLS 0x4012
#define VM_ENTRY_MSR_LOAD_COUNT 0x4014
#define VM_ENTRY_INTR_INFO_FIELD 0x4016
#define TPR_THRESHOLD 0x401c
#define SECONDARY_VM_EXEC_CONTROL 0x401e
#define VM_INSTRUCTION_ERROR 0x4400
#define VM_EXIT_REASON 0x4402
#define VM_EXIT_INTR_INFO 0x4404
#define VM_EXIT_INSTRUCTION_LEN 0x440c
#define GUEST_ES_LIMIT 0x4800
#define GUEST_CS_LIMIT 0x4802
#define GUEST_SS_LIMIT 0x4804
#define GUEST_DS_LIMIT 0x4806
#define GUEST_FS_LIMIT 0x4808
#define GUEST_GS_LIMIT 0x480a
#define GUEST_LDTR_LIMIT 0x480c
#define GUEST_TR_LIMIT 0x480e
#define GUEST_GDTR_LIMIT 0x4810
#define GUEST_IDTR_LIMIT 0x4812
#define GUEST_ES_AR_BYTES 0x4814
#define GUEST_CS_AR_BYTES 0x4816
#define GUEST_SS_AR_BYTES 0x4818
#define GUEST_DS_AR_BYTES 0x481a
#define GUEST_FS_AR_BYTES 0x481c
#define GUEST_GS_AR_BYTES 0x481e
#define GUEST_LDTR_AR_BYTES 0x4820
#define GUEST_TR_AR_BYTES 0x4822
#define GUEST_INTERRUPTIBILITY_INFO 0x4824
#define GUEST_ACTIVITY_STATE 0x4826
#define GUEST_SYSENTER_CS 0x482a
#define VMX_PREEMPTION_TIMER_VALUE 0x482e
#define HOST_IA32_SYSENTER_CS 0x4c00

/* Natural-width fields. */
#define CR0_GUEST_HOST_MASK 0x6000
#define CR4_GUEST_HOST_MASK 0x6002
#define CR0_READ_SHADOW 0x6004
#define CR4_READ_SHADOW 0x6006
#define EXIT_QUALIFICATION 0x6400
#define GUEST_CR0 0x6800
#define GUEST_CR3 0x6802
#define GUEST_CR4 0x6804
#define GUEST_ES_BASE 0x6806
#define GUEST_CS_BASE 0x6808
#define GUEST_SS_BASE 0x680a
#define GUEST_DS_BASE 0x680c
#define GUEST_FS_BASE 0x680e
#define GUEST_GS_BASE 0x6810
#define GUEST_LDTR_BASE 0x6812
#define GUEST_TR_BASE 0x6814
#define GUEST_GDTR_BASE 0x6816
#define GUEST_IDTR_BASE 0x6818
#define GUEST_DR7 0x681a
#define GUEST_RSP 0x681c
#define GUEST_RIP 0x681e
#define GUEST_RFLAGS 0x6820
#define GUEST_PENDING_DBG_EXCEPTIONS 0x6822
#define GUEST_SYSENTER_ESP 0x6824
#define GUEST_SYSENTER_EIP 0x6826
#define HOST_CR0 0x6c00
#define HOST_CR3 0x6c02
#define HOST_CR4 0x6c04
#define HOST_FS_BASE 0x6c06
#define HOST_GS_BASE 0x6c08
#define HOST_TR_BASE 0x6c0a
#define HOST_GDTR_BASE 0x6c0c
#define HOST_IDTR_BASE 0x6c0e
#define HOST_IA32_SYSENTER_ESP 0x6c10
#define HOST_IA32_SYSENTER_EIP 0x6c12
#define HOST_RSP 0x6c14
#define HOST_RIP 0x6c16

/* Pin-based controls. */
#define PIN_EXT_INTR_EXITING (1u << 0)
#define PIN_NMI_EXITING (1u << 3)
#define PIN_PREEMPTION_TIMER (1u << 6)
/* Primary processor-based controls. */
#define CPU_HLT_EXITING (1u << 7)
#define CPU_CR3_LOAD_EXITING (1u << 15)
#define CPU_CR3_STORE_EXITING (1u << 16)
#define CPU_CR8_LOAD_EXITING (1u << 19)
#define CPU_CR8_STORE_EXITING (1u << 20)
#define CPU_TPR_SHADOW (1u << 21)
#define CPU_UNCOND_IO_EXITING (1u << 24)
#define CPU_ACTIVATE_SECONDARY (1u << 31)
/* Secondary processor-based controls. */
#define SEC_VIRTUALIZE_APIC_ACCESSES (1u << 0)
#define SEC_ENABLE_EPT (1u << 1)
#define SEC_ENABLE_VPID (1u << 5)
#define SEC_VIRTUAL_INTR_DELIVERY (1u << 9)
/* VM-exit controls. */
#define EXIT_SAVE_DEBUG (1u << 2)
#define EXIT_HOST_ADDR_SPACE_SIZE (1u << 9)
#define EXIT_SAVE_EFER (1u << 20)
#define EXIT_LOAD_EFER (1u << 21)
#define EXIT_SAVE_PREEMPTION_TIMER (1u << 22)
/* VM-entry controls. */
#define ENTRY_LOAD_DEBUG (1u << 2)
#define ENTRY_IA32E_MODE (1u << 9)
#define ENTRY_LOAD_EFER (1u << 15)

/* IA32_VMX_EPT_VPID_CAP bits. */
#define EPT_CAP_WALK_4 (1ull << 6)
#define EPT_CAP_WB (1ull << 14)
#define EPT_CAP_AD (1ull << 21)
#define EPT_CAP_INVEPT (1ull << 20)
#define EPT_CAP_INVEPT_SINGLE (1ull << 25)
#define EPT_CAP_INVEPT_ALL (1ull << 26)
#define VPID_CAP_INVVPID (1ull << 32)
#define VPID_CAP_INVVPID_ADDR (1ull << 40)
#define VPID_CAP_INVVPID_SINGLE (1ull << 41)
#define VPID_CAP_INVVPID_ALL (1ull << 42)

/* EPT entries (SDM 28.3.2). */
#define EPT_R (1ull << 0)
#define EPT_W (1ull << 1)
#define EPT_X (1ull << 2)
#define EPT_RWX (EPT_R | EPT_W | EPT_X)
#define EPT_MT_WB (6ull << 3) /* memory type in a leaf */
#define EPT_IGNORE_PAT (1ull << 6)
#define EPTP_WB 6ull
#define EPTP_WALK_4 (3ull << 3)
#define EPTP_AD (1ull << 6)

#define INVEPT_SINGLE 1
#define INVEPT_ALL 2
#define INVVPID_ADDR 0
#define INVVPID_SINGLE 1
#define INVVPID_ALL 2

/* Basic exit reasons (SDM Appendix C). */
#define EXIT_TRIPLE_FAULT 2
#define EXIT_INIT_SIGNAL 3
#define EXIT_HLT 12
#define EXIT_CR_ACCESS 28
#define EXIT_INVALID_STATE 33
#define EXIT_IO_INSTRUCTION 30
#define EXIT_EPT_VIOLATION 48
#define EXIT_PREEMPTION_TIMER 52
#define EXIT_FAILED_VMENTRY 0x80000000u

/* Activity states. */
#define ACTIVITY_ACTIVE 0
#define ACTIVITY_HLT 1

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	asm volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c,
			 uint32_t *d)
{
	asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline uint64_t read_cr0(void)
{
	uint64_t v;
	asm volatile("mov %%cr0, %0" : "=r"(v));
	return v;
}
static inline uint64_t read_cr3(void)
{
	uint64_t v;
	asm volatile("mov %%cr3, %0" : "=r"(v));
	return v;
}
static inline uint64_t read_cr4(void)
{
	uint64_t v;
	asm volatile("mov %%cr4, %0" : "=r"(v));
	return v;
}
static inline void write_cr0(uint64_t v) { asm volatile("mov %0, %%cr0" ::"r"(v) : "memory"); }
static inline void write_cr4(uint64_t v) { asm volatile("mov %0, %%cr4" ::"r"(v) : "memory"); }

static inline void outl(uint16_t port, uint32_t v)
{
	asm volatile("outl %0, %1" ::"a"(v), "Nd"(port) : "memory");
}

static inline void pause(void) { asm volatile("pause" ::: "memory"); }

/* The VMX outcome of the instruction just executed, from CF and ZF. */
#define VMX_RESULT(cf, zf) ((cf) ? 1 : (zf) ? 2 : 0)

static inline int vmxon(uint64_t pa)
{
	uint8_t cf, zf;
	asm volatile("vmxon %2; setc %0; setz %1"
		     : "=qm"(cf), "=qm"(zf)
		     : "m"(pa)
		     : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

static inline int vmxoff(void)
{
	uint8_t cf, zf;
	asm volatile("vmxoff; setc %0; setz %1" : "=qm"(cf), "=qm"(zf) : : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

static inline int vmclear(uint64_t pa)
{
	uint8_t cf, zf;
	asm volatile("vmclear %2; setc %0; setz %1"
		     : "=qm"(cf), "=qm"(zf)
		     : "m"(pa)
		     : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

static inline int vmptrld(uint64_t pa)
{
	uint8_t cf, zf;
	asm volatile("vmptrld %2; setc %0; setz %1"
		     : "=qm"(cf), "=qm"(zf)
		     : "m"(pa)
		     : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

static inline int vmwrite_raw(uint64_t field, uint64_t value)
{
	uint8_t cf, zf;
	asm volatile("vmwrite %2, %3; setc %0; setz %1"
		     : "=qm"(cf), "=qm"(zf)
		     : "rm"(value), "r"(field)
		     : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

static inline uint64_t vmread(uint64_t field)
{
	uint64_t value = 0;
	asm volatile("vmread %1, %0" : "=rm"(value) : "r"(field) : "cc", "memory");
	return value;
}

struct inv_desc {
	uint64_t a, b;
};

static inline int invept(uint64_t type, uint64_t eptp)
{
	struct inv_desc d = {eptp, 0};
	uint8_t cf, zf;
	asm volatile("invept %2, %3; setc %0; setz %1"
		     : "=qm"(cf), "=qm"(zf)
		     : "m"(d), "r"(type)
		     : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

static inline int invvpid(uint64_t type, uint16_t vpid, uint64_t gva)
{
	struct inv_desc d = {vpid, gva};
	uint8_t cf, zf;
	asm volatile("invvpid %2, %3; setc %0; setz %1"
		     : "=qm"(cf), "=qm"(zf)
		     : "m"(d), "r"(type)
		     : "cc", "memory");
	return VMX_RESULT(cf, zf);
}

#endif
