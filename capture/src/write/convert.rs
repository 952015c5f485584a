//! Converting any input whose event formats are known into trace.dat v7 (zstd), readable by
//! `trace-cmd report` (3.1+), KernelShark and vmxray with the same events.
//!
//! ```text
//!  trace.dat v6 / v7 (none, zlib, zstd) --pages, verbatim----------.
//!  tracefs tree / *.bin page dumps      --pages, verbatim-----------+--> TraceDatWriter --> OUT.dat
//!  perf.data (tracepoint samples)       --raw payloads -> PageBuilder'     (temp name, renamed
//!  text + --formats DIR                 --fields -> records -> PageBuilder'  when complete)
//!  text alone (ftrace, report, perf script, vmxray simulate) --> ConvertError::NoFormats
//! ```
//!
//! # What is lossless and what is re-encoded
//!
//! - **trace.dat and tracefs inputs hold ring-buffer pages**: every page of the top buffer is
//!   copied byte for byte (record headers, TIME_EXTEND/TIME_STAMP records, discarded events,
//!   the commit word with its missed-events flags and the stored lost count), only re-chunked
//!   into zstd. The header_page/header_event texts, every format file, the printk formats and
//!   the saved cmdlines are the input's own texts, stored unchanged, so trace-cmd decodes the
//!   records exactly as it decodes the input. CPUSTAT (per-CPU `stats`) is carried over.
//!   `-B` instance buffers are copied the same way: the writer writes one buffer, so each
//!   instance is appended after it in a BUFFER section of its own and described by a BUFFER
//!   option in one more OPTIONS section chained after the writer's last (module `append`);
//!   [`ConvertSummary::stats`] counts the top buffer's events, as readers of buffer 0 do. One
//!   exception: a trace.dat DATE/OFFSET timestamp offset is folded into each page's header
//!   timestamp (the writer has no OFFSET option), so readers see the same times.
//! - **perf.data holds raw tracepoint payloads** (`PERF_SAMPLE_RAW`, the same bytes the ring
//!   buffer would hold, from `common_type`): they are re-encoded into pages with
//!   [`PageBuilder`] per CPU, the way the kernel writes them — first event of a page at delta 0
//!   with the full time in the page header, later ones as deltas, a TIME_EXTEND when a delta
//!   exceeds 2^27−1, a new page when the next record would not fit. Payloads keep perf's
//!   trailing pad bytes (at most 4; the format's offsets ignore them). The formats, header
//!   texts and printk formats come from perf's TRACING_DATA. The pid a trace.dat reader shows
//!   is `common_pid` from the payload (perf shows the sample's tid; they are the same thread).
//! - **Comms** go to the cmdlines section: the input's own text for page inputs; for perf the
//!   tracing data's cmdlines overridden by the comm each sampled pid had (a pid whose comm
//!   changed during the capture keeps its last one: counted in
//!   [`ConvertSummary::comm_changes`]).
//! - **Clock** goes to TRACECLOCK (and the BUFFER option): the input buffer's clock; `perf`
//!   for perf.data (`local_clock()`, the same base as ftrace's `local`).
//! - **Lost events stay visible.** Page inputs keep their flags. perf's LOST records become
//!   the missed-events flag of the next page of that CPU, with the count stored after the data
//!   (`RB_MISSED_STORED`; a page is closed early to make room for it) and the page header
//!   timestamp set to the LOST record's time, so readers report the loss at the same time and
//!   CPU as perf did (two losses in a row: an empty flagged page for the first). No CPUSTAT is
//!   invented for perf.
//! - **Text** (ftrace, `trace-cmd report`, `perf script`, `vmxray simulate`) carries no format
//!   files, so by default it is refused with [`ConvertError::NoFormats`], which says to
//!   convert the binary trace it came from. With [`ConvertOptions::formats`] (a tracefs copy
//!   whose `events/` has the formats of the traced kernel) each event is **re-encoded**: its
//!   fields under the kernel's names ([`EventKind::kernel_fields`], the inverse of the typed
//!   decode) are written at the format's offsets (`__data_loc`/`__rel_loc` arrays after the
//!   fixed part), `common_type` is the format's id, `common_pid` the event's pid, and the
//!   common flags/preempt count (which decoded events do not keep) are 0. Fields the text did
//!   not carry are written as 0 and counted per `system:event:field` in
//!   [`ConvertSummary::fields_zeroed`]; an event with no format stops the conversion
//!   ([`ConvertError::NoFormatFor`]; skipped and counted with `permissive`). Text stamps are
//!   µs, and events at equal times come back ordered by CPU (trace.dat readers merge that way).
//!   The clock is the text's when it names one, else `local` (ftrace's default). Give the
//!   formats of the kernel the text is from: a field that kernel did not have but the given
//!   format has is written as 0 and then decodes as a value (a 6.1-style `kvm_entry` read with
//!   6.18 formats gains `intr_info 0`), which rules that look at it may act on. Likewise the
//!   kvmmmu role bits a text rendering does not show (`vmxray_role_known`, e.g. `guest_mode`)
//!   are 0 in the record and read back as known; they are counted as `…:role bits outside
//!   0x…` in [`ConvertSummary::fields_zeroed`], and the CLI prints every such entry. The same
//!   holds for the other words a print shows in part (`vmxray_e_known` of the IOAPIC events,
//!   `vmxray_address_known`/`vmxray_data_known` of `kvm_msi_set_irq`, `vmxray_masks_known` of
//!   `kvm_pic_set_irq`: `…:e bits outside 0x…`, …). `fast_page_fault.ret` is written in the
//!   target format's `RET_PF_*` numbering (`vmxray_events::spte::RetNumbering`).
//!
//! Not carried over, and listed in [`ConvertSummary::not_converted`] when the input had it:
//! the TSC2NSEC option (an `x86-tsc` trace keeps its cycle counts; trace-cmd then shows cycles
//! where it showed ns for the input). Never carried: kallsyms (KVM events need no symbols)
//! and the host/guest GUEST/TIME_SHIFT options.
//! Big-endian traces are refused (the writer writes little-endian files).
//!
//! # Errors and `--permissive`
//!
//! Every page is validated before it is written: walked record by record ([`PageRecords`])
//! and every record decoded with its format, exactly what a strict read of the input would
//! do. In strict mode the first problem stops the conversion with the reader's error (input,
//! CPU and offset); with [`ConvertOptions::permissive`] the bad page (perf: the bad sample) is
//! left out and counted in [`ReadStats::skipped`]. The output is written to a temporary name
//! in the output's directory and renamed only when complete, so an error never leaves a
//! half-written file behind; the file is mode 0600 like the recorder's.
//!
//! ```
//! use std::path::Path;
//! use vmxray_capture::write::convert::{ConvertOptions, convert};
//!
//! let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real");
//! let out = std::env::temp_dir().join(format!("vmxray-doc-convert-{}.dat", std::process::id()));
//! let summary = convert(&samples.join("perf/lm.perf.data"), &out, &ConvertOptions::default()).unwrap();
//! assert_eq!(summary.stats.events, 62);
//! let events = vmxray_capture::open(&out, Default::default()).unwrap().count();
//! assert_eq!(events, 62);
//! std::fs::remove_file(&out).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmxray_events::codes::MmuPageRole;
use vmxray_events::spte::{PageFaultRet, RetNumbering};
use vmxray_events::{Comm, EventKind, FieldValue, Fields, KnownEvent};

use crate::bin::Endian;
use crate::bin::format::{EventFormat, EventFormats, FieldLayout, PageLayout, RecordError};
use crate::bin::page::{PageError, PageItem, PageRecords, TS_SHIFT};
use crate::read::decode::parse_cmdlines;
use crate::read::open::{InputKind, Magic};
use crate::read::perfdata::PerfDataReader;
use crate::read::text::TextReader;
use crate::read::tracedat::{SavedTexts, TraceDat};
use crate::read::tracefs_tree::{TracefsError, TracefsInput, TracefsTree};
use crate::read::{
    EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, ReadStats,
    TraceMeta, input_name,
};
use crate::write::page::{PageBuilder, data_record_len};
use crate::write::{Metadata, TraceDatWriter, WriteError, WriteSummary, WriterOptions};

