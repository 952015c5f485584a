//! Typed events back to ring-buffer records with a capture's own format files, fast enough to
//! write traces of 10⁸ events ([`RecordEncoder`]), and [`EventsWriter`], which packs them into
//! pages per CPU and writes trace.dat v7 with [`TraceDatWriter`].
//!
//! The encoding is the inverse of decoding a record with its format: each field the event
//! carries (under the kernel's name, [`vmxray_events::kernel_fields::typed_fields`]) is
//! written at the format's offset and size; `common_type` is the format's id, `common_pid`
//! the event's pid, the other common fields 0; `__data_loc`/`__rel_loc` arrays follow the fixed
//! part. A field the format has and the event does not carry is written as 0 and counted by
//! `system:event:field` in [`RecordEncoder::zeroed`], so a caller can tell that its events
//! and the formats disagree (`vmxray convert` of text does the same, field by field through
//! [`vmxray_events::Fields`]; this one allocates nothing per event).
//!
//! ```
//! use std::sync::Arc;
//! use vmxray_capture::bin::Endian;
//! use vmxray_capture::bin::format::EventFormats;
//! use vmxray_capture::write::encode::RecordEncoder;
//! use vmxray_events::{Event, EventKind};
//!
//! let mut formats = EventFormats::new(Endian::Little, 8);
//! formats.add_text("kvm", b"name: kvm_cr\nID: 7\nformat:\n\
//!     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
//!     \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
//!     \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
//!     \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
//!     \tfield:unsigned int rw;\toffset:8;\tsize:4;\tsigned:0;\n\
//!     \tfield:unsigned int cr;\toffset:12;\tsize:4;\tsigned:0;\n\
//!     \tfield:unsigned long val;\toffset:16;\tsize:8;\tsigned:0;\n\n\
//!     print fmt: \"cr_%s %x = 0x%lx\", REC->rw ? \"write\" : \"read\", REC->cr, REC->val\n").unwrap();
//! let formats = Arc::new(formats);
//! let mut encoder = RecordEncoder::new(Arc::clone(&formats));
//! let kind = EventKind::KvmCr { write: true, cr: 3, val: 0x1000 };
//! let event = Event { ts: 1, cpu: 0, pid: 42, tgid: None, comm: None, kind: kind.clone() };
//! let mut payload = Vec::new();
//! encoder.encode(&event, &mut payload).unwrap();
//! assert_eq!(formats.decode(&payload).unwrap(), kind);
//! assert!(encoder.zeroed().is_empty());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use vmxray_events::codes::MmuPageRole;
use vmxray_events::kernel_fields::{Val, typed_fields};
use vmxray_events::spte::{PageFaultRet, RetNumbering};
use vmxray_events::{Comm, Event, EventKind, FieldValue};

use crate::bin::format::{EventFormat, EventFormats, FieldLayout, PageLayout};
use crate::read::tracedat::SavedTexts;
use crate::write::convert::CpuPacker;
use crate::write::{Metadata, TraceDatWriter, WriteError, WriteSummary, WriterOptions};

/// An event could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The formats have no format for the event.
    #[error("No format for {system}:{name} among the trace's event formats")]
    NoFormat {
        /// The event's system.
        system: String,
        /// Its name.
        name: String,
    },
    /// The event's CPU is outside the file's CPUs.
    #[error("CPU {cpu} is out of range: the file has {cpus} CPUs")]
    Cpu {
        /// The CPU.
        cpu: u32,
        /// The file's CPU count.
        cpus: u32,
    },
    /// The record does not fit a page.
    #[error("A record of {len} bytes on CPU {cpu} does not fit a page")]
    TooLarge {
        /// The CPU.
        cpu: u32,
        /// The record's length with its header.
        len: usize,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Where one format field is written.
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: usize,
    size: usize,
    layout: FieldLayout,
}

