/* vmxray's L1 test hypervisor: a bare-metal VMX hypervisor that runs as the L1 guest of the
 * KVM under test, so that every nested-VMX code path the replay model checks (bugs (a)-(d) of
 * shared/reference/nested-vmx-model.md) is reached by real KVM, and so that the exact values
 * it gave each VMCS are known (the ground truth the recordings are checked against).
 *
 * Structure (the way kvm-unit-tests' x86/vmx.c organises a test hypervisor, written anew):
 * capability discovery (CPUID, IA32_VMX_* MSRs), VMXON, one VMCS per L2 "subject" with its
 * own page tables (GUEST_CR3 differs per subject) and optionally its own EPT12, a VM-entry
 * routine that returns on VM exit (entry.S), and one function per scenario that drives the
 * subjects and checks what came back. Everything is reported as `struct l1_record`s through
 * an I/O port (proto.h). Memory: the loader's identity map of the first 2 MiB; all VMX
 * structures are page-aligned statics (the loader's memory is zero, so .bss needs no
 * clearing - and must not be cleared: a second vCPU may already be running).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "vmx.h"

#define PAGE 4096
#define MAX_CPUS 2
#define MAX_SUBJECTS 8
#define AP_SUBJECT 7
#define ROUNDS 3

/* Shared words of the INIT scenario, at fixed low addresses: the real-mode trampoline
 * writes AP_STATE without paging or relocation. */
#define AP_STATE (*(volatile uint32_t *)0x7ff0)
#define AP_INIT2_SENT (*(volatile uint32_t *)0x7ff4)
#define SIPI_VECTOR 0x08 /* the trampoline runs at 0x8000 */
#define AP_IN_L2 1
#define AP_GOT_INIT_EXIT 2
#define AP_VMXOFF 3
#define AP_SIPI_ALIVE 4

struct gregs {
	uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
};

int vmx_enter(struct gregs *g, int launched);
extern char vmx_exit_stub[];
extern uint64_t gdt[];
extern const uint64_t exc_table[];
extern const char sipi_trampoline[], sipi_trampoline_end[];
void l1_main(uint64_t scenario, uint64_t param, uint64_t cpu) __attribute__((noreturn));
void l1_exception(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2)
	__attribute__((noreturn));

/* ---- freestanding basics ---- */

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

struct out {
	char *p;
	size_t left;
};

static void put(struct out *o, char ch)
{
	if (o->left > 1) {
		*o->p++ = ch;
		o->left--;
	}
}

static void put_num(struct out *o, uint64_t v, unsigned base)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n)
		put(o, tmp[--n]);
}

/* printf subset: %s %c %d %u %x, with l for 64-bit; %x prints a 0x prefix. */
static void vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = {buf, size};
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		int is_long = 0;
		fmt++;
		while (*fmt == 'l') {
			is_long = 1;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			while (s && *s)
				put(&o, *s++);
			break;
		}
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case 'd': {
			int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
			if (v < 0) {
				put(&o, '-');
				v = -v;
			}
			put_num(&o, (uint64_t)v, 10);
			break;
		}
		case 'u':
			put_num(&o, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10);
			break;
		case 'x':
			put(&o, '0');
			put(&o, 'x');
			put_num(&o, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16);
			break;
		default:
			put(&o, '%');
			put(&o, *fmt);
		}
	}
	*o.p = 0;
}

/* ---- per-vCPU state and reporting ---- */

struct subject;

struct cpu {
	struct l1_record rec;
	uint32_t index;
	uint64_t current_vmcs;
	uint32_t failed_checks;
} __attribute__((aligned(128)));

static struct cpu cpus[MAX_CPUS];

/* Set by any vCPU that gives up, so that the other one stops too (the loader waits for
 * every vCPU to end). */
static volatile uint32_t scenario_failed;

static void emit(struct cpu *c, uint32_t kind, uint64_t vmcs, uint64_t a, uint64_t b, uint64_t cc,
		 uint64_t d, const char *fmt, ...)
{
	struct l1_record *r = &c->rec;
	r->kind = kind;
	r->cpu = c->index;
	r->vmcs = vmcs;
	r->a = a;
	r->b = b;
	r->c = cc;
	r->d = d;
	va_list ap;
	va_start(ap, fmt);
	vformat(r->text, sizeof(r->text), fmt, ap);
	va_end(ap);
	outl(L1_PORT_RECORD, (uint32_t)(uintptr_t)r);
}

#define LOG(c, ...) emit((c), REC_LOG, 0, 0, 0, 0, 0, __VA_ARGS__)

static void __attribute__((noreturn)) stop(void)
{
	/* The loader stops running this vCPU after REC_DONE/REC_FAIL; never reached there. */
	for (;;)
		asm volatile("cli; hlt");
}

#define FAIL(c, ...)                                                                           \
	do {                                                                                   \
		scenario_failed = 1;                                                           \
		emit((c), REC_FAIL, 0, 0, 0, 0, 0, __VA_ARGS__);                               \
		stop();                                                                        \
	} while (0)

static int check(struct cpu *c, const char *what, uint64_t expected, uint64_t actual)
{
	int ok = expected == actual;
	if (!ok)
		c->failed_checks++;
	emit(c, REC_CHECK, c->current_vmcs, expected, actual, ok, 0, "%s", what);
	return ok;
}

static void __attribute__((noreturn)) done(struct cpu *c)
{
	emit(c, REC_DONE, 0, c->failed_checks, 0, 0, 0, "%u failed checks", c->failed_checks);
	stop();
}

void l1_exception(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2)
{
	/* Which vCPU: the TSS selector in TR tells (0x18 for vCPU 0, 0x28 for vCPU 1). */
	uint16_t tr;
	asm volatile("str %0" : "=r"(tr));
	struct cpu *c = &cpus[tr == 0x28 ? 1 : 0];
	FAIL(c, "L1 exception %lu error %lx at rip %lx cr2 %lx", vector, error, rip, cr2);
}

/* ---- descriptor tables ---- */

struct tss {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));

struct idt_entry {
	uint16_t offset0, selector;
	uint8_t ist, type;
	uint16_t offset1;
	uint32_t offset2, zero;
} __attribute__((packed));

struct dtr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

static struct tss tss[MAX_CPUS] __attribute__((aligned(128)));
static struct idt_entry idt[22] __attribute__((aligned(16)));

static uint16_t tss_selector(uint32_t cpu) { return (uint16_t)(0x18 + 0x10 * cpu); }

static void tables_init(uint32_t cpu)
{
	for (int v = 0; v < 22; v++) {
		uint64_t h = exc_table[v];
		idt[v] = (struct idt_entry){(uint16_t)h, 0x08, 0, 0x8e, (uint16_t)(h >> 16),
					    (uint32_t)(h >> 32), 0};
	}
	struct dtr idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
	asm volatile("lidt %0" ::"m"(idtr));
	uint64_t base = (uint64_t)(uintptr_t)&tss[cpu];
	uint64_t limit = sizeof(struct tss) - 1;
	uint32_t slot = tss_selector(cpu) / 8;
	tss[cpu].iomap_base = sizeof(struct tss);
	gdt[slot] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
		    (((base >> 24) & 0xff) << 56);
	gdt[slot + 1] = base >> 32;
	asm volatile("ltr %0" ::"r"(tss_selector(cpu)));
}

/* ---- capabilities ---- */

static struct {
	uint32_t revision;
	uint64_t pin, proc, proc2, exit, entry, misc, ept_vpid;
	uint64_t cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1;
	int has_ept, has_vpid, ept_ad;
} caps;