/// How to convert.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Leave out bad pages (perf: bad samples) and count them instead of stopping.
    pub permissive: bool,
    /// How the trace.dat is written.
    pub writer: WriterOptions,
    /// A tracefs tree (its root or its `events/` directory) whose format files encode the
    /// events of a text input; without it, text is refused.
    pub formats: Option<PathBuf>,
}

/// How the events reached the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Ring-buffer pages copied byte for byte (trace.dat, tracefs inputs).
    PagesCopied,
    /// Raw tracepoint payloads packed into new pages (perf.data).
    PagesBuilt,
    /// Records encoded from decoded fields with given format files, packed into new pages
    /// (text with [`ConvertOptions::formats`]).
    RecordsEncoded,
}

/// What a conversion did.
#[derive(Debug)]
pub struct ConvertSummary {
    /// The input as its reader describes it.
    pub meta: TraceMeta,
    /// How the events were carried over.
    pub method: Method,
    /// Events, lost-event markers, skipped pages or samples, unknown event ids.
    pub stats: ReadStats,
    /// What the input had that the output does not.
    pub not_converted: Vec<NotConverted>,
    /// pids whose comm changed during the capture (perf, text; the last comm is kept).
    pub comm_changes: u64,
    /// Text with `--formats`: fields a format has but the input's event did not carry,
    /// written as 0, by `system:event:field`.
    pub fields_zeroed: BTreeMap<String, u64>,
    /// What the writer wrote.
    pub written: WriteSummary,
}

/// Something of the input that the output does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotConverted {
    /// The TSC2NSEC option: timestamps stay in TSC cycles for trace-cmd.
    Tsc2Nsec,
}

impl std::fmt::Display for NotConverted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tsc2Nsec => f.write_str("TSC2NSEC (trace-cmd will show TSC cycles, not ns)"),
        }
    }
}

/// A conversion failed; nothing is left at the output path.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A text input: it has no format files, so records cannot be rebuilt.
    #[error(
        "{input}: {kind} carries no event format files, so its events cannot be written as \
         binary records; convert the trace.dat, perf.data or tracefs copy it was made from"
    )]
    NoFormats {
        /// The input.
        input: Arc<str>,
        /// What it is.
        kind: &'static str,
    },
    /// A directory that is no tracefs tree.
    #[error(
        "{input}: not a tracefs tree (no events/header_page) nor page dumps beside a \
         `tracefs/` tree"
    )]
    NotTracefs {
        /// The input.
        input: Arc<str>,
    },
    /// The input could not be read or is malformed (the error names the input and place).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The trace was written by a big-endian kernel.
    #[error("{input}: big-endian trace data cannot be converted (the writer is little-endian)")]
    BigEndian {
        /// The input.
        input: Arc<str>,
    },
    /// An event on a CPU beyond the trace's CPU count.
    #[error("{input}: event on CPU {cpu}, but the trace has {cpus} CPUs")]
    CpuOutOfRange {
        /// The input.
        input: Arc<str>,
        /// The event's CPU.
        cpu: u32,
        /// The CPU count.
        cpus: u32,
    },
    /// A record that does not fit in a page.
    #[error("{input}: event at {ts} on CPU {cpu} needs {len} bytes, a page holds {capacity}")]
    EventTooLarge {
        /// The input.
        input: Arc<str>,
        /// The CPU.
        cpu: u32,
        /// Its timestamp.
        ts: u64,
        /// The record's length.
        len: usize,
        /// A page's data capacity.
        capacity: usize,
    },
    /// Writing the output failed (the error names the file).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A text event whose format the `--formats` tree does not have.
    #[error("{input}: no format for {system}:{name} in {formats}")]
    NoFormatFor {
        /// The input.
        input: Arc<str>,
        /// The event's system.
        system: String,
        /// The event's name.
        name: String,
        /// The formats tree.
        formats: PathBuf,
    },
    /// The complete output could not be moved to its name.
    #[error("Cannot rename {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The output.
        to: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Converts `input` (`-` is stdin) into a trace.dat v7 at `output`.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    let tmp = temp_name(output);
    let result = convert_into(input, &tmp, opts).and_then(|summary| {
        std::fs::rename(&tmp, output).map_err(|source| ConvertError::Rename {
            from: tmp.clone(),
            to: output.to_owned(),
            source,
        })?;
        Ok(summary)
    });
    if result.is_err() {
        // Nothing half-written stays behind; the file may not exist yet.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.vmxray-convert-PID.tmp`: same directory (so the rename is atomic), hidden.
fn temp_name(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = format!(".{name}.vmxray-convert-{}.tmp", std::process::id());
    match output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

fn convert_into(
    input: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    let name = input_name(input);
    let read_opts = ReadOptions { permissive: opts.permissive, ..ReadOptions::default() };
    let io_err = |e| ReadError::new(&name, Location::Input, ReadErrorKind::Io(e));
    if input.as_os_str() == "-" {
        let mut bytes = Vec::new();
        io::stdin().read_to_end(&mut bytes).map_err(io_err)?;
        return match Magic::of(&bytes) {
            Some(Magic::TraceDat) => {
                from_tracedat(&TraceDat::from_bytes(Arc::clone(&name), bytes)?, out, opts)
            }
            Some(Magic::PerfData) => {
                let reader = PerfDataReader::from_bytes(Arc::clone(&name), bytes, read_opts)?;
                from_perf(reader, out, opts)
            }
            None => match &opts.formats {
                Some(formats) => {
                    let text = TextReader::new(name, io::Cursor::new(bytes), read_opts);
                    from_text(Box::new(text), formats, out, opts)
                }
                None => Err(ConvertError::NoFormats { input: name, kind: "text on stdin" }),
            },
        };
    }
    match crate::read::open::detect(input) {
        Ok(InputKind::Binary(Magic::TraceDat)) => from_tracedat(&TraceDat::open(input)?, out, opts),
        Ok(InputKind::Binary(Magic::PerfData)) => {
            from_perf(PerfDataReader::open(input, read_opts)?, out, opts)
        }
        Ok(InputKind::Tracefs(found)) => from_tracefs(&found, name, out, opts),
        Ok(InputKind::Text) => match &opts.formats {
            Some(formats) => from_text(crate::open(input, read_opts)?, formats, out, opts),
            None => Err(ConvertError::NoFormats { input: name, kind: text_kind(input) }),
        },
        Err(_) if input.is_dir() => Err(ConvertError::NotTracefs { input: name }),
        Err(e) => Err(e.into()),
    }
}

/// Names a text input for the error (the text reader recognizes it from its lines).
fn text_kind(input: &Path) -> &'static str {
    let Ok(mut reader) =
        crate::open(input, ReadOptions { permissive: true, ..ReadOptions::default() })
    else {
        return "this input (not trace.dat, perf.data or a tracefs copy)";
    };
    let _ = reader.next();
    match reader.meta().format {
        InputFormat::FtraceText => "ftrace text",
        InputFormat::TraceCmdText => "`trace-cmd report` text",
        InputFormat::PerfScriptText => "`perf script` text",
        InputFormat::TraceDat | InputFormat::PerfData | InputFormat::TracefsDir => "text",
    }
}

/// One system's format files, as [`Metadata::event_formats`] holds them.
type SystemFormats = (String, Vec<Vec<u8>>);

/// The formats grouped as trace.dat stores them: the `ftrace` system apart, the others by
/// system, each format file's own text.
fn format_texts(formats: &EventFormats) -> (Vec<Vec<u8>>, Vec<SystemFormats>) {
    let mut ftrace = Vec::new();
    let mut systems: Vec<SystemFormats> = Vec::new();
    for f in formats.iter() {
        let text = f.text.as_bytes().to_vec();
        if &*f.system == "ftrace" {
            ftrace.push(text);
        } else if let Some((_, list)) = systems.iter_mut().find(|(s, _)| **s == *f.system) {
            list.push(text);
        } else {
            systems.push((f.system.to_string(), vec![text]));
        }
    }
    (ftrace, systems)
}

fn metadata(
    texts: &SavedTexts,
    formats: &EventFormats,
    page_size: u32,
    clock: &str,
    uname: Option<&str>,
    cpus: u32,
) -> Metadata {
    let (ftrace_formats, event_formats) = format_texts(formats);
    Metadata {
        page_size,
        header_page: texts.header_page.clone(),
        header_event: texts.header_event.clone(),
        ftrace_formats,
        event_formats,
        kallsyms: Vec::new(),
        printk_formats: texts.printk.clone(),
        trace_clock: format!("[{clock}]"),
        uname: uname.unwrap_or_default().to_owned(),
        version: format!("vmxray {} convert", env!("CARGO_PKG_VERSION")),
        cpus: cpus.max(1),
        trace_id: 0,
    }
}

/// A UNAME text carrying the kernel release an input without one (perf's OSRELEASE) names,
/// where trace.dat readers look for it (`uname -s -n -r ...`: the third word).
fn uname_of(meta: &TraceMeta) -> Option<String> {
    meta.kernel.as_ref().map(|release| format!("Linux - {release}"))
}

/// Where a validated page of a CPU goes (the writer, or an appended instance buffer).
type WritePage<'w> = dyn FnMut(u32, &[u8]) -> Result<(), ConvertError> + 'w;

/// Validates pages against the layout and formats, and writes the good ones.
#[derive(Clone)]
struct PageSink<'a> {
    input: Arc<str>,
    layout: PageLayout,
    formats: &'a EventFormats,
    permissive: bool,
    /// Added to each page's header timestamp (trace.dat DATE/OFFSET).
    ts_offset: i64,
    stats: ReadStats,
    page: Vec<u8>,
}

