//! The kernel side of the perf backend, and its only unsafe code.
//!
//! `perf_event_open` goes through `perf-event2` (its `Builder`); the two ioctls it does not
//! wrap, `PERF_EVENT_IOC_SET_OUTPUT` and `PERF_EVENT_IOC_SET_FILTER`, go through the bindings
//! it is built on (`perf-event-open-sys2`, the same crate, so one copy of the bindings). The
//! ring buffer is mapped here (`RingMap`) and drained in bulk: the records between the
//! reader's tail and the kernel's head are copied in one or two copies, and the tail moves
//! once per drain (perf-event2's `Sampler` hands out one record at a time and moves the tail
//! after each: a tenth of `vmxray top`'s CPU time on the perf backend). The calls are unsafe
//! only because they take raw descriptors and pointers; each block says where its guarantee
//! comes from.
//!
//! Per CPU, one ring owns the mapping: a `PERF_COUNT_SW_DUMMY` event on that CPU for every
//! process (it samples nothing and, unlike a per-thread event, never reports `POLLHUP` when a
//! traced thread exits). Every tracepoint event of that CPU — one per event, or one per event
//! and traced thread — is redirected into it with `SET_OUTPUT`, as `perf record` does, so one
//! reader thread per CPU drains one buffer whatever the number of events.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use perf_event::events::{Software, Tracepoint};
use perf_event::{Builder, Clock, Counter, ReadFormat, SampleFlag};
use perf_event_open_sys::bindings::perf_event_mmap_page;
use vmxray_capture::write::perfdata::{PerfEventAttr, flag, sample};

/// The sample fields every tracepoint event records (fixed positions: see [`super::Sample`]).
pub const SAMPLE_TYPE: u64 =
    sample::IDENTIFIER | sample::TID | sample::TIME | sample::CPU | sample::PERIOD | sample::RAW;

/// `PERF_TYPE_TRACEPOINT`.
const TYPE_TRACEPOINT: u32 = 2;
/// `exclude_hv`, which perf-event2's builder sets by default.
const EXCLUDE_HV: u64 = 1 << 6;

/// One tracepoint to open.
#[derive(Clone, Debug)]
pub struct TracepointSpec {
    /// `sys:event`.
    pub name: String,
    /// Its id (`events/<sys>/<event>/id`).
    pub id: u64,
    /// Its filter (the kernel's filter syntax), if any.
    pub filter: Option<String>,
    /// COMM and FORK/EXIT records come with this event (one event per ring is enough).
    pub tracking: bool,
}

/// Whose events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every process.
    All,
    /// These threads and the threads and processes they create later (`inherit`).
    Threads(Vec<u32>),
}

/// How the events are opened.
#[derive(Clone, Copy, Debug)]
pub struct OpenParams {
    /// The clock for sample times (`None`: perf's default, `local_clock()`).
    pub clockid: Option<i32>,
    /// Bytes of ring buffer per CPU (rounded up to a power of two pages).
    pub ring_bytes: usize,
}

