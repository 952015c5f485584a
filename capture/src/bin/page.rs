//! Ring-buffer sub-buffers ("pages") as read from `per_cpu/cpuN/trace_pipe_raw` and stored in
//! trace.dat: the page header, the commit word's lost-event flags, and the record walk with its
//! timestamp arithmetic (kernel/trace/ring_buffer.c).
//!
//! ```text
//!  page (layout from header_page; 64-bit kernel, 4 KiB sub-buffer):
//!  0        8                     16                                     16+len       page_size
//!  | ts u64 | commit (long)       | rec | rec | ... | rec | [lost u64]  | zeros ...  |
//!             bits 0..26  len       each rec: u32 header {type_len:5, time_delta:27}
//!             bit 31 MISSED_EVENTS            1..28 data (type_len*4 payload)
//!             bit 30 MISSED_STORED            0 big data (array[0] = len+4)
//!             (sign-extended to 64)           29 padding/discard, 30 TIME_EXTEND, 31 TIME_STAMP
//! ```
//!
//! [`PageRecords`] walks one page; [`PageStream`] walks a buffer of consecutive pages (one
//! CPU's data) and locates problems by their offset in that buffer. [`PageBuilder`](crate::write::page::PageBuilder) writes
//! pages for tests.

use crate::bin::Endian;
use crate::bin::format::PageLayout;

/// `COMMIT_MASK` of libtraceevent's kbuffer: the data length bits of the commit word.
pub const COMMIT_MASK: u64 = (1 << 27) - 1;
/// `RB_MISSED_EVENTS`: events were lost before this page.
pub const MISSED_EVENTS: u64 = 1 << 31;
/// `RB_MISSED_STORED`: the lost count is stored after the data.
pub const MISSED_STORED: u64 = 1 << 30;
/// The bits of a time delta in a record header.
pub const TS_SHIFT: u32 = 27;
/// The top bits of a timestamp that an absolute TIME_STAMP record does not carry.
pub const TS_MSB: u64 = 0xf8 << 56;

/// A page (or a record in it) is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Fewer bytes than the page header.
    #[error("Page shorter than its {needed}-byte header")]
    ShortHeader {
        /// Header size.
        needed: usize,
    },
    /// The commit length exceeds the page's data area.
    #[error("Page commit length {len} exceeds the {capacity}-byte data area")]
    CommitTooLarge {
        /// The length in the commit word.
        len: u64,
        /// The data area's size.
        capacity: u64,
    },
    /// The page ends before its commit length (a truncated input).
    #[error("Page truncated: {len} committed bytes, {available} present")]
    Truncated {
        /// Committed bytes.
        len: usize,
        /// Bytes present.
        available: usize,
    },
    /// A record runs past the committed data.
    #[error("Record at page offset {offset} (type_len {type_len}) runs past the committed data")]
    RecordOverrun {
        /// Offset of the record in the page.
        offset: usize,
        /// Its type_len.
        type_len: u32,
    },
    /// A record's length word is impossible.
    #[error("Record at page offset {offset} has an invalid length {length}")]
    BadLength {
        /// Offset of the record in the page.
        offset: usize,
        /// The length word.
        length: u32,
    },
    /// A `type_len` no header_event value describes.
    #[error("Record at page offset {offset} has an unknown type_len {type_len}")]
    UnknownType {
        /// Offset of the record in the page.
        offset: usize,
        /// The type_len.
        type_len: u32,
    },
}

impl PageError {
    /// The offset in the page the error concerns.
    pub fn page_offset(&self) -> usize {
        match self {
            Self::ShortHeader { .. } | Self::CommitTooLarge { .. } => 0,
            Self::Truncated { available, .. } => *available,
            Self::RecordOverrun { offset, .. }
            | Self::BadLength { offset, .. }
            | Self::UnknownType { offset, .. } => *offset,
        }
    }
}

/// A decoded page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// The full timestamp of the page's first event.
    pub timestamp: u64,
    /// The raw commit word (sign-extended flags included).
    pub commit: u64,
    /// Committed data bytes (`commit & COMMIT_MASK`).
    pub len: usize,
    /// `RB_MISSED_EVENTS`.
    pub missed_events: bool,
    /// The lost count stored after the data (`RB_MISSED_STORED`).
    pub lost_count: Option<u64>,
}