impl PageSink<'_> {
    /// Checks one page as a strict read would: the records walk, each decodes.
    fn check(&self, page: &[u8]) -> Result<PageCounts, (usize, ReadErrorKind)> {
        let mut counts = PageCounts::default();
        let page_size = self.layout.page_size as usize;
        if page.len() < page_size {
            let e = PageError::Truncated { len: page_size, available: page.len() };
            return Err((page.len(), e.into()));
        }
        let records = PageRecords::new(&self.layout, page).map_err(|e| (0, e.into()))?;
        for item in records {
            match item.map_err(|e| (e.page_offset(), e.clone().into()))? {
                PageItem::Lost { count, .. } => counts.lost = Some(count),
                PageItem::Event { payload, offset, .. } => match self.formats.decode(payload) {
                    Ok(_) => counts.events += 1,
                    Err(RecordError::UnknownId(id)) => {
                        counts.events += 1;
                        counts.unknown.push(id);
                    }
                    Err(e) => return Err((offset, e.into())),
                },
            }
        }
        Ok(counts)
    }

    /// Writes `page` of `cpu` if it is sound; `at` locates its first byte for messages.
    fn page(
        &mut self,
        write: &mut WritePage<'_>,
        cpu: u32,
        page: &[u8],
        at: impl Fn(usize) -> Location,
    ) -> Result<(), ConvertError> {
        match self.check(page) {
            Ok(counts) => {
                if let Some(count) = counts.lost {
                    // Readers yield the marker as an event too.
                    self.stats.note_lost(cpu, count);
                    self.stats.events += 1;
                }
                self.stats.events += counts.events;
                for id in counts.unknown {
                    *self.stats.unknown_events.entry(format!("id {id}")).or_default() += 1;
                }
                if self.ts_offset == 0 {
                    write(cpu, page)?;
                } else {
                    self.page.clear();
                    self.page.extend_from_slice(page);
                    let e = self.layout.endian;
                    let at = self.layout.timestamp_offset as usize;
                    let ts = e.u64(&self.page, at).unwrap_or(0).wrapping_add_signed(self.ts_offset);
                    if let Some(slot) = self.page.get_mut(at..at + 8) {
                        slot.copy_from_slice(&e.put_u64(ts));
                    }
                    write(cpu, &self.page)?;
                }
                Ok(())
            }
            Err((offset, kind)) => self.problem(ReadError::new(&self.input, at(offset), kind)),
        }
    }

    fn problem(&mut self, err: ReadError) -> Result<(), ConvertError> {
        if self.permissive {
            self.stats.note_skipped(err);
            Ok(())
        } else {
            Err(err.into())
        }
    }
}

#[derive(Default)]
struct PageCounts {
    events: u64,
    lost: Option<Option<u64>>,
    unknown: Vec<u32>,
}

fn refuse_big_endian(input: &Arc<str>, endian: Endian) -> Result<(), ConvertError> {
    match endian {
        Endian::Little => Ok(()),
        Endian::Big => Err(ConvertError::BigEndian { input: Arc::clone(input) }),
    }
}

/// trace.dat → trace.dat: the first buffer's pages, verbatim.
fn from_tracedat(
    td: &TraceDat,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    let meta = td.meta(0);
    refuse_big_endian(&meta.input, td.endian)?;
    let buffer = td.buffers.first();
    let mut not_converted = Vec::new();
    if td.tsc2nsec.is_some() {
        not_converted.push(NotConverted::Tsc2Nsec);
    }
    let page_size = buffer.map_or(td.page_size, |b| b.page_size);
    let mut layout = td.layout;
    if page_size > layout.data_offset {
        layout.page_size = page_size;
    }
    let last_cpu = td.buffers.iter().flat_map(|b| b.cpus.iter().map(|d| d.cpu)).max();
    let cpu_count = td.cpu_count.unwrap_or(0).max(last_cpu.map_or(0, |c| c + 1));
    let md = metadata(
        &td.texts,
        &td.formats,
        layout.page_size,
        meta.clock.name(),
        td.uname.as_deref(),
        cpu_count,
    );
    let mut writer = TraceDatWriter::create(out, md, opts.writer)?;
    let mut sink = PageSink {
        input: Arc::clone(&meta.input),
        layout,
        formats: &td.formats,
        permissive: opts.permissive,
        ts_offset: td.ts_offset,
        stats: ReadStats::default(),
        page: Vec::new(),
    };
    let mut write = |cpu, page: &[u8]| Ok(writer.write_page(cpu, page)?);
    copy_buffer(td, 0, &mut sink, &mut write)?;
    let mut written = writer.finish(Some(&td.texts.cmdlines), &td.cpu_stats)?;
    // The `-B` instances: appended after the top buffer (see `append`).
    let mut instances = Vec::new();
    if td.buffers.len() > 1 {
        let mut file = append::Appender::open(out, opts.writer.level)?;
        // Their events are not the top buffer's: validated and counted apart.
        let mut isink = PageSink { stats: ReadStats::default(), ..sink.clone() };
        for (index, b) in td.buffers.iter().enumerate().skip(1) {
            if b.page_size > isink.layout.data_offset {
                isink.layout.page_size = b.page_size;
            }
            let at = file.begin_buffer()?;
            let mut cpus = Vec::new();
            let mut current: Option<append::CpuList> = None;
            let mut write = |cpu: u32, page: &[u8]| -> Result<(), ConvertError> {
                if current.as_ref().is_none_or(|c| c.cpu != cpu) {
                    if let Some(done) = current.take() {
                        cpus.push(file.end_cpu(done)?);
                    }
                    current = Some(file.begin_cpu(cpu, b.page_size)?);
                }
                if let Some(list) = current.as_mut() {
                    file.page(list, page)?;
                }
                Ok(())
            };
            copy_buffer(td, index, &mut isink, &mut write)?;
            if let Some(done) = current.take() {
                cpus.push(file.end_cpu(done)?);
            }
            instances.push(file.end_buffer(at, &b.name, b.clock.name(), b.page_size, cpus)?);
        }
        written.file_bytes = file.finish(&instances)?;
        sink.stats.skipped += isink.stats.skipped;
        sink.stats.problems.extend(isink.stats.problems);
    }
    Ok(ConvertSummary {
        meta,
        method: Method::PagesCopied,
        stats: sink.stats,
        not_converted,
        comm_changes: 0,
        fields_zeroed: BTreeMap::new(),
        written,
    })
}

/// Appending `-B` instance buffers to a finished trace.dat v7 (zstd) written by
/// [`TraceDatWriter`], which writes one buffer: each instance gets a BUFFER section of its own
/// (page-aligned chunk lists per CPU, as trace-cmd lays them out), and one more OPTIONS
/// section holding their BUFFER options is chained after the writer's last one by patching
/// that one's DONE (the same commit-by-one-write the writer uses for checkpoints).
mod append {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use crate::write::WriteError;