/// Opening failed: what, where, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// perf_event_open refused an event.
    #[error("perf_event_open of {event} on CPU {cpu}{} failed", thread_note(*.tid))]
    Open {
        /// The event.
        event: String,
        /// The CPU.
        cpu: u32,
        /// The thread, when per-thread.
        tid: Option<u32>,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The ring buffer could not be mapped.
    #[error("Cannot map the {bytes}-byte perf ring buffer of CPU {cpu}")]
    Mmap {
        /// The CPU.
        cpu: u32,
        /// Its size.
        bytes: usize,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `PERF_EVENT_IOC_SET_OUTPUT` failed.
    #[error("Cannot redirect {event} on CPU {cpu} into the CPU's ring buffer")]
    SetOutput {
        /// The event.
        event: String,
        /// The CPU.
        cpu: u32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the filter.
    #[error("The kernel refused the filter {expr:?} for {event}")]
    Filter {
        /// The event.
        event: String,
        /// The expression.
        expr: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Enabling or disabling failed.
    #[error("Cannot enable the events of CPU {cpu}")]
    Enable {
        /// The CPU.
        cpu: u32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

fn thread_note(tid: Option<u32>) -> String {
    tid.map(|t| format!(" for thread {t}")).unwrap_or_default()
}

/// One CPU's ring buffer and the events writing into it.
pub struct Ring {
    /// The CPU.
    pub cpu: u32,
    owner: Counter,
    map: RingMap,
    members: Vec<Counter>,
}

/// The mapping of a ring buffer: the control page (`perf_event_mmap_page`), then the data
/// area, a power of two of pages.
struct RingMap {
    base: NonNull<u8>,
    len: usize,
    data_offset: usize,
    data_size: usize,
}

// SAFETY: the mapping is owned by one `Ring` and used only through `&mut Ring` (drain) or
// `&Ring` reads of fields set at creation; moving it to the reader thread moves that
// ownership, no aliasing pointer stays behind.
unsafe impl Send for RingMap {}

impl RingMap {
    /// Maps `data_bytes` (a power of two of pages) of `owner`'s ring, after its control page.
    fn new(owner: &Counter, data_bytes: usize) -> io::Result<Self> {
        let page = rustix::param::page_size();
        let len = page + data_bytes;
        // SAFETY: the descriptor belongs to `owner`, borrowed for this call only.
        let fd = unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) };
        // SAFETY: a fresh shared mapping of a perf event descriptor we own (the kernel checks
        // the length: one page plus a power of two of pages); no existing memory is replaced
        // (null address hint), and the mapping lives until `Drop` unmaps it.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let base = NonNull::new(base.cast::<u8>()).ok_or(io::ErrorKind::InvalidData)?;
        let mut map = Self { base, len, data_offset: page, data_size: data_bytes };
        // The kernel says where the data area is (page and size as mapped, on every kernel
        // that has the fields).
        let ctl = map.control();
        // SAFETY: `ctl` points into the mapping's first page, which holds the kernel's
        // `perf_event_mmap_page`; the two fields are written by the kernel before mmap returns.
        let (offset, size) = unsafe {
            (
                std::ptr::addr_of!((*ctl).data_offset).read(),
                std::ptr::addr_of!((*ctl).data_size).read(),
            )
        };
        if offset != 0 && size != 0 {
            let (offset, size) = (usize::try_from(offset), usize::try_from(size));
            if let (Ok(offset), Ok(size)) = (offset, size)
                && offset.checked_add(size).is_some_and(|end| end <= len)
            {
                map.data_offset = offset;
                map.data_size = size;
            }
        }
        Ok(map)
    }

    fn control(&self) -> *mut perf_event_mmap_page {
        self.base.as_ptr().cast()
    }

    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let ctl = self.control();
        // SAFETY: `data_head` and `data_tail` are 8-byte aligned u64 fields of the control
        // page, live as long as `self`; the kernel writes `data_head` and reads `data_tail`
        // concurrently, which is why they are only accessed atomically.
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*ctl).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*ctl).data_tail)),
            )
        }
    }

    /// The size (a multiple of 8) of the data area.
    fn data_size(&self) -> u64 {
        self.data_size as u64
    }

    /// The `len` field of the record header at `off` in the data area (`off` 8-byte aligned).
    fn record_len(&self, off: usize) -> u16 {
        if off + 8 > self.data_size {
            return 0;
        }
        // SAFETY: `off + 8 <= data_size` and `data_offset + data_size <= len` (checked in
        // `new`): inside the mapping. The header is between the tail and the head, which the
        // kernel does not write until the tail moves past it.
        let bytes = unsafe {
            self.base.as_ptr().add(self.data_offset + off + 6).cast::<[u8; 2]>().read_unaligned()
        };
        u16::from_ne_bytes(bytes)
    }

    /// Appends `len` bytes of the data area from `off` to `out`.
    fn copy_to(&self, off: usize, len: usize, out: &mut Vec<u8>) {
        if off.checked_add(len).is_none_or(|end| end > self.data_size) {
            return;
        }
        // SAFETY: inside the mapping (as in `record_len`); the bytes are records between the
        // tail and the head, which the kernel does not write until the tail moves past them.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(self.data_offset + off), len)
        };
        out.extend_from_slice(bytes);
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it outlives
        // `self` (`data` borrows it).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("cpu", &self.cpu).field("events", &self.members.len()).finish()
    }
}

