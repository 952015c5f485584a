//! perf.data (file mode, `PERFILE2`, either byte order): tracepoint samples decoded with the
//! formats saved in `HEADER_TRACING_DATA`.
//!
//! Our own parser rather than `linux-perf-data` or `tracepoint_perf`: neither decodes the
//! tracing data into *our* format layer (the precomputed [`vmxray_events::KnownEvent`] and field
//! offsets every binary reader shares), tracepoint samples need only a small part of perf.data
//! (header, attrs, two feature sections, SAMPLE/COMM/FORK/LOST/COMPRESSED/FINISHED_ROUND), and
//! owning it lets us report corruption by file offset with the same error types.
//!
//! Records are not globally time-ordered in the file: they are buffered and released per
//! `FINISHED_ROUND` as perf's `ordered_events` does — at a round boundary, everything at or
//! before the newest timestamp seen *before the previous* boundary is sorted and emitted.
//! COMM and FORK records ride in the same ordering so a sample gets the comm its thread had at
//! that time. `PERF_RECORD_COMPRESSED` payloads are one zstd stream across records.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use crate::bin::format::{EventFormats, RecordError};
use crate::bin::{Cursor, Endian, Source, to_usize};
use crate::read::decode::{parse_cmdlines, unknown_event};
use crate::read::tracedat::{MAGIC as TRACING_MAGIC, SavedTexts, TraceDat};
use crate::read::{
    Clock, EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, ReadStats,
    TraceMeta, input_name,
};
use vmxray_events::event::{Comm, Event, EventKind};

