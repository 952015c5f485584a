//! Writing trace-cmd's trace.dat, version 7, with zstd-compressed CPU data.
//!
//! [`TraceDatWriter`] takes the tracefs texts (header_page, header_event, format files,
//! printk formats, cmdlines, the trace clock) once, then raw ring-buffer pages per CPU as they
//! arrive, and writes a file that `trace-cmd report` (3.1+) and vmxray's readers read. Files are
//! little-endian with an 8-byte `long` (the recorder's x86-64 hosts); pages are stored as given.
//!
//! # Layout, and what a killed recording leaves
//!
//! A v7 file is a fixed header followed by sections; the OPTIONS sections form a chain through
//! their DONE option, and the CPU data of the top buffer is described by a BUFFER option that
//! lists, per CPU, the offset of a compressed chunk list (`u32 count`, then `{u32 zsize,
//! u32 usize, zstd frame}` × count). trace-cmd writes CPU data only at the end, from temporary
//! files; we write it as it arrives so that a recording killed with SIGKILL still leaves a file
//! that reads up to its last checkpoint:
//!
//! ```text
//!  header | "zstd" | ->OPT1 | STRINGS | HEADER_INFO | FTRACE_EVENTS | EVENT_FORMATS | KALLSYMS
//!  | PRINTK | CMDLINES | OPT1 (formats, clock, uname, ..., DONE -> latest checkpoint OPT)
//!  | BUFFER section header | [cnt0] c0 gap0 [cnt1] c1 gap1 c0 gap0 OPTk c1 gap1 ... c0 gap0 OPTn
//!                             \_____________ CPU0 list: c0, gap, c0, gap, c0 _____________/
//! ```
//!
//! CPUs' chunks interleave in the file. Each CPU's chunk list stays contiguous for a reader
//! because every real chunk is followed by a 16-byte *gap chunk* (`usize` 0) whose payload is a
//! zstd **skippable frame** spanning everything up to that CPU's next chunk (other CPUs' chunks,
//! checkpoint OPTIONS). A reader that decompresses it gets zero bytes; a reader that indexes
//! chunks by uncompressed offset never selects it. Gap headers and counts are patched in place
//! (one `pwrite` each) once the next chunk exists.
//!
//! A checkpoint ([`TraceDatWriter::checkpoint`]) flushes partial chunks, patches the counts,
//! appends an OPTIONS section holding a BUFFER option for everything written so far (plus a fresh
//! CMDLINES section when given), and then patches OPT1's DONE to point at it: a single 8-byte
//! write is the commit point. After SIGKILL a reader therefore sees every event up to the last
//! checkpoint (the recorder checkpoints every second), and the chunks written after it are
//! unreferenced bytes. [`TraceDatWriter::finish`] is a last checkpoint that also stores the
//! per-CPU `stats` (CPUSTAT options).