/// The attr the kernel gets for a tracepoint (and perf.data stores).
pub fn tracepoint_attr(
    spec: &TracepointSpec,
    target: &Target,
    params: &OpenParams,
) -> PerfEventAttr {
    let mut flags = flag::DISABLED | flag::SAMPLE_ID_ALL | EXCLUDE_HV;
    if params.clockid.is_some() {
        flags |= flag::USE_CLOCKID;
    }
    if matches!(target, Target::Threads(_)) {
        flags |= flag::INHERIT;
    }
    if spec.tracking {
        flags |= flag::COMM | flag::TASK;
    }
    PerfEventAttr {
        kind: TYPE_TRACEPOINT,
        config: spec.id,
        sample_period: 1,
        sample_type: SAMPLE_TYPE,
        read_format: 0,
        flags,
        wakeup: 0,
        clockid: params.clockid.unwrap_or(0),
    }
}

fn base_builder<'a>(cpu: u32, params: &OpenParams, builder: &mut Builder<'a>) {
    builder
        .one_cpu(cpu as usize)
        .include_kernel()
        .read_format(ReadFormat::empty())
        .sample_id_all(true)
        .clockid(params.clockid.map(Clock::new));
}

/// Opens every tracepoint on every CPU (per thread with [`Target::Threads`]), each CPU's into
/// one ring; returns the rings and, per tracepoint, the kernel's ids of its descriptors. The
/// events stay disabled until [`Ring::enable`].
pub fn open(
    specs: &[TracepointSpec],
    cpus: &[u32],
    target: &Target,
    params: &OpenParams,
) -> Result<(Vec<Ring>, Vec<Vec<u64>>), OpenError> {
    let mut rings = Vec::with_capacity(cpus.len());
    let mut ids = vec![Vec::new(); specs.len()];
    let page = rustix::param::page_size();
    let pages = params.ring_bytes.div_ceil(page).max(1).next_power_of_two();
    let ring_bytes = pages * page;
    for &cpu in cpus {
        let mut owner = Builder::new(Software::DUMMY);
        base_builder(cpu, params, &mut owner);
        owner.any_pid().wakeup_watermark(ring_bytes / 4);
        let owner = owner.build().map_err(|source| OpenError::Open {
            event: "the ring's dummy event".into(),
            cpu,
            tid: None,
            source,
        })?;
        let map = RingMap::new(&owner, ring_bytes).map_err(|source| OpenError::Mmap {
            cpu,
            bytes: ring_bytes,
            source,
        })?;
        let mut ring = Ring { cpu, owner, map, members: Vec::new() };
        let tids: Vec<Option<u32>> = match target {
            Target::All => vec![None],
            Target::Threads(t) => t.iter().copied().map(Some).collect(),
        };
        for (i, spec) in specs.iter().enumerate() {
            for &tid in &tids {
                let mut b = Builder::new(Tracepoint::with_id(spec.id));
                base_builder(cpu, params, &mut b);
                match tid {
                    None => b.any_pid(),
                    Some(t) => b.observe_pid(i32::try_from(t).unwrap_or(-1)).inherit(true),
                };
                b.sample_period(1).sample(SampleFlag::from_bits_retain(SAMPLE_TYPE));
                if spec.tracking {
                    b.comm(true).task(true);
                }
                let counter = b.build().map_err(|source| OpenError::Open {
                    event: spec.name.clone(),
                    cpu,
                    tid,
                    source,
                })?;
                set_output(&counter, &ring.owner).map_err(|source| OpenError::SetOutput {
                    event: spec.name.clone(),
                    cpu,
                    source,
                })?;
                if let Some(expr) = &spec.filter {
                    set_filter(&counter, expr).map_err(|source| OpenError::Filter {
                        event: spec.name.clone(),
                        expr: expr.clone(),
                        source,
                    })?;
                }
                ids[i].push(counter.id());
                ring.members.push(counter);
            }
        }
        rings.push(ring);
    }
    Ok((rings, ids))
}