    /// trace-cmd's `PAGES_IN_CHUNK`.
    const PAGES_PER_CHUNK: usize = 10;

    pub(super) struct Appender {
        file: File,
        path: PathBuf,
        pos: u64,
        level: i32,
        buffer_desc: u32,
        options_desc: u32,
        /// Where the value of the last OPTIONS section's DONE is.
        last_done_at: u64,
    }

    /// One CPU's chunk list being written.
    pub(super) struct CpuList {
        pub cpu: u32,
        head: u64,
        count: u32,
        size: u64,
        page_size: usize,
        pending: Vec<u8>,
    }

    /// A written instance, for its BUFFER option.
    pub(super) struct Instance {
        section: u64,
        name: String,
        clock: String,
        page_size: u32,
        cpus: Vec<(u32, u64, u64)>,
    }

    fn bad(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("unexpected layout: {what}"))
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
    }

    impl Appender {
        fn err(&self, offset: u64, source: io::Error) -> WriteError {
            WriteError::Write { path: self.path.clone(), offset, source }
        }

        fn read(&self, at: u64, len: u64) -> Result<Vec<u8>, WriteError> {
            let n = usize::try_from(len).map_err(|_| self.err(at, bad("size")))?;
            let mut b = vec![0; n];
            self.file.read_exact_at(&mut b, at).map_err(|e| self.err(at, e))?;
            Ok(b)
        }

        /// Opens the file the writer finished, finds the STRINGS ids and the last DONE.
        pub(super) fn open(path: &Path, level: i32) -> Result<Self, WriteError> {
            let io_err = |source| WriteError::Write { path: path.to_owned(), offset: 0, source };
            let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err)?;
            let pos = file.metadata().map_err(io_err)?.len();
            let mut a = Self {
                file,
                path: path.to_owned(),
                pos,
                level,
                buffer_desc: 0,
                options_desc: 0,
                last_done_at: 0,
            };
            // Header: magic + "tracing" + "7\0", endian, long size, u32 page size (18 bytes),
            // then "zstd\0<version>\0" and the u64 offset of the first OPTIONS section.
            let head = a.read(0, pos.min(64))?;
            let mut at = 18;
            for _ in 0..2 {
                let nul = head.get(at..).and_then(|t| t.iter().position(|b| *b == 0));
                at += nul.ok_or_else(|| a.err(0, bad("compression name")))? + 1;
            }
            let first_options = le64(&head, at);
            // The writer puts STRINGS (uncompressed) first, right after that pointer.
            let strings_at = at as u64 + 8;
            let hdr = a.read(strings_at, 16)?;
            if hdr.get(..2) != Some(&15u16.to_le_bytes()[..]) {
                return Err(a.err(strings_at, bad("no STRINGS section first")));
            }
            let strings = a.read(strings_at + 16, le64(&hdr, 8))?;
            let mut offset = 0u32;
            for s in strings.split(|b| *b == 0) {
                match s {
                    b"buffer flyrecord " => a.buffer_desc = offset,
                    b"options" => a.options_desc = offset,
                    _ => {}
                }
                offset += u32::try_from(s.len()).unwrap_or(0) + 1;
            }
            // Follow the OPTIONS chain to its last DONE.
            let mut next = first_options;
            for _ in 0..1_000_000 {
                let hdr = a.read(next, 16)?;
                let body = a.read(next + 16, le64(&hdr, 8))?;
                let mut p = 0usize;
                let mut done = None;
                while let (Some(id), Some(len)) = (body.get(p..p + 2), body.get(p + 2..p + 6)) {
                    let id = u16::from_le_bytes(id.try_into().unwrap_or_default());
                    let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
                    if id == 0 {
                        done = Some(next + 16 + p as u64 + 6);
                        break;
                    }
                    p += 6 + len;
                }
                let done = done.ok_or_else(|| a.err(next, bad("OPTIONS without DONE")))?;
                match le64(&a.read(done, 8)?, 0) {
                    0 => {
                        a.last_done_at = done;
                        return Ok(a);
                    }
                    n => next = n,
                }
            }
            Err(a.err(first_options, bad("OPTIONS chain does not end")))
        }

        fn append(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
            self.file.write_all_at(bytes, self.pos).map_err(|e| self.err(self.pos, e))?;
            self.pos += bytes.len() as u64;
            Ok(())
        }

        fn patch(&self, at: u64, bytes: &[u8]) -> Result<(), WriteError> {
            self.file.write_all_at(bytes, at).map_err(|e| self.err(at, e))
        }

        /// Starts a BUFFER section (compressed data); returns its offset.
        pub(super) fn begin_buffer(&mut self) -> Result<u64, WriteError> {
            let at = self.pos;
            let mut h = Vec::with_capacity(16);
            h.extend_from_slice(&3u16.to_le_bytes());
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&self.buffer_desc.to_le_bytes());
            h.extend_from_slice(&0u64.to_le_bytes());
            self.append(&h)?;
            Ok(at)
        }

        /// Starts a CPU's chunk list at the next page boundary.
        pub(super) fn begin_cpu(
            &mut self,
            cpu: u32,
            page_size: u32,
        ) -> Result<CpuList, WriteError> {
            let page = u64::from(page_size.max(1));
            let pad = self.pos.div_ceil(page) * page - self.pos;
            self.append(&vec![0; usize::try_from(pad).unwrap_or(0)])?;
            let head = self.pos;
            self.append(&0u32.to_le_bytes())?;
            let page_size = page_size as usize;
            Ok(CpuList { cpu, head, count: 0, size: 0, page_size, pending: Vec::new() })
        }

        /// Adds a page to a CPU's list (a chunk is written every 10 pages).
        pub(super) fn page(&mut self, list: &mut CpuList, page: &[u8]) -> Result<(), WriteError> {
            list.pending.extend_from_slice(page);
            if list.pending.len() >= list.page_size * PAGES_PER_CHUNK {
                self.flush(list)?;
            }
            Ok(())
        }

        fn flush(&mut self, list: &mut CpuList) -> Result<(), WriteError> {
            if list.pending.is_empty() {
                return Ok(());
            }
            let frame = zstd::bulk::compress(&list.pending, self.level)
                .map_err(|source| WriteError::Compress { what: "CPU data", source })?;
            let too_large = |len| WriteError::TooLarge { what: "chunk", len };
            let zsize = u32::try_from(frame.len()).map_err(|_| too_large(frame.len()))?;
            let usize_ =
                u32::try_from(list.pending.len()).map_err(|_| too_large(list.pending.len()))?;
            let mut c = Vec::with_capacity(frame.len() + 8);
            c.extend_from_slice(&zsize.to_le_bytes());
            c.extend_from_slice(&usize_.to_le_bytes());
            c.extend_from_slice(&frame);
            self.append(&c)?;
            list.count += 1;
            list.size += 8 + u64::from(zsize);
            list.pending.clear();
            Ok(())
        }

        /// Ends a CPU's list: (cpu, offset, size without the leading count, as trace-cmd).
        pub(super) fn end_cpu(&mut self, mut list: CpuList) -> Result<(u32, u64, u64), WriteError> {
            self.flush(&mut list)?;
            self.patch(list.head, &list.count.to_le_bytes())?;
            Ok((list.cpu, list.head, list.size))
        }

        /// Ends the BUFFER section started at `at`.
        pub(super) fn end_buffer(
            &mut self,
            at: u64,
            name: &str,
            clock: &str,
            page_size: u32,
            cpus: Vec<(u32, u64, u64)>,
        ) -> Result<Instance, WriteError> {
            self.patch(at + 8, &(self.pos - at - 16).to_le_bytes())?;
            let (name, clock) = (name.to_owned(), clock.to_owned());
            Ok(Instance { section: at, name, clock, page_size, cpus })
        }

        /// Writes the OPTIONS section describing `instances` and chains it (the commit point);
        /// returns the file size.
        pub(super) fn finish(mut self, instances: &[Instance]) -> Result<u64, WriteError> {
            let mut body = Vec::new();
            for i in instances {
                let mut d = Vec::new();
                d.extend_from_slice(&i.section.to_le_bytes());
                d.extend_from_slice(i.name.as_bytes());
                d.push(0);
                d.extend_from_slice(i.clock.as_bytes());
                d.push(0);
                d.extend_from_slice(&i.page_size.to_le_bytes());
                let n = u32::try_from(i.cpus.len()).unwrap_or(u32::MAX);
                d.extend_from_slice(&n.to_le_bytes());
                for (cpu, off, size) in &i.cpus {
                    d.extend_from_slice(&cpu.to_le_bytes());
                    d.extend_from_slice(&off.to_le_bytes());
                    d.extend_from_slice(&size.to_le_bytes());
                }
                let len = u32::try_from(d.len())
                    .map_err(|_| WriteError::TooLarge { what: "BUFFER option", len: d.len() })?;
                body.extend_from_slice(&3u16.to_le_bytes());
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(&d);
            }
            body.extend_from_slice(&0u16.to_le_bytes());
            body.extend_from_slice(&8u32.to_le_bytes());
            body.extend_from_slice(&0u64.to_le_bytes());
            let at = self.pos;
            let mut h = Vec::with_capacity(16 + body.len());
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&self.options_desc.to_le_bytes());
            h.extend_from_slice(&(body.len() as u64).to_le_bytes());
            h.extend_from_slice(&body);
            self.append(&h)?;
            // The commit point: the writer's last OPTIONS now chains to ours.
            self.patch(self.last_done_at, &at.to_le_bytes())?;
            self.file.sync_data().map_err(|e| self.err(self.pos, e))?;
            Ok(self.pos)
        }
    }
}

