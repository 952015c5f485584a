//! QEMU's report of a vCPU that KVM stopped: the heading (`KVM internal error. Suberror: 1`,
//! `emulation failure`, `extra data[0]: …`, or `KVM: entry failed, hardware error 0x80000021`)
//! and the register dump that follows it (`EAX=… EBX=…`, `RIP=… RFL=…`, the segment lines
//! `CS =9f00 0009f000 0000ffff 00009b00 …`, `CR0=…`, `EFER=…`, `Code=… <0f> 01 …`).
//!
//! Bug reports paste it more often than any trace: it is what QEMU prints when `KVM_RUN` ends in
//! `KVM_EXIT_INTERNAL_ERROR` or `KVM_EXIT_FAIL_ENTRY`. The text reader keeps the lines it cannot
//! read as trace lines ([`crate::ReadStats::non_trace`]); [`find`] picks the dumps out of them,
//! whatever the mailer did to them (quote markers, lines wrapped inside the code bytes, a
//! heading repeated by several vCPUs).
//!
//! The methods on [`QemuDump`] answer what a reader of the dump works out by hand: the CPU mode,
//! the linear address of the instruction, which legacy memory region it lies in, and whether
//! the code bytes are code at all.

use serde::Serialize;

use crate::read::NonTraceLine;

/// What stopped the vCPU, as QEMU's heading says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QemuError {
    /// `KVM internal error. Suberror: N` (`KVM_EXIT_INTERNAL_ERROR`), with the line after it
    /// (`emulation failure`) and the `extra data[i]` words.
    Internal {
        /// `kvm_run.internal.suberror` (`KVM_INTERNAL_ERROR_*`).
        suberror: u32,
        /// The line QEMU prints after the heading (`emulation failure`).
        what: Option<String>,
        /// `kvm_run.internal.data`, as QEMU prints it.
        extra: Vec<u64>,
    },
    /// `KVM: entry failed, hardware error 0xN` (`KVM_EXIT_FAIL_ENTRY`): the VM-entry failure's
    /// exit reason.
    EntryFailed {
        /// `kvm_run.fail_entry.hardware_entry_failure_reason`.
        hardware_error: u64,
    },
    /// A register dump with no heading in the input.
    Unknown,
}

impl QemuError {
    /// The same heading (the lines after it aside).
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Internal { suberror: a, .. }, Self::Internal { suberror: b, .. }) => a == b,
            (Self::EntryFailed { hardware_error: a }, Self::EntryFailed { hardware_error: b }) => {
                a == b
            }
            (Self::Unknown, Self::Unknown) => true,
            _ => false,
        }
    }

    /// What the error means, in words.
    pub fn describe(&self) -> String {
        match self {
            Self::Internal { suberror, .. } => {
                let meaning = match suberror {
                    1 => {
                        "emulation failure: KVM's instruction emulator could not emulate the \
                          instruction at RIP"
                    }
                    2 => {
                        "simultaneous exceptions: an exception occurred while delivering another \
                          one that KVM could not resolve"
                    }
                    3 => "an exit KVM does not handle arrived while an event was being delivered",
                    4 => "an unexpected exit reason",
                    _ => "a KVM internal error",
                };
                format!("KVM internal error, suberror {suberror} ({meaning})")
            }
            Self::EntryFailed { hardware_error } => {
                let reason = hardware_error & 0xffff;
                let meaning = match reason {
                    33 => "invalid guest state: a guest-state check of the VM-entry failed",
                    34 => "MSR loading failed during the VM-entry",
                    41 => "a machine-check event during the VM-entry",
                    _ => "the VM-entry failed",
                };
                format!(
                    "VM-entry failure, hardware error {hardware_error:#x} (exit reason {reason}: \
                     {meaning})"
                )
            }
            Self::Unknown => "a vCPU register dump (no error heading in the input)".to_owned(),
        }
    }
}

