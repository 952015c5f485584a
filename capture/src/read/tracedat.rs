//! trace-cmd's `trace.dat`, versions 6 and 7 (uncompressed, zstd, zlib).
//!
//! [`TraceDat::open`] reads the metadata (header_page/header_event, every format, cmdlines,
//! options, the buffers and their per-CPU data locations) without reading kallsyms or the CPU
//! data; [`TraceDat::events`] then streams one buffer (the top instance or a `-B` instance) as
//! events merged by timestamp across CPUs (see `merge.rs`), each CPU decoded chunk by chunk on
//! the rayon pool. Memory is bounded by chunks (v7: ≤ 10 pages; v6/none: 16 pages per batch).
//!
//! Layout facts (Documentation/trace-cmd/trace-cmd.dat.v{6,7}.5.txt, lib/trace-cmd/trace-output.c):
//! v6 is sequential (header_page, header_event, ftrace formats, event formats, kallsyms u32,
//! printk u32, cmdlines u64, cpu count, options, `flyrecord`, per-CPU {offset,size}, clock); v7
//! is a compression id then sections reached through OPTIONS sections chained by DONE. In v7
//! compressed data, a CPU's recorded size excludes the leading u32 chunk count, and zstd frames
//! carry no content size: the chunk header gives it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bin::format::{EventFormats, FormatError, PageLayout};
use crate::bin::{Cursor, Endian, Source, to_usize};
use crate::read::CountOnly;
use crate::read::decode::{DecodeCtx, StreamBase, parse_cmdlines};
use crate::read::merge::{Batch, Job, Jobs, Merger, Taken};
use crate::read::salvage::{self, SalvageSummary};
use crate::read::{
    Clock, EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, ReadStats,
    TraceMeta, input_name,
};
use vmxray_events::event::{Comm, Event};

mod chunk_walk;
use chunk_walk::ChunkWalk;

/// The trace.dat magic: `17 08 44 "tracing"`.
pub const MAGIC: &[u8] = b"\x17\x08\x44tracing";
/// Uncompressed pages per batch for v6 / v7-none data.
const PAGES_PER_BATCH: u64 = 16;
/// Largest uncompressed chunk or section accepted (trace-cmd writes ≤ 10 pages per chunk).
const MAX_UNCOMPRESSED: u64 = 1 << 30;
/// Above this, a block is decompressed by streaming (memory follows the real output, not the
/// size its header claims).
const PREALLOCATE_MAX: u64 = 16 << 20;

/// A trace.dat file is malformed or unsupported.
#[derive(Debug, thiserror::Error)]
pub enum TraceDatError {
    /// The magic is missing.
    #[error("Not a trace.dat file (bad magic)")]
    BadMagic,
    /// A version this reader does not know.
    #[error("Unsupported trace.dat version {0:?}")]
    UnsupportedVersion(String),
    /// The file ends inside a structure.
    #[error("Truncated: expected {expected}, the file ends")]
    Truncated {
        /// What should have followed.
        expected: &'static str,
    },
    /// An expected tag (`header_page`, `flyrecord`, ...) is missing.
    #[error("Expected {expected:?}")]
    MissingTag {
        /// The tag.
        expected: &'static str,
    },
    /// A compression algorithm this reader does not know.
    #[error("Unsupported compression {0:?}")]
    UnknownCompression(String),
    /// A compressed block does not decompress.
    #[error("Cannot decompress a {algorithm} block")]
    Decompress {
        /// zstd or zlib.
        algorithm: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A block decompressed to another size than its header says.
    #[error("Block decompressed to {got} bytes, its header says {expected}")]
    SizeMismatch {
        /// The header's size.
        expected: u64,
        /// The actual size.
        got: u64,
    },
    /// A size or count is impossible.
    #[error("Impossible {what} {value}")]
    Impossible {
        /// What.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A v7 section pointer leads to another kind of section.
    #[error("Section at this offset has id {found}, expected {expected}")]
    WrongSection {
        /// Expected id.
        expected: u16,
        /// Found id.
        found: u16,
    },
    /// A required v7 section is missing.
    #[error("No {0} section")]
    MissingSection(&'static str),
    /// The OPTIONS chain loops.
    #[error("OPTIONS sections form a loop")]
    OptionsLoop,
    /// header_page or a format file is malformed.
    #[error("Bad {what}")]
    Format {
        /// Which file.
        what: String,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// The file could not be read.
    #[error("Cannot read the file")]
    Io(#[source] io::Error),
    /// No buffer with this index.
    #[error("No buffer {0}")]
    NoBuffer(usize),
    /// The file is damaged (cut short, or its index unusable) and was salvaged
    /// (`--permissive`): what was recovered and what is lost. The source is the damage found.
    #[error("{}", salvage_message(summary))]
    Salvaged {
        /// The figures.
        summary: SalvageSummary,
        /// What was wrong with the file, when reading it hit an error.
        #[source]
        cause: Option<Arc<TraceDatError>>,
    },
}

fn salvage_message(s: &SalvageSummary) -> String {
    let (how, lost) = if s.scanned {
        (
            "its CPU index is lost or damaged, the data was found by scanning",
            "; what the file held past its end is unknown",
        )
    } else {
        ("its CPU data is cut short", "")
    };
    let guessed = if s.cpus_guessed { " (CPU numbers guessed from file order)" } else { "" };
    format!(
        "Damaged file ({how}): salvaged {} complete pages ({} bytes of CPU data) in {} CPU \
         streams{guessed}; lost {} bytes of incomplete data (at least {} pages){lost}",
        s.pages, s.bytes, s.streams, s.lost_bytes, s.lost_pages
    )
}

/// How the file compresses sections and CPU data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed (v6, v7 `none`).
    None,
    /// zstd (trace-cmd's default).
    Zstd,
    /// zlib (`compress2`).
    Zlib,
}

impl Compression {
    /// The name trace.dat uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Zlib => "zlib",
        }
    }

    /// Decompresses `data` into exactly `usize` bytes, reusing `out`'s allocation.
    fn decompress_into(
        self,
        data: &[u8],
        usize: u64,
        out: &mut Vec<u8>,
        zstd_ctx: Option<&mut zstd::bulk::Decompressor<'static>>,
    ) -> Result<(), TraceDatError> {
        if usize > MAX_UNCOMPRESSED {
            return Err(TraceDatError::Impossible { what: "uncompressed size", value: usize });
        }
        let n = to_usize(usize)
            .ok_or(TraceDatError::Impossible { what: "uncompressed size", value: usize })?;
        out.clear();
        match self {
            Self::None => out.extend_from_slice(data),
            Self::Zstd if usize > PREALLOCATE_MAX => {
                let dec = zstd::stream::read::Decoder::new(data)
                    .map_err(|source| TraceDatError::Decompress { algorithm: "zstd", source })?;
                dec.take(usize.saturating_add(1))
                    .read_to_end(out)
                    .map_err(|source| TraceDatError::Decompress { algorithm: "zstd", source })?;
            }
            Self::Zstd => {
                // Into the spare capacity (the `Vec` as zstd's output buffer): no zero-fill
                // of bytes the decompression overwrites.
                out.reserve(n);
                match zstd_ctx {
                    Some(ctx) => ctx.decompress_to_buffer(data, out),
                    None => zstd::bulk::Decompressor::new()
                        .and_then(|mut ctx| ctx.decompress_to_buffer(data, out)),
                }
                .map_err(|source| TraceDatError::Decompress { algorithm: "zstd", source })?;
            }
            Self::Zlib => {
                out.reserve(n.min(to_usize(PREALLOCATE_MAX).unwrap_or(n)));
                let mut dec = flate2::read::ZlibDecoder::new(data).take(usize.saturating_add(1));
                dec.read_to_end(out)
                    .map_err(|source| TraceDatError::Decompress { algorithm: "zlib", source })?;
            }
        }
        if out.len() as u64 != usize {
            return Err(TraceDatError::SizeMismatch { expected: usize, got: out.len() as u64 });
        }
        Ok(())
    }
}

/// Positioned reads of the file, with trace.dat's errors.
impl Source {
    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, TraceDatError> {
        self.read_at(offset, len).map_err(TraceDatError::Io)
    }

    /// Reads exactly `len` bytes at `offset`.
    fn exact(
        &self,
        offset: u64,
        len: u64,
        expected: &'static str,
    ) -> Result<Vec<u8>, TraceDatError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(TraceDatError::Truncated { expected });
        }
        let n = to_usize(len).ok_or(TraceDatError::Impossible { what: "size", value: len })?;
        self.read(offset, n)
    }

    /// [`Source::exact`] into the start of a reused buffer, whose length never shrinks: the
    /// bytes read. A buffer cut to each read's length was zero-filled again up to the next,
    /// longer one (chunks differ in size), ~13 instructions per event for bytes the read then
    /// overwrote.
    fn exact_into<'b>(
        &self,
        offset: u64,
        len: u64,
        expected: &'static str,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], TraceDatError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(TraceDatError::Truncated { expected });
        }
        let n = to_usize(len).ok_or(TraceDatError::Impossible { what: "size", value: len })?;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let into = buf.get_mut(..n).unwrap_or_default();
        self.read_exact_at(offset, into).map_err(TraceDatError::Io)?;
        Ok(into)
    }
}

/// A sequential reader over a [`Source`] for the metadata.
struct Seq<'a> {
    src: &'a Source,
    pos: u64,
    endian: Endian,
    /// Salvage mode: damaged indexes are worked around instead of failing (see `salvage.rs`).
    salvage: bool,
    /// Salvage mode: the first damage found, and where.
    damage: Option<(u64, TraceDatError)>,
}

impl Seq<'_> {
    /// In salvage mode, notes `err` (found at `at`) and returns `None`; otherwise returns it.
    fn tolerate(&mut self, at: u64, err: TraceDatError) -> Result<(), TraceDatError> {
        if !self.salvage {
            return Err(err);
        }
        if self.damage.is_none() {
            self.damage = Some((at, err));
        }
        Ok(())
    }
}