impl PageHeader {
    /// Parses the header of `page` (which may be shorter than a full page when truncated).
    pub fn parse(layout: &PageLayout, page: &[u8]) -> Result<Self, PageError> {
        let e = layout.endian;
        let needed = layout.data_offset as usize;
        if page.len() < needed {
            return Err(PageError::ShortHeader { needed });
        }
        let timestamp = e
            .u64(page, layout.timestamp_offset as usize)
            .ok_or(PageError::ShortHeader { needed })?;
        let commit = e
            .uint(page, layout.commit_offset as usize, layout.commit_size as usize)
            .ok_or(PageError::ShortHeader { needed })?;
        let len64 = commit & COMMIT_MASK;
        let capacity = u64::from(layout.page_size.saturating_sub(layout.data_offset));
        if len64 > capacity {
            return Err(PageError::CommitTooLarge { len: len64, capacity });
        }
        let len = usize::try_from(len64)
            .map_err(|_| PageError::CommitTooLarge { len: len64, capacity })?;
        let missed_events = commit & MISSED_EVENTS != 0;
        let lost_count = if missed_events && commit & MISSED_STORED != 0 {
            needed.checked_add(len).and_then(|at| e.uint(page, at, layout.commit_size as usize))
        } else {
            None
        };
        Ok(Self { timestamp, commit, len, missed_events, lost_count })
    }
}

/// One item of a page, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageItem<'a> {
    /// Events were lost before this page (reported before its first record).
    Lost {
        /// The page timestamp.
        ts: u64,
        /// How many, when the kernel stored the count.
        count: Option<u64>,
    },
    /// A data record.
    Event {
        /// Its timestamp.
        ts: u64,
        /// The record's payload (from `common_type`; may carry trailing pad bytes).
        payload: &'a [u8],
        /// Offset of the record header in the page.
        offset: usize,
    },
}

/// Walks the records of one page.
#[derive(Clone, Debug)]
pub struct PageRecords<'a> {
    layout: PageLayout,
    /// The committed data (may be cut short by truncation).
    data: &'a [u8],
    committed: usize,
    pos: usize,
    ts: u64,
    lost: Option<PageItem<'a>>,
    done: bool,
}

impl<'a> PageRecords<'a> {
    /// Starts walking `page`.
    pub fn new(layout: &PageLayout, page: &'a [u8]) -> Result<Self, PageError> {
        let header = PageHeader::parse(layout, page)?;
        Ok(Self::with_header(layout, page, &header))
    }

    /// Starts walking `page` whose header is already parsed.
    pub fn with_header(layout: &PageLayout, page: &'a [u8], header: &PageHeader) -> Self {
        let start = layout.data_offset as usize;
        let end = start.saturating_add(header.len).min(page.len());
        let data = page.get(start..end).unwrap_or(&[]);
        let lost = header
            .missed_events
            .then_some(PageItem::Lost { ts: header.timestamp, count: header.lost_count });
        Self {
            layout: *layout,
            data,
            committed: header.len,
            pos: 0,
            ts: header.timestamp,
            lost,
            done: false,
        }
    }

    fn fail(&mut self, err: PageError) -> Option<Result<PageItem<'a>, PageError>> {
        self.done = true;
        Some(Err(err))
    }
}

impl<'a> Iterator for PageRecords<'a> {
    type Item = Result<PageItem<'a>, PageError>;

