//! Salvage of damaged trace.dat files (`--permissive`): a file cut short by a full disk or a
//! crashed copy, or whose section tables are damaged, still gives up every complete page.
//!
//! trace.dat keeps its index of the CPU data (v6: the flyrecord table; v7: the BUFFER option
//! in an OPTIONS section) apart from the data. trace-cmd writes the v7 index *after* the data
//! and vmxray's recorder commits it at each checkpoint at the end of the file, so a cut file
//! has lost it while its pages are still there. Without an index the CPU data is found by its
//! own structure, scanning page-aligned offsets after the metadata:
//!
//! ```text
//!  compressed (v7 zstd/zlib): a CPU's list   u32 count | u32 zsize u32 usize frame | ...
//!    starts page-aligned; a chunk's frame starts with the zstd magic 28 b5 2f fd (zlib: 78);
//!    vmxray's gap chunks (usize 0, a zstd skippable frame) link a CPU's chunks across the
//!    other CPUs' data, so following zsize from a list's head walks that CPU's whole list.
//!  uncompressed (v6, v7 none): pages        | u64 ts | commit | records ... | per page
//!    a page is accepted when its header and every record in it parse; consecutive pages
//!    whose timestamps do not go back are one CPU's run.
//! ```
//!
//! Pages carry no CPU number: streams found without an index are numbered in file order
//! (trace-cmd writes CPUs in order; the recorder starts a CPU's list when its first page
//! arrives), and the salvage report says the numbers are guessed.

use crate::bin::format::PageLayout;
use crate::bin::page::{PageHeader, PageRecords};
use crate::bin::{Endian, Source, to_usize};
use crate::read::tracedat::{BufferInfo, Compression, CpuData};

/// The zstd frame magic, little-endian on disk.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// zstd skippable frames: 0x184D2A50..=0x184D2A5F.
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;
/// Largest chunk count or chunk size believed while scanning.
const MAX_CHUNKS: u32 = 1 << 24;
const MAX_CHUNK_BYTES: u32 = 1 << 30;
/// Bytes read at a time while scanning uncompressed pages.
const SCAN_WINDOW: u64 = 4 << 20;

/// What salvage found: how the file was damaged, and how much of its CPU data was recovered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SalvageSummary {
    /// The CPU index was missing or unusable, so the data was found by scanning.
    pub scanned: bool,
    /// CPU numbers are guessed (file order), because no index said them.
    pub cpus_guessed: bool,
    /// CPU data streams recovered (one per CPU).
    pub streams: u32,
    /// Complete pages recovered (for compressed data: the uncompressed size of the complete
    /// chunks / the page size).
    pub pages: u64,
    /// Bytes of complete CPU data recovered, as stored in the file.
    pub bytes: u64,
    /// Bytes the index (or a chunk header) promised that the file does not hold, or that
    /// trail a stream as an incomplete page or chunk.
    pub lost_bytes: u64,
    /// Pages in those bytes, as far as known (a chunk header that survived says its size; a
    /// missing one does not): a lower bound.
    pub lost_pages: u64,
}

/// One CPU stream found by scanning.
struct Found {
    data: CpuData,
    pages: u64,
}

/// Scans `src` from `from` for CPU data and returns a buffer describing it, with the figures.
pub(crate) fn scan_buffer(
    src: &Source,
    from: u64,
    layout: &PageLayout,
    page_size: u32,
    compression: Compression,
    clock: crate::read::Clock,
) -> (BufferInfo, SalvageSummary) {
    let page = u64::from(page_size.max(64));
    let (found, lost_bytes, lost_pages) = match compression {
        Compression::None => scan_pages(src, from, layout, page),
        Compression::Zstd | Compression::Zlib => scan_chunk_lists(src, from, page, compression),
    };
    let mut summary = SalvageSummary {
        scanned: true,
        cpus_guessed: true,
        lost_bytes,
        lost_pages,
        ..SalvageSummary::default()
    };
    let mut cpus = Vec::with_capacity(found.len());
    for (n, f) in found.into_iter().enumerate() {
        summary.streams += 1;
        summary.pages += f.pages;
        summary.bytes += f.data.size;
        cpus.push(CpuData { cpu: u32::try_from(n).unwrap_or(u32::MAX), ..f.data });
    }
    let buffer = BufferInfo {
        name: String::new(),
        clock,
        page_size,
        cpus,
        compressed: compression != Compression::None,
    };
    (buffer, summary)
}

