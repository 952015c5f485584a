//! Any bytes, read as explicit VMCS field records (`vmxray_events::vmcs::import`): never
//! panics; permissive parsing never fails and keeps every line strict parsing accepts; every
//! accepted record fits its field and survives the merge into a stream in time order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::read::fields_file;
use vmxray_events::vmcs::record;
use vmxray_events::{Event, EventKind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let permissive = fields_file::parse_fields(&text, true).expect("permissive never fails");
    if let Ok(strict) = fields_file::parse_fields(&text, false) {
        assert_eq!(strict.records, permissive.records);
        assert_eq!(permissive.skipped, 0);
    }
    for r in &permissive.records {
        let bits = r.field.value_bits();
        assert!(bits >= 64 || r.value >> bits == 0, "value fits the field");
        assert_eq!(record::of_event(&r.to_event()), Some(r));
    }
    let events: Vec<Result<Event, ()>> = [0, u64::MAX / 2, u64::MAX]
        .into_iter()
        .map(|ts| Ok(Event { ts, cpu: 0, pid: 1, tgid: None, comm: None, kind: EventKind::Lost { count: None } }))
        .collect();
    let merged: Vec<Event> =
        fields_file::merge(events, permissive.records.clone()).map(Result::unwrap).collect();
    assert_eq!(merged.len(), 3 + permissive.records.len());
    assert!(merged.windows(2).all(|w| w[0].ts <= w[1].ts));
});