/// Validates and writes every page of buffer `index` of `td`, CPU by CPU.
fn copy_buffer(
    td: &TraceDat,
    index: usize,
    sink: &mut PageSink<'_>,
    write: &mut WritePage<'_>,
) -> Result<(), ConvertError> {
    let Some(buffer) = td.buffers.get(index) else { return Ok(()) };
    let mut cpus: Vec<u32> = buffer.cpus.iter().map(|d| d.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let step = (sink.layout.page_size as usize).max(1);
    for cpu in cpus {
        for chunk in td.cpu_chunks(index, cpu)? {
            let (base, bytes) = match chunk {
                Ok(c) => c,
                Err(e) => {
                    sink.problem(e)?;
                    continue;
                }
            };
            for (i, page) in bytes.chunks(step).enumerate() {
                let start = base + (i * step) as u64;
                sink.page(write, cpu, page, |off| Location::CpuOffset {
                    cpu,
                    offset: start + off as u64,
                })?;
            }
        }
    }
    Ok(())
}

/// A tracefs tree (or `*.bin` dumps beside one) → trace.dat: the pages, verbatim.
fn from_tracefs(
    found: &TracefsInput,
    name: Arc<str>,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    let read_err = |e: TracefsError| ReadError::new(&name, Location::Input, e);
    let tree = TracefsTree::load(&found.tree).map_err(read_err)?;
    refuse_big_endian(&name, tree.layout.endian)?;
    if found.pages.is_empty() {
        return Err(read_err(TracefsError::NoPages { path: found.tree.clone() }).into());
    }
    let file = |rel: &str| std::fs::read(tree.root.join(rel));
    let header_page = file("events/header_page").map_err(|source| {
        read_err(TracefsError::Io { path: tree.root.join("events/header_page"), source })
    })?;
    let texts = SavedTexts {
        header_page,
        header_event: file("events/header_event").unwrap_or_default(),
        printk: file("printk_formats").unwrap_or_default(),
        cmdlines: file("saved_cmdlines").unwrap_or_default(),
    };
    // Each CPU's pages in file order; several dumps of one CPU are ordered by the time of
    // their first page (the pages of one dump are already in time order).
    let page_size = u64::from(tree.layout.page_size.max(1));
    let mut files = Vec::new();
    let mut by_cpu: BTreeMap<u32, Vec<(u64, usize)>> = BTreeMap::new();
    for pf in &found.pages {
        let io = |source| read_err(TracefsError::Io { path: pf.path.clone(), source });
        let f = File::open(&pf.path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut ts = [0u8; 8];
        let first_ts = match f.read_exact_at(&mut ts, u64::from(tree.layout.timestamp_offset)) {
            Ok(()) => tree.layout.endian.u64(&ts, 0).unwrap_or(0),
            Err(_) => u64::MAX, // shorter than a page header: reported when written
        };
        by_cpu.entry(pf.cpu).or_default().push((first_ts, files.len()));
        let file_name: Arc<str> = pf.path.display().to_string().into();
        files.push((f, size, pf.path.clone(), file_name));
    }
    let mut index: BTreeMap<u32, Vec<(usize, u64)>> = BTreeMap::new();
    for (cpu, mut dumps) in by_cpu {
        dumps.sort_by_key(|(ts, _)| *ts);
        let list = index.entry(cpu).or_default();
        for (_, fi) in dumps {
            let size = files.get(fi).map_or(0, |f| f.1);
            list.extend((0..size.div_ceil(page_size)).map(|i| (fi, i * page_size)));
        }
    }
    let cpus = index.keys().next_back().map_or(1, |c| c + 1);
    let meta = TraceMeta {
        input: Arc::clone(&name),
        format: InputFormat::TracefsDir,
        clock: tree.clock.clone(),
        cpus: Some(cpus),
        kernel: None,
        excerpt: false,
    };
    let md = metadata(&texts, &tree.formats, tree.layout.page_size, tree.clock.name(), None, cpus);
    let mut writer = TraceDatWriter::create(out, md, opts.writer)?;
    let mut sink = PageSink {
        input: Arc::clone(&name),
        layout: tree.layout,
        formats: &tree.formats,
        permissive: opts.permissive,
        ts_offset: 0,
        stats: ReadStats::default(),
        page: Vec::new(),
    };
    let mut buf = Vec::new();
    for (&cpu, list) in &index {
        for &(fi, offset) in list {
            let Some((f, size, path, file_name)) = files.get(fi) else { continue };
            let len = page_size.min(size.saturating_sub(offset));
            buf.resize(usize::try_from(len).unwrap_or(0), 0);
            if let Err(source) = f.read_exact_at(&mut buf, offset) {
                let err = ReadError::new(
                    &name,
                    Location::Offset(offset),
                    TracefsError::Io { path: path.clone(), source },
                );
                sink.problem(err)?;
                continue;
            }
            sink.input = Arc::clone(file_name);
            let mut write = |cpu, page: &[u8]| Ok(writer.write_page(cpu, page)?);
            sink.page(&mut write, cpu, &buf, |off| Location::Offset(offset + off as u64))?;
        }
    }
    let mut cpustats = Vec::new();
    for cpu in 0..cpus {
        if let Ok(text) = std::fs::read_to_string(tree.root.join(format!("per_cpu/cpu{cpu}/stats")))
        {
            cpustats.push(format!("CPU: {cpu}\n{text}"));
        }
    }
    let written = writer.finish(Some(&texts.cmdlines), &cpustats)?;
    Ok(ConvertSummary {
        meta,
        method: Method::PagesCopied,
        stats: sink.stats,
        not_converted: Vec::new(),
        comm_changes: 0,
        fields_zeroed: BTreeMap::new(),
        written,
    })
}

/// Packs one CPU's records into pages the way the kernel's writer does.
#[derive(Debug)]
pub struct CpuPacker {
    layout: PageLayout,
    page: Option<PageBuilder>,
    /// The timestamp the next delta counts from.
    last_ts: u64,
    /// The open page starts with a lost-events flag (its count stored after the data).
    lost_page: Option<Option<u64>>,
}

/// Bytes a data record takes, and a TIME_EXTEND before it when its delta does not fit in 27
/// bits.
fn record_len(payload_len: usize, delta: u64) -> usize {
    let extend = if delta >= 1 << TS_SHIFT { 8 } else { 0 };
    extend + data_record_len(payload_len)
}

impl CpuPacker {
    /// A packer writing pages of `layout`.
    pub fn new(layout: PageLayout) -> Self {
        Self { layout, page: None, last_ts: 0, lost_page: None }
    }

    fn capacity(&self) -> usize {
        let data = self.layout.page_size.saturating_sub(self.layout.data_offset) as usize;
        // Room for the lost count after the data, so that it is stored.
        let reserve = if self.lost_page.is_some() { self.layout.commit_size as usize } else { 0 };
        data.saturating_sub(reserve)
    }

    /// Adds a record at `ts` (not before the previous one); returns a page when one filled.
    /// `Err(len)` when the record cannot fit in any page.
    pub fn event(&mut self, ts: u64, payload: &[u8]) -> Result<Option<Vec<u8>>, usize> {
        let mut full = None;
        if let Some(page) = &self.page {
            let delta = ts.saturating_sub(self.last_ts);
            if ts < self.last_ts
                || page.data_len() + record_len(payload.len(), delta) > self.capacity()
            {
                full = self.flush();
            }
        }
        if self.page.is_none() {
            let mut page = PageBuilder::new(self.layout, ts);
            if let Some(count) = self.lost_page {
                page = page.lost(count);
            }
            self.last_ts = ts;
            self.page = Some(page);
        }
        let delta = ts - self.last_ts;
        let capacity = self.capacity();
        let Some(page) = self.page.as_mut() else { return Ok(full) };
        if page.data_len() + record_len(payload.len(), delta) > capacity {
            return Err(record_len(payload.len(), delta));
        }
        page.push_event(delta, payload);
        self.last_ts = ts;
        Ok(full)
    }

    /// Events were lost at `ts`: the next page starts there with the missed-events flag and
    /// the count. A loss right after another gets its own (empty) page, so readers see both
    /// markers at their own times.
    pub fn lost(&mut self, ts: u64, count: Option<u64>) -> Option<Vec<u8>> {
        let full = self.flush();
        self.lost_page = Some(count);
        self.page = Some(PageBuilder::new(self.layout, ts).lost(count));
        self.last_ts = ts;
        full
    }

    /// The time of the open page's newest record (its last event, or its lost-events marker),
    /// if a page is open: the newest time of the page the next [`CpuPacker::event`],
    /// [`CpuPacker::lost`] or [`CpuPacker::flush`] returns.
    pub fn newest(&self) -> Option<u64> {
        self.page.as_ref().map(|_| self.last_ts)
    }

    /// The open page, if any.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        self.lost_page = None;
        self.page.take().map(PageBuilder::build)
    }
}

/// perf.data → trace.dat: raw payloads packed into pages per CPU.
fn from_perf(
    mut reader: PerfDataReader,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    reader = reader.keep_raw(true);
    let meta = reader.meta().clone();
    let input = Arc::clone(&meta.input);
    let formats = Arc::clone(reader.formats());
    let texts = reader.tracing_texts().clone();
    refuse_big_endian(&input, formats.endian())?;
    let layout = PageLayout::parse(&texts.header_page, Some(&texts.header_event), formats.endian())
        .map_err(|e| ReadError::new(&input, Location::Input, e))?;
    let cpus = meta.cpus.unwrap_or(1).max(1);
    let mut comms: BTreeMap<i32, Comm> = parse_cmdlines(&texts.cmdlines).into_iter().collect();
    comms.remove(&0);
    let mut seen_comm: BTreeMap<i32, Comm> = BTreeMap::new();
    let mut comm_changes = 0;
    let uname = uname_of(&meta);
    let md = metadata(&texts, &formats, layout.page_size, "perf", uname.as_deref(), cpus);
    let mut writer = TraceDatWriter::create(out, md, opts.writer)?;
    let mut packers: Vec<CpuPacker> = (0..cpus).map(|_| CpuPacker::new(layout)).collect();
    let mut skipped = ReadStats::default();
    while let Some(item) = reader.next_raw() {
        let (event, raw) = item?;
        let cpu = event.cpu;
        let Some(packer) = packers.get_mut(cpu as usize) else {
            let err = ConvertError::CpuOutOfRange { input: Arc::clone(&input), cpu, cpus };
            if opts.permissive {
                skipped.skipped += 1;
                continue;
            }
            return Err(err);
        };
        let full = match (&event.kind, raw) {
            (EventKind::Lost { count }, _) => packer.lost(event.ts, *count),
            (_, Some(raw)) => {
                if let Some(comm) = &event.comm {
                    if seen_comm.get(&event.pid).is_some_and(|c| c != comm) {
                        comm_changes += 1;
                    }
                    seen_comm.insert(event.pid, comm.clone());
                }
                match packer.event(event.ts, &raw) {
                    Ok(full) => full,
                    Err(len) => {
                        let capacity = packer.capacity();
                        let err = ConvertError::EventTooLarge {
                            input: Arc::clone(&input),
                            cpu,
                            ts: event.ts,
                            len,
                            capacity,
                        };
                        if opts.permissive {
                            skipped.skipped += 1;
                            continue;
                        }
                        return Err(err);
                    }
                }
            }
            (_, None) => None,
        };
        if let Some(page) = full {
            writer.write_page(cpu, &page)?;
        }
    }
    for (cpu, packer) in (0u32..).zip(packers.iter_mut()) {
        if let Some(page) = packer.flush() {
            writer.write_page(cpu, &page)?;
        }
    }
    comms.extend(seen_comm);
    let mut cmdlines = String::new();
    for (pid, comm) in &comms {
        cmdlines.push_str(&format!("{pid} {comm}\n"));
    }
    let written = writer.finish(Some(cmdlines.as_bytes()), &[])?;
    let mut stats = reader.stats().clone();
    stats.skipped += skipped.skipped;
    Ok(ConvertSummary {
        meta,
        method: Method::PagesBuilt,
        stats,
        not_converted: Vec::new(),
        comm_changes,
        fields_zeroed: BTreeMap::new(),
        written,
    })
}

/// The largest record [`encode_record`] builds (sub-buffers are at most a few pages).
const MAX_RECORD: u32 = 1 << 20;

/// The most CPUs a text input may name (its CPU numbers index per-CPU page lists).
const MAX_TEXT_CPUS: u32 = 1 << 16;

/// Writes `len` low bytes of `v` at `at` (little-endian; big-endian output is refused).
fn put_uint(buf: &mut [u8], at: usize, len: usize, v: u64) {
    let bytes = v.to_le_bytes();
    if let (Some(dst), Some(src)) = (buf.get_mut(at..at + len), bytes.get(..len)) {
        dst.copy_from_slice(src);
    }
}

/// A value's bytes for an array or dynamic field (strings get their NUL back).
fn value_bytes(v: &FieldValue, elem_size: usize) -> Vec<u8> {
    match v {
        FieldValue::Str(s) => {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            b
        }
        FieldValue::Bytes(b) => b.to_vec(),
        FieldValue::Array(a) => {
            let n = elem_size.clamp(1, 8);
            a.iter().flat_map(|x| x.to_le_bytes().into_iter().take(n)).collect()
        }
        FieldValue::U64(x) => x.to_le_bytes().to_vec(),
        FieldValue::I64(x) => x.to_le_bytes().to_vec(),
    }
}

/// Encodes an event as a record of `format`: the inverse of decoding it. `common_type` is
/// the format's id, `common_pid` the event's pid, the other common fields (flags, preempt
/// count, which decoded events do not keep) 0; dynamic arrays follow the fixed part. Returns
/// the names of the fields `fields` lacked (written as 0).
fn encode_record<'f>(
    format: &'f EventFormat,
    pid: i32,
    fields: &Fields,
) -> (Vec<u8>, Vec<&'f str>) {
    let fixed = format
        .fields
        .iter()
        .map(|f| match f.layout {
            FieldLayout::DataLoc { .. } | FieldLayout::RelLoc { .. } => f.offset.saturating_add(4),
            FieldLayout::Flexible { .. } => f.offset,
            FieldLayout::Scalar | FieldLayout::Array { .. } | FieldLayout::Opaque => {
                f.offset.saturating_add(f.size)
            }
        })
        .max()
        .unwrap_or(0);
    // No record is larger than a sub-buffer; an absurd format gives a record the packer
    // refuses, not a huge allocation.
    let fixed = usize::try_from(fixed.min(MAX_RECORD)).unwrap_or(0);
    let mut buf = vec![0u8; fixed];
    let mut missing = Vec::new();
    let mut flexible = Vec::new();
    for f in &format.fields {
        let (at, size) = (f.offset as usize, f.size as usize);
        let value = match &*f.name {
            "common_type" => Some(FieldValue::U64(u64::from(format.id))),
            "common_pid" => Some(FieldValue::I64(i64::from(pid))),
            name if f.is_common() => fields.get(name).cloned().or(Some(FieldValue::U64(0))),
            name => fields.get(name).cloned(),
        };
        let Some(value) = value else {
            missing.push(&*f.name);
            continue;
        };
        match f.layout {
            FieldLayout::Scalar => put_uint(&mut buf, at, size, value.as_u64().unwrap_or(0)),
            FieldLayout::Array { elem_size } => {
                let bytes = value_bytes(&value, elem_size as usize);
                let n = bytes.len().min(size);
                if let (Some(dst), Some(src)) = (buf.get_mut(at..at + n), bytes.get(..n)) {
                    dst.copy_from_slice(src);
                }
            }
            FieldLayout::Opaque => {
                let bytes = value_bytes(&value, 1);
                let n = bytes.len().min(size);
                if let (Some(dst), Some(src)) = (buf.get_mut(at..at + n), bytes.get(..n)) {
                    dst.copy_from_slice(src);
                }
            }
            FieldLayout::DataLoc { elem_size } | FieldLayout::RelLoc { elem_size } => {
                let bytes = value_bytes(&value, elem_size as usize);
                let start = buf.len();
                let rel = matches!(f.layout, FieldLayout::RelLoc { .. });
                let offset = if rel { start.saturating_sub(at + 4) } else { start };
                let loc = (bytes.len().min(0xffff) << 16) | offset.min(0xffff);
                put_uint(&mut buf, at, 4, loc as u64);
                buf.extend_from_slice(&bytes);
            }
            FieldLayout::Flexible { elem_size } => {
                flexible = value_bytes(&value, elem_size as usize);
            }
        }
    }
    buf.extend_from_slice(&flexible);
    (buf, missing)
}