/// A segment register line: `CS =9f00 0009f000 0000ffff 00009b00 DPL=0 CS16 [-RA]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// The selector.
    pub selector: u16,
    /// The base (linear address).
    pub base: u64,
    /// The limit.
    pub limit: u32,
    /// The descriptor flags as QEMU prints them (access rights in bits 8–23).
    pub flags: u32,
}

impl Segment {
    /// A 64-bit code segment (the L bit, flags bit 21).
    pub fn long(&self) -> bool {
        self.flags & (1 << 21) != 0
    }

    /// A 32-bit segment (the D/B bit, flags bit 22).
    pub fn big(&self) -> bool {
        self.flags & (1 << 22) != 0
    }
}

/// The CPU's operating mode in a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuMode {
    /// CR0.PE clear.
    Real,
    /// CR0.PE set, RFLAGS.VM set.
    Virtual8086,
    /// Protected mode, 16-bit code segment.
    Protected16,
    /// Protected mode, 32-bit code segment.
    Protected32,
    /// EFER.LMA set, code segment not 64-bit.
    Compatibility,
    /// EFER.LMA set, 64-bit code segment.
    Long64,
}

impl CpuMode {
    /// The mode in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Real => "real mode (CR0.PE=0)",
            Self::Virtual8086 => "virtual-8086 mode",
            Self::Protected16 => "16-bit protected mode",
            Self::Protected32 => "32-bit protected mode",
            Self::Compatibility => "compatibility mode (long mode, 32-bit code)",
            Self::Long64 => "64-bit long mode",
        }
    }
}

/// What the code bytes QEMU printed look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeLook {
    /// All zeros from RIP on: memory nothing was loaded into (`add [bx+si], al` forever).
    Zeros,
    /// All 0xff: addresses no RAM or device answers (an unbacked hole reads as ones).
    Ones,
    /// Pairs `cc 07`, `20 07`…: VGA text-mode cells (a character and the light-grey attribute
    /// 0x07): the guest is executing the screen.
    VgaText,
    /// One byte repeated: a fill pattern, not code.
    Fill(u8),
    /// Anything else (it may be code).
    Other,
}

/// One QEMU report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QemuDump {
    /// The input line it starts at (1-based).
    pub line: u64,
    /// The error heading (several vCPUs printing the same heading count once each).
    pub error: Option<QemuError>,
    /// How many times the heading was printed (QEMU prints one per stopped vCPU).
    pub headings: u32,
    /// EIP/RIP.
    pub rip: Option<u64>,
    /// EFL/RFL.
    pub rflags: Option<u64>,
    /// The CPL.
    pub cpl: Option<u8>,
    /// The code segment.
    pub cs: Option<Segment>,
    /// CR0, CR2, CR3, CR4.
    pub cr: [Option<u64>; 5],
    /// EFER.
    pub efer: Option<u64>,
    /// The `Code=` bytes.
    pub code: Vec<u8>,
    /// The index in `code` of the byte at RIP (the one QEMU prints as `<xx>`).
    pub code_at: Option<usize>,
    /// The general-purpose registers, in the dump's order.
    pub gprs: Vec<(String, u64)>,
}

impl QemuDump {
    /// The operating mode, when the dump has CR0.
    pub fn mode(&self) -> Option<CpuMode> {
        let cr0 = self.cr[0]?;
        if cr0 & 1 == 0 {
            return Some(CpuMode::Real);
        }
        if self.efer.is_some_and(|e| e & (1 << 10) != 0) {
            return Some(if self.cs.is_some_and(|c| c.long()) {
                CpuMode::Long64
            } else {
                CpuMode::Compatibility
            });
        }
        if self.rflags.is_some_and(|f| f & (1 << 17) != 0) {
            return Some(CpuMode::Virtual8086);
        }
        Some(if self.cs.is_some_and(|c| c.big()) {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        })
    }

