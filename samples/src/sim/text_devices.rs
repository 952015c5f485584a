//! `TP_printk` bodies of the interrupt-controller, MMIO and kvmmmu SPTE tracepoints, written
//! from the print formats of `samples/real/raw/tracefs/events/{kvm,kvmmmu}/*/format` (6.18)
//! and, where 6.1 prints differently, from the 6.1 format files in `samples/real/vmx/*-6.1.dat`:
//! `kvm_apicv_inhibit_changed` is printed without the inhibit names (the 6.1 form; the names'
//! bit numbers differ between kernels), `fast_page_fault`'s error code with the 6.1 flag table
//! (`P`, `W`, `U`, `RSVD`, `F`, then any other bits as one hex value).
//!
//! They work from the raw kernel fields (`EventKind::kernel_fields`), as the kernel does from
//! its ring-buffer entry, so that the reader's parser is checked against an independent
//! printer.

use vmxray_events::{EventKind, FieldLookup};

const MODES: [&str; 8] = ["Fixed", "LowPrio", "SMI", "Res3", "NMI", "INIT", "SIPI", "ExtINT"];

fn mode(v: u64) -> &'static str {
    MODES[usize::try_from((v >> 8) & 7).unwrap_or(0)]
}

fn bit(v: u64, n: u32) -> bool {
    v >> n & 1 != 0
}

/// `__print_flags(error_code, "|", P, W, U, RSVD, F)` with the rest in hex.
fn pferr(mut v: u64) -> String {
    let mut parts = Vec::new();
    for (b, name) in [(0, "P"), (1, "W"), (2, "U"), (3, "RSVD"), (4, "F")] {
        if bit(v, b) {
            parts.push(name.to_owned());
            v &= !(1 << b);
        }
    }
    if v != 0 {
        parts.push(format!("0x{v:x}"));
    }
    parts.join("|")
}

