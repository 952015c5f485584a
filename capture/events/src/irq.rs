//! The interrupt-controller tracepoints, typed: IRQ lines (`kvm_set_irq`), the IOAPIC
//! (`kvm_ioapic_set_irq`, `kvm_ioapic_delayed_eoi_inj`), MSIs (`kvm_msi_set_irq`), the PIC
//! (`kvm_pic_set_irq`) and the local APIC (`kvm_apic`, `kvm_apic_accept_irq`,
//! `kvm_apicv_accept_irq`, `kvm_apic_ipi`, `kvm_eoi`, `kvm_pv_eoi`,
//! `kvm_apicv_inhibit_changed`), so that a rule can ask "is the level-triggered line still
//! asserted when L1 EOIs it?" without parsing text.
//!
//! The tracepoints live in `include/trace/events/kvm.h` (IRQ lines, IOAPIC, MSI) and
//! `arch/x86/kvm/trace.h` (PIC, local APIC). Their layouts across kernel generations, checked
//! against torvalds/linux at several versions and the format files of 6.1, 6.12 and 6.18 the
//! repository holds (`samples/real/vmx/*-6.1.dat`, `*-6.12.dat`,
//! `samples/real/raw/tracefs/events`):
//!
//! | tracepoint | fields | generations |
//! |---|---|---|
//! | `kvm_set_irq` | `gsi`, `level`, `irq_source_id` | stable; `level`/`irq_source_id` optional here in case a kernel drops them |
//! | `kvm_ioapic_set_irq` | `e` (redirection entry), `pin`, `coalesced` | old print `vec=%u`, then `vec %u` |
//! | `kvm_ioapic_delayed_eoi_inj` | `e` | stable |
//! | `kvm_msi_set_irq` | `address`, `data` | print `dst %u vec %x`, then `dst %u vec %u`, then `dst %llx vec %u` (extended destination ID) |
//! | `kvm_pic_set_irq` | `chip`, `pin`, `elcr`, `imr`, `coalesced` | stable |
//! | `kvm_apic` | `rw`, `reg`, `val` | `val` u32 (`0x%x`), then u64 (`0x%llx`) |
//! | `kvm_apic_accept_irq` | `apicid`, `dm`, `tm`, `vec` | old: `tm` u8 and `coalesced` (` (coalesced)`); then `tm` u16 |
//! | `kvm_apicv_accept_irq` | as `kvm_apic_accept_irq` | 5.16+ |
//! | `kvm_apic_ipi` | `icr_low`, `dest_id` | stable |
//! | `kvm_eoi`, `kvm_pv_eoi` | `apicid`, `vector` | stable |
//! | `kvm_apicv_inhibit_changed` | `reason`, `set`, `inhibits` | 5.19+; the print gained the inhibit names (6.x). Its predecessor `kvm_apicv_update_request` (`activate`, `bit`/`reason`) stays untyped |
//!
//! Text renderings print only some bits of the raw words `e` (IOAPIC), `address`/`data`
//! (MSI) and `elcr`/`imr` (PIC): those are kept as a [`PartialWord`] whose `known` mask says
//! which bits the input determined, and a bit outside it reads as `None` (unknown), never as 0.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codes::{code_table, display_named};
use crate::event::{DecodeError, KnownEvent};
use crate::fields::FieldLookup;
use crate::kernel_fields::{Field, Radix, Sink, Val, dec, flag, hex};
use crate::required::Required;

code_table! {
    /// An APIC delivery mode: ICR, redirection entry and MSI data bits 10:8 (`kvm_deliver_mode`
    /// in `include/trace/events/kvm.h`).
    DeliveryMode(u8) {
        FIXED = 0 => "Fixed",
        LOWEST_PRIORITY = 1 => "LowPrio",
        SMI = 2 => "SMI",
        RESERVED_3 = 3 => "Res3",
        NMI = 4 => "NMI",
        INIT = 5 => "INIT",
        SIPI = 6 => "SIPI",
        EXT_INT = 7 => "ExtINT",
    }
}

