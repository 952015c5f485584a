//! The perf backend: the profile's tracepoints through `perf_event_open`, for hosts that allow
//! perf (CAP_PERFMON, `perf_event_paranoid`) but not tracefs writes, and container runtimes that
//! expose perf only.
//!
//! ```text
//!  perf_event_open per tracepoint × CPU (× thread, inherit)   one thread per CPU        consumer
//!  ──SET_OUTPUT──▶ CPU 0's ring (dummy event's mmap) ──drain──▶ reader 0 ──┐
//!  ──SET_OUTPUT──▶ CPU 1's ring                       ──drain──▶ reader 1 ──┼─▶ Batch ─▶ perf.data records,
//!  ...                                                                      ┘            or pages (CpuPacker)
//!                                                                                         → trace.dat / flight
//! ```
//!
//! The same profiles, `-e`, filters (`PERF_EVENT_IOC_SET_FILTER`: the kernel's filter syntax,
//! as in tracefs), pid selection (per-thread events with `inherit`, so threads and processes
//! created later are followed, like tracefs' `event-fork`), flight recorder and triggers as the
//! tracefs backend. Nothing is written to tracefs: the tracepoint ids and formats are only
//! read, so a read-only tracefs is enough. Readers hand whole records over and never decode
//! them; the consumer writes them as perf.data (the kernel's records, byte for byte) or packs
//! the tracepoint payloads into ring-buffer pages for trace.dat, the way the kernel's ftrace
//! buffer holds them.
//!
//! **Lost events.** When a ring is full the kernel drops samples and later writes a
//! `PERF_RECORD_LOST` with the count: it is stored (perf.data: as is; trace.dat: as the
//! missed-events flag and count of the next page of that CPU), counted per CPU and printed.
//!
//! **Cleanup.** Everything the backend holds is file descriptors: they close with the process,
//! whatever kills it, and nothing outside the process changes.

pub mod recorder;
pub mod sys;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use vmxray_capture::bin::format::EventFormat;
use vmxray_capture::write::Metadata;
use vmxray_capture::write::perfdata::{AttrEntry, RECORD_COMM, RECORD_LOST, RECORD_SAMPLE};

use crate::pool::BufferPool;
use crate::{RecordError, RecordOptions, RecordReport, Tracefs};
use sys::{OpenParams, Ring, Target, TracepointSpec};

/// The clocks the perf backend offers: ftrace's names, as `--clock` takes them, and their
/// `clockid`s (`None`: perf's own clock, `local_clock()`, which is ftrace's `local`/`perf`).
pub const CLOCKS: &[(&str, Option<i32>)] =
    &[("mono", Some(1)), ("mono_raw", Some(4)), ("boot", Some(7)), ("perf", None), ("local", None)];

/// Records of one CPU, drained in one go.
#[derive(Debug)]
pub struct Batch {
    /// The CPU.
    pub cpu: u32,
    /// Whole records (header included), in the order the kernel wrote them.
    pub records: Vec<u8>,
    /// How many.
    pub count: usize,
    /// The session clock's time just before the drain: every record stamped earlier was
    /// committed and is in this batch or an earlier one (`None` for perf's own clock, which
    /// user space cannot read).
    pub watermark: Option<u64>,
}

/// A record of a batch.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// `PERF_RECORD_*`.
    pub kind: u32,
    /// The header's `misc`.
    pub misc: u16,
    /// The whole record, header included.
    pub bytes: &'a [u8],
}

impl<'a> RawRecord<'a> {
    /// The body after the 8-byte header.
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(8..).unwrap_or(&[])
    }
}

/// The records of a batch (a bad size ends the walk: the kernel never writes one).
pub fn records(buf: &[u8]) -> impl Iterator<Item = RawRecord<'_>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let head = buf.get(at..at + 8)?;
        let kind = u32::from_le_bytes(head[..4].try_into().ok()?);
        let misc = u16::from_le_bytes(head[4..6].try_into().ok()?);
        let size = usize::from(u16::from_le_bytes(head[6..8].try_into().ok()?));
        if size < 8 {
            return None;
        }
        let bytes = buf.get(at..at + size)?;
        at += size;
        Some(RawRecord { kind, misc, bytes })
    })
}