/// A page passes when its header and all its records parse and it holds data.
fn page_is_valid(layout: &PageLayout, page: &[u8]) -> Option<u64> {
    let header = PageHeader::parse(layout, page).ok()?;
    if header.len == 0 || header.timestamp == 0 {
        return None;
    }
    let records = PageRecords::with_header(layout, page, &header);
    let mut events = 0u32;
    for item in records {
        item.ok()?;
        events += 1;
    }
    (events > 0).then_some(header.timestamp)
}

/// Uncompressed pages at page-aligned offsets, grouped into runs whose page timestamps do not
/// go back. Returns the runs and the bytes (pages) of a trailing partial page.
fn scan_pages(src: &Source, from: u64, layout: &PageLayout, page: u64) -> (Vec<Found>, u64, u64) {
    let mut found: Vec<Found> = Vec::new();
    let mut run: Option<(u64, u64, u64)> = None; // (start, pages, last ts)
    let close = |run: &mut Option<(u64, u64, u64)>, found: &mut Vec<Found>| {
        if let Some((start, pages, _)) = run.take() {
            found
                .push(Found { data: CpuData { cpu: 0, offset: start, size: pages * page }, pages });
        }
    };
    let len = src.len();
    let mut off = from.div_ceil(page) * page;
    let page_len = to_usize(page).unwrap_or(4096);
    while off.saturating_add(page) <= len {
        let window = SCAN_WINDOW.min(len - off) / page * page;
        let Ok(bytes) = src.read_at(off, to_usize(window).unwrap_or(0)) else { break };
        if bytes.len() < page_len {
            break;
        }
        for chunk in bytes.chunks_exact(page_len) {
            match page_is_valid(layout, chunk) {
                Some(ts) => match &mut run {
                    Some((_, pages, last)) if ts >= *last => {
                        *pages += 1;
                        *last = ts;
                    }
                    _ => {
                        close(&mut run, &mut found);
                        run = Some((off, 1, ts));
                    }
                },
                None => close(&mut run, &mut found),
            }
            off += page;
        }
    }
    close(&mut run, &mut found);
    // A partial page at the end whose header still parses was a page cut short.
    let tail = len.saturating_sub(off);
    let tail_bytes = src.read_at(off, to_usize(tail).unwrap_or(0)).unwrap_or_default();
    let partial = tail > 0 && PageHeader::parse(layout, &tail_bytes).is_ok_and(|h| h.len > 0);
    if partial { (found, tail, 1) } else { (found, 0, 0) }
}

/// The kind of a chunk's payload, from its first bytes.
fn chunk_payload_ok(first: &[u8], usize_: u32, compression: Compression, e: Endian) -> bool {
    let Some(magic) = e.u32(first, 0) else { return false };
    let skippable = magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE;
    match compression {
        Compression::Zstd => magic == ZSTD_MAGIC || skippable,
        // zlib: CMF 0x78 (deflate, 32 KiB window); vmxray's gaps are zstd skippable frames
        // in zstd files only, so an empty chunk is the one other form.
        Compression::Zlib => first.first() == Some(&0x78) || (skippable && usize_ == 0),
        Compression::None => false,
    }
}

/// Compressed chunk lists starting at page-aligned offsets. Returns the lists (their extent
/// covers their complete chunks), the bytes of trailing incomplete chunks, and the pages their
/// surviving headers announced.
fn scan_chunk_lists(
    src: &Source,
    from: u64,
    page: u64,
    compression: Compression,
) -> (Vec<Found>, u64, u64) {
    // trace.dat numbers are little-endian in every file vmxray writes and in trace-cmd's on
    // x86; a big-endian file's lists simply are not found.
    let e = Endian::Little;
    let len = src.len();
    let read = |at: u64, n: usize| src.read_at(at, n).unwrap_or_default();
    // Byte ranges of chunks already claimed by a list: a head is never searched inside them.
    let mut claimed: Vec<(u64, u64)> = Vec::new();
    let mut found = Vec::new();
    let (mut lost_bytes, mut lost_pages) = (0u64, 0u64);
    let mut off = from.div_ceil(page) * page;
    while off.saturating_add(12) <= len {
        if claimed.iter().any(|&(a, b)| (a..b).contains(&off)) {
            off += page;
            continue;
        }
        let head = read(off, 16);
        let (Some(count), Some(zsize), Some(usize_)) =
            (e.u32(&head, 0), e.u32(&head, 4), e.u32(&head, 8))
        else {
            break;
        };
        let plausible = (1..=MAX_CHUNKS).contains(&count)
            && zsize <= MAX_CHUNK_BYTES
            && usize_ <= MAX_CHUNK_BYTES
            && usize_ > 0
            && chunk_payload_ok(head.get(12..).unwrap_or(&[]), usize_, compression, e);
        if !plausible {
            off += page;
            continue;
        }
        let list = walk_list(src, off, count, page, compression);
        lost_bytes += list.lost_bytes;
        lost_pages += list.lost_pages;
        let chunks = list.chunks;
        if chunks.is_empty() {
            off += page;
            continue;
        }
        claimed.extend(chunks.iter().copied());
        found.push(Found {
            data: CpuData { cpu: 0, offset: off, size: list.end - off - 4 },
            pages: list.uncompressed / page,
        });
        off += page;
    }
    (found, lost_bytes, lost_pages)
}