code_table! {
    /// A local APIC register as `kvm_apic` names it (its offset in the APIC page;
    /// `kvm_trace_symbol_apic` in `arch/x86/kvm/trace.h`).
    ApicRegister(u32) {
        ID = 0x20 => "APIC_ID",
        LVR = 0x30 => "APIC_LVR",
        TASKPRI = 0x80 => "APIC_TASKPRI",
        ARBPRI = 0x90 => "APIC_ARBPRI",
        PROCPRI = 0xa0 => "APIC_PROCPRI",
        EOI = 0xb0 => "APIC_EOI",
        RRR = 0xc0 => "APIC_RRR",
        LDR = 0xd0 => "APIC_LDR",
        DFR = 0xe0 => "APIC_DFR",
        SPIV = 0xf0 => "APIC_SPIV",
        ISR = 0x100 => "APIC_ISR",
        TMR = 0x180 => "APIC_TMR",
        IRR = 0x200 => "APIC_IRR",
        ESR = 0x280 => "APIC_ESR",
        ICR = 0x300 => "APIC_ICR",
        ICR2 = 0x310 => "APIC_ICR2",
        LVTT = 0x320 => "APIC_LVTT",
        LVTTHMR = 0x330 => "APIC_LVTTHMR",
        LVTPC = 0x340 => "APIC_LVTPC",
        LVT0 = 0x350 => "APIC_LVT0",
        LVT1 = 0x360 => "APIC_LVT1",
        LVTERR = 0x370 => "APIC_LVTERR",
        TMICT = 0x380 => "APIC_TMICT",
        TMCCT = 0x390 => "APIC_TMCCT",
        TDCR = 0x3e0 => "APIC_TDCR",
        SELF_IPI = 0x3f0 => "APIC_SELF_IPI",
        EFEAT = 0x400 => "APIC_EFEAT",
        ECTRL = 0x410 => "APIC_ECTRL",
    }
}

code_table! {
    /// The ICR destination shorthand, bits 19:18 (`kvm_apic_dst_shorthand`).
    DestShorthand(u8) {
        NONE = 0 => "dst",
        SELF = 1 => "self",
        ALL_CPUS = 2 => "all",
        ALL_BUT_SELF = 3 => "all-but-self",
    }
}

display_named!(DeliveryMode, ApicRegister, DestShorthand);

/// A raw word of which the input determined only some bits: all of them from a binary record
/// or a raw-field text rendering, those the kernel prints from a `TP_printk` rendering.
/// Bits outside `known` are 0 in `value` and mean nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PartialWord {
    /// The bits (0 outside `known`).
    pub value: u64,
    /// Which bits the input determined.
    pub known: u64,
}

impl PartialWord {
    /// Every bit known.
    pub const ALL_KNOWN: u64 = u64::MAX;

    /// A word read whole.
    pub fn full(value: u64) -> Self {
        Self { value, known: Self::ALL_KNOWN }
    }

    /// A word of which only the bits of `known` were determined.
    pub fn new(value: u64, known: u64) -> Self {
        Self { value: value & known, known }
    }

    /// True when every bit is known.
    pub fn is_full(self) -> bool {
        self.known == Self::ALL_KNOWN
    }

    /// Bit `n` when known.
    pub fn bit(self, n: u32) -> Option<bool> {
        let mask = 1u64.checked_shl(n)?;
        (self.known & mask != 0).then_some(self.value & mask != 0)
    }

    /// Bits `shift..shift + width`, when all of them are known.
    pub fn bits(self, shift: u32, width: u32) -> Option<u64> {
        let ones = if width >= 64 { u64::MAX } else { (1u64 << width) - 1 };
        let mask = ones.checked_shl(shift)?;
        self.covers(mask).then(|| (self.value & mask) >> shift)
    }

    /// [`PartialWord::bits`] of at most 8 bits.
    fn small(self, shift: u32, width: u32) -> Option<u8> {
        self.bits(shift, width.min(8)).and_then(|v| u8::try_from(v).ok())
    }

    /// True when every bit of `mask` is known.
    pub fn covers(self, mask: u64) -> bool {
        self.known & mask == mask
    }
}

impl fmt::Debug for PartialWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_full() {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "{:#x} (known {:#x})", self.value, self.known)
        }
    }
}

fn mode_of(w: PartialWord) -> Option<DeliveryMode> {
    w.small(8, 3).map(DeliveryMode)
}

fn vector_of(w: PartialWord) -> Option<u8> {
    w.small(0, 8)
}

fn word(on: bool, yes: &'static str, no: &'static str) -> &'static str {
    if on { yes } else { no }
}

/// An IOAPIC redirection-table entry (`kvm_ioapic_set_irq.e`, `kvm_ioapic_delayed_eoi_inj.e`;
/// `union kvm_ioapic_redirect_entry`): vector 7:0, delivery mode 10:8, logical destination
/// 11, delivery status 12, active-low polarity 13, remote IRR 14, level-triggered 15, masked
/// 16, destination 63:56.
///
/// The kernel's print shows vector, mode, destination mode, trigger, mask and destination;
/// delivery status, polarity and remote IRR are known only from the raw word. `trace-cmd
/// report -R` prints `e` through the print's `(u8)REC->e` cast: the vector only. Every
/// accessor is `None` when the input did not determine its bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RedirectionEntry(pub PartialWord);

impl RedirectionEntry {
    /// The bits `TP_printk` shows, which a text rendering determines.
    pub const PRINTED: u64 = 0xff | 0x700 | 1 << 11 | 1 << 15 | 1 << 16 | 0xff << 56;