/// Text + format files → trace.dat: each event's fields (typed events through
/// [`EventKind::kernel_fields`]) encoded with its format, packed into pages per CPU.
fn from_text(
    mut reader: Box<dyn EventReader>,
    formats_dir: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, ConvertError> {
    // The tree's root, whether given as the root or as its `events/` directory.
    let root = if formats_dir.join("header_page").is_file() {
        formats_dir.parent().unwrap_or(formats_dir)
    } else {
        formats_dir
    };
    let fname = input_name(formats_dir);
    let tree = TracefsTree::load(root).map_err(|e| ReadError::new(&fname, Location::Input, e))?;
    let meta = reader.meta().clone();
    let name = Arc::clone(&meta.input);
    refuse_big_endian(&name, tree.layout.endian)?;
    let read_file = |rel: &str| std::fs::read(root.join(rel)).unwrap_or_default();
    let texts = SavedTexts {
        header_page: read_file("events/header_page"),
        header_event: read_file("events/header_event"),
        printk: read_file("printk_formats"),
        cmdlines: Vec::new(),
    };
    // Events come in time order, so the CPU count is known only at the end: pages are kept
    // per CPU until then (text inputs are small).
    let clock = if meta.clock.is_ns() && !matches!(meta.clock, crate::Clock::Nanoseconds) {
        meta.clock.name().to_owned()
    } else {
        // Text stamps without a clock name: ftrace's default.
        "local".to_owned()
    };
    let mut packers: Vec<CpuPacker> = Vec::new();
    let mut pages: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut comms: BTreeMap<i32, Comm> = BTreeMap::new();
    let mut comm_changes = 0;
    let mut fields_zeroed: BTreeMap<String, u64> = BTreeMap::new();
    let mut stats = ReadStats::default();
    // Text pasted without its timestamp column: such events keep their place in the input,
    // written at the time of the event before them.
    let mut last_ts = 0;
    for item in reader.by_ref() {
        let mut event = item?;
        if matches!(event.kind, EventKind::Segment { .. }) {
            // The reader's capture boundary is no tracepoint (a trace.dat has one capture).
            continue;
        }
        match event.time() {
            Some(ts) => last_ts = ts,
            None => event.ts = last_ts,
        }
        if event.cpu >= MAX_TEXT_CPUS {
            if opts.permissive {
                stats.skipped += 1;
                continue;
            }
            let (cpu, cpus) = (event.cpu, MAX_TEXT_CPUS);
            return Err(ConvertError::CpuOutOfRange { input: Arc::clone(&name), cpu, cpus });
        }
        let cpu = event.cpu as usize;
        if packers.len() <= cpu {
            packers.resize_with(cpu + 1, || CpuPacker::new(tree.layout));
            pages.resize_with(cpu + 1, Vec::new);
        }
        let (Some(packer), Some(cpu_pages)) = (packers.get_mut(cpu), pages.get_mut(cpu)) else {
            continue;
        };
        let full = if let EventKind::Lost { count } = event.kind {
            stats.note_lost(event.cpu, count);
            packer.lost(event.ts, count)
        } else {
            let Some(format) = tree.formats.find(event.system(), event.name()) else {
                let err = ConvertError::NoFormatFor {
                    input: Arc::clone(&name),
                    system: event.system().to_owned(),
                    name: event.name().to_owned(),
                    formats: formats_dir.to_owned(),
                };
                if opts.permissive {
                    stats.skipped += 1;
                    continue;
                }
                return Err(err);
            };
            let mut fields = event.kind.kernel_fields();
            // Back to the sense of role bit 4 that this format's kernel uses.
            let inverted = format.role_bit4_inverted();
            for (name, value) in &mut fields.0 {
                if &**name == "role"
                    && let FieldValue::U64(v) = value
                {
                    *v = MmuPageRole::bit4_to_or_from_6x(*v, inverted);
                }
            }
            // `fast_page_fault.ret` back to this format's RET_PF_* numbering.
            if let Some(numbering) = RetNumbering::of_print_fmt(&format.print_fmt)
                && event.kind.known() == Some(KnownEvent::FastPageFault)
            {
                for (name, value) in &mut fields.0 {
                    if &**name == "ret"
                        && let Some(ret) = value.as_i64().and_then(|r| i32::try_from(r).ok())
                    {
                        *value =
                            FieldValue::I64(i64::from(numbering.denormalize(PageFaultRet(ret))));
                    }
                }
            }
            let (payload, missing) = encode_record(format, event.pid, &fields);
            for field in missing {
                let key = format!("{}:{}:{field}", format.system, format.name);
                *fields_zeroed.entry(key).or_default() += 1;
            }
            // A word of which the text showed only some bits (an MMU role, an IOAPIC entry, an
            // MSI, PIC masks): the others become 0s that read as known.
            for (name, value) in fields.iter() {
                let Some(word) =
                    name.strip_prefix("vmxray_").and_then(|n| n.strip_suffix("_known"))
                else {
                    continue;
                };
                if let Some(known) = value.as_u64()
                    && format.field(name).is_none()
                {
                    let key =
                        format!("{}:{}:{word} bits outside {known:#x}", format.system, format.name);
                    *fields_zeroed.entry(key).or_default() += 1;
                }
            }
            if let Some(comm) = &event.comm {
                if comms.get(&event.pid).is_some_and(|c| c != comm) {
                    comm_changes += 1;
                }
                comms.insert(event.pid, comm.clone());
            }
            match packer.event(event.ts, &payload) {
                Ok(full) => full,
                Err(len) => {
                    let capacity = packer.capacity();
                    if opts.permissive {
                        stats.skipped += 1;
                        continue;
                    }
                    return Err(ConvertError::EventTooLarge {
                        input: Arc::clone(&name),
                        cpu: event.cpu,
                        ts: event.ts,
                        len,
                        capacity,
                    });
                }
            }
        };
        stats.events += 1;
        cpu_pages.extend(full);
    }
    let read_stats = reader.stats();
    stats.skipped += read_stats.skipped;
    stats.problems.extend(read_stats.problems.iter().cloned());
    for (packer, cpu_pages) in packers.iter_mut().zip(pages.iter_mut()) {
        cpu_pages.extend(packer.flush());
    }
    let cpus = u32::try_from(pages.len()).unwrap_or(u32::MAX).max(1);
    let uname = uname_of(&meta);
    let md = metadata(&texts, &tree.formats, tree.layout.page_size, &clock, uname.as_deref(), cpus);
    let mut writer = TraceDatWriter::create(out, md, opts.writer)?;
    for (cpu, cpu_pages) in (0u32..).zip(&pages) {
        for page in cpu_pages {
            writer.write_page(cpu, page)?;
        }
    }
    let mut cmdlines = String::new();
    for (pid, comm) in comms.iter().filter(|(pid, _)| **pid != 0) {
        cmdlines.push_str(&format!("{pid} {comm}\n"));
    }
    let written = writer.finish(Some(cmdlines.as_bytes()), &[])?;
    Ok(ConvertSummary {
        meta,
        method: Method::RecordsEncoded,
        stats,
        not_converted: Vec::new(),
        comm_changes,
        fields_zeroed,
        written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bin::page::PageStream;

    fn events(layout: &PageLayout, pages: &[Vec<u8>]) -> Vec<(u64, Option<Option<u64>>, usize)> {
        let bytes: Vec<u8> = pages.concat();
        PageStream::new(layout, &bytes, 0)
            .map(|i| match i.unwrap().item {
                PageItem::Event { ts, payload, .. } => (ts, None, payload.len()),
                PageItem::Lost { ts, count } => (ts, Some(count), 0),
            })
            .collect()
    }

    #[test]
    fn packer_writes_deltas_extends_and_new_pages() {
        let layout = PageLayout::default_64(Endian::Little);
        let mut p = CpuPacker::new(layout);
        let mut pages = Vec::new();
        let mut want = Vec::new();
        let mut ts = 1_000_000u64;
        for i in 0..300usize {
            // Every 50th gap needs a TIME_EXTEND (> 2^27 - 1 ns).
            ts += if i % 50 == 49 { 3 << 27 } else { 1000 + i as u64 };
            let payload = vec![u8::try_from(i % 200).unwrap(); 20 + (i % 3) * 4];
            want.push((ts, None, payload.len()));
            pages.extend(p.event(ts, &payload).unwrap());
        }
        pages.extend(p.flush());
        assert!(pages.len() > 1, "300 records of ~30 bytes fill more than one page");
        assert!(pages.iter().all(|pg| pg.len() == 4096));
        assert_eq!(events(&layout, &pages), want);
        // A page's first record is at delta 0 from the page timestamp, as the kernel writes.
        for pg in &pages {
            assert_eq!(u32::from_le_bytes(pg[16..20].try_into().unwrap()) >> 5, 0);
        }
    }

    #[test]
    fn lost_markers_become_flagged_pages_with_counts() {
        let layout = PageLayout::default_64(Endian::Little);
        let mut p = CpuPacker::new(layout);
        let mut pages: Vec<Vec<u8>> = Vec::new();
        pages.extend(p.event(10, &[1; 12]).unwrap());
        pages.extend(p.lost(20, Some(5)));
        pages.extend(p.lost(25, Some(7)));
        pages.extend(p.event(30, &[2; 12]).unwrap());
        pages.extend(p.lost(40, None));
        pages.extend(p.flush());
        assert_eq!(
            events(&layout, &pages),
            [
                (10, None, 12),
                (20, Some(Some(5)), 0),
                (25, Some(Some(7)), 0),
                (30, None, 12),
                (40, Some(None), 0)
            ]
        );
    }

    #[test]
    fn newest_is_the_newest_record_of_the_page_that_closes() {
        let layout = PageLayout::default_64(Endian::Little);
        let newest_parsed = |page: &[u8]| events(&layout, &[page.to_vec()]).last().map(|e| e.0);
        let mut p = CpuPacker::new(layout);
        assert_eq!(p.newest(), None);
        let mut closed = 0;
        let mut ts = 100u64;
        for i in 0..400u64 {
            ts += if i % 60 == 59 { 3 << 27 } else { 700 + i };
            let before = p.newest();
            let page =
                if i % 97 == 96 { p.lost(ts, Some(i)) } else { p.event(ts, &[7; 28]).unwrap() };
            if let Some(page) = page {
                assert_eq!(before, newest_parsed(&page), "record {i}");
                closed += 1;
            }
        }
        let before = p.newest();
        assert_eq!(before, p.flush().as_deref().and_then(newest_parsed));
        assert!(closed > 2);
        assert_eq!(p.newest(), None);
    }

    #[test]
    fn oversized_records_are_refused() {
        let layout = PageLayout::default_64(Endian::Little);
        let mut p = CpuPacker::new(layout);
        assert!(p.event(1, &vec![0; 5000]).is_err());
        // The packer is still usable.
        assert!(p.event(2, &[0; 4]).is_ok());
        assert_eq!(events(&layout, &[p.flush().unwrap()]), [(2, None, 4)]);
    }

    /// A trace.dat with a `-B` instance: lm-v7-zstd.dat converted, plus an instance `inst`
    /// holding the raw lm page on CPU 1 (appended the way the converter appends instances).
    fn with_instance(dir: &Path) -> PathBuf {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real");
        let path = dir.join("with-instance.dat");
        convert(&samples.join("tracedat/lm-v7-zstd.dat"), &path, &ConvertOptions::default())
            .unwrap();
        let page = std::fs::read(samples.join("raw/sample_raw_lm_cpu1.bin")).unwrap();
        let mut file = append::Appender::open(&path, 3).unwrap();
        let at = file.begin_buffer().unwrap();
        let mut list = file.begin_cpu(1, 4096).unwrap();
        file.page(&mut list, &page).unwrap();
        let cpu = file.end_cpu(list).unwrap();
        let inst = file.end_buffer(at, "inst", "local", 4096, vec![cpu]).unwrap();
        file.finish(&[inst]).unwrap();
        path
    }

    fn buffer_events(path: &Path, buffer: usize) -> Vec<crate::Event> {
        let td = Arc::new(TraceDat::open(path).unwrap());
        td.events(buffer, ReadOptions::default()).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn instances_are_converted_too() {
        let dir = std::env::temp_dir().join(format!("vmxray-convert-inst-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = with_instance(&dir);
        let td = TraceDat::open(&input).unwrap();
        let names: Vec<&str> = td.buffers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["", "inst"]);
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real");
        let raw = samples.join("raw/sample_raw_lm_cpu1.bin");
        let raw: Vec<_> = crate::open(&raw, ReadOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .map(|e| (e.ts, e.cpu, e.pid, e.kind))
            .collect();
        let inst: Vec<_> =
            buffer_events(&input, 1).into_iter().map(|e| (e.ts, e.cpu, e.pid, e.kind)).collect();
        assert_eq!(inst, raw, "the appended instance reads back");

        let out = dir.join("out.dat");
        let summary = convert(&input, &out, &ConvertOptions::default()).unwrap();
        assert!(summary.not_converted.is_empty());
        for buffer in [0, 1] {
            assert_eq!(buffer_events(&out, buffer), buffer_events(&input, buffer), "{buffer}");
        }
        // trace-cmd reads both buffers of both files the same way.
        let report = |p: &Path| {
            std::process::Command::new("trace-cmd")
                .args(["report", "-R", "-t"])
                .arg(p)
                .output()
                .ok()
                .map(|o| (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()))
        };
        match (report(&input), report(&out)) {
            (Some((true, a)), Some((true, b))) => {
                assert_eq!(a, b);
                assert_eq!(a.lines().filter(|l| l.starts_with("inst:")).count(), inst.len());
            }
            (Some(a), b) => panic!("trace-cmd failed: {a:?} {b:?}"),
            (None, _) => vmxray_events::test_util::skip("trace-cmd cannot run"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_name_stays_in_the_output_directory() {
        let t = temp_name(Path::new("/x/y/out.dat"));
        assert_eq!(t.parent(), Some(Path::new("/x/y")));
        assert!(t.file_name().unwrap().to_string_lossy().starts_with(".out.dat."));
        assert_eq!(temp_name(Path::new("out.dat")).parent(), Some(Path::new("")));
    }
}