/// A chunk list followed from its head.
pub(crate) struct ListWalk {
    /// End of the last complete chunk.
    pub end: u64,
    /// The complete chunks with data (header offset, end).
    pub chunks: Vec<(u64, u64)>,
    /// Their uncompressed bytes.
    pub uncompressed: u64,
    /// Bytes of an incomplete chunk at the end of the file.
    pub lost_bytes: u64,
    /// Pages its surviving header announced.
    pub lost_pages: u64,
}

/// Follows the chunk list at `head` (its u32 count already read as `count`) while its chunks
/// are complete and look like chunks.
pub(crate) fn walk_list(
    src: &Source,
    head: u64,
    count: u32,
    page: u64,
    compression: Compression,
) -> ListWalk {
    let e = Endian::Little;
    let len = src.len();
    let mut walk = ListWalk {
        end: head + 4,
        chunks: Vec::new(),
        uncompressed: 0,
        lost_bytes: 0,
        lost_pages: 0,
    };
    let mut pos = head + 4;
    for _ in 0..count {
        let h = src.read_at(pos, 12).unwrap_or_default();
        let (Some(zsize), Some(usize_)) = (e.u32(&h, 0), e.u32(&h, 4)) else {
            // The header itself is cut: what follows is lost, its size unknown.
            walk.lost_bytes += len.saturating_sub(pos);
            break;
        };
        let end = pos.saturating_add(8).saturating_add(u64::from(zsize));
        if end > len {
            walk.lost_bytes += len - pos;
            walk.lost_pages += u64::from(usize_).div_ceil(page);
            break;
        }
        if !chunk_payload_ok(h.get(8..).unwrap_or(&[]), usize_, compression, e) {
            break;
        }
        if usize_ > 0 {
            walk.chunks.push((pos, end));
        }
        walk.uncompressed += u64::from(usize_);
        pos = end;
        walk.end = end;
    }
    walk
}

/// Checks that an index's CPU entry leads to CPU data (a chunk list or a valid page) in the
/// file; a damaged table's entries do not.
pub(crate) fn entry_is_plausible(
    src: &Source,
    d: &CpuData,
    layout: &PageLayout,
    page_size: u32,
    compressed: bool,
    compression: Compression,
) -> bool {
    if d.offset >= src.len() {
        return false;
    }
    if compressed {
        let e = Endian::Little;
        let head = src.read_at(d.offset, 16).unwrap_or_default();
        match (e.u32(&head, 0), e.u32(&head, 8)) {
            (Some(0), _) => true,
            (Some(count), Some(usize_)) if count <= MAX_CHUNKS => {
                chunk_payload_ok(head.get(12..).unwrap_or(&[]), usize_, compression, e)
            }
            // The head is cut: nothing of it to read, but not a damaged entry.
            _ => head.len() < 16,
        }
    } else {
        let n = to_usize(u64::from(page_size)).unwrap_or(4096);
        let bytes = src.read_at(d.offset, n).unwrap_or_default();
        // A page cut by the end of the file cannot be checked whole: its header must parse.
        if bytes.len() < n {
            return PageHeader::parse(layout, &bytes).is_ok();
        }
        page_is_valid(layout, &bytes).is_some()
            || PageHeader::parse(layout, &bytes).is_ok_and(|h| h.len == 0)
    }
}

/// Bytes an index promises beyond the end of the file, per the CPU entries (`size` excludes a
/// compressed list's u32 count).
pub(crate) fn promised_beyond_end(src_len: u64, buffer: &BufferInfo) -> (u64, u64) {
    let page = u64::from(buffer.page_size.max(1));
    let extra = if buffer.compressed { 4 } else { 0 };
    let bytes: u64 = buffer
        .cpus
        .iter()
        .map(|d| {
            d.offset
                .saturating_add(d.size)
                .saturating_add(extra)
                .saturating_sub(src_len.max(d.offset))
        })
        .sum();
    let pages = if buffer.compressed { 0 } else { bytes / page };
    (bytes, pages)
}
