//! Format files and header_page, then a record decoded with the parsed format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::bin::Endian;
use vmxray_capture::bin::format::{EventFormat, EventFormats, PageLayout};

fuzz_target!(|data: &[u8]| {
    // The text up to the first NUL is the format; the rest is a record to decode with it.
    let (text, record) = match data.iter().position(|b| *b == 0) {
        Some(n) => (&data[..n], &data[n + 1..]),
        None => (data, &[][..]),
    };
    let _ = PageLayout::parse(text, Some(text), Endian::Little);
    if let Ok(format) = EventFormat::parse("kvm", text, 8) {
        let mut formats = EventFormats::new(Endian::Little, 8);
        let id = format.id;
        formats.add(format);
        let mut payload = record.to_vec();
        if payload.len() >= 2 {
            payload[..2].copy_from_slice(&u16::try_from(id).unwrap_or(0).to_le_bytes());
        }
        let _ = formats.decode(&payload);
        if let Some(rec) = formats.record(&payload) {
            let _ = rec.all_fields();
        }
    }
});
