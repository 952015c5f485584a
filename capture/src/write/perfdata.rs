//! Writing perf.data (file mode, `PERFILE2`, little-endian) with tracepoint samples, readable
//! by `perf script` / `perf report` and vmxray's reader.
//!
//! perf itself writes the file header and the feature sections (which hold the event formats)
//! only when it exits, so a `perf record` killed with SIGKILL leaves a file nothing can decode.
//! This writer keeps every prefix of the file readable instead:
//!
//! ```text
//!  header (data.size patched at each checkpoint; data.offset and feature bits by finish)
//!  | attr ids | attrs (perf_event_attr + {ids offset, ids size}) × N
//!  | HEADER_TRACING_DATA record + the tracing data   <- the data section starts here, until
//!  | COMM … SAMPLE … LOST … FINISHED_ROUND …           finish moves its start past the record
//!    (records as the kernel wrote them into the ring buffers)
//!  | feature table | TRACING_DATA | HOSTNAME | OSRELEASE | VERSION | ARCH | NRCPUS | CMDLINE
//!  | EVENT_DESC                                                          (written by finish)
//! ```
//!
//! - The attrs (with every kernel-assigned sample id) come first, written at creation: the
//!   recorder opens every event before it creates the file.
//! - While recording, the event formats are a `PERF_RECORD_HEADER_TRACING_DATA` user record
//!   at the start of the data section (what `perf record -o -` emits in pipe mode): a file
//!   whose feature sections were never written (the recorder was killed) still decodes with
//!   vmxray. [`PerfDataWriter::finish`] stores them as the `HEADER_TRACING_DATA` feature, which
//!   perf needs in file mode when it opens the file, and moves the data section's start past
//!   the record, which perf then never sees: its tracing-data parser counts the bytes it read
//!   in a global it never resets (`trace_data_size` in tools/perf/util/trace-event-read.c), so
//!   a second copy would fail its size check.
//! - [`PerfDataWriter::checkpoint`] writes the buffered records and patches the header's data
//!   size (one 8-byte `pwrite`, the commit point): after SIGKILL, vmxray reads every record up
//!   to the last checkpoint (perf does not: it needs the feature sections, as for a killed
//!   `perf record`).
//!
//! Layouts follow `tools/perf/Documentation/perf.data-file-format.txt` and
//! `include/uapi/linux/perf_event.h`. The attrs are written in the 128-byte layout
//! (`PERF_ATTR_SIZE_VER7`), which every perf since 5.12 reads; the fields past it are unused
//! for tracepoints.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Metadata, WriteError};

/// `struct perf_file_header`: magic, size, attr_size, attrs, data, event_types, 256 feature bits.
pub const FILE_HEADER_SIZE: usize = 104;
/// The attr layout written (`PERF_ATTR_SIZE_VER7`).
pub const ATTR_SIZE: usize = 128;
/// [`ATTR_SIZE`] as the attr's `size` field holds it.
const ATTR_SIZE_FIELD: u32 = 128;
/// `PERF_RECORD_HEADER_TRACING_DATA` (a user record: perf's own, never from the kernel).
pub const RECORD_HEADER_TRACING_DATA: u32 = 66;
/// `PERF_RECORD_FINISHED_ROUND`: every record before the previous round is older than every
/// record after this one.
pub const RECORD_FINISHED_ROUND: u32 = 68;
/// `PERF_RECORD_COMM`.
pub const RECORD_COMM: u32 = 3;
/// `PERF_RECORD_SAMPLE`.
pub const RECORD_SAMPLE: u32 = 9;
/// `PERF_RECORD_LOST`.
pub const RECORD_LOST: u32 = 2;

