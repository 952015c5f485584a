//! Bit-level breakdowns for the Detail view: a decoded exit qualification (EPT violation,
//! nested page fault, `#PF` error code, CR access) and the interrupt-controller, MMIO and SPTE
//! events. Everything comes from `vmxray_events` (`qualification`, `irq`, `mmio`, `spte`); a
//! bit the input did not determine is shown as unknown, never as 0.

use ratatui::text::Line;
use vmxray_events::EventKind;
use vmxray_events::codes::CrAccessType;
use vmxray_events::irq::{IcrLow, IrqEvent, MsiMessage, PartialWord, RedirectionEntry};
use vmxray_events::qualification::{EptViolation, PfErrorCode, Qualification};
use vmxray_events::spte::SpteEvent;

use super::detail::{heading, kv};

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

fn maybe(b: Option<bool>) -> String {
    b.map_or_else(|| "unknown (not in the input)".into(), yes_no)
}

fn ept_lines(out: &mut Vec<Line<'static>>, q: EptViolation) {
    out.push(heading(&format!("EPT violation ({:#x}): {q}", q.0)));
    out.push(kv("access", q.access().to_string()));
    out.push(kv(
        "accessed (bit 8)",
        match q.final_translation() {
            Some(true) => "the final translation",
            Some(false) => "a guest paging-structure entry (guest walk)",
            None => "undefined (bit 7 clear)",
        },
    ));
    out.push(kv("mapped (bits 3-5)", yes_no(q.present())));
    let [r, w, x] = q.permissions();
    out.push(kv("EPT readable (bit 3)", yes_no(r)));
    out.push(kv("EPT writable (bit 4)", yes_no(w)));
    out.push(kv("EPT executable (bit 5)", yes_no(x)));
    out.push(kv("linear address (bit 7)", if q.gla_valid() { "valid" } else { "not valid" }));
    match q.linear_attributes() {
        Some([user, writable, xd]) => {
            out.push(kv("user-mode address (bit 9)", yes_no(user)));
            out.push(kv("writable page (bit 10)", yes_no(writable)));
            out.push(kv("XD page (bit 11)", yes_no(xd)));
        }
        None => out.push(kv("bits 9-11", "undefined (bits 7/8 clear)")),
    }
    out.push(kv("NMI unblocking (bit 12)", yes_no(q.nmi_unblocking())));
    out.push(kv("shadow stack (bit 13)", yes_no(q.shadow_stack())));
}

fn pf_lines(out: &mut Vec<Line<'static>>, what: &str, e: PfErrorCode) {
    out.push(heading(&format!("{what} ({:#x}): {e}", e.0)));
    out.push(kv("flags (kernel names)", e.flags().to_string()));
    out.push(kv("present (P)", yes_no(e.present())));
    out.push(kv("write (W)", yes_no(e.write())));
    out.push(kv("user (U)", yes_no(e.user())));
    out.push(kv("reserved bit (RSVD)", yes_no(e.reserved_bit())));
    out.push(kv("instruction fetch (I/F)", yes_no(e.fetch())));
    if e.0 >> 32 != 0 {
        out.push(kv(
            "stage (bits 32/33)",
            match e.final_translation() {
                Some(true) => "final guest-physical address",
                Some(false) => "guest page-table access during the walk",
                None => "neither or both set",
            },
        ));
    }
}

/// The breakdown of a decoded exit qualification.
pub(super) fn qualification_lines(out: &mut Vec<Line<'static>>, q: Qualification) {
    match q {
        Qualification::EptViolation(e) => ept_lines(out, e),
        Qualification::NestedPageFault(e) => pf_lines(out, "Nested page fault error code", e),
        Qualification::PageFault(e) => pf_lines(out, "#PF error code", e),
        Qualification::CrAccess(cr) => {
            out.push(heading(&format!("CR access ({:#x}): {cr}", cr.0)));
            out.push(kv("register", format!("CR{}", cr.cr())));
            let access = match cr.access() {
                CrAccessType::MovTo => "MOV to CR",
                CrAccessType::MovFrom => "MOV from CR",
                CrAccessType::Clts => "CLTS",
                CrAccessType::Lmsw => "LMSW",
            };
            out.push(kv("access", access));
            out.push(kv("general-purpose register", cr.gpr_name()));
        }
    }
}

fn word_lines(out: &mut Vec<Line<'static>>, name: &str, w: PartialWord) {
    let known = if w.is_full() { "all".to_owned() } else { format!("{:#x}", w.known) };
    out.push(kv(format!("{name} (raw)"), format!("{:#x}, bits known: {known}", w.value)));
}