impl Seq<'_> {
    fn bytes(&mut self, len: u64, expected: &'static str) -> Result<Vec<u8>, TraceDatError> {
        let b = self.src.exact(self.pos, len, expected)?;
        self.pos += len;
        Ok(b)
    }
    fn u16(&mut self, expected: &'static str) -> Result<u16, TraceDatError> {
        let b = self.bytes(2, expected)?;
        self.endian.u16(&b, 0).ok_or(TraceDatError::Truncated { expected })
    }
    fn u32(&mut self, expected: &'static str) -> Result<u32, TraceDatError> {
        let b = self.bytes(4, expected)?;
        self.endian.u32(&b, 0).ok_or(TraceDatError::Truncated { expected })
    }
    fn u64(&mut self, expected: &'static str) -> Result<u64, TraceDatError> {
        let b = self.bytes(8, expected)?;
        self.endian.u64(&b, 0).ok_or(TraceDatError::Truncated { expected })
    }
    fn cstr(&mut self, expected: &'static str) -> Result<String, TraceDatError> {
        let mut out = Vec::new();
        loop {
            let chunk = self.src.read(self.pos, 256)?;
            if chunk.is_empty() {
                return Err(TraceDatError::Truncated { expected });
            }
            if let Some(n) = memchr::memchr(0, &chunk) {
                out.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                self.pos += n as u64 + 1;
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            self.pos += chunk.len() as u64;
            out.extend_from_slice(&chunk);
            if out.len() > 4096 {
                return Err(TraceDatError::Impossible {
                    what: "string length",
                    value: out.len() as u64,
                });
            }
        }
    }
    fn tag(&mut self, tag: &'static str) -> Result<(), TraceDatError> {
        let want = tag.as_bytes();
        let got = self.src.read(self.pos, want.len() + 1)?;
        if got.get(..want.len()) == Some(want) && got.get(want.len()) == Some(&0) {
            self.pos += want.len() as u64 + 1;
            Ok(())
        } else {
            Err(TraceDatError::MissingTag { expected: tag })
        }
    }
    fn sized_u64(&mut self, expected: &'static str) -> Result<Vec<u8>, TraceDatError> {
        let n = self.u64(expected)?;
        self.bytes(n, expected)
    }
}

/// One CPU's data in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuData {
    /// The CPU.
    pub cpu: u32,
    /// File offset of its data.
    pub offset: u64,
    /// Its recorded size (for compressed data: Σ(8 + zsize), without the chunk count).
    pub size: u64,
}

/// A ring buffer saved in the file: the top instance (`name` empty) or a `-B` instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    /// The instance name (empty for the top instance).
    pub name: String,
    /// Its trace clock.
    pub clock: Clock,
    /// Its sub-buffer size.
    pub page_size: u32,
    /// The CPUs with data.
    pub cpus: Vec<CpuData>,
    /// The CPU data is compressed in chunks.
    pub compressed: bool,
}

/// The metadata of a trace.dat file; [`TraceDat::events`] reads its events.
#[derive(Debug)]
pub struct TraceDat {
    input: Arc<str>,
    src: Arc<Source>,
    /// 6 or 7.
    pub version: u32,
    /// Byte order of the file's numbers and the traced kernel.
    pub endian: Endian,
    /// `sizeof(long)` of the recording userspace.
    pub long_size: u32,
    /// Page size from the file header.
    pub page_size: u32,
    /// Compression of sections and data.
    pub compression: Compression,
    /// The page layout from `header_page`.
    pub layout: PageLayout,
    /// Every event format in the file.
    pub formats: Arc<EventFormats>,
    /// pid → comm from the saved cmdlines.
    pub comms: Arc<HashMap<i32, Comm>>,
    /// The trace clock (TRACECLOCK option, or the v6 flyrecord clock).
    pub clock: Clock,
    /// The `uname` string (UNAME option).
    pub uname: Option<String>,
    /// The CPU count (CPUCOUNT option, or the v6 count).
    pub cpu_count: Option<u32>,
    /// The per-CPU `stats` texts (CPUSTAT options).
    pub cpu_stats: Vec<String>,
    /// Timestamp offset applied to every event (DATE and OFFSET options), as trace-cmd does.
    pub ts_offset: i64,
    /// TSC2NSEC: (mult, shift, offset), when the file has it. With a non-zero `mult`, event
    /// timestamps are converted to nanoseconds as trace-cmd does (`ts * mult >> shift`, in 128
    /// bits, before the OFFSET/DATE shift) and the buffers' clock reads [`Clock::Tsc2Nsec`].
    pub tsc2nsec: Option<(u32, u32, u64)>,
    /// The saved buffers; the top instance first when present.
    pub buffers: Vec<BufferInfo>,
    /// The texts stored beside the formats, verbatim (for writing the trace again).
    pub texts: SavedTexts,
    /// Where the CPU data begins (after the metadata and the index), for salvage scans.
    data_from: u64,
    /// Set when the file was opened for salvage ([`TraceDat::open_salvaging`]) and is
    /// damaged: what was recovered, where the damage was found, and the error found there.
    pub salvage: Option<(SalvageSummary, Location, Option<Arc<TraceDatError>>)>,
    /// Each compressed CPU run's chunk list, by (cpu, offset, size), as far as it was walked:
    /// the walk reads every chunk's header (10^5 on a 10^8-event trace), readers that start
    /// anywhere ([`TraceDat::events_from`]) need it each time, and a reader at the start needs
    /// only its first chunks (see `chunk_walk.rs`).
    chunk_lists: Mutex<HashMap<RunKey, Arc<Mutex<ChunkWalk>>>>,
}

/// The tracefs texts a trace.dat (or perf's tracing data) stores beside the event formats,
/// kept verbatim so that a converter writes them unchanged. kallsyms is not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTexts {
    /// `events/header_page`.
    pub header_page: Vec<u8>,
    /// `events/header_event`.
    pub header_event: Vec<u8>,
    /// `printk_formats`.
    pub printk: Vec<u8>,
    /// `saved_cmdlines`.
    pub cmdlines: Vec<u8>,
}

/// Option ids (trace-cmd.h `enum tracecmd_file_options`).
mod opt {
    pub const DONE: u16 = 0;
    pub const DATE: u16 = 1;
    pub const CPUSTAT: u16 = 2;
    pub const BUFFER: u16 = 3;
    pub const TRACECLOCK: u16 = 4;
    pub const UNAME: u16 = 5;
    pub const OFFSET: u16 = 7;
    pub const CPUCOUNT: u16 = 8;
    pub const TSC2NSEC: u16 = 14;
    pub const STRINGS: u16 = 15;
    pub const HEADER_INFO: u16 = 16;
    pub const FTRACE_EVENTS: u16 = 17;
    pub const EVENT_FORMATS: u16 = 18;
    pub const PRINTK: u16 = 20;
    pub const CMDLINES: u16 = 21;
}

#[derive(Default)]
struct Options {
    clock: Option<Clock>,
    uname: Option<String>,
    cpu_count: Option<u32>,
    cpu_stats: Vec<String>,
    ts_offset: i64,
    tsc2nsec: Option<(u32, u32, u64)>,
    buffers_v7: Vec<(u64, BufferInfo)>,
    buffers_v6: Vec<(u64, String)>,
    sections: HashMap<u16, u64>,
}

fn parse_c_i64(text: &[u8]) -> Option<i64> {
    let s = String::from_utf8_lossy(text);
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => s.parse::<u64>().ok()?,
    };
    let v = i64::from_ne_bytes(v.to_ne_bytes());
    Some(if neg { v.wrapping_neg() } else { v })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches('\0').to_owned()
}