static void caps_read(struct cpu *c)
{
	uint32_t a, b, cx, d;
	cpuid(1, 0, &a, &b, &cx, &d);
	if (!(cx & (1u << 5)))
		FAIL(c, "CPUID.1:ECX.VMX is clear: this KVM offers no nested VMX (kvm_intel nested=1?)");
	uint64_t basic = rdmsr(MSR_IA32_VMX_BASIC);
	int true_ctls = (basic & VMX_BASIC_TRUE_CTLS) != 0;
	caps.revision = (uint32_t)(basic & 0x7fffffff);
	caps.pin = rdmsr(true_ctls ? MSR_IA32_VMX_TRUE_PINBASED_CTLS : MSR_IA32_VMX_PINBASED_CTLS);
	caps.proc = rdmsr(true_ctls ? MSR_IA32_VMX_TRUE_PROCBASED_CTLS : MSR_IA32_VMX_PROCBASED_CTLS);
	caps.exit = rdmsr(true_ctls ? MSR_IA32_VMX_TRUE_EXIT_CTLS : MSR_IA32_VMX_EXIT_CTLS);
	caps.entry = rdmsr(true_ctls ? MSR_IA32_VMX_TRUE_ENTRY_CTLS : MSR_IA32_VMX_ENTRY_CTLS);
	caps.misc = rdmsr(MSR_IA32_VMX_MISC);
	caps.cr0_fixed0 = rdmsr(MSR_IA32_VMX_CR0_FIXED0);
	caps.cr0_fixed1 = rdmsr(MSR_IA32_VMX_CR0_FIXED1);
	caps.cr4_fixed0 = rdmsr(MSR_IA32_VMX_CR4_FIXED0);
	caps.cr4_fixed1 = rdmsr(MSR_IA32_VMX_CR4_FIXED1);
	if ((caps.proc >> 32) & CPU_ACTIVATE_SECONDARY) {
		caps.proc2 = rdmsr(MSR_IA32_VMX_PROCBASED_CTLS2);
		caps.ept_vpid = rdmsr(MSR_IA32_VMX_EPT_VPID_CAP);
	}
	uint32_t may2 = (uint32_t)(caps.proc2 >> 32);
	caps.has_ept = (may2 & SEC_ENABLE_EPT) && (caps.ept_vpid & EPT_CAP_WALK_4) &&
		       (caps.ept_vpid & EPT_CAP_WB);
	caps.has_vpid = (may2 & SEC_ENABLE_VPID) && (caps.ept_vpid & VPID_CAP_INVVPID);
	caps.ept_ad = (caps.ept_vpid & EPT_CAP_AD) != 0;
	LOG(c, "vmx basic %lx true_ctls %d revision %x", basic, true_ctls, caps.revision);
	LOG(c, "pin %lx proc %lx proc2 %lx", caps.pin, caps.proc, caps.proc2);
	LOG(c, "exit %lx entry %lx misc %lx", caps.exit, caps.entry, caps.misc);
	LOG(c, "ept_vpid %lx ept %d vpid %d ad %d", caps.ept_vpid, caps.has_ept, caps.has_vpid,
	    caps.ept_ad);
}

/* A control word with `want` set where allowed, every must-be-one bit set (SDM A.3-A.5:
 * allowed-0 settings in bits 31:0, allowed-1 settings in bits 63:32). */
static uint32_t adjust(struct cpu *c, const char *name, uint64_t cap, uint32_t want)
{
	uint32_t must = (uint32_t)cap, may = (uint32_t)(cap >> 32);
	if (want & ~may)
		LOG(c, "%s: bits %x are not allowed, left clear", name, want & ~may);
	return (want | must) & may;
}

/* ---- VMX instructions, reported ---- */

static const uint16_t logged_fields[] = {GUEST_CR3, EPT_POINTER, GUEST_RIP, HOST_CR3};

static void vw(struct cpu *c, uint64_t field, uint64_t value)
{
	int r = vmwrite_raw(field, value);
	if (r)
		FAIL(c, "vmwrite %lx = %lx failed (%d, error %lu)", field, value, r,
		     r == 2 ? vmread(VM_INSTRUCTION_ERROR) : 0);
	for (unsigned i = 0; i < sizeof(logged_fields) / sizeof(logged_fields[0]); i++)
		if (logged_fields[i] == field)
			emit(c, REC_VMWRITE, c->current_vmcs, field, value, 0, 0, "");
}

static int vmx_op_result(struct cpu *c, const char *op, uint64_t operand, uint64_t type, int r)
{
	uint64_t err = r == 2 ? vmread(VM_INSTRUCTION_ERROR) : 0;
	emit(c, REC_VMXOP, operand, type, (uint64_t)r, err, 0, "%s", op);
	return r;
}

static void do_vmclear(struct cpu *c, uint64_t vmcs)
{
	if (vmx_op_result(c, "vmclear", vmcs, 0, vmclear(vmcs)))
		FAIL(c, "vmclear %lx failed", vmcs);
	if (c->current_vmcs == vmcs)
		c->current_vmcs = 0;
}

static void do_vmptrld(struct cpu *c, uint64_t vmcs)
{
	if (vmx_op_result(c, "vmptrld", vmcs, 0, vmptrld(vmcs)))
		FAIL(c, "vmptrld %lx failed", vmcs);
	c->current_vmcs = vmcs;
}

/* ---- subjects (L2 guests) ---- */

enum behaviour {
	B_SPIN_IO,  /* spins, with an `out` to port 0x80+id now and then */
	B_SPIN,     /* spins without exits of its own */
	B_HLT,      /* idles in HLT forever (woken only by L1's preemption timer) */
	B_IO_HLT,   /* two `out`s, then HLT (HLT exiting on) */
	B_UD,       /* an `out`, then ud2 with an empty IDT: triple fault */
	B_MARKER,   /* reads the marker page and reports the value with `out 0x90` */
	B_LMSW,     /* lmsw setting CR0.TS with RAX leaving it clear, an `out`, then HLT */
	B_DIRTY,    /* rounds of writes to DIRTY_PAGES pages above 2 MiB, an `out` after each */
};

static const char *const behaviour_names[] = {"spin-io", "spin", "hlt", "io-hlt", "ud2", "marker",
						     "lmsw", "dirty"};

struct subject {
	uint32_t id;
	enum behaviour behaviour;
	int ept, hlt_exiting, timer;
	int arm_timer; /* load a fresh quantum at the next entry (the start of a slice) */
	uint16_t vpid;
	uint64_t vmcs, cr3, eptp;
	int launched;
	struct gregs regs;
};

static struct subject subjects[MAX_SUBJECTS];