/// A format prepared for encoding: its fields' slots, and which visitor position fed which
/// field last time (the typed visitor yields a variant's fields in a fixed order, so the
/// lookup by name is done once per format and then only checked).
#[derive(Debug)]
struct Plan {
    format: Arc<EventFormat>,
    /// Bytes of the fixed part (up to the end of the last fixed field).
    fixed: usize,
    /// Non-common fields: (name, slot).
    fields: Vec<(Arc<str>, Slot)>,
    /// Visitor position → index into `fields`, learnt from the events seen.
    order: Vec<Option<usize>>,
    /// Bit set of the `fields` a complete event fills.
    all: u64,
    type_slot: Option<Slot>,
    pid_slot: Option<Slot>,
    /// The format's kernel used the pre-5.18 sense of role bit 4 (see
    /// [`EventFormat::role_bit4_inverted`]): typed roles are flipped back.
    flip_role_bit4: bool,
    /// The format's `RET_PF_*` numbering when it is `fast_page_fault`'s: typed events carry
    /// the 6.12+ numbering and are written back in this one.
    ret_numbering: Option<RetNumbering>,
}

impl Plan {
    fn new(format: Arc<EventFormat>) -> Self {
        let mut fixed = 0usize;
        let mut fields = Vec::new();
        let mut type_slot = None;
        let mut pid_slot = None;
        for f in &format.fields {
            let slot = Slot {
                offset: usize::try_from(f.offset).unwrap_or(usize::MAX),
                size: usize::try_from(f.size).unwrap_or(0),
                layout: f.layout,
            };
            let end = match f.layout {
                FieldLayout::DataLoc { .. } | FieldLayout::RelLoc { .. } => slot.offset + 4,
                FieldLayout::Flexible { .. } => slot.offset,
                FieldLayout::Scalar | FieldLayout::Array { .. } | FieldLayout::Opaque => {
                    slot.offset.saturating_add(slot.size)
                }
            };
            // Absurd formats give a record the packer refuses, not a huge allocation.
            fixed = fixed.max(end.min(1 << 16));
            match &*f.name {
                "common_type" => type_slot = Some(slot),
                "common_pid" => pid_slot = Some(slot),
                _ if f.is_common() => {}
                _ => fields.push((Arc::clone(&f.name), slot)),
            }
        }
        let all = if fields.len() >= 64 { u64::MAX } else { (1u64 << fields.len()) - 1 };
        let flip_role_bit4 = format.role_bit4_inverted();
        let ret_numbering = (format.name.as_ref() == "fast_page_fault")
            .then(|| RetNumbering::of_print_fmt(&format.print_fmt))
            .flatten();
        Self {
            format,
            fixed,
            fields,
            order: Vec::new(),
            all,
            type_slot,
            pid_slot,
            flip_role_bit4,
            ret_numbering,
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|(n, _)| &**n == name)
    }
}

/// Encodes events as records of a capture's formats (see the [module docs](self)).
#[derive(Debug)]
pub struct RecordEncoder {
    formats: Arc<EventFormats>,
    /// Per [`KnownEvent`] (by discriminant): its plan, or None when the formats lack it.
    known: Vec<Option<Option<Plan>>>,
    /// Untyped events by (system, name).
    other: HashMap<(Box<str>, Box<str>), Option<Plan>>,
    zeroed: BTreeMap<String, u64>,
    dynamic: Vec<u8>,
}

fn put_uint(buf: &mut [u8], at: usize, len: usize, v: u64) {
    let bytes = v.to_le_bytes();
    if let (Some(dst), Some(src)) = (buf.get_mut(at..at.saturating_add(len)), bytes.get(..len)) {
        dst.copy_from_slice(src);
    }
}