    /// Bits 7:0.
    pub fn vector(self) -> Option<u8> {
        vector_of(self.0)
    }

    /// Bits 10:8.
    pub fn delivery_mode(self) -> Option<DeliveryMode> {
        mode_of(self.0)
    }

    /// Bit 11: logical (else physical) destination mode.
    pub fn logical(self) -> Option<bool> {
        self.0.bit(11)
    }

    /// Bit 12: delivery pending.
    pub fn delivery_pending(self) -> Option<bool> {
        self.0.bit(12)
    }

    /// Bit 13: active-low polarity.
    pub fn active_low(self) -> Option<bool> {
        self.0.bit(13)
    }

    /// Bit 14: remote IRR (a level-triggered interrupt was accepted and awaits its EOI).
    pub fn remote_irr(self) -> Option<bool> {
        self.0.bit(14)
    }

    /// Bit 15: level-triggered (else edge).
    pub fn level_triggered(self) -> Option<bool> {
        self.0.bit(15)
    }

    /// Bit 16: masked.
    pub fn masked(self) -> Option<bool> {
        self.0.bit(16)
    }

    /// Bits 63:56: the destination APIC ID (or logical destination).
    pub fn dest(self) -> Option<u8> {
        self.0.small(56, 8)
    }
}

impl fmt::Display for RedirectionEntry {
    /// The kernel's wording, `dst 1 vec 209 (Fixed|logical|edge|masked)`, when the input
    /// determined those bits; else what it did determine (`vec 129 (other bits unknown)`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.0;
        if !w.covers(Self::PRINTED) {
            return match self.vector() {
                Some(v) => write!(f, "vec {v} (other bits unknown)"),
                None => f.write_str("unknown"),
            };
        }
        write!(
            f,
            "dst {:x} vec {} ({}|{}|{}{})",
            self.dest().unwrap_or(0),
            self.vector().unwrap_or(0),
            self.delivery_mode().unwrap_or(DeliveryMode::FIXED),
            word(w.value & 1 << 11 != 0, "logical", "physical"),
            word(w.value & 1 << 15 != 0, "level", "edge"),
            word(w.value & 1 << 16 != 0, "|masked", "")
        )
    }
}

impl fmt::Debug for RedirectionEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedirectionEntry({:?}: {self})", self.0)
    }
}

/// An MSI message as `kvm_msi_set_irq` traces it: the address (destination ID bits 19:12
/// and, with the extended destination ID, 63:40; redirection hint 3; logical destination 2)
/// and the data (vector 7:0, delivery mode 10:8, assert 14, level-triggered 15). `trace-cmd
/// report -R` prints `data` through the print's `(u8)REC->data` cast: the vector only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct MsiMessage {
    /// `address`.
    pub address: PartialWord,
    /// `data`.
    pub data: PartialWord,
}

impl MsiMessage {
    /// The address bits the kernel's print shows.
    pub const ADDRESS_PRINTED: u64 = 1 << 2 | 1 << 3 | 0xff << 12 | 0xff_ffff << 40;
    /// The data bits the kernel's print shows.
    pub const DATA_PRINTED: u64 = 0xff | 0x700 | 1 << 15;

    /// The destination as the kernel prints it: address bits 19:12, and bits 63:40 as bits
    /// 31:8 (extended destination ID).
    pub fn dest(self) -> Option<u64> {
        let low = self.address.bits(12, 8)?;
        let high = self.address.bits(40, 24)?;
        Some(low | high << 8)
    }

    /// Data bits 7:0.
    pub fn vector(self) -> Option<u8> {
        vector_of(self.data)
    }

    /// Data bits 10:8.
    pub fn delivery_mode(self) -> Option<DeliveryMode> {
        mode_of(self.data)
    }

    /// Address bit 2: logical destination mode.
    pub fn logical(self) -> Option<bool> {
        self.address.bit(2)
    }

    /// Address bit 3: redirection hint.
    pub fn redirection_hint(self) -> Option<bool> {
        self.address.bit(3)
    }

    /// Data bit 15: level-triggered.
    pub fn level_triggered(self) -> Option<bool> {
        self.data.bit(15)
    }
}

impl fmt::Display for MsiMessage {
    /// The kernel's wording, `dst 0 vec 129 (Fixed|physical|level)` (`|rh` with the hint),
    /// when the input determined those bits; else what it did determine.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete =
            self.address.covers(Self::ADDRESS_PRINTED) && self.data.covers(Self::DATA_PRINTED);
        if !complete {
            return match self.vector() {
                Some(v) => write!(f, "vec {v} (other bits unknown)"),
                None => f.write_str("unknown"),
            };
        }
        write!(
            f,
            "dst {:x} vec {} ({}|{}|{}{})",
            self.dest().unwrap_or(0),
            self.vector().unwrap_or(0),
            self.delivery_mode().unwrap_or(DeliveryMode::FIXED),
            word(self.address.value & 1 << 2 != 0, "logical", "physical"),
            word(self.data.value & 1 << 15 != 0, "level", "edge"),
            word(self.address.value & 1 << 3 != 0, "|rh", "")
        )
    }
}

