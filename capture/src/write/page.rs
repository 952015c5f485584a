//! Writing ring-buffer pages: [`PageBuilder`] encodes records as the kernel's writer does, and
//! [`data_record_len`] is the kernel's one length rule for a data record.

use crate::bin::Endian;
use crate::bin::format::PageLayout;
#[cfg(doc)]
use crate::bin::page::PageRecords;
use crate::bin::page::{MISSED_EVENTS, MISSED_STORED, TS_SHIFT};

/// The largest payload of a data record whose length fits its header's `type_len` (28 words):
/// longer ones use the big form, the length in the first array word.
const MAX_SMALL_PAYLOAD: usize = 112;

/// The payload bytes a record stores: rounded up to 4, and an 8-byte payload padded to 12
/// (`rb_calculate_event_length()`: the kernel never writes a small record of 8 bytes).
fn padded_payload_len(payload_len: usize) -> usize {
    let len = payload_len.max(1).next_multiple_of(4);
    if len == 8 { 12 } else { len }
}

/// The bytes a data record of `payload_len` takes in a page: its header (4 bytes, 8 in the big
/// form) and its padded payload. A TIME_EXTEND (8 bytes) comes on top when the delta does not
/// fit in 27 bits.
pub fn data_record_len(payload_len: usize) -> usize {
    let len = padded_payload_len(payload_len);
    let header = if len > MAX_SMALL_PAYLOAD { 8 } else { 4 };
    header + len
}

/// Encodes ring-buffer pages the way the kernel's writer does (the inverse of
/// [`PageRecords`]): the converter packs events with it, and tests and fuzz seeds build pages
/// in code with it.
///
/// ```
/// use vmxray_capture::bin::Endian;
/// use vmxray_capture::bin::format::PageLayout;
/// use vmxray_capture::bin::page::{PageItem, PageRecords};
/// use vmxray_capture::write::page::PageBuilder;
///
/// let layout = PageLayout::default_64(Endian::Little);
/// let page = PageBuilder::new(layout, 1000).event(0, &[1, 0, 0, 0]).event(5, &[2, 0]).build();
/// let ts: Vec<u64> = PageRecords::new(&layout, &page)
///     .unwrap()
///     .map(|i| match i.unwrap() { PageItem::Event { ts, .. } => ts, PageItem::Lost { .. } => 0 })
///     .collect();
/// assert_eq!(ts, [1000, 1005]);
/// ```
#[derive(Clone, Debug)]
pub struct PageBuilder {
    layout: PageLayout,
    timestamp: u64,
    /// The page being built: its header's room, then the records written so far. Allocated
    /// once at its full size (growing it record by record, then copying it into the page,
    /// was most of the packing cost of a live capture on perf).
    data: Vec<u8>,
    /// Where the records start (`data_offset`).
    start: usize,
    lost: Option<Option<u64>>,
    commit_override: Option<u64>,
}

impl PageBuilder {
    /// A page whose first event is at `timestamp`.
    pub fn new(layout: PageLayout, timestamp: u64) -> Self {
        let start = layout.data_offset as usize;
        let mut data = Vec::with_capacity(start.max(layout.page_size as usize));
        data.resize(start, 0);
        Self { layout, timestamp, data, start, lost: None, commit_override: None }
    }

    fn header(&mut self, type_len: u32, delta: u32) {
        let delta = delta & ((1 << TS_SHIFT) - 1);
        let word = match self.layout.endian {
            Endian::Little => type_len | (delta << 5),
            Endian::Big => (type_len << TS_SHIFT) | delta,
        };
        self.data.extend_from_slice(&self.layout.endian.put_u32(word));
    }

    fn u32(&mut self, v: u32) {
        self.data.extend_from_slice(&self.layout.endian.put_u32(v));
    }

    /// A data record `delta` after the previous one (a TIME_EXTEND is inserted first when the
    /// delta does not fit in 27 bits), with the kernel's length rules: payload padded to 4,
    /// 8-byte payloads padded to 12, payloads over 112 bytes in the big form.
    pub fn event(mut self, delta: u64, payload: &[u8]) -> Self {
        self.push_event(delta, payload);
        self
    }