fn entry_lines(out: &mut Vec<Line<'static>>, e: RedirectionEntry) {
    out.push(heading(&format!("IOAPIC redirection entry: {e}")));
    word_lines(out, "e", e.0);
    out.push(kv("vector", e.vector().map_or("unknown".into(), |v| v.to_string())));
    out.push(kv("delivery mode", e.delivery_mode().map_or("unknown".into(), |m| m.to_string())));
    out.push(kv("destination", e.dest().map_or("unknown".into(), |d| format!("{d:#x}"))));
    out.push(kv("logical destination", maybe(e.logical())));
    out.push(kv("level-triggered", maybe(e.level_triggered())));
    out.push(kv("masked", maybe(e.masked())));
    out.push(kv("remote IRR (awaits EOI)", maybe(e.remote_irr())));
    out.push(kv("delivery pending", maybe(e.delivery_pending())));
    out.push(kv("active-low polarity", maybe(e.active_low())));
}

fn msi_lines(out: &mut Vec<Line<'static>>, m: MsiMessage) {
    out.push(heading(&format!("MSI: {m}")));
    word_lines(out, "address", m.address);
    word_lines(out, "data", m.data);
    out.push(kv("destination", m.dest().map_or("unknown".into(), |d| format!("{d:#x}"))));
    out.push(kv("vector", m.vector().map_or("unknown".into(), |v| v.to_string())));
    out.push(kv("delivery mode", m.delivery_mode().map_or("unknown".into(), |d| d.to_string())));
    out.push(kv("logical destination", maybe(m.logical())));
    out.push(kv("redirection hint", maybe(m.redirection_hint())));
    out.push(kv("level-triggered", maybe(m.level_triggered())));
}

fn icr_lines(out: &mut Vec<Line<'static>>, icr: IcrLow) {
    out.push(heading(&format!("ICR: {icr}")));
    word_lines(out, "icr_low", icr.0);
    out.push(kv("vector", icr.vector().map_or("unknown".into(), |v| v.to_string())));
    out.push(kv("delivery mode", icr.delivery_mode().map_or("unknown".into(), |d| d.to_string())));
    out.push(kv("logical destination", maybe(icr.logical())));
    out.push(kv("assert", maybe(icr.assert())));
    out.push(kv("level-triggered", maybe(icr.level_triggered())));
    out.push(kv("shorthand", icr.shorthand().map_or("unknown".into(), |s| s.to_string())));
}

/// The breakdown of an interrupt-controller, MMIO or SPTE event (nothing for other events).
pub(super) fn device_lines(out: &mut Vec<Line<'static>>, kind: &EventKind) {
    match kind {
        EventKind::Irq(e) => match e {
            IrqEvent::IoapicSetIrq { entry, .. } | IrqEvent::IoapicDelayedEoiInj { entry } => {
                entry_lines(out, *entry);
            }
            IrqEvent::MsiSetIrq { msi } => msi_lines(out, *msi),
            IrqEvent::ApicIpi { icr_low, .. } => icr_lines(out, *icr_low),
            IrqEvent::Apic { reg, val, .. } => {
                out.push(heading(&format!("APIC register {reg} = {val:#x}")));
                if *reg == vmxray_events::irq::ApicRegister::ICR {
                    icr_lines(out, IcrLow(PartialWord::full(val & 0xffff_ffff)));
                }
            }
            IrqEvent::PicSetIrq(p) => {
                out.push(heading(&format!("PIC {} pin {}", p.chip, p.pin)));
                out.push(kv("level-triggered (ELCR)", yes_no(p.level_triggered())));
                out.push(kv("masked (IMR)", yes_no(p.masked())));
                out.push(kv(
                    "other pins' ELCR/IMR bits",
                    if p.masks_known == 0xff { "known" } else { "unknown (not in the input)" },
                ));
            }
            IrqEvent::ApicAcceptIrq(a) | IrqEvent::ApicvAcceptIrq(a) => {
                out.push(heading(&format!("Interrupt accepted by vCPU {}", a.apicid)));
                out.push(kv("vector", a.vector.to_string()));
                out.push(kv("delivery mode", a.delivery_mode.to_string()));
                out.push(kv("level-triggered", yes_no(a.level)));
            }
            IrqEvent::SetIrq { .. }
            | IrqEvent::Eoi { .. }
            | IrqEvent::PvEoi { .. }
            | IrqEvent::ApicvInhibitChanged { .. } => {}
        },
        EventKind::Spte(SpteEvent::FastPageFault(p)) => {
            pf_lines(out, "fast_page_fault error code", p.error_code);
            out.push(kv(
                "outcome",
                p.ret.map_or("neither fixed nor spurious".into(), |r| r.to_string()),
            ));
        }
        // Their fields say it all (the MMIO kind and SPTE access are in "Decoded").
        _ => {}
    }
}

/// The IDT-vectoring line of an exit: what was being delivered.
pub(super) fn vectoring_title(isa_svm: bool) -> &'static str {
    if isa_svm {
        "Event being delivered (SVM EXITINTINFO, intr_info)"
    } else {
        "IDT-vectoring info (info2): event being delivered"
    }
}