/// A tracepoint sample in the layout of [`sys::SAMPLE_TYPE`]: identifier, pid/tid, time,
/// cpu, period, raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample<'a> {
    /// The event's id (`PERF_SAMPLE_IDENTIFIER`).
    pub id: u64,
    /// The process.
    pub pid: i32,
    /// The thread.
    pub tid: i32,
    /// The time.
    pub time: u64,
    /// The CPU.
    pub cpu: u32,
    /// The tracepoint record (`common_type` first), with perf's trailing padding.
    pub raw: &'a [u8],
}

impl<'a> Sample<'a> {
    /// Parses a `PERF_RECORD_SAMPLE` body.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let u32_at = |at: usize| Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?));
        let size = u32_at(40)? as usize;
        Some(Self {
            id: u64_at(0)?,
            pid: i32::from_ne_bytes(u32_at(8)?.to_ne_bytes()),
            tid: i32::from_ne_bytes(u32_at(12)?.to_ne_bytes()),
            time: u64_at(16)?,
            cpu: u32_at(24)?,
            raw: body.get(44..44 + size)?,
        })
    }
}

/// `sample_id` words at the end of a non-sample record ([`sys::SAMPLE_TYPE`] with
/// `sample_id_all`: pid/tid, time, cpu, identifier).
pub const SAMPLE_ID_WORDS: usize = 4;

/// The time of a non-sample record, from its `sample_id` trailer.
pub fn trailer_time(body: &[u8]) -> Option<u64> {
    let at = body.len().checked_sub(SAMPLE_ID_WORDS * 8)? + 8;
    Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

/// A `PERF_RECORD_LOST`: (time, events lost).
pub fn lost(body: &[u8]) -> Option<(u64, u64)> {
    let count = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    Some((trailer_time(body).unwrap_or(0), count))
}

/// A `PERF_RECORD_COMM`: (tid, comm).
pub fn comm(body: &[u8]) -> Option<(i32, String)> {
    let tid = i32::from_le_bytes(body.get(4..8)?.try_into().ok()?);
    let name = body.get(8..)?;
    let end = memchr::memchr(0, name).unwrap_or(name.len()).min(16);
    Some((tid, String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// An identity line as the `ftrace:print` record a `trace_marker` write by `pid` makes
/// (`print` is the `ftrace/print` format), padded to 4 bytes like ring-buffer records.
pub fn print_payload(print: &EventFormat, line: &str, pid: i32) -> Option<Vec<u8>> {
    let buf = print.field("buf")?.offset as usize;
    let mut p = vec![0u8; buf];
    p.get_mut(..2)?.copy_from_slice(&u16::try_from(print.id).ok()?.to_le_bytes());
    p.get_mut(4..8)?.copy_from_slice(&pid.to_le_bytes());
    p.extend_from_slice(line.as_bytes());
    p.extend_from_slice(b"\n\0");
    while !p.len().is_multiple_of(4) {
        p.push(0);
    }
    Some(p)
}

/// What the records of a batch are, for counting.
pub fn kind_of(kind: u32) -> RecordKind {
    match kind {
        RECORD_SAMPLE => RecordKind::Sample,
        RECORD_LOST => RecordKind::Lost,
        RECORD_COMM => RecordKind::Comm,
        _ => RecordKind::Other,
    }
}

/// See [`kind_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A tracepoint sample.
    Sample,
    /// Lost samples.
    Lost,
    /// A thread's name.
    Comm,
    /// FORK, EXIT and anything else.
    Other,
}

/// An open perf capture: the rings, their reader threads and what describes the events.
pub struct Session {
    /// Per tracepoint: its name and attr with the kernel's ids (perf.data's attrs).
    pub attrs: Vec<AttrEntry>,
    /// The tracefs texts (formats, header_page, printk formats) of the recorded events.
    pub meta: Metadata,
    /// The events (`sys:event`).
    pub events: Vec<String>,
    /// Selected events this kernel lacks.
    pub missing_events: Vec<String>,
    /// The clock's name and id.
    pub clock: (String, Option<i32>),
    /// The CPUs recorded.
    pub cpus: Vec<u32>,
    /// The session clock's time once every event was enabled.
    pub started_at: Option<u64>,
    /// Descriptors open.
    pub descriptors: usize,
    readers: Vec<(u32, JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
    /// Rings not yet handed to their readers (between open and start).
    rings: Vec<Ring>,
    /// The `vmcs` profile's probes (defined through tracefs), removed after the descriptors.
    pub(crate) probes: Option<crate::probes::InstalledProbes>,
    /// Where the readers take their batches' buffers ([`Session::pool`]).
    pool: BufferPool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("events", &self.events).field("cpus", &self.cpus).finish()
    }
}

/// A clock's current time in nanoseconds.
pub fn clock_now(clockid: i32) -> u64 {
    use rustix::time::ClockId;
    let id = match clockid {
        1 => ClockId::Monotonic,
        4 => ClockId::MonotonicRaw,
        7 => ClockId::Boottime,
        _ => ClockId::Monotonic,
    };
    let t = rustix::time::clock_gettime(id);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// The online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
pub fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            cpus.extend(a..=b.min(a.saturating_add(4095)));
        }
    }
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        cpus = (0..u32::try_from(n).unwrap_or(1)).collect();
    }
    cpus
}

