//! The kernel's `TP_printk` renderings of the interrupt-controller, MMIO and kvmmmu SPTE
//! tracepoints, parsed back into their fields (the `name=value` renderings go through
//! [`super::body`]'s generic path).
//!
//! Where the print shows only some bits of a raw word (IOAPIC `e`, MSI `address`/`data`, PIC
//! `elcr`/`imr`), the word is rebuilt from what is shown and the `vmxray_*_known`
//! pseudo-field says which bits that is ([`vmxray_events::irq::PartialWord`]). Trailing tokens
//! after a complete rendering (perf script's `ip sym` columns) are ignored, as for the other
//! events.

use vmxray_events::KnownEvent;
use vmxray_events::irq::{
    ADDRESS_KNOWN_FIELD, ApicRegister, DATA_KNOWN_FIELD, DeliveryMode, DestShorthand,
    E_KNOWN_FIELD, ICR_LOW_KNOWN_FIELD, IcrLow, MsiMessage, PIC_MASKS_KNOWN_FIELD,
    RedirectionEntry,
};
use vmxray_events::mmio::MmioKind;
use vmxray_events::qualification::PfFlags;
use vmxray_events::spte::PageFaultRet;

use super::body::{Radix, dec, hex, labels};
use super::fields::{FieldBuf, Name, Val};

/// A signed decimal (`%d`).
fn int(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(neg) => dec(neg).and_then(|v| i64::try_from(v).ok()).map(|v| -v),
        None => dec(s).and_then(|v| i64::try_from(v).ok()),
    }
}

fn push_int(out: &mut FieldBuf, name: &'static str, v: i64) {
    out.items.push((Name::Static(name), Val::I64(v)));
}

/// The `(%s|%s|%s%s)` group of the IOAPIC/MSI prints: delivery mode, destination mode,
/// trigger, and an optional `|masked` / `|rh`.
struct IrqFlags {
    mode: u64,
    logical: bool,
    level: bool,
    extra: Option<&'static str>,
}

fn irq_flags(group: &str, extra_name: &'static str) -> Option<IrqFlags> {
    let inner = group.strip_prefix('(')?.strip_suffix(')')?;
    let mut parts = inner.split('|');
    let mode = u64::from(DeliveryMode::from_name(parts.next()?)?.0);
    let logical = match parts.next()? {
        "logical" => true,
        "physical" => false,
        _ => return None,
    };
    let level = match parts.next()? {
        "level" => true,
        "edge" => false,
        _ => return None,
    };
    let extra = match parts.next() {
        None => None,
        Some(e) if e == extra_name => Some(extra_name),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(IrqFlags { mode, logical, level, extra })
}

/// `dst %x vec %u (...)` (also `vec=%u`, the older IOAPIC print): destination, vector and
/// the flag group; the rest of the tokens are returned for the caller.
fn dst_vec_flags<'b>(
    tokens: &mut impl Iterator<Item = &'b str>,
    extra_name: &'static str,
) -> Option<(u64, u64, IrqFlags)> {
    let mut dst = None;
    let mut vec = None;
    while let Some(tok) = tokens.next() {
        if tok == "dst" {
            dst = Some(hex(tokens.next()?)?);
        } else if tok == "vec" {
            vec = Some(dec(tokens.next()?)?);
        } else if let Some(v) = tok.strip_prefix("vec=") {
            vec = Some(dec(v)?);
        } else if tok.starts_with('(') {
            return Some((dst?, vec?, irq_flags(tok, extra_name)?));
        } else {
            return None;
        }
    }
    None
}

/// `kvm_set_irq`: `gsi %u level %d source %d`.
pub(super) fn set_irq(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let mut gsi = None;
    while let Some(tok) = it.next() {
        match tok {
            "gsi" => gsi = Some(dec(it.next()?)?),
            "level" => push_int(out, "level", int(it.next()?)?),
            "source" => push_int(out, "irq_source_id", int(it.next()?)?),
            _ => {}
        }
    }
    out.u64("gsi", gsi?);
    Some(())
}