static uint8_t vmxon_pages[MAX_CPUS][PAGE] __attribute__((aligned(PAGE)));
static uint8_t vmcs_pages[MAX_SUBJECTS][PAGE] __attribute__((aligned(PAGE)));
static uint64_t l2_pml4[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint64_t l2_pdpt[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint64_t l2_pd[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint64_t ept_pml4[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint64_t ept_pdpt[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint64_t ept_pd[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint64_t ept_pt[MAX_SUBJECTS][512] __attribute__((aligned(PAGE)));
static uint8_t l2_stacks[MAX_SUBJECTS][PAGE] __attribute__((aligned(PAGE)));
/* The page subjects read in the INVEPT scenario (its GPA), and the two frames EPT12 maps
 * it to in turn. */
static volatile uint64_t marker_gpa_page[512] __attribute__((aligned(PAGE)));
static uint64_t marker_frames[2][512] __attribute__((aligned(PAGE)));
static volatile uint64_t subject_counter[MAX_SUBJECTS];

#define MARKER_PORT 0x90
/* The dirty-log scenario: L2 writes one word in each of DIRTY_PAGES pages of its
 * guest-physical window at DIRTY_L2_GPA (above L1's 2 MiB), which EPT12 maps through two
 * page tables of its own onto the DIRTY_FRAMES frames `dirty_frames` (page i on frame
 * i % DIRTY_FRAMES: 256 L2 pages per frame, below the 1000 mappings of one page at which
 * KVM's shadow MMU zaps them all, RMAP_RECYCLE_THRESHOLD); DIRTY_ROUNDS rounds. */
#define DIRTY_L2_GPA 0x200000ull
#define DIRTY_PAGES 1024
#define DIRTY_FRAMES 4
#define DIRTY_ROUNDS 3
#define DIRTY_PORT 0x98
static uint64_t dirty_ept_pt[2][512] __attribute__((aligned(PAGE)));
static uint8_t dirty_frames[DIRTY_FRAMES][PAGE] __attribute__((aligned(PAGE)));
#define MARKER_UNMAPPED 0x0badull
#define MARKER_A 0x1111ull
#define MARKER_B 0x2222ull

/* The L2 code: runs in L2 at its L1 address (L2 maps the same 2 MiB). */
static void __attribute__((noreturn, used)) subject_entry(uint64_t id, uint64_t behaviour)
{
	uint64_t n = 0;
	switch ((enum behaviour)behaviour) {
	case B_SPIN_IO:
		for (;;) {
			if ((n & 0x3fff) == 0)
				outl((uint16_t)(0x80 + id), (uint32_t)n);
			subject_counter[id] = ++n;
		}
	case B_SPIN:
		for (;;) {
			subject_counter[id] = ++n;
			pause();
		}
	case B_HLT:
		for (;;) {
			asm volatile("hlt");
			subject_counter[id] = ++n;
		}
	case B_IO_HLT:
		outl((uint16_t)(0x80 + id), 1);
		outl((uint16_t)(0x80 + id), 2);
		for (;;)
			asm volatile("hlt");
	case B_UD:
		outl((uint16_t)(0x80 + id), 0xdead);
		asm volatile("ud2");
		break;
	case B_MARKER:
		for (;;) {
			outl(MARKER_PORT, (uint32_t)marker_gpa_page[0]);
			for (int i = 0; i < 100; i++)
				pause();
		}
	case B_LMSW: {
		/* LMSW's source (BX) sets TS; RAX holds CR0 as read, TS clear: a KVM that looks
		 * at RAX instead of the source sees no change of a bit L1 owns. */
		uint64_t cr0;
		asm volatile("mov %%cr0, %0" : "=r"(cr0));
		asm volatile("lmsw %w0" ::"b"((uint16_t)(cr0 | CR0_TS)), "a"(cr0 & ~CR0_TS)
			     : "memory");
		outl((uint16_t)(0x80 + id), 1);
		for (;;)
			asm volatile("hlt");
	}
	case B_DIRTY:
		for (uint32_t round = 0; round < DIRTY_ROUNDS; round++) {
			for (uint64_t i = 0; i < DIRTY_PAGES; i++)
				*(volatile uint64_t *)(DIRTY_L2_GPA + i * PAGE) = round;
			outl(DIRTY_PORT, round);
		}
		for (;;)
			asm volatile("hlt");
	}
	for (;;)
		asm volatile("hlt");
}

static uint64_t pa(const volatile void *p) { return (uint64_t)(uintptr_t)p; }

#define AR_CODE64 0xa09b
#define AR_DATA 0xc093
#define AR_TSS_BUSY 0x008b
#define AR_UNUSABLE 0x10000

static void subject_init(struct cpu *c, uint32_t id, enum behaviour b, int ept, int hlt_exiting,
			 int timer)
{
	struct subject *s = &subjects[id];
	*s = (struct subject){.id = id, .behaviour = b, .ept = ept, .hlt_exiting = hlt_exiting,
			      .timer = timer};
	s->vmcs = pa(vmcs_pages[id]);
	/* Own page tables: the same identity map, a different CR3 per subject. */
	l2_pml4[id][0] = pa(l2_pdpt[id]) | 3;
	l2_pdpt[id][0] = pa(l2_pd[id]) | 3;
	l2_pd[id][0] = 0x83;
	s->cr3 = pa(l2_pml4[id]);
	if (ept) {
		ept_pml4[id][0] = pa(ept_pdpt[id]) | EPT_RWX;
		ept_pdpt[id][0] = pa(ept_pd[id]) | EPT_RWX;
		ept_pd[id][0] = pa(ept_pt[id]) | EPT_RWX;
		for (uint64_t i = 0; i < 512; i++)
			ept_pt[id][i] = (i << 12) | EPT_RWX | EPT_MT_WB;
		s->eptp = pa(ept_pml4[id]) | EPTP_WALK_4 | EPTP_WB | (caps.ept_ad ? EPTP_AD : 0);
	}
	if (caps.has_vpid)
		s->vpid = (uint16_t)(id + 1);
	s->regs.rdi = id;
	s->regs.rsi = b;

	*(uint32_t *)vmcs_pages[id] = caps.revision;
	do_vmclear(c, s->vmcs);
	do_vmptrld(c, s->vmcs);

	uint32_t pin = adjust(c, "pin", caps.pin, timer ? PIN_PREEMPTION_TIMER : 0);
	uint32_t proc = adjust(c, "proc", caps.proc,
			       CPU_UNCOND_IO_EXITING | CPU_ACTIVATE_SECONDARY |
				       (hlt_exiting ? CPU_HLT_EXITING : 0));
	proc &= ~(uint32_t)((CPU_CR3_LOAD_EXITING | CPU_CR3_STORE_EXITING) & ~(uint32_t)caps.proc);
	uint32_t proc2 = adjust(c, "proc2", caps.proc2,
				(ept ? SEC_ENABLE_EPT : 0) | (s->vpid ? SEC_ENABLE_VPID : 0));
	/* With the timer, its value is saved at every exit, so that the I/O exits inside a slice
	 * do not restart the quantum. */
	uint32_t exit = adjust(c, "exit", caps.exit,
			       EXIT_HOST_ADDR_SPACE_SIZE | EXIT_SAVE_EFER | EXIT_LOAD_EFER |
				       EXIT_SAVE_DEBUG | (timer ? EXIT_SAVE_PREEMPTION_TIMER : 0));
	uint32_t entry =
		adjust(c, "entry", caps.entry, ENTRY_IA32E_MODE | ENTRY_LOAD_EFER | ENTRY_LOAD_DEBUG);
	vw(c, PIN_BASED_VM_EXEC_CONTROL, pin);
	vw(c, CPU_BASED_VM_EXEC_CONTROL, proc);
	vw(c, SECONDARY_VM_EXEC_CONTROL, proc2);
	vw(c, VM_EXIT_CONTROLS, exit);
	vw(c, VM_ENTRY_CONTROLS, entry);
	vw(c, EXCEPTION_BITMAP, 0);
	vw(c, PAGE_FAULT_ERROR_CODE_MASK, 0);
	vw(c, PAGE_FAULT_ERROR_CODE_MATCH, 0);
	vw(c, CR3_TARGET_COUNT, 0);
	vw(c, VM_EXIT_MSR_STORE_COUNT, 0);
	vw(c, VM_EXIT_MSR_LOAD_COUNT, 0);
	vw(c, VM_ENTRY_MSR_LOAD_COUNT, 0);
	vw(c, VM_ENTRY_INTR_INFO_FIELD, 0);
	vw(c, VMCS_LINK_POINTER, ~0ull);
	if (s->vpid)
		vw(c, VIRTUAL_PROCESSOR_ID, s->vpid);
	if (ept)
		vw(c, EPT_POINTER, s->eptp);

	/* Host state: this L1 as it runs now. */
	uint64_t efer = rdmsr(MSR_EFER);
	struct dtr gdtr, idtr;
	asm volatile("sgdt %0" : "=m"(gdtr));
	asm volatile("sidt %0" : "=m"(idtr));
	vw(c, HOST_CR0, read_cr0());
	vw(c, HOST_CR3, read_cr3());
	vw(c, HOST_CR4, read_cr4());
	vw(c, HOST_CS_SELECTOR, 0x08);
	vw(c, HOST_SS_SELECTOR, 0x10);
	vw(c, HOST_DS_SELECTOR, 0x10);
	vw(c, HOST_ES_SELECTOR, 0x10);
	vw(c, HOST_FS_SELECTOR, 0x10);
	vw(c, HOST_GS_SELECTOR, 0x10);
	vw(c, HOST_TR_SELECTOR, tss_selector(c->index));
	vw(c, HOST_FS_BASE, 0);
	vw(c, HOST_GS_BASE, 0);
	vw(c, HOST_TR_BASE, pa(&tss[c->index]));
	vw(c, HOST_GDTR_BASE, gdtr.base);
	vw(c, HOST_IDTR_BASE, idtr.base);
	vw(c, HOST_IA32_SYSENTER_CS, 0);
	vw(c, HOST_IA32_SYSENTER_ESP, 0);
	vw(c, HOST_IA32_SYSENTER_EIP, 0);
	vw(c, HOST_IA32_EFER, efer);
	vw(c, HOST_RIP, pa(vmx_exit_stub));

	/* Guest state: 64-bit, CPL 0, flat segments, own CR3, empty IDT (any exception ends in
	 * a triple fault that L1 sees). CR0/CR4 obey the VMX fixed bits (CR4.VMXE is fixed to 1
	 * and hidden from the subject by the CR4 mask). */
	uint64_t cr0 = (0x80000031ull | caps.cr0_fixed0) & caps.cr0_fixed1;
	uint64_t cr4 = (CR4_PAE | caps.cr4_fixed0) & caps.cr4_fixed1;
	vw(c, CR0_GUEST_HOST_MASK, 0);
	vw(c, CR0_READ_SHADOW, cr0);
	vw(c, CR4_GUEST_HOST_MASK, CR4_VMXE);
	vw(c, CR4_READ_SHADOW, cr4 & ~CR4_VMXE);
	vw(c, GUEST_CR0, cr0);
	vw(c, GUEST_CR3, s->cr3);
	vw(c, GUEST_CR4, cr4);
	vw(c, GUEST_IA32_EFER, efer);
	vw(c, GUEST_IA32_DEBUGCTL, 0);
	vw(c, GUEST_DR7, 0x400);
	static const uint16_t data_segs[][4] = {
		{GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES},
		{GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES},
		{GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES},
		{GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES},
		{GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES},
	};
	for (unsigned i = 0; i < 5; i++) {
		vw(c, data_segs[i][0], 0x10);
		vw(c, data_segs[i][1], 0);
		vw(c, data_segs[i][2], 0xffffffff);
		vw(c, data_segs[i][3], AR_DATA);
	}
	vw(c, GUEST_CS_SELECTOR, 0x08);
	vw(c, GUEST_CS_BASE, 0);
	vw(c, GUEST_CS_LIMIT, 0xffffffff);
	vw(c, GUEST_CS_AR_BYTES, AR_CODE64);
	vw(c, GUEST_TR_SELECTOR, tss_selector(c->index));
	vw(c, GUEST_TR_BASE, pa(&tss[c->index]));
	vw(c, GUEST_TR_LIMIT, sizeof(struct tss) - 1);
	vw(c, GUEST_TR_AR_BYTES, AR_TSS_BUSY);
	vw(c, GUEST_LDTR_SELECTOR, 0);
	vw(c, GUEST_LDTR_BASE, 0);
	vw(c, GUEST_LDTR_LIMIT, 0);
	vw(c, GUEST_LDTR_AR_BYTES, AR_UNUSABLE);
	vw(c, GUEST_GDTR_BASE, gdtr.base);
	vw(c, GUEST_GDTR_LIMIT, gdtr.limit);
	vw(c, GUEST_IDTR_BASE, 0);
	vw(c, GUEST_IDTR_LIMIT, 0);
	vw(c, GUEST_RFLAGS, 0x2);
	vw(c, GUEST_RSP, pa(l2_stacks[id]) + PAGE - 8);
	vw(c, GUEST_RIP, pa(subject_entry));
	vw(c, GUEST_INTERRUPTIBILITY_INFO, 0);
	vw(c, GUEST_ACTIVITY_STATE, ACTIVITY_ACTIVE);
	vw(c, GUEST_PENDING_DBG_EXCEPTIONS, 0);
	vw(c, GUEST_SYSENTER_CS, 0);
	vw(c, GUEST_SYSENTER_ESP, 0);
	vw(c, GUEST_SYSENTER_EIP, 0);

	emit(c, REC_SUBJECT, s->vmcs, id, s->cr3, s->eptp, s->vpid, "%s%s%s",
	     behaviour_names[b], hlt_exiting ? "" : " hlt-exiting-off", timer ? " timer" : "");
}

/* Quantum of the round-robin scenarios, in preemption-timer units (TSC >> IA32_VMX_MISC[4:0]). */
#define QUANTUM 0x4000

#define ENTRY_FAILED 0xffffffffu

/* Enters `s` (VMLAUNCH or VMRESUME by its launch state), returns the exit reason, or
 * ENTRY_FAILED when the instruction itself failed (reported with its error). */
static uint32_t enter(struct cpu *c, struct subject *s)
{
	if (c->current_vmcs != s->vmcs)
		do_vmptrld(c, s->vmcs);
	if (s->timer && s->arm_timer) {
		vmwrite_raw(VMX_PREEMPTION_TIMER_VALUE, QUANTUM);
		s->arm_timer = 0;
	}
	const char *op = s->launched ? "vmresume" : "vmlaunch";
	int r = vmx_enter(&s->regs, s->launched);
	if (r) {
		vmx_op_result(c, op, s->vmcs, 0, r);
		return ENTRY_FAILED;
	}
	uint32_t reason = (uint32_t)vmread(VM_EXIT_REASON);
	if (!(reason & EXIT_FAILED_VMENTRY))
		s->launched = 1;
	emit(c, REC_EXIT, s->vmcs, reason, vmread(EXIT_QUALIFICATION), vmread(GUEST_RIP),
	     vmread(GUEST_CR3), "%s subject %u", op, s->id);
	return reason;
}

static void skip_instruction(struct cpu *c)
{
	vw(c, GUEST_RIP, vmread(GUEST_RIP) + vmread(VM_EXIT_INSTRUCTION_LEN));
}

/* Runs `s` for one quantum: enters until the preemption timer ends the slice, stepping over
 * its `out`s. */
static void run_slice(struct cpu *c, struct subject *s)
{
	s->arm_timer = 1;
	for (int n = 0; n < 4096; n++) {
		uint32_t reason = enter(c, s);
		if (reason == EXIT_PREEMPTION_TIMER)
			return;
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			continue;
		}
		FAIL(c, "subject %u: unexpected exit reason %x in a slice", s->id, reason);
	}
	FAIL(c, "subject %u: no preemption-timer exit after 4096 entries", s->id);
}

static void check_cr3(struct cpu *c, struct subject *s)
{
	check(c, "GUEST_CR3 after the exit is the subject's own", s->cr3, vmread(GUEST_CR3));
}

/* ---- VMX operation ---- */

static void vmx_on(struct cpu *c)
{
	uint64_t fc = rdmsr(MSR_IA32_FEATURE_CONTROL);
	if (!(fc & FEATURE_CONTROL_LOCKED)) {
		fc |= FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMXON_OUTSIDE_SMX;
		wrmsr(MSR_IA32_FEATURE_CONTROL, fc);
		LOG(c, "IA32_FEATURE_CONTROL was unlocked; locked it with VMXON outside SMX");
	}
	if (!(fc & FEATURE_CONTROL_VMXON_OUTSIDE_SMX))
		FAIL(c, "IA32_FEATURE_CONTROL %lx is locked without VMXON outside SMX", fc);
	write_cr0((read_cr0() | caps.cr0_fixed0) & caps.cr0_fixed1);
	write_cr4((read_cr4() | CR4_VMXE | caps.cr4_fixed0) & caps.cr4_fixed1);
	uint64_t region = pa(vmxon_pages[c->index]);
	*(uint32_t *)vmxon_pages[c->index] = caps.revision;
	if (vmx_op_result(c, "vmxon", region, 0, vmxon(region)))
		FAIL(c, "vmxon failed");
}

/* ---- scenarios ---- */

static void scn_io(struct cpu *c)
{
	struct subject *s = &subjects[0];
	subject_init(c, 0, B_IO_HLT, caps.has_ept, 1, 0);
	for (int n = 0; n < 8; n++) {
		uint32_t reason = enter(c, s);
		if (reason == EXIT_IO_INSTRUCTION) {
			check(c, "I/O exit value", (uint64_t)n + 1, s->regs.rax & 0xffffffff);
			skip_instruction(c);
			continue;
		}
		check(c, "the subject ends in HLT", EXIT_HLT, reason);
		check_cr3(c, s);
		done(c);
	}
	FAIL(c, "no HLT exit");
}

/* Round robin of `n` subjects on the preemption timer (a separation kernel): each slice
 * ends in a PREEMPTION_TIMER exit; the next subject is made current with VMPTRLD. After
 * the second round every VMCS is VMCLEARed, so the last round VMLAUNCHes them anew. With
 * `hlt_subject` >= 0 that subject idles in HLT with HLT exiting off (Muen): from its second
 * slice on, KVM enters it with activity state HLT and never runs it in hardware. */
static void scn_round_robin(struct cpu *c, uint32_t n, int ept, int hlt_subject, int rounds)
{
	if (n < 1 || n > AP_SUBJECT)
		FAIL(c, "subject count %u is not in 1..%u", n, AP_SUBJECT);
	if (ept && !caps.has_ept)
		FAIL(c, "this scenario needs EPT for L1 (4-level, WB)");
	if (!((caps.pin >> 32) & PIN_PREEMPTION_TIMER))
		FAIL(c, "no VMX preemption timer for L1");
	for (uint32_t i = 0; i < n; i++)
		subject_init(c, i, (int)i == hlt_subject ? B_HLT : B_SPIN_IO, ept,
			     (int)i != hlt_subject, 1);
	for (int round = 0; round < rounds; round++) {
		for (uint32_t i = 0; i < n; i++) {
			struct subject *s = &subjects[i];
			run_slice(c, s);
			check_cr3(c, s);
			if ((int)i == hlt_subject) {
				uint64_t activity = vmread(GUEST_ACTIVITY_STATE);
				LOG(c, "subject %u activity state %lu after %lu HLT wake-ups", i,
				    activity, subject_counter[i]);
				check(c, "the HLT subject's activity state is HLT", ACTIVITY_HLT,
				      activity);
			}
		}
		if (round == 0) {
			/* Flush each subject's VPID (with shadow paging in L0 this frees L2 roots). */
			for (uint32_t i = 0; i < n; i++)
				if (subjects[i].vpid)
					vmx_op_result(c, "invvpid", subjects[i].vpid, INVVPID_SINGLE,
						      invvpid(INVVPID_SINGLE, subjects[i].vpid, 0));
		}
		if (round == 1) {
			for (uint32_t i = 0; i < n; i++) {
				do_vmclear(c, subjects[i].vmcs);
				subjects[i].launched = 0;
			}
		}
	}
	done(c);
}

static void set_marker_frame(uint32_t id, int frame)
{
	uint64_t gfn = pa(marker_gpa_page) >> 12;
	ept_pt[id][gfn] = pa(marker_frames[frame]) | EPT_RWX | EPT_MT_WB;
}

/* L1 edits EPT12 (the marker page's GPA maps to frame A, then B, then A) and invalidates
 * with INVEPT single-context, then all-context, then INVVPID; each time the subject's next
 * read must show the new mapping. */
static void scn_invept(struct cpu *c)
{
	if (!caps.has_ept || !(caps.ept_vpid & EPT_CAP_INVEPT))
		FAIL(c, "this scenario needs EPT and INVEPT for L1");
	marker_gpa_page[0] = MARKER_UNMAPPED;
	marker_frames[0][0] = MARKER_A;
	marker_frames[1][0] = MARKER_B;
	subject_init(c, 1, B_SPIN_IO, 1, 1, 1);
	subject_init(c, 0, B_MARKER, 1, 1, 0);
	set_marker_frame(0, 0);
	struct subject *m = &subjects[0], *other = &subjects[1];
	run_slice(c, other);
	static const uint64_t expect[] = {MARKER_A, MARKER_B, MARKER_A, MARKER_A, MARKER_A};
	for (unsigned phase = 0; phase < sizeof(expect) / sizeof(expect[0]); phase++) {
		uint32_t reason = enter(c, m);
		if (reason != EXIT_IO_INSTRUCTION || (vmread(EXIT_QUALIFICATION) >> 16) != MARKER_PORT)
			FAIL(c, "phase %u: expected the marker read, exit reason %x", phase, reason);
		check(c, "marker value the subject read", expect[phase], m->regs.rax & 0xffffffff);
		skip_instruction(c);
		switch (phase) {
		case 0:
			set_marker_frame(0, 1);
			vmx_op_result(c, "invept", m->eptp, INVEPT_SINGLE,
				      invept(INVEPT_SINGLE, m->eptp));
			break;
		case 1:
			set_marker_frame(0, 0);
			run_slice(c, other); /* VMPTRLD away and back: vmcs12 released */
			vmx_op_result(c, "invept", 0, INVEPT_ALL, invept(INVEPT_ALL, 0));
			break;
		case 2:
			if (m->vpid) {
				vmx_op_result(c, "invvpid", m->vpid, INVVPID_SINGLE,
					      invvpid(INVVPID_SINGLE, m->vpid, 0));
				if (caps.ept_vpid & VPID_CAP_INVVPID_ADDR)
					vmx_op_result(c, "invvpid", m->vpid, INVVPID_ADDR,
						      invvpid(INVVPID_ADDR, m->vpid,
							      pa(marker_gpa_page)));
			} else {
				LOG(c, "no VPID for L1: INVVPID skipped");
			}
			break;
		case 3:
			if (m->vpid)
				vmx_op_result(c, "invvpid", 0, INVVPID_ALL, invvpid(INVVPID_ALL, 0, 0));
			break;
		default:
			break;
		}
	}
	done(c);
}

/* Failing entries: VMRESUME of a never-launched VMCS (VMfail 5), VMLAUNCH with an invalid
 * pin-based control (VMfail 7, caught before KVM's nested VM-Enter), then two invalid guest
 * states (VM-entry failure exits 0x80000021 with qualification 0 and 4), then a good launch. */
static void scn_vmfail(struct cpu *c)
{
	struct subject *s = &subjects[0];
	subject_init(c, 0, B_IO_HLT, caps.has_ept, 1, 0);

	s->launched = 1; /* VMRESUME although it never ran */
	check(c, "VMRESUME of a clear VMCS fails", ENTRY_FAILED, enter(c, s));
	check(c, "VM-instruction error 5 (VMRESUME non-launched)", 5,
	      vmread(VM_INSTRUCTION_ERROR));
	s->launched = 0;

	uint64_t pin = vmread(PIN_BASED_VM_EXEC_CONTROL);
	vw(c, PIN_BASED_VM_EXEC_CONTROL, 0); /* clears the must-be-one bits */
	check(c, "VMLAUNCH with invalid pin controls fails", ENTRY_FAILED, enter(c, s));
	check(c, "VM-instruction error 7 (invalid control field)", 7,
	      vmread(VM_INSTRUCTION_ERROR));
	vw(c, PIN_BASED_VM_EXEC_CONTROL, pin);

	uint64_t cr0 = vmread(GUEST_CR0);
	vw(c, GUEST_CR0, cr0 & ~1ull); /* PG without PE */
	check(c, "guest CR0.PG without PE: entry-failure exit", EXIT_FAILED_VMENTRY | EXIT_INVALID_STATE,
	      enter(c, s));
	check(c, "entry-failure qualification 0 (default)", 0, vmread(EXIT_QUALIFICATION));
	vw(c, GUEST_CR0, cr0);

	vw(c, VMCS_LINK_POINTER, 0);
	check(c, "VMCS link pointer 0: entry-failure exit", EXIT_FAILED_VMENTRY | EXIT_INVALID_STATE,
	      enter(c, s));
	check(c, "entry-failure qualification 4 (VMCS link pointer)", 4,
	      vmread(EXIT_QUALIFICATION));
	vw(c, VMCS_LINK_POINTER, ~0ull);

	check(c, "still not launched after failed entries", 0, s->launched);
	for (int n = 0; n < 8; n++) {
		uint32_t reason = enter(c, s);
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			continue;
		}
		check(c, "the good launch ends in HLT", EXIT_HLT, reason);
		done(c);
	}
	FAIL(c, "no HLT exit after the good launch");
}

/* An invalid guest state KVM's software checks do not look at (RFLAGS bit 1 clear, a
 * reserved bit that must be 1): the entry of vmcs02 fails in the (emulated) hardware, and L1
 * must get the VM-entry failure exit 0x80000021 all the same. Then a good launch. */
static void scn_hwfail(struct cpu *c)
{
	struct subject *s = &subjects[0];
	subject_init(c, 0, B_IO_HLT, caps.has_ept, 1, 0);
	vw(c, GUEST_RFLAGS, 0);
	check(c, "guest RFLAGS bit 1 clear: entry-failure exit", EXIT_FAILED_VMENTRY | EXIT_INVALID_STATE,
	      enter(c, s));
	vw(c, GUEST_RFLAGS, 2);
	check(c, "still not launched after the failed entry", 0, s->launched);
	for (int n = 0; n < 8; n++) {
		uint32_t reason = enter(c, s);
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			continue;
		}
		check(c, "the good launch ends in HLT", EXIT_HLT, reason);
		done(c);
	}
	FAIL(c, "no HLT exit after the good launch");
}

/* Bug (b)'s trigger: a VMLAUNCH that KVM's own checks accept and only the CPU rejects (a
 * "late" VM-Fail, VM-instruction error 7). TPR shadow on, virtualize-APIC-accesses and
 * virtual-interrupt delivery off, TPR threshold 0xf above VTPR[7:4] = 0 in the virtual-APIC
 * page: KVM checks only the page's address (nested_vmx_check_tpr_shadow_controls), the CPU
 * also compares the threshold with VTPR (SDM 26.2.1.1; Bochs: "TPR threshold > TPR shadow").
 * KVM then unwinds its model to L1's host state; without EPT in L0 the CR3 it gives L1 back
 * is whatever it kept in vmcs01.GUEST_CR3. L1 reads CR3 right before and right after the
 * VMLAUNCH (under shadow paging `mov %cr3` exits to KVM, so the trace shows both reads),
 * then lowers the threshold and launches for real. */
static uint8_t virtual_apic_page[PAGE] __attribute__((aligned(PAGE)));
#define VTPR_OFFSET 0x80
#define LATE_TPR_THRESHOLD 0xf

static inline uint64_t read_cr3_ordered(void)
{
	uint64_t v;
	asm volatile("mov %%cr3, %0" : "=r"(v) : : "memory");
	return v;
}

static void scn_late_vmfail(struct cpu *c)
{
	struct subject *s = &subjects[0];
	if (!((caps.proc >> 32) & CPU_TPR_SHADOW))
		FAIL(c, "this scenario needs the TPR shadow for L1");
	subject_init(c, 0, B_IO_HLT, caps.has_ept, 1, 0);
	uint32_t proc = (uint32_t)vmread(CPU_BASED_VM_EXEC_CONTROL) | CPU_TPR_SHADOW;
	/* Without CR8 exiting, L2's CR8 accesses go to the VTPR (as the CPU allows). */
	proc &= ~(uint32_t)((CPU_CR8_LOAD_EXITING | CPU_CR8_STORE_EXITING) & ~(uint32_t)caps.proc);
	vw(c, CPU_BASED_VM_EXEC_CONTROL, proc);
	uint32_t proc2 = (uint32_t)vmread(SECONDARY_VM_EXEC_CONTROL);
	if (proc2 & (SEC_VIRTUALIZE_APIC_ACCESSES | SEC_VIRTUAL_INTR_DELIVERY))
		FAIL(c, "secondary controls %x must leave APIC accesses and interrupt delivery alone",
		     proc2);
	virtual_apic_page[VTPR_OFFSET] = 0;
	vw(c, VIRTUAL_APIC_PAGE_ADDR, pa(virtual_apic_page));
	vw(c, TPR_THRESHOLD, LATE_TPR_THRESHOLD);
	LOG(c, "TPR shadow: threshold %x, VTPR %x, virtual-APIC page %lx", LATE_TPR_THRESHOLD,
	    virtual_apic_page[VTPR_OFFSET], pa(virtual_apic_page));
	/* Reported before the VMLAUNCH too: with bug (b) L1 may not live to report after it. */
	LOG(c, "CR3 %lx before the VMLAUNCH", read_cr3_ordered());

	uint64_t cr3_before = read_cr3_ordered();
	int r = vmx_enter(&s->regs, 0);
	uint64_t cr3_after = read_cr3_ordered();
	vmx_op_result(c, "vmlaunch", s->vmcs, 0, r);
	LOG(c, "CR3 %lx before the VMLAUNCH, %lx after it", cr3_before, cr3_after);
	check(c, "VMLAUNCH with TPR threshold above VTPR fails (VMfailValid)", 2, (uint64_t)r);
	if (r == 2)
		check(c, "VM-instruction error 7 (invalid control field)", 7,
		      vmread(VM_INSTRUCTION_ERROR));
	else if (r == 0)
		LOG(c, "the VMLAUNCH succeeded: exit reason %lx", vmread(VM_EXIT_REASON));
	check(c, "L1's CR3 after the late VM-Fail is its CR3 before", cr3_before, cr3_after);
	s->launched = r == 0;

	vw(c, TPR_THRESHOLD, 0);
	for (int n = 0; n < 8; n++) {
		uint32_t reason = enter(c, s);
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			continue;
		}
		check(c, "the good launch ends in HLT", EXIT_HLT, reason);
		check_cr3(c, s);
		done(c);
	}
	FAIL(c, "no HLT exit after the good launch");
}

/* Blind bug x2's trigger (7ca29de21362 undone): an L2 in 32-bit PAE paging under nested EPT.
 * With EPT the CPU takes the four PDPTEs from vmcs12's GUEST_PDPTR0-3 and never reads memory
 * at CR3 (SDM 26.3.2.4; Hyper-V relies on it), so L1 fills the PDPTR fields with valid
 * entries (PDPTE 0 -> a PD mapping the first 2 MiB with one large page) and points GUEST_CR3
 * at a page of 0xff bytes, which as PDPTEs are present with reserved bits set. A correct KVM
 * enters L2, which `out`s 1 and 2 and halts; KVM with the bug reads the PDPTEs at CR3
 * (through EPT12) and fails the entry with ENTRY_FAIL_PDPTE: exit reason 0x80000021,
 * qualification 2. L2's code is 32-bit, so it is a few bytes written here, not C. */
static uint64_t pae_pdpt[512] __attribute__((aligned(PAGE)));
static uint64_t pae_pd[512] __attribute__((aligned(PAGE)));
static uint8_t pae_bogus_cr3[PAGE] __attribute__((aligned(PAGE)));
static uint8_t pae_code[PAGE] __attribute__((aligned(PAGE)));
#define PAE_PORT 0x80
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define AR_CODE32 0xc09b
#define ENTRY_FAIL_PDPTE 2

static void scn_pae_pdpte(struct cpu *c)
{
	struct subject *s = &subjects[0];
	if (!caps.has_ept)
		FAIL(c, "this scenario needs EPT for L1 (4-level, WB)");
	subject_init(c, 0, B_IO_HLT, 1, 1, 0);
	/* mov $1,%eax; out %eax,$0x80; mov $2,%eax; out %eax,$0x80; 1: hlt; jmp 1b */
	static const uint8_t code[] = {0xb8, 1, 0, 0, 0, 0xe7, PAE_PORT, 0xb8, 2, 0, 0, 0,
				       0xe7, PAE_PORT, 0xf4, 0xeb, 0xfd};
	memcpy(pae_code, code, sizeof(code));
	memset(pae_bogus_cr3, 0xff, sizeof(pae_bogus_cr3));
	pae_pd[0] = 0x83; /* 2 MiB page at 0: present, writable, PS */
	pae_pdpt[0] = pa(pae_pd) | 1;
	const uint64_t pdptr[4] = {pae_pdpt[0], 0, 0, 0};
	vw(c, VM_ENTRY_CONTROLS, (uint32_t)vmread(VM_ENTRY_CONTROLS) & ~ENTRY_IA32E_MODE);
	vw(c, GUEST_IA32_EFER, vmread(GUEST_IA32_EFER) & ~(EFER_LME | EFER_LMA));
	vw(c, GUEST_CS_AR_BYTES, AR_CODE32);
	vw(c, GUEST_PDPTR0, pdptr[0]);
	vw(c, GUEST_PDPTR1, pdptr[1]);
	vw(c, GUEST_PDPTR2, pdptr[2]);
	vw(c, GUEST_PDPTR3, pdptr[3]);
	vw(c, GUEST_CR3, pa(pae_bogus_cr3));
	vw(c, GUEST_RIP, pa(pae_code));
	LOG(c, "PAE L2: PDPTR0 %lx (PD %lx), CR3 %lx holds 0xff bytes", pdptr[0], pa(pae_pd),
	    pa(pae_bogus_cr3));
	for (int n = 0; n < 8; n++) {
		uint32_t reason = enter(c, s);
		if (reason == (EXIT_FAILED_VMENTRY | EXIT_INVALID_STATE)) {
			uint64_t q = vmread(EXIT_QUALIFICATION);
			LOG(c, "entry failed: qualification %lx (2: PDPTEs loaded from CR3)", q);
			check(c, "the PAE L2 under nested EPT is entered: its first exit is its out",
			      EXIT_IO_INSTRUCTION, reason);
			done(c);
		}
		if (reason == EXIT_IO_INSTRUCTION) {
			check(c, "I/O exit value of the PAE L2", (uint64_t)n + 1,
			      s->regs.rax & 0xffffffff);
			skip_instruction(c);
			continue;
		}
		check(c, "the PAE L2 ends in HLT", EXIT_HLT, reason);
		check(c, "GUEST_CR3 after the exit is the one L1 wrote", pa(pae_bogus_cr3),
		      vmread(GUEST_CR3));
		check(c, "GUEST_PDPTR0 after the exit is the one L1 wrote", pdptr[0],
		      vmread(GUEST_PDPTR0));
		done(c);
	}
	FAIL(c, "no HLT exit from the PAE L2");
}

/* Blind bug x1's trigger (0780516a18f8 undone): the EPT12 PDE over L2's code (the whole
 * first 2 MiB) is readable and writable but not executable, the leaves below it are RWX. L2's
 * first fetch faults; the EPT violation L1 receives must say the fetch (bit 2) was attempted
 * and that the GPA is readable and writable, not executable: bits 5:3 = 0b011 (the AND of all
 * levels, SDM 28.3.3.2 / table 28-7). KVM with the bug reports 0b110 (W, X), i.e. the fetch
 * as permitted. L1 then gives the PDE its X, INVEPTs, and the subject runs to its HLT. */
#define EPT_QUAL_FETCH (1ull << 2)

static void scn_ept_upper_nox(struct cpu *c)
{
	struct subject *s = &subjects[0];
	if (!caps.has_ept || !(caps.ept_vpid & EPT_CAP_INVEPT))
		FAIL(c, "this scenario needs EPT and INVEPT for L1");
	subject_init(c, 0, B_IO_HLT, 1, 1, 0);
	ept_pd[0][0] = pa(ept_pt[0]) | EPT_R | EPT_W;
	LOG(c, "EPT12 PDE 0 %lx (R|W, no X) over RWX leaves; L2 starts at %lx", ept_pd[0][0],
	    pa(subject_entry));
	uint32_t reason = enter(c, s);
	if (reason != EXIT_EPT_VIOLATION)
		FAIL(c, "expected an EPT violation at L2's first fetch, exit reason %x", reason);
	uint64_t q = vmread(EXIT_QUALIFICATION);
	uint64_t gpa = vmread(GUEST_PHYSICAL_ADDRESS);
	LOG(c, "EPT violation: qualification %lx, GPA %lx, access %lx, permitted %lx", q, gpa,
	    q & 7, (q >> 3) & 7);
	check(c, "the EPT violation's GPA is L2's entry point", pa(subject_entry), gpa);
	check(c, "the EPT violation's access is the fetch (bit 2)", EPT_QUAL_FETCH, q & 7);
	check(c, "the EPT violation's permissions are R,W, not X (bits 5:3 = 0b011)",
	      EPT_R | EPT_W, (q >> 3) & 7);
	ept_pd[0][0] |= EPT_X;
	vmx_op_result(c, "invept", s->eptp, INVEPT_SINGLE, invept(INVEPT_SINGLE, s->eptp));
	for (int n = 0; n < 8; n++) {
		reason = enter(c, s);
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			continue;
		}
		check(c, "with X in the PDE the subject ends in HLT", EXIT_HLT, reason);
		done(c);
	}
	FAIL(c, "no HLT exit after the PDE got its X");
}

/* Blind bug x3's trigger (e1d39b17e044 undone): L1 owns CR0.TS and CR0.MP (CR0 guest/host
 * mask) with TS clear in the read shadow; L2 executes `lmsw %bx` whose source sets TS while
 * RAX has it clear. LMSW changing a bit L1 owns must exit to L1 (SDM 25.1.3), whatever RAX
 * holds; KVM with the bug decides on RAX (the qualification's GPR field, 0 for LMSW), handles
 * the LMSW itself, and L1's next exit is L2's `out`. L1 skips the lmsw without emulating it,
 * so GUEST_CR0.TS stays clear on a correct KVM. */
#define CR_QUAL_TYPE(q) (((q) >> 4) & 3)
#define CR_QUAL_LMSW 3

static void scn_lmsw(struct cpu *c)
{
	struct subject *s = &subjects[0];
	subject_init(c, 0, B_LMSW, caps.has_ept, 1, 0);
	uint64_t cr0 = vmread(GUEST_CR0) & ~CR0_TS;
	vw(c, GUEST_CR0, cr0);
	vw(c, CR0_GUEST_HOST_MASK, CR0_TS | CR0_MP);
	vw(c, CR0_READ_SHADOW, cr0);
	LOG(c, "L1 owns CR0 bits %lx, read shadow %lx; L2's lmsw sets TS, its RAX does not",
	    CR0_TS | CR0_MP, cr0);
	uint32_t reason = enter(c, s);
	check(c, "L2's lmsw setting CR0.TS (owned by L1) exits to L1 (CR_ACCESS)", EXIT_CR_ACCESS,
	      reason);
	if (reason == EXIT_CR_ACCESS) {
		uint64_t q = vmread(EXIT_QUALIFICATION);
		check(c, "the CR-access qualification is LMSW (type 3)", CR_QUAL_LMSW,
		      CR_QUAL_TYPE(q));
		check(c, "the LMSW source in the qualification sets TS", CR0_TS, (q >> 16) & CR0_TS);
		skip_instruction(c);
		reason = enter(c, s);
	}
	for (int n = 0; n < 8; n++) {
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			reason = enter(c, s);
			continue;
		}
		check(c, "the subject ends in HLT", EXIT_HLT, reason);
		check(c, "GUEST_CR0.TS at the end is as L1 left it (clear)", 0,
		      vmread(GUEST_CR0) & CR0_TS);
		done(c);
	}
	FAIL(c, "no HLT exit from the lmsw subject");
}