    /// The linear address of the instruction: CS base + RIP (RIP alone in 64-bit mode).
    pub fn linear_rip(&self) -> Option<u64> {
        let rip = self.rip?;
        match self.mode() {
            Some(CpuMode::Long64) => Some(rip),
            _ => Some(self.cs.map_or(0, |c| c.base).wrapping_add(rip) & 0xffff_ffff),
        }
    }

    /// The code bytes from RIP on.
    pub fn code_from_rip(&self) -> &[u8] {
        match self.code_at {
            Some(at) => self.code.get(at..).unwrap_or(&[]),
            None => &[],
        }
    }

    /// What the bytes at RIP look like (`None` without at least 8 of them).
    pub fn code_look(&self) -> Option<CodeLook> {
        let from = self.code_from_rip();
        if from.len() < 8 {
            return None;
        }
        let first = from[0];
        if from.iter().all(|&b| b == first) {
            return Some(match first {
                0 => CodeLook::Zeros,
                0xff => CodeLook::Ones,
                b => CodeLook::Fill(b),
            });
        }
        // The cells of a text screen: every other byte the attribute 0x07 (from RIP or the
        // byte after: RIP may point at either half of a cell).
        let cells =
            |bytes: &[u8]| bytes.len() >= 8 && bytes.iter().skip(1).step_by(2).all(|&b| b == 0x07);
        if cells(from) || cells(&from[1..]) {
            return Some(CodeLook::VgaText);
        }
        Some(CodeLook::Other)
    }
}

/// The region of the first megabyte (or the top of the 4 GiB space) `linear` lies in, for the
/// addresses legacy firmware and option ROMs use.
pub fn legacy_region(linear: u64) -> Option<&'static str> {
    Some(match linear {
        0..=0x3ff => "the real-mode interrupt vector table",
        0x400..=0x4ff => "the BIOS data area",
        0x9_fc00..=0x9_ffff => "the extended BIOS data area",
        0xa_0000..=0xb_ffff => "legacy video memory (0xa0000-0xbffff, the VGA window)",
        0xc_0000..=0xd_ffff => "the option-ROM area (0xc0000-0xdffff: VGA BIOS, NIC/storage ROMs)",
        0xe_0000..=0xf_ffff => "the system BIOS area (0xe0000-0xfffff)",
        0xfee0_0000..=0xfee0_0fff => "the local APIC's MMIO page",
        0xfec0_0000..=0xfec0_0fff => "the I/O APIC's MMIO page",
        0xff00_0000..=0xffff_ffff => "the firmware flash below 4 GiB",
        _ => return None,
    })
}

/// The QEMU reports among an input's non-trace lines, in input order.
pub fn find(lines: &[NonTraceLine]) -> Vec<QemuDump> {
    let mut dumps: Vec<QemuDump> = Vec::new();
    let mut open: Option<QemuDump> = None;
    // The last line was `Code=` (or its continuation): hex bytes alone on a line continue it.
    let mut continuing_code = false;
    let mut last_line = 0u64;
    for l in lines {
        let text = unquote(&l.text);
        let adjacent = l.line == last_line + 1;
        last_line = l.line;
        let code = std::mem::take(&mut continuing_code);
        if let Some(error) = heading(text) {
            match &mut open {
                // The same heading again (QEMU repeats it, or prints it once per vCPU): the same
                // report; a second vCPU's dump starts at its first register line.
                Some(d) if d.error.as_ref().is_some_and(|e| e.same(&error)) => d.headings += 1,
                Some(d) if d.rip.is_none() && d.error == Some(QemuError::Unknown) => {
                    d.error = Some(error);
                    d.headings += 1;
                }
                _ => {
                    dumps.extend(open.take());
                    open = Some(QemuDump {
                        line: l.line,
                        error: Some(error),
                        headings: 1,
                        ..QemuDump::default()
                    });
                }
            }
            continue;
        }
        if let Some(d) = &mut open
            && adjacent
        {
            if description(text) {
                if let Some(QemuError::Internal { what: w @ None, .. }) = &mut d.error {
                    *w = Some(text.to_owned());
                }
                continue;
            }
            if let Some(word) = extra_data(text) {
                if let Some(QemuError::Internal { extra, .. }) = &mut d.error {
                    extra.push(word);
                }
                continue;
            }
            if code && code_words(text, d) {
                continuing_code = true;
                continue;
            }
        }
        if !register_line(text) {
            // Anything else ends a dump (prose, a blank line, a trace line): a heading alone
            // waits for its registers on the next line.
            if open.as_ref().is_some_and(|d| d.rip.is_some() || !adjacent) {
                dumps.extend(open.take());
            }
            continue;
        }
        let fresh = match &open {
            Some(d) => !adjacent && d.rip.is_some(),
            None => true,
        };
        if fresh {
            dumps.extend(open.take());
            open = Some(QemuDump {
                line: l.line,
                error: Some(QemuError::Unknown),
                ..QemuDump::default()
            });
        }
        let Some(d) = &mut open else { continue };
        // QEMU prints one dump per vCPU: the next starts at its first general-purpose register.
        if d.rip.is_some() && (text.starts_with("EAX=") || text.starts_with("RAX=")) {
            let next = QemuDump { line: l.line, error: d.error.clone(), ..QemuDump::default() };
            dumps.push(std::mem::replace(d, next));
        }
        continuing_code = registers(text, d);
    }
    dumps.extend(open);
    dumps.retain(|d| d.rip.is_some() || d.error.as_ref().is_some_and(|e| *e != QemuError::Unknown));
    dumps
}

