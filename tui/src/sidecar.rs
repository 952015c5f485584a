//! The index of a trace file saved beside it (`FILE.vmxidx`), so that opening it again shows
//! everything at once: the blocks and where they are, the lanes' summaries, the anomalies,
//! crashes, lost markers, actors, the statistics report and what reading counted. Model
//! checkpoints are not saved (the model has no stable serialized form): a background replay
//! rebuilds them, and the State view and the rows' levels fill in as it goes.
//!
//! The file is ours (little-endian, versioned); the statistics report inside is its JSON. It is
//! valid for the trace whose size, modification time and hash of its first MiB it records,
//! and for this format version: anything else is ignored and the trace is read again. When the
//! trace's directory is not writable, the index goes to `$XDG_CACHE_HOME/vmxray/` (default
//! `~/.cache/vmxray/`), named by a hash of the trace's absolute path.
//!
//! ```text
//!  "VMXIDX\0" u32 version | u64 size, u64 mtime ns, u64 hash | u64 events
//!  | blocks (u64 first, u32 len, u64 first_ts, u8 kind, positions)
//!  | lanes (u64 fine per bucket, buckets: u64 first, u64 len, actors: 4×u32, u8 worst)
//!  | actors | anomalies | crashes | lost | read stats | stats report (JSON)
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use vmxray_analyze::stats::StatsReport;
use vmxray_capture::read::tracedat::LanePos;
use vmxray_capture::{LostOnCpu, ReadStats};
use vmxray_events::{Actor, Vcpu, VmId};
use vmxray_replay::{Anomaly, EventIndex, RuleId, Severity};

use crate::store::{Block, BlockPos};
use crate::summary::{ActorCounts, Bucket};

const MAGIC: &[u8; 8] = b"VMXIDX\0\0";
const VERSION: u32 = 1;
/// Bytes of the trace hashed into its identity.
const HASHED: u64 = 1 << 20;

/// What identifies the trace an index belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: u64,
    /// FNV-1a of its first MiB.
    pub hash: u64,
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Identity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut head = Vec::new();
        File::open(path)?.take(HASHED).read_to_end(&mut head)?;
        Ok(Self { size: meta.len(), mtime_ns, hash: fnv1a(&head, FNV_OFFSET) })
    }
}

/// The saved index.
#[derive(Debug, Default)]
pub struct Sidecar {
    /// Events.
    pub events: u64,
    /// The blocks (trace.dat or text positions).
    pub blocks: Vec<Block>,
    /// Fine buckets per bucket of `buckets`.
    pub fine_per_bucket: u64,
    /// The lanes' buckets.
    pub buckets: Vec<Bucket>,
    /// Actors in first-seen order.
    pub actors: Vec<Actor>,
    /// Anomalies in event order.
    pub anomalies: Vec<Anomaly>,
    /// Fatal events (their kind is read again from the event).
    pub crashes: Vec<u64>,
    /// Lost markers.
    pub lost: Vec<u64>,
    /// What reading counted (without the skipped problems' details).
    pub read: ReadStats,
    /// The statistics report.
    pub stats: Option<StatsReport>,
}

/// Where the index of `trace` goes: beside it, or in the cache directory.
pub fn locations(trace: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut beside = trace.as_os_str().to_owned();
    beside.push(".vmxidx");
    out.push(PathBuf::from(beside));
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        let abs = std::fs::canonicalize(trace).unwrap_or_else(|_| trace.to_path_buf());
        let key = fnv1a(abs.as_os_str().as_encoded_bytes(), FNV_OFFSET);
        out.push(cache.join("vmxray").join(format!("{key:016x}.vmxidx")));
    }
    out
}

/// Saves the index of `trace`; returns where.
pub fn save(trace: &Path, identity: Identity, sidecar: &Sidecar) -> io::Result<PathBuf> {
    let mut last = io::Error::other("no place to save the index");
    for path in locations(trace) {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("vmxidx.tmp");
        let written = File::create(&tmp).and_then(|f| {
            let mut w = BufWriter::new(f);
            encode(&mut w, identity, sidecar)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        });
        match written.and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => return Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                last = e;
            }
        }
    }
    Err(last)
}