fn put_bytes(buf: &mut [u8], at: usize, size: usize, bytes: &[u8]) {
    let n = bytes.len().min(size);
    if let (Some(dst), Some(src)) = (buf.get_mut(at..at.saturating_add(n)), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
}

/// Writes one value into its slot (dynamic arrays go to `dynamic`, placed after the fixed
/// part by the caller through `locs`).
fn put_value(
    buf: &mut [u8],
    slot: Slot,
    value: Val<'_>,
    dynamic: &mut Vec<u8>,
    locs: &mut Vec<(Slot, usize, usize)>,
) {
    let elem = |layout: FieldLayout| match layout {
        FieldLayout::Array { elem_size }
        | FieldLayout::DataLoc { elem_size }
        | FieldLayout::RelLoc { elem_size }
        | FieldLayout::Flexible { elem_size } => usize::try_from(elem_size).unwrap_or(1),
        FieldLayout::Scalar | FieldLayout::Opaque => 1,
    };
    match (slot.layout, value) {
        (FieldLayout::Scalar, Val::U64(v)) => put_uint(buf, slot.offset, slot.size, v),
        (FieldLayout::Scalar, Val::I64(v)) => {
            put_uint(buf, slot.offset, slot.size, u64::from_ne_bytes(v.to_ne_bytes()));
        }
        (FieldLayout::Scalar, Val::Str(_) | Val::Bytes(_)) => {}
        (FieldLayout::Array { .. } | FieldLayout::Opaque, v) => {
            let scalar;
            let bytes: &[u8] = match v {
                Val::Str(s) => s.as_bytes(),
                Val::Bytes(b) => b,
                Val::U64(x) => {
                    scalar = x.to_le_bytes();
                    &scalar
                }
                Val::I64(x) => {
                    scalar = x.to_le_bytes();
                    &scalar
                }
            };
            put_bytes(buf, slot.offset, slot.size, bytes);
        }
        (layout @ (FieldLayout::DataLoc { .. } | FieldLayout::RelLoc { .. }), v)
        | (layout @ FieldLayout::Flexible { .. }, v) => {
            let start = dynamic.len();
            match v {
                Val::Str(s) => {
                    dynamic.extend_from_slice(s.as_bytes());
                    dynamic.push(0);
                }
                Val::Bytes(b) => dynamic.extend_from_slice(b),
                Val::U64(x) => dynamic.extend_from_slice(&x.to_le_bytes()[..elem(layout).min(8)]),
                Val::I64(x) => dynamic.extend_from_slice(&x.to_le_bytes()[..elem(layout).min(8)]),
            }
            locs.push((slot, start, dynamic.len() - start));
        }
    }
}

/// A borrowed view of an untyped field value.
fn val(v: &FieldValue) -> Val<'_> {
    match v {
        FieldValue::U64(x) => Val::U64(*x),
        FieldValue::I64(x) => Val::I64(*x),
        FieldValue::Str(s) => Val::Str(s),
        FieldValue::Bytes(b) => Val::Bytes(b),
        // Wider arrays are stored element by element; rare enough to allocate.
        FieldValue::Array(_) => Val::Bytes(&[]),
    }
}

/// The plan of `kind`'s format, made on first use.
fn plan_for<'p>(
    formats: &EventFormats,
    known_plans: &'p mut Vec<Option<Option<Plan>>>,
    other: &'p mut HashMap<(Box<str>, Box<str>), Option<Plan>>,
    kind: &EventKind,
) -> Option<&'p mut Plan> {
    if let Some(known) = kind.known() {
        let k = known as usize;
        if known_plans.len() <= k {
            known_plans.resize_with(k + 1, || None);
        }
        let slot = known_plans[k].get_or_insert_with(|| {
            formats.find(known.system(), known.name()).map(|f| Plan::new(Arc::clone(f)))
        });
        return slot.as_mut();
    }
    // Untyped events are rare: a keyed lookup (allocating) is fine.
    let key: (Box<str>, Box<str>) = (kind.system().into(), kind.name().into());
    other
        .entry(key)
        .or_insert_with(|| {
            formats.find(kind.system(), kind.name()).map(|f| Plan::new(Arc::clone(f)))
        })
        .as_mut()
}

impl RecordEncoder {
    /// An encoder for these formats.
    pub fn new(formats: Arc<EventFormats>) -> Self {
        Self {
            formats,
            known: Vec::new(),
            other: HashMap::new(),
            zeroed: BTreeMap::new(),
            dynamic: Vec::new(),
        }
    }

    /// The formats.
    pub fn formats(&self) -> &Arc<EventFormats> {
        &self.formats
    }

    /// Fields the formats have and the events did not carry (written as 0), by
    /// `system:event:field`.
    pub fn zeroed(&self) -> &BTreeMap<String, u64> {
        &self.zeroed
    }