impl Session {
    /// Opens the events of `opts` (disabled): tracepoint ids and formats from tracefs (read
    /// only), one ring per online CPU.
    pub fn open(opts: &RecordOptions) -> Result<Self, RecordError> {
        let clock = CLOCKS.iter().find(|(name, _)| *name == opts.clock).ok_or_else(|| {
            RecordError::Clock {
                clock: opts.clock.clone(),
                available: CLOCKS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
                    + " (the perf backend's clocks)",
            }
        })?;
        let tracefs = match Tracefs::find() {
            Some(root) => Tracefs::at(root),
            None => Tracefs::find_or_mount()?,
        };
        let mut extra = opts.extra_events.clone();
        let probes = match opts.profile {
            crate::Profile::Vmcs => {
                // Dynamic events are defined through tracefs even here; perf then opens them
                // like any tracepoint.
                let p = crate::vmcs_probes(&tracefs)?;
                extra.push(format!("{}:*", p.group));
                Some(p)
            }
            crate::Profile::Exits
            | crate::Profile::Mmu
            | crate::Profile::All
            | crate::Profile::Context => None,
        };
        let mut report = RecordReport::default();
        let mut sel_opts = opts.clone();
        sel_opts.extra_events = extra;
        let events_dir = tracefs.root().join("events");
        let enabled = crate::select_events(&events_dir, "id", &sel_opts, &mut report)?;
        if let Some(p) = &probes {
            let absent: Vec<String> = p
                .probes()
                .iter()
                .filter(|d| !enabled.iter().any(|(s, e)| *s == p.group && *e == d.event))
                .map(|d| format!("the probe event {}:{}", p.group, d.event))
                .collect();
            if !absent.is_empty() {
                return Err(crate::probes::ProbeError::Unsupported { missing: absent }.into());
            }
        }
        let mut specs = Vec::with_capacity(enabled.len());
        for (i, (sys, ev)) in enabled.iter().enumerate() {
            let path = events_dir.join(sys).join(ev).join("id");
            let text = crate::tracefs::read_file(&path)
                .map_err(|source| RecordError::Tracefs { path: path.clone(), source })?;
            let id = String::from_utf8_lossy(&text).trim().parse::<u64>().map_err(|_| {
                RecordError::Tracefs {
                    path: path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                }
            })?;
            specs.push(TracepointSpec {
                name: format!("{sys}:{ev}"),
                id,
                filter: None,
                tracking: i == 0,
            });
        }
        for f in &opts.filters {
            let (sys, ev, expr) = crate::parse_filter(f)?;
            let target = enabled
                .iter()
                .position(|(s, e)| *e == ev && sys.as_deref().is_none_or(|want| want == s))
                .ok_or_else(|| RecordError::FilterEvent(f.clone()))?;
            specs[target].filter = Some(expr);
        }
        let target = thread_target(opts)?;
        let cpus = online_cpus();
        let trace_clock = clock_text(&tracefs, clock.0);
        let ncpus = cpus.iter().max().map_or(1, |c| c + 1);
        let meta = crate::read_metadata_in(&tracefs, tracefs.root(), &enabled, trace_clock, ncpus)?;
        let params = OpenParams {
            clockid: clock.1,
            ring_bytes: usize::try_from(
                opts.buffer_size_kb.unwrap_or(crate::DEFAULT_BUFFER_KB) << 10,
            )
            .unwrap_or(4 << 20),
        };
        sys::raise_fd_limit();
        let (rings, ids) = sys::open(&specs, &cpus, &target, &params).map_err(RecordError::Perf)?;
        let attrs = specs
            .iter()
            .zip(ids)
            .map(|(spec, ids)| AttrEntry {
                attr: sys::tracepoint_attr(spec, &target, &params),
                name: spec.name.clone(),
                ids,
            })
            .collect();
        let descriptors = rings.iter().map(Ring::descriptors).sum();
        Ok(Self {
            attrs,
            meta,
            events: specs.iter().map(|s| s.name.clone()).collect(),
            missing_events: report.missing_events,
            clock: (clock.0.to_string(), clock.1),
            cpus,
            started_at: None,
            descriptors,
            readers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            rings,
            probes,
            pool: BufferPool::new(BATCHES_KEPT),
        })
    }