impl Options {
    fn apply(
        &mut self,
        id: u16,
        data: &[u8],
        e: Endian,
        version: u32,
    ) -> Result<(), TraceDatError> {
        match id {
            opt::DATE | opt::OFFSET => {
                if let Some(v) = parse_c_i64(data) {
                    self.ts_offset = self.ts_offset.wrapping_add(v);
                }
            }
            opt::CPUSTAT => self.cpu_stats.push(text(data)),
            opt::TRACECLOCK => self.clock = Some(Clock::from_name(&text(data))),
            opt::UNAME => self.uname = Some(text(data)),
            opt::CPUCOUNT => self.cpu_count = e.u32(data, 0),
            opt::TSC2NSEC => {
                if let (Some(m), Some(s), Some(o)) =
                    (e.u32(data, 0), e.u32(data, 4), e.u64(data, 8))
                {
                    self.tsc2nsec = Some((m, s, o));
                }
            }
            opt::BUFFER if version >= 7 => {
                let mut c = Cursor::new(data, e);
                let bad = TraceDatError::Truncated { expected: "BUFFER option" };
                let section =
                    c.u64().ok_or(TraceDatError::Truncated { expected: "BUFFER option" })?;
                let name =
                    text(c.cstr().ok_or(TraceDatError::Truncated { expected: "BUFFER option" })?);
                let clock = Clock::from_name(&text(
                    c.cstr().ok_or(TraceDatError::Truncated { expected: "BUFFER option" })?,
                ));
                let page_size =
                    c.u32().ok_or(TraceDatError::Truncated { expected: "BUFFER option" })?;
                let count =
                    c.u32().ok_or(TraceDatError::Truncated { expected: "BUFFER option" })?;
                let mut cpus = Vec::new();
                for _ in 0..count {
                    let (Some(cpu), Some(offset), Some(size)) = (c.u32(), c.u64(), c.u64()) else {
                        return Err(bad);
                    };
                    cpus.push(CpuData { cpu, offset, size });
                }
                self.buffers_v7.push((
                    section,
                    BufferInfo { name, clock, page_size, cpus, compressed: false },
                ));
            }
            opt::BUFFER => {
                let mut c = Cursor::new(data, e);
                if let (Some(off), Some(name)) = (c.u64(), c.cstr()) {
                    self.buffers_v6.push((off, text(name)));
                }
            }
            opt::STRINGS..=25 => {
                if let Some(off) = e.u64(data, 0) {
                    self.sections.insert(id, off);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Applies the options of one v7 OPTIONS section body; returns the offset of the next OPTIONS
/// section (its DONE option), 0 for none.
fn apply_options(body: &[u8], endian: Endian, opts: &mut Options) -> Result<u64, TraceDatError> {
    let mut c = Cursor::new(body, endian);
    while c.remaining() > 0 {
        let (Some(oid), Some(size)) = (c.u16(), c.u32()) else {
            return Err(TraceDatError::Truncated { expected: "option header" });
        };
        let data =
            c.take(size as usize).ok_or(TraceDatError::Truncated { expected: "option data" })?;
        if oid == opt::DONE {
            return Ok(endian.u64(data, 0).unwrap_or(0));
        }
        opts.apply(oid, data, endian, 7)?;
    }
    Ok(0)
}

/// Splits `header_page\0 u64 text header_event\0 u64 text`.
fn parse_header_info(b: &[u8], e: Endian) -> Result<(Vec<u8>, Vec<u8>), TraceDatError> {
    let mut c = Cursor::new(b, e);
    let mut get = |tag: &'static str| -> Result<Vec<u8>, TraceDatError> {
        if !(c.eat(tag.as_bytes()) && c.eat(b"\0")) {
            return Err(TraceDatError::MissingTag { expected: tag });
        }
        let n = c.u64().ok_or(TraceDatError::Truncated { expected: tag })?;
        Ok(c.take_u64_len(n).ok_or(TraceDatError::Truncated { expected: tag })?.to_vec())
    };
    let hp = get("header_page")?;
    let he = get("header_event")?;
    Ok((hp, he))
}

/// Adds `u32 count, {u64 size, text}` formats of `system`.
fn add_format_list(
    c: &mut Cursor<'_>,
    system: &str,
    formats: &mut EventFormats,
) -> Result<(), TraceDatError> {
    let count = c.u32().ok_or(TraceDatError::Truncated { expected: "format count" })?;
    for _ in 0..count {
        let n = c.u64().ok_or(TraceDatError::Truncated { expected: "format size" })?;
        let t = c.take_u64_len(n).ok_or(TraceDatError::Truncated { expected: "format text" })?;
        formats.add_text(system, t).map_err(|source| TraceDatError::Format {
            what: format!("format of a {system} event"),
            source,
        })?;
    }
    Ok(())
}

/// Parses FTRACE_EVENTS then EVENT_FORMATS payloads (also used by perf.data's tracing data).
pub(crate) fn parse_formats(
    ftrace: &[u8],
    events: &[u8],
    e: Endian,
    formats: &mut EventFormats,
) -> Result<(), TraceDatError> {
    add_format_list(&mut Cursor::new(ftrace, e), "ftrace", formats)?;
    let mut c = Cursor::new(events, e);
    let systems = c.u32().ok_or(TraceDatError::Truncated { expected: "system count" })?;
    for _ in 0..systems {
        let name = text(c.cstr().ok_or(TraceDatError::Truncated { expected: "system name" })?);
        add_format_list(&mut c, &name, formats)?;
    }
    Ok(())
}

/// The pieces shared by trace.dat v6 and perf's HEADER_TRACING_DATA: the initial header and the
/// sequential items 1–7.
pub(crate) struct V6Meta {
    pub layout: PageLayout,
    pub formats: EventFormats,
    pub texts: SavedTexts,
}

impl TraceDat {
    /// Opens a trace.dat file (`-` reads stdin into memory).
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::open_with(path, false)
    }

    /// Opens a trace.dat file that may be damaged: a missing or damaged CPU index is replaced
    /// by scanning for the data (see `salvage.rs`), and [`TraceDat::salvage`] says what was
    /// recovered. Damage to the metadata before the data (formats) is still an error.
    pub fn open_salvaging(path: &Path) -> Result<Self, ReadError> {
        Self::open_with(path, true)
    }

    /// Like [`TraceDat::from_bytes`], salvaging like [`TraceDat::open_salvaging`].
    pub fn from_bytes_salvaging(input: Arc<str>, bytes: Vec<u8>) -> Result<Self, ReadError> {
        Self::from_source(input, Source::Bytes(bytes), true)
    }

    fn open_with(path: &Path, salvage: bool) -> Result<Self, ReadError> {
        let input = input_name(path);
        let src = if path.as_os_str() == "-" {
            let mut b = Vec::new();
            io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e)))?;
            Source::Bytes(b)
        } else {
            let f = File::open(path)
                .map_err(|e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e)))?;
            let len = f
                .metadata()
                .map_err(|e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e)))?
                .len();
            Source::File(f, len)
        };
        Self::from_source(input, src, salvage)
    }

    /// Parses a trace.dat held in memory.
    pub fn from_bytes(input: Arc<str>, bytes: Vec<u8>) -> Result<Self, ReadError> {
        Self::from_source(input, Source::Bytes(bytes), false)
    }

    fn from_source(input: Arc<str>, src: Source, salvage: bool) -> Result<Self, ReadError> {
        let mut seq = Seq { src: &src, pos: 0, endian: Endian::Little, salvage, damage: None };
        match Self::parse(&mut seq) {
            Ok(mut td) => {
                let damage = seq.damage.take();
                td.input = input;
                td.src = Arc::new(src);
                if salvage {
                    td.salvage_buffers(damage);
                }
                Ok(td)
            }
            Err(e) => {
                let pos = seq.pos;
                Err(ReadError::new(&input, Location::Offset(pos), e))
            }
        }
    }

    fn parse(seq: &mut Seq<'_>) -> Result<Self, TraceDatError> {
        let magic = seq.src.read(0, MAGIC.len())?;
        if magic != MAGIC {
            return Err(TraceDatError::BadMagic);
        }
        seq.pos = MAGIC.len() as u64;
        let version_text = seq.cstr("version")?;
        let version = match version_text.as_str() {
            "6" => 6,
            "7" => 7,
            _ => return Err(TraceDatError::UnsupportedVersion(version_text)),
        };
        let hdr = seq.bytes(6, "endianness, long size and page size")?;
        let endian = if hdr.first() == Some(&1) { Endian::Big } else { Endian::Little };
        seq.endian = endian;
        let long_size = u32::from(*hdr.get(1).unwrap_or(&8));
        let page_size = endian.u32(&hdr, 2).unwrap_or(4096);
        if version == 6 {
            Self::parse_v6(seq, endian, long_size, page_size)
        } else {
            Self::parse_v7(seq, endian, long_size, page_size)
        }
    }

    /// v6 items 1–7 (also perf's tracing data).
    pub(crate) fn parse_v6_items(
        seq_src: &[u8],
        endian: Endian,
    ) -> Result<(V6Meta, usize), TraceDatError> {
        let src = Source::Bytes(seq_src.to_vec());
        let mut seq = Seq { src: &src, pos: 0, endian, salvage: false, damage: None };
        let meta = Self::v6_items(&mut seq, endian)?;
        Ok((meta, to_usize(seq.pos).unwrap_or(usize::MAX)))
    }

    fn v6_items(seq: &mut Seq<'_>, endian: Endian) -> Result<V6Meta, TraceDatError> {
        seq.tag("header_page")?;
        let hp = seq.sized_u64("header_page")?;
        seq.tag("header_event")?;
        let he = seq.sized_u64("header_event")?;
        let layout = PageLayout::parse(&hp, Some(&he), endian)
            .map_err(|source| TraceDatError::Format { what: "header_page".into(), source })?;
        let mut formats = EventFormats::new(endian, layout.long_size());
        // Ftrace formats, then event systems: read their extents, then parse from memory.
        let start = seq.pos;
        let n = seq.u32("ftrace format count")?;
        for _ in 0..n {
            let len = seq.u64("ftrace format size")?;
            seq.pos = seq
                .pos
                .checked_add(len)
                .ok_or(TraceDatError::Truncated { expected: "ftrace format" })?;
        }
        let ftrace = seq.src.exact(start, seq.pos - start, "ftrace formats")?;
        let start = seq.pos;
        let systems = seq.u32("system count")?;
        for _ in 0..systems {
            seq.cstr("system name")?;
            let n = seq.u32("format count")?;
            for _ in 0..n {
                let len = seq.u64("format size")?;
                seq.pos = seq
                    .pos
                    .checked_add(len)
                    .ok_or(TraceDatError::Truncated { expected: "event format" })?;
            }
        }
        let events = seq.src.exact(start, seq.pos - start, "event formats")?;
        parse_formats(&ftrace, &events, endian, &mut formats)?;
        let kallsyms = seq.u32("kallsyms size")?;
        seq.pos += u64::from(kallsyms);
        let printk_len = seq.u32("printk size")?;
        let printk = seq.bytes(u64::from(printk_len), "printk formats")?;
        let cmdlines = seq.sized_u64("cmdlines")?;
        formats.set_printk(&printk);
        let texts = SavedTexts { header_page: hp, header_event: he, printk, cmdlines };
        Ok(V6Meta { layout, formats, texts })
    }

    fn parse_v6(
        seq: &mut Seq<'_>,
        endian: Endian,
        long_size: u32,
        page_size: u32,
    ) -> Result<Self, TraceDatError> {
        let V6Meta { layout, formats, texts } = Self::v6_items(seq, endian)?;
        // Past the formats, a salvaging reader tolerates damage: the CPU data is then found by
        // scanning from where the damage is (`salvage.rs`).
        let (ncpus, opts, cpus, clock) = match Self::v6_index(seq, endian) {
            Ok(index) => index,
            Err(e) => {
                let at = seq.pos;
                seq.tolerate(at, e)?;
                (0, Options::default(), Vec::new(), Clock::Local)
            }
        };
        let data_from = seq.pos;
        let mut buffers = vec![BufferInfo {
            name: String::new(),
            clock: opts.clock.clone().unwrap_or_else(|| clock.clone()),
            page_size,
            cpus,
            compressed: false,
        }];
        let mut opts = opts;
        for (off, name) in std::mem::take(&mut opts.buffers_v6) {
            let mut s = Seq { src: seq.src, pos: off, endian, salvage: false, damage: None };
            let _ = s.tag("flyrecord");
            match Self::v6_flyrecord(&mut s, ncpus) {
                Ok((cpus, bclock)) => {
                    buffers.push(BufferInfo {
                        name,
                        clock: bclock,
                        page_size,
                        cpus,
                        compressed: false,
                    });
                }
                Err(e) => seq.tolerate(off, e)?,
            }
        }
        let mut td = Self::assemble(
            6,
            endian,
            long_size,
            page_size,
            Compression::None,
            layout,
            formats,
            texts,
            opts,
            Some(ncpus),
            buffers,
            Some(clock),
        );
        td.data_from = data_from;
        Ok(td)
    }

    /// The v6 CPU count, options and flyrecord table (the index of the CPU data).
    #[allow(clippy::type_complexity)]
    fn v6_index(
        seq: &mut Seq<'_>,
        endian: Endian,
    ) -> Result<(u32, Options, Vec<CpuData>, Clock), TraceDatError> {
        let ncpus = seq.u32("cpu count")?;
        if ncpus > 1 << 16 {
            return Err(TraceDatError::Impossible { what: "cpu count", value: u64::from(ncpus) });
        }
        let mut opts = Options::default();
        if seq.tag("options  ").is_ok() {
            loop {
                let id = seq.u16("option id")?;
                if id == opt::DONE {
                    break;
                }
                let size = seq.u32("option size")?;
                let data = seq.bytes(u64::from(size), "option data")?;
                opts.apply(id, &data, endian, 6)?;
            }
        }
        if seq.tag("latency  ").is_ok() {
            return Err(TraceDatError::MissingTag { expected: "flyrecord" });
        }
        seq.tag("flyrecord")?;
        let (cpus, clock) = Self::v6_flyrecord(seq, ncpus)?;
        Ok((ncpus, opts, cpus, clock))
    }

    fn v6_flyrecord(seq: &mut Seq<'_>, ncpus: u32) -> Result<(Vec<CpuData>, Clock), TraceDatError> {
        let mut cpus = Vec::new();
        for cpu in 0..ncpus {
            let offset = seq.u64("cpu data offset")?;
            let size = seq.u64("cpu data size")?;
            if size > 0 {
                cpus.push(CpuData { cpu, offset, size });
            }
        }
        let clock = seq
            .sized_u64("trace clock")
            .map(|c| Clock::from_name(&text(&c)))
            .unwrap_or(Clock::Local);
        Ok((cpus, clock))
    }

    fn parse_v7(
        seq: &mut Seq<'_>,
        endian: Endian,
        long_size: u32,
        page_size: u32,
    ) -> Result<Self, TraceDatError> {
        let comp_name = seq.cstr("compression name")?;
        let _comp_version = seq.cstr("compression version")?;
        let compression = match comp_name.as_str() {
            "none" | "" => Compression::None,
            "zstd" => Compression::Zstd,
            "zlib" => Compression::Zlib,
            other => return Err(TraceDatError::UnknownCompression(other.to_owned())),
        };
        let mut next = seq.u64("first OPTIONS offset")?;
        let first_section_at = seq.pos;
        let mut opts = Options::default();
        let mut seen = BTreeSet::new();
        while next != 0 {
            let at = next;
            if !seen.insert(next) || seen.len() > 64 {
                seq.tolerate(at, TraceDatError::OptionsLoop)?;
                break;
            }
            seq.pos = next;
            let step = Self::section(seq, compression).and_then(|(id, _, body)| {
                if id != 0 {
                    return Err(TraceDatError::WrongSection { expected: 0, found: id });
                }
                apply_options(&body, endian, &mut opts)
            });
            match step {
                Ok(following) => next = following,
                Err(e) => {
                    seq.tolerate(at, e)?;
                    break;
                }
            }
        }
        // A salvaging reader whose OPTIONS chain broke walks the sections one after the other
        // (both trace-cmd and vmxray write them back to back) up to the BUFFER section.
        let mut buffer_section = None;
        let mut data_from = seq.src.len();
        if seq.salvage && (seq.damage.is_some() || opts.buffers_v7.is_empty()) {
            let (walked_buffer, walk_end) =
                Self::walk_sections(seq, first_section_at, compression, &seen, &mut opts);
            buffer_section = walked_buffer;
            data_from = walk_end;
        }
        let mut load = |id: u16, what: &'static str| -> Result<Vec<u8>, TraceDatError> {
            let off = *opts.sections.get(&id).ok_or(TraceDatError::MissingSection(what))?;
            seq.pos = off;
            let (found, _, body) = Self::section(seq, compression)?;
            if found != id {
                return Err(TraceDatError::WrongSection { expected: id, found });
            }
            Ok(body)
        };
        let (hp, he) = parse_header_info(&load(opt::HEADER_INFO, "HEADER_INFO")?, endian)?;
        let layout = PageLayout::parse(&hp, Some(&he), endian)
            .map_err(|source| TraceDatError::Format { what: "header_page".into(), source })?;
        let ftrace = load(opt::FTRACE_EVENTS, "FTRACE_EVENTS").unwrap_or_else(|_| vec![0; 4]);
        let events = load(opt::EVENT_FORMATS, "EVENT_FORMATS")?;
        let cmdlines_sec = load(opt::CMDLINES, "CMDLINES").unwrap_or_default();
        let printk_sec = load(opt::PRINTK, "PRINTK").unwrap_or_default();
        let mut formats = EventFormats::new(endian, layout.long_size());
        parse_formats(&ftrace, &events, endian, &mut formats)?;
        let mut c = Cursor::new(&cmdlines_sec, endian);
        let cmdlines = c.u64().and_then(|n| c.take_u64_len(n)).unwrap_or(&[]).to_vec();
        let mut c = Cursor::new(&printk_sec, endian);
        let printk = c.u32().and_then(|n| c.take_u64_len(u64::from(n))).unwrap_or(&[]).to_vec();
        formats.set_printk(&printk);
        let texts = SavedTexts { header_page: hp, header_event: he, printk, cmdlines };
        let mut buffers = Vec::new();
        for (section, mut b) in std::mem::take(&mut opts.buffers_v7) {
            seq.pos = section;
            b.compressed = match seq.bytes(16, "BUFFER section header") {
                Ok(hdr) => {
                    let flags = endian.u16(&hdr, 2).unwrap_or(0);
                    flags & 1 != 0 && compression != Compression::None
                }
                Err(e) => {
                    seq.tolerate(section, e)?;
                    compression != Compression::None
                }
            };
            if b.name.is_empty() {
                buffer_section = Some(section);
            }
            buffers.push(b);
        }
        buffers.sort_by_key(|b| !b.name.is_empty());
        if let Some(section) = buffer_section {
            data_from = section.saturating_add(16);
        }
        let clock = opts.clock.clone();
        let cpu_count = opts.cpu_count;
        let mut td = Self::assemble(
            7,
            endian,
            long_size,
            page_size,
            compression,
            layout,
            formats,
            texts,
            opts,
            cpu_count,
            buffers,
            clock,
        );
        td.data_from = data_from;
        Ok(td)
    }

    /// Walks v7 sections from `from` one after the other, filling in the section offsets and
    /// the options of OPTIONS sections not yet `seen`, up to the BUFFER section or the first
    /// unreadable header. Returns the BUFFER section's offset and where the walk stopped.
    fn walk_sections(
        seq: &mut Seq<'_>,
        from: u64,
        compression: Compression,
        seen: &BTreeSet<u64>,
        opts: &mut Options,
    ) -> (Option<u64>, u64) {
        let mut pos = from;
        for _ in 0..4096 {
            let Ok(hdr) = seq.src.exact(pos, 16, "section header") else { break };
            let e = seq.endian;
            let (Some(id), Some(size)) = (e.u16(&hdr, 0), e.u64(&hdr, 8)) else { break };
            if id == opt::BUFFER {
                return (Some(pos), pos.saturating_add(16));
            }
            let end = pos.saturating_add(16).saturating_add(size);
            if end > seq.src.len() || !(id == opt::DONE || (opt::STRINGS..=25).contains(&id)) {
                break;
            }
            if id == opt::DONE && !seen.contains(&pos) {
                seq.pos = pos;
                if let Ok((_, _, body)) = Self::section(seq, compression) {
                    let _ = apply_options(&body, e, opts);
                }
            } else {
                opts.sections.entry(id).or_insert(pos);
            }
            pos = end;
        }
        (None, pos)
    }

    /// Reads a v7 section at `seq.pos`: (id, flags, payload), decompressed.
    fn section(
        seq: &mut Seq<'_>,
        compression: Compression,
    ) -> Result<(u16, u16, Vec<u8>), TraceDatError> {
        let id = seq.u16("section id")?;
        let flags = seq.u16("section flags")?;
        let _desc = seq.u32("section description")?;
        let size = seq.u64("section size")?;
        let body = seq.bytes(size, "section body")?;
        if flags & 1 == 0 || compression == Compression::None {
            return Ok((id, flags, body));
        }
        let e = seq.endian;
        let (Some(csize), Some(usize)) = (e.u32(&body, 0), e.u32(&body, 4)) else {
            return Err(TraceDatError::Truncated { expected: "compressed section header" });
        };
        let data = body
            .get(8..8 + csize as usize)
            .ok_or(TraceDatError::Truncated { expected: "compressed section" })?;
        let mut out = Vec::new();
        compression.decompress_into(data, u64::from(usize), &mut out, None)?;
        Ok((id, flags, out))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        version: u32,
        endian: Endian,
        long_size: u32,
        page_size: u32,
        compression: Compression,
        layout: PageLayout,
        formats: EventFormats,
        texts: SavedTexts,
        opts: Options,
        cpu_count: Option<u32>,
        buffers: Vec<BufferInfo>,
        clock: Option<Clock>,
    ) -> Self {
        Self {
            input: "".into(),
            src: Arc::new(Source::Bytes(Vec::new())),
            version,
            endian,
            long_size,
            page_size,
            compression,
            layout,
            formats: Arc::new(formats),
            comms: Arc::new(parse_cmdlines(&texts.cmdlines)),
            clock: opts.clock.or(clock).unwrap_or(Clock::Local),
            uname: opts.uname,
            cpu_count: opts.cpu_count.or(cpu_count),
            cpu_stats: opts.cpu_stats,
            ts_offset: opts.ts_offset,
            tsc2nsec: opts.tsc2nsec,
            buffers,
            texts,
            salvage: None,
            data_from: 0,
            chunk_lists: Mutex::default(),
        }
    }

    /// Salvage (after a salvaging open): checks the top buffer's CPU index against the file,
    /// replaces a missing or damaged one by a scan of the data, and records what was recovered
    /// and lost in [`TraceDat::salvage`]. A file that is whole is left as it is.
    fn salvage_buffers(&mut self, damage: Option<(u64, TraceDatError)>) {
        let src = Arc::clone(&self.src);
        let len = src.len();
        let layout = self.layout;
        let compression = self.compression;
        let top = self.buffers.iter().position(|b| b.name.is_empty());
        let usable = top.map(|i| &self.buffers[i]).filter(|b| {
            !b.cpus.is_empty()
                && b.cpus.iter().all(|d| {
                    d.offset >= len
                        || salvage::entry_is_plausible(
                            &src,
                            d,
                            &layout,
                            b.page_size,
                            b.compressed,
                            compression,
                        )
                })
        });
        let summary = match usable {
            Some(b) => {
                let page = u64::from(b.page_size.max(1));
                let (lost_bytes, mut lost_pages) = salvage::promised_beyond_end(len, b);
                if damage.is_none() && lost_bytes == 0 {
                    // A whole file: nothing to record, and no need to walk every chunk's
                    // header (one read each: 10^5 on a 10^8-event trace) to say so.
                    return;
                }
                let mut summary = SalvageSummary {
                    streams: u32::try_from(b.cpus.len()).unwrap_or(u32::MAX),
                    lost_bytes,
                    ..SalvageSummary::default()
                };
                for d in b.cpus.iter().filter(|d| d.offset < len) {
                    if b.compressed {
                        let count = src
                            .read_at(d.offset, 4)
                            .ok()
                            .and_then(|h| self.endian.u32(&h, 0))
                            .unwrap_or(0);
                        let walk = salvage::walk_list(&src, d.offset, count, page, compression);
                        summary.bytes += walk.end - d.offset;
                        summary.pages += walk.uncompressed / page;
                        lost_pages += walk.lost_pages;
                    } else {
                        let present = d.size.min(len - d.offset) / page * page;
                        summary.bytes += present;
                        summary.pages += present / page;
                    }
                }
                summary.lost_pages = lost_pages;
                summary
            }
            None => {
                let page_size = top.map_or(self.page_size, |i| self.buffers[i].page_size);
                let clock =
                    top.map_or_else(|| self.clock.clone(), |i| self.buffers[i].clock.clone());
                let (buffer, summary) = salvage::scan_buffer(
                    &src,
                    self.data_from,
                    &layout,
                    page_size,
                    compression,
                    clock,
                );
                match top {
                    Some(i) => self.buffers[i] = buffer,
                    None => self.buffers.insert(0, buffer),
                }
                summary
            }
        };
        let (at, cause) = match damage {
            Some((at, e)) => (at, Some(Arc::new(e))),
            None => (len, None),
        };
        self.salvage = Some((summary, Location::Offset(at), cause));
    }

    /// The kernel release from the UNAME option (`Linux host 6.18.44 x86_64` → `6.18.44`).
    pub fn kernel_release(&self) -> Option<String> {
        self.uname.as_deref()?.split_whitespace().nth(2).map(str::to_owned)
    }

    /// The TSC2NSEC multiplier and shift, when timestamps are converted with them.
    fn tsc_to_ns(&self) -> Option<(u32, u32)> {
        self.tsc2nsec.filter(|(mult, _, _)| *mult != 0).map(|(mult, shift, _)| (mult, shift))
    }

    /// The metadata of buffer `buffer`.
    pub fn meta(&self, buffer: usize) -> TraceMeta {
        let clock = match self.tsc_to_ns() {
            Some(_) => Clock::Tsc2Nsec,
            None => {
                self.buffers.get(buffer).map_or_else(|| self.clock.clone(), |b| b.clock.clone())
            }
        };
        TraceMeta {
            input: Arc::clone(&self.input),
            format: InputFormat::TraceDat,
            clock,
            cpus: self.cpu_count,
            kernel: self.kernel_release(),
            excerpt: false,
        }
    }

    /// The decompressed (or raw) page bytes of one CPU of a buffer, for tools and tests.
    pub fn cpu_pages(&self, buffer: usize, cpu: u32) -> Result<Vec<u8>, ReadError> {
        let b = self
            .buffers
            .get(buffer)
            .ok_or_else(|| self.err(Location::Input, TraceDatError::NoBuffer(buffer)))?;
        let mut out = Vec::new();
        for d in b.cpus.iter().filter(|d| d.cpu == cpu) {
            for w in self.work(b, d).map_err(|(at, e)| self.err(at, e))? {
                let mut buf = Vec::new();
                self.load(&w, &mut buf, &mut Scratch::default())
                    .map_err(|(at, e)| self.err(at, e))?;
                out.extend_from_slice(&buf);
            }
        }
        Ok(out)
    }

    /// The page bytes of one CPU of a buffer, a chunk at a time (v7: one compressed chunk,
    /// v6/none: up to 16 pages), each with its offset in the CPU's page stream, for tools that
    /// copy pages without holding a whole CPU in memory. Uncompressed data cut short by the end
    /// of the file comes as what is there followed by a `Truncated` error.
    pub fn cpu_chunks(
        &self,
        buffer: usize,
        cpu: u32,
    ) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), ReadError>> + '_, ReadError> {
        let b = self
            .buffers
            .get(buffer)
            .ok_or_else(|| self.err(Location::Input, TraceDatError::NoBuffer(buffer)))?;
        let mut work = Vec::new();
        for d in b.cpus.iter().filter(|d| d.cpu == cpu) {
            work.extend(self.work(b, d).map_err(|(at, e)| self.err(at, e))?);
        }
        let mut scratch = Scratch::default();
        Ok(work.into_iter().flat_map(move |w| {
            let mut buf = Vec::new();
            if let Err((at, e)) = self.load(&w, &mut buf, &mut scratch) {
                return vec![Err(self.err(at, e))];
            }
            let short = w.usize.is_none() && (buf.len() as u64) < w.len;
            let at = Location::Offset(w.file_offset.saturating_add(buf.len() as u64));
            let mut items = Vec::with_capacity(2);
            if !buf.is_empty() {
                items.push(Ok((w.stream_offset, buf)));
            }
            if short {
                items.push(Err(self.err(at, TraceDatError::Truncated { expected: "CPU data" })));
            }
            items
        }))
    }

    /// The compressed chunks of every CPU of a buffer as `(uncompressed size, bytes)`, for
    /// benchmarks that compare decoding with plain decompression. Empty when not compressed.
    pub fn compressed_chunks(&self, buffer: usize) -> Result<Vec<(u64, Vec<u8>)>, ReadError> {
        let b = self
            .buffers
            .get(buffer)
            .ok_or_else(|| self.err(Location::Input, TraceDatError::NoBuffer(buffer)))?;
        let mut out = Vec::new();
        for d in &b.cpus {
            for w in self.work(b, d).map_err(|(at, e)| self.err(at, e))? {
                if let Some(usize) = w.usize {
                    let bytes = self
                        .src
                        .exact(w.file_offset, w.len, "compressed chunk")
                        .map_err(|e| self.err(Location::Offset(w.file_offset), e))?;
                    out.push((usize, bytes));
                }
            }
        }
        Ok(out)
    }

    fn err(&self, at: Location, e: TraceDatError) -> ReadError {
        ReadError::new(&self.input, at, e)
    }

    /// The kept walk of a compressed run (started on first use: reads its chunk count).
    fn walk_of(&self, d: &CpuData) -> Result<Arc<Mutex<ChunkWalk>>, (Location, TraceDatError)> {
        let key = (d.cpu, d.offset, d.size);
        let mut lists = self.chunk_lists.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = lists.get(&key) {
            return Ok(Arc::clone(w));
        }
        let w = Arc::new(Mutex::new(ChunkWalk::start(&self.src, self.endian, d)?));
        lists.insert(key, Arc::clone(&w));
        Ok(w)
    }

    /// A CPU run's work items from item `first` on, listed as they are taken (compressed runs:
    /// each header is read when a reader gets there, once per run; the others cost no reads
    /// to list). An error walking the list ends it, as its last item.
    fn lane_work(
        &self,
        b: &BufferInfo,
        d: &CpuData,
        first: usize,
    ) -> Result<LaneWork, (Location, TraceDatError)> {
        if !b.compressed {
            let work = self.work(b, d)?;
            let rest = work.get(first..).unwrap_or_default().to_vec();
            return Ok(LaneWork::Listed(rest.into_iter()));
        }
        let walk = self.walk_of(d)?;
        Ok(LaneWork::Walking { src: Arc::clone(&self.src), endian: self.endian, walk, next: first })
    }

    fn work(&self, b: &BufferInfo, d: &CpuData) -> Result<Vec<Work>, (Location, TraceDatError)> {
        let mut out = Vec::new();
        if !b.compressed {
            let step = u64::from(b.page_size.max(1)).saturating_mul(PAGES_PER_BATCH);
            let mut off = 0;
            // Only what the file holds is split; a size past the end of the file becomes one
            // last item that reads short and reports the truncation.
            let present = d.size.min(self.src.len().saturating_sub(d.offset));
            while off < d.size {
                let len = if off < present { step.min(present - off) } else { d.size - off };
                out.push(Work {
                    index: u32::try_from(out.len()).unwrap_or(u32::MAX),
                    cpu: d.cpu,
                    file_offset: d.offset.saturating_add(off),
                    len,
                    usize: None,
                    stream_offset: off,
                });
                off += len;
            }
            return Ok(out);
        }
        let mut walk = ChunkWalk::start(&self.src, self.endian, d)?;
        Ok(walk.all(&self.src, self.endian)?.to_vec())
    }

    /// Reads (and decompresses) one work item into `out`.
    fn load(
        &self,
        w: &Work,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Result<(), (Location, TraceDatError)> {
        let at = Location::Offset(w.file_offset);
        match w.usize {
            None => {
                let len = to_usize(w.len)
                    .ok_or((at, TraceDatError::Impossible { what: "size", value: w.len }))?;
                self.src
                    .read_at_into(w.file_offset, len, out)
                    .map_err(|e| (at, TraceDatError::Io(e)))
            }
            Some(u64::MAX) => Err((at, TraceDatError::Truncated { expected: "chunk header" })),
            Some(usize) => {
                if scratch.zstd.is_none() && self.compression == Compression::Zstd {
                    scratch.zstd = zstd::bulk::Decompressor::new().ok();
                }
                let compressed = self
                    .src
                    .exact_into(w.file_offset, w.len, "compressed chunk", &mut scratch.compressed)
                    .map_err(|e| (at, e))?;
                self.compression
                    .decompress_into(compressed, usize, out, scratch.zstd.as_mut())
                    .map_err(|e| (at, e))
            }
        }
    }

    /// Loads and decodes one work item of a CPU, appending to `batch`.
    fn decode_work(&self, ctx: &DecodeCtx, w: &Work, scratch: &mut Scratch, batch: &mut Batch) {
        let first = batch.items.len();
        let mut pages = std::mem::take(&mut scratch.pages);
        match self.load(w, &mut pages, scratch) {
            Ok(()) => {
                let base = match w.usize {
                    None => StreamBase::File(w.file_offset),
                    Some(_) => StreamBase::Cpu(w.stream_offset),
                };
                ctx.decode_pages(w.cpu, &pages, base, batch);
                if w.usize.is_none() && (pages.len() as u64) < w.len {
                    batch.problem(self.err(
                        Location::Offset(w.file_offset.saturating_add(pages.len() as u64)),
                        TraceDatError::Truncated { expected: "CPU data" },
                    ));
                }
                // trace-cmd's order: TSC cycles to ns, then the OFFSET/DATE shift.
                let tsc = self.tsc_to_ns();
                if tsc.is_some() || self.ts_offset != 0 {
                    for ev in batch.items.iter_mut().skip(first).flatten() {
                        if let Some((mult, shift)) = tsc {
                            ev.ts = tsc_to_ns(ev.ts, mult, shift);
                        }
                        ev.ts = ev.ts.wrapping_add_signed(self.ts_offset);
                    }
                }
            }
            Err((at, e)) => batch.problem(self.err(at, e)),
        }
        scratch.pages = pages;
    }

    /// Streams buffer `buffer` (0 is the top instance when present) as time-ordered events,
    /// decoding CPU chunks ahead on the rayon pool.
    pub fn events(
        self: &Arc<Self>,
        buffer: usize,
        opts: ReadOptions,
    ) -> Result<TraceDatReader, ReadError> {
        self.events_with(buffer, opts, true)
    }

    /// Like [`TraceDat::events`], decoding on the calling thread only when `parallel` is false.
    pub fn events_with(
        self: &Arc<Self>,
        buffer: usize,
        opts: ReadOptions,
        parallel: bool,
    ) -> Result<TraceDatReader, ReadError> {
        self.events_inner(buffer, opts, parallel, None, None)
    }

    /// The CPU of each lane of buffer `buffer`: a lane is one CPU's data (a CPU may in
    /// principle have several), in the order [`LanePos`] and [`ChunkCounts`] number them.
    pub fn lanes(&self, buffer: usize) -> Vec<u32> {
        self.buffers.get(buffer).map_or_else(Vec::new, |b| b.cpus.iter().map(|d| d.cpu).collect())
    }

    /// Like [`TraceDat::events`], and also counts, per lane, the events (and lost markers)
    /// each chunk of the lane gave, as the chunks are decoded: what [`TraceDat::events_from`]
    /// needs to start in the middle. The events are the same.
    pub fn events_counted(
        self: &Arc<Self>,
        buffer: usize,
        opts: ReadOptions,
    ) -> Result<(TraceDatReader, Arc<ChunkCounts>), ReadError> {
        let b = self
            .buffers
            .get(buffer)
            .ok_or_else(|| self.err(Location::Input, TraceDatError::NoBuffer(buffer)))?;
        // The lists are not walked here: a chunk is counted as it is decoded.
        let lanes = b
            .cpus
            .iter()
            .map(|d| LaneCounts {
                counts: Mutex::default(),
                run_bytes: d.size.min(self.src.len().saturating_sub(d.offset)),
                done_bytes: AtomicU64::new(0),
            })
            .collect();
        let counts = Arc::new(ChunkCounts { lanes });
        let reader = self.events_inner(buffer, opts, true, Some(Arc::clone(&counts)), None)?;
        Ok((reader, counts))
    }

    /// The events of buffer `buffer` from a position on: each lane starts at its [`LanePos`]
    /// (a lane without one starts at its end), merged by time as [`TraceDat::events`] does,
    /// decoded on the calling thread. A position found with [`ChunkCounts::locate`] from the
    /// per-lane event counts at some point of a full read gives the events from that point.
    pub fn events_from(
        self: &Arc<Self>,
        buffer: usize,
        opts: ReadOptions,
        from: &[LanePos],
    ) -> Result<TraceDatReader, ReadError> {
        self.events_inner(buffer, opts, false, None, Some(from))
    }

    fn events_inner(
        self: &Arc<Self>,
        buffer: usize,
        opts: ReadOptions,
        parallel: bool,
        counts: Option<Arc<ChunkCounts>>,
        from: Option<&[LanePos]>,
    ) -> Result<TraceDatReader, ReadError> {
        let b = self
            .buffers
            .get(buffer)
            .ok_or_else(|| self.err(Location::Input, TraceDatError::NoBuffer(buffer)))?;
        let mut layout = self.layout;
        if b.page_size > layout.data_offset {
            layout.page_size = b.page_size;
        }
        let ctx = Arc::new(DecodeCtx {
            input: Arc::clone(&self.input),
            formats: Arc::clone(&self.formats),
            layout,
            comms: Arc::clone(&self.comms),
            // A read that counts chunk events or starts at a position counts yielded events:
            // it yields every kind.
            count_only: if counts.is_none() && from.is_none() {
                opts.count_only
            } else {
                CountOnly::NONE
            },
        });
        let mut stats = ReadStats::default();
        if let Some((summary, at, cause)) = &self.salvage
            && b.name.is_empty()
            && from.is_none()
        {
            let salvaged = TraceDatError::Salvaged { summary: *summary, cause: cause.clone() };
            stats.note_skipped(self.err(*at, salvaged));
        }
        let mut producers: Vec<(u32, Jobs)> = Vec::new();
        for (lane, d) in b.cpus.iter().enumerate() {
            // Where this lane starts, and how many of its first chunk's events to drop.
            let mut skip = 0u32;
            let mut first = 0;
            if let Some(from) = from {
                match from.iter().find(|p| p.lane == u32::try_from(lane).unwrap_or(u32::MAX)) {
                    Some(p) => {
                        first = usize::try_from(p.chunk).unwrap_or(usize::MAX);
                        skip = p.skip;
                    }
                    None => first = usize::MAX,
                }
            }
            let work = match self.lane_work(b, d, first) {
                Ok(w) => w,
                Err((at, e)) if opts.permissive => {
                    stats.note_skipped(self.err(at, e));
                    continue;
                }
                Err((at, e)) => return Err(self.err(at, e)),
            };
            let td = Arc::clone(self);
            let ctx = Arc::clone(&ctx);
            let counts = counts.clone();
            let mut first_job = true;
            let jobs = group_work(work).map(move |group| {
                let td = Arc::clone(&td);
                let ctx = Arc::clone(&ctx);
                let counts = counts.clone();
                let drop_first = if std::mem::take(&mut first_job) { skip } else { 0 };
                Box::new(move || {
                    let mut batch = Batch::default();
                    // Room for the whole job at once: growing a recycled buffer chunk by chunk
                    // reallocates it into fresh pages (page faults cost ~5 % of decoding). The
                    // sizes come from chunk headers, so the hint is capped; `decode_pages`
                    // still reserves from the real decompressed size.
                    let hint = group
                        .work
                        .iter()
                        .map(|w| w.usize.unwrap_or(w.len))
                        .fold(0u64, u64::saturating_add)
                        .min(4 * JOB_BYTES);
                    batch.items.reserve(usize::try_from(hint).unwrap_or(0) / 24);
                    let decode = |scratch: &mut Scratch| {
                        for w in &group.work {
                            let before = (batch.items.len(), batch.problems);
                            td.decode_work(&ctx, w, scratch, &mut batch);
                            if let Some(counts) = &counts {
                                // The chunk's events: its items less its problems (counted as
                                // they were pushed, where a scan read every item back).
                                let items = batch.items.len() - before.0;
                                let problems = batch.problems.saturating_sub(before.1);
                                counts.set(lane, w, items.saturating_sub(problems as usize));
                            }
                        }
                        if let Some((at, e)) = group.error {
                            batch.problem(td.err(at, e));
                        }
                    };
                    SCRATCH.with(|cell| match cell.try_borrow_mut() {
                        Ok(mut scratch) => decode(&mut scratch),
                        // This thread's buffers are in use further up its stack: fresh ones.
                        Err(_) => decode(&mut Scratch::default()),
                    });
                    // Starting inside the first chunk: drop the events before the position
                    // (and the problems among them, which a full read met before it).
                    let mut left = drop_first;
                    let mut cut = 0;
                    for item in &batch.items {
                        if left == 0 {
                            break;
                        }
                        left -= u32::from(item.is_ok());
                        cut += 1;
                    }
                    batch.items.drain(..cut);
                    batch
                }) as Job
            });
            producers.push((d.cpu, Box::new(jobs) as Jobs));
        }
        let merger = Merger::new(producers, parallel, opts.permissive, &mut stats);
        let formats = Arc::clone(&self.formats);
        Ok(TraceDatReader { meta: self.meta(buffer), stats, merger, formats })
    }
}

