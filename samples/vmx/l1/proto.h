/* The contract between the L1 test hypervisor and its loader (`vmxray lab vmx-*`,
 * samples/src/lab/l1.rs, which mirrors every number here).
 *
 * Start: the loader puts the flat image at L1_LOAD_GPA and starts each vCPU in 64-bit mode
 * at L1_LOAD_GPA with RDI = scenario, RSI = parameter (0 = the scenario's default),
 * RDX = vCPU index, RSP = a stack below the image, CR3 = identity map of the first 2 MiB.
 *
 * Reports: `out L1_PORT_RECORD, eax` with EAX = the guest-physical address of one
 * `struct l1_record` (128 bytes, little-endian); the loader copies it out during that exit.
 * A vCPU's last record is REC_DONE or REC_FAIL; the loader stops running it then.
 * `out L1_PORT_SIPI_ALIVE, al` comes from the real-mode trampoline of a vCPU restarted by
 * INIT/SIPI (it cannot build records: no paging, no stack).
 */
#ifndef VMXRAY_L1_PROTO_H
#define VMXRAY_L1_PROTO_H

#define L1_LOAD_GPA 0x100000
#define L1_PORT_RECORD 0x511
#define L1_PORT_SIPI_ALIVE 0x512

/* Scenarios (RDI). */
#define SCN_IO 1         /* one subject, nested EPT: VMLAUNCH, I/O exits, HLT exit */
#define SCN_RR 2         /* N subjects round-robin on the preemption timer, nested EPT */
#define SCN_RR_NOEPT 3   /* the same without nested EPT */
#define SCN_HLT 4        /* Muen pattern: a subject idles in HLT, HLT exiting off, no EPT */
#define SCN_HLT_EPT 5    /* the same with nested EPT */
#define SCN_INVEPT 6     /* L1 edits EPT12, INVEPT single/all-context, INVVPID */
#define SCN_VMFAIL 7     /* failing VMRESUME/VMLAUNCH: early VMfail, late entry failure */
#define SCN_INIT 8       /* INIT in L2 and in VMX root, SIPI of the second vCPU */
#define SCN_TRIPLE 9     /* an L2 triple fault reflected to L1 */
#define SCN_HWFAIL 10    /* an invalid guest state only the hardware checks (RFLAGS) */
#define SCN_LATE_VMFAIL 11 /* a VMLAUNCH only the hardware rejects (VMfail 7): L1's CR3 after it */
#define SCN_PAE_PDPTE 12   /* a PAE L2 under nested EPT whose CR3 holds no valid PDPTEs */
#define SCN_EPT_UPPER_NOX 13 /* an EPT12 PDE without X over RWX leaves: L2's fetch faults */
#define SCN_LMSW 14        /* L1 owns CR0.TS; L2's lmsw sets it with RAX leaving it clear */
#define SCN_DIRTY 15       /* L0's VMM logs L1's dirty pages while L2 writes 1024 L2 pages */

/* Record kinds. */
#define REC_LOG 1     /* text */
#define REC_VMWRITE 2 /* vmcs, a = field encoding, b = value */
#define REC_EXIT 3    /* vmcs, a = exit reason (32 bits), b = qualification, c = guest RIP,
			 d = guest CR3 (read back at the exit), text = subject */
#define REC_VMXOP 4   /* text = instruction, vmcs = operand (VMCS or EPTP), a = type,
			 b = result (0 ok, 1 VMfailInvalid, 2 VMfailValid), c = VM-instruction
			 error (VMfailValid) */
#define REC_CHECK 5   /* text = what, a = expected, b = actual, c = 1 if equal */
#define REC_DONE 6    /* a = number of failed checks */
#define REC_FAIL 7    /* text = why */
#define REC_SUBJECT 8 /* vmcs, a = subject id, b = guest CR3, c = EPTP (0 without EPT),
			 d = VPID, text = behaviour */
#define REC_DIRTY 9   /* a question to the loader: how many of the c pages from GPA a are in
			 L0's dirty log? It fetches (and so clears) the log and answers in this
			 record before the L1 resumes: b = pages in the log, d = pages of the
			 range among them; b = ~0 when the loader does not log dirty pages (the
			 L1 sets d = ~0 before asking). text = what is asked */

#define L1_TEXT_LEN 80

#ifndef __ASSEMBLER__
#include <stdint.h>
struct l1_record {
	uint32_t kind;
	uint32_t cpu;
	uint64_t vmcs;
	uint64_t a, b, c, d;
	char text[L1_TEXT_LEN];
};
_Static_assert(sizeof(struct l1_record) == 128, "record size is part of the protocol");
#endif

#endif