    // Always inlined into the page stream's `next`, which is into its callers: returned
    // through memory, the item was read back before its stores had landed (a store-forwarding
    // stall that cost a fifth of `vmxray stats`).
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(lost) = self.lost.take() {
            return Some(Ok(lost));
        }
        let e = self.layout.endian;
        let types = self.layout.types;
        let base = self.layout.data_offset as usize;
        while !self.done {
            let pos = self.pos;
            if pos >= self.committed {
                self.done = true;
                return None;
            }
            let offset = base + pos;
            let Some(word) = e.u32(self.data, pos) else {
                return self.truncated_or_overrun(offset, 0);
            };
            let (type_len, delta) = match e {
                Endian::Little => (word & 0x1f, word >> 5),
                Endian::Big => (word >> TS_SHIFT, word & ((1 << TS_SHIFT) - 1)),
            };
            let array0 = || e.u32(self.data, pos + 4);
            if type_len == types.padding {
                if delta == 0 {
                    // Null padding: the rest of the page is unused.
                    self.done = true;
                    return None;
                }
                // A discarded event or end-of-page filler; the kernel reader ignores its delta.
                let Some(len) = array0() else {
                    return self.truncated_or_overrun(offset, type_len);
                };
                match pos.checked_add(4).and_then(|p| p.checked_add(len as usize)) {
                    Some(next) if len > 0 => self.pos = next,
                    _ => return self.fail(PageError::BadLength { offset, length: len }),
                }
                continue;
            }
            if type_len == types.time_extend {
                let Some(hi) = array0() else { return self.truncated_or_overrun(offset, type_len) };
                self.ts = self.ts.wrapping_add((u64::from(hi) << TS_SHIFT) + u64::from(delta));
                self.pos = pos + 8;
                continue;
            }
            if type_len == types.time_stamp {
                let Some(hi) = array0() else { return self.truncated_or_overrun(offset, type_len) };
                let mut abs = (u64::from(hi) << TS_SHIFT) | u64::from(delta);
                // rb_fix_abs_ts(): the record lacks the top 5 bits; take them from the last time.
                if self.ts & TS_MSB != 0 {
                    abs |= self.ts & TS_MSB;
                    if abs < self.ts {
                        abs = abs.wrapping_add(1 << 59);
                    }
                }
                self.ts = abs;
                self.pos = pos + 8;
                continue;
            }
            let (payload_start, payload_len, next) = if type_len == 0 {
                let Some(len) = array0() else {
                    return self.truncated_or_overrun(offset, type_len);
                };
                if len < 4 {
                    return self.fail(PageError::BadLength { offset, length: len });
                }
                let rounded = (len as usize).saturating_add(3) & !3;
                (pos + 8, len as usize - 4, pos.saturating_add(4).saturating_add(rounded))
            } else if type_len <= types.data_max {
                let len = type_len as usize * 4;
                (pos + 4, len, pos + 4 + len)
            } else {
                return self.fail(PageError::UnknownType { offset, type_len });
            };
            let Some(payload) =
                self.data.get(payload_start..payload_start.saturating_add(payload_len))
            else {
                return self.truncated_or_overrun(offset, type_len);
            };
            self.ts = self.ts.wrapping_add(u64::from(delta));
            self.pos = next;
            return Some(Ok(PageItem::Event { ts: self.ts, payload, offset }));
        }
        None
    }
}

impl<'a> PageRecords<'a> {
    fn truncated_or_overrun(
        &mut self,
        offset: usize,
        type_len: u32,
    ) -> Option<Result<PageItem<'a>, PageError>> {
        if self.data.len() < self.committed {
            let available = self.layout.data_offset as usize + self.data.len();
            self.fail(PageError::Truncated { len: self.committed, available })
        } else {
            self.fail(PageError::RecordOverrun { offset, type_len })
        }
    }
}

/// An item of a page stream, with the offset of its page in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamItem<'a> {
    /// Offset of the page in the stream.
    pub page_offset: u64,
    /// The item.
    pub item: PageItem<'a>,
}

/// A problem in a page stream: the offset in the stream and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct StreamError {
    /// Byte offset in the stream where the problem is.
    pub offset: u64,
    /// The page's problem.
    #[source]
    pub error: PageError,
}

/// Walks consecutive pages (one CPU's data). A bad page yields one error; iteration then goes
/// on with the next page (the caller decides, by stopping or not, whether that is permissive).
#[derive(Clone, Debug)]
pub struct PageStream<'a> {
    layout: PageLayout,
    bytes: &'a [u8],
    base: u64,
    next_page: usize,
    current: Option<(u64, PageRecords<'a>)>,
}

impl<'a> PageStream<'a> {
    /// Walks `bytes`, whose first byte is at `base` in the caller's addressing (for messages).
    pub fn new(layout: &PageLayout, bytes: &'a [u8], base: u64) -> Self {
        Self { layout: *layout, bytes, base, next_page: 0, current: None }
    }
}

impl<'a> Iterator for PageStream<'a> {
    type Item = Result<StreamItem<'a>, StreamError>;