/* Asks the loader how many of the DIRTY_FRAMES frames are in L0's dirty log (and so clears
 * it). */
static uint64_t dirty_query(struct cpu *c, uint32_t round)
{
	uint64_t gpa = pa(dirty_frames);
	emit(c, REC_DIRTY, 0, gpa, 0, DIRTY_FRAMES, ~0ull, "frames %lx+%u after round %u", gpa,
	     DIRTY_FRAMES, round);
	volatile struct l1_record *r = &c->rec;
	uint64_t logged = r->b, dirty = r->d;
	if (logged == ~0ull)
		FAIL(c, "this scenario needs a loader that logs dirty pages (vmxray lab vmx-dirty)");
	if (dirty == ~0ull)
		FAIL(c, "the loader did not answer the dirty-log question");
	LOG(c, "dirty log after round %u: %lu pages, %lu of the %u frames", round, logged, dirty,
	    DIRTY_FRAMES);
	return dirty;
}

/* Bug (f)'s trigger (1f4e5fc83a42 and c3bb9a20834f undone): L0's VMM logs the dirty pages
 * of this L1's memory (the loader's vmx-dirty memslot has KVM_MEM_LOG_DIRTY_PAGES) and L2,
 * under nested EPT with A/D bits, writes DIRTY_PAGES distinct L2 pages per round, which EPT12
 * maps onto the frames `dirty_frames`. After each round L1 asks the loader how many frames
 * are in the dirty log (REC_DIRTY: the loader fetches and so clears the log). L2 wrote every
 * frame every round, so all must be dirty every round. A KVM that leaves PML on in vmcs02
 * clears the D bits of L2's SPTEs with the log; L2's next writes are logged by the CPU with
 * their L2 GPAs (above L1's memory: dropped), the frames are missed from round 1 on, and the
 * 513th logged write of a round is a PML_FULL exit while L2 runs. */