/// The line without mail quoting (`> `, `>> `) and surrounding blanks.
fn unquote(text: &str) -> &str {
    text.trim_start_matches(|c: char| c == '>' || c.is_whitespace()).trim_end()
}

fn heading(text: &str) -> Option<QemuError> {
    if let Some(rest) = text.strip_prefix("KVM internal error. Suberror:") {
        let suberror = rest.trim().parse().ok()?;
        return Some(QemuError::Internal { suberror, what: None, extra: Vec::new() });
    }
    let rest = text.strip_prefix("KVM: entry failed, hardware error")?;
    let hardware_error = hex(rest.trim())?;
    Some(QemuError::EntryFailed { hardware_error })
}

fn description(text: &str) -> bool {
    text.eq_ignore_ascii_case("emulation failure")
}

fn extra_data(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("extra data[")?;
    let (_, value) = rest.split_once("]:")?;
    hex(value.trim())
}

fn hex(s: &str) -> Option<u64> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The keys a dump line starts with.
const KEYS: &[&str] = &[
    "EAX", "ESI", "EIP", "RAX", "RSI", "R8", "R12", "RIP", "ES", "CS", "SS", "DS", "FS", "GS",
    "LDT", "TR", "GDT", "IDT", "CR0", "DR0", "DR3", "DR6", "EFER", "Code", "FCW", "FPR0", "XMM00",
    "YMM00", "ZMM00", "PKRU", "RCX", "RBX", "ECX", "EBX", "EDX", "RDX", "CR2", "CR3", "CR4",
];

fn register_line(text: &str) -> bool {
    let Some((key, _)) = text.split_once('=') else { return false };
    KEYS.contains(&key.trim_end())
}