/// A perf.data file is malformed or unsupported.
#[derive(Debug, thiserror::Error)]
pub enum PerfDataError {
    /// Not `PERFILE2`.
    #[error("Not a perf.data file (bad magic)")]
    BadMagic,
    /// The file ends inside a structure.
    #[error("Truncated: expected {expected}, the file ends")]
    Truncated {
        /// What should have followed.
        expected: &'static str,
    },
    /// A size is impossible.
    #[error("Impossible {what} {value}")]
    Impossible {
        /// What.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// No HEADER_TRACING_DATA: tracepoint samples cannot be decoded.
    #[error("No tracing data feature section (not recorded with tracepoints?)")]
    NoTracingData,
    /// The tracing data is malformed.
    #[error("Bad tracing data")]
    TracingData(#[source] crate::read::tracedat::TraceDatError),
    /// A sample's id matches no attr.
    #[error("Sample id {0} matches no event attr")]
    UnknownSampleId(u64),
    /// A COMPRESSED record does not decompress.
    #[error("Cannot decompress a COMPRESSED record")]
    Decompress(#[source] io::Error),
    /// The file could not be read.
    #[error("Cannot read the file")]
    Io(#[source] io::Error),
    /// The file is cut before its feature sections, which hold the event formats (perf writes
    /// them after the data): none of its records can be decoded.
    #[error(
        "Truncated: expected the feature sections (with the event formats) at offset {table:#x}, \
         the file ends at {len:#x}; its {data_bytes} bytes of records cannot be decoded without them"
    )]
    FeaturesLost {
        /// Where the feature section table should be.
        table: u64,
        /// The file's length.
        len: u64,
        /// Bytes of the data section present.
        data_bytes: u64,
    },
    /// `--permissive` skipped damaged bytes of the data section up to the next record header
    /// that, with the one after it, makes sense.
    #[error("Damaged records: skipped {skipped} bytes to the next readable record")]
    Resynced {
        /// Bytes skipped.
        skipped: u64,
    },
    /// The data section ends inside a record.
    #[error("Truncated: the file ends inside a record, {lost} bytes of it are present")]
    CutRecord {
        /// The bytes of the incomplete record.
        lost: u64,
    },
}

// perf_event_header types.
const RECORD_LOST: u32 = 2;
const RECORD_COMM: u32 = 3;
const RECORD_FORK: u32 = 7;
const RECORD_SAMPLE: u32 = 9;
const RECORD_LOST_SAMPLES: u32 = 13;
const RECORD_HEADER_TRACING_DATA: u32 = 66;
const RECORD_FINISHED_ROUND: u32 = 68;
const RECORD_COMPRESSED: u32 = 81;

// sample_type bits.
const S_IP: u64 = 1 << 0;
const S_TID: u64 = 1 << 1;
const S_TIME: u64 = 1 << 2;
const S_ADDR: u64 = 1 << 3;
const S_READ: u64 = 1 << 4;
const S_CALLCHAIN: u64 = 1 << 5;
const S_ID: u64 = 1 << 6;
const S_CPU: u64 = 1 << 7;
const S_PERIOD: u64 = 1 << 8;
const S_STREAM_ID: u64 = 1 << 9;
const S_RAW: u64 = 1 << 10;
const S_IDENTIFIER: u64 = 1 << 16;

const FEAT_TRACING_DATA: u32 = 1;
const FEAT_OSRELEASE: u32 = 4;
const FEAT_NRCPUS: u32 = 7;
const FEAT_EVENT_DESC: u32 = 12;

const PERF_TYPE_TRACEPOINT: u32 = 2;

#[derive(Clone, Debug)]
struct Attr {
    kind: u32,
    config: u64,
    sample_type: u64,
    read_format: u64,
    sample_id_all: bool,
}

/// Where a sample's fields are.
#[derive(Default, Debug)]
struct Sample<'a> {
    id: Option<u64>,
    /// The process (PERF_SAMPLE_TID's pid).
    pid: Option<i32>,
    tid: Option<i32>,
    time: Option<u64>,
    cpu: Option<u32>,
    raw: Option<&'a [u8]>,
}

/// Parses a SAMPLE body by `sample_type` (perf_event.h order).
fn parse_sample<'a>(body: &'a [u8], attr: &Attr, e: Endian) -> Option<Sample<'a>> {
    let st = attr.sample_type;
    let mut c = Cursor::new(body, e);
    let mut s = Sample::default();
    if st & S_IDENTIFIER != 0 {
        s.id = Some(c.u64()?);
    }
    if st & S_IP != 0 {
        c.u64()?;
    }
    if st & S_TID != 0 {
        s.pid = Some(i32::from_ne_bytes(c.u32()?.to_ne_bytes()));
        s.tid = Some(i32::from_ne_bytes(c.u32()?.to_ne_bytes()));
    }
    if st & S_TIME != 0 {
        s.time = Some(c.u64()?);
    }
    if st & S_ADDR != 0 {
        c.u64()?;
    }
    if st & S_ID != 0 {
        s.id = s.id.or(Some(c.u64()?));
    }
    if st & S_STREAM_ID != 0 {
        c.u64()?;
    }
    if st & S_CPU != 0 {
        s.cpu = Some(c.u32()?);
        c.u32()?;
    }
    if st & S_PERIOD != 0 {
        c.u64()?;
    }
    if st & S_READ != 0 {
        // PERF_FORMAT_GROUP (bit 3) reads nr values; otherwise one value, plus optional words.
        let extra = (attr.read_format & 0b111).count_ones() as usize;
        if attr.read_format & 8 != 0 {
            let nr = to_usize(c.u64()?)?;
            let per = 1
                + usize::from(attr.read_format & 4 != 0)
                + usize::from(attr.read_format & 16 != 0);
            let skip = nr.checked_mul(per)?.checked_mul(8)?;
            let time_words = (attr.read_format & 0b11).count_ones() as usize * 8;
            c.take(skip.checked_add(time_words)?)?;
        } else {
            c.take((1 + extra + usize::from(attr.read_format & 16 != 0)) * 8)?;
        }
    }
    if st & S_CALLCHAIN != 0 {
        let nr = to_usize(c.u64()?)?;
        c.take(nr.checked_mul(8)?)?;
    }
    if st & S_RAW != 0 {
        let n = c.u32()?;
        s.raw = Some(c.take(n as usize)?);
    }
    Some(s)
}

/// The tracing data of a `PERF_RECORD_HEADER_TRACING_DATA` record at `at` (the data follows
/// the 16-byte record, padded to 8 bytes), if the record is there.
fn tracing_data_record(src: &Source, at: u64, e: Endian) -> Result<Option<Vec<u8>>, PerfDataError> {
    let Ok(head) = src.read_at(at, 16) else { return Ok(None) };
    if head.len() < 16 || e.u32(&head, 0) != Some(RECORD_HEADER_TRACING_DATA) {
        return Ok(None);
    }
    let size = u64::from(e.u32(&head, 8).unwrap_or(0));
    src.exact_checked(at + 16, size, "tracing data record").map(Some)
}

