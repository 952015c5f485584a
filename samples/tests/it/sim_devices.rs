//! The simulator's printer of the interrupt-controller, MMIO and SPTE tracepoints
//! (`sim/text_devices.rs`, written from the kernel's print formats) against the text reader's
//! parser (`capture/src/read/text/body_devices.rs`): any typed event, printed as the kernel
//! prints it and read back, is the same event with exactly the bits the print shows.

use proptest::prelude::*;
use vmxray_capture::ReadOptions;
use vmxray_capture::read::text::TextReader;
use vmxray_events::irq::{
    AcceptIrq, ApicRegister, DeliveryMode, IcrLow, IrqEvent, MsiMessage, PartialWord, PicSetIrq,
    RedirectionEntry,
};
use vmxray_events::mmio::{MmioEvent, MmioKind};
use vmxray_events::qualification::PfErrorCode;
use vmxray_events::spte::{FastPageFault, PageFaultRet, SpteEvent};
use vmxray_events::{Event, EventKind};
use vmxray_samples::sim::KernelVersion;
use vmxray_samples::sim::text::render_line;

fn irq() -> impl Strategy<Value = IrqEvent> {
    prop_oneof![
        (any::<u32>(), any::<i32>(), any::<i32>()).prop_map(|(gsi, l, s)| IrqEvent::SetIrq {
            gsi,
            level: Some(l),
            irq_source_id: Some(s)
        }),
        (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(pin, e, coalesced)| {
            IrqEvent::IoapicSetIrq { pin, entry: RedirectionEntry(PartialWord::full(e)), coalesced }
        }),
        any::<u64>().prop_map(|e| IrqEvent::IoapicDelayedEoiInj {
            entry: RedirectionEntry(PartialWord::full(e))
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(a, d)| IrqEvent::MsiSetIrq {
            msi: MsiMessage { address: PartialWord::full(a), data: PartialWord::full(d) }
        }),
        (0u8..2, 0u8..8, any::<u8>(), any::<u8>(), any::<bool>()).prop_map(
            |(chip, pin, elcr, imr, coalesced)| IrqEvent::PicSetIrq(PicSetIrq {
                chip,
                pin,
                elcr,
                imr,
                masks_known: 0xff,
                coalesced
            })
        ),
        (
            any::<bool>(),
            prop_oneof![Just(0xb0u32), Just(0x300), Just(0x3d0), any::<u32>()],
            any::<u64>()
        )
            .prop_map(|(write, reg, val)| IrqEvent::Apic {
                write,
                reg: ApicRegister(reg),
                val
            }),
        (any::<u32>(), 0u8..8, any::<bool>(), any::<u8>(), any::<bool>(), any::<bool>()).prop_map(
            |(apicid, dm, level, vector, coalesced, v)| {
                let a = AcceptIrq {
                    apicid,
                    delivery_mode: DeliveryMode(dm),
                    level,
                    vector,
                    coalesced: coalesced.then_some(true),
                };
                if v { IrqEvent::ApicvAcceptIrq(a) } else { IrqEvent::ApicAcceptIrq(a) }
            }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(icr, dest_id)| IrqEvent::ApicIpi {
            icr_low: IcrLow(PartialWord::full(u64::from(icr))),
            dest_id
        }),
        (any::<u32>(), any::<i32>(), any::<bool>()).prop_map(|(apicid, vector, pv)| {
            if pv { IrqEvent::PvEoi { apicid, vector } } else { IrqEvent::Eoi { apicid, vector } }
        }),
        (0i32..i32::MAX, any::<bool>(), any::<u64>()).prop_map(|(reason, set, inhibits)| {
            IrqEvent::ApicvInhibitChanged { reason, set, inhibits }
        }),
    ]
}

fn device() -> impl Strategy<Value = EventKind> {
    let mmio = prop_oneof![
        (0u32..5, any::<u32>(), any::<u64>(), any::<u64>())
            .prop_map(|(k, len, gpa, val)| MmioEvent::Access { kind: MmioKind(k), len, gpa, val }),
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(gva, gpa, write, gpa_match)| MmioEvent::VcpuMatch { gva, gpa, write, gpa_match }
        ),
    ];
    let spte = prop_oneof![
        (0u32..1024, any::<[u64; 5]>(), 0i32..7).prop_map(
            |(vcpu_id, [addr, ec, sptep, old, new], ret)| {
                SpteEvent::FastPageFault(Box::new(FastPageFault {
                    vcpu_id,
                    addr,
                    error_code: PfErrorCode(ec),
                    sptep: Some(sptep),
                    old_spte: old,
                    new_spte: new,
                    ret: Some(PageFaultRet(ret)),
                }))
            }
        ),
        (0u8..2, any::<u64>(), 1u8..6, any::<u64>(), any::<u64>()).prop_map(
            |(as_id, gfn, level, old_spte, new_spte)| SpteEvent::TdpMmuSpteChanged {
                as_id,
                gfn,
                level,
                old_spte,
                new_spte
            }
        ),
        (any::<u64>(), any::<u64>(), 1u8..6)
            .prop_map(|(gfn, pfn, level)| SpteEvent::SpteRequested { gfn, pfn, level }),
        (any::<[u64; 3]>(), 1u8..6, any::<bool>(), any::<bool>(), any::<Option<bool>>()).prop_map(
            |([gfn, spte, sptep], level, readable, executable, user)| {
                SpteEvent::SetSpte { gfn, spte, sptep, level, readable, executable, user }
            }
        ),
    ];
    prop_oneof![
        irq().prop_map(EventKind::Irq),
        mmio.prop_map(EventKind::Mmio),
        spte.prop_map(EventKind::Spte)
    ]
}