    /// The pool the readers take their batches' buffers from: a consumer that gives each
    /// batch's `records` back once read lets the readers refill memory already mapped
    /// ([`crate::pool`]).
    pub fn pool(&self) -> BufferPool {
        self.pool.clone()
    }

    /// Starts one reader per CPU, then enables the events. Batches go to the returned receiver
    /// (bounded: a stalled consumer makes readers wait, and the kernel counts what it drops).
    pub fn start(&mut self) -> Result<Receiver<Batch>, RecordError> {
        let (tx, rx) = mpsc::sync_channel::<Batch>(1024);
        let clockid = self.clock.1;
        for ring in &mut self.rings {
            ring.enable().map_err(RecordError::Perf)?;
        }
        self.started_at = clockid.map(clock_now);
        for mut ring in std::mem::take(&mut self.rings) {
            let cpu = ring.cpu;
            let tx = tx.clone();
            let stop = Arc::clone(&self.stop);
            let pool = self.pool.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vmxray-cpu{cpu}"))
                .spawn(move || read_ring(&mut ring, &tx, &stop, clockid, &pool))
                .map_err(RecordError::Thread)?;
            self.readers.push((cpu, handle));
        }
        Ok(rx)
    }

    /// True when a reader thread ended (it only ends when stopped, or when its consumer is
    /// gone).
    pub fn reader_ended(&self) -> bool {
        self.readers.iter().any(|(_, h)| h.is_finished())
    }

    /// Stops the readers after a last drain; returns which reader threads panicked.
    pub fn stop(&mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        let mut panicked = Vec::new();
        for (cpu, h) in self.readers.drain(..) {
            if h.join().is_err() {
                panicked.push(cpu);
            }
        }
        panicked
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stop();
        // The rings (descriptors) are gone with their readers; the probes may go now.
        if let Some(p) = self.probes.take() {
            let _ = p.remove();
        }
    }
}

/// `--pid` and `threads`: every thread of each process now, and the given threads.
fn thread_target(opts: &RecordOptions) -> Result<Target, RecordError> {
    if opts.pids.is_empty() && opts.threads.is_empty() {
        return Ok(Target::All);
    }
    let mut tids: Vec<u32> = opts.threads.clone();
    for pid in &opts.pids {
        let dir = format!("/proc/{pid}/task");
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(RecordError::NoProcess(*pid));
        }
        tids.push(*pid);
        tids.extend(crate::list_dir(Path::new(&dir)).iter().filter_map(|t| t.parse::<u32>().ok()));
    }
    tids.sort_unstable();
    tids.dedup();
    Ok(Target::Threads(tids))
}