    /// Encodes `event` (not a lost-events marker) into `out` (replacing its content).
    pub fn encode(&mut self, event: &Event, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut dynamic = std::mem::take(&mut self.dynamic);
        dynamic.clear();
        let mut locs: Vec<(Slot, usize, usize)> = Vec::new();
        let no_format = || EncodeError::NoFormat {
            system: event.system().to_owned(),
            name: event.name().to_owned(),
        };
        let Some(plan) = plan_for(&self.formats, &mut self.known, &mut self.other, &event.kind)
        else {
            self.dynamic = dynamic;
            return Err(no_format());
        };
        out.clear();
        out.resize(plan.fixed, 0);
        if let Some(s) = plan.type_slot {
            put_uint(out, s.offset, s.size, u64::from(plan.format.id));
        }
        if let Some(s) = plan.pid_slot {
            put_uint(out, s.offset, s.size, u64::from_ne_bytes(i64::from(event.pid).to_ne_bytes()));
        }
        let mut filled = 0u64;
        match event.kind.untyped_fields() {
            None => {
                let mut position = 0usize;
                typed_fields(&event.kind, |f| {
                    let at = position;
                    position += 1;
                    if plan.order.len() <= at {
                        plan.order.resize(at + 1, None);
                    }
                    let cached = plan.order[at]
                        .filter(|&i| plan.fields.get(i).is_some_and(|(n, _)| &**n == f.name));
                    let index = match cached {
                        Some(i) => Some(i),
                        None => {
                            let found = plan.find(f.name);
                            plan.order[at] = found;
                            found
                        }
                    };
                    if let Some(i) = index {
                        let slot = plan.fields[i].1;
                        let value = match f.value {
                            Val::U64(v) if f.name == "role" => {
                                Val::U64(MmuPageRole::bit4_to_or_from_6x(v, plan.flip_role_bit4))
                            }
                            // Typed events carry it as an i64 in the 6.12+ numbering.
                            Val::I64(r) if f.name == "ret" => {
                                match (plan.ret_numbering, i32::try_from(r)) {
                                    (Some(n), Ok(r)) => {
                                        Val::I64(i64::from(n.denormalize(PageFaultRet(r))))
                                    }
                                    _ => Val::I64(r),
                                }
                            }
                            v => v,
                        };
                        put_value(out, slot, value, &mut dynamic, &mut locs);
                        if i < 64 {
                            filled |= 1 << i;
                        }
                    }
                });
            }
            Some(fields) => {
                for (name, value) in &fields.0 {
                    if let Some(i) = plan.find(name) {
                        let slot = plan.fields[i].1;
                        put_value(out, slot, val(value), &mut dynamic, &mut locs);
                        if i < 64 {
                            filled |= 1 << i;
                        }
                    }
                }
            }
        }
        if filled != plan.all {
            for (i, (name, _)) in plan.fields.iter().enumerate() {
                if i < 64 && filled & (1 << i) == 0 {
                    let key = format!("{}:{}:{name}", plan.format.system, plan.format.name);
                    *self.zeroed.entry(key).or_default() += 1;
                }
            }
        }
        let fixed = out.len();
        let mut flexible = None;
        for (slot, start, len) in locs {
            let bytes = dynamic.get(start..start + len).unwrap_or(&[]);
            match slot.layout {
                FieldLayout::DataLoc { .. } | FieldLayout::RelLoc { .. } => {
                    let at = out.len();
                    let rel = matches!(slot.layout, FieldLayout::RelLoc { .. });
                    let offset = if rel { at.saturating_sub(slot.offset + 4) } else { at };
                    let loc = (bytes.len().min(0xffff) << 16) | offset.min(0xffff);
                    put_uint(out, slot.offset, 4, loc as u64);
                    out.extend_from_slice(bytes);
                }
                _ => flexible = Some(bytes.to_vec()),
            }
        }
        debug_assert!(out.len() >= fixed);
        if let Some(bytes) = flexible {
            out.extend_from_slice(&bytes);
        }
        self.dynamic = dynamic;
        Ok(())
    }
}

/// The metadata of a trace.dat holding `formats` (ftrace system apart, the others grouped by
/// system, each format's own text) and the header texts of `texts`.
pub fn metadata(
    texts: &SavedTexts,
    formats: &EventFormats,
    page_size: u32,
    clock: &str,
    uname: &str,
    version: &str,
    cpus: u32,
) -> Metadata {
    let mut ftrace_formats = Vec::new();
    let mut event_formats: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for f in formats.iter() {
        let text = f.text.as_bytes().to_vec();
        if &*f.system == "ftrace" {
            ftrace_formats.push(text);
        } else if let Some((_, list)) = event_formats.iter_mut().find(|(s, _)| **s == *f.system) {
            list.push(text);
        } else {
            event_formats.push((f.system.to_string(), vec![text]));
        }
    }
    Metadata {
        page_size,
        header_page: texts.header_page.clone(),
        header_event: texts.header_event.clone(),
        ftrace_formats,
        event_formats,
        kallsyms: Vec::new(),
        printk_formats: texts.printk.clone(),
        trace_clock: format!("[{clock}]"),
        uname: uname.to_owned(),
        version: version.to_owned(),
        cpus: cpus.max(1),
        trace_id: 0,
    }
}