/// Parses the trailing `sample_id` of a non-sample record (sample_id_all).
fn parse_sample_id(body: &[u8], attr: &Attr, e: Endian) -> Sample<'static> {
    let st = attr.sample_type;
    let words = [S_TID, S_TIME, S_ID, S_STREAM_ID, S_CPU, S_IDENTIFIER]
        .iter()
        .filter(|b| st & **b != 0)
        .count();
    let mut s = Sample::default();
    let Some(start) = body.len().checked_sub(words * 8) else { return s };
    let mut c = Cursor::at(body, start, e);
    if st & S_TID != 0 {
        let _ = c.u32();
        s.tid = c.u32().map(|t| i32::from_ne_bytes(t.to_ne_bytes()));
    }
    if st & S_TIME != 0 {
        s.time = c.u64();
    }
    if st & S_ID != 0 {
        s.id = c.u64();
    }
    if st & S_STREAM_ID != 0 {
        let _ = c.u64();
    }
    if st & S_CPU != 0 {
        s.cpu = c.u32();
        let _ = c.u32();
    }
    s
}

/// An item waiting for its round to be released.
#[derive(Debug)]
enum Pending {
    Event(Event, Option<Box<[u8]>>),
    /// A sample of a [`ReadOptions::count_only`] event (its format id): counted where it falls
    /// in time order.
    Counted(u32),
    Comm {
        tid: i32,
        comm: Comm,
    },
    Fork {
        tid: i32,
        parent: i32,
    },
    Problem(ReadError),
}

/// Reads the tracepoint samples of a perf.data file.
pub struct PerfDataReader {
    meta: TraceMeta,
    stats: ReadStats,
    opts: ReadOptions,
    endian: Endian,
    file: Source,
    attrs: Vec<Attr>,
    by_id: HashMap<u64, usize>,
    formats: Arc<EventFormats>,
    comms: HashMap<i32, Comm>,
    fallback_comms: Arc<HashMap<i32, Comm>>,
    // Streaming state.
    pos: u64,
    end: u64,
    window: Vec<u8>,
    window_start: u64,
    decompressed: Vec<u8>,
    dstream: Option<zstd::stream::raw::Decoder<'static>>,
    pending: Vec<(u64, u64, Pending)>,
    seq: u64,
    max_ts: u64,
    next_flush: u64,
    ready: std::collections::VecDeque<Pending>,
    finished: bool,
    failed: bool,
    keep_raw: bool,
    tracing_texts: SavedTexts,
    /// Samples counted instead of yielded so far ([`EventReader::counted_before`]).
    counted: u64,
}

/// Positioned reads of the file, with perf.data's errors.
impl Source {
    fn read_checked(&self, off: u64, len: u64) -> Result<Vec<u8>, PerfDataError> {
        let n = to_usize(len).ok_or(PerfDataError::Impossible { what: "size", value: len })?;
        self.read_at(off, n).map_err(PerfDataError::Io)
    }
    fn exact_checked(
        &self,
        off: u64,
        len: u64,
        expected: &'static str,
    ) -> Result<Vec<u8>, PerfDataError> {
        let b = self.read_checked(off, len)?;
        if (b.len() as u64) < len {
            return Err(PerfDataError::Truncated { expected });
        }
        Ok(b)
    }
}

const WINDOW: u64 = 1 << 20;

