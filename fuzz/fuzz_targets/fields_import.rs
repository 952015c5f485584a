//! Any bytes, read as explicit VMCS field records (`vmxray_capture::vmcs::import`): never
//! panics; permissive parsing never fails and keeps every line strict parsing accepts; every
//! accepted record fits its field and survives the merge into a stream in time order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::vmcs::import;
use vmxray_capture::{Event, EventKind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let permissive = import::parse_fields(&text, true).expect("permissive never fails");
    if let Ok(strict) = import::parse_fields(&text, false) {
        assert_eq!(strict.records, permissive.records);
        assert_eq!(permissive.skipped, 0);
    }
    for r in &permissive.records {
        let bits = r.field.value_bits();
        assert!(bits >= 64 || r.value >> bits == 0, "value fits the field");
        assert_eq!(import::from_print_event(&r.to_event()).as_ref(), Some(r));
    }
    let events: Vec<Result<Event, ()>> = [0, u64::MAX / 2, u64::MAX]
        .into_iter()
        .map(|ts| Ok(Event { ts, cpu: 0, pid: 1, comm: None, kind: EventKind::Lost { count: None } }))
        .collect();
    let merged: Vec<Event> =
        import::merge(events, permissive.records.clone()).map(Result::unwrap).collect();
    assert_eq!(merged.len(), 3 + permissive.records.len());
    assert!(merged.windows(2).all(|w| w[0].ts <= w[1].ts));
});