/// Feature bits (`enum HEADER_FEATURE` in tools/perf/util/header.h).
mod feature {
    pub const TRACING_DATA: u32 = 1;
    pub const HOSTNAME: u32 = 3;
    pub const OSRELEASE: u32 = 4;
    pub const VERSION: u32 = 5;
    pub const ARCH: u32 = 6;
    pub const NRCPUS: u32 = 7;
    pub const CPUDESC: u32 = 8;
    pub const CPUID: u32 = 9;
    pub const CMDLINE: u32 = 11;
    pub const EVENT_DESC: u32 = 12;
}

/// `perf_event_attr.sample_type` bits.
pub mod sample {
    /// `PERF_SAMPLE_TID`: pid and tid.
    pub const TID: u64 = 1 << 1;
    /// `PERF_SAMPLE_TIME`.
    pub const TIME: u64 = 1 << 2;
    /// `PERF_SAMPLE_ID`.
    pub const ID: u64 = 1 << 6;
    /// `PERF_SAMPLE_CPU`: cpu and a reserved word.
    pub const CPU: u64 = 1 << 7;
    /// `PERF_SAMPLE_PERIOD`.
    pub const PERIOD: u64 = 1 << 8;
    /// `PERF_SAMPLE_RAW`: the tracepoint record.
    pub const RAW: u64 = 1 << 10;
    /// `PERF_SAMPLE_IDENTIFIER`: the id first, whatever the event.
    pub const IDENTIFIER: u64 = 1 << 16;
}

/// `perf_event_attr` flag bits (the bitfield word at offset 40).
pub mod flag {
    /// Off until enabled.
    pub const DISABLED: u64 = 1 << 0;
    /// Children inherit the event.
    pub const INHERIT: u64 = 1 << 1;
    /// COMM records.
    pub const COMM: u64 = 1 << 9;
    /// FORK/EXIT records.
    pub const TASK: u64 = 1 << 13;
    /// Wake up at `wakeup_watermark` bytes instead of every `wakeup_events` samples.
    pub const WATERMARK: u64 = 1 << 14;
    /// `sample_id` trailer on non-sample records.
    pub const SAMPLE_ID_ALL: u64 = 1 << 18;
    /// `clockid` is used for the sample time.
    pub const USE_CLOCKID: u64 = 1 << 25;
}

/// The parts of a `perf_event_attr` a tracepoint recording sets; the rest are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerfEventAttr {
    /// `type` (`PERF_TYPE_TRACEPOINT` = 2).
    pub kind: u32,
    /// `config`: the tracepoint id.
    pub config: u64,
    /// `sample_period`.
    pub sample_period: u64,
    /// `sample_type`.
    pub sample_type: u64,
    /// `read_format`.
    pub read_format: u64,
    /// The flag bits ([`flag`]).
    pub flags: u64,
    /// `wakeup_events` / `wakeup_watermark`.
    pub wakeup: u32,
    /// `clockid` (with [`flag::USE_CLOCKID`]).
    pub clockid: i32,
}

impl PerfEventAttr {
    /// The attr in the kernel's byte layout ([`ATTR_SIZE`] bytes, little-endian).
    pub fn to_bytes(&self) -> [u8; ATTR_SIZE] {
        let mut b = [0u8; ATTR_SIZE];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &self.kind.to_le_bytes());
        put(4, &ATTR_SIZE_FIELD.to_le_bytes());
        put(8, &self.config.to_le_bytes());
        put(16, &self.sample_period.to_le_bytes());
        put(24, &self.sample_type.to_le_bytes());
        put(32, &self.read_format.to_le_bytes());
        put(40, &self.flags.to_le_bytes());
        put(48, &self.wakeup.to_le_bytes());
        put(92, &self.clockid.to_le_bytes());
        b
    }
}

/// One event of the file: its attr, its name and the sample ids the kernel gave its fds.
#[derive(Clone, Debug)]
pub struct AttrEntry {
    /// The attr.
    pub attr: PerfEventAttr,
    /// `sys:event`.
    pub name: String,
    /// The kernel's ids of every fd opened for it (`PERF_EVENT_IOC_ID`).
    pub ids: Vec<u64>,
}