impl PerfDataReader {
    /// Opens a perf.data file (`-` reads stdin into memory).
    pub fn open(path: &Path, opts: ReadOptions) -> Result<Self, ReadError> {
        let input = input_name(path);
        let io_err = |e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e));
        let src = if path.as_os_str() == "-" {
            let mut b = Vec::new();
            io::stdin().read_to_end(&mut b).map_err(io_err)?;
            Source::Bytes(b)
        } else {
            let f = File::open(path).map_err(io_err)?;
            let len = f.metadata().map_err(io_err)?.len();
            Source::File(f, len)
        };
        Self::from_source(input, src, opts)
    }

    /// Reads a perf.data held in memory.
    pub fn from_bytes(
        input: Arc<str>,
        bytes: Vec<u8>,
        opts: ReadOptions,
    ) -> Result<Self, ReadError> {
        Self::from_source(input, Source::Bytes(bytes), opts)
    }

    fn from_source(input: Arc<str>, src: Source, opts: ReadOptions) -> Result<Self, ReadError> {
        let mut at = 0u64;
        Self::parse(&input, src, opts, &mut at)
            .map_err(|e| ReadError::new(&input, Location::Offset(at), e))
    }

    fn parse(
        input: &Arc<str>,
        src: Source,
        opts: ReadOptions,
        at: &mut u64,
    ) -> Result<Self, PerfDataError> {
        let hdr = src.exact_checked(0, 104, "file header")?;
        let endian = match hdr.get(..8) {
            Some(b"PERFILE2") => Endian::Little,
            Some(b"2ELIFREP") => Endian::Big,
            _ => return Err(PerfDataError::BadMagic),
        };
        let e = endian;
        let rd = |o: usize| e.u64(&hdr, o).unwrap_or(0);
        let attr_size = rd(16);
        let (attrs_off, attrs_size) = (rd(24), rd(32));
        let (data_off, data_size) = (rd(40), rd(48));
        let features: Vec<u32> = (0..256u32)
            .filter(|bit| {
                let byte = hdr.get(72 + (*bit / 64) as usize * 8..80 + (*bit / 64) as usize * 8);
                byte.and_then(|b| e.u64(b, 0)).is_some_and(|w| w >> (bit % 64) & 1 == 1)
            })
            .collect();
        if !(16 + 64..=4096).contains(&attr_size) {
            return Err(PerfDataError::Impossible { what: "attr size", value: attr_size });
        }
        let nattrs = attrs_size / attr_size;
        if nattrs > 1 << 16 {
            return Err(PerfDataError::Impossible { what: "attr count", value: nattrs });
        }
        let mut attrs = Vec::new();
        let mut by_id = HashMap::new();
        for i in 0..nattrs {
            let off = attrs_off.saturating_add(i * attr_size);
            *at = off;
            let a = src.exact_checked(off, attr_size, "event attr")?;
            let g = |o: usize| e.u64(&a, o).unwrap_or(0);
            let flags = g(40);
            let attr = Attr {
                kind: e.u32(&a, 0).unwrap_or(0),
                config: g(8),
                sample_type: g(24),
                read_format: g(32),
                sample_id_all: flags >> 18 & 1 == 1,
            };
            let asz = to_usize(attr_size).unwrap_or(0);
            let ids_off = e.u64(&a, asz - 16).unwrap_or(0);
            let ids_size = e.u64(&a, asz - 8).unwrap_or(0);
            if ids_size > 1 << 24 {
                return Err(PerfDataError::Impossible { what: "ids size", value: ids_size });
            }
            *at = ids_off;
            let ids = src.exact_checked(ids_off, ids_size, "sample ids")?;
            for k in 0..ids.len() / 8 {
                if let Some(id) = e.u64(&ids, k * 8) {
                    by_id.insert(id, attrs.len());
                }
            }
            attrs.push(attr);
        }
        // Feature sections: {offset, size} per set bit, after the data section.
        let table = data_off.saturating_add(data_size);
        if table.saturating_add(16) > src.len() && !features.is_empty() {
            *at = table.min(src.len());
            return Err(PerfDataError::FeaturesLost {
                table,
                len: src.len(),
                data_bytes: src.len().saturating_sub(data_off).min(data_size),
            });
        }
        let mut feat = HashMap::new();
        for (k, bit) in features.iter().enumerate() {
            *at = table.saturating_add(k as u64 * 16);
            let s = src.exact_checked(*at, 16, "feature section table")?;
            feat.insert(*bit, (e.u64(&s, 0).unwrap_or(0), e.u64(&s, 8).unwrap_or(0)));
        }
        let tracing = match feat.get(&FEAT_TRACING_DATA) {
            Some(&(toff, tsize)) => {
                *at = toff;
                src.exact_checked(toff, tsize, "tracing data")?
            }
            // No feature sections (vmxray's recorder was killed before writing them): the
            // formats are in the HEADER_TRACING_DATA record that starts its data section.
            None => {
                *at = data_off;
                tracing_data_record(&src, data_off, e)?.ok_or(PerfDataError::NoTracingData)?
            }
        };
        if !tracing.starts_with(TRACING_MAGIC) {
            return Err(PerfDataError::NoTracingData);
        }
        let mut c = Cursor::at(&tracing, TRACING_MAGIC.len(), e);
        c.cstr().ok_or(PerfDataError::Truncated { expected: "tracing data version" })?;
        let endian_byte =
            c.u8().ok_or(PerfDataError::Truncated { expected: "tracing data header" })?;
        let tendian = if endian_byte == 1 { Endian::Big } else { Endian::Little };
        c.take(5).ok_or(PerfDataError::Truncated { expected: "tracing data header" })?;
        let rest = tracing.get(c.pos()..).unwrap_or(&[]);
        let (v6, _) =
            TraceDat::parse_v6_items(rest, tendian).map_err(PerfDataError::TracingData)?;
        let kernel = feat.get(&FEAT_OSRELEASE).and_then(|&(o, s)| {
            let b = src.read_checked(o, s.min(4096)).ok()?;
            let n = e.u32(&b, 0)? as usize;
            let t = b.get(4..4 + n.min(b.len().saturating_sub(4)))?;
            Some(String::from_utf8_lossy(t).trim_end_matches('\0').to_owned())
        });
        let cpus = feat.get(&FEAT_NRCPUS).and_then(|&(o, _)| {
            let b = src.read_checked(o, 8).ok()?;
            e.u32(&b, 4).or_else(|| e.u32(&b, 0))
        });
        let _ = FEAT_EVENT_DESC;
        let clock = Clock::Perf;
        let meta = TraceMeta {
            input: Arc::clone(input),
            format: InputFormat::PerfData,
            clock,
            cpus,
            kernel,
            excerpt: false,
        };
        let mut end = data_off.saturating_add(data_size).min(src.len());
        let truncated = data_off.saturating_add(data_size) > src.len();
        // A file vmxray's recorder did not finish (no feature sections, formats from the
        // record): with --permissive, the records written after its last checkpoint too, up
        // to the end of the file (a record cut there is reported).
        let unfinished = features.is_empty() && feat.is_empty();
        if unfinished && opts.permissive {
            end = src.len();
        }
        let mut reader = Self {
            meta,
            stats: ReadStats::default(),
            opts,
            endian,
            file: src,
            attrs,
            by_id,
            formats: Arc::new(v6.formats),
            comms: HashMap::new(),
            fallback_comms: Arc::new(parse_cmdlines(&v6.texts.cmdlines)),
            tracing_texts: v6.texts,
            pos: data_off,
            end,
            window: Vec::new(),
            window_start: data_off,
            decompressed: Vec::new(),
            dstream: None,
            pending: Vec::new(),
            seq: 0,
            max_ts: 0,
            next_flush: 0,
            ready: Default::default(),
            finished: false,
            failed: false,
            counted: 0,
            keep_raw: false,
        };
        if truncated {
            // Records before the cut are still read; the cut is reported when reached.
            reader.end = reader.file.len();
        }
        Ok(reader)
    }

    fn err(&self, at: Location, e: impl Into<ReadErrorKind>) -> ReadError {
        ReadError::new(&self.meta.input, at, e)
    }

    /// The next record of the data section: (file offset, bytes).
    fn next_record(&mut self) -> Option<Result<(u64, Vec<u8>), ReadError>> {
        if self.pos >= self.end {
            return None;
        }
        let rel = self.pos - self.window_start;
        let need_refill = rel + 8 > self.window.len() as u64
            || self
                .endian
                .u16(&self.window, to_usize(rel + 6).unwrap_or(usize::MAX))
                .is_none_or(|s| rel + u64::from(s) > self.window.len() as u64);
        if need_refill {
            match self.file.read_checked(self.pos, WINDOW.min(self.end - self.pos)) {
                Ok(w) => {
                    self.window = w;
                    self.window_start = self.pos;
                }
                Err(e) => return Some(Err(self.err(Location::Offset(self.pos), e))),
            }
        }
        let rel = to_usize(self.pos - self.window_start).unwrap_or(usize::MAX);
        let Some(size) = self.endian.u16(&self.window, rel + 6) else {
            return Some(Err(self.err(
                Location::Offset(self.pos),
                PerfDataError::Truncated { expected: "record header" },
            )));
        };
        if size < 8 {
            return Some(Err(self.err(
                Location::Offset(self.pos),
                PerfDataError::Impossible { what: "record size", value: u64::from(size) },
            )));
        }
        let Some(rec) = self.window.get(rel..rel + usize::from(size)) else {
            let lost = self.end.saturating_sub(self.pos);
            return Some(Err(
                self.err(Location::Offset(self.pos), PerfDataError::CutRecord { lost })
            ));
        };
        let off = self.pos;
        self.pos += u64::from(size);
        if self.endian.u32(rec, 0) == Some(RECORD_HEADER_TRACING_DATA) {
            // The tracing data follows the 16-byte record, outside its stated size.
            self.pos += u64::from(self.endian.u32(rec, 8).unwrap_or(0));
        }
        Some(Ok((off, rec.to_vec())))
    }

    /// Handles one record (from the file or from a decompressed payload).
    fn handle(&mut self, off: u64, rec: &[u8]) {
        let e = self.endian;
        let kind = e.u32(rec, 0).unwrap_or(0);
        let body = rec.get(8..).unwrap_or(&[]);
        match kind {
            RECORD_SAMPLE => self.sample(off, body),
            RECORD_COMM => {
                let attr = self.attrs.first().cloned();
                let (Some(_pid), Some(tid)) = (e.u32(body, 0), e.u32(body, 4)) else { return };
                let name = body.get(8..).unwrap_or(&[]);
                let name = &name[..memchr::memchr(0, name).unwrap_or(name.len())];
                let time = attr
                    .filter(|a| a.sample_id_all)
                    .and_then(|a| parse_sample_id(body, &a, e).time)
                    .unwrap_or(0);
                let tid = i32::from_ne_bytes(tid.to_ne_bytes());
                self.push(
                    time,
                    Pending::Comm { tid, comm: String::from_utf8_lossy(name).into_owned().into() },
                );
            }
            RECORD_FORK => {
                let (Some(ptid), Some(tid), Some(time)) =
                    (e.u32(body, 12), e.u32(body, 8), e.u64(body, 16))
                else {
                    return;
                };
                let tid = i32::from_ne_bytes(tid.to_ne_bytes());
                let parent = i32::from_ne_bytes(ptid.to_ne_bytes());
                self.push(time, Pending::Fork { tid, parent });
            }
            RECORD_LOST | RECORD_LOST_SAMPLES => {
                let count = if kind == RECORD_LOST { e.u64(body, 8) } else { e.u64(body, 0) };
                let sid = self
                    .attrs
                    .first()
                    .filter(|a| a.sample_id_all)
                    .map(|a| parse_sample_id(body, a, e))
                    .unwrap_or_default();
                let ts = sid.time.unwrap_or(self.max_ts);
                let ev = Event {
                    ts,
                    cpu: sid.cpu.unwrap_or(0),
                    pid: -1,
                    tgid: None,
                    comm: None,
                    kind: EventKind::Lost { count },
                };
                self.push(ts, Pending::Event(ev, None));
            }
            RECORD_FINISHED_ROUND => self.flush_round(),
            RECORD_COMPRESSED => self.compressed(off, body),
            _ => {}
        }
    }

    fn push(&mut self, ts: u64, item: Pending) {
        self.max_ts = self.max_ts.max(ts);
        self.seq += 1;
        self.pending.push((ts, self.seq, item));
    }

    fn flush_round(&mut self) {
        let limit = self.next_flush;
        self.release(Some(limit));
        self.next_flush = self.max_ts;
    }

    fn release(&mut self, limit: Option<u64>) {
        self.pending.sort_unstable_by_key(|(ts, seq, _)| (*ts, *seq));
        let n = match limit {
            Some(l) => self.pending.partition_point(|(ts, _, _)| *ts <= l),
            None => self.pending.len(),
        };
        self.ready.extend(self.pending.drain(..n).map(|(_, _, p)| p));
    }

    fn compressed(&mut self, off: u64, body: &[u8]) {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if self.dstream.is_none() {
            match zstd::stream::raw::Decoder::new() {
                Ok(d) => self.dstream = Some(d),
                Err(e) => return self.problem(off, PerfDataError::Decompress(e)),
            }
        }
        let Some(mut d) = self.dstream.take() else { return };
        let mut input = InBuffer::around(body);
        let mut chunk = vec![0u8; 1 << 16];
        while input.pos < body.len() {
            let mut out = OutBuffer::around(chunk.as_mut_slice());
            match d.run(&mut input, &mut out) {
                Ok(_) => {
                    let n = out.pos();
                    if n == 0 && input.pos < body.len() && out.pos() == 0 {
                        // No progress possible.
                        if input.pos == 0 {
                            break;
                        }
                    }
                    self.decompressed.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                }
                Err(e) => {
                    self.dstream = Some(d);
                    return self.problem(off, PerfDataError::Decompress(e));
                }
            }
        }
        // Drain any buffered output.
        loop {
            let mut out = OutBuffer::around(chunk.as_mut_slice());
            let mut empty = InBuffer::around(&[]);
            match d.run(&mut empty, &mut out) {
                Ok(_) if out.pos() > 0 => {
                    let n = out.pos();
                    self.decompressed.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                }
                _ => break,
            }
        }
        self.dstream = Some(d);
        // Handle every complete record; keep a partial one for the next COMPRESSED record.
        let mut buf = std::mem::take(&mut self.decompressed);
        let mut p = 0usize;
        while let Some(size) = self.endian.u16(&buf, p + 6) {
            let size = usize::from(size);
            if size < 8 {
                self.problem(
                    off,
                    PerfDataError::Impossible { what: "record size", value: size as u64 },
                );
                p = buf.len();
                break;
            }
            let Some(rec) = buf.get(p..p + size) else { break };
            let rec = rec.to_vec();
            self.handle(off, &rec);
            p += size;
        }
        buf.drain(..p.min(buf.len()));
        self.decompressed = buf;
    }

    fn problem(&mut self, off: u64, e: PerfDataError) {
        let err = self.err(Location::Offset(off), e);
        let ts = self.max_ts;
        self.push(ts, Pending::Problem(err));
    }

    fn sample(&mut self, off: u64, body: &[u8]) {
        let e = self.endian;
        // Find the attr: IDENTIFIER first when set, else the only attr.
        let attr_idx = if self.attrs.len() == 1 {
            Some(0)
        } else {
            let first = self.attrs.first().map(|a| a.sample_type).unwrap_or(0);
            if first & S_IDENTIFIER != 0 {
                e.u64(body, 0).and_then(|id| self.by_id.get(&id).copied())
            } else {
                // Without IDENTIFIER, parse with the first attr's layout to find the ID.
                self.attrs
                    .first()
                    .and_then(|a| parse_sample(body, a, e))
                    .and_then(|s| s.id)
                    .and_then(|id| self.by_id.get(&id).copied())
            }
        };
        let Some(attr) = attr_idx.and_then(|i| self.attrs.get(i)).cloned() else {
            let id = e.u64(body, 0).unwrap_or(0);
            return self.problem(off, PerfDataError::UnknownSampleId(id));
        };
        let Some(s) = parse_sample(body, &attr, e) else {
            return self.problem(off, PerfDataError::Truncated { expected: "sample fields" });
        };
        if attr.kind != PERF_TYPE_TRACEPOINT {
            *self
                .stats
                .unknown_events
                .entry(format!("perf attr type {} config {}", attr.kind, attr.config))
                .or_default() += 1;
            return;
        }
        let Some(raw) = s.raw else {
            return self.problem(off, PerfDataError::Truncated { expected: "raw tracepoint data" });
        };
        let ts = s.time.unwrap_or(self.max_ts);
        let tid = s.tid.or_else(|| self.formats.pid(raw)).unwrap_or(-1);
        if !self.opts.count_only.is_none()
            && let Some(id) = self.formats.event_id(raw)
            && self.formats.get(id).is_some_and(|f| self.opts.count_only.counts(f))
        {
            self.push(ts, Pending::Counted(id));
            return;
        }
        let kind = match self.formats.decode(raw) {
            Ok(k) => k,
            Err(RecordError::UnknownId(id)) => {
                *self.stats.unknown_events.entry(format!("id {id}")).or_default() += 1;
                unknown_event(id, raw)
            }
            Err(err) => {
                let err = self.err(Location::Offset(off), err);
                self.push(ts, Pending::Problem(err));
                return;
            }
        };
        let tgid = s.pid.filter(|p| *p > 0);
        let ev = Event { ts, cpu: s.cpu.unwrap_or(0), pid: tid, tgid, comm: None, kind };
        let raw = self.keep_raw.then(|| Box::<[u8]>::from(raw));
        self.push(ts, Pending::Event(ev, raw));
    }

    /// Fills `ready` with at least one item, or ends.
    fn fill(&mut self) {
        while self.ready.is_empty() && !self.finished {
            match self.next_record() {
                Some(Ok((off, rec))) => self.handle(off, &rec),
                Some(Err(e)) => {
                    let damaged = matches!(
                        e.kind,
                        ReadErrorKind::PerfData(PerfDataError::Impossible {
                            what: "record size",
                            ..
                        })
                    );
                    let ts = self.max_ts;
                    self.push(ts, Pending::Problem(e));
                    // --permissive goes on after damaged bytes from the next record that
                    // makes sense; a cut record is the end.
                    if damaged && self.opts.permissive && self.resync() {
                        continue;
                    }
                    self.release(None);
                    self.finished = true;
                }
                None => {
                    if !self.decompressed.is_empty() {
                        let off = self.pos;
                        self.decompressed.clear();
                        self.problem(
                            off,
                            PerfDataError::Truncated { expected: "compressed record" },
                        );
                    }
                    self.release(None);
                    self.finished = true;
                }
            }
        }
    }

    /// Moves `pos` past damaged bytes to the next 8-byte aligned offset where a record header
    /// makes sense and is followed by another one (or the end of the data). Counts the bytes
    /// skipped as a problem; false when none is found.
    fn resync(&mut self) -> bool {
        let e = self.endian;
        let plausible = |file: &Source, at: u64, end: u64| -> Option<u64> {
            let h = file.read_at(at, 8).ok()?;
            let (kind, misc, size) = (e.u32(&h, 0)?, e.u16(&h, 4)?, e.u16(&h, 6)?);
            let size = u64::from(size);
            let known = (1..=RECORD_COMPRESSED + 1).contains(&kind);
            (known && misc < 0x8000 && size >= 8 && size % 8 == 0 && at + size <= end)
                .then_some(at + size)
        };
        let start = self.pos;
        let mut at = start.saturating_add(8) / 8 * 8;
        while at < self.end {
            if let Some(next) = plausible(&self.file, at, self.end)
                && (next == self.end || plausible(&self.file, next, self.end).is_some())
            {
                self.pos = at;
                self.window.clear();
                self.window_start = at;
                self.problem(start, PerfDataError::Resynced { skipped: at - start });
                return true;
            }
            at += 8;
        }
        false
    }

    fn comm_of(&self, tid: i32) -> Option<Comm> {
        self.comms.get(&tid).or_else(|| self.fallback_comms.get(&tid)).cloned()
    }
}