static void scn_dirty(struct cpu *c)
{
	struct subject *s = &subjects[0];
	if (!caps.has_ept || !caps.ept_ad)
		FAIL(c, "this scenario needs EPT with accessed/dirty bits for L1");
	subject_init(c, 0, B_DIRTY, 1, 1, 0);
	for (uint64_t t = 0; t < 2; t++) {
		for (uint64_t i = 0; i < 512; i++)
			dirty_ept_pt[t][i] = pa(dirty_frames[i % DIRTY_FRAMES]) | EPT_RWX | EPT_MT_WB;
		ept_pd[0][1 + t] = pa(dirty_ept_pt[t]) | EPT_RWX;
		l2_pd[0][1 + t] = (DIRTY_L2_GPA + t * 0x200000) | 0x83;
	}
	LOG(c, "L2 writes %u pages at L2 GPA %lx; EPT12 maps them to the %u frames at %lx",
	    DIRTY_PAGES, DIRTY_L2_GPA, DIRTY_FRAMES, pa(dirty_frames));
	dirty_query(c, 0xff); /* start from an empty log */
	uint32_t reason = enter(c, s);
	for (uint32_t round = 0; round < DIRTY_ROUNDS; round++) {
		if (reason != EXIT_IO_INSTRUCTION)
			FAIL(c, "round %u: expected L2's out, exit reason %x", round, reason);
		check(c, "L2's out after a round of writes carries the round", round,
		      s->regs.rax & 0xffffffff);
		check(c, "every frame L2 wrote in this round is in L0's dirty log", DIRTY_FRAMES,
		      dirty_query(c, round));
		skip_instruction(c);
		reason = enter(c, s);
	}
	check(c, "the subject ends in HLT", EXIT_HLT, reason);
	done(c);
}