    /// [`PageBuilder::event`] in place (a packer adds many records to one builder: moving it
    /// in and out at each record cost more than writing the record).
    pub fn push_event(&mut self, delta: u64, payload: &[u8]) {
        let delta = if delta >= 1 << TS_SHIFT {
            self.push_time_extend(delta);
            0
        } else {
            u32::try_from(delta).unwrap_or(0)
        };
        let len = padded_payload_len(payload.len());
        if len > MAX_SMALL_PAYLOAD {
            self.header(0, delta);
            self.u32(u32::try_from(len + 4).unwrap_or(u32::MAX));
        } else {
            self.header(u32::try_from(len / 4).unwrap_or(0), delta);
        }
        self.data.extend_from_slice(payload);
        self.data.resize(self.data.len() + (len - payload.len()), 0);
    }

    /// A TIME_EXTEND record adding `delta`.
    pub fn time_extend(mut self, delta: u64) -> Self {
        self.push_time_extend(delta);
        self
    }

    fn push_time_extend(&mut self, delta: u64) {
        self.header(30, u32::try_from(delta & ((1 << TS_SHIFT) - 1)).unwrap_or(0));
        self.u32(u32::try_from(delta >> TS_SHIFT).unwrap_or(u32::MAX));
    }

    /// An absolute TIME_STAMP record (the low 59 bits of `ts`).
    pub fn time_stamp(mut self, ts: u64) -> Self {
        self.header(31, u32::try_from(ts & ((1 << TS_SHIFT) - 1)).unwrap_or(0));
        self.u32(u32::try_from((ts >> TS_SHIFT) & 0xffff_ffff).unwrap_or(0));
        self
    }

    /// A discarded event of `len` payload bytes (its delta is ignored by readers).
    pub fn discard(mut self, delta: u32, len: u32) -> Self {
        let len = len.max(4).next_multiple_of(4);
        self.header(29, delta.max(1));
        self.u32(len);
        self.data.resize(self.data.len() + len as usize - 4, 0);
        self
    }

    /// Null padding: ends the page's records (the length still covers it).
    pub fn null_padding(mut self) -> Self {
        self.header(29, 0);
        self
    }

    /// Flags the page as following lost events; `count` is stored after the data when given.
    pub fn lost(mut self, count: Option<u64>) -> Self {
        self.lost = Some(count);
        self
    }

    /// Forces the raw commit word (for corruption tests).
    pub fn commit(mut self, commit: u64) -> Self {
        self.commit_override = Some(commit);
        self
    }

    /// The bytes of records written so far.
    pub fn data_len(&self) -> usize {
        self.data.len() - self.start
    }

    /// The page, `page_size` bytes.
    pub fn build(self) -> Vec<u8> {
        let l = self.layout;
        let e = l.endian;
        let start = self.start;
        let mut page = self.data;
        let n = (page.len() - start).min((l.page_size as usize).saturating_sub(start));
        page.truncate(start + n);
        page.resize(l.page_size as usize, 0);
        let ts_off = l.timestamp_offset as usize;
        page[ts_off..ts_off + 8].copy_from_slice(&e.put_u64(self.timestamp));
        let mut commit = n as u64;
        if let Some(count) = self.lost {
            commit |= MISSED_EVENTS;
            if let Some(count) = count {
                let at = start + n;
                let w = l.commit_size as usize;
                if at + w <= page.len() {
                    commit |= MISSED_STORED;
                    let bytes = if w == 8 {
                        e.put_u64(count).to_vec()
                    } else {
                        e.put_u32(u32::try_from(count).unwrap_or(u32::MAX)).to_vec()
                    };
                    page[at..at + w].copy_from_slice(&bytes);
                }
            }
            if l.commit_size == 8 {
                // The kernel's `local_t` makes the int flag constant sign-extend.
                commit |= 0xffff_ffff_0000_0000;
            }
        }
        let commit = self.commit_override.unwrap_or(commit);
        let c_off = l.commit_offset as usize;
        if l.commit_size == 8 {
            page[c_off..c_off + 8].copy_from_slice(&e.put_u64(commit));
        } else {
            page[c_off..c_off + 4]
                .copy_from_slice(&e.put_u32(u32::try_from(commit & 0xffff_ffff).unwrap_or(0)));
        }
        page
    }
}