fn redirection_entry(dst: u64, vec: u64, flags: &IrqFlags) -> u64 {
    (vec & 0xff)
        | flags.mode << 8
        | u64::from(flags.logical) << 11
        | u64::from(flags.level) << 15
        | u64::from(flags.extra.is_some()) << 16
        | (dst & 0xff) << 56
}

/// `kvm_ioapic_set_irq`: `pin %u dst %x vec %u (%s|%s|%s%s)%s` (older: `vec=%u`), with
/// ` (coalesced)`.
pub(super) fn ioapic_set_irq(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "pin" {
        return None;
    }
    let pin = dec(it.next()?)?;
    let (dst, vec, flags) = dst_vec_flags(&mut it, "masked")?;
    out.u64("e", redirection_entry(dst, vec, &flags));
    out.u64("pin", pin);
    out.flag("coalesced", it.next() == Some("(coalesced)"));
    out.u64(E_KNOWN_FIELD, RedirectionEntry::PRINTED);
    Some(())
}

/// `kvm_ioapic_delayed_eoi_inj`: `dst %x vec %u (%s|%s|%s%s)`.
pub(super) fn ioapic_delayed_eoi_inj(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let (dst, vec, flags) = dst_vec_flags(&mut it, "masked")?;
    out.u64("e", redirection_entry(dst, vec, &flags));
    out.u64(E_KNOWN_FIELD, RedirectionEntry::PRINTED);
    Some(())
}

/// `kvm_msi_set_irq`: `dst %llx vec %u (%s|%s|%s%s)` with `|rh` (older kernels printed the
/// destination in decimal; the same below 10).
pub(super) fn msi_set_irq(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let (dst, vec, flags) = dst_vec_flags(&mut it, "rh")?;
    let address = (dst & 0xff) << 12
        | (dst & 0xffff_ff00) << 32
        | u64::from(flags.logical) << 2
        | u64::from(flags.extra.is_some()) << 3;
    let data = (vec & 0xff) | flags.mode << 8 | u64::from(flags.level) << 15;
    out.u64("address", address);
    out.u64("data", data);
    out.u64(ADDRESS_KNOWN_FIELD, MsiMessage::ADDRESS_PRINTED);
    out.u64(DATA_KNOWN_FIELD, MsiMessage::DATA_PRINTED);
    Some(())
}

/// `kvm_pic_set_irq`: `chip %u pin %u (%s%s)%s`: `(edge|masked)`, `(level)`, ` (coalesced)`.
pub(super) fn pic_set_irq(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "chip" {
        return None;
    }
    let chip = dec(it.next()?)?;
    if it.next()? != "pin" {
        return None;
    }
    let pin = dec(it.next()?)?;
    let group = it.next()?.strip_prefix('(')?.strip_suffix(')')?;
    let (trigger, masked) = match group.split_once('|') {
        Some((t, "masked")) => (t, true),
        Some(_) => return None,
        None => (group, false),
    };
    let level = match trigger {
        "level" => true,
        "edge" => false,
        _ => return None,
    };
    let bit = 1u64 << (pin & 7);
    out.u64("chip", chip);
    out.u64("pin", pin);
    out.u64("elcr", if level { bit } else { 0 });
    out.u64("imr", if masked { bit } else { 0 });
    out.flag("coalesced", it.next() == Some("(coalesced)"));
    out.u64(PIC_MASKS_KNOWN_FIELD, bit);
    Some(())
}

/// `kvm_apic`: `apic_%s %s = 0x%llx` (`0x%x` before 6.x); an unnamed register prints as a
/// number.
pub(super) fn apic(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let write = match it.next()? {
        "apic_write" => true,
        "apic_read" => false,
        _ => return None,
    };
    let reg_text = it.next()?;
    let reg = match ApicRegister::from_name(reg_text) {
        Some(r) => u64::from(r.0),
        None => hex(reg_text).filter(|_| reg_text.starts_with("0x"))?,
    };
    if it.next()? != "=" {
        return None;
    }
    let val = hex(it.next()?)?;
    out.flag("rw", write);
    out.u64("reg", reg);
    out.u64("val", val);
    Some(())
}