/* An L2 that executes ud2 with an empty IDT triple-faults; L1 gets TRIPLE_FAULT (2) and
 * goes on with another subject. */
static void scn_triple(struct cpu *c)
{
	subject_init(c, 0, B_UD, caps.has_ept, 1, 0);
	uint32_t reason = enter(c, &subjects[0]);
	if (reason == EXIT_IO_INSTRUCTION) {
		skip_instruction(c);
		reason = enter(c, &subjects[0]);
	}
	check(c, "L2 triple fault reflected as TRIPLE_FAULT", EXIT_TRIPLE_FAULT, reason);
	subject_init(c, 1, B_IO_HLT, caps.has_ept, 1, 0);
	for (int n = 0; n < 8; n++) {
		reason = enter(c, &subjects[1]);
		if (reason == EXIT_IO_INSTRUCTION) {
			skip_instruction(c);
			continue;
		}
		check(c, "the next subject ends in HLT", EXIT_HLT, reason);
		done(c);
	}
	FAIL(c, "no HLT exit from the second subject");
}

static void x2apic_enable(struct cpu *c)
{
	uint32_t a, b, cx, d;
	cpuid(1, 0, &a, &b, &cx, &d);
	if (!(cx & (1u << 21)))
		FAIL(c, "no x2APIC in CPUID: cannot send INIT/SIPI");
	uint64_t base = rdmsr(MSR_IA32_APIC_BASE);
	wrmsr(MSR_IA32_APIC_BASE, base | (1ull << 11) | (1ull << 10));
	wrmsr(MSR_X2APIC_SVR, 0x1ff); /* software-enabled, spurious vector 0xff */
}