/// What a perf.data holds besides its records.
#[derive(Clone, Debug, Default)]
pub struct PerfDataMeta {
    /// The events.
    pub attrs: Vec<AttrEntry>,
    /// The tracefs texts (formats, header_page, printk formats) for the tracing data.
    pub tracing: Metadata,
    /// `HEADER_HOSTNAME`.
    pub hostname: String,
    /// `HEADER_OSRELEASE` (`uname -r`).
    pub osrelease: String,
    /// `HEADER_VERSION`: the writing tool.
    pub version: String,
    /// `HEADER_ARCH` (`uname -m`).
    pub arch: String,
    /// `HEADER_NRCPUS`: CPUs available and online.
    pub cpus: (u32, u32),
    /// `HEADER_CPUDESC`: the CPU's model name; not written when empty.
    pub cpudesc: String,
    /// `HEADER_CPUID`, as perf's x86 `get_cpuid` writes it: `vendor,family,model,stepping`
    /// (`GenuineIntel,6,60,3`); not written when empty. `perf kvm stat report` reads it to
    /// name exit reasons (Intel: VMX, AMD: SVM); without it, perf falls back to the CPU of
    /// the machine that reads the file, or fails with "Failed to look up CPU type".
    pub cpuid: String,
    /// `HEADER_CMDLINE`: the recording's command line.
    pub cmdline: Vec<String>,
}

/// perf's tracing data (`tools/perf/util/trace-event-info.c`, version 0.6): the same items as
/// a trace.dat v6 before its CPU data, with `cmdlines` as the saved cmdlines.
pub fn tracing_data(meta: &Metadata, cmdlines: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 << 10);
    b.extend_from_slice(b"\x17\x08\x44tracing0.6\0");
    b.push(0); // little endian
    b.push(8); // sizeof(long)
    b.extend_from_slice(&meta.page_size.to_le_bytes());
    b.extend_from_slice(b"header_page\0");
    put_sized64(&mut b, &meta.header_page);
    b.extend_from_slice(b"header_event\0");
    put_sized64(&mut b, &meta.header_event);
    b.extend_from_slice(&u32_of(meta.ftrace_formats.len()).to_le_bytes());
    for f in &meta.ftrace_formats {
        put_sized64(&mut b, f);
    }
    b.extend_from_slice(&u32_of(meta.event_formats.len()).to_le_bytes());
    for (system, formats) in &meta.event_formats {
        b.extend_from_slice(system.as_bytes());
        b.push(0);
        b.extend_from_slice(&u32_of(formats.len()).to_le_bytes());
        for f in formats {
            put_sized64(&mut b, f);
        }
    }
    b.extend_from_slice(&u32_of(meta.kallsyms.len()).to_le_bytes());
    b.extend_from_slice(&meta.kallsyms);
    b.extend_from_slice(&u32_of(meta.printk_formats.len()).to_le_bytes());
    b.extend_from_slice(&meta.printk_formats);
    put_sized64(&mut b, cmdlines);
    b
}