    // See `PageRecords::next`.
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((page_offset, recs)) = &mut self.current {
                let page_offset = *page_offset;
                match recs.next() {
                    Some(Ok(item)) => return Some(Ok(StreamItem { page_offset, item })),
                    Some(Err(error)) => {
                        let offset = page_offset + error.page_offset() as u64;
                        self.current = None;
                        return Some(Err(StreamError { offset, error }));
                    }
                    None => self.current = None,
                }
            }
            let start = self.next_page;
            if start >= self.bytes.len() {
                return None;
            }
            let page_size = (self.layout.page_size as usize).max(1);
            let end = start.saturating_add(page_size).min(self.bytes.len());
            self.next_page = start.saturating_add(page_size);
            let page = self.bytes.get(start..end).unwrap_or(&[]);
            let page_offset = self.base + start as u64;
            match PageRecords::new(&self.layout, page) {
                Ok(recs) => self.current = Some((page_offset, recs)),
                Err(error) => {
                    let error = if page.len() < page_size
                        && matches!(error, PageError::ShortHeader { .. })
                    {
                        PageError::Truncated { len: page_size, available: page.len() }
                    } else {
                        error
                    };
                    return Some(Err(StreamError { offset: page_offset, error }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::page::PageBuilder;

    fn items(layout: &PageLayout, page: &[u8]) -> Vec<Result<PageItem<'static>, PageError>> {
        let page: &'static [u8] = Box::leak(page.to_vec().into_boxed_slice());
        PageRecords::new(layout, page).unwrap().collect()
    }

    #[test]
    fn records_and_timestamps() {
        for endian in [Endian::Little, Endian::Big] {
            let l = PageLayout::default_64(endian);
            let big = vec![7u8; 220];
            let page = PageBuilder::new(l, 100)
                .event(0, &[1, 2, 3, 4])
                .event(10, &[0; 8])
                .discard(99, 16)
                .event(1 << 30, &big)
                .time_stamp(5_000_000_000)
                .event(3, &[9; 5])
                .null_padding()
                .event(1, &[1])
                .build();
            let got = items(&l, &page);
            let ts: Vec<u64> = got
                .iter()
                .map(|i| match i.as_ref().unwrap() {
                    PageItem::Event { ts, .. } => *ts,
                    PageItem::Lost { .. } => 0,
                })
                .collect();
            assert_eq!(ts, [100, 110, 110 + (1 << 30), 5_000_000_003], "{endian:?}");
            let PageItem::Event { payload, .. } = got[1].as_ref().unwrap() else { panic!() };
            assert_eq!(payload.len(), 12, "8-byte payloads are stored in 12");
            let PageItem::Event { payload, .. } = got[2].as_ref().unwrap() else { panic!() };
            assert_eq!(&payload[..220], &big[..]);
        }
    }

    #[test]
    fn lost_flags_sign_extended_and_count() {
        let l = PageLayout::default_64(Endian::Little);
        let page = PageBuilder::new(l, 7).lost(Some(5316)).event(0, &[1, 0, 0, 0]).build();
        let h = PageHeader::parse(&l, &page).unwrap();
        assert_eq!(h.commit >> 30, 0x3_ffff_ffff);
        assert_eq!(h.lost_count, Some(5316));
        let got = items(&l, &page);
        assert_eq!(got[0], Ok(PageItem::Lost { ts: 7, count: Some(5316) }));
        let page = PageBuilder::new(l, 7).lost(None).event(0, &[1, 0, 0, 0]).build();
        assert_eq!(items(&l, &page)[0], Ok(PageItem::Lost { ts: 7, count: None }));
    }

    #[test]
    fn absolute_stamp_keeps_top_bits() {
        let l = PageLayout::default_64(Endian::Little);
        let base = 0xf800_0000_0000_0100u64;
        let page = PageBuilder::new(l, base).time_stamp(0x50).event(0, &[1, 0]).build();
        let got = items(&l, &page);
        // 0xf8..0050 < 0xf8..0100, so the 59-bit counter wrapped.
        assert_eq!(
            got[0],
            Ok(PageItem::Event {
                ts: (base & TS_MSB | 0x50).wrapping_add(1 << 59),
                payload: &[1, 0, 0, 0],
                offset: 24
            })
        );
    }

    #[test]
    fn corruption_is_reported_not_panicking() {
        let l = PageLayout::default_64(Endian::Little);
        let page = PageBuilder::new(l, 0).event(0, &[1, 2, 3, 4]).commit(5000).build();
        assert!(matches!(PageRecords::new(&l, &page), Err(PageError::CommitTooLarge { .. })));
        let page = PageBuilder::new(l, 0).event(0, &[1, 2, 3, 4]).commit(6).build();
        let got = items(&l, &page);
        assert!(matches!(got[0], Err(PageError::RecordOverrun { offset: 16, .. })));
        let page = PageBuilder::new(l, 0).event(0, &[1, 2, 3, 4]).event(0, &[5; 40]).build();
        let cut = &page[..40];
        let got: Vec<_> = PageStream::new(&l, cut, 0).collect();
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(StreamError { error: PageError::Truncated { .. }, .. })));
    }
}
