//! Print fmt text: parsed against a format with every kind of field, then rendered from a
//! record (raw bytes) and from its decoded fields. Nothing may panic, hang or exhaust memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::bin::Endian;
use vmxray_capture::bin::format::EventFormat;

/// A format with scalars of each size and sign, a pointer, fixed, dynamic, relative and
/// flexible arrays; the print fmt is the fuzzer's.
const FIELDS: &str = "name: fuzz\nID: 7\nformat:\n\
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
    \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
    \tfield:u8 a;\toffset:8;\tsize:1;\tsigned:0;\n\
    \tfield:short b;\toffset:10;\tsize:2;\tsigned:1;\n\
    \tfield:int c;\toffset:12;\tsize:4;\tsigned:1;\n\
    \tfield:unsigned long d;\toffset:16;\tsize:8;\tsigned:0;\n\
    \tfield:void * p;\toffset:24;\tsize:8;\tsigned:0;\n\
    \tfield:char comm[16];\toffset:32;\tsize:16;\tsigned:0;\n\
    \tfield:u8 arr[8];\toffset:48;\tsize:8;\tsigned:0;\n\
    \tfield:__data_loc char[] name;\toffset:56;\tsize:4;\tsigned:0;\n\
    \tfield:__data_loc u8[] buf;\toffset:60;\tsize:4;\tsigned:0;\n\
    \tfield:__data_loc unsigned long[] mask;\toffset:64;\tsize:4;\tsigned:0;\n\
    \tfield:__rel_loc u32[] rel;\toffset:68;\tsize:4;\tsigned:0;\n\
    \tfield:char tail[];\toffset:72;\tsize:0;\tsigned:0;\n\n\
    print fmt: ";

fuzz_target!(|data: &[u8]| {
    // The text up to the first NUL is the print fmt; the rest is the record's payload.
    let (text, record) = match data.iter().position(|b| *b == 0) {
        Some(n) => (&data[..n], &data[n + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    if text.contains('\n') {
        return;
    }
    let Ok(format) = EventFormat::parse("fuzz", format!("{FIELDS}{text}\n").as_bytes(), 8) else {
        return;
    };
    let mut payload = record.to_vec();
    payload.resize(payload.len().max(72), 0);
    payload[..2].copy_from_slice(&7u16.to_le_bytes());
    for endian in [Endian::Little, Endian::Big] {
        let rec = vmxray_capture::bin::format::Record::new(&format, &payload, endian);
        let mut out = String::new();
        let a = format.print().render(&format.fields, &rec, endian, 8, None, &mut out);
        let fields = vmxray_events::FieldLookup::to_fields(&rec);
        let mut again = String::new();
        let b = format.print().render(&format.fields, &fields, endian, 8, None, &mut again);
        // Both sources see the same values except where decoding is lossy (strings stop at
        // their NUL, invalid UTF-8 is replaced), so only the outcome kind must agree.
        let _ = (a, b);
    }
});