/// `kvm_apic_accept_irq` / `kvm_apicv_accept_irq`: `apicid %x vec %u (%s|%s)`, older with
/// ` (coalesced)`.
pub(super) fn accept_irq(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "apicid" {
        return None;
    }
    let apicid = hex(it.next()?)?;
    if it.next()? != "vec" {
        return None;
    }
    let vec = dec(it.next()?)?;
    let (mode, trigger) = it.next()?.strip_prefix('(')?.strip_suffix(')')?.split_once('|')?;
    let level = match trigger {
        "level" => true,
        "edge" => false,
        _ => return None,
    };
    out.u64("apicid", apicid);
    out.u64("dm", u64::from(DeliveryMode::from_name(mode)?.0) << 8);
    out.flag("tm", level);
    out.u64("vec", vec);
    if it.next() == Some("(coalesced)") {
        // Only the older print has the field; its absence there means "not coalesced", but
        // a newer kernel prints nothing either, so absence stays unknown.
        out.flag("coalesced", true);
    }
    Some(())
}

/// `kvm_apic_ipi`: `dst %x vec %u (%s|%s|%s|%s|%s)`.
pub(super) fn apic_ipi(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "dst" {
        return None;
    }
    let dest = hex(it.next()?)?;
    if it.next()? != "vec" {
        return None;
    }
    let vec = dec(it.next()?)?;
    let inner = it.next()?.strip_prefix('(')?.strip_suffix(')')?;
    let parts: Vec<&str> = inner.split('|').collect();
    let [mode, dest_mode, assert, trigger, shorthand] = parts.as_slice() else { return None };
    let bit = |on: bool, n: u32| u64::from(on) << n;
    let choose = |v: &str, yes: &str, no: &str| match v {
        _ if v == yes => Some(true),
        _ if v == no => Some(false),
        _ => None,
    };
    let icr = (vec & 0xff)
        | u64::from(DeliveryMode::from_name(mode)?.0) << 8
        | bit(choose(dest_mode, "logical", "physical")?, 11)
        | bit(choose(assert, "assert", "de-assert")?, 14)
        | bit(choose(trigger, "level", "edge")?, 15)
        | u64::from(DestShorthand::from_name(shorthand)?.0) << 18;
    out.u64("icr_low", icr);
    out.u64("dest_id", dest);
    out.u64(ICR_LOW_KNOWN_FIELD, IcrLow::PRINTED);
    Some(())
}

/// `kvm_eoi` / `kvm_pv_eoi`: `apicid %x vector %d`.
pub(super) fn eoi(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "apicid" {
        return None;
    }
    let apicid = hex(it.next()?)?;
    if it.next()? != "vector" {
        return None;
    }
    let vector = int(it.next()?)?;
    out.u64("apicid", apicid);
    push_int(out, "vector", vector);
    Some(())
}

/// `kvm_apicv_inhibit_changed`: `%s reason=%u, inhibits=0x%lx` then, in 6.x, the inhibit
/// names (derived from the mask, not read).
pub(super) fn apicv_inhibit_changed(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    let set = match it.next()? {
        "set" => true,
        "cleared" => false,
        _ => return None,
    };
    let reason = it.next()?.strip_prefix("reason=")?.strip_suffix(',')?;
    let inhibits = it.next()?.strip_prefix("inhibits=")?;
    push_int(out, "reason", int(reason)?);
    out.flag("set", set);
    out.u64("inhibits", hex(inhibits)?);
    Some(())
}