pub mod convert;
pub mod encode;
pub mod page;
pub mod perfdata;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Section and option ids (trace-cmd's `enum tracecmd_option` / file sections).
mod id {
    pub const DONE: u16 = 0;
    pub const CPUSTAT: u16 = 2;
    pub const BUFFER: u16 = 3;
    pub const TRACECLOCK: u16 = 4;
    pub const UNAME: u16 = 5;
    pub const VERSION: u16 = 9;
    pub const CPUCOUNT: u16 = 8;
    pub const TRACEID: u16 = 11;
    pub const STRINGS: u16 = 15;
    pub const HEADER_INFO: u16 = 16;
    pub const FTRACE_EVENTS: u16 = 17;
    pub const EVENT_FORMATS: u16 = 18;
    pub const KALLSYMS: u16 = 19;
    pub const PRINTK: u16 = 20;
    pub const CMDLINES: u16 = 21;
}

/// `TRACECMD_SEC_FL_COMPRESS`.
const SECTION_COMPRESSED: u16 = 1;
/// Magic of a zstd skippable frame (RFC 8878 §3.1.2), used as the payload of gap chunks.
const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Bytes reserved after each chunk for the gap chunk that links it to the CPU's next chunk:
/// `{u32 zsize, u32 usize = 0}` and a skippable frame header `{u32 magic, u32 len}`.
const GAP_PLACEHOLDER: [u8; 16] = [0; 16];

/// The descriptions stored in the STRINGS section, and their ids (byte offsets).
const STRINGS: &[&str] = &[
    "headers",
    "ftrace events",
    "events format",
    "kallsyms",
    "printk",
    "command lines",
    "options",
    "buffer flyrecord ",
    "strings",
];

fn string_id(name: &str) -> u32 {
    let mut offset = 0usize;
    for s in STRINGS {
        if *s == name {
            return u32::try_from(offset).unwrap_or(0);
        }
        offset += s.len() + 1;
    }
    0
}

/// The texts a trace.dat carries besides the CPU data, as read from tracefs.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// Sub-buffer ("page") size of the CPU data, from `events/header_page`.
    pub page_size: u32,
    /// `events/header_page`.
    pub header_page: Vec<u8>,
    /// `events/header_event`.
    pub header_event: Vec<u8>,
    /// The `format` files of the `ftrace` system (trace-cmd stores them all).
    pub ftrace_formats: Vec<Vec<u8>>,
    /// The `format` files of the recorded events, grouped by system.
    pub event_formats: Vec<(String, Vec<Vec<u8>>)>,
    /// `/proc/kallsyms` text (may be empty: KVM events need no symbols).
    pub kallsyms: Vec<u8>,
    /// `printk_formats` text.
    pub printk_formats: Vec<u8>,
    /// The `trace_clock` file text, with the selected clock in `[brackets]`.
    pub trace_clock: String,
    /// `uname -s -n -r -v -m`.
    pub uname: String,
    /// The writing tool and its version.
    pub version: String,
    /// Number of CPUs (the data of CPUs `0..cpus` can be written).
    pub cpus: u32,
    /// The TRACEID option (any value that identifies the recording).
    pub trace_id: u64,
}

impl Metadata {
    /// The selected clock's name (`mono` for `local global [mono] ...`).
    pub fn clock_name(&self) -> &str {
        let t = self.trace_clock.trim();
        match (t.find('['), t.find(']')) {
            (Some(a), Some(b)) if a < b => &t[a + 1..b],
            _ => t,
        }
    }
}

/// How to write.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// zstd level for the CPU data (1 is fastest; trace-cmd uses 3).
    pub level: i32,
    /// Pages per compressed chunk (trace-cmd's `PAGES_IN_CHUNK` is 10).
    pub pages_per_chunk: usize,
    /// The most bytes a gap chunk may span before the idle CPU's list is re-linked by an empty
    /// chunk at the next checkpoint (gap sizes are 32-bit; keep well below 4 GiB).
    pub max_gap: u32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { level: 1, pages_per_chunk: 10, max_gap: 1 << 30 }
    }
}

/// Writing a trace.dat failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file could not be created.
    #[error("Cannot create {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A write failed.
    #[error("Cannot write {path} at offset {offset:#x}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// zstd failed.
    #[error("Cannot compress {what}")]
    Compress {
        /// What was being compressed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A page of the wrong size was given.
    #[error("Page of {len} bytes for CPU {cpu}; the file's page size is {page_size}")]
    PageSize {
        /// The CPU.
        cpu: u32,
        /// The page's length.
        len: usize,
        /// The file's page size.
        page_size: u32,
    },
    /// A CPU outside `0..cpus`.
    #[error("CPU {cpu} is out of range: the file has {cpus} CPUs")]
    Cpu {
        /// The CPU.
        cpu: u32,
        /// The CPU count.
        cpus: u32,
    },
    /// A section or chunk does not fit the format's 32-bit sizes.
    #[error("{what} of {len} bytes does not fit trace.dat's 32-bit size")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        len: usize,
    },
}

/// What the writer did, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Pages written per CPU.
    pub pages: Vec<u64>,
    /// Uncompressed bytes of CPU data.
    pub raw_bytes: u64,
    /// File size.
    pub file_bytes: u64,
    /// Checkpoints committed (the last one by `finish`).
    pub checkpoints: u64,
}

#[derive(Default)]
struct CpuStream {
    /// Offset of the list's `u32 count`, once the CPU has data.
    head: Option<u64>,
    /// Complete chunk entries (real chunks and the gaps between them).
    count: u32,
    /// Count as last written to the file.
    count_on_disk: u32,
    /// End of the last real chunk.
    data_end: u64,
    /// Offset of the gap placeholder after the last real chunk.
    gap_at: Option<u64>,
    /// Uncompressed pages waiting for a chunk.
    pending: Vec<u8>,
    pages: u64,
}

