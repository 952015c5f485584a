//! The part of `vmxray triage` that reads QEMU's own report of a stopped vCPU (`KVM internal
//! error. Suberror: 1`, `KVM: entry failed, hardware error 0x80000021` and the register dump
//! after them) among the lines of a pasted input that are not trace lines, and says what a
//! KVM developer works out from it by hand: the mode, the linear address of the instruction and
//! the memory it lies in, whether the bytes there are code, and what that makes of the error.

use std::fmt::Write as _;

use vmxray_capture::read::text::qemu_dump::{
    CodeLook, CpuMode, QemuDump, QemuError, legacy_region,
};
use vmxray_replay::story::insn_text;

/// One report, with what it shows.
#[derive(Debug)]
pub struct QemuReport {
    /// What QEMU printed, read.
    pub dump: QemuDump,
    /// The operating mode.
    pub mode: Option<CpuMode>,
    /// CS base + RIP.
    pub linear_rip: Option<u64>,
    /// The legacy memory region of `linear_rip`.
    pub region: Option<&'static str>,
    /// What the bytes at RIP look like.
    pub code_look: Option<CodeLook>,
    /// The conclusion, in words.
    pub conclusion: String,
}

/// The reports, explained.
pub fn reports(dumps: Vec<QemuDump>) -> Vec<QemuReport> {
    dumps
        .into_iter()
        .map(|dump| {
            let linear_rip = dump.linear_rip();
            QemuReport {
                mode: dump.mode(),
                region: linear_rip.and_then(legacy_region),
                code_look: dump.code_look(),
                conclusion: conclusion(&dump),
                linear_rip,
                dump,
            }
        })
        .collect()
}

/// The reports as JSON: what QEMU printed, and what it shows.
pub fn to_json(reports: &[QemuReport]) -> serde_json::Result<serde_json::Value> {
    let mut list = Vec::with_capacity(reports.len());
    for r in reports {
        let mut v = serde_json::to_value(&r.dump)?;
        if let Some(map) = v.as_object_mut() {
            map.insert("mode".into(), serde_json::to_value(r.mode)?);
            map.insert("linear_rip".into(), r.linear_rip.into());
            map.insert("region".into(), r.region.into());
            map.insert("code_look".into(), serde_json::to_value(r.code_look)?);
            map.insert("conclusion".into(), r.conclusion.clone().into());
        }
        list.push(v);
    }
    Ok(serde_json::Value::Array(list))
}

/// True when QEMU reported a vCPU stopped by an error (not a bare register dump).
pub fn fatal(r: &QemuReport) -> bool {
    !matches!(r.dump.error, None | Some(QemuError::Unknown))
}

fn hex_bytes(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes.iter().take(max).map(|b| format!("{b:02x} ")).collect();
    s.pop();
    if bytes.len() > max {
        s.push_str(" …");
    }
    s
}

/// What the bytes at RIP are, in words.
fn code_text(d: &QemuDump) -> Option<String> {
    let from = d.code_from_rip();
    if from.is_empty() {
        return None;
    }
    let bytes = hex_bytes(from, 12);
    let what = match d.code_look()? {
        CodeLook::Zeros => "all zeros: memory nothing was loaded into, not code".to_owned(),
        CodeLook::Ones => {
            "all 0xff: what an address no RAM or device answers reads as, not code".to_owned()
        }
        CodeLook::VgaText => "VGA text-mode cells (a character and the attribute byte 0x07), \
                              not code: the guest is executing the screen's memory"
            .to_owned(),
        CodeLook::Fill(b) => format!("the byte {b:#04x} repeated: a fill pattern, not code"),
        CodeLook::Other => match from.first() {
            Some(0xc4 | 0xc5) if d.mode() == Some(CpuMode::Long64) => format!(
                "a VEX-encoded (AVX) instruction, `{}`: KVM's emulator implements no AVX \
                 instruction, so one that touches emulated memory (MMIO) cannot be emulated",
                insn_text(from)
            ),
            Some(0x62) if d.mode() == Some(CpuMode::Long64) => {
                "an EVEX-encoded (AVX-512) instruction: KVM's emulator implements none, so one \
                 that touches emulated memory (MMIO) cannot be emulated"
                    .to_owned()
            }
            _ => format!("the instruction `{}`", insn_text(from)),
        },
    };
    Some(format!("{bytes} — {what}"))
}

