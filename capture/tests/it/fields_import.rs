//! Properties of explicit VMCS field records: merged streams stay time-ordered and lose
//! nothing; parsing never panics and round-trips what it prints.

use proptest::prelude::*;
use vmxray_capture::read::fields_file;
use vmxray_events::vmcs::record::{self, FieldRecord};
use vmxray_events::vmcs::{Access, FieldEncoding, VmcsRef};
use vmxray_events::{Event, EventKind};

fn record(ts: u64, value: u64, enc_index: usize) -> FieldRecord {
    let (field, _) = FieldEncoding::ALL[enc_index % FieldEncoding::ALL.len()];
    let bits = field.value_bits();
    let value = if bits >= 64 { value } else { value & ((1 << bits) - 1) };
    FieldRecord {
        ts,
        cpu: (value % 4) as u32,
        vcpu: (value % 3) as u32,
        vmcs: VmcsRef::Vmcs12 { gpa: 0x7000 },
        access: if value % 2 == 0 { Access::Read } else { Access::Write },
        field,
        value,
        line: 0,
    }
}

proptest! {
    #[test]
    fn merged_streams_are_time_ordered_and_complete(
        mut event_ts in proptest::collection::vec(0u64..1_000, 0..60),
        recs in proptest::collection::vec((0u64..1_000, any::<u64>(), any::<usize>()), 0..60),
    ) {
        event_ts.sort_unstable();
        let events: Vec<Result<Event, ()>> = event_ts
            .iter()
            .map(|&ts| Ok(Event { ts, cpu: 0, pid: 1, tgid: None, comm: None, kind: EventKind::Lost { count: None } }))
            .collect();
        // Records in file order, unsorted: parse_fields sorts them; emulate it through text.
        let text: String = recs
            .iter()
            .map(|&(ts, v, e)| {
                let r = record(ts, v, e);
                format!("{} {} {} {} {} {} {:#x}\n", r.ts, r.cpu, r.vcpu, r.vmcs, r.access, r.field, r.value)
            })
            .collect();
        let file = fields_file::parse_fields(&text, false).unwrap();
        prop_assert_eq!(file.records.len(), recs.len());
        let merged: Vec<Event> = fields_file::merge(events, file.records.clone()).map(Result::unwrap).collect();
        prop_assert_eq!(merged.len(), event_ts.len() + recs.len());
        prop_assert!(merged.windows(2).all(|w| w[0].ts <= w[1].ts), "not time-ordered");
        // Every record comes back, in file order among equal timestamps.
        let back: Vec<FieldRecord> = merged.iter().filter_map(|e| record::of_event(e).cloned()).collect();
        prop_assert_eq!(back, file.records);
        // A record goes after the events of its own timestamp.
        for (i, e) in merged.iter().enumerate() {
            if record::of_event(e).is_some() {
                prop_assert!(merged[i + 1..].iter().all(|n| n.ts > e.ts || record::of_event(n).is_some()));
            }
        }
    }

    #[test]
    fn any_line_parses_or_errors_without_panicking(line in "\\PC{0,120}") {
        let _ = record::parse_line(&line);
    }

    #[test]
    fn printed_records_parse_back(ts in any::<u64>(), v in any::<u64>(), e in any::<usize>()) {
        let r = record(ts, v, e);
        let text = format!("{} {} {} {} {} {:#x} {}", r.ts, r.cpu, r.vcpu, r.vmcs, r.access, r.field.0, r.value);
        prop_assert_eq!(record::parse_line(&text).unwrap().unwrap(), r);
    }
}
