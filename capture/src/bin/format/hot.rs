//! The hottest tracepoints read straight from their fields' places.
//!
//! `kvm_exit` and `kvm_entry` are about half of a KVM trace's events; the nested exits and
//! entries and the MMU's page walks most of the rest. [`KnownEvent::decode`] asks a
//! [`Record`] for an event's fields one at a time, each lookup checking that it is the one the
//! format's plan expects; here the fields are resolved to their places once per format, and a
//! record's are read with no check but the payload's length.
//!
//! The result is the one [`KnownEvent::decode`] gives for the same record, by construction:
//! each field reads as the plan's lookup reads it ([`ScalarAt::read`]: a field the format lacks,
//! or one past the payload's end, is `None`), and the event is built by the same conversions.
//! What the plan could decide otherwise makes [`HotLayout::of`] give no layout (a field the
//! decoder reads that is not a 1-, 2-, 4- or 8-byte scalar), or [`HotLayout::decode_into`]
//! decline the record (a required field unreadable, a 32-bit field wider than 32 bits): the
//! record then takes the generic path, which reports it as it always did.
//!
//! [`Record`]: super::Record

use vmxray_events::codes::{ExitCode, IntrInfo, Isa};
use vmxray_events::event::{Entry, EventKind, ExitFields, ExitInfo, KnownEvent, NestedVmenter};

use super::{EventFormat, ScalarAt};
use crate::bin::Endian;

/// The hot tracepoints, each with the fields its decoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hot {
    /// `kvm_exit`; `kvm_nested_vmexit` in its layout (5.10+) when `nested`.
    Exit { nested: bool },
    /// `kvm_entry`.
    Entry,
    /// `kvm_nested_vmexit_inject`.
    Inject,
    /// `kvm_nested_vmenter`; `kvm_nested_vmrun` (SVM, before 6.1) when `vmrun`.
    Vmenter { vmrun: bool },
    /// `kvm_mmu_paging_element`.
    PagingElement,
    /// `kvm_mmu_pagetable_walk`.
    PagetableWalk,
}

/// The most fields a hot tracepoint's decoder reads.
const MAX_FIELDS: usize = 10;

impl Hot {
    fn of(known: KnownEvent) -> Option<Self> {
        Some(match known {
            KnownEvent::KvmExit => Self::Exit { nested: false },
            KnownEvent::KvmNestedVmexit => Self::Exit { nested: true },
            KnownEvent::KvmEntry => Self::Entry,
            KnownEvent::KvmNestedVmexitInject => Self::Inject,
            KnownEvent::KvmNestedVmenter => Self::Vmenter { vmrun: false },
            KnownEvent::KvmNestedVmrun => Self::Vmenter { vmrun: true },
            KnownEvent::KvmMmuPagingElement => Self::PagingElement,
            KnownEvent::KvmMmuPagetableWalk => Self::PagetableWalk,
            _ => return None,
        })
    }

    /// The fields the decoder reads, the one it cannot do without first.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Exit { .. } => &[
                "exit_reason",
                "isa",
                "guest_rip",
                "info1",
                "info2",
                "intr_info",
                "error_code",
                "vcpu_id",
                "requests",
            ],
            Self::Entry => &["vcpu_id", "rip", "immediate_exit", "intr_info", "error_code"],
            Self::Inject => &[
                "exit_code",
                "isa",
                "exit_info1",
                "exit_info2",
                "exit_int_info",
                "exit_int_info_err",
            ],
            Self::Vmenter { .. } => &[
                "rip",
                "vmcb",
                "vmcs",
                "nested_rip",
                "int_ctl",
                "event_inj",
                "tdp_enabled",
                "npt",
                "guest_pgd",
                "isa",
            ],
            Self::PagingElement => &["pte", "level"],
            Self::PagetableWalk => &["addr", "pferr"],
        }
    }
}

/// Where a hot tracepoint's fields are in its records, by [`Hot::fields`] (`None`: the format
/// lacks the field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HotLayout {
    hot: Hot,
    at: [Option<ScalarAt>; MAX_FIELDS],
}

impl HotLayout {
    /// The layout of `format`, when it is a hot tracepoint whose fields are all scalars the
    /// plan reads directly (or absent), with the first of them present. (Without
    /// `exit_reason`, `kvm_nested_vmexit` is in its ≤5.9 layout, which the generic decoder
    /// reads.)
    pub(super) fn of(format: &EventFormat) -> Option<Self> {
        let hot = Hot::of(format.known?)?;
        let mut at = [None; MAX_FIELDS];
        for (slot, name) in at.iter_mut().zip(hot.fields()) {
            if let Some(i) = format.field_index(name) {
                *slot = Some(ScalarAt::of(format.fields.get(i)?)?);
            }
        }
        at[0]?;
        Some(Self { hot, at })
    }