/// An event with its raw tracepoint record, when kept.
pub type RawSample = (Event, Option<Box<[u8]>>);

impl PerfDataReader {
    /// Keeps each sample's raw tracepoint bytes for [`PerfDataReader::next_raw`].
    pub fn keep_raw(mut self, keep: bool) -> Self {
        self.keep_raw = keep;
        self
    }

    /// The tracepoint formats saved in the file's tracing data.
    pub fn formats(&self) -> &Arc<EventFormats> {
        &self.formats
    }

    /// The header_page/header_event, printk and cmdlines texts of the file's tracing data.
    pub fn tracing_texts(&self) -> &SavedTexts {
        &self.tracing_texts
    }

    /// The next event with its raw tracepoint record (when [`PerfDataReader::keep_raw`] is on
    /// and the event is a sample).
    pub fn next_raw(&mut self) -> Option<Result<RawSample, ReadError>> {
        while !self.failed {
            if self.ready.is_empty() {
                self.fill();
            }
            match self.ready.pop_front()? {
                Pending::Event(mut ev, raw) => {
                    if let EventKind::Lost { count } = ev.kind {
                        self.stats.note_lost(ev.cpu, count);
                    } else {
                        ev.comm = self.comm_of(ev.pid);
                    }
                    self.stats.events += 1;
                    return Some(Ok((ev, raw)));
                }
                Pending::Counted(id) => {
                    if let Some(f) = self.formats.get(id) {
                        self.stats.note_counted(&f.name, 1);
                    }
                    self.counted += 1;
                }
                Pending::Comm { tid, comm } => {
                    self.comms.insert(tid, comm);
                }
                Pending::Fork { tid, parent } => {
                    if let Some(c) = self.comm_of(parent) {
                        self.comms.insert(tid, c);
                    }
                }
                Pending::Problem(err) if self.opts.permissive => self.stats.note_skipped(err),
                Pending::Problem(err) => {
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
        None
    }
}

impl Iterator for PerfDataReader {
    type Item = Result<Event, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_raw()?.map(|(ev, _)| ev))
    }
}

impl EventReader for PerfDataReader {
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
        self.counted
    }
}