impl fmt::Debug for MsiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsiMessage({:?}, {:?}: {self})", self.address, self.data)
    }
}

/// `kvm_apic_accept_irq` / `kvm_apicv_accept_irq`: a local APIC accepted an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct AcceptIrq {
    /// The target vCPU (`apicid` is `vcpu->vcpu_id`, not the APIC ID); the event is traced by
    /// the sender's thread, so it says nothing about who runs it.
    pub apicid: u32,
    /// `dm >> 8` (the kernel passes `APIC_DM_*`, already shifted).
    pub delivery_mode: DeliveryMode,
    /// `tm`: level-triggered.
    pub level: bool,
    /// `vec`.
    pub vector: u8,
    /// Kernels before ~5.x traced whether the interrupt coalesced (` (coalesced)`).
    pub coalesced: Option<bool>,
}

/// `kvm_pic_set_irq`: the PIC's input `pin` of `chip` (0 master, 1 slave) changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PicSetIrq {
    /// `chip`.
    pub chip: u8,
    /// `pin` (0–7).
    pub pin: u8,
    /// `elcr`: the edge/level control register (a set bit is level-triggered).
    pub elcr: u8,
    /// `imr`: the interrupt mask register.
    pub imr: u8,
    /// Which bits of `elcr` and `imr` the input determined (the kernel's print shows only
    /// bit `pin` of each; 0xff from a raw record).
    pub masks_known: u8,
    /// `coalesced`.
    pub coalesced: bool,
}

impl PicSetIrq {
    fn pin_bit(&self) -> u8 {
        1u8 << (self.pin & 7)
    }

    /// The pin is level-triggered (`elcr` bit `pin`).
    pub fn level_triggered(&self) -> bool {
        self.elcr & self.pin_bit() != 0
    }

    /// The pin is masked (`imr` bit `pin`).
    pub fn masked(&self) -> bool {
        self.imr & self.pin_bit() != 0
    }
}

/// The interrupt-controller events (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "tracepoint", rename_all = "snake_case")]
#[allow(missing_docs)] // The fields are the kernel's, described in the variant docs.
pub enum IrqEvent {
    /// `kvm_set_irq`: GSI `gsi` set to `level` by source `irq_source_id` (userspace's
    /// `KVM_IRQ_LINE`, an irqfd, the PIT).
    SetIrq { gsi: u32, level: Option<i32>, irq_source_id: Option<i32> },
    /// `kvm_ioapic_set_irq`: IOAPIC `pin` raised, with its redirection entry.
    IoapicSetIrq { pin: u32, entry: RedirectionEntry, coalesced: bool },
    /// `kvm_ioapic_delayed_eoi_inj`: a level-triggered interrupt re-injected after an EOI
    /// storm was throttled.
    IoapicDelayedEoiInj { entry: RedirectionEntry },
    /// `kvm_msi_set_irq`: an MSI delivered.
    MsiSetIrq { msi: MsiMessage },
    /// `kvm_pic_set_irq`.
    PicSetIrq(PicSetIrq),
    /// `kvm_apic`: an emulated read or write of a local APIC register (`val` u32 before 6.x).
    Apic { write: bool, reg: ApicRegister, val: u64 },
    /// `kvm_apic_accept_irq`.
    ApicAcceptIrq(AcceptIrq),
    /// `kvm_apicv_accept_irq`: accepted into APICv's posted-interrupt path.
    ApicvAcceptIrq(AcceptIrq),
    /// `kvm_apic_ipi`: an ICR write sends an IPI (`icr_low`, `dest_id`).
    ApicIpi { icr_low: IcrLow, dest_id: u32 },
    /// `kvm_eoi`: the guest EOIed `vector` (`apicid` is the vCPU id).
    Eoi { apicid: u32, vector: i32 },
    /// `kvm_pv_eoi`: a paravirtual EOI.
    PvEoi { apicid: u32, vector: i32 },
    /// `kvm_apicv_inhibit_changed`: inhibit `reason` set or cleared; `inhibits` is the new
    /// mask (the reason numbers differ between kernel versions).
    ApicvInhibitChanged { reason: i32, set: bool, inhibits: u64 },
}

