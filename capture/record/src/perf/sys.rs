//! The kernel side of the perf backend, and its only unsafe code.
//!
//! `perf_event_open` and the ring buffer mapping go through `perf-event2` (its `Builder` and
//! `Sampler`); the two ioctls it does not wrap, `PERF_EVENT_IOC_SET_OUTPUT` and
//! `PERF_EVENT_IOC_SET_FILTER`, go through the bindings it is built on (`perf-event-open-sys2`,
//! the same crate, so one copy of the bindings). The calls are unsafe only because they take
//! raw descriptors and pointers; each block says where its guarantee comes from.
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
use std::time::Duration;

use perf_event::events::{Software, Tracepoint};
use perf_event::{Builder, Clock, Counter, ReadFormat, SampleFlag, Sampler};
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
    owner: Sampler,
    members: Vec<Counter>,
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
        let owner = owner.sampled(ring_bytes).map_err(|source| OpenError::Mmap {
            cpu,
            bytes: ring_bytes,
            source,
        })?;
        let mut ring = Ring { cpu, owner, members: Vec::new() };
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

fn set_output(member: &Counter, owner: &Sampler) -> io::Result<()> {
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

    /// Appends every record waiting in the buffer to `out` (each with its 8-byte header, as
    /// perf.data stores them); returns how many.
    pub fn drain(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        let mut n = 0;
        while out.len() < max_bytes {
            let Some(record) = self.owner.next_record() else { break };
            let len = record.len() + 8;
            out.extend_from_slice(&record.ty().to_le_bytes());
            out.extend_from_slice(&record.misc().to_le_bytes());
            out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
            for part in record.data() {
                out.extend_from_slice(part);
            }
            n += 1;
        }
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
