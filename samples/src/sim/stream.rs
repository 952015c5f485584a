//! Streaming simulation: every script on its own thread, the per-vCPU event streams merged as
//! they come, so that a run of any length takes memory for a few batches per vCPU, not for its
//! events.
//!
//! ```text
//!  script thread (vCPU 0) ── LaneBatch (4096 events + their vmcs12 writes) ──┐
//!  script thread (vCPU 1) ── LaneBatch ──────────────────────────────────────┤  merge by
//!  script thread (init: vCPUs 0 and 1, one lane each) ──────────────────────┘  (ts, cpu)
//!        ▲ a full channel blocks its script                                      │
//!        └── the merger drops the channels once it has `limit` events:           ▼
//!            every script then sees its vCPU dead and ends          sink(event), global index
//! ```
//!
//! The merge is the order [`super::simulate`] sorts by (timestamp, then CPU; each vCPU's own
//! events are in time order on its own CPU), so a bounded streaming run ([`Length::Rounds`])
//! gives exactly the events and ground truth of [`super::simulate`]. With
//! [`Length::Events`], every main loop runs until the merger has `limit` events (the scenario's
//! `iterations` still place what happens once), and the trace is those first events.
//!
//! The ground truth stays exact: a vmcs12 write is resolved to the global index of the event
//! that follows it when that event is merged, and bug sites (which scripts may set after the
//! fact) are resolved at the end through each lane's record of where its events went: one
//! byte per event (the gap to the lane's previous global index, as a varint), kept only when
//! the flavour can have bug sites.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use vmxray_events::Event;

use super::scenarios::{self, Job};
use super::truth::{BugSite, GroundTruth, Landmark, VcpuThread, Vmcs12Write};
use super::{Scenario, SimConfig, SimError};

/// Events a vCPU buffers before handing them to the merger.
pub(crate) const LANE_BATCH: usize = 4096;
/// Batches a vCPU may have waiting for the merger before its script blocks.
const LANE_DEPTH: usize = 4;

/// One batch of a vCPU's events and the vmcs12 writes recorded among them (each with the
/// local index of the event it precedes).
pub(crate) struct LaneBatch {
    pub(crate) events: Vec<Event>,
    pub(crate) writes: Vec<(usize, Vmcs12Write)>,
}

/// The sending end of a vCPU's lane. Scripts that drive two vCPUs (`init`) get unbounded
/// lanes: a bounded one could block the script on one vCPU while the merger waits for the
/// other.
pub(crate) enum LaneSender {
    Bounded(SyncSender<LaneBatch>),
    Unbounded(Sender<LaneBatch>),
}

impl LaneSender {
    /// False when the merger is gone.
    pub(crate) fn send(&self, batch: LaneBatch) -> bool {
        match self {
            Self::Bounded(tx) => tx.send(batch).is_ok(),
            Self::Unbounded(tx) => tx.send(batch).is_ok(),
        }
    }
}

/// How long a streaming run goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// The scenario's `iterations` rounds, like [`super::simulate`] (same events, same truth).
    Rounds,
    /// Every loop unbounded; the trace is the first `n` events in trace order (fewer when
    /// every vCPU's script ends first: a crash, or `init`'s bounded steps).
    Events(u64),
}

/// What a streaming run produced besides the events it handed to the sink.
#[derive(Clone, Debug)]
pub struct StreamSummary {
    /// Events handed to the sink.
    pub events: u64,
    /// The ground truth, with indices into the streamed events (vmcs12 writes only when
    /// asked for).
    pub truth: GroundTruth,
}

/// A streaming run failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] SimError),
    /// The sink refused an event.
    #[error("Cannot write the simulated trace")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A script thread panicked (a simulator bug).
    #[error("A simulator thread failed")]
    Thread,
}

/// Where a lane's events went in the merged stream: one varint per event (the gap to the
/// lane's previous global index), with the global index itself every [`GapMap::MARK`] events.
#[derive(Default)]
struct GapMap {
    bytes: Vec<u8>,
    marks: Vec<(u64, usize)>,
    last: u64,
    len: usize,
}

impl GapMap {
    const MARK: usize = 1024;

    fn push(&mut self, global: u64) {
        if self.len.is_multiple_of(Self::MARK) {
            self.marks.push((global, self.bytes.len()));
        } else {
            let mut gap = global - self.last - 1;
            while gap >= 0x80 {
                self.bytes.push(u8::try_from(gap & 0x7f).unwrap_or(0) | 0x80);
                gap >>= 7;
            }
            self.bytes.push(u8::try_from(gap).unwrap_or(0));
        }
        self.last = global;
        self.len += 1;
    }