    /// Writes the record's event into `out`, as the generic decoder builds it; false (and `out`
    /// left as it was) when that decoder is to decide, and report, the record.
    ///
    /// The event is written in place, as [`KnownEvent::decode_into`] does: returned by value,
    /// the ~64-byte kind would be stored and read back at once.
    #[inline]
    pub(super) fn decode_into(&self, payload: &[u8], endian: Endian, out: &mut EventKind) -> bool {
        let at = &self.at;
        let read = |i: usize| at[i].and_then(|a| a.read(payload, endian));
        let read32 = |i: usize| read(i).and_then(|v| u32::try_from(v).ok());
        let flag = |i: usize| read(i).map(|v| v != 0);
        match self.hot {
            Hot::Exit { nested } => {
                let Some(reason) = read(0) else { return false };
                let isa = read(1).and_then(Isa::from_raw);
                let info = ExitInfo::from(ExitFields {
                    reason: ExitCode::from_raw(reason, isa),
                    isa,
                    guest_rip: read(2),
                    info1: read(3),
                    info2: read(4),
                    intr_info: read32(5).map(IntrInfo),
                    error_code: read32(6),
                    vcpu_id: read32(7),
                    requests: read(8),
                });
                put(
                    out,
                    if nested {
                        EventKind::KvmNestedVmexit(info)
                    } else {
                        EventKind::KvmExit(info)
                    },
                );
            }
            Hot::Entry => {
                let Some(vcpu_id) = read32(0) else { return false };
                put(
                    out,
                    EventKind::KvmEntry(Entry {
                        vcpu_id,
                        rip: read(1),
                        immediate_exit: flag(2),
                        intr_info: read32(3).map(IntrInfo),
                        error_code: read32(4),
                    }),
                );
            }
            Hot::Inject => {
                let Some(code) = read(0) else { return false };
                let isa = read(1).and_then(Isa::from_raw);
                let inject = EventKind::KvmNestedVmexitInject(ExitInfo::from(ExitFields {
                    reason: ExitCode::from_raw(code, isa),
                    isa,
                    guest_rip: None,
                    info1: read(2),
                    info2: read(3),
                    intr_info: read32(4).map(IntrInfo),
                    error_code: read32(5),
                    vcpu_id: None,
                    requests: None,
                }));
                put(out, inject);
            }
            Hot::Vmenter { vmrun } => {
                let (Some(rip), Some(vmcs), Some(nested_rip)) =
                    (read(0), read(1).or_else(|| read(2)), read(3))
                else {
                    return false;
                };
                let vmenter = EventKind::KvmNestedVmenter(NestedVmenter {
                    rip,
                    vmcs,
                    nested_rip,
                    int_ctl: read32(4).unwrap_or(0),
                    event_inj: IntrInfo(read32(5).unwrap_or(0)),
                    tdp_enabled: flag(6).or_else(|| flag(7)),
                    guest_pgd: read(8),
                    isa: read(9).and_then(Isa::from_raw).or(vmrun.then_some(Isa::Svm)),
                });
                put(out, vmenter);
            }
            Hot::PagingElement => {
                let (Some(pte), Some(level)) = (read(0), read32(1)) else { return false };
                put(out, EventKind::KvmMmuPagingElement { pte, level });
            }
            Hot::PagetableWalk => {
                let (Some(addr), Some(pferr)) = (read(0), read32(1)) else { return false };
                put(out, EventKind::KvmMmuPagetableWalk { addr, pferr });
            }
        }
        true
    }
}