/// The saved index of `trace`, if one exists for the file as it is now.
pub fn load(trace: &Path) -> Option<Sidecar> {
    let identity = Identity::of(trace).ok()?;
    for path in locations(trace) {
        let Ok(f) = File::open(&path) else { continue };
        let mut bytes = Vec::new();
        if BufReader::new(f).read_to_end(&mut bytes).is_err() {
            continue;
        }
        if let Some(s) = decode(&bytes, identity) {
            return Some(s);
        }
    }
    None
}

// ---- encoding ---------------------------------------------------------------------------

struct Out<'w, W: Write>(&'w mut W);

impl<W: Write> Out<'_, W> {
    fn u8(&mut self, v: u8) -> io::Result<()> {
        self.0.write_all(&[v])
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.0.write_all(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.0.write_all(&v.to_le_bytes())
    }
    fn len(&mut self, n: usize) -> io::Result<()> {
        self.u64(n as u64)
    }
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.len(b.len())?;
        self.0.write_all(b)
    }
    fn actor(&mut self, a: &Actor) -> io::Result<()> {
        match a {
            Actor::Vcpu(v) => {
                self.u8(0)?;
                self.u32(v.vm.0)?;
                self.u32(v.id)
            }
            Actor::Thread(pid) => {
                self.u8(1)?;
                self.u32(0)?;
                self.u32(u32::from_ne_bytes(pid.to_ne_bytes()))
            }
        }
    }
}

fn encode<W: Write>(w: &mut W, id: Identity, s: &Sidecar) -> io::Result<()> {
    let mut o = Out(w);
    o.0.write_all(MAGIC)?;
    o.u32(VERSION)?;
    o.u64(id.size)?;
    o.u64(id.mtime_ns)?;
    o.u64(id.hash)?;
    o.u64(s.events)?;
    o.len(s.blocks.len())?;
    for b in &s.blocks {
        o.u64(b.first)?;
        o.u32(b.len)?;
        o.u64(b.first_ts)?;
        match &b.pos {
            BlockPos::Dat(lanes) => {
                o.u8(0)?;
                o.len(lanes.len())?;
                for l in lanes.iter() {
                    o.u32(l.lane)?;
                    o.u32(l.chunk)?;
                    o.u32(l.skip)?;
                }
            }
            BlockPos::Text { offset, len } => {
                o.u8(1)?;
                o.u64(*offset)?;
                o.u64(*len)?;
            }
            BlockPos::Resident(_) => return Err(io::Error::other("resident blocks are not saved")),
        }
    }
    o.u64(s.fine_per_bucket)?;
    o.len(s.buckets.len())?;
    for b in &s.buckets {
        o.u64(b.first)?;
        o.u64(b.len)?;
        o.len(b.actors.len())?;
        for a in &b.actors {
            for t in a.tiers {
                o.u32(t)?;
            }
            o.u8(a.worst)?;
        }
    }
    o.len(s.actors.len())?;
    for a in &s.actors {
        o.actor(a)?;
    }
    o.len(s.anomalies.len())?;
    for a in &s.anomalies {
        o.bytes(a.rule.name().as_bytes())?;
        o.u8(u8::try_from(a.severity.rank()).unwrap_or(0))?;
        o.actor(&a.vcpu)?;
        o.u64(a.at.0)?;
        o.len(a.evidence.len())?;
        for e in &a.evidence {
            o.u64(e.0)?;
        }
        o.bytes(a.message.as_bytes())?;
    }
    for list in [&s.crashes, &s.lost] {
        o.len(list.len())?;
        for v in list {
            o.u64(*v)?;
        }
    }
    let r = &s.read;
    o.u64(r.events)?;
    o.u64(r.skipped)?;
    o.len(r.lost.len())?;
    for (cpu, l) in &r.lost {
        o.u32(*cpu)?;
        o.u64(l.markers)?;
        o.u64(l.events)?;
        o.u64(l.uncounted_markers)?;
    }
    o.len(r.unknown_events.len())?;
    for (k, n) in &r.unknown_events {
        o.bytes(k.as_bytes())?;
        o.u64(*n)?;
    }
    let stats = match &s.stats {
        Some(st) => serde_json::to_vec(st).map_err(io::Error::other)?,
        None => Vec::new(),
    };
    o.bytes(&stats)
}