/// `kvm_mmio`: `mmio %s len %u gpa 0x%llx val 0x%llx`.
pub(super) fn mmio(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "mmio" {
        return None;
    }
    let kind_text = it.next()?;
    let kind = match MmioKind::from_name(kind_text) {
        Some(k) => u64::from(k.0),
        None => hex(kind_text).filter(|_| kind_text.starts_with("0x"))?,
    };
    out.u64("type", kind);
    labels(
        body,
        out,
        &[("len", "len", Radix::Dec), ("gpa", "gpa", Radix::Hex), ("val", "val", Radix::Hex)],
    )?;
    (out.has(body, "len") && out.has(body, "gpa") && out.has(body, "val")).then_some(())
}

/// `vcpu_match_mmio`: `gva %#lx gpa %#llx %s %s` (`Read|Write`, `GPA|GVA`).
pub(super) fn vcpu_match_mmio(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace();
    if it.next()? != "gva" {
        return None;
    }
    let gva = hex(it.next()?)?;
    if it.next()? != "gpa" {
        return None;
    }
    let gpa = hex(it.next()?)?;
    let write = match it.next()? {
        "Write" => true,
        "Read" => false,
        _ => return None,
    };
    let gpa_match = match it.next()? {
        "GPA" => true,
        "GVA" => false,
        _ => return None,
    };
    out.u64("gva", gva);
    out.u64("gpa", gpa);
    out.flag("write", write);
    out.flag("gpa_match", gpa_match);
    Some(())
}

/// `fast_page_fault`: `vcpu %d gva %llx error_code %s sptep %p old %#llx new %llx spurious
/// %d fixed %d`. The error code is a `__print_flags` list (empty for 0); `sptep` is a hashed
/// pointer and is not kept; `ret` becomes `FIXED`/`SPURIOUS` when the print says so.
pub(super) fn fast_page_fault(body: &str, out: &mut FieldBuf) -> Option<()> {
    let mut it = body.split_ascii_whitespace().peekable();
    let (mut vcpu, mut addr, mut error_code, mut old, mut new) = (None, None, None, None, None);
    let (mut spurious, mut fixed) = (None, None);
    while let Some(tok) = it.next() {
        match tok {
            "vcpu" => vcpu = Some(int(it.next()?)?),
            "gva" => addr = Some(hex(it.next()?)?),
            "error_code" => {
                // An empty flag list leaves the next label in its place.
                let flags = match it.peek() {
                    Some(&"sptep") | None => "",
                    Some(_) => it.next()?,
                };
                error_code = Some(PfFlags::parse(flags)?);
            }
            "sptep" => {
                it.next()?;
            }
            "old" => old = Some(hex(it.next()?)?),
            "new" => new = Some(hex(it.next()?)?),
            "spurious" => spurious = Some(dec(it.next()?)? != 0),
            "fixed" => fixed = Some(dec(it.next()?)? != 0),
            _ => {}
        }
    }
    push_int(out, "vcpu_id", vcpu?);
    out.u64("cr2_or_gpa", addr?);
    out.u64("error_code", error_code?);
    out.u64("old_spte", old?);
    out.u64("new_spte", new?);
    let ret = match (spurious?, fixed?) {
        (true, _) => Some(PageFaultRet::SPURIOUS),
        (false, true) => Some(PageFaultRet::FIXED),
        (false, false) => None,
    };
    if let Some(ret) = ret {
        push_int(out, "ret", i64::from(ret.0));
    }
    Some(())
}

/// `kvm_tdp_mmu_spte_changed`: `as id %d gfn %llx level %d old_spte %llx new_spte %llx`.
pub(super) fn tdp_mmu_spte_changed(body: &str, out: &mut FieldBuf) -> Option<()> {
    let rest = body.trim_start().strip_prefix("as ")?;
    labels(
        rest,
        out,
        &[
            ("id", "as_id", Radix::Dec),
            ("gfn", "gfn", Radix::Hex),
            ("level", "level", Radix::Dec),
            ("old_spte", "old_spte", Radix::Hex),
            ("new_spte", "new_spte", Radix::Hex),
        ],
    )?;
    ["as_id", "gfn", "level", "old_spte", "new_spte"].iter().all(|f| out.has(body, f)).then_some(())
}