    fn get(&self, local: usize) -> Option<u64> {
        if local >= self.len {
            return None;
        }
        let (mut global, mut pos) = *self.marks.get(local / Self::MARK)?;
        for _ in 0..local % Self::MARK {
            let mut gap = 0u64;
            let mut shift = 0;
            loop {
                let b = *self.bytes.get(pos)?;
                pos += 1;
                gap |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            global += gap + 1;
        }
        Some(global)
    }
}

/// The receiving end of one vCPU's stream, in the merger.
struct Lane {
    rx: Option<Receiver<LaneBatch>>,
    cpu: u32,
    batch: VecDeque<Event>,
    pending_writes: VecDeque<(usize, Vmcs12Write)>,
    /// Events of this lane merged so far (the local index of the next one).
    merged: usize,
    map: Option<GapMap>,
}

impl Lane {
    /// The next event's merge key, receiving a batch when the current one is used up; None
    /// when the lane has ended.
    fn key(&mut self) -> Option<(u64, u32)> {
        while self.batch.is_empty() {
            let batch = self.rx.as_ref()?.recv().ok();
            let Some(batch) = batch else {
                self.rx = None;
                return None;
            };
            self.batch = batch.events.into();
            self.pending_writes.extend(batch.writes);
        }
        self.batch.front().map(|e| (e.ts, self.cpu))
    }
}

/// Runs `cfg` with one thread per script and hands the events to `sink` in trace order; with
/// `keep_writes`, the ground truth lists every vmcs12 write (they are kept in memory, about
/// 50 bytes each).
pub fn simulate_stream<E>(
    cfg: &SimConfig,
    length: Length,
    keep_writes: bool,
    mut sink: impl FnMut(&Event) -> Result<(), E>,
) -> Result<StreamSummary, StreamError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    cfg.validate()?;
    let limit = match length {
        Length::Rounds => u64::MAX,
        Length::Events(n) => n,
    };
    let jobs = scenarios::plan(cfg, matches!(length, Length::Events(_)));
    // Bug sites, and the landmarks of issue 15's scenarios, need each lane's index map.
    let track_sites = cfg.kvm.bug().is_some() || marks_landmarks(cfg.scenario);
    let mut lanes: Vec<Lane> = Vec::new();
    let mut threads: Vec<VcpuThread> = Vec::new();
    let mut prepared: Vec<Job> = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let coupled = job.vcpus.len() > 1;
        for v in &mut job.vcpus {
            let (sender, rx) = if coupled {
                let (tx, rx) = mpsc::channel();
                (LaneSender::Unbounded(tx), rx)
            } else {
                let (tx, rx) = mpsc::sync_channel(LANE_DEPTH);
                (LaneSender::Bounded(tx), rx)
            };
            v.stream = Some(sender);
            v.keep_writes = keep_writes;
            v.events.reserve(LANE_BATCH);
            threads.push(VcpuThread {
                vcpu_id: v.id,
                pid: v.pid,
                comm: v.comm.to_string(),
                cpu: v.cpu,
            });
            lanes.push(Lane {
                rx: Some(rx),
                cpu: v.cpu,
                batch: VecDeque::new(),
                pending_writes: VecDeque::new(),
                merged: 0,
                map: track_sites.then(GapMap::default),
            });
        }
        prepared.push(job);
    }
    // Lanes are numbered in job order; the truth lists vCPUs by id.
    let ids: Vec<u32> = prepared.iter().flat_map(|j| j.vcpus.iter().map(|v| v.id)).collect();

    std::thread::scope(|scope| {
        let handles: Vec<_> = prepared
            .into_iter()
            .map(|mut job| {
                scope.spawn(move || {
                    (job.script)(&mut job.vcpus);
                    for v in &mut job.vcpus {
                        v.flush_stream();
                        // Dropping the sender ends the lane.
                        v.stream = None;
                    }
                    job.vcpus
                })
            })
            .collect();

        let mut writes: Vec<Vmcs12Write> = Vec::new();
        let mut count = 0u64;
        let mut heap: BinaryHeap<Reverse<((u64, u32), usize)>> = BinaryHeap::new();
        for (i, lane) in lanes.iter_mut().enumerate() {
            if let Some(k) = lane.key() {
                heap.push(Reverse((k, i)));
            }
        }
        let mut sink_error = None;
        while count < limit {
            let Some(Reverse((_, i))) = heap.pop() else { break };
            let lane = &mut lanes[i];
            // Take this lane's events while they stay the earliest.
            while let Some(event) = lane.batch.pop_front() {
                if let Err(e) = sink(&event) {
                    sink_error = Some(StreamError::Sink(Box::new(e)));
                    break;
                }
                if let Some(map) = &mut lane.map {
                    map.push(count);
                }
                while lane.pending_writes.front().is_some_and(|(at, _)| *at == lane.merged) {
                    if let Some((_, mut w)) = lane.pending_writes.pop_front() {
                        w.before_event = usize::try_from(count).unwrap_or(usize::MAX);
                        writes.push(w);
                    }
                }
                lane.merged += 1;
                count += 1;
                if count >= limit {
                    break;
                }
                let Some(k) = lane.key() else { break };
                if heap.peek().is_some_and(|Reverse((top, _))| *top < k) {
                    heap.push(Reverse((k, i)));
                    break;
                }
            }
            if sink_error.is_some() {
                break;
            }
        }
        let cut = count >= limit && limit != u64::MAX;
        // Stop every script: their next batch finds the lane closed.
        let mut tails = Vec::new();
        for lane in &mut lanes {
            lane.rx = None;
            tails.push(std::mem::take(&mut lane.pending_writes));
        }
        let mut vcpus = Vec::new();
        for h in handles {
            vcpus.extend(h.join().map_err(|_| StreamError::Thread)?);
        }
        if let Some(e) = sink_error {
            return Err(e);
        }
        let total = usize::try_from(count).unwrap_or(usize::MAX);
        if !cut {
            // Writes after a vCPU's last event: "none follows" is the end of the trace.
            for tail in tails {
                for (_, mut w) in tail {
                    w.before_event = total;
                    writes.push(w);
                }
            }
        }
        writes.sort_by_key(|w| (w.ts, w.vcpu));

        let mut occurrences = Vec::new();
        let mut landmarks = Vec::new();
        for v in &vcpus {
            let Some(lane) = ids.iter().position(|id| *id == v.id).and_then(|i| lanes.get(i))
            else {
                continue;
            };
            let map = |local: usize| {
                lane.map
                    .as_ref()
                    .and_then(|m| m.get(local))
                    .map_or(total, |g| usize::try_from(g).unwrap_or(usize::MAX))
            };
            for s in &v.sites {
                if cut && s.trigger >= lane.merged {
                    // It happened after the trace ends.
                    continue;
                }
                occurrences.push(BugSite {
                    bug: s.bug,
                    vcpu: v.id,
                    trigger: map(s.trigger),
                    first_difference: map(s.first_difference),
                    divergence: map(s.divergence),
                    note: s.note,
                    cycle_starts: s.cycle_starts.iter().map(|&li| map(li)).collect(),
                });
            }
            for l in &v.landmarks {
                if cut && l.at >= lane.merged {
                    continue;
                }
                landmarks.push(Landmark {
                    what: l.what,
                    vcpu: v.id,
                    at: map(l.at),
                    evidence: l.evidence.iter().map(|&li| map(li)).collect(),
                    note: l.note,
                });
            }
        }
        occurrences.sort_by_key(|s| s.divergence);
        landmarks.sort_by_key(|l| l.at);
        let mut threads = threads;
        threads.sort_by_key(|t| t.vcpu_id);
        let truth = GroundTruth {
            scenario: cfg.scenario.name(),
            kernel: cfg.kernel,
            kvm: cfg.kvm,
            seed: cfg.seed,
            bug: occurrences.first().cloned(),
            occurrences,
            vcpus: threads,
            vmcs12_writes: writes,
            landmarks,
        };
        Ok(StreamSummary { events: count, truth })
    })
}

/// The scenarios whose scripts mark landmarks (what triage must explain) in every flavour.
fn marks_landmarks(scenario: Scenario) -> bool {
    matches!(
        scenario,
        Scenario::EptLivelock
            | Scenario::IrqReinjectLoop
            | Scenario::ExceptionDeliveryLoop
            | Scenario::EfaultLoop
            | Scenario::EoiLoop
            | Scenario::FailedNestedEntry
            | Scenario::NestedTripleFault
            | Scenario::NsvmRsm
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_map_gives_back_every_index() {
        let mut m = GapMap::default();
        let globals: Vec<u64> = (0..5000u64)
            .scan(0u64, |g, i| {
                *g += 1 + (i * 7919) % 300;
                Some(*g)
            })
            .collect();
        for g in &globals {
            m.push(*g);
        }
        for (i, g) in globals.iter().enumerate() {
            assert_eq!(m.get(i), Some(*g));
        }
        assert_eq!(m.get(globals.len()), None);
    }
}
