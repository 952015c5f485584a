//! Ring-buffer records to [`Event`]s: the step every page-based reader (tracefs, trace.dat)
//! shares once the pages are in memory.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bin::Endian;
use crate::bin::format::{EventFormat, EventFormats, PageLayout, Record, RecordError};
use crate::bin::page::{PageItem, PageStream};
use crate::read::CountOnly;
use crate::read::merge::{Batch, Skip};
use crate::read::{Location, ReadError};
use vmxray_events::event::{Comm, Event, EventKind, OtherEvent};
use vmxray_events::fields::{FieldValue, Fields};

/// Where a CPU stream's bytes are, for messages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StreamBase {
    /// The bytes are in the file at this offset (uncompressed data).
    File(u64),
    /// The bytes are decompressed; this is their offset in the CPU's page stream.
    Cpu(u64),
}

impl StreamBase {
    fn at(self, cpu: u32, offset: u64) -> Location {
        match self {
            Self::File(base) => Location::Offset(base.saturating_add(offset)),
            Self::Cpu(base) => Location::CpuOffset { cpu, offset: base.saturating_add(offset) },
        }
    }
}

/// What turning records into events needs: the capture's formats and page layout, and the
/// comm of each pid.
#[derive(Clone, Debug)]
pub(crate) struct DecodeCtx {
    pub input: Arc<str>,
    pub formats: Arc<EventFormats>,
    pub layout: PageLayout,
    pub comms: Arc<HashMap<i32, Comm>>,
    /// Events counted instead of decoded ([`crate::ReadOptions::count_only`]).
    pub count_only: CountOnly,
}

/// The comms of one batch. Each batch gets its own `Arc` per comm, so the decoding thread and
/// the consuming thread never bump the same reference count at the same time (a shared count
/// would bounce its cache line between cores on every event).
///
/// Likewise, events the vocabulary does not type get batch-local copies of their system, name
/// and field-name `Arc`s.
#[derive(Default)]
pub(crate) struct CommCache {
    last: Option<(i32, Option<Comm>)>,
    local: HashMap<i32, Option<Comm>>,
    names: HashMap<u32, OtherNames>,
}

/// Batch-local names of one untyped event.
struct OtherNames {
    system: Arc<str>,
    name: Arc<str>,
    fields: Vec<Option<Arc<str>>>,
}

impl CommCache {
    /// An untyped event with every non-common field, named through the batch-local `Arc`s.
    pub(crate) fn other(
        &mut self,
        format: &EventFormat,
        payload: &[u8],
        endian: Endian,
    ) -> EventKind {
        let names = self.names.entry(format.id).or_insert_with(|| OtherNames {
            system: Arc::from(&*format.system),
            name: Arc::from(&*format.name),
            fields: format
                .fields
                .iter()
                .map(|f| (!f.is_common()).then(|| Arc::from(&*f.name)))
                .collect(),
        });
        let mut fields = Fields(Vec::with_capacity(format.fields.len()));
        for (f, name) in format.fields.iter().zip(&names.fields) {
            if let Some(name) = name
                && let Some(v) = f.value(payload, endian)
            {
                fields.0.push((Arc::clone(name), v));
            }
        }
        EventKind::untyped(Arc::clone(&names.system), Arc::clone(&names.name), fields)
    }

    /// The comm of `pid`: the last pid's again (most records follow one of the same thread)
    /// inline, the others from the maps.
    #[inline(always)]
    pub(crate) fn get(&mut self, comms: &HashMap<i32, Comm>, pid: i32) -> Option<Comm> {
        if let Some((p, c)) = &self.last
            && *p == pid
        {
            return c.clone();
        }
        self.lookup(comms, pid)
    }

    #[inline(never)]
    fn lookup(&mut self, comms: &HashMap<i32, Comm>, pid: i32) -> Option<Comm> {
        let c = self
            .local
            .entry(pid)
            .or_insert_with(|| comms.get(&pid).map(|c| Comm::from(&**c)))
            .clone();
        self.last = Some((pid, c.clone()));
        c
    }
}

/// The comm table trace-cmd shows: `saved_cmdlines` lines `"<pid> <comm>"`, plus `<idle>` for
/// pid 0.
pub(crate) fn parse_cmdlines(text: &[u8]) -> HashMap<i32, Comm> {
    let mut out = HashMap::new();
    out.insert(0, Comm::from("<idle>"));
    for line in text.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if let Some((pid, comm)) = line.trim_start().split_once(' ')
            && let Ok(pid) = pid.parse::<i32>()
        {
            out.insert(pid, Comm::from(comm));
        }
    }
    out
}