/// A trace.dat v7 writer (see the [module documentation](self) for the layout).
pub struct TraceDatWriter {
    file: File,
    path: PathBuf,
    meta: Metadata,
    opts: WriterOptions,
    compressor: zstd::bulk::Compressor<'static>,
    /// End of the file (everything is appended there).
    pos: u64,
    /// Offset of OPT1's DONE value (patched at each checkpoint).
    opt1_done_value_at: u64,
    /// Offset of the BUFFER section header.
    buffer_section_at: u64,
    cmdlines_at: u64,
    cpus: Vec<CpuStream>,
    summary: WriteSummary,
    scratch: Vec<u8>,
}

/// Creates `path` for writing, truncated, readable by its owner only (mode 0600): traces hold
/// guest data.
pub(crate) fn create_private(path: &Path) -> Result<std::fs::File, WriteError> {
    let create_err = |source| WriteError::Create { path: path.to_path_buf(), source };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(create_err)?;
    // An existing file keeps its mode through O_TRUNC: force 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(create_err)?;
    Ok(file)
}

impl TraceDatWriter {
    /// Creates `path` (mode 0600, truncated) and writes everything but the CPU data.
    pub fn create(path: &Path, meta: Metadata, opts: WriterOptions) -> Result<Self, WriteError> {
        let file = create_private(path)?;
        let compressor = zstd::bulk::Compressor::new(opts.level)
            .map_err(|source| WriteError::Compress { what: "(zstd init)", source })?;
        let cpus = (0..meta.cpus).map(|_| CpuStream::default()).collect();
        let mut w = Self {
            file,
            path: path.to_path_buf(),
            meta,
            opts,
            compressor,
            pos: 0,
            opt1_done_value_at: 0,
            buffer_section_at: 0,
            cmdlines_at: 0,
            cpus,
            summary: WriteSummary::default(),
            scratch: Vec::new(),
        };
        w.summary.pages = vec![0; w.cpus.len()];
        w.write_prologue()?;
        Ok(w)
    }

    /// The metadata the file was created with.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Bytes written to the file so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_prologue(&mut self) -> Result<(), WriteError> {
        let mut b = Vec::with_capacity(4096);
        b.extend_from_slice(b"\x17\x08\x44tracing7\0");
        b.push(0); // little endian
        b.push(8); // sizeof(long)
        put32(&mut b, self.meta.page_size);
        b.extend_from_slice(b"zstd\0");
        b.extend_from_slice(zstd::zstd_safe::version_string().as_bytes());
        b.push(0);
        let first_options_ptr = b.len();
        put64(&mut b, 0);
        self.append(&b)?;

        // STRINGS first: a reader scanning sections finds the descriptions even in a killed file.
        let mut strings = Vec::new();
        for s in STRINGS {
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
        }
        self.write_section(id::STRINGS, "strings", &strings, false)?;

        let mut headers = Vec::new();
        headers.extend_from_slice(b"header_page\0");
        put64(&mut headers, len64(&self.meta.header_page));
        headers.extend_from_slice(&self.meta.header_page);
        headers.extend_from_slice(b"header_event\0");
        put64(&mut headers, len64(&self.meta.header_event));
        headers.extend_from_slice(&self.meta.header_event);
        let headers_at = self.write_section(id::HEADER_INFO, "headers", &headers, true)?;

        let mut ftrace = Vec::new();
        put32(&mut ftrace, u32_len(self.meta.ftrace_formats.len(), "ftrace formats")?);
        for f in &self.meta.ftrace_formats {
            put64(&mut ftrace, len64(f));
            ftrace.extend_from_slice(f);
        }
        let ftrace_at = self.write_section(id::FTRACE_EVENTS, "ftrace events", &ftrace, true)?;

        let mut events = Vec::new();
        put32(&mut events, u32_len(self.meta.event_formats.len(), "event systems")?);
        for (system, formats) in &self.meta.event_formats {
            events.extend_from_slice(system.as_bytes());
            events.push(0);
            put32(&mut events, u32_len(formats.len(), "event formats")?);
            for f in formats {
                put64(&mut events, len64(f));
                events.extend_from_slice(f);
            }
        }
        let events_at = self.write_section(id::EVENT_FORMATS, "events format", &events, true)?;