/// The body of one of these events, `None` for any other event.
pub(crate) fn body(kind: &EventKind) -> Option<String> {
    if !matches!(kind, EventKind::Irq(_) | EventKind::Mmio(_) | EventKind::Spte(_)) {
        return None;
    }
    let f = kind.kernel_fields();
    let u = |n: &str| f.uint(n).unwrap_or(0);
    let i = |n: &str| f.int(n, 4).unwrap_or(0);
    Some(match kind.name() {
        "kvm_set_irq" => {
            format!("gsi {} level {} source {}", u("gsi"), i("level"), i("irq_source_id"))
        }
        "kvm_ioapic_set_irq" | "kvm_ioapic_delayed_eoi_inj" => {
            let e = u("e");
            let flags = format!(
                "dst {:x} vec {} ({}|{}|{}{})",
                e >> 56,
                e & 0xff,
                mode(e),
                if bit(e, 11) { "logical" } else { "physical" },
                if bit(e, 15) { "level" } else { "edge" },
                if bit(e, 16) { "|masked" } else { "" }
            );
            if kind.name() == "kvm_ioapic_set_irq" {
                format!(
                    "pin {} {flags}{}",
                    u("pin"),
                    if u("coalesced") != 0 { " (coalesced)" } else { "" }
                )
            } else {
                flags
            }
        }
        "kvm_msi_set_irq" => {
            let (a, d) = (u("address"), u("data"));
            format!(
                "dst {:x} vec {} ({}|{}|{}{})",
                ((a >> 12) & 0xff) | ((a >> 32) & 0xffff_ff00),
                d & 0xff,
                mode(d),
                if bit(a, 2) { "logical" } else { "physical" },
                if bit(d, 15) { "level" } else { "edge" },
                if bit(a, 3) { "|rh" } else { "" }
            )
        }
        "kvm_pic_set_irq" => {
            let pin = u("pin");
            format!(
                "chip {} pin {pin} ({}{}){}",
                u("chip"),
                if bit(u("elcr"), (pin & 7) as u32) { "level" } else { "edge" },
                if bit(u("imr"), (pin & 7) as u32) { "|masked" } else { "" },
                if u("coalesced") != 0 { " (coalesced)" } else { "" }
            )
        }
        "kvm_apic" => {
            let reg = u("reg");
            let names = [
                (0x20, "ID"),
                (0x30, "LVR"),
                (0x80, "TASKPRI"),
                (0x90, "ARBPRI"),
                (0xa0, "PROCPRI"),
                (0xb0, "EOI"),
                (0xc0, "RRR"),
                (0xd0, "LDR"),
                (0xe0, "DFR"),
                (0xf0, "SPIV"),
                (0x100, "ISR"),
                (0x180, "TMR"),
                (0x200, "IRR"),
                (0x280, "ESR"),
                (0x300, "ICR"),
                (0x310, "ICR2"),
                (0x320, "LVTT"),
                (0x330, "LVTTHMR"),
                (0x340, "LVTPC"),
                (0x350, "LVT0"),
                (0x360, "LVT1"),
                (0x370, "LVTERR"),
                (0x380, "TMICT"),
                (0x390, "TMCCT"),
                (0x3e0, "TDCR"),
                (0x3f0, "SELF_IPI"),
                (0x400, "EFEAT"),
                (0x410, "ECTRL"),
            ];
            let name = names
                .iter()
                .find(|(r, _)| *r == reg)
                .map_or_else(|| format!("0x{reg:x}"), |(_, n)| format!("APIC_{n}"));
            format!(
                "apic_{} {name} = 0x{:x}",
                if u("rw") != 0 { "write" } else { "read" },
                u("val")
            )
        }
        "kvm_apic_accept_irq" | "kvm_apicv_accept_irq" => format!(
            "apicid {:x} vec {} ({}|{}){}",
            u("apicid"),
            u("vec"),
            mode(u("dm")),
            if u("tm") != 0 { "level" } else { "edge" },
            if f.uint("coalesced") == Some(1) { " (coalesced)" } else { "" }
        ),
        "kvm_apic_ipi" => {
            let icr = u("icr_low");
            format!(
                "dst {:x} vec {} ({}|{}|{}|{}|{})",
                u("dest_id"),
                icr & 0xff,
                mode(icr),
                if bit(icr, 11) { "logical" } else { "physical" },
                if bit(icr, 14) { "assert" } else { "de-assert" },
                if bit(icr, 15) { "level" } else { "edge" },
                ["dst", "self", "all", "all-but-self"]
                    [usize::try_from((icr >> 18) & 3).unwrap_or(0)]
            )
        }
        "kvm_eoi" | "kvm_pv_eoi" => format!("apicid {:x} vector {}", u("apicid"), i("vector")),
        "kvm_apicv_inhibit_changed" => format!(
            "{} reason={}, inhibits=0x{:x}",
            if u("set") != 0 { "set" } else { "cleared" },
            i("reason"),
            u("inhibits")
        ),
        "kvm_mmio" => format!(
            "mmio {} len {} gpa 0x{:x} val 0x{:x}",
            match u("type") {
                0 => "unsatisfied-read".to_owned(),
                1 => "read".to_owned(),
                2 => "write".to_owned(),
                t => format!("0x{t:x}"),
            },
            u("len"),
            u("gpa"),
            u("val")
        ),
        "vcpu_match_mmio" => {
            // `%#lx` prints 0 without the prefix.
            let alt = |v: u64| if v == 0 { "0".to_owned() } else { format!("{v:#x}") };
            format!(
                "gva {} gpa {} {} {}",
                alt(u("gva")),
                alt(u("gpa")),
                if u("write") != 0 { "Write" } else { "Read" },
                if u("gpa_match") != 0 { "GPA" } else { "GVA" }
            )
        }
        "fast_page_fault" => {
            let ret = f.int("ret", 4);
            let alt = |v: u64| if v == 0 { "0".to_owned() } else { format!("{v:#x}") };
            format!(
                "vcpu {} gva {:x} error_code {} sptep {:016x} old {} new {:x} spurious {} fixed {}",
                i("vcpu_id"),
                u("cr2_or_gpa"),
                pferr(u("error_code")),
                u("sptep"),
                alt(u("old_spte")),
                u("new_spte"),
                u8::from(ret == Some(6)),
                u8::from(ret == Some(5))
            )
        }
        "kvm_tdp_mmu_spte_changed" => format!(
            "as id {} gfn {:x} level {} old_spte {:x} new_spte {:x}",
            u("as_id"),
            u("gfn"),
            u("level"),
            u("old_spte"),
            u("new_spte")
        ),
        "kvm_mmu_spte_requested" => {
            format!("gfn {:x} pfn {:x} level {}", u("gfn"), u("pfn"), u("level"))
        }
        "kvm_mmu_set_spte" => {
            let spte = u("spte");
            let user = f.int("u", 1).unwrap_or(-1);
            format!(
                "gfn {:x} spte {spte:x} ({}{}{}{}) level {} at {:x}",
                u("gfn"),
                if u("r") != 0 { "r" } else { "-" },
                if bit(spte, 1) { "w" } else { "-" },
                if u("x") != 0 { "x" } else { "-" },
                match user {
                    -1 => "",
                    0 => "-",
                    _ => "u",
                },
                u("level"),
                u("sptep")
            )
        }
        other => other.to_owned(),
    })
}
