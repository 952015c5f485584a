//! Ring-buffer pages: the first byte picks byte order and long size, the rest is page bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmxray_capture::bin::Endian;
use vmxray_capture::bin::format::PageLayout;
use vmxray_capture::bin::page::PageStream;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let endian = if mode & 1 == 0 { Endian::Little } else { Endian::Big };
    let mut layout = PageLayout::default_64(endian);
    if mode & 2 != 0 {
        layout.commit_size = 4;
        layout.data_offset = 12;
    }
    if mode & 4 != 0 {
        layout.page_size = 256;
    }
    for item in PageStream::new(&layout, bytes, 0) {
        let _ = item;
    }
});