fn put_sized64(b: &mut Vec<u8>, data: &[u8]) {
    b.extend_from_slice(&(data.len() as u64).to_le_bytes());
    b.extend_from_slice(data);
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A record: `perf_event_header` (type, misc, size) and its body (the size must fit 16 bits).
pub fn record(kind: u32, misc: u16, body: &[u8]) -> Vec<u8> {
    let size = u16::try_from(body.len() + 8).unwrap_or(u16::MAX);
    let mut r = Vec::with_capacity(body.len() + 8);
    r.extend_from_slice(&kind.to_le_bytes());
    r.extend_from_slice(&misc.to_le_bytes());
    r.extend_from_slice(&size.to_le_bytes());
    r.extend_from_slice(&body[..usize::from(size) - 8]);
    r
}

/// A `PERF_RECORD_COMM` for a thread that existed before the recording (perf synthesizes the
/// same at start), with a zero `sample_id` trailer of `id_words` words.
pub fn comm_record(pid: i32, tid: i32, comm: &str, id_words: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + id_words * 8);
    body.extend_from_slice(&pid.to_le_bytes());
    body.extend_from_slice(&tid.to_le_bytes());
    let name = comm.as_bytes();
    let name = &name[..name.len().min(15)];
    body.extend_from_slice(name);
    body.push(0);
    while body.len() % 8 != 0 {
        body.push(0);
    }
    // The sample_id trailer: pid/tid as the kernel would fill them, time 0 (before any sample).
    for w in 0..id_words {
        if w == 0 {
            body.extend_from_slice(&pid.to_le_bytes());
            body.extend_from_slice(&tid.to_le_bytes());
        } else {
            body.extend_from_slice(&0u64.to_le_bytes());
        }
    }
    record(RECORD_COMM, 0, &body)
}

/// What the writer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerfDataSummary {
    /// Records written (the tracing-data record and round markers included).
    pub records: u64,
    /// Bytes of the data section.
    pub data_bytes: u64,
    /// File size.
    pub file_bytes: u64,
    /// Checkpoints committed (the last one by `finish`).
    pub checkpoints: u64,
}

/// A perf.data writer (see the [module documentation](self)).
pub struct PerfDataWriter {
    file: File,
    path: PathBuf,
    meta: PerfDataMeta,
    data_off: u64,
    /// Bytes of the data section on disk.
    data_len: u64,
    /// Bytes of the tracing-data record that starts the data section.
    tracing_record: u64,
    /// The tracing data (stored again as a feature by `finish`).
    tracing: Vec<u8>,
    /// Records not yet on disk.
    pending: Vec<u8>,
    summary: PerfDataSummary,
}

/// Records are written once this many bytes are pending (and at every checkpoint).
const FLUSH_AT: usize = 1 << 20;