/// Where one lane of a buffer starts ([`TraceDat::events_from`]): chunk `chunk` of its list
/// (for uncompressed data, a run of 16 pages), after its first `skip` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LanePos {
    /// The lane ([`TraceDat::lanes`]).
    pub lane: u32,
    /// The chunk.
    pub chunk: u32,
    /// Events of that chunk to skip.
    pub skip: u32,
}

/// How many events (and lost markers) each chunk of each lane gave, filled in by a reader
/// from [`TraceDat::events_counted`] as it decodes: a chunk is counted before any of its
/// events is yielded, so the counts of the chunks behind a read's position are complete.
/// The lanes' chunk lists are not walked ahead: a lane's counts reach as far as it was decoded.
#[derive(Debug)]
pub struct ChunkCounts {
    lanes: Vec<LaneCounts>,
}

#[derive(Debug)]
struct LaneCounts {
    /// Per chunk (`u32::MAX`: not decoded yet).
    counts: Mutex<Vec<u32>>,
    /// The run's bytes in the file.
    run_bytes: u64,
    /// Bytes of its chunks decoded (headers included).
    done_bytes: AtomicU64,
}

impl ChunkCounts {
    fn set(&self, lane: usize, w: &Work, n: usize) {
        let Some(l) = self.lanes.get(lane) else { return };
        let header = if w.usize.is_some() { 8 } else { 0 };
        l.done_bytes.fetch_add(w.len.saturating_add(header), Ordering::Relaxed);
        let Ok(chunk) = usize::try_from(w.index) else { return };
        if let Ok(mut v) = l.counts.lock() {
            if v.len() <= chunk {
                v.resize(chunk + 1, u32::MAX);
            }
            v[chunk] = u32::try_from(n).unwrap_or(u32::MAX - 1);
        }
    }