struct In<'a> {
    b: &'a [u8],
    at: usize,
}

impl In<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count, bounded by what the rest of the file could hold.
    fn len(&mut self, min_item: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n.checked_mul(min_item.max(1))? <= self.b.len() - self.at).then_some(n)
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.len(1)?;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn actor(&mut self) -> Option<Actor> {
        let kind = self.u8()?;
        let vm = self.u32()?;
        let id = self.u32()?;
        match kind {
            0 => Some(Actor::Vcpu(Vcpu { vm: VmId(vm), id })),
            1 => Some(Actor::Thread(i32::from_ne_bytes(id.to_ne_bytes()))),
            _ => None,
        }
    }
}

fn decode(bytes: &[u8], id: Identity) -> Option<Sidecar> {
    let mut i = In { b: bytes, at: 0 };
    if i.take(8)? != MAGIC || i.u32()? != VERSION {
        return None;
    }
    let saved = Identity { size: i.u64()?, mtime_ns: i.u64()?, hash: i.u64()? };
    if saved != id {
        return None;
    }
    let mut s = Sidecar { events: i.u64()?, ..Sidecar::default() };
    for _ in 0..i.len(21)? {
        let (first, len, first_ts) = (i.u64()?, i.u32()?, i.u64()?);
        let pos = match i.u8()? {
            0 => {
                let n = i.len(12)?;
                let mut lanes = Vec::with_capacity(n);
                for _ in 0..n {
                    lanes.push(LanePos { lane: i.u32()?, chunk: i.u32()?, skip: i.u32()? });
                }
                BlockPos::Dat(lanes.into_boxed_slice())
            }
            1 => BlockPos::Text { offset: i.u64()?, len: i.u64()? },
            _ => return None,
        };
        s.blocks.push(Block { first, len, first_ts, pos });
    }
    s.fine_per_bucket = i.u64()?;
    for _ in 0..i.len(24)? {
        let (first, len) = (i.u64()?, i.u64()?);
        let n = i.len(17)?;
        let mut actors = Vec::with_capacity(n);
        for _ in 0..n {
            let tiers = [i.u32()?, i.u32()?, i.u32()?, i.u32()?];
            actors.push(ActorCounts { tiers, worst: i.u8()? });
        }
        s.buckets.push(Bucket { first, len, actors });
    }
    for _ in 0..i.len(9)? {
        s.actors.push(i.actor()?);
    }
    for _ in 0..i.len(40)? {
        let rule: RuleId = i.string()?.parse().ok()?;
        let severity = Severity::ALL.get(usize::from(i.u8()?)).copied()?;
        let vcpu = i.actor()?;
        let at = EventIndex(i.u64()?);
        let mut evidence = Vec::new();
        for _ in 0..i.len(8)? {
            evidence.push(EventIndex(i.u64()?));
        }
        let message = i.string()?;
        s.anomalies.push(Anomaly { rule, severity, vcpu, at, evidence, message });
    }
    for list in [&mut s.crashes, &mut s.lost] {
        for _ in 0..i.len(8)? {
            list.push(i.u64()?);
        }
    }
    s.read.events = i.u64()?;
    s.read.skipped = i.u64()?;
    for _ in 0..i.len(28)? {
        let cpu = i.u32()?;
        let l = LostOnCpu { markers: i.u64()?, events: i.u64()?, uncounted_markers: i.u64()? };
        s.read.lost.insert(cpu, l);
    }
    for _ in 0..i.len(16)? {
        let k = i.string()?;
        s.read.unknown_events.insert(k, i.u64()?);
    }
    let stats = i.bytes()?;
    s.stats = if stats.is_empty() { None } else { serde_json::from_slice(stats).ok() };
    Some(s)
}