/// Writes events in time order as trace.dat v7 (zstd): each encoded with the formats, packed
/// into pages per CPU as the kernel's writer does ([`CpuPacker`]), lost-event markers as
/// flagged pages, and each thread's comm in the cmdlines.
pub struct EventsWriter {
    writer: TraceDatWriter,
    encoder: RecordEncoder,
    packers: Vec<CpuPacker>,
    comms: BTreeMap<i32, Comm>,
    last_pid: Option<i32>,
    payload: Vec<u8>,
    events: u64,
}

/// What the trace.dat of an [`EventsWriter`] says about itself besides its formats.
#[derive(Clone, Debug)]
pub struct EventsFile<'a> {
    /// header_page, header_event and printk_formats texts.
    pub texts: &'a SavedTexts,
    /// The page layout (from `header_page`).
    pub layout: PageLayout,
    /// The CPUs (events name CPUs below this).
    pub cpus: u32,
    /// The trace clock's name (`mono`, `local`).
    pub clock: &'a str,
    /// The UNAME option (`uname -s -n -r -v -m`).
    pub uname: &'a str,
    /// The VERSION option (the writing tool).
    pub version: &'a str,
}

impl EventsWriter {
    /// Creates `path` for events of `formats`.
    pub fn create(
        path: &Path,
        formats: Arc<EventFormats>,
        file: &EventsFile<'_>,
        opts: WriterOptions,
    ) -> Result<Self, EncodeError> {
        let meta = metadata(
            file.texts,
            &formats,
            file.layout.page_size,
            file.clock,
            file.uname,
            file.version,
            file.cpus,
        );
        let writer = TraceDatWriter::create(path, meta, opts)?;
        Ok(Self {
            writer,
            encoder: RecordEncoder::new(formats),
            packers: (0..file.cpus.max(1)).map(|_| CpuPacker::new(file.layout)).collect(),
            comms: BTreeMap::new(),
            last_pid: None,
            payload: Vec::with_capacity(256),
            events: 0,
        })
    }

    /// The encoder (for [`RecordEncoder::zeroed`]).
    pub fn encoder(&self) -> &RecordEncoder {
        &self.encoder
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Adds one event (events of one CPU in time order).
    pub fn push(&mut self, event: &Event) -> Result<(), EncodeError> {
        let cpus = u32::try_from(self.packers.len()).unwrap_or(u32::MAX);
        let cpu = event.cpu;
        let packer = self
            .packers
            .get_mut(usize::try_from(cpu).unwrap_or(usize::MAX))
            .ok_or(EncodeError::Cpu { cpu, cpus })?;
        let full = if let EventKind::Lost { count } = event.kind {
            packer.lost(event.ts, count)
        } else {
            self.encoder.encode(event, &mut self.payload)?;
            if self.last_pid != Some(event.pid) {
                self.last_pid = Some(event.pid);
                if let Some(comm) = &event.comm
                    && event.pid != 0
                    && self.comms.get(&event.pid) != Some(comm)
                {
                    self.comms.insert(event.pid, comm.clone());
                }
            }
            packer
                .event(event.ts, &self.payload)
                .map_err(|len| EncodeError::TooLarge { cpu, len })?
        };
        if let Some(page) = full {
            self.writer.write_page(cpu, &page)?;
        }
        self.events += 1;
        Ok(())
    }

    /// Writes the last pages, the cmdlines and the final index.
    pub fn finish(mut self) -> Result<WriteSummary, EncodeError> {
        for (cpu, packer) in (0u32..).zip(self.packers.iter_mut()) {
            if let Some(page) = packer.flush() {
                self.writer.write_page(cpu, &page)?;
            }
        }
        let mut cmdlines = String::new();
        for (pid, comm) in &self.comms {
            cmdlines.push_str(&format!("{pid} {comm}\n"));
        }
        Ok(self.writer.finish(Some(cmdlines.as_bytes()), &[])?)
    }
}