/// The top-level `trace_clock` list with `clock` selected (what trace.dat's TRACECLOCK holds).
fn clock_text(tracefs: &Tracefs, clock: &str) -> String {
    let listed = tracefs.read("trace_clock").map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut names: Vec<String> = listed
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.trim_matches(['[', ']']).to_string())
        .collect();
    if !names.iter().any(|n| n == clock) {
        names.push(clock.to_string());
    }
    names
        .into_iter()
        .map(|n| if n == clock { format!("[{n}]") } else { n })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Batches are sent at this size even if the ring has more.
const BATCH_BYTES: usize = 256 << 10;
/// Emptied batch buffers kept for the readers (what is in flight between them and the
/// consumer; up to 8 MiB).
const BATCHES_KEPT: usize = 32;
/// The longest a reader waits before draining again (bounds the latency of a partly filled
/// ring, and of stop). A live capture releases events every 100 ms ([`crate::live::TICK`]):
/// waking more often than that only costs (an idle reader's wakeups were most of an idle
/// `vmxray top`'s CPU time after the identity scans).
pub const POLL: Duration = Duration::from_millis(100);

fn read_ring(
    ring: &mut Ring,
    tx: &SyncSender<Batch>,
    stop: &AtomicBool,
    clockid: Option<i32>,
    pool: &BufferPool,
) {
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping {
            ring.disable();
        }
        loop {
            let watermark = clockid.map(clock_now);
            let mut buf = pool.take();
            let count = ring.drain(&mut buf, BATCH_BYTES);
            let full = buf.len() >= BATCH_BYTES;
            // Empty batches too: their watermark says the CPU is idle up to now. A batch cut
            // at its size left records behind: no watermark then.
            let watermark = watermark.filter(|_| !full);
            if tx.send(Batch { cpu: ring.cpu, records: buf, count, watermark }).is_err() {
                return;
            }
            if !full {
                break;
            }
        }
        if stopping {
            return;
        }
        ring.wait(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmxray_capture::write::perfdata::record;

    #[test]
    fn samples_and_trailers_parse() {
        let mut body = Vec::new();
        body.extend_from_slice(&7u64.to_le_bytes()); // identifier
        body.extend_from_slice(&100i32.to_le_bytes());
        body.extend_from_slice(&101i32.to_le_bytes());
        body.extend_from_slice(&5000u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes()); // period
        body.extend_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&[1, 2, 3, 4]);
        let rec = record(RECORD_SAMPLE, 0, &body);
        let mut lost_body = Vec::new();
        lost_body.extend_from_slice(&7u64.to_le_bytes());
        lost_body.extend_from_slice(&42u64.to_le_bytes());
        for w in [0u64, 6000, 1, 7] {
            lost_body.extend_from_slice(&w.to_le_bytes());
        }
        let mut buf = rec.clone();
        buf.extend_from_slice(&record(RECORD_LOST, 0, &lost_body));
        buf.extend_from_slice(&[9, 0, 0, 0, 0, 0, 3, 0]); // size 3: the walk stops
        let all: Vec<RawRecord<'_>> = records(&buf).collect();
        assert_eq!(all.len(), 2);
        let s = Sample::parse(all[0].body()).unwrap();
        assert_eq!(
            (s.id, s.pid, s.tid, s.time, s.cpu, s.raw),
            (7, 100, 101, 5000, 1, &[1, 2, 3, 4][..])
        );
        assert_eq!(lost(all[1].body()), Some((6000, 42)));
        assert_eq!(Sample::parse(&body[..43]), None);
    }

    #[test]
    fn cpu_lists_parse() {
        assert!(!online_cpus().is_empty());
    }
}
