//! Short mnemonics for the instructions KVM's emulator reports most (`kvm_emulate_insn`).
//!
//! This is not a disassembler: it names the privileged and I/O instructions that make up
//! emulator traces (control-register moves, descriptor-table loads, port I/O, `hlt`, `cpuid`,
//! the `0f 01` group) plus a few common ALU/branch forms, and answers `None` for anything else so
//! that the caller shows the bytes alone. Operand details are given only where they matter to a
//! KVM developer (which CR, which port).

/// The 64-bit register names by number (REX.B/R extends to r8–r15).
const GPR64: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const GPR32: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];

/// A short disassembly of `bytes` (`mov cr3, rax`, `lidt [0x7000]`, `out 0x10, al`, `vmresume`),
/// or `None` when the instruction is not one of the known forms: the instructions KVM's
/// emulator and triage narratives meet (CR/DR moves, descriptor-table loads, port I/O, VMX and
/// SVM instructions, `ud2`, `hlt`, ...). The one decoder of every crate.
pub fn mnemonic(bytes: &[u8]) -> Option<String> {
    let Prefixed { rep, rex, rest } = Prefixed::split(bytes);
    let rex_w = rex & 0x08 != 0;
    let rex_r = usize::from(rex & 0x04 != 0) << 3;
    let rex_b = usize::from(rex & 0x01 != 0) << 3;
    let modrm =
        |at: usize| rest.get(at).map(|&m| (m >> 6, usize::from((m >> 3) & 7), usize::from(m & 7)));
    let reg_name = |n: usize| if rex_w || rex != 0 { GPR64[n & 15] } else { GPR32[n & 7] };
    let text = match rest {
        [0xf4, ..] => "hlt".to_owned(),
        [0xfa, ..] => "cli".to_owned(),
        [0xfb, ..] => "sti".to_owned(),
        [0xcc, ..] => "int3".to_owned(),
        [0xcd, v, ..] => format!("int 0x{v:x}"),
        [0xcf, ..] => "iret".to_owned(),
        [0x90, ..] => "nop".to_owned(),
        [0xe4, p, ..] => format!("in al, 0x{p:x}"),
        [0xe5, p, ..] => format!("in eax, 0x{p:x}"),
        [0xe6, p, ..] => format!("out 0x{p:x}, al"),
        [0xe7, p, ..] => format!("out 0x{p:x}, eax"),
        [0xec, ..] => "in al, dx".to_owned(),
        [0xed, ..] => "in eax, dx".to_owned(),
        [0xee, ..] => "out dx, al".to_owned(),
        [0xef, ..] => "out dx, eax".to_owned(),
        [op @ 0xa4..=0xa7 | op @ 0xaa..=0xaf, ..] => {
            let (name, compares) = match op {
                0xa4 | 0xa5 => ("movs", false),
                0xa6 | 0xa7 => ("cmps", true),
                0xaa | 0xab => ("stos", false),
                0xac | 0xad => ("lods", false),
                _ => ("scas", true),
            };
            let rep = match (rep, compares) {
                (Some(0xf3), false) => "rep ",
                (Some(0xf3), true) => "repe ",
                (Some(_), _) => "repne ",
                (None, _) => "",
            };
            format!("{rep}{name}")
        }
        [0x6c | 0x6d, ..] => "ins".to_owned(),
        [0x6e | 0x6f, ..] => "outs".to_owned(),
        [0xeb, ..] => "jmp short".to_owned(),
        [0xe9, ..] => "jmp near".to_owned(),
        [0xe8, ..] => "call".to_owned(),
        [0xc3, ..] => "ret".to_owned(),
        [0xff, ..] => match modrm(1)? {
            (3, 0, rm) => format!("inc {}", reg_name(rm | rex_b)),
            (3, 1, rm) => format!("dec {}", reg_name(rm | rex_b)),
            _ => return None,
        },
        [0xc7, ..] => match modrm(1)? {
            (3, 0, rm) => format!("mov {}, imm32", reg_name(rm | rex_b)),
            (_, 0, _) => "mov mem, imm32".to_owned(),
            _ => return None,
        },
        [0x89 | 0x8b, ..] => "mov".to_owned(),
        [0x0f, 0x0b, ..] => "ud2".to_owned(),
        [0x0f, 0xa2, ..] => "cpuid".to_owned(),
        [0x0f, 0x31, ..] => "rdtsc".to_owned(),
        [0x0f, 0x30, ..] => "wrmsr".to_owned(),
        [0x0f, 0x32, ..] => "rdmsr".to_owned(),
        [0x0f, 0x06, ..] => "clts".to_owned(),
        [0x0f, 0x08, ..] => "invd".to_owned(),
        [0x0f, 0x09, ..] => "wbinvd".to_owned(),
        [0x0f, 0xaa, ..] => "rsm".to_owned(),
        [0x0f, 0x05, ..] => "syscall".to_owned(),
        [0x0f, 0x07, ..] => "sysret".to_owned(),
        [0x0f, 0x34, ..] => "sysenter".to_owned(),
        [0x0f, 0x35, ..] => "sysexit".to_owned(),
        [0x0f, op @ (0x20 | 0x22), ..] => {
            let (_, cr, rm) = modrm(2)?;
            let cr = cr | rex_r;
            let gpr = GPR64[rm | rex_b];
            if *op == 0x22 { format!("mov cr{cr}, {gpr}") } else { format!("mov {gpr}, cr{cr}") }
        }
        [0x0f, op @ (0x21 | 0x23), ..] => {
            let (_, dr, rm) = modrm(2)?;
            let gpr = GPR64[rm | rex_b];
            if *op == 0x23 { format!("mov dr{dr}, {gpr}") } else { format!("mov {gpr}, dr{dr}") }
        }
        [0x0f, 0x00, ..] => match modrm(2)? {
            (_, 0, _) => "sldt".to_owned(),
            (_, 1, _) => "str".to_owned(),
            (_, 2, _) => "lldt".to_owned(),
            (_, 3, _) => "ltr".to_owned(),
            (_, 4, _) => "verr".to_owned(),
            (_, 5, _) => "verw".to_owned(),
            _ => return None,
        },
        [0x0f, 0x01, m, ..] => match *m {
            0xc1 => "vmcall".to_owned(),
            0xc2 => "vmlaunch".to_owned(),
            0xc3 => "vmresume".to_owned(),
            0xc4 => "vmxoff".to_owned(),
            0xc8 => "monitor".to_owned(),
            0xc9 => "mwait".to_owned(),
            0xca => "clac".to_owned(),
            0xcb => "stac".to_owned(),
            0xd0 => "xgetbv".to_owned(),
            0xd1 => "xsetbv".to_owned(),
            0xd4 => "vmfunc".to_owned(),
            0xd8 => "vmrun".to_owned(),
            0xd9 => "vmmcall".to_owned(),
            0xda => "vmload".to_owned(),
            0xdb => "vmsave".to_owned(),
            0xdc => "stgi".to_owned(),
            0xdd => "clgi".to_owned(),
            0xdf => "invlpga".to_owned(),
            0xf8 => "swapgs".to_owned(),
            0xf9 => "rdtscp".to_owned(),
            _ => {
                let name = match (m >> 6, (m >> 3) & 7) {
                    (3, _) => return None,
                    (_, 0) => "sgdt",
                    (_, 1) => "sidt",
                    (_, 2) => "lgdt",
                    (_, 3) => "lidt",
                    (_, 4) => "smsw",
                    (_, 6) => "lmsw",
                    (_, 7) => "invlpg",
                    _ => return None,
                };
                // The operand when it is an absolute address (`[disp32]`, SIB with no base
                // and no index), as hand-written test guests and boot code load tables.
                match rest {
                    [0x0f, 0x01, _, 0x25, a, b, c, d, ..] if m & 0xc7 == 0x04 => {
                        format!("{name} [{:#x}]", u32::from_le_bytes([*a, *b, *c, *d]))
                    }
                    _ => format!("{name} [mem]"),
                }
            }
        },
        [0x0f, 0x78, ..] => "vmread".to_owned(),
        [0x0f, 0x79, ..] => "vmwrite".to_owned(),
        [0x0f, 0xc7, m, ..] if (m >> 3) & 7 == 6 => "vmptrld".to_owned(),
        [0x0f, 0xc7, m, ..] if (m >> 3) & 7 == 7 => "vmptrst".to_owned(),
        [0x0f, 0x38, 0x80, ..] => "invept".to_owned(),
        [0x0f, 0x38, 0x81, ..] => "invvpid".to_owned(),
        [0x0f, 0x38, 0x82, ..] => "invpcid".to_owned(),
        _ => return None,
    };
    Some(text)
}