static int wait_for(volatile uint32_t *word, uint32_t value, uint64_t spins)
{
	while (spins--) {
		if (*word >= value)
			return 1;
		if (scenario_failed)
			return 0;
		pause();
	}
	return 0;
}

#define SPIN_LONG 20000000ull

/* The BSP's side: INIT to the AP while it runs L2 (INIT_SIGNAL exit to its L1), INIT again
 * while it is in VMX root (latched until its VMXOFF), then SIPI: the AP restarts in real
 * mode at the trampoline. */
static void scn_init_bsp(struct cpu *c)
{
	x2apic_enable(c);
	memcpy((void *)(uintptr_t)(SIPI_VECTOR << 12), sipi_trampoline,
	       (size_t)(sipi_trampoline_end - sipi_trampoline));
	if (!wait_for(&AP_STATE, AP_IN_L2, SPIN_LONG))
		FAIL(c, "the AP never entered L2 (state %u)", AP_STATE);
	for (int i = 0; i < 100000; i++)
		pause();
	const uint64_t init = (1ull << 32) | (1u << 14) | (5u << 8);
	LOG(c, "INIT to vCPU 1 while it runs L2");
	wrmsr(MSR_X2APIC_ICR, init);
	if (!wait_for(&AP_STATE, AP_GOT_INIT_EXIT, SPIN_LONG))
		FAIL(c, "the AP's L1 never saw the INIT exit (state %u)", AP_STATE);
	LOG(c, "INIT to vCPU 1 while it is in VMX root operation");
	wrmsr(MSR_X2APIC_ICR, init);
	AP_INIT2_SENT = 1;
	if (!wait_for(&AP_STATE, AP_VMXOFF, SPIN_LONG))
		FAIL(c, "the AP never reached VMXOFF (state %u)", AP_STATE);
	for (int attempt = 0; attempt < 3; attempt++) {
		for (int i = 0; i < 200000; i++)
			pause();
		LOG(c, "SIPI vector %x to vCPU 1 (attempt %d)", SIPI_VECTOR, attempt + 1);
		wrmsr(MSR_X2APIC_ICR, (1ull << 32) | (1u << 14) | (6u << 8) | SIPI_VECTOR);
		if (wait_for(&AP_STATE, AP_SIPI_ALIVE, SPIN_LONG / 4)) {
			check(c, "vCPU 1 restarted at the SIPI trampoline", AP_SIPI_ALIVE, AP_STATE);
			done(c);
		}
	}
	FAIL(c, "vCPU 1 did not come back after SIPI (state %u)", AP_STATE);
}