/// An ICR low word (`kvm_apic_ipi.icr_low`, the low half of a `kvm_apic` ICR write): vector
/// 7:0, delivery mode 10:8, logical 11, delivery status 12, assert 14, level-triggered 15,
/// destination shorthand 19:18. The kernel's print shows all but the (read-only) delivery
/// status; `trace-cmd report -R` prints it through the print's `(u8)REC->icr_low` cast: the
/// vector only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IcrLow(pub PartialWord);

impl IcrLow {
    /// The bits `kvm_apic_ipi`'s print shows.
    pub const PRINTED: u64 = 0xff | 0x700 | 1 << 11 | 1 << 14 | 1 << 15 | 3 << 18;

    /// Bits 7:0.
    pub fn vector(self) -> Option<u8> {
        vector_of(self.0)
    }

    /// Bits 10:8.
    pub fn delivery_mode(self) -> Option<DeliveryMode> {
        mode_of(self.0)
    }

    /// Bit 11.
    pub fn logical(self) -> Option<bool> {
        self.0.bit(11)
    }

    /// Bit 14: level assert.
    pub fn assert(self) -> Option<bool> {
        self.0.bit(14)
    }

    /// Bit 15: level-triggered.
    pub fn level_triggered(self) -> Option<bool> {
        self.0.bit(15)
    }

    /// Bits 19:18.
    pub fn shorthand(self) -> Option<DestShorthand> {
        self.0.small(18, 2).map(DestShorthand)
    }
}

impl fmt::Display for IcrLow {
    /// The kernel's wording without the destination, `vec 153 (SIPI|physical|assert|edge|dst)`,
    /// when the input determined those bits; else `vec 176 (other bits unknown)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.0;
        if !w.covers(Self::PRINTED) {
            return match self.vector() {
                Some(v) => write!(f, "vec {v} (other bits unknown)"),
                None => f.write_str("unknown"),
            };
        }
        write!(
            f,
            "vec {} ({}|{}|{}|{}|{})",
            self.vector().unwrap_or(0),
            self.delivery_mode().unwrap_or(DeliveryMode::FIXED),
            word(w.value & 1 << 11 != 0, "logical", "physical"),
            word(w.value & 1 << 14 != 0, "assert", "de-assert"),
            word(w.value & 1 << 15 != 0, "level", "edge"),
            self.shorthand().unwrap_or(DestShorthand::NONE)
        )
    }
}