    /// Lanes counted.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Bytes of the lanes' data decoded so far, and in all (a read's progress, known without
    /// walking the chunk lists).
    pub fn progress(&self) -> (u64, u64) {
        let done = self.lanes.iter().map(|l| l.done_bytes.load(Ordering::Relaxed)).sum::<u64>();
        let total = self.lanes.iter().map(|l| l.run_bytes).sum::<u64>();
        (done.min(total), total)
    }

    /// The events chunk `chunk` of lane `lane` gave; None until it is decoded (or when there
    /// is no such chunk).
    pub fn count(&self, lane: usize, chunk: usize) -> Option<u32> {
        let v = self.lanes.get(lane)?.counts.lock().ok()?;
        v.get(chunk).copied().filter(|n| *n != u32::MAX)
    }

    /// Chunks of lane `lane` counted so far (the highest decoded, plus one).
    pub fn chunks(&self, lane: usize) -> usize {
        self.lanes.get(lane).and_then(|l| l.counts.lock().ok().map(|v| v.len())).unwrap_or(0)
    }

    /// The counts of one lane's chunks so far (`u32::MAX`: not decoded yet; chunks past the
    /// highest decoded one are not listed).
    pub fn lane(&self, lane: usize) -> Vec<u32> {
        self.lanes
            .get(lane)
            .and_then(|l| l.counts.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }

    /// The position of a lane's event number `ordinal` (0-based, counting events and lost
    /// markers of that lane in stream order) given the lane's per-chunk counts (`counts`,
    /// from [`ChunkCounts::lane`]); None when the counts do not reach it.
    pub fn locate(lane: u32, counts: &[u32], ordinal: u64) -> Option<LanePos> {
        let mut before = 0u64;
        for (chunk, n) in counts.iter().enumerate() {
            if *n == u32::MAX {
                return None;
            }
            let n = u64::from(*n);
            if ordinal < before + n {
                return Some(LanePos {
                    lane,
                    chunk: u32::try_from(chunk).ok()?,
                    skip: u32::try_from(ordinal - before).ok()?,
                });
            }
            before += n;
        }
        // Past the counted events: the start of the next chunk (the lane's end when there is
        // none).
        (ordinal == before).then_some(LanePos {
            lane,
            chunk: u32::try_from(counts.len()).ok()?,
            skip: 0,
        })
    }
}

/// A TSC count in nanoseconds: `ts * mult >> shift` without overflow (the kernel's and
/// trace-cmd's `mul_u64_u32_shr`), truncated to 64 bits as theirs is.
fn tsc_to_ns(ts: u64, mult: u32, shift: u32) -> u64 {
    let ns = (u128::from(ts) * u128::from(mult)) >> shift.min(127);
    // Keep the low 64 bits, as the kernel's and trace-cmd's u64 result does.
    u64::try_from(ns & u128::from(u64::MAX)).unwrap_or(u64::MAX)
}

thread_local! {
    /// Each decoding thread's reusable buffers and zstd context.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Buffers reused from chunk to chunk by a decoding thread.
#[derive(Default)]
struct Scratch {
    compressed: Vec<u8>,
    pages: Vec<u8>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

/// A CPU run of a buffer: its CPU, file offset and size.
type RunKey = (u32, u64, u64);

#[derive(Clone, Copy, Debug)]
struct Work {
    /// Its position in the lane's list of work items (see [`ChunkCounts`]).
    index: u32,
    cpu: u32,
    file_offset: u64,
    len: u64,
    /// `Some(uncompressed size)` for a compressed chunk.
    usize: Option<u64>,
    stream_offset: u64,
}

/// Uncompressed bytes one decoding job covers at least (several chunks of trace-cmd's ten
/// pages each): fewer, larger jobs keep the cost of handing work between threads small next to
/// the decoding itself, while a job's batch stays a few MiB.
const JOB_BYTES: u64 = 256 << 10;

/// A CPU run's work items from some item on ([`TraceDat::lane_work`]).
enum LaneWork {
    /// Listed at once (uncompressed data: no reads needed).
    Listed(std::vec::IntoIter<Work>),
    /// A compressed run's chunks, walked as they are taken.
    Walking { src: Arc<Source>, endian: Endian, walk: Arc<Mutex<ChunkWalk>>, next: usize },
}

impl Iterator for LaneWork {
    type Item = Result<Work, (Location, TraceDatError)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Listed(work) => work.next().map(Ok),
            Self::Walking { src, endian, walk, next } => {
                // usize::MAX: the lane starts at its end (no position given for it).
                if *next == usize::MAX {
                    return None;
                }
                let mut walk = walk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match walk.get(src, *endian, *next) {
                    Ok(Some(w)) => {
                        *next += 1;
                        Some(Ok(w))
                    }
                    Ok(None) => {
                        *next = usize::MAX;
                        None
                    }
                    Err(e) => {
                        *next = usize::MAX;
                        Some(Err(e))
                    }
                }
            }
        }
    }
}

/// The work of one decoding job, and the error that ended the lane's list after it, if any.
struct WorkGroup {
    work: Vec<Work>,
    error: Option<(Location, TraceDatError)>,
}

/// Consecutive work items of one CPU grouped into jobs of about [`JOB_BYTES`].
fn group_work(
    mut work: impl Iterator<Item = Result<Work, (Location, TraceDatError)>> + Send,
) -> impl Iterator<Item = WorkGroup> + Send {
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        let mut group = WorkGroup { work: Vec::new(), error: None };
        let mut bytes = 0u64;
        while bytes < JOB_BYTES {
            match work.next() {
                Some(Ok(w)) => {
                    bytes =
                        bytes.saturating_add(w.usize.filter(|u| *u != u64::MAX).unwrap_or(w.len));
                    group.work.push(w);
                }
                Some(Err(e)) => {
                    group.error = Some(e);
                    ended = true;
                    break;
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        (!group.work.is_empty() || group.error.is_some()).then_some(group)
    })
}

/// The events of one trace.dat buffer, in time order.
pub struct TraceDatReader {
    meta: TraceMeta,
    stats: ReadStats,
    merger: Merger,
    formats: Arc<EventFormats>,
}

impl TraceDatReader {
    /// Opens `path` and streams its top buffer.
    pub fn open(path: &Path, opts: ReadOptions) -> Result<Self, ReadError> {
        Arc::new(TraceDat::open(path)?).events(0, opts)
    }
}

impl Iterator for TraceDatReader {
    type Item = Result<Event, ReadError>;

    // Inline across crates: the consumer's loop then takes each event from the merge in place.
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.merger.next(&mut self.stats)
    }
}

impl TraceDatReader {
    /// From now on, a decoded batch without problems is shared instead of moved out event by
    /// event: [`TraceDatReader::next_shared`] gives its events in place, with the batch itself
    /// for a consumer that hands the events on to another thread ([`crate::read::SharedBatch`]).
    #[must_use]
    pub fn sharing(mut self) -> Self {
        self.merger.share();
        self
    }