/// An instruction's legacy prefixes, its REX byte and the rest (opcode onwards).
struct Prefixed<'a> {
    /// The last REP/REPNE prefix (0xf3 or 0xf2), if any.
    rep: Option<u8>,
    /// The REX byte (0 without one).
    rex: u8,
    rest: &'a [u8],
}

impl<'a> Prefixed<'a> {
    /// Splits the legacy prefixes we may see before the known instructions, then an optional
    /// REX, from `bytes`.
    fn split(bytes: &'a [u8]) -> Self {
        let mut i = 0;
        let mut rep = None;
        while let Some(&b) = bytes.get(i)
            && matches!(b, 0x66 | 0x67 | 0xf3 | 0xf2 | 0x2e | 0x3e | 0x26 | 0x36 | 0x64 | 0x65)
        {
            if matches!(b, 0xf3 | 0xf2) {
                rep = Some(b);
            }
            i += 1;
        }
        let mut rex = 0u8;
        if let Some(&b) = bytes.get(i)
            && b & 0xf0 == 0x40
        {
            rex = b;
            i += 1;
        }
        Self { rep, rex, rest: &bytes[i..] }
    }
}

/// Whether `bytes` is a plain data move or compare between registers and memory: `mov` (88–8b,
/// a0–a3, c6/c7 /0) or a string instruction (`movs`, `cmps`, `stos`, `lods`, `scas`, with or
/// without REP). These are the instructions a guest uses on device memory (MMIO), so they are
/// the ones an MMIO exit hands to KVM's emulator most.
pub fn is_data_move(bytes: &[u8]) -> bool {
    match Prefixed::split(bytes).rest {
        [0x88..=0x8b | 0xa0..=0xa7 | 0xaa..=0xaf, ..] => true,
        [0xc6 | 0xc7, modrm, ..] => (modrm >> 3) & 7 == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{is_data_move, mnemonic};

    #[test]
    fn instructions_seen_in_real_emulator_traces() {
        // From shared/samples/real (PVM backend, instruction emulator only).
        assert_eq!(mnemonic(&[0x0f, 0x22, 0xd8]).as_deref(), Some("mov cr3, rax"));
        assert_eq!(mnemonic(&[0xe6, 0x10]).as_deref(), Some("out 0x10, al"));
        assert_eq!(mnemonic(&[0xff, 0xc0]).as_deref(), Some("inc eax"));
        assert_eq!(mnemonic(&[0xeb, 0xfa]).as_deref(), Some("jmp short"));
        assert_eq!(mnemonic(&[0xf4]).as_deref(), Some("hlt"));
        assert_eq!(mnemonic(&[0x0f, 0xa2]).as_deref(), Some("cpuid"));
        assert_eq!(mnemonic(&[0x0f, 0x0b]).as_deref(), Some("ud2"));
        assert_eq!(
            mnemonic(&[0x0f, 0x01, 0x1c, 0x25, 0, 0x70, 0, 0]).as_deref(),
            Some("lidt [0x7000]")
        );
        assert_eq!(mnemonic(&[0x0f, 0x01, 0x10]).as_deref(), Some("lgdt [mem]"));
        assert_eq!(
            mnemonic(&[0x48, 0xc7, 0xc0, 0x00, 0x50, 0x00, 0x00]).as_deref(),
            Some("mov rax, imm32")
        );
        assert_eq!(mnemonic(&[0xee]).as_deref(), Some("out dx, al"));
        assert_eq!(mnemonic(&[0xef]).as_deref(), Some("out dx, eax"));
        assert_eq!(mnemonic(&[0xe7, 0x80]).as_deref(), Some("out 0x80, eax"));
        assert_eq!(mnemonic(&[0x0f, 0x01, 0xc1]).as_deref(), Some("vmcall"));
        assert_eq!(mnemonic(&[0x41, 0x0f, 0x22, 0xd8]).as_deref(), Some("mov cr3, r8"));
        assert_eq!(mnemonic(&[0x0f, 0x20, 0xe0]).as_deref(), Some("mov rax, cr4"));
    }

    #[test]
    fn string_instructions_name_their_repeat_prefix() {
        // The Hyper-V MMIO copy of the 5.6-rc4 report (samples/real/excerpts).
        assert_eq!(mnemonic(&[0xf3, 0xa5]).as_deref(), Some("rep movs"));
        assert_eq!(mnemonic(&[0xa4]).as_deref(), Some("movs"));
        assert_eq!(mnemonic(&[0xf3, 0x48, 0xab]).as_deref(), Some("rep stos"));
        assert_eq!(mnemonic(&[0xf3, 0xa6]).as_deref(), Some("repe cmps"));
        assert_eq!(mnemonic(&[0xf2, 0xae]).as_deref(), Some("repne scas"));
        assert_eq!(mnemonic(&[0x66, 0xad]).as_deref(), Some("lods"));
    }

    #[test]
    fn data_moves_are_mov_and_the_string_instructions() {
        assert!(is_data_move(&[0xf3, 0xa5]));
        assert!(is_data_move(&[0x89, 0x07]));
        assert!(is_data_move(&[0x48, 0x8b, 0x00]));
        assert!(is_data_move(&[0xc7, 0x00, 1, 0, 0, 0]));
        assert!(is_data_move(&[0xa1, 0, 0, 0, 0]));
        assert!(!is_data_move(&[0xc7, 0x08]));
        assert!(!is_data_move(&[0xec]));
        assert!(!is_data_move(&[0x6d]));
        assert!(!is_data_move(&[0x0f, 0x00, 0xd8]));
        assert!(!is_data_move(&[]));
        assert!(!is_data_move(&[0xf3]));
    }

    #[test]
    fn unknown_and_truncated_forms_are_none() {
        assert_eq!(mnemonic(&[]), None);
        assert_eq!(mnemonic(&[0x0f]), None);
        assert_eq!(mnemonic(&[0x0f, 0x22]), None);
        assert_eq!(mnemonic(&[0xd6]), None);
        assert_eq!(mnemonic(&[0x48]), None);
    }
}