/// Writes `kind` over the placeholder the decoder put in the event's slot. The placeholder owns
/// nothing, so it is not dropped: an assignment called the kind's drop glue for every record.
#[inline(always)]
fn put(out: &mut EventKind, kind: EventKind) {
    debug_assert!(matches!(out, EventKind::Lost { .. }), "a placeholder is overwritten");
    std::mem::forget(std::mem::replace(out, kind));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bin::format::Record;
    use proptest::prelude::*;

    /// The hot tracepoints by name.
    const HOT: [(&str, &str); 8] = [
        ("kvm", "kvm_exit"),
        ("kvm", "kvm_nested_vmexit"),
        ("kvm", "kvm_entry"),
        ("kvm", "kvm_nested_vmexit_inject"),
        ("kvm", "kvm_nested_vmenter"),
        ("kvm", "kvm_nested_vmrun"),
        ("kvmmmu", "kvm_mmu_paging_element"),
        ("kvmmmu", "kvm_mmu_pagetable_walk"),
    ];

    /// A format of `name` with `fields` (name, size, signed; `None` size: an 8-byte array),
    /// laid out one after the other from offset 8, after the common fields.
    fn format_text(name: &str, fields: &[(&str, Option<u32>, bool)]) -> String {
        let mut text = format!(
            "name: {name}\nID: 7\nformat:\n\
             \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
             \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
             \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
             \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n"
        );
        let mut offset = 8;
        for (field, size, signed) in fields {
            let (decl, size) = match size {
                Some(size) => (format!("u{} {field}", size * 8), *size),
                None => (format!("u8 {field}[8]"), 8),
            };
            let signed = u8::from(*signed);
            text.push_str(&format!(
                "\tfield:{decl};\toffset:{offset};\tsize:{size};\tsigned:{signed};\n"
            ));
            offset += size;
        }
        text.push_str("\nprint fmt: \"x\"\n");
        text
    }

    /// Decodes `payload` both ways: the hot path's event (None: it declined, leaving the
    /// placeholder untouched) and the generic decoder's.
    fn both(
        f: &EventFormat,
        payload: &[u8],
        endian: Endian,
    ) -> (Option<EventKind>, Result<EventKind, vmxray_events::event::DecodeError>) {
        let placeholder = EventKind::Lost { count: Some(0xfeed) };
        let mut hot = placeholder.clone();
        let took = f.decode_hot(payload, endian, &mut hot);
        if !took {
            assert_eq!(hot, placeholder, "a declined record's slot is left as it was");
        }
        let generic = f.known.unwrap().decode(&Record::new(f, payload, endian));
        (took.then_some(hot), generic)
    }

    /// One of a decoder's fields in a generated format: left out, a scalar of 1, 2, 4 or 8
    /// bytes (signed or not), or now and then an array.
    fn field() -> impl Strategy<Value = Option<(Option<u32>, bool)>> {
        prop_oneof![
            3 => Just(None),
            12 => (prop_oneof![Just(1u32), Just(2), Just(4), Just(8)], any::<bool>())
                .prop_map(|(size, signed)| Some((Some(size), signed))),
            1 => Just(Some((None, false))),
        ]
    }

    proptest! {
        // Eight tracepoints, each field's presence, size and sign, the payload's length and
        // bytes: many cases, for each combination that matters to come up.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn a_hot_record_decodes_as_the_generic_decoder_decodes_it(
            which in 0..HOT.len(),
            picked in proptest::collection::vec(field(), MAX_FIELDS),
            // Bytes of 0 and 1 often, so that fields read 0 and 1 (the flags) as well as
            // large and negative values.
            bytes in proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1u8), Just(0xff), any::<u8>()],
                0..100,
            ),
            big in any::<bool>(),
        ) {
            let (system, name) = HOT[which];
            let known = KnownEvent::lookup(system, name).unwrap();
            let names = Hot::of(known).unwrap().fields();
            let fields: Vec<(&str, Option<u32>, bool)> = names
                .iter()
                .zip(&picked)
                .filter_map(|(n, p)| p.map(|(size, signed)| (*n, size, signed)))
                .collect();
            let f = EventFormat::parse(system, format_text(name, &fields).as_bytes(), 8).unwrap();
            let scalars_only = fields.iter().all(|(_, size, _)| size.is_some());
            prop_assert_eq!(f.hot.is_some(), scalars_only && picked[0].is_some());
            let endian = if big { Endian::Big } else { Endian::Little };
            let (hot, generic) = both(&f, &bytes, endian);
            if let Some(hot) = hot {
                prop_assert_eq!(Ok(hot), generic);
            }
        }
    }

    #[test]
    fn every_committed_format_of_a_hot_tracepoint_has_a_layout() {
        // The real formats (6.1's tracefs): each is read the fast way, and records of several
        // fillings decode as the generic decoder decodes them.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/real/raw/tracefs/events");
        let mut seen = 0;
        for (system, name) in HOT {
            let Ok(text) = std::fs::read(format!("{root}/{system}/{name}/format")) else {
                continue;
            };
            seen += 1;
            let f = EventFormat::parse(system, &text, 8).unwrap();
            assert!(f.hot.is_some(), "{name}");
            let len = f.fields.iter().map(|x| x.offset + x.size).max().unwrap() as usize;
            for fill in [0u8, 1, 0x5a, 0xff] {
                let mut byte = fill;
                let payload: Vec<u8> = (0..len)
                    .map(|_| {
                        byte = byte.wrapping_add(29);
                        byte
                    })
                    .collect();
                let (hot, generic) = both(&f, &payload, Endian::Little);
                assert_eq!(Ok(hot.expect(name)), generic, "{name}");
            }
        }
        // 6.1 has every one but kvm_nested_vmrun (gone in 6.1).
        assert_eq!(seen, HOT.len() - 1);
    }
}