impl DecodeCtx {
    /// Decodes one record into an event appended to `batch` (unknown ids become a named
    /// placeholder, counted). The event is built straight into the batch: it is ~100 bytes, and
    /// moving it through return values costs more than decoding most records.
    #[inline]
    pub(crate) fn record(
        &self,
        cpu: u32,
        ts: u64,
        payload: &[u8],
        cache: &mut CommCache,
        batch: &mut Batch,
    ) -> Result<(), RecordError> {
        let pid = self.formats.pid(payload).ok_or(RecordError::TooShort)?;
        let id = self.formats.event_id(payload).ok_or(RecordError::TooShort)?;
        let kind = match self.formats.get(id) {
            Some(format) if self.count_only.counts(format) => {
                match format.known {
                    Some(known) => batch.counted[known as usize] += 1,
                    None => {
                        batch
                            .counted_other
                            .entry(id)
                            .or_insert_with(|| (Arc::clone(&format.name), 0))
                            .1 += 1;
                    }
                }
                let before = u32::try_from(batch.items.len()).unwrap_or(u32::MAX);
                batch.skips.push(Skip { ts, before });
                return Ok(());
            }
            Some(format) => match format.known {
                Some(known) => {
                    // Decoded in place: the event goes into the batch first, its kind is then
                    // written straight into the batch's slot.
                    let comm = cache.get(&self.comms, pid);
                    batch.items.push(Ok(Event {
                        ts,
                        cpu,
                        pid,
                        tgid: None,
                        comm,
                        kind: EventKind::Lost { count: None },
                    }));
                    let endian = self.formats.endian();
                    // The last item is the event just pushed.
                    if let Some(Ok(slot)) = batch.items.last_mut()
                        && !format.decode_hot(payload, endian, &mut slot.kind)
                        && let Err(e) =
                            known.decode_into(&Record::new(format, payload, endian), &mut slot.kind)
                    {
                        batch.items.pop();
                        return Err(RecordError::Decode(e));
                    }
                    return Ok(());
                }
                None => cache.other(format, payload, self.formats.endian()),
            },
            None => {
                *batch.unknown.entry(format!("id {id}")).or_default() += 1;
                unknown_event(id, payload)
            }
        };
        let comm = cache.get(&self.comms, pid);
        batch.items.push(Ok(Event { ts, cpu, pid, tgid: None, comm, kind }));
        Ok(())
    }

    /// Decodes a buffer of whole pages of `cpu` into `batch`.
    pub(crate) fn decode_pages(&self, cpu: u32, bytes: &[u8], base: StreamBase, batch: &mut Batch) {
        let mut cache = CommCache::default();
        batch.items.reserve(bytes.len() / 24);
        for item in PageStream::new(&self.layout, bytes, 0) {
            match item {
                Ok(s) => match s.item {
                    PageItem::Event { ts, payload, offset } => {
                        if let Err(e) = self.record(cpu, ts, payload, &mut cache, batch) {
                            batch.problem(ReadError::new(
                                &self.input,
                                base.at(cpu, s.page_offset + offset as u64),
                                e,
                            ));
                        }
                    }
                    PageItem::Lost { ts, count } => batch.items.push(Ok(Event {
                        ts,
                        cpu,
                        pid: -1,
                        tgid: None,
                        comm: None,
                        kind: EventKind::Lost { count },
                    })),
                },
                Err(e) => {
                    batch.problem(ReadError::new(&self.input, base.at(cpu, e.offset), e.error));
                }
            }
        }
    }
}

/// A record whose id has no format: kept, with its raw bytes, under the name `unknown`.
pub(crate) fn unknown_event(id: u32, payload: &[u8]) -> EventKind {
    let mut fields = Fields::new();
    fields.push("id", FieldValue::U64(u64::from(id)));
    fields.push("raw", FieldValue::Bytes(payload.into()));
    EventKind::Other(Box::new(OtherEvent { system: "".into(), name: "unknown".into(), fields }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bin::format::EventFormats;

    /// kvm_exit's real format with `exit_reason`, the one field its decode requires, renamed.
    fn formats_without_exit_reason() -> EventFormats {
        let text = include_str!("../../../samples/real/raw/tracefs/events/kvm/kvm_exit/format")
            .replace(" exit_reason;", " exit_reason_gone;");
        let mut formats = EventFormats::new(Endian::Little, 8);
        formats.add_text("kvm", text.as_bytes()).expect("the real format parses");
        formats
    }

    #[test]
    fn a_record_that_fails_its_typed_decode_leaves_nothing_in_the_batch() {
        let formats = formats_without_exit_reason();
        let id = formats.find("kvm", "kvm_exit").expect("kvm_exit").id;
        let ctx = DecodeCtx {
            input: Arc::from("t.dat"),
            layout: PageLayout::default_64(Endian::Little),
            comms: Arc::new(parse_cmdlines(b"7 CPU 0/KVM\n")),
            count_only: CountOnly::NONE,
            formats: Arc::new(formats),
        };
        let mut payload = vec![0u8; 80];
        payload[..2].copy_from_slice(&u16::try_from(id).unwrap().to_le_bytes());
        payload[4..8].copy_from_slice(&7i32.to_le_bytes());
        let (mut cache, mut batch) = (CommCache::default(), Batch::default());
        let got = ctx.record(0, 100, &payload, &mut cache, &mut batch);
        assert!(matches!(got, Err(RecordError::Decode(_))), "{got:?}");
        assert!(batch.items.is_empty(), "no placeholder event is left behind");

        // The same record with the field named as the kernel names it decodes, in place.
        let mut formats = EventFormats::new(Endian::Little, 8);
        let real = include_str!("../../../samples/real/raw/tracefs/events/kvm/kvm_exit/format");
        formats.add_text("kvm", real.as_bytes()).expect("the real format parses");
        let ctx = DecodeCtx { formats: Arc::new(formats), ..ctx };
        ctx.record(0, 100, &payload, &mut cache, &mut batch).expect("decodes");
        let [Ok(event)] = batch.items.as_slice() else { panic!("{:?}", batch.items) };
        assert!(matches!(event.kind, EventKind::KvmExit(_)), "{:?}", event.kind);
        assert_eq!((event.ts, event.pid, event.comm.as_deref()), (100, 7, Some("CPU 0/KVM")));
    }
}