        let mut kallsyms = Vec::new();
        put32(&mut kallsyms, u32_len(self.meta.kallsyms.len(), "kallsyms")?);
        kallsyms.extend_from_slice(&self.meta.kallsyms);
        let kallsyms_at = self.write_section(id::KALLSYMS, "kallsyms", &kallsyms, true)?;

        let mut printk = Vec::new();
        put32(&mut printk, u32_len(self.meta.printk_formats.len(), "printk formats")?);
        printk.extend_from_slice(&self.meta.printk_formats);
        let printk_at = self.write_section(id::PRINTK, "printk", &printk, true)?;

        self.cmdlines_at = self.write_cmdlines(b"")?;

        let opt1_at = self.pos;
        let mut o = Vec::new();
        for (option, at) in [
            (id::HEADER_INFO, headers_at),
            (id::FTRACE_EVENTS, ftrace_at),
            (id::EVENT_FORMATS, events_at),
            (id::KALLSYMS, kallsyms_at),
            (id::PRINTK, printk_at),
            (id::CMDLINES, self.cmdlines_at),
        ] {
            put_option(&mut o, option, &at.to_le_bytes());
        }
        let mut clock = self.meta.trace_clock.trim_end().as_bytes().to_vec();
        clock.push(b'\n');
        clock.push(0);
        put_option(&mut o, id::TRACECLOCK, &clock);
        put_option(&mut o, id::UNAME, &cstr(&self.meta.uname));
        put_option(&mut o, id::VERSION, &cstr(&self.meta.version));
        put_option(&mut o, id::TRACEID, &self.meta.trace_id.to_le_bytes());
        put_option(&mut o, id::CPUCOUNT, &self.meta.cpus.to_le_bytes());
        let done_at_in_body = o.len() + 6;
        put_option(&mut o, id::DONE, &0u64.to_le_bytes());
        self.opt1_done_value_at =
            self.write_section(id::DONE, "options", &o, false)? + 16 + done_at_in_body as u64;
        self.patch(first_options_ptr as u64, &opt1_at.to_le_bytes())?;