/// `kvm_mmu_spte_requested`: `gfn %llx pfn %llx level %d`.
pub(super) fn spte_requested(body: &str, out: &mut FieldBuf) -> Option<()> {
    labels(
        body,
        out,
        &[("gfn", "gfn", Radix::Hex), ("pfn", "pfn", Radix::Hex), ("level", "level", Radix::Dec)],
    )?;
    ["gfn", "pfn", "level"].iter().all(|f| out.has(body, f)).then_some(())
}

/// `kvm_mmu_set_spte`: `gfn %llx spte %llx (%s%s%s%s) level %d at %llx`: the access string
/// is `r`/`w`/`x` then `u` unless the MMU has no user bit (EPT: three characters). `w` is
/// the SPTE's own bit 1, so it is not a field.
pub(super) fn set_spte(body: &str, out: &mut FieldBuf) -> Option<()> {
    let access = body
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix('(').and_then(|t| t.strip_suffix(')')))?
        .as_bytes();
    let flag = |at: usize, c: u8| match access.get(at) {
        Some(&b) if b == c => Some(true),
        Some(b'-') => Some(false),
        _ => None,
    };
    let (r, x) = (flag(0, b'r')?, flag(2, b'x')?);
    let user = match access.len() {
        3 => -1,
        4 => i64::from(flag(3, b'u')?),
        _ => return None,
    };
    labels(
        body,
        out,
        &[
            ("gfn", "gfn", Radix::Hex),
            ("spte", "spte", Radix::Hex),
            ("level", "level", Radix::Dec),
            ("at", "sptep", Radix::Hex),
        ],
    )?;
    out.flag("r", r);
    out.flag("x", x);
    push_int(out, "u", user);
    ["gfn", "spte", "level", "sptep"].iter().all(|f| out.has(body, f)).then_some(())
}

/// After a `name=value` rendering: `trace-cmd report -R` (libtraceevent) prints a field
/// that the print fmt uses through a bare cast, `(u8)REC->e`, cast, so `e` of the IOAPIC
/// events, `data` of `kvm_msi_set_irq` and `icr_low` of `kvm_apic_ipi` hold only their low
/// byte there (`e=129` for `0x300000000008081`). Their other bits are marked unknown, unless
/// the value carries ftrace's `fields`-option annotation (`0x… (N)`), which is the whole
/// word.
pub(super) fn after_raw_fields(known: KnownEvent, body: &str, out: &mut FieldBuf) {
    let casts: &[(&str, &'static str)] = match known {
        KnownEvent::KvmIoapicSetIrq | KnownEvent::KvmIoapicDelayedEoiInj => &[("e", E_KNOWN_FIELD)],
        KnownEvent::KvmMsiSetIrq => &[("data", DATA_KNOWN_FIELD)],
        KnownEvent::KvmApicIpi => &[("icr_low", ICR_LOW_KNOWN_FIELD)],
        _ => &[],
    };
    for (field, known_field) in casts {
        let mut tokens = body.split_ascii_whitespace();
        let annotated = tokens
            .by_ref()
            .find(|t| t.strip_prefix(field).is_some_and(|rest| rest.starts_with('=')))
            .map(|_| tokens.next().is_some_and(|next| next.starts_with('(')));
        if annotated == Some(false) && !out.has(body, known_field) {
            out.u64(known_field, 0xff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irq_flag_groups() {
        let f = irq_flags("(Fixed|physical|edge|masked)", "masked").unwrap();
        assert_eq!((f.mode, f.logical, f.level, f.extra), (0, false, false, Some("masked")));
        let f = irq_flags("(ExtINT|logical|level)", "masked").unwrap();
        assert_eq!((f.mode, f.logical, f.level, f.extra), (7, true, true, None));
        assert!(irq_flags("(Fixed|physical|edge|rh)", "masked").is_none());
        assert!(irq_flags("(Fixed|sideways|edge)", "masked").is_none());
        assert_eq!(int("-4"), Some(-4));
        assert_eq!(int("-"), None);
    }
}