/// What the report makes of the error.
fn conclusion(d: &QemuDump) -> String {
    let garbage = matches!(
        d.code_look(),
        Some(CodeLook::Zeros | CodeLook::Ones | CodeLook::VgaText | CodeLook::Fill(_))
    );
    match &d.error {
        Some(QemuError::Internal { suberror: 1, .. }) if garbage => {
            "The code stream is garbage: the guest jumped to memory that holds no code, and the \
             emulator's failure follows from that. Look for how the guest got there (a jump or \
             return through a corrupt pointer in its firmware, bootloader or an option ROM, or \
             state KVM restored wrongly at a mode switch, an SMM exit or a migration), not at \
             KVM's emulator."
                .to_owned()
        }
        Some(QemuError::Internal { suberror: 1, .. }) => {
            "KVM exited to userspace because its emulator could not emulate the instruction at \
             RIP (an exit it had to emulate: MMIO, a port string instruction, real mode without \
             unrestricted guest, or an instruction the emulator does not implement)."
                .to_owned()
        }
        Some(QemuError::Internal { suberror: 2, extra, .. }) => {
            let what = match extra.first() {
                Some(v) if v & 0x8000_0000 != 0 => format!(
                    " (IDT-vectoring information {v:#x}: vector {} was being delivered)",
                    v & 0xff
                ),
                _ => String::new(),
            };
            format!(
                "An exception occurred while KVM was delivering another one{what}, and KVM could \
                 not make a double fault of them: the guest's IDT, stack or page tables are \
                 broken at this point."
            )
        }
        Some(QemuError::EntryFailed { hardware_error }) if hardware_error & 0xffff == 33 => {
            "The processor refused the VM-entry with this guest state: check it against the \
             SDM's guest-state checks (segment access rights, CR0/CR4 fixed bits, and in real \
             mode without unrestricted guest the vm86 constraints)."
                .to_owned()
        }
        Some(e) => e.describe(),
        None => String::new(),
    }
}

/// The text section for the reports.
pub fn render(reports: &[QemuReport]) -> String {
    let mut s = String::new();
    for r in reports {
        let d = &r.dump;
        let _ = writeln!(s);
        let _ = writeln!(s, "== QEMU's report (line {} of the input) ==", d.line);
        if let Some(e) = &d.error {
            let repeat = if d.headings > 1 {
                format!(" (printed {} times)", d.headings)
            } else {
                String::new()
            };
            let _ = writeln!(s, "{}{repeat}.", e.describe());
        }
        if let Some(rip) = d.rip {
            let mode = r.mode.map_or_else(String::new, |m| format!(" in {}", m.describe()));
            let cpl = d.cpl.map_or_else(String::new, |c| format!(", CPL {c}"));
            let at = match (r.mode, d.cs) {
                (Some(CpuMode::Long64), _) | (_, None) => format!("RIP {rip:#x}"),
                (_, Some(cs)) => format!(
                    "CS:EIP {:04x}:{rip:08x} = linear {:#x}",
                    cs.selector,
                    r.linear_rip.unwrap_or(rip)
                ),
            };
            let region = r.region.map_or_else(String::new, |g| format!(", in {g}"));
            let _ = writeln!(s, "The vCPU stopped{mode}{cpl} at {at}{region}.");
        }
        if let Some(code) = code_text(d) {
            let _ = writeln!(s, "The bytes at RIP: {code}.");
        }
        if !r.conclusion.is_empty() {
            let _ = writeln!(s, "What it means: {}", r.conclusion);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmxray_capture::read::NonTraceLine;
    use vmxray_capture::read::text::qemu_dump::find;

    fn report(text: &str) -> String {
        let lines: Vec<NonTraceLine> = text
            .lines()
            .enumerate()
            .map(|(i, t)| NonTraceLine { line: i as u64 + 1, text: t.to_owned() })
            .collect();
        render(&reports(find(&lines)))
    }

    /// The dump of tianocore/edk2 issue 23 (OVMF, 2015): 16-bit protected mode at 9f00:1000, zeros.
    #[test]
    fn zeros_at_the_vga_window_are_garbage() {
        let text = report(
            "KVM internal error. Suberror: 1\nemulation failure\n\
             EAX=00000023 EBX=00000002 ECX=00000000 EDX=00000600\n\
             EIP=00001000 EFL=00010002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
             CS =9f00 0009f000 0000ffff 00009b00 DPL=0 CS16 [-RA]\n\
             CR0=00000033 CR2=00000000 CR3=00000000 CR4=00000000\nEFER=0000000000000000\n\
             Code=af af af af <00> 00 00 00 00 00 00 00 00 00 00 00 00 00",
        );
        assert!(text.contains("16-bit protected mode"), "{text}");
        assert!(text.contains("CS:EIP 9f00:00001000 = linear 0xa0000, in legacy video"), "{text}");
        assert!(text.contains("all zeros"), "{text}");
        assert!(text.contains("The code stream is garbage"), "{text}");
    }

    #[test]
    fn a_vex_instruction_on_mmio() {
        let text = report(
            "KVM internal error. Suberror: 1\nemulation failure\n\
             RIP=ffff80000020ea22 RFL=00010086 [--S--P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
             CS =0010 0000000000000000 00000000 00209900 DPL=0 CS64 [--A]\n\
             CR0=80000033 CR2=0000000000000000 CR3=0000000001413000 CR4=000626e8\n\
             EFER=0000000000000d01\nCode=0f 1f 00 <c5> f9 7f 07 c3 90 90 90 90 90 90",
        );
        assert!(text.contains("64-bit long mode, CPL 0 at RIP 0xffff80000020ea22"), "{text}");
        assert!(text.contains("VEX-encoded (AVX)"), "{text}");
        assert!(!text.contains("garbage"), "{text}");
    }

    #[test]
    fn double_fault_extra_data() {
        let text = report("KVM internal error. Suberror: 2\nextra data[0]: 80000008\n");
        assert!(text.contains("simultaneous exceptions"), "{text}");
        assert!(text.contains("vector 8 was being delivered"), "{text}");
    }
}