/// Reads one register line into `d`; true when it was the `Code=` line (so that wrapped
/// byte lines may follow).
fn registers(text: &str, d: &mut QemuDump) -> bool {
    // `CS =9f00 …`, `R8 =…`: the padding before `=` belongs to the key.
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    let mut code = false;
    while i < tokens.len() {
        let tok = tokens[i];
        // A key padded to three columns (`CS =9f00`) comes as two tokens.
        let (key, value) = match tok.split_once('=') {
            Some((k, v)) => (k, v),
            None => match tokens.get(i + 1).and_then(|t| t.strip_prefix('=')) {
                Some(v) => {
                    i += 1;
                    (tok, v)
                }
                None => {
                    i += 1;
                    continue;
                }
            },
        };
        i += 1;
        match key {
            "EIP" | "RIP" => d.rip = hex(value),
            "EFL" | "RFL" => d.rflags = hex(value),
            "CPL" => d.cpl = value.parse().ok(),
            "CR0" => d.cr[0] = hex(value),
            "CR2" => d.cr[2] = hex(value),
            "CR3" => d.cr[3] = hex(value),
            "CR4" => d.cr[4] = hex(value),
            "EFER" => d.efer = hex(value),
            "CS" => {
                let rest = &tokens[i.min(tokens.len())..];
                let selector = hex(value).and_then(|v| u16::try_from(v).ok());
                let field = |k: usize| rest.get(k).and_then(|t| hex(t));
                if let (Some(selector), Some(base), Some(limit), Some(flags)) =
                    (selector, field(0), field(1), field(2))
                {
                    d.cs = Some(Segment {
                        selector,
                        base,
                        limit: u32::try_from(limit).unwrap_or(u32::MAX),
                        flags: u32::try_from(flags).unwrap_or(0),
                    });
                }
                i = tokens.len();
            }
            "ES" | "SS" | "DS" | "FS" | "GS" | "LDT" | "TR" | "GDT" | "IDT" => i = tokens.len(),
            "Code" => {
                code = true;
                d.code.clear();
                d.code_at = None;
                if !value.is_empty() {
                    code_byte(value, d);
                }
                for t in &tokens[i.min(tokens.len())..] {
                    code_byte(t, d);
                }
                i = tokens.len();
            }
            k if is_gpr(k) => {
                if let Some(v) = hex(value) {
                    d.gprs.push((k.to_owned(), v));
                }
            }
            _ => {}
        }
    }
    code
}

fn is_gpr(key: &str) -> bool {
    matches!(
        key,
        "EAX"
            | "EBX"
            | "ECX"
            | "EDX"
            | "ESI"
            | "EDI"
            | "EBP"
            | "ESP"
            | "RAX"
            | "RBX"
            | "RCX"
            | "RDX"
            | "RSI"
            | "RDI"
            | "RBP"
            | "RSP"
            | "R8"
            | "R9"
            | "R10"
            | "R11"
            | "R12"
            | "R13"
            | "R14"
            | "R15"
    )
}

/// Appends one `Code=` token: `af`, `<0f>` (the byte at RIP), `??` (unreadable).
fn code_byte(tok: &str, d: &mut QemuDump) {
    let (byte, at_rip) = match tok.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        Some(inner) => (inner, true),
        None => (tok, false),
    };
    if byte.len() != 2 {
        return;
    }
    let Ok(b) = u8::from_str_radix(byte, 16) else { return };
    if at_rip && d.code_at.is_none() {
        d.code_at = Some(d.code.len());
    }
    d.code.push(b);
}

