/* Entry, descriptor tables, VM-entry/VM-exit glue and the INIT/SIPI trampoline of the
 * vmxray L1 test hypervisor. */
#include "proto.h"

	.intel_syntax noprefix

/* ---- Entry: the loader starts every vCPU here in 64-bit mode (see proto.h). ---- */
	.section .text.start, "ax"
	.code64
	.globl _start
_start:
	cld
	cli
	/* Our own GDT (the loader's GDTR is not ours to trust): 0x08 code64, 0x10 data,
	 * 0x18 the vCPU's TSS (tss_desc_install fills it in C before ltr). */
	lea rax, [rip + gdt_ptr]
	lgdt [rax]
	push 0x08
	lea rax, [rip + 1f]
	push rax
	retfq
1:	mov ax, 0x10
	mov ds, ax
	mov es, ax
	mov ss, ax
	mov fs, ax
	mov gs, ax
	/* RDI, RSI, RDX are the loader's arguments; l1_main never returns. */
	call l1_main
2:	hlt
	jmp 2b

/* ---- VM entry and exit ----
 * int vmx_enter(struct gregs *g, int launched): loads the guest GPRs from *g and executes
 * VMLAUNCH (launched == 0) or VMRESUME. Returns 0 after a VM exit (guest GPRs saved to *g),
 * 1 on VMfailInvalid, 2 on VMfailValid. HOST_RSP is set here, HOST_RIP = vmx_exit_stub. */
	.text
	.globl vmx_enter
vmx_enter:
	push rbp
	push rbx
	push r12
	push r13
	push r14
	push r15
	push rdi
	mov rax, 0x6c14 /* HOST_RSP */
	vmwrite rax, rsp
	test esi, esi
	mov rax, [rdi + 0]
	mov rbx, [rdi + 8]
	mov rcx, [rdi + 16]
	mov rdx, [rdi + 24]
	mov rsi, [rdi + 32]
	mov rbp, [rdi + 48]
	mov r8, [rdi + 56]
	mov r9, [rdi + 64]
	mov r10, [rdi + 72]
	mov r11, [rdi + 80]
	mov r12, [rdi + 88]
	mov r13, [rdi + 96]
	mov r14, [rdi + 104]
	mov r15, [rdi + 112]
	mov rdi, [rdi + 40]
	jnz 1f
	vmlaunch
	jmp 2f
1:	vmresume
2:	/* Only reached when the instruction failed: CF = VMfailInvalid, ZF = VMfailValid. */
	pop rdi
	jc 3f
	mov eax, 2
	jmp 4f
3:	mov eax, 1
4:	pop r15
	pop r14
	pop r13
	pop r12
	pop rbx
	pop rbp
	ret

	.globl vmx_exit_stub
vmx_exit_stub:
	/* RSP = HOST_RSP: [rsp] is the struct gregs pointer pushed by vmx_enter. */
	push rax
	mov rax, [rsp + 8]
	mov [rax + 8], rbx
	mov [rax + 16], rcx
	mov [rax + 24], rdx
	mov [rax + 32], rsi
	mov [rax + 40], rdi
	mov [rax + 48], rbp
	mov [rax + 56], r8
	mov [rax + 64], r9
	mov [rax + 72], r10
	mov [rax + 80], r11
	mov [rax + 88], r12
	mov [rax + 96], r13
	mov [rax + 104], r14
	mov [rax + 112], r15
	pop rbx
	mov [rax + 0], rbx
	pop rdi
	pop r15
	pop r14
	pop r13
	pop r12
	pop rbx
	pop rbp
	xor eax, eax
	ret

/* ---- L1 exception stubs: every vector reports and stops (l1_exception in C). ---- */
	.macro EXC vec, has_error
	.globl exc_\vec
exc_\vec:
	.if \has_error == 0
	push 0
	.endif
	push \vec
	jmp exc_common
	.endm
	EXC 0, 0
	EXC 1, 0
	EXC 2, 0
	EXC 3, 0
	EXC 4, 0
	EXC 5, 0
	EXC 6, 0
	EXC 7, 0
	EXC 8, 1
	EXC 9, 0
	EXC 10, 1
	EXC 11, 1
	EXC 12, 1
	EXC 13, 1
	EXC 14, 1
	EXC 15, 0
	EXC 16, 0
	EXC 17, 1
	EXC 18, 0
	EXC 19, 0
	EXC 20, 0
	EXC 21, 1
exc_common:
	mov rdi, [rsp]      /* vector */
	mov rsi, [rsp + 8]  /* error code */
	mov rdx, [rsp + 16] /* RIP */
	mov rcx, cr2
	and rsp, -16
	call l1_exception
1:	hlt
	jmp 1b

	.section .rodata
	.globl exc_table
	.balign 8
exc_table:
	.quad exc_0, exc_1, exc_2, exc_3, exc_4, exc_5, exc_6, exc_7, exc_8, exc_9, exc_10
	.quad exc_11, exc_12, exc_13, exc_14, exc_15, exc_16, exc_17, exc_18, exc_19, exc_20
	.quad exc_21

/* ---- The real-mode trampoline a vCPU runs after INIT/SIPI (copied below 1 MiB by C;
 * CS base = vector << 12, DS = 0 at reset). It marks itself alive in memory and through
 * the port, then stops. ---- */
	.section .rodata
	.globl sipi_trampoline, sipi_trampoline_end
	.code16
sipi_trampoline:
	cli
	xor ax, ax
	mov ds, ax
	mov dword ptr [0x7ff0], 4 /* SIPI_FLAG_GPA: ap_state = AP_SIPI_ALIVE */
	mov dx, L1_PORT_SIPI_ALIVE
	mov al, 1
	out dx, al
1:	hlt
	jmp 1b
sipi_trampoline_end:
	.code64

/* ---- GDT (the TSS descriptor is written by C) ---- */
	.data
	.balign 16
	.globl gdt
gdt:
	.quad 0
	.quad 0x00af9b000000ffff /* 0x08: 64-bit code, DPL 0 */
	.quad 0x00cf93000000ffff /* 0x10: data, DPL 0 */
	.quad 0, 0               /* 0x18: TSS of vCPU 0 */
	.quad 0, 0               /* 0x28: TSS of vCPU 1 */
gdt_end:
	.balign 16
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.section .note.GNU-stack, "", @progbits