static void scn_init_ap(struct cpu *c)
{
	x2apic_enable(c);
	struct subject *s = &subjects[AP_SUBJECT];
	subject_init(c, AP_SUBJECT, B_SPIN, caps.has_ept, 1, 1);
	AP_STATE = AP_IN_L2;
	for (int n = 0; n < 100000; n++) {
		s->arm_timer = 1;
		uint32_t reason = enter(c, s);
		if (scenario_failed)
			FAIL(c, "the other vCPU failed");
		if (reason == EXIT_PREEMPTION_TIMER)
			continue;
		check(c, "INIT in L2 exits to L1 as INIT_SIGNAL", EXIT_INIT_SIGNAL, reason);
		break;
	}
	AP_STATE = AP_GOT_INIT_EXIT;
	if (!wait_for(&AP_INIT2_SENT, 1, SPIN_LONG))
		FAIL(c, "no second INIT from the BSP");
	for (int i = 0; i < 100000; i++)
		pause();
	do_vmclear(c, s->vmcs);
	LOG(c, "VMXOFF with an INIT latched: the vCPU resets and waits for SIPI");
	AP_STATE = AP_VMXOFF;
	vmx_op_result(c, "vmxoff", 0, 0, vmxoff());
	for (int i = 0; i < 10000000; i++)
		pause();
	FAIL(c, "still running after VMXOFF: the latched INIT was not delivered");
}

void l1_main(uint64_t scenario, uint64_t param, uint64_t cpu_index)
{
	struct cpu *c = &cpus[cpu_index < MAX_CPUS ? cpu_index : 0];
	c->index = (uint32_t)cpu_index;
	tables_init(c->index);
	LOG(c, "L1 up on vCPU %lu: scenario %lu parameter %lu", cpu_index, scenario, param);
	caps_read(c);
	vmx_on(c);
	if (scenario == SCN_INIT) {
		if (cpu_index == 0)
			scn_init_bsp(c);
		scn_init_ap(c);
	}
	if (cpu_index != 0)
		FAIL(c, "scenario %lu runs on one vCPU", scenario);
	switch (scenario) {
	case SCN_IO:
		scn_io(c);
		break;
	case SCN_RR:
		scn_round_robin(c, param ? (uint32_t)param : 3, 1, -1, ROUNDS);
		break;
	case SCN_RR_NOEPT:
		scn_round_robin(c, param ? (uint32_t)param : 3, 0, -1, ROUNDS);
		break;
	case SCN_HLT:
		scn_round_robin(c, 3, 0, 1, 4);
		break;
	case SCN_HLT_EPT:
		scn_round_robin(c, 3, 1, 1, 4);
		break;
	case SCN_INVEPT:
		scn_invept(c);
		break;
	case SCN_VMFAIL:
		scn_vmfail(c);
		break;
	case SCN_TRIPLE:
		scn_triple(c);
		break;
	case SCN_HWFAIL:
		scn_hwfail(c);
		break;
	case SCN_LATE_VMFAIL:
		scn_late_vmfail(c);
		break;
	case SCN_PAE_PDPTE:
		scn_pae_pdpte(c);
		break;
	case SCN_EPT_UPPER_NOX:
		scn_ept_upper_nox(c);
		break;
	case SCN_LMSW:
		scn_lmsw(c);
		break;
	case SCN_DIRTY:
		scn_dirty(c);
		break;
	default:
		break;
	}
	FAIL(c, "unknown scenario %lu", scenario);
}