impl PerfDataWriter {
    /// Creates `path` (mode 0600, truncated): header, attrs with their ids, and the tracing
    /// data record, committed at once (a file killed right after holds the event formats).
    pub fn create(path: &Path, meta: PerfDataMeta, cmdlines: &[u8]) -> Result<Self, WriteError> {
        let file = super::create_private(path)?;
        let mut head = vec![0u8; FILE_HEADER_SIZE];
        // Ids first, then the attrs pointing at them.
        let mut ids_at = Vec::with_capacity(meta.attrs.len());
        for a in &meta.attrs {
            ids_at.push((head.len() as u64, a.ids.len() as u64 * 8));
            for id in &a.ids {
                head.extend_from_slice(&id.to_le_bytes());
            }
        }
        let attrs_off = head.len() as u64;
        for (a, (off, size)) in meta.attrs.iter().zip(&ids_at) {
            head.extend_from_slice(&a.attr.to_bytes());
            head.extend_from_slice(&off.to_le_bytes());
            head.extend_from_slice(&size.to_le_bytes());
        }
        let attrs_size = head.len() as u64 - attrs_off;
        let data_off = head.len() as u64;
        let mut w = Self {
            file,
            path: path.to_path_buf(),
            meta,
            data_off,
            data_len: 0,
            tracing_record: 0,
            tracing: Vec::new(),
            pending: Vec::new(),
            summary: PerfDataSummary::default(),
        };
        w.write_header(&mut head[..], attrs_off, attrs_size, 0, &[])?;
        w.write_at(0, &head)?;
        // The tracing data record: a 16-byte record, then the data padded to 8 bytes, whose
        // aligned size the record states (perf_event__synthesize_tracing_data).
        let data = tracing_data(&w.meta.tracing, cmdlines);
        let aligned = data.len().next_multiple_of(8);
        let mut body = Vec::with_capacity(8 + aligned);
        body.extend_from_slice(&u32_of(aligned).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        let mut rec = record(RECORD_HEADER_TRACING_DATA, 0, &body);
        rec.extend_from_slice(&data);
        rec.resize(16 + aligned, 0);
        w.tracing_record = rec.len() as u64;
        w.tracing = data;
        w.pending.extend_from_slice(&rec);
        w.summary.records += 1;
        w.checkpoint()?;
        Ok(w)
    }

    /// Appends one record (header included) as the kernel or [`record`] made it.
    pub fn write_record(&mut self, rec: &[u8]) -> Result<(), WriteError> {
        self.pending.extend_from_slice(rec);
        self.summary.records += 1;
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends a `PERF_RECORD_FINISHED_ROUND`.
    pub fn finished_round(&mut self) -> Result<(), WriteError> {
        self.write_record(&record(RECORD_FINISHED_ROUND, 0, &[]))
    }

    /// Bytes written to the file so far (pending records included).
    pub fn bytes_written(&self) -> u64 {
        self.data_off + self.data_len + self.pending.len() as u64
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flush(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = self.data_off + self.data_len;
        let pending = std::mem::take(&mut self.pending);
        self.write_at(at, &pending)?;
        self.data_len += pending.len() as u64;
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }

    /// Writes the pending records and commits them: the header's data size now covers them.
    pub fn checkpoint(&mut self) -> Result<(), WriteError> {
        self.flush()?;
        self.write_at(48, &self.data_len.to_le_bytes())?;
        self.summary.checkpoints += 1;
        Ok(())
    }

    /// Writes the feature sections after the data and the final header.
    pub fn finish(mut self) -> Result<PerfDataSummary, WriteError> {
        self.checkpoint()?;
        let features = self.features();
        let table_at = self.data_off + self.data_len;
        let mut table = Vec::with_capacity(features.len() * 16);
        let mut contents = Vec::new();
        let mut at = table_at + features.len() as u64 * 16;
        for (_, bytes) in &features {
            table.extend_from_slice(&at.to_le_bytes());
            table.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            contents.extend_from_slice(bytes);
            at += bytes.len() as u64;
        }
        table.extend_from_slice(&contents);
        self.write_at(table_at, &table)?;
        let bits: Vec<u32> = features.iter().map(|(bit, _)| *bit).collect();
        let mut head = vec![0u8; FILE_HEADER_SIZE];
        let attrs_off = self.meta.attrs.iter().map(|a| a.ids.len() as u64 * 8).sum::<u64>()
            + FILE_HEADER_SIZE as u64;
        let attrs_size = self.data_off - attrs_off;
        self.write_header(&mut head, attrs_off, attrs_size, self.tracing_record, &bits)?;
        self.write_at(0, &head)?;
        self.file.sync_data().map_err(|source| WriteError::Write {
            path: self.path.clone(),
            offset: at,
            source,
        })?;
        self.summary.data_bytes = self.data_len;
        self.summary.file_bytes = at;
        Ok(self.summary)
    }

    /// The header, its data section starting `skip` bytes into the data (past the tracing
    /// record once the feature holds the formats).
    fn write_header(
        &self,
        head: &mut [u8],
        attrs_off: u64,
        attrs_size: u64,
        skip: u64,
        features: &[u32],
    ) -> Result<(), WriteError> {
        let mut put = |at: usize, v: u64| head[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(8, FILE_HEADER_SIZE as u64);
        put(16, ATTR_SIZE as u64 + 16);
        put(24, attrs_off);
        put(32, attrs_size);
        put(40, self.data_off + skip);
        put(48, self.data_len.saturating_sub(skip));
        head[..8].copy_from_slice(b"PERFILE2");
        for bit in features {
            let word = 72 + (*bit as usize / 64) * 8;
            let mut w = u64::from_le_bytes(head[word..word + 8].try_into().unwrap_or([0; 8]));
            w |= 1 << (bit % 64);
            head[word..word + 8].copy_from_slice(&w.to_le_bytes());
        }
        Ok(())
    }

    /// The feature sections, in bit order.
    fn features(&self) -> Vec<(u32, Vec<u8>)> {
        let m = &self.meta;
        let mut out = vec![
            (feature::TRACING_DATA, self.tracing.clone()),
            (feature::HOSTNAME, perf_string(&m.hostname)),
            (feature::OSRELEASE, perf_string(&m.osrelease)),
            (feature::VERSION, perf_string(&m.version)),
            (feature::ARCH, perf_string(&m.arch)),
        ];
        let mut cpus = m.cpus.0.to_le_bytes().to_vec();
        cpus.extend_from_slice(&m.cpus.1.to_le_bytes());
        out.push((feature::NRCPUS, cpus));
        if !m.cpudesc.is_empty() {
            out.push((feature::CPUDESC, perf_string(&m.cpudesc)));
        }
        if !m.cpuid.is_empty() {
            out.push((feature::CPUID, perf_string(&m.cpuid)));
        }
        let mut cmdline = u32_of(m.cmdline.len()).to_le_bytes().to_vec();
        for arg in &m.cmdline {
            cmdline.extend_from_slice(&perf_string(arg));
        }
        out.push((feature::CMDLINE, cmdline));
        let mut desc = u32_of(m.attrs.len()).to_le_bytes().to_vec();
        desc.extend_from_slice(&u32_of(ATTR_SIZE).to_le_bytes());
        for a in &m.attrs {
            desc.extend_from_slice(&a.attr.to_bytes());
            desc.extend_from_slice(&u32_of(a.ids.len()).to_le_bytes());
            desc.extend_from_slice(&perf_string(&a.name));
            for id in &a.ids {
                desc.extend_from_slice(&id.to_le_bytes());
            }
        }
        out.push((feature::EVENT_DESC, desc));
        out
    }

    fn write_at(&self, at: u64, bytes: &[u8]) -> Result<(), WriteError> {
        self.file.write_all_at(bytes, at).map_err(|source: io::Error| WriteError::Write {
            path: self.path.clone(),
            offset: at,
            source,
        })
    }
}

/// perf's `do_write_string`: a u32 length (the string, its NUL and padding to 64 bytes), then
/// the bytes.
fn perf_string(s: &str) -> Vec<u8> {
    let len = (s.len() + 1).next_multiple_of(64);
    let mut b = u32_of(len).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b.resize(4 + len, 0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::tests::test_metadata;

    #[test]
    fn attrs_have_the_kernel_layout() {
        let a = PerfEventAttr {
            kind: 2,
            config: 1234,
            sample_period: 1,
            sample_type: sample::IDENTIFIER | sample::RAW,
            read_format: 0,
            flags: flag::DISABLED | flag::SAMPLE_ID_ALL,
            wakeup: 7,
            clockid: 1,
        };
        let b = a.to_bytes();
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 128);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 1234);
        assert_eq!(u64::from_le_bytes(b[40..48].try_into().unwrap()), 1 | 1 << 18);
        assert_eq!(i32::from_le_bytes(b[92..96].try_into().unwrap()), 1);
    }

    #[test]
    fn strings_are_padded_to_64() {
        let s = perf_string("kvm:kvm_exit");
        assert_eq!(u32::from_le_bytes(s[..4].try_into().unwrap()), 64);
        assert_eq!(s.len(), 68);
        assert_eq!(&s[4..16], b"kvm:kvm_exit");
        assert!(s[16..].iter().all(|b| *b == 0));
    }

    #[test]
    fn tracing_data_starts_like_perfs() {
        let t = tracing_data(&test_metadata(1), b"1 init\n");
        assert!(t.starts_with(b"\x17\x08\x44tracing0.6\0\0\x08"));
        assert!(t.ends_with(b"\x07\0\0\0\0\0\0\x001 init\n"));
    }
}