/// A line of nothing but code bytes (the `Code=` line wrapped by a mailer); true when it was.
fn code_words(text: &str, d: &mut QemuDump) -> bool {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let byte = |t: &&str| {
        let inner = t.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or(t);
        inner.len() == 2 && inner.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if tokens.is_empty() || !tokens.iter().all(byte) {
        return false;
    }
    for t in tokens {
        code_byte(t, d);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<NonTraceLine> {
        text.lines()
            .enumerate()
            .map(|(i, t)| NonTraceLine { line: i as u64 + 1, text: t.to_owned() })
            .collect()
    }

    #[test]
    fn a_real_mode_dump_with_a_wrapped_code_line() {
        let d = find(&lines(
            "Log shows emulation failure :\n\nKVM internal error. Suberror: 1\nemulation failure\n\
             EAX=00000086 EBX=000041d8 ECX=00000001 EDX=00008e68\n\
             EIP=00000000 EFL=00210093 [--S-A-C] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
             CS =bffc 000bffc0 0000ffff 00009f00\n\
             CR0=00000010 CR2=00000000 CR3=00000000 CR4=00000000\n\
             DR3=0000000000000000\nEFER=0000000000000000\n\
             Code=<20> 07 20 07 20 07 20 07 20\n07 20 07 20\n\nI try to trace",
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        let d = &d[0];
        assert_eq!(d.line, 3);
        assert_eq!(
            d.error,
            Some(QemuError::Internal {
                suberror: 1,
                what: Some("emulation failure".into()),
                extra: vec![]
            })
        );
        assert_eq!(d.mode(), Some(CpuMode::Real));
        assert_eq!(d.linear_rip(), Some(0xbffc0));
        assert_eq!(
            legacy_region(0xbffc0),
            Some("legacy video memory (0xa0000-0xbffff, the VGA window)")
        );
        assert_eq!(d.code.len(), 13);
        assert_eq!(d.code_at, Some(0));
        assert_eq!(d.code_look(), Some(CodeLook::VgaText));
        assert_eq!(d.gprs[0], ("EAX".to_owned(), 0x86));
    }

    #[test]
    fn repeated_headings_and_a_64_bit_dump() {
        let d = find(&lines(
            "KVM internal error. Suberror: 1\nemulation failure\nKVM internal error. Suberror: 1\n\
             emulation failure\n\
             RAX=ffff8000fee000f0 RBX=0000000000000000\nR8 =ffff800000ffff40 R9 =00000000000000ef\n\
             RIP=ffff80000020ea22 RFL=00010086 [--S--P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
             CS =0010 0000000000000000 00000000 00209900 DPL=0 CS64 [--A]\n\
             CR0=80000033 CR2=0000000000000000 CR3=0000000001413000 CR4=000626e8\n\
             EFER=0000000000000d01\nCode=0f 1f 00 <c5> f9 7f 07 c3 90 90",
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].headings, 2);
        assert_eq!(d[0].mode(), Some(CpuMode::Long64));
        assert_eq!(d[0].linear_rip(), Some(0xffff_8000_0020_ea22));
        assert_eq!(d[0].code_from_rip(), &[0xc5, 0xf9, 0x7f, 0x07, 0xc3, 0x90, 0x90]);
        assert!(d[0].gprs.iter().any(|(k, v)| k == "R8" && *v == 0xffff_8000_00ff_ff40));
    }

    #[test]
    fn entry_failures_extra_data_and_two_vcpus() {
        let d = find(&lines(
            "KVM: entry failed, hardware error 0x80000021\n\
             EAX=00000000 EBX=00000000\nEIP=0000fff0 EFL=00000002 [-------] CPL=0\n\
             EAX=00000001 EBX=00000000\nEIP=00001000 EFL=00000002 [-------] CPL=0\n\
             \nKVM internal error. Suberror: 2\nextra data[0]: 80000008\nextra data[1]: 80000b08",
        ));
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0].error, Some(QemuError::EntryFailed { hardware_error: 0x8000_0021 }));
        assert_eq!((d[0].rip, d[1].rip), (Some(0xfff0), Some(0x1000)));
        assert_eq!(d[1].error, d[0].error);
        assert!(d[0].error.as_ref().unwrap().describe().contains("invalid guest state"));
        assert_eq!(
            d[2].error,
            Some(QemuError::Internal {
                suberror: 2,
                what: None,
                extra: vec![0x8000_0008, 0x8000_0b08]
            })
        );
    }

    #[test]
    fn fills_and_garbage_never_panic() {
        let mut d = QemuDump { code: vec![0xaf; 20], ..QemuDump::default() };
        d.code.extend([0; 30]);
        d.code_at = Some(20);
        assert_eq!(d.code_look(), Some(CodeLook::Zeros));
        d.code_at = Some(200);
        assert_eq!(d.code_look(), None);
        for junk in [
            "Code=<",
            "CS =",
            "CS =zz 1 2",
            "EIP=",
            "KVM internal error. Suberror: x",
            "extra data[: 1",
            "Code=<0> <1234> ?? 0g",
            "> > RIP=ffffffffffffffffff",
        ] {
            let _ = find(&lines(junk));
        }
    }
}