/// What the kernel's print of `kind` determines.
fn as_printed(kind: &EventKind) -> EventKind {
    let part = |w: PartialWord, known: u64| PartialWord::new(w.value, known);
    match kind.clone() {
        EventKind::Irq(IrqEvent::IoapicSetIrq { pin, entry, coalesced }) => {
            EventKind::Irq(IrqEvent::IoapicSetIrq {
                pin,
                entry: RedirectionEntry(part(entry.0, RedirectionEntry::PRINTED)),
                coalesced,
            })
        }
        EventKind::Irq(IrqEvent::IoapicDelayedEoiInj { entry }) => {
            EventKind::Irq(IrqEvent::IoapicDelayedEoiInj {
                entry: RedirectionEntry(part(entry.0, RedirectionEntry::PRINTED)),
            })
        }
        EventKind::Irq(IrqEvent::MsiSetIrq { msi }) => EventKind::Irq(IrqEvent::MsiSetIrq {
            msi: MsiMessage {
                address: part(msi.address, MsiMessage::ADDRESS_PRINTED),
                data: part(msi.data, MsiMessage::DATA_PRINTED),
            },
        }),
        EventKind::Irq(IrqEvent::PicSetIrq(p)) => {
            let k = 1u8 << p.pin;
            EventKind::Irq(IrqEvent::PicSetIrq(PicSetIrq {
                elcr: p.elcr & k,
                imr: p.imr & k,
                masks_known: k,
                ..p
            }))
        }
        EventKind::Irq(IrqEvent::ApicIpi { icr_low, dest_id }) => {
            EventKind::Irq(IrqEvent::ApicIpi {
                icr_low: IcrLow(part(icr_low.0, IcrLow::PRINTED)),
                dest_id,
            })
        }
        EventKind::Irq(IrqEvent::Apic { write, reg, val }) => {
            EventKind::Irq(IrqEvent::Apic { write, reg, val })
        }
        EventKind::Spte(SpteEvent::FastPageFault(p)) => {
            let ret = p.ret.filter(|r| matches!(*r, PageFaultRet::FIXED | PageFaultRet::SPURIOUS));
            EventKind::Spte(SpteEvent::FastPageFault(Box::new(FastPageFault {
                sptep: None,
                ret,
                ..*p
            })))
        }
        other => other,
    }
}

proptest! {
    #[test]
    fn printed_by_the_simulator_read_by_the_reader(kind in device()) {
        let event = Event { ts: 1_000_000_000, cpu: 2, pid: 4242, tgid: None, comm: Some("CPU 0/KVM".into()), kind };
        let line = format!("{}\n", render_line(&event, KernelVersion::V6_14));
        let mut r = TextReader::new("<sim>", line.as_bytes(), ReadOptions::default());
        let got = r.next().unwrap().map_err(|e| TestCaseError::fail(format!("{line}: {e}")))?;
        prop_assert_eq!(got.kind, as_printed(&event.kind), "{}", line);
    }
}