impl IrqEvent {
    /// The human decodings of [`crate::EventKind::decoded`], in the kernel's wording.
    pub(crate) fn for_each_decoded(&self, f: &mut dyn FnMut(&'static str, &dyn fmt::Display)) {
        match self {
            Self::IoapicSetIrq { entry, .. } | Self::IoapicDelayedEoiInj { entry } => {
                f("entry", entry);
                if let Some(irr) = entry.remote_irr() {
                    f("remote_irr", &u8::from(irr));
                }
            }
            Self::MsiSetIrq { msi } => f("msi", msi),
            Self::PicSetIrq(p) => {
                let masked = if p.masked() { "|masked" } else { "" };
                let trigger = if p.level_triggered() { "level" } else { "edge" };
                f("pin", &format_args!("{trigger}{masked}"));
            }
            Self::Apic { reg, val, .. } => {
                f("reg", reg);
                if *reg == ApicRegister::ICR {
                    f("icr", &IcrLow(PartialWord::full(val & 0xffff_ffff)));
                }
            }
            Self::ApicAcceptIrq(a) | Self::ApicvAcceptIrq(a) => {
                let trigger = if a.level { "level" } else { "edge" };
                f("irq", &format_args!("{}|{trigger}", a.delivery_mode));
            }
            Self::ApicIpi { icr_low, .. } => f("icr", icr_low),
            Self::SetIrq { .. }
            | Self::Eoi { .. }
            | Self::PvEoi { .. }
            | Self::ApicvInhibitChanged { .. } => {}
        }
    }
}

/// The pseudo-field a text reader adds when its rendering shows only some bits of
/// `kvm_ioapic_set_irq.e` / `kvm_ioapic_delayed_eoi_inj.e` (absent: every bit known).
pub const E_KNOWN_FIELD: &str = "vmxray_e_known";
/// Likewise for `kvm_msi_set_irq.address`.
pub const ADDRESS_KNOWN_FIELD: &str = "vmxray_address_known";
/// Likewise for `kvm_msi_set_irq.data`.
pub const DATA_KNOWN_FIELD: &str = "vmxray_data_known";
/// Likewise for `kvm_apic_ipi.icr_low`.
pub const ICR_LOW_KNOWN_FIELD: &str = "vmxray_icr_low_known";
/// Likewise for `kvm_pic_set_irq.elcr`/`imr` (a mask of the 8 bits).
pub const PIC_MASKS_KNOWN_FIELD: &str = "vmxray_masks_known";

fn partial(
    r: &Required<'_, impl FieldLookup>,
    field: &'static str,
    known: &str,
) -> Result<PartialWord, DecodeError> {
    let known = r.f.uint(known).unwrap_or(PartialWord::ALL_KNOWN);
    Ok(PartialWord::new(r.u64(field)?, known))
}

fn accept_irq(r: &Required<'_, impl FieldLookup>) -> Result<AcceptIrq, DecodeError> {
    Ok(AcceptIrq {
        apicid: r.u32("apicid")?,
        delivery_mode: DeliveryMode(((r.u64("dm")? >> 8) & 7) as u8),
        level: r.flag("tm")?,
        vector: r.u8("vec")?,
        coalesced: r.f.flag("coalesced"),
    })
}

impl IrqEvent {
    /// Decodes the interrupt-controller tracepoint `known` (every layout generation), one of
    /// [`IrqEvent::TRACEPOINTS`]; the others are refused with a [`DecodeError`].
    pub(crate) fn decode(known: KnownEvent, f: &impl FieldLookup) -> Result<IrqEvent, DecodeError> {
        let r = &Required { f, event: known.name() };
        Ok(match known {
            KnownEvent::KvmSetIrq => Self::SetIrq {
                gsi: r.u32("gsi")?,
                level: r.opt_i32("level"),
                irq_source_id: r.opt_i32("irq_source_id"),
            },
            KnownEvent::KvmIoapicSetIrq => Self::IoapicSetIrq {
                pin: r.u32("pin")?,
                entry: RedirectionEntry(partial(r, "e", E_KNOWN_FIELD)?),
                coalesced: f.flag("coalesced").unwrap_or(false),
            },
            KnownEvent::KvmIoapicDelayedEoiInj => Self::IoapicDelayedEoiInj {
                entry: RedirectionEntry(partial(r, "e", E_KNOWN_FIELD)?),
            },
            KnownEvent::KvmMsiSetIrq => Self::MsiSetIrq {
                msi: MsiMessage {
                    address: partial(r, "address", ADDRESS_KNOWN_FIELD)?,
                    data: partial(r, "data", DATA_KNOWN_FIELD)?,
                },
            },
            KnownEvent::KvmPicSetIrq => {
                let known = f.uint(PIC_MASKS_KNOWN_FIELD).map_or(0xff, |k| (k & 0xff) as u8);
                Self::PicSetIrq(PicSetIrq {
                    chip: r.u8("chip")?,
                    pin: r.u8("pin")?,
                    elcr: r.u8("elcr")? & known,
                    imr: r.u8("imr")? & known,
                    masks_known: known,
                    coalesced: f.flag("coalesced").unwrap_or(false),
                })
            }
            KnownEvent::KvmApic => Self::Apic {
                write: r.flag("rw")?,
                reg: ApicRegister(r.u32("reg")?),
                val: r.u64("val")?,
            },
            KnownEvent::KvmApicAcceptIrq => Self::ApicAcceptIrq(accept_irq(r)?),
            KnownEvent::KvmApicvAcceptIrq => Self::ApicvAcceptIrq(accept_irq(r)?),
            KnownEvent::KvmApicIpi => Self::ApicIpi {
                icr_low: IcrLow(partial(r, "icr_low", ICR_LOW_KNOWN_FIELD)?),
                dest_id: r.u32("dest_id")?,
            },
            KnownEvent::KvmEoi => Self::Eoi { apicid: r.u32("apicid")?, vector: r.i32("vector")? },
            KnownEvent::KvmPvEoi => {
                Self::PvEoi { apicid: r.u32("apicid")?, vector: r.i32("vector")? }
            }
            KnownEvent::KvmApicvInhibitChanged => Self::ApicvInhibitChanged {
                reason: r.i32("reason")?,
                set: r.flag("set")?,
                inhibits: r.u64("inhibits")?,
            },
            other => {
                return Err(DecodeError { event: other.name(), field: "(not an interrupt event)" });
            }
        })
    }

    /// The tracepoints of this family, in [`KnownEvent`] order.
    pub const TRACEPOINTS: [KnownEvent; 12] = [
        KnownEvent::KvmSetIrq,
        KnownEvent::KvmIoapicSetIrq,
        KnownEvent::KvmIoapicDelayedEoiInj,
        KnownEvent::KvmMsiSetIrq,
        KnownEvent::KvmPicSetIrq,
        KnownEvent::KvmApic,
        KnownEvent::KvmApicAcceptIrq,
        KnownEvent::KvmApicvAcceptIrq,
        KnownEvent::KvmApicIpi,
        KnownEvent::KvmEoi,
        KnownEvent::KvmPvEoi,
        KnownEvent::KvmApicvInhibitChanged,
    ];

