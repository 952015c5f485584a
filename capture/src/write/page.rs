//! Ring-buffer pages as the kernel writes them: the page header's commit word (data length and
//! lost-event flags), and [`PageBuilder`], which encodes pages for tests and synthetic traces.
//!
//! Decoding the records of a page is the readers' job; this module only reads the 16-byte page
//! header (the recorder needs the lost-event flags of each page without decoding it) and
//! *writes* records.

/// `RB_MISSED_EVENTS`: events were lost before this page.
const MISSED_EVENTS: u64 = 1 << 31;
/// `RB_MISSED_STORED`: the lost count is stored after the data.
const MISSED_STORED: u64 = 1 << 30;
/// libtraceevent's `COMMIT_MASK`.
const COMMIT_MASK: u64 = (1 << 27) - 1;
/// Size of `struct buffer_data_page`'s header (u64 time_stamp, local_t commit) on 64-bit.
pub const PAGE_HEADER_LEN: usize = 16;

/// Events lost before a page, as its commit word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostMark {
    /// Lost, count stored after the data.
    Counted(u64),
    /// Lost, no room to store the count.
    Uncounted,
}

fn commit_word(page: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(page.get(8..16)?.try_into().ok()?))
}

/// The number of data bytes in a page (0 for a page too short to have a header).
pub fn page_data_len(page: &[u8]) -> usize {
    commit_word(page).map_or(0, |c| usize::try_from(c & COMMIT_MASK).unwrap_or(0))
}

/// The page's lost-events mark, if the kernel set one (overwrite mode, first page after an
/// overrun). The flags are tested on bits 31/30 only: the 64-bit word is sign-extended.
pub fn page_lost_mark(page: &[u8]) -> Option<LostMark> {
    let commit = commit_word(page)?;
    if commit & MISSED_EVENTS == 0 {
        return None;
    }
    if commit & MISSED_STORED != 0 {
        let at = PAGE_HEADER_LEN + page_data_len(page);
        let count = page.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        return Some(count.map_or(LostMark::Uncounted, LostMark::Counted));
    }
    Some(LostMark::Uncounted)
}

/// Builds one little-endian ring-buffer page, the way the kernel's writer lays records out
/// (`rb_calculate_event_length`, `rb_update_event`): 4-byte aligned records, `type_len` 1..28
/// for payloads up to 112 bytes, `type_len` 0 with a length word above that, TIME_EXTEND when
/// a delta needs more than 27 bits.
///
/// ```
/// use vmxray_capture::write::PageBuilder;
/// let payload = PageBuilder::payload(42, 1234, &[8, 0, 0, 0, 0, 0, 0, 0]);
/// let page = PageBuilder::new(4096, 1_000).event(1_000, &payload).event(2_500, &payload).build();
/// assert_eq!(page.len(), 4096);
/// ```
#[derive(Clone, Debug)]
pub struct PageBuilder {
    page_size: usize,
    data: Vec<u8>,
    page_ts: u64,
    last_ts: u64,
    lost: Option<LostMark>,
}

impl PageBuilder {
    /// A page whose first event is at `page_ts` (the header's full timestamp).
    pub fn new(page_size: usize, page_ts: u64) -> Self {
        Self { page_size, data: Vec::new(), page_ts, last_ts: page_ts, lost: None }
    }

    /// A tracepoint payload: the common fields (`common_type`, flags, preempt count, pid),
    /// then the event's own fields.
    pub fn payload(event_id: u16, pid: i32, fields: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + fields.len());
        p.extend_from_slice(&event_id.to_le_bytes());
        p.push(0); // common_flags
        p.push(0); // common_preempt_count
        p.extend_from_slice(&pid.to_le_bytes());
        p.extend_from_slice(fields);
        p
    }

    /// Bytes left for records.
    pub fn room(&self) -> usize {
        self.page_size.saturating_sub(PAGE_HEADER_LEN + self.data.len())
    }

    /// The length of the record `payload` takes (without a time extend).
    pub fn record_len(payload: &[u8]) -> usize {
        let mut len = payload.len().max(1);
        if len > 4 * 28 {
            len += 4;
        }
        len += 4;
        len = len.div_ceil(4) * 4;
        if len == 12 { 16 } else { len }
    }

    /// True when an event with this payload at `ts` still fits.
    pub fn fits(&self, ts: u64, payload: &[u8]) -> bool {
        let extend = if ts.saturating_sub(self.last_ts) >= 1 << 27 { 8 } else { 0 };
        Self::record_len(payload) + extend <= self.room()
    }

    /// Appends an event at absolute time `ts` (≥ the previous one).
    pub fn event(mut self, ts: u64, payload: &[u8]) -> Self {
        self.push_event(ts, payload);
        self
    }

    /// Appends an event at absolute time `ts` (≥ the previous one), in place.
    pub fn push_event(&mut self, ts: u64, payload: &[u8]) {
        let mut delta = ts.saturating_sub(self.last_ts);
        if delta >= 1 << 27 {
            // RINGBUF_TYPE_TIME_EXTEND: delta = array[0] << 27 | time_delta.
            let low = u32::try_from(delta & ((1 << 27) - 1)).unwrap_or(0);
            let high = u32::try_from(delta >> 27).unwrap_or(u32::MAX);
            self.data.extend_from_slice(&(30 | (low << 5)).to_le_bytes());
            self.data.extend_from_slice(&high.to_le_bytes());
            delta = 0;
        }
        self.last_ts = ts;
        let delta = u32::try_from(delta).unwrap_or(0);
        let len = Self::record_len(payload);
        let start = self.data.len();
        if payload.len() > 4 * 28 || len - 4 > 4 * 28 {
            self.data.extend_from_slice(&(delta << 5).to_le_bytes());
            let array0 = u32::try_from(len - 4).unwrap_or(u32::MAX);
            self.data.extend_from_slice(&array0.to_le_bytes());
        } else {
            let type_len = u32::try_from((len - 4) / 4).unwrap_or(0);
            self.data.extend_from_slice(&(type_len | (delta << 5)).to_le_bytes());
        }
        self.data.extend_from_slice(payload);
        self.data.resize(start + len, 0);
    }

    /// Marks the page as following lost events (`RB_MISSED_EVENTS`, with the count stored
    /// after the data when given).
    pub fn lost(mut self, mark: LostMark) -> Self {
        self.lost = Some(mark);
        self
    }

    /// The page, zero-padded to the page size, as `trace_pipe_raw` returns it.
    pub fn build(self) -> Vec<u8> {
        let mut page = Vec::with_capacity(self.page_size);
        page.extend_from_slice(&self.page_ts.to_le_bytes());
        let mut commit = self.data.len() as u64;
        match self.lost {
            None => {}
            Some(LostMark::Uncounted) => commit |= MISSED_EVENTS | 0xffff_ffff_0000_0000,
            Some(LostMark::Counted(_)) => {
                commit |= MISSED_EVENTS | MISSED_STORED | 0xffff_ffff_0000_0000;
            }
        }
        page.extend_from_slice(&commit.to_le_bytes());
        page.extend_from_slice(&self.data);
        if let Some(LostMark::Counted(n)) = self.lost {
            page.extend_from_slice(&n.to_le_bytes());
        }
        page.resize(self.page_size, 0);
        page
    }
}