    /// The next event, as [`Iterator::next`] gives it, read in place when its batch is shared.
    #[inline]
    pub fn next_shared(&mut self) -> Option<Result<Taken<'_>, ReadError>> {
        self.merger.next_shared(&mut self.stats)
    }
}

impl EventReader for TraceDatReader {
    fn meta(&self) -> &TraceMeta {
        &self.meta
    }
    fn stats(&self) -> &ReadStats {
        &self.stats
    }
    fn event_formats(&self) -> Option<&Arc<EventFormats>> {
        Some(&self.formats)
    }
    fn counted_before(&self) -> u64 {
        self.merger.counted_before()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::read::SharedBatch;

    #[test]
    fn zlib_and_zstd_blocks_decompress_to_their_stated_size() {
        let data: Vec<u8> = (0..40960u32).map(|i| (i % 251) as u8).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let zlib = z.finish().unwrap();
        let mut out = Vec::new();
        Compression::Zlib.decompress_into(&zlib, data.len() as u64, &mut out, None).unwrap();
        assert_eq!(out, data);
        let err = Compression::Zlib.decompress_into(&zlib, 100, &mut out, None).unwrap_err();
        assert!(matches!(err, TraceDatError::SizeMismatch { .. }));
        // trace-cmd's zstd frames carry no content size: the chunk header gives it.
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_contentsize(false).unwrap();
        let frame = c.compress(&data).unwrap();
        Compression::Zstd.decompress_into(&frame, data.len() as u64, &mut out, None).unwrap();
        assert_eq!(out, data);
        assert!(Compression::Zstd.decompress_into(&frame[..10], 40960, &mut out, None).is_err());
    }

    #[test]
    fn zstd_decompresses_into_a_reused_buffer_exactly_the_stated_bytes() {
        let data: Vec<u8> = (0..40960u32).map(|i| (i % 251) as u8).collect();
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_contentsize(false).unwrap();
        let frame = c.compress(&data).unwrap();
        let short = c.compress(&data[..1000]).unwrap();
        let mut ctx = zstd::bulk::Decompressor::new().unwrap();
        // A buffer left longer, and with more capacity, by an earlier chunk.
        let mut out = vec![0xee; 100_000];
        Compression::Zstd.decompress_into(&short, 1000, &mut out, Some(&mut ctx)).unwrap();
        assert_eq!(out, data[..1000]);
        Compression::Zstd.decompress_into(&frame, 40960, &mut out, Some(&mut ctx)).unwrap();
        assert_eq!(out, data);
        // A chunk whose frame holds more than its header says: an error, whatever the room.
        out.reserve(100_000);
        let err = Compression::Zstd.decompress_into(&frame, 1000, &mut out, Some(&mut ctx));
        assert!(matches!(err, Err(TraceDatError::SizeMismatch { expected: 1000, .. })), "{err:?}");
        let err = Compression::Zstd.decompress_into(&frame, 1000, &mut Vec::new(), None);
        assert!(err.is_err(), "{err:?}");
    }

    /// Chunks of each compressed run listed so far (`chunk_walk.rs`).
    fn walked(td: &TraceDat) -> Vec<usize> {
        let lists = td.chunk_lists.lock().unwrap();
        let mut out: Vec<usize> = lists.values().map(|w| w.lock().unwrap().listed()).collect();
        out.sort_unstable();
        out
    }

    /// Reads `td` both ways: moved out event by event, and with shared batches as the TUI's
    /// statistics stage sees them (each event found again, at the same address, in its lane's
    /// batch). Returns the events, the problems skipped and how many events were read in place.
    fn both_ways(td: &Arc<TraceDat>) -> (Vec<Event>, u64, usize) {
        let opts = ReadOptions { permissive: true, ..ReadOptions::default() };
        let mut moved = td.events(0, opts).unwrap();
        let want: Vec<Event> = moved.by_ref().map(Result::unwrap).collect();
        let mut shared = td.events(0, opts).unwrap().sharing();
        let mut lanes: HashMap<u32, (Arc<SharedBatch>, usize)> = HashMap::new();
        let (mut got, mut placed) = (Vec::new(), 0);
        while let Some(item) = shared.next_shared() {
            match item.unwrap() {
                Taken::Placed { event, lane, batch } => {
                    if let Some(batch) = batch {
                        lanes.insert(lane, (batch, 0));
                    }
                    let (batch, pos) = lanes.get_mut(&lane).expect("the lane's batch came first");
                    let there = batch.next_event(pos).expect("the event is in its lane's batch");
                    assert!(std::ptr::eq(there, event), "read where the decoder wrote it");
                    got.push(event.clone());
                    placed += 1;
                }
                Taken::Owned(event) => got.push(event),
            }
        }
        assert_eq!(got, want);
        assert_eq!(shared.stats().events, moved.stats().events);
        assert_eq!(shared.stats().skipped, moved.stats().skipped);
        (want, moved.stats().skipped, placed)
    }

    #[test]
    fn shared_batches_give_the_events_moved_batches_give_and_problems_stay_moved() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/real/tracedat");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "dat") {
                let td = Arc::new(TraceDat::open(&path).unwrap());
                let (events, skipped, placed) = both_ways(&td);
                assert_eq!(skipped, 0, "{}", path.display());
                assert_eq!(placed, events.len(), "{}: all shared", path.display());
                read += 1;
            }
        }
        assert!(read >= 5, "the committed real traces");
        // A damaged trace: the chunks that no longer decompress are problems, their batches are
        // moved out; the others are still shared.
        let path = format!("{dir}/lost-v7-zstd.dat");
        let td = TraceDat::open(Path::new(&path)).unwrap();
        let b = &td.buffers[0];
        let longest = b.cpus.iter().map(|d| td.work(b, d).unwrap()).max_by_key(Vec::len).unwrap();
        // Inside the compressed data of a chunk of the lane's second job.
        let chunk = longest[10];
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = usize::try_from(chunk.file_offset + chunk.len / 2).unwrap();
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let td = Arc::new(TraceDat::from_bytes_salvaging(Arc::from("damaged.dat"), bytes).unwrap());
        let (events, skipped, placed) = both_ways(&td);
        assert!(skipped > 0, "the damage is reported");
        assert!(placed > 0 && placed < events.len(), "{placed} of {} read in place", events.len());
    }

    #[test]
    fn a_reader_at_the_start_walks_only_the_chunks_it_decodes_and_later_readers_reuse_them() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../samples/real/tracedat/lost-v7-zstd.dat"
        ));
        let td = Arc::new(TraceDat::open(path).unwrap());
        let full: Vec<usize> = {
            let b = &td.buffers[0];
            let mut v: Vec<usize> = b.cpus.iter().map(|d| td.work(b, d).unwrap().len()).collect();
            v.sort_unstable();
            v
        };
        // One CPU has 36 chunks: more than the first jobs a reader queues per CPU (a job is
        // ~7 of trace-cmd's 40 KiB chunks, 3 are decoded ahead, 1 more once the first is in).
        let longest = *full.last().unwrap();
        assert!(longest > 32, "a sample with a long chunk list: {full:?}");
        let (mut reader, counts) = td.events_counted(0, ReadOptions::default()).unwrap();
        assert!(reader.next().is_some());
        let after_first = walked(&td);
        assert!(
            *after_first.last().unwrap() < longest,
            "the first event needs the first chunks only: walked {after_first:?} of {full:?}"
        );
        let (done, total) = counts.progress();
        assert!(done > 0 && done < total, "{done} of {total}");
        let n = 1 + reader.by_ref().count();
        assert_eq!(walked(&td), full, "a whole read lists every chunk");
        assert_eq!(counts.progress().0, counts.progress().1);
        // The same events as a reader on a fresh open, which walks as it goes.
        let fresh = Arc::new(TraceDat::open(path).unwrap());
        assert_eq!(fresh.events(0, ReadOptions::default()).unwrap().count(), n);
    }

    #[test]
    fn tsc2nsec_converts_every_timestamp_as_trace_cmd_does() {
        // The kernel's mul_u64_u32_shr: a 128-bit product, so large counts do not overflow.
        assert_eq!(tsc_to_ns(3_000_000_000, 0x5555_5555, 32), 999_999_999);
        assert_eq!(tsc_to_ns(u64::MAX, 1 << 31, 32), u64::MAX >> 1);
        assert_eq!(tsc_to_ns(12345, 7, 200), 0);

        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../samples/real/tracedat/lm-v7-zstd.dat"
        ));
        let raw = Arc::new(TraceDat::open(path).unwrap());
        let mut td = TraceDat::open(path).unwrap();
        // A 2 GHz TSC: ns = cycles / 2 (mult 2^31, shift 32), after which OFFSET still applies.
        let (mult, shift) = (1u32 << 31, 32u32);
        let mut opts = Options::default();
        let mut data = Vec::new();
        data.extend_from_slice(&mult.to_le_bytes());
        data.extend_from_slice(&shift.to_le_bytes());
        data.extend_from_slice(&77u64.to_le_bytes());
        opts.apply(opt::TSC2NSEC, &data, Endian::Little, 7).unwrap();
        assert_eq!(opts.tsc2nsec, Some((mult, shift, 77)));
        td.tsc2nsec = opts.tsc2nsec;
        td.ts_offset = 1000;
        let td = Arc::new(td);
        assert_eq!(td.meta(0).clock, Clock::Tsc2Nsec);
        assert!(td.meta(0).clock.is_ns());
        let before: Vec<Event> =
            raw.events(0, ReadOptions::default()).unwrap().map(Result::unwrap).collect();
        let after: Vec<Event> =
            td.events(0, ReadOptions::default()).unwrap().map(Result::unwrap).collect();
        assert!(!before.is_empty());
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            let cycles = b.ts.wrapping_add_signed(-raw.ts_offset);
            assert_eq!(a.ts, cycles / 2 + 1000, "{b:?}");
            assert_eq!((&a.kind, a.cpu, a.pid), (&b.kind, b.cpu, b.pid));
        }
    }

    #[test]
    fn c_integers_of_date_and_offset_options() {
        assert_eq!(parse_c_i64(b"0x10\0"), Some(16));
        assert_eq!(parse_c_i64(b"-25"), Some(-25));
        assert_eq!(parse_c_i64(b"junk"), None);
    }
}