    /// The tracepoint this is.
    pub(crate) fn known(&self) -> KnownEvent {
        match self {
            Self::SetIrq { .. } => KnownEvent::KvmSetIrq,
            Self::IoapicSetIrq { .. } => KnownEvent::KvmIoapicSetIrq,
            Self::IoapicDelayedEoiInj { .. } => KnownEvent::KvmIoapicDelayedEoiInj,
            Self::MsiSetIrq { .. } => KnownEvent::KvmMsiSetIrq,
            Self::PicSetIrq(_) => KnownEvent::KvmPicSetIrq,
            Self::Apic { .. } => KnownEvent::KvmApic,
            Self::ApicAcceptIrq(_) => KnownEvent::KvmApicAcceptIrq,
            Self::ApicvAcceptIrq(_) => KnownEvent::KvmApicvAcceptIrq,
            Self::ApicIpi { .. } => KnownEvent::KvmApicIpi,
            Self::Eoi { .. } => KnownEvent::KvmEoi,
            Self::PvEoi { .. } => KnownEvent::KvmPvEoi,
            Self::ApicvInhibitChanged { .. } => KnownEvent::KvmApicvInhibitChanged,
        }
    }

    /// The fields under the kernel's names, in the kernel's order (the inverse of
    /// [`IrqEvent::decode`]), then the `vmxray_*_known` pseudo-fields of a partial word.
    pub(crate) fn kernel_fields<'a>(&'a self, out: &mut Sink<impl FnMut(Field<'a>)>) {
        let int = |name: &'static str, v: i32| Field {
            name,
            value: Val::I64(i64::from(v)),
            radix: Radix::Dec,
        };
        let known = |name: &'static str, w: PartialWord| (!w.is_full()).then(|| hex(name, w.known));
        match self {
            Self::SetIrq { gsi, level, irq_source_id } => {
                out.push(dec("gsi", u64::from(*gsi)));
                out.opt(level.map(|l| int("level", l)));
                out.opt(irq_source_id.map(|s| int("irq_source_id", s)));
            }
            Self::IoapicSetIrq { pin, entry, coalesced } => {
                out.extend([hex("e", entry.0.value), dec("pin", u64::from(*pin))]);
                out.push(flag("coalesced", *coalesced));
                out.opt(known(E_KNOWN_FIELD, entry.0));
            }
            Self::IoapicDelayedEoiInj { entry } => {
                out.push(hex("e", entry.0.value));
                out.opt(known(E_KNOWN_FIELD, entry.0));
            }
            Self::MsiSetIrq { msi } => {
                out.extend([hex("address", msi.address.value), hex("data", msi.data.value)]);
                out.opt(known(ADDRESS_KNOWN_FIELD, msi.address));
                out.opt(known(DATA_KNOWN_FIELD, msi.data));
            }
            Self::PicSetIrq(p) => {
                out.extend([dec("chip", u64::from(p.chip)), dec("pin", u64::from(p.pin))]);
                out.extend([hex("elcr", u64::from(p.elcr)), hex("imr", u64::from(p.imr))]);
                out.push(flag("coalesced", p.coalesced));
                if p.masks_known != 0xff {
                    out.push(hex(PIC_MASKS_KNOWN_FIELD, u64::from(p.masks_known)));
                }
            }
            Self::Apic { write, reg, val } => {
                out.extend([flag("rw", *write), hex("reg", u64::from(reg.0)), hex("val", *val)]);
            }
            Self::ApicAcceptIrq(a) | Self::ApicvAcceptIrq(a) => {
                out.extend([
                    hex("apicid", u64::from(a.apicid)),
                    hex("dm", u64::from(a.delivery_mode.0) << 8),
                ]);
                out.extend([flag("tm", a.level), dec("vec", u64::from(a.vector))]);
                out.opt(a.coalesced.map(|c| flag("coalesced", c)));
            }
            Self::ApicIpi { icr_low, dest_id } => {
                out.extend([hex("icr_low", icr_low.0.value), hex("dest_id", u64::from(*dest_id))]);
                out.opt(known(ICR_LOW_KNOWN_FIELD, icr_low.0));
            }
            Self::Eoi { apicid, vector } | Self::PvEoi { apicid, vector } => {
                out.extend([hex("apicid", u64::from(*apicid)), int("vector", *vector)]);
            }
            Self::ApicvInhibitChanged { reason, set, inhibits } => {
                out.extend([int("reason", *reason), flag("set", *set), hex("inhibits", *inhibits)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirection_entry_reads_what_the_kernel_prints() {
        // bz220549: `pin 19 dst 0 vec 129 (Fixed|physical|level)`, remote IRR set in the raw
        // word.
        let e = RedirectionEntry(PartialWord::full(0x81 | 1 << 15 | 1 << 14));
        assert_eq!(e.to_string(), "dst 0 vec 129 (Fixed|physical|level)");
        assert_eq!(e.remote_irr(), Some(true));
        // The same bits from text: remote IRR unknown.
        let t =
            RedirectionEntry(PartialWord::new(0x81 | 1 << 15 | 1 << 14, RedirectionEntry::PRINTED));
        assert_eq!(t.to_string(), "dst 0 vec 129 (Fixed|physical|level)");
        assert_eq!((t.remote_irr(), t.delivery_pending()), (None, None));
        let m = RedirectionEntry(PartialWord::full(1 << 56 | 0xd1 | 1 << 11 | 1 << 16));
        assert_eq!(m.to_string(), "dst 1 vec 209 (Fixed|logical|edge|masked)");
        assert_eq!((m.dest(), m.masked(), m.level_triggered()), (Some(1), Some(true), Some(false)));
        // `trace-cmd report -R` prints `e` through `(u8)REC->e`.
        let r = RedirectionEntry(PartialWord::new(0x81, 0xff));
        assert_eq!((r.vector(), r.dest(), r.level_triggered()), (Some(129), None, None));
        assert_eq!(r.to_string(), "vec 129 (other bits unknown)");
    }

    #[test]
    fn msi_message_destination_includes_the_extended_id() {
        let m = MsiMessage {
            address: PartialWord::full(0xfee0_0000 | 0x12 << 12 | 1 << 3 | 0x1 << 40),
            data: PartialWord::full(0x4000 | 0x100 | 0x31),
        };
        assert_eq!(m.dest(), Some(0x112));
        assert_eq!(m.to_string(), "dst 112 vec 49 (LowPrio|physical|edge|rh)");
        // `trace-cmd report -R` gives `data` through `(u8)REC->data`: the vector only.
        let r = MsiMessage { data: PartialWord::new(0x4131, 0xff), ..m };
        assert_eq!((r.vector(), r.delivery_mode(), r.level_triggered()), (Some(0x31), None, None));
        assert_eq!(r.to_string(), "vec 49 (other bits unknown)");
    }

    #[test]
    fn icr_low_reads_as_kvm_apic_ipi_prints_it() {
        // init-*-6.1.txt (simulator, 6.18 print): `dst 1 vec 153 (SIPI|physical|assert|edge|dst)`.
        assert_eq!(
            IcrLow(PartialWord::full(0x4699)).to_string(),
            "vec 153 (SIPI|physical|assert|edge|dst)"
        );
        // svm-idle-hlt-two-runs-time-only.txt: `apic_write APIC_ICR = 0xb0000440b0`, and
        // `kvm_apic_ipi: dst b0 vec 176 (Fixed|physical|assert|edge|self)`.
        assert_eq!(
            IcrLow(PartialWord::full(0x440b0)).to_string(),
            "vec 176 (Fixed|physical|assert|edge|self)"
        );
        let r = IcrLow(PartialWord::new(0xb0, 0xff));
        assert_eq!((r.vector(), r.shorthand()), (Some(176), None));
        assert_eq!(r.to_string(), "vec 176 (other bits unknown)");
    }

    #[test]
    fn older_accept_irq_layout_has_coalesced() {
        use crate::FieldValue::U64;
        // Before ~5.x: `tm` a u8 and a `coalesced` bool (`apicid %x vec %u (%s|%s)%s`).
        let mut f = crate::Fields::new();
        for (n, v) in [("apicid", 1), ("dm", 0x100), ("tm", 1), ("vec", 0xec), ("coalesced", 1)] {
            f.push(n, U64(v));
        }
        let crate::EventKind::Irq(IrqEvent::ApicAcceptIrq(a)) =
            crate::EventKind::decode("kvm", "kvm_apic_accept_irq", &f).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            a,
            AcceptIrq {
                apicid: 1,
                delivery_mode: DeliveryMode::LOWEST_PRIORITY,
                level: true,
                vector: 0xec,
                coalesced: Some(true)
            }
        );
        // Every tracepoint of the family decodes into its own variant, and back.
        for known in IrqEvent::TRACEPOINTS {
            assert!(matches!(
                IrqEvent::decode(known, &crate::Fields::new()),
                Err(DecodeError { event, .. }) if event == known.name()
            ));
        }
        assert!(IrqEvent::decode(KnownEvent::KvmExit, &f).is_err());
    }

    #[test]
    fn pic_pin_bits() {
        let p =
            PicSetIrq { chip: 1, pin: 3, elcr: 0, imr: 0x08, masks_known: 0x08, coalesced: false };
        assert!(p.masked() && !p.level_triggered());
        assert_eq!(ApicRegister(0xb0).to_string(), "APIC_EOI");
        assert_eq!(ApicRegister(0x3d0).to_string(), "UNKNOWN(0x3d0)");
        assert_eq!(DeliveryMode::from_name("ExtINT"), Some(DeliveryMode::EXT_INT));
    }
}