fn set_output(member: &Counter, owner: &Counter) -> io::Result<()> {
    // SAFETY: both descriptors are perf event fds owned by live `Counter`/`Sampler` values
    // borrowed for the call; SET_OUTPUT takes an fd argument and reads no memory.
    let rc =
        unsafe { perf_event_open_sys::ioctls::SET_OUTPUT(member.as_raw_fd(), owner.as_raw_fd()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn set_filter(member: &Counter, expr: &str) -> io::Result<()> {
    let c = CString::new(expr).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the fd is owned by the live `Counter`; the kernel copies the NUL-terminated
    // string (strndup_user) during the call and never writes through the pointer, which stays
    // valid because `c` lives until the end of this function.
    let rc = unsafe {
        perf_event_open_sys::ioctls::SET_FILTER(member.as_raw_fd(), c.as_ptr().cast_mut())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Ring {
    /// Turns every event of the ring on (the owner first: it carries the lost records).
    pub fn enable(&mut self) -> Result<(), OpenError> {
        let cpu = self.cpu;
        self.owner.enable().map_err(|source| OpenError::Enable { cpu, source })?;
        for m in &mut self.members {
            m.enable().map_err(|source| OpenError::Enable { cpu, source })?;
        }
        Ok(())
    }

    /// Turns the tracepoints off (errors ignored: used on exit paths); what they wrote stays
    /// readable.
    pub fn disable(&mut self) {
        for m in &mut self.members {
            let _ = m.disable();
        }
    }

    /// Descriptors open for this ring (its owner and its events).
    pub fn descriptors(&self) -> usize {
        1 + self.members.len()
    }

    /// Appends the records waiting in the buffer to `out` (each with its 8-byte header, as
    /// perf.data stores them), while `out` is shorter than `max_bytes`; returns how many.
    pub fn drain(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        let map = &self.map;
        let (head, tail) = map.head_tail();
        // Acquire: the records before `head` are visible once it is read.
        let head = head.load(Ordering::Acquire);
        let from = tail.load(Ordering::Relaxed);
        let size = map.data_size();
        let want = max_bytes.saturating_sub(out.len());
        let (n, upto) = record_span(size, from, head, want, |off| map.record_len(off));
        let parts = span_parts(size, from, upto);
        out.reserve(parts.iter().map(|p| p.1).sum());
        for (off, len) in parts {
            map.copy_to(off, len, out);
        }
        // Release: the kernel may overwrite the records only after they were copied.
        tail.store(upto, Ordering::Release);
        n
    }

    /// Waits until the kernel wakes readers of this buffer (watermark reached) or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        // SAFETY: the fd belongs to `self.owner`, which outlives this borrow (it is only used
        // by the poll below).
        let fd = unsafe { BorrowedFd::borrow_raw(self.owner.as_raw_fd()) };
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(0),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
    }
}

/// The records of a ring's data area of `size` bytes from position `from` (the tail;
/// positions grow without wrapping, the area holds them modulo its size) to at most `head`,
/// taking records while fewer than `max_bytes` were taken: (how many, the position after the
/// last). `len_at(offset)` is the length in the header of the record at that offset. A length
/// too short or running past `head` ends the span (the kernel never writes one).
fn record_span(
    size: u64,
    from: u64,
    head: u64,
    max_bytes: usize,
    len_at: impl Fn(usize) -> u16,
) -> (usize, u64) {
    let (mut at, mut n) = (from, 0usize);
    if size == 0 {
        return (0, from);
    }
    // The kernel's areas are a power of two of pages: a mask rather than a division.
    let wrap = |pos: u64| if size.is_power_of_two() { pos & (size - 1) } else { pos % size };
    while at < head && usize::try_from(at - from).is_ok_and(|taken| taken < max_bytes) {
        // Records are 8-byte aligned and the area a multiple of 8: a header never wraps.
        let len = u64::from(len_at(usize::try_from(wrap(at)).unwrap_or(usize::MAX)));
        if len < 8 || at + len > head {
            break;
        }
        at += len;
        n += 1;
    }
    (n, at)
}

/// The (offset, length) pieces of the data area between positions `from` and `upto`: one, or
/// two when the span wraps around the end.
fn span_parts(size: u64, from: u64, upto: u64) -> Vec<(usize, usize)> {
    if size == 0 || upto <= from {
        return Vec::new();
    }
    let len = (upto - from).min(size);
    let start = from % size;
    let first = len.min(size - start);
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(0);
    let mut parts = vec![(as_usize(start), as_usize(first))];
    if len > first {
        parts.push((0, as_usize(len - first)));
    }
    parts
}

/// Raises the soft limit of open files to the hard limit: per-thread recording opens one
/// descriptor per event, thread and CPU (`perf record` does the same).
pub fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data area of `size` bytes holding records of the given lengths from position `from`.
    fn area(size: usize, from: u64, lens: &[u16]) -> (Vec<u8>, u64) {
        let mut data = vec![0u8; size];
        let mut at = from;
        for (i, len) in lens.iter().enumerate() {
            for k in 0..u64::from(*len) {
                let b = if k < 6 { u8::try_from(i).unwrap() } else { 0 };
                data[usize::try_from((at + k) % size as u64).unwrap()] = b;
            }
            let off = usize::try_from(at % size as u64).unwrap();
            data[off + 6..off + 8].copy_from_slice(&len.to_le_bytes());
            at += u64::from(*len);
        }
        (data, at)
    }

    fn copy(data: &[u8], from: u64, upto: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (off, len) in span_parts(data.len() as u64, from, upto) {
            out.extend_from_slice(&data[off..off + len]);
        }
        out
    }

    #[test]
    fn a_span_wrapping_around_the_end_is_copied_in_order() {
        // 64-byte area, tail at 48 (position 112: the area was filled once already).
        let (data, head) = area(64, 112, &[16, 24, 8]);
        let len_at = |off: usize| u16::from_le_bytes([data[off + 6], data[off + 7]]);
        let (n, upto) = record_span(64, 112, head, usize::MAX, len_at);
        assert_eq!((n, upto), (3, 160));
        let bytes = copy(&data, 112, upto);
        assert_eq!(bytes.len(), 48);
        // Each record starts with its index and holds its length in its header.
        let recs: Vec<(u32, u16)> = crate::perf::records(&bytes)
            .map(|r| (r.kind, u16::try_from(r.bytes.len()).unwrap()))
            .collect();
        assert_eq!(recs, vec![(0, 16), (0x0101_0101, 24), (0x0202_0202, 8)]);
    }

    #[test]
    fn a_span_stops_at_its_size_and_at_bad_headers() {
        let (data, head) = area(64, 0, &[16, 16, 16]);
        let len_at = |off: usize| u16::from_le_bytes([data[off + 6], data[off + 7]]);
        // A record is taken while fewer than max_bytes were: 16 < 20 takes the second.
        assert_eq!(record_span(64, 0, head, 20, len_at), (2, 32));
        assert_eq!(record_span(64, 0, head, 0, len_at), (0, 0));
        // A record past the head (a head mid-record) or shorter than its header ends it.
        assert_eq!(record_span(64, 0, 40, usize::MAX, len_at), (2, 32));
        assert_eq!(record_span(64, 0, head, usize::MAX, |_| 4), (0, 0));
        assert_eq!(span_parts(64, 0, 0), Vec::new());
        assert_eq!(span_parts(64, 120, 136), vec![(56, 8), (0, 8)]);
    }
}