        // The BUFFER section: its size is patched at each checkpoint to cover all data so far.
        self.buffer_section_at = self.pos;
        let mut h = Vec::new();
        section_header(&mut h, id::BUFFER, SECTION_COMPRESSED, "buffer flyrecord ", 0);
        self.append(&h)?;
        Ok(())
    }

    fn write_cmdlines(&mut self, cmdlines: &[u8]) -> Result<u64, WriteError> {
        let mut c = Vec::with_capacity(cmdlines.len() + 8);
        put64(&mut c, len64(cmdlines));
        c.extend_from_slice(cmdlines);
        self.write_section(id::CMDLINES, "command lines", &c, true)
    }

    /// Appends a section and returns its offset.
    fn write_section(
        &mut self,
        section: u16,
        description: &str,
        body: &[u8],
        compress: bool,
    ) -> Result<u64, WriteError> {
        let at = self.pos;
        let mut out = Vec::with_capacity(body.len() / 2 + 32);
        if compress {
            let frame = zstd::bulk::compress(body, 3).map_err(|source| WriteError::Compress {
                what: description_static(section),
                source,
            })?;
            section_header(&mut out, section, SECTION_COMPRESSED, description, 8 + len64(&frame));
            put32(&mut out, u32_len(frame.len(), "compressed section")?);
            put32(&mut out, u32_len(body.len(), "section")?);
            out.extend_from_slice(&frame);
        } else {
            section_header(&mut out, section, 0, description, len64(body));
            out.extend_from_slice(body);
        }
        self.append(&out)?;
        Ok(at)
    }

    /// Adds one raw ring-buffer page of `cpu` (exactly `page_size` bytes).
    pub fn write_page(&mut self, cpu: u32, page: &[u8]) -> Result<(), WriteError> {
        let cpus = self.meta.cpus;
        let page_size = self.meta.page_size;
        if page.len() != page_size as usize {
            return Err(WriteError::PageSize { cpu, len: page.len(), page_size });
        }
        let stream = self.cpus.get_mut(cpu as usize).ok_or(WriteError::Cpu { cpu, cpus })?;
        stream.pending.extend_from_slice(page);
        stream.pages += 1;
        self.summary.raw_bytes += u64::from(page_size);
        if stream.pending.len() >= page_size as usize * self.opts.pages_per_chunk {
            self.flush_chunk(cpu as usize)?;
            self.relink_idle_cpus()?;
        }
        Ok(())
    }

    /// Compresses and appends the pending pages of one CPU as a chunk.
    fn flush_chunk(&mut self, cpu: usize) -> Result<(), WriteError> {
        if self.cpus[cpu].pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.cpus[cpu].pending);
        let frame = self
            .compressor
            .compress(&pending)
            .map_err(|source| WriteError::Compress { what: "CPU data", source })?;
        let usize_ = u32_len(pending.len(), "chunk")?;
        self.append_chunk(cpu, usize_, &frame)?;
        let mut pending = pending;
        pending.clear();
        self.cpus[cpu].pending = pending;
        Ok(())
    }

    /// Appends one chunk of `cpu` (and the gap placeholder after it), and closes the previous
    /// gap of that CPU over everything written since.
    fn append_chunk(&mut self, cpu: usize, usize_: u32, frame: &[u8]) -> Result<(), WriteError> {
        let zsize = u32_len(frame.len(), "compressed chunk")?;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        if self.cpus[cpu].head.is_none() {
            // A CPU's list starts page-aligned, as trace-cmd's do.
            let page = u64::from(self.meta.page_size.max(1));
            let aligned = self.pos.div_ceil(page) * page;
            out.resize(usize::try_from(aligned - self.pos).unwrap_or(0), 0);
            self.cpus[cpu].head = Some(aligned);
            put32(&mut out, 0);
        }
        let chunk_at = self.pos + out.len() as u64;
        put32(&mut out, zsize);
        put32(&mut out, usize_);
        out.extend_from_slice(frame);
        let data_end = self.pos + out.len() as u64;
        out.extend_from_slice(&GAP_PLACEHOLDER);
        self.append(&out)?;
        self.scratch = out;

        if let Some(gap_at) = self.cpus[cpu].gap_at {
            // The previous gap now spans [gap_at, chunk_at): a skippable frame over it.
            let span = chunk_at - gap_at;
            let gap_zsize = u32::try_from(span - 8).map_err(|_| WriteError::TooLarge {
                what: "gap",
                len: usize::try_from(span).unwrap_or(usize::MAX),
            })?;
            let mut g = Vec::with_capacity(16);
            put32(&mut g, gap_zsize);
            put32(&mut g, 0);
            put32(&mut g, ZSTD_SKIPPABLE_MAGIC);
            put32(&mut g, gap_zsize - 8);
            self.patch(gap_at, &g)?;
            self.cpus[cpu].count += 1;
        }
        let stream = &mut self.cpus[cpu];
        stream.count += 1;
        stream.data_end = data_end;
        stream.gap_at = Some(data_end);
        Ok(())
    }

    /// Gap sizes are 32-bit: a CPU that stays idle while others write `max_gap` bytes gets an
    /// empty chunk (an empty skippable frame, 24 bytes with its gap) to re-link its list.
    fn relink_idle_cpus(&mut self) -> Result<(), WriteError> {
        for cpu in 0..self.cpus.len() {
            if let Some(gap_at) = self.cpus[cpu].gap_at
                && self.pos - gap_at > u64::from(self.opts.max_gap)
            {
                let mut empty = Vec::with_capacity(8);
                put32(&mut empty, ZSTD_SKIPPABLE_MAGIC);
                put32(&mut empty, 0);
                self.append_chunk(cpu, 0, &empty)?;
            }
        }
        Ok(())
    }

    /// Commits everything written so far: a reader of the file (even if this process is killed
    /// right after) sees all pages given before this call. `cmdlines` (the `saved_cmdlines`
    /// text) replaces the stored pid→comm table when given.
    pub fn checkpoint(&mut self, cmdlines: Option<&[u8]>) -> Result<(), WriteError> {
        self.commit(cmdlines, &[])
    }

    fn commit(&mut self, cmdlines: Option<&[u8]>, cpustats: &[String]) -> Result<(), WriteError> {
        for cpu in 0..self.cpus.len() {
            self.flush_chunk(cpu)?;
        }
        self.relink_idle_cpus()?;
        for cpu in 0..self.cpus.len() {
            let stream = &self.cpus[cpu];
            if let Some(head) = stream.head
                && stream.count != stream.count_on_disk
            {
                let count = stream.count;
                self.patch(head, &count.to_le_bytes())?;
                self.cpus[cpu].count_on_disk = count;
            }
        }
        if let Some(cmdlines) = cmdlines {
            self.cmdlines_at = self.write_cmdlines(cmdlines)?;
        }
        let mut o = Vec::new();
        let mut buffer = Vec::new();
        put64(&mut buffer, self.buffer_section_at);
        buffer.push(0); // top instance: empty name
        buffer.extend_from_slice(self.meta.clock_name().as_bytes());
        buffer.push(0);
        put32(&mut buffer, self.meta.page_size);
        let with_data: Vec<(u32, u64, u64)> = self
            .cpus
            .iter()
            .enumerate()
            .filter_map(|(cpu, s)| {
                let head = s.head?;
                Some((u32::try_from(cpu).ok()?, head, s.data_end - head - 4))
            })
            .collect();
        put32(&mut buffer, u32_len(with_data.len(), "CPU list")?);
        for (cpu, head, size) in &with_data {
            put32(&mut buffer, *cpu);
            put64(&mut buffer, *head);
            // trace-cmd's quirk: the size excludes the list's leading u32 count.
            put64(&mut buffer, *size);
        }
        put_option(&mut o, id::BUFFER, &buffer);
        put_option(&mut o, id::CMDLINES, &self.cmdlines_at.to_le_bytes());
        for stat in cpustats {
            put_option(&mut o, id::CPUSTAT, &cstr(stat));
        }
        put_option(&mut o, id::DONE, &0u64.to_le_bytes());
        let options_at = self.write_section(id::DONE, "options", &o, false)?;
        // The BUFFER section spans all data (and the embedded checkpoint OPTIONS) so far, so
        // a reader scanning sections skips it whole.
        let body = self.pos - self.buffer_section_at - 16;
        self.patch(self.buffer_section_at + 8, &body.to_le_bytes())?;
        // The commit point.
        self.patch(self.opt1_done_value_at, &options_at.to_le_bytes())?;
        self.summary.checkpoints += 1;
        Ok(())
    }

    /// Writes the last checkpoint with the per-CPU `stats` texts (one per CPU, `CPU: n\n`
    /// prefixed as trace-cmd stores them) and closes the file.
    pub fn finish(
        mut self,
        cmdlines: Option<&[u8]>,
        cpustats: &[String],
    ) -> Result<WriteSummary, WriteError> {
        self.commit(cmdlines, cpustats)?;
        self.file.sync_data().map_err(|source| WriteError::Write {
            path: self.path.clone(),
            offset: self.pos,
            source,
        })?;
        self.summary.pages = self.cpus.iter().map(|s| s.pages).collect();
        self.summary.file_bytes = self.pos;
        Ok(self.summary)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.file.write_all_at(bytes, self.pos).map_err(|source| WriteError::Write {
            path: self.path.clone(),
            offset: self.pos,
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn patch(&mut self, at: u64, bytes: &[u8]) -> Result<(), WriteError> {
        self.file.write_all_at(bytes, at).map_err(|source| WriteError::Write {
            path: self.path.clone(),
            offset: at,
            source,
        })
    }
}

fn description_static(section: u16) -> &'static str {
    match section {
        id::HEADER_INFO => "headers",
        id::FTRACE_EVENTS => "ftrace events",
        id::EVENT_FORMATS => "events format",
        id::KALLSYMS => "kallsyms",
        id::PRINTK => "printk",
        id::CMDLINES => "command lines",
        _ => "section",
    }
}

fn section_header(out: &mut Vec<u8>, section: u16, flags: u16, description: &str, size: u64) {
    out.extend_from_slice(&section.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    put32(out, string_id(description));
    put64(out, size);
}

fn put_option(out: &mut Vec<u8>, option: u16, data: &[u8]) {
    out.extend_from_slice(&option.to_le_bytes());
    put32(out, u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(data);
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn len64(b: &[u8]) -> u64 {
    b.len() as u64
}

fn u32_len(len: usize, what: &'static str) -> Result<u32, WriteError> {
    u32::try_from(len).map_err(|_| WriteError::TooLarge { what, len })
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests;
