//! Live statistics for `vmxray top`: what a running host does, interval by interval.
//!
//! [`LiveStats`] is a [`Sink`] of the one [`crate::pass::Pass`]: it sees each event after the
//! model stepped it, with the model's attribution (VM, vCPU) and its anomalies. It keeps
//!
//! - **counters** since the last [`LiveStats::tick`] (rates per interval, as `kvm_stat`) and
//!   since the start: events by name, `kvm_exit`s by reason and level, by VM and by vCPU,
//!   userspace exits by reason, lost events, anomalies;
//! - **exit latency** (exit → next entry of the same vCPU, as `vmxray stats`) in one histogram
//!   per second of trace time and reason, so that percentiles cover a sliding window of the
//!   last [`LiveConfig::window`];
//! - **anomalies** as the model reports them (the newest [`LiveConfig::max_anomalies`]);
//! - **stuck vCPUs** ([`StuckDetector`]).
//!
//! **Level.** As in [`crate::stats`]: an exit is an L2 exit when a `kvm_nested_vmexit` of the
//! same vCPU follows it before its next entry; every other exit is an L1 exit (a plain guest is
//! L1). The level is known when the exit closes (its entry, or the vCPU's next exit), so an exit
//! is counted then.
//!
//! [`Snapshot`] is what a screen or a log line shows: rates and tables sorted by rate,
//! serializable (`vmxray top --batch --json` prints one per interval).
//!
//! ```
//! use std::time::Duration;
//! use vmxray_analyze::live::{LiveConfig, LiveStats};
//! use vmxray_analyze::pass::{Pass, PassConfig};
//! use vmxray_events::test_util::EventBuilder;
//!
//! let mut t = EventBuilder::new();
//! for _ in 0..3 {
//!     t.l1_exit(48, 0x1000); // EPT_VIOLATION, then its entry
//! }
//! let mut pass = Pass::new(PassConfig::default());
//! let mut live = LiveStats::new(LiveConfig::default());
//! for e in &t.events {
//!     let _ = pass.step(e, &mut live);
//! }
//! let snap = live.tick(Duration::from_secs(1), pass.model());
//! assert_eq!(snap.interval.exits, 3);
//! assert_eq!(snap.reasons[0].name, "EPT_VIOLATION");
//! assert_eq!(snap.reasons[0].l1, 3);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::ControlFlow;
use std::time::Duration;

use serde::Serialize;
use vmxray_events::codes::{ExitCode, UserspaceExitReason};
use vmxray_events::{Actor, Event, EventKind, KnownEvent, VmId};
use vmxray_replay::{Model, Severity};

use crate::histogram::LogHistogram;
use crate::pass::{Sink, Stepped};

// The live statistics hash a few small keys per event: foldhash, as the other per-event maps
// (`crate::FastMap`); SipHash's resistance to chosen keys buys nothing for our own counters.
use crate::FastMap as HashMap;

/// How the live statistics run.
#[derive(Clone, Copy, Debug)]
pub struct LiveConfig {
    /// The latency percentiles' sliding window (trace time).
    pub window: Duration,
    /// Anomalies kept for display.
    pub max_anomalies: usize,
    /// The stuck-vCPU detector.
    pub stuck: StuckConfig,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self { window: Duration::from_secs(10), max_anomalies: 500, stuck: StuckConfig::default() }
    }
}

/// When a vCPU counts as stuck (see [`StuckDetector`]).
#[derive(Clone, Copy, Debug)]
pub struct StuckConfig {
    /// A loop needs at least this many exit-like events in [`StuckConfig::span`].
    pub min_events: usize,
    /// ... made of at most this many distinct ones.
    pub max_distinct: usize,
    /// The trace time looked at.
    pub span: Duration,
    /// An exit without an entry for this long (while the trace goes on) is a stall.
    pub stall: Duration,
}

impl Default for StuckConfig {
    fn default() -> Self {
        Self {
            min_events: 200,
            max_distinct: 2,
            span: Duration::from_secs(1),
            stall: Duration::from_secs(2),
        }
    }
}

/// Counters of one period.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Events.
    pub events: u64,
    /// Events the kernel lost.
    pub lost: u64,
    /// `kvm_exit`s (closed).
    pub exits: u64,
    /// Of which L1 exits.
    pub l1: u64,
    /// Of which L2 exits.
    pub l2: u64,
    /// `kvm_userspace_exit`s.
    pub userspace_exits: u64,
    /// Anomalies.
    pub anomalies: u64,
    #[serde(skip)]
    by_reason: HashMap<ExitCode, (u64, u64)>,
    #[serde(skip)]
    by_actor: HashMap<Actor, ActorCount>,
    /// The counts of the newest actor's run of events, not yet added to `by_actor`
    /// ([`Counts::settle_names`]): a vCPU's events come in runs, and a hash lookup per event
    /// was a twentieth of `vmxray top`'s CPU time.
    #[serde(skip)]
    actor_run: Option<(Actor, ActorCount)>,
    #[serde(skip)]
    by_name: HashMap<Box<str>, u64>,
    /// Typed events counted by [`KnownEvent`] index (no name hashed per event), moved into
    /// `by_name` at the interval's end ([`Counts::settle_names`]).
    #[serde(skip)]
    by_known: Vec<u64>,
    #[serde(skip)]
    by_userspace: HashMap<UserspaceExitReason, u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct ActorCount {
    events: u64,
    exits: u64,
    l2: u64,
    userspace: u64,
}

impl ActorCount {
    fn add(&mut self, other: &Self) {
        self.events += other.events;
        self.exits += other.exits;
        self.l2 += other.l2;
        self.userspace += other.userspace;
    }
}

impl Counts {
    /// The counts of `actor` in the current run (the previous run's go to `by_actor`).
    fn actor(&mut self, actor: Actor) -> &mut ActorCount {
        if self.actor_run.is_some_and(|(a, _)| a != actor) {
            self.settle_actor();
        }
        &mut self.actor_run.get_or_insert_with(|| (actor, ActorCount::default())).1
    }

    /// Adds the current run's counts to `by_actor`.
    fn settle_actor(&mut self) {
        if let Some((actor, run)) = self.actor_run.take() {
            self.by_actor.entry(actor).or_default().add(&run);
        }
    }

    fn event(&mut self, event: &Event, actor: Option<Actor>) {
        self.events += 1;
        if let Some(known) = event.kind.known() {
            let k = known as usize;
            if k >= self.by_known.len() {
                self.by_known.resize(KnownEvent::ALL.len().max(k + 1), 0);
            }
            self.by_known[k] += 1;
        } else {
            let name = event.name();
            match self.by_name.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    self.by_name.insert(name.into(), 1);
                }
            }
        }
        if let Some(a) = actor {
            self.actor(a).events += 1;
        }
        match &event.kind {
            EventKind::Lost { count } => self.lost += count.unwrap_or(1),
            EventKind::KvmUserspaceExit { reason, .. } => {
                self.userspace_exits += 1;
                *self.by_userspace.entry(*reason).or_default() += 1;
                if let Some(a) = actor {
                    self.actor(a).userspace += 1;
                }
            }
            _ => {}
        }
    }

    /// Moves the typed events' counts into `by_name`, and the current actor run's into
    /// `by_actor`.
    fn settle_names(&mut self) {
        self.settle_actor();
        for (known, count) in KnownEvent::ALL.iter().zip(&mut self.by_known) {
            if *count > 0 {
                *self.by_name.entry(known.0.name().into()).or_default() += *count;
                *count = 0;
            }
        }
    }

    /// Adds another period's counters.
    fn merge(&mut self, other: &Self) {
        self.events += other.events;
        self.lost += other.lost;
        self.exits += other.exits;
        self.l1 += other.l1;
        self.l2 += other.l2;
        self.userspace_exits += other.userspace_exits;
        self.anomalies += other.anomalies;
        for (k, (a, b)) in &other.by_reason {
            let e = self.by_reason.entry(*k).or_default();
            e.0 += a;
            e.1 += b;
        }
        for (k, v) in other.by_actor.iter().chain(other.actor_run.iter().map(|(k, v)| (k, v))) {
            self.by_actor.entry(*k).or_default().add(v);
        }
        for (k, v) in &other.by_name {
            match self.by_name.get_mut(k) {
                Some(n) => *n += v,
                None => {
                    self.by_name.insert(k.clone(), *v);
                }
            }
        }
        for (k, v) in &other.by_userspace {
            *self.by_userspace.entry(*k).or_default() += v;
        }
    }

    fn exit(&mut self, actor: Actor, reason: ExitCode, l2: bool) {
        self.exits += 1;
        let a = self.actor(actor);
        a.exits += 1;
        if l2 {
            a.l2 += 1;
        }
        let r = self.by_reason.entry(reason).or_default();
        if l2 {
            self.l2 += 1;
            r.1 += 1;
        } else {
            self.l1 += 1;
            r.0 += 1;
        }
    }
}

/// An exit waiting for its entry.
#[derive(Clone, Copy, Debug)]
struct Open {
    ts: u64,
    reason: ExitCode,
    l2: bool,
}

/// An anomaly as the live view lists it.
#[derive(Clone, Debug, Serialize)]
pub struct LiveAnomaly {
    /// The event's time.
    pub ts: u64,
    /// `critical`, `error`, ...
    pub severity: Severity,
    /// The rule.
    pub rule: &'static str,
    /// The vCPU (label).
    pub vcpu: String,
    /// What is wrong.
    pub message: String,
}

/// One row of a rate table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// What it counts (reason, `vm/vcpu`, event name).
    pub name: String,
    /// In the last interval.
    pub count: u64,
    /// Per second over the last interval.
    pub rate: f64,
    /// L1 share of `count` (exits).
    pub l1: u64,
    /// L2 share of `count` (exits).
    pub l2: u64,
    /// Since the start.
    pub total: u64,
}

/// Latency percentiles of one reason over the window.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    /// The exit reason (`all` for every exit).
    pub name: String,
    /// Exits with a latency in the window.
    pub count: u64,
    /// Percentiles, in trace-clock units (ns).
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// A vCPU the detector considers stuck.
#[derive(Clone, Debug, Serialize)]
pub struct StuckVcpu {
    /// The vCPU (label).
    pub vcpu: String,
    /// Why: a loop of identical exits, or a stall in L0.
    pub why: String,
    /// Since (trace time).
    pub since: u64,
}

/// What the screen or a log line shows, at one tick.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The newest event time seen.
    pub ts: u64,
    /// Length of the interval the rates cover (seconds).
    pub interval_s: f64,
    /// Counters of the interval.
    pub interval: Counts,
    /// Counters since the start.
    pub total: Counts,
    /// `kvm_exit` reasons, most frequent in the interval first.
    pub reasons: Vec<Row>,
    /// VMs (by the model's attribution).
    pub vms: Vec<Row>,
    /// vCPUs: `count` is events, `l1`/`l2` exits.
    pub vcpus: Vec<Row>,
    /// Events by name.
    pub events: Vec<Row>,
    /// Userspace exits by reason.
    pub userspace: Vec<Row>,
    /// Exit latency over the window, overall first.
    pub latency: Vec<LatencyRow>,
    /// The window of `latency` (seconds).
    pub window_s: f64,
    /// The newest anomalies, newest first.
    pub anomalies: Vec<LiveAnomaly>,
    /// Anomalies by severity since the start: critical, error, warning, info.
    pub severities: [u64; 4],
    /// Stuck vCPUs now.
    pub stuck: Vec<StuckVcpu>,
}

/// Live statistics (see the [module documentation](self)).
#[derive(Debug)]
pub struct LiveStats {
    config: LiveConfig,
    interval: Counts,
    total: Counts,
    open: HashMap<Actor, Open>,
    /// Per second of trace time: latency per reason.
    latency: VecDeque<(u64, HashMap<ExitCode, LogHistogram>)>,
    anomalies: VecDeque<LiveAnomaly>,
    severities: [u64; 4],
    stuck: StuckDetector,
    newest: u64,
}

impl LiveStats {
    /// Nothing seen yet.
    pub fn new(config: LiveConfig) -> Self {
        Self {
            config,
            interval: Counts::default(),
            total: Counts::default(),
            open: HashMap::default(),
            latency: VecDeque::new(),
            anomalies: VecDeque::new(),
            severities: [0; 4],
            stuck: StuckDetector::new(config.stuck),
            newest: 0,
        }
    }

    /// Counts one event (what [`Sink::event`] does).
    pub fn push(&mut self, stepped: &Stepped<'_>) {
        let event = stepped.event;
        let step = stepped.step();
        let actor = step.actor;
        self.newest = self.newest.max(event.ts);
        // Counted for the interval only; the totals take each interval at its tick.
        self.interval.event(event, actor);
        for a in step.anomalies {
            self.interval.anomalies += 1;
            self.severities[severity_index(a.severity)] += 1;
            self.anomalies.push_front(LiveAnomaly {
                ts: event.ts,
                severity: a.severity,
                rule: a.rule.name(),
                vcpu: vcpu_label(a.vcpu, stepped.model),
                message: a.message.clone(),
            });
            self.anomalies.truncate(self.config.max_anomalies);
        }
        let Some(actor) = actor else {
            if let EventKind::Lost { .. } = event.kind {
                // The entries of pending exits may be among the lost events.
                self.open.clear();
            }
            return;
        };
        self.stuck.push(actor, event);
        match &event.kind {
            EventKind::KvmExit(info) => {
                if let Some(previous) = self.open.remove(&actor) {
                    self.close(actor, previous, None);
                }
                self.open.insert(actor, Open { ts: event.ts, reason: info.reason(), l2: false });
            }
            EventKind::KvmNestedVmexit(_) => {
                if let Some(o) = self.open.get_mut(&actor) {
                    o.l2 = true;
                }
            }
            EventKind::KvmEntry(_) => {
                if let Some(o) = self.open.remove(&actor) {
                    self.close(actor, o, Some(event.ts));
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, actor: Actor, exit: Open, entry: Option<u64>) {
        self.interval.exit(actor, exit.reason, exit.l2);
        let Some(entry) = entry.filter(|e| *e >= exit.ts) else { return };
        let second = exit.ts / 1_000_000_000;
        if self.latency.back().is_none_or(|(s, _)| *s < second) {
            self.latency.push_back((second, HashMap::default()));
        }
        // An exit older than the newest second (another CPU's) goes to its own second.
        let slot = self.latency.iter_mut().rev().find(|(s, _)| *s <= second);
        if let Some((_, by_reason)) = slot {
            by_reason.entry(exit.reason).or_default().record(entry - exit.ts);
        }
        let window = self.config.window.as_secs().max(1);
        while self.latency.front().is_some_and(|(s, _)| *s + window <= second) {
            self.latency.pop_front();
        }
    }

    /// Ends an interval of `elapsed` wall time: the snapshot of its rates, the window's
    /// latencies and the detector's findings; the interval counters restart.
    pub fn tick(&mut self, elapsed: Duration, model: &Model) -> Snapshot {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut interval = std::mem::take(&mut self.interval);
        interval.settle_names();
        self.total.merge(&interval);
        let rate = |n: u64| n as f64 / secs;
        let mut reasons: Vec<Row> = self
            .total
            .by_reason
            .iter()
            .map(|(reason, (l1, l2))| {
                let (i1, i2) = interval.by_reason.get(reason).copied().unwrap_or_default();
                Row {
                    name: reason.to_string(),
                    count: i1 + i2,
                    rate: rate(i1 + i2),
                    l1: i1,
                    l2: i2,
                    total: l1 + l2,
                }
            })
            .collect();
        sort_rows(&mut reasons);
        let mut vm_rows: BTreeMap<String, Row> = BTreeMap::new();
        let mut vcpus: Vec<Row> = Vec::new();
        for (actor, total) in &self.total.by_actor {
            let now = interval.by_actor.get(actor).copied().unwrap_or_default();
            let label = vcpu_label(*actor, model);
            vcpus.push(Row {
                name: label,
                count: now.events,
                rate: rate(now.events),
                l1: now.exits - now.l2,
                l2: now.l2,
                total: total.events,
            });
            let vm = actor.vm().map_or_else(|| "(no VM)".to_owned(), |v| vm_label(v, model));
            let row =
                vm_rows.entry(vm.clone()).or_insert_with(|| Row { name: vm, ..Row::default() });
            row.count += now.events;
            row.l1 += now.exits - now.l2;
            row.l2 += now.l2;
            row.total += total.events;
        }
        sort_rows(&mut vcpus);
        let mut vms: Vec<Row> = vm_rows
            .into_values()
            .map(|mut r| {
                r.rate = rate(r.count);
                r
            })
            .collect();
        sort_rows(&mut vms);
        let mut events: Vec<Row> = self
            .total
            .by_name
            .iter()
            .map(|(name, total)| {
                let n = interval.by_name.get(name).copied().unwrap_or(0);
                Row {
                    name: name.to_string(),
                    count: n,
                    rate: rate(n),
                    total: *total,
                    ..Row::default()
                }
            })
            .collect();
        sort_rows(&mut events);
        let mut userspace: Vec<Row> = self
            .total
            .by_userspace
            .iter()
            .map(|(reason, total)| {
                let n = interval.by_userspace.get(reason).copied().unwrap_or(0);
                Row {
                    name: reason.to_string(),
                    count: n,
                    rate: rate(n),
                    total: *total,
                    ..Row::default()
                }
            })
            .collect();
        sort_rows(&mut userspace);
        let stuck = self.stuck.check(self.newest, model);
        Snapshot {
            ts: self.newest,
            interval_s: secs,
            reasons,
            vms,
            vcpus,
            events,
            userspace,
            latency: self.latency_rows(),
            window_s: self.config.window.as_secs_f64(),
            anomalies: self.anomalies.iter().cloned().collect(),
            severities: self.severities,
            stuck,
            interval,
            total: self.total.clone_counters(),
        }
    }

    fn latency_rows(&self) -> Vec<LatencyRow> {
        let mut by_reason: HashMap<ExitCode, LogHistogram> = HashMap::default();
        let mut all = LogHistogram::new();
        for (_, seconds) in &self.latency {
            for (reason, h) in seconds {
                by_reason.entry(*reason).or_default().merge(h);
                all.merge(h);
            }
        }
        let row = |name: String, h: &LogHistogram| LatencyRow {
            name,
            count: h.count(),
            p50: h.quantile_permille(500).unwrap_or(0),
            p90: h.quantile_permille(900).unwrap_or(0),
            p99: h.quantile_permille(990).unwrap_or(0),
            max: h.max().unwrap_or(0),
        };
        let mut rows: Vec<LatencyRow> =
            by_reason.iter().map(|(reason, h)| row(reason.to_string(), h)).collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        if all.count() > 0 {
            rows.insert(0, row("all".into(), &all));
        }
        rows
    }
}

impl Counts {
    /// The scalar counters (the tables are in the snapshot's rows).
    fn clone_counters(&self) -> Self {
        Self {
            events: self.events,
            lost: self.lost,
            exits: self.exits,
            l1: self.l1,
            l2: self.l2,
            userspace_exits: self.userspace_exits,
            anomalies: self.anomalies,
            ..Self::default()
        }
    }
}

impl Sink for LiveStats {
    fn event(&mut self, stepped: &Stepped<'_>) -> ControlFlow<()> {
        self.push(stepped);
        ControlFlow::Continue(())
    }
}

fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| b.total.cmp(&a.total)).then_with(|| a.name.cmp(&b.name))
    });
}

fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Critical => 0,
        Severity::Error => 1,
        Severity::Warning => 2,
        Severity::Info => 3,
    }
}

/// A VM's label: its name, `pid N`, or `vmK`.
pub fn vm_label(vm: VmId, model: &Model) -> String {
    model.vms().iter().find(|v| v.id == vm).map_or_else(|| format!("vm{}", vm.0), |v| v.label())
}

/// A vCPU's label: `VM/vcpu N`, or `thread N` for a thread not known to run a vCPU.
pub fn vcpu_label(actor: Actor, model: &Model) -> String {
    match actor {
        Actor::Vcpu(v) => format!("{}/vcpu {}", vm_label(v.vm, model), v.id),
        Actor::Thread(t) => match model.vcpu_of_thread(t) {
            Some(v) => format!("{}/vcpu {}", vm_label(v.vm, model), v.id),
            None => format!("thread {t}"),
        },
    }
}

/// Finds vCPUs that make no progress: a **loop** (at least `min_events` exit-like events within
/// `span` of trace time, all of them among at most `max_distinct` identical ones — same exit
/// reason at the same guest RIP and address, the same faulting address, the same emulated
/// instruction at the same RIP, the same port I/O with the same value), or a **stall** (a
/// `kvm_exit` with no entry of that vCPU for `stall` while the trace goes on: the vCPU is stuck
/// in L0 or in its VMM).
///
/// Exit-like events: `kvm_exit`, `kvm_nested_vmexit`, `kvm_page_fault`, `kvm_emulate_insn`,
/// `kvm_pio`, `kvm_inj_exception`. A guest that makes progress changes at least one of their
/// values (a RIP, an address, a port value); one in a loop repeats them. Userspace exits are
/// left out: their reason alone (`KVM_EXIT_IO`) says nothing of progress, and the VMM handles
/// them.
#[derive(Debug)]
pub struct StuckDetector {
    config: StuckConfig,
    vcpus: HashMap<Actor, Recent>,
}

/// The newest exit-like events of one vCPU: (time, signature), at most [`RECENT_CAP`].
#[derive(Debug, Default)]
struct Recent {
    events: VecDeque<(u64, u64)>,
    counts: HashMap<u64, u32>,
    /// A `kvm_exit` without its entry yet.
    open_exit: Option<(u64, ExitCode)>,
    /// Since when the vCPU is stuck, and why.
    stuck: Option<(u64, String)>,
}

/// The most recent events kept per vCPU for the loop check.
const RECENT_CAP: usize = 4096;

impl StuckDetector {
    /// A detector with `config`.
    pub fn new(config: StuckConfig) -> Self {
        Self { config, vcpus: HashMap::default() }
    }

    /// One event of `actor`.
    pub fn push(&mut self, actor: Actor, event: &Event) {
        match event.kind {
            EventKind::KvmExit(ref info) => {
                self.vcpus.entry(actor).or_default().open_exit = Some((event.ts, info.reason()));
            }
            EventKind::KvmEntry(_) => {
                if let Some(r) = self.vcpus.get_mut(&actor) {
                    r.open_exit = None;
                }
            }
            _ => {}
        }
        let Some(sig) = signature(&event.kind) else { return };
        let span = u64::try_from(self.config.span.as_nanos()).unwrap_or(u64::MAX);
        let r = self.vcpus.entry(actor).or_default();
        r.events.push_back((event.ts, sig));
        *r.counts.entry(sig).or_default() += 1;
        while r.events.len() > RECENT_CAP
            || r.events.front().is_some_and(|(ts, _)| ts.saturating_add(span) < event.ts)
        {
            let Some((_, old)) = r.events.pop_front() else { break };
            if let Some(c) = r.counts.get_mut(&old) {
                *c -= 1;
                if *c == 0 {
                    r.counts.remove(&old);
                }
            }
        }
    }

    /// The vCPUs stuck at trace time `now`.
    pub fn check(&mut self, now: u64, model: &Model) -> Vec<StuckVcpu> {
        let span = u64::try_from(self.config.span.as_nanos()).unwrap_or(u64::MAX);
        let stall = u64::try_from(self.config.stall.as_nanos()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (actor, r) in &mut self.vcpus {
            // Events older than the span no longer count.
            while r.events.front().is_some_and(|(ts, _)| ts.saturating_add(span) < now) {
                let Some((_, old)) = r.events.pop_front() else { break };
                if let Some(c) = r.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        r.counts.remove(&old);
                    }
                }
            }
            let looping = r.events.len() >= self.config.min_events
                && r.counts.len() <= self.config.max_distinct;
            let stalled = r.open_exit.filter(|(ts, _)| ts.saturating_add(stall) < now);
            let why = if looping {
                Some(format!(
                    "loop: {} exits in {:.1}s, {} distinct",
                    r.events.len(),
                    self.config.span.as_secs_f64(),
                    r.counts.len()
                ))
            } else {
                stalled.map(|(ts, reason)| {
                    format!("in L0 for {:.1}s after {reason}", now.saturating_sub(ts) as f64 / 1e9)
                })
            };
            match why {
                Some(why) => {
                    let since = r
                        .stuck
                        .as_ref()
                        .map_or_else(|| r.events.front().map_or(now, |(ts, _)| *ts), |(s, _)| *s);
                    r.stuck = Some((since, why.clone()));
                    out.push(StuckVcpu { vcpu: vcpu_label(*actor, model), why, since });
                }
                None => r.stuck = None,
            }
        }
        out.sort_by(|a, b| a.vcpu.cmp(&b.vcpu));
        out
    }
}

/// The identity of an exit-like event for the loop check (`None` for other events).
fn signature(kind: &EventKind) -> Option<u64> {
    // One fixed state: equal events, equal signatures, for the whole run.
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    match kind {
        EventKind::KvmExit(i) | EventKind::KvmNestedVmexit(i) => {
            (1u8, i.reason(), i.guest_rip(), i.info1()).hash(&mut h);
        }
        EventKind::KvmPageFault { guest_rip, fault_address, error_code, .. } => {
            (2u8, guest_rip, fault_address, error_code).hash(&mut h);
        }
        EventKind::KvmEmulateInsn { rip, insn, failed, .. } => {
            (3u8, rip, insn.as_slice(), failed).hash(&mut h);
        }
        EventKind::KvmPio { write, port, val, .. } => (5u8, write, port, val).hash(&mut h),
        EventKind::KvmInjException { exception, error_code, .. } => {
            (6u8, exception.0, error_code).hash(&mut h);
        }
        _ => return None,
    }
    Some(h.finish())
}

/// One line of `vmxray top --batch` (like `kvm_stat -l`): time, rates, and the top reasons.
pub fn batch_line(s: &Snapshot) -> String {
    let i = &s.interval;
    let per = |n: u64| n as f64 / s.interval_s;
    let top: Vec<String> = if s.reasons.iter().any(|r| r.count > 0) {
        s.reasons
            .iter()
            .filter(|r| r.count > 0)
            .take(3)
            .map(|r| format!("{}={:.0}", r.name, r.rate))
            .collect()
    } else {
        s.events
            .iter()
            .filter(|r| r.count > 0)
            .take(3)
            .map(|r| format!("{}={:.0}", r.name, r.rate))
            .collect()
    };
    let p99 = s.latency.first().map_or_else(|| "-".to_owned(), |l| l.p99.to_string());
    format!(
        "{:>14.3} {:>10.0} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>7} {:>9} {:>5} {:>10}  {}",
        s.ts as f64 / 1e9,
        per(i.events),
        per(i.exits),
        per(i.l1),
        per(i.l2),
        per(i.userspace_exits),
        i.lost,
        i.anomalies,
        s.stuck.len(),
        p99,
        if top.is_empty() { "-".to_owned() } else { top.join(",") }
    )
}

/// The header of [`batch_line`]'s columns.
pub const BATCH_HEADER: &str = "          time   events/s   exits/s     L1/s     L2/s  uexits/s    lost anomalies stuck  p99_lat_ns  top";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::{Pass, PassConfig};
    use vmxray_events::test_util::EventBuilder;

    fn run(t: &EventBuilder, live: &mut LiveStats) -> Pass {
        let mut pass = Pass::new(PassConfig::default());
        for e in &t.events {
            let _ = pass.step(e, live);
        }
        pass
    }

    #[test]
    fn per_vcpu_counts_survive_interleaved_runs_and_ticks() {
        // Two threads' events in runs of different lengths, across two intervals: the rows
        // count each one's events, exits and userspace exits whatever the interleaving.
        let mut t = EventBuilder::new();
        for round in 0..6 {
            t.pid = 1000;
            t.vcpu = 0;
            for _ in 0..=round % 3 {
                t.l1_exit(48, 0x1000);
            }
            t.pid = 2000;
            t.vcpu = 1;
            t.userspace_exit(2);
            if round % 2 == 0 {
                t.l1_exit(30, 0x2000);
            }
        }
        let (first, second) = t.events.split_at(t.events.len() / 2);
        let mut pass = Pass::new(PassConfig::default());
        let mut live = LiveStats::new(LiveConfig::default());
        let mut counted = 0;
        let mut totals = Vec::new();
        for half in [first, second] {
            for e in half {
                let _ = pass.step(e, &mut live);
            }
            let snap = live.tick(Duration::from_secs(1), pass.model());
            assert_eq!(snap.vcpus.iter().map(|r| r.count).sum::<u64>(), snap.interval.events);
            assert_eq!(snap.vcpus.iter().map(|r| r.l1 + r.l2).sum::<u64>(), snap.interval.exits);
            counted += snap.interval.events;
            totals = snap.vcpus.iter().map(|r| r.total).collect();
        }
        // Every event is in a row, once; both threads have rows.
        assert_eq!(counted, t.events.len() as u64);
        assert_eq!(totals.iter().sum::<u64>(), counted);
        assert!(totals.len() >= 2, "{totals:?}");
    }

    #[test]
    fn rates_levels_and_latency() {
        let mut t = EventBuilder::new();
        for _ in 0..10 {
            t.l1_exit(48, 0x1000);
        }
        let mut live = LiveStats::new(LiveConfig::default());
        let pass = run(&t, &mut live);
        let s = live.tick(Duration::from_secs(2), pass.model());
        assert_eq!((s.interval.exits, s.interval.l1, s.interval.l2), (10, 10, 0));
        assert_eq!(s.reasons[0].name, "EPT_VIOLATION");
        assert!((s.reasons[0].rate - 5.0).abs() < 1e-9);
        assert_eq!(s.latency[0].name, "all");
        assert_eq!(s.latency[0].count, 10);
        // The next interval starts from zero; totals go on.
        let s = live.tick(Duration::from_secs(1), pass.model());
        assert_eq!((s.interval.exits, s.total.exits), (0, 10));
        assert!(batch_line(&s).split_whitespace().count() >= 10);
    }

    #[test]
    fn a_loop_of_identical_exits_is_stuck_and_progress_is_not() {
        let config = StuckConfig { min_events: 50, max_distinct: 2, ..StuckConfig::default() };
        let mut t = EventBuilder::new();
        for _ in 0..60 {
            t.l1_exit(48, 0x1000); // the same EPT violation at the same RIP
        }
        let mut live = LiveStats::new(LiveConfig { stuck: config, ..LiveConfig::default() });
        let pass = run(&t, &mut live);
        let s = live.tick(Duration::from_secs(1), pass.model());
        assert_eq!(s.stuck.len(), 1, "{:?}", s.stuck);
        assert!(s.stuck[0].why.starts_with("loop"), "{}", s.stuck[0].why);

        let mut t = EventBuilder::new();
        for i in 0..60 {
            t.l1_exit(48, 0x1000 + i); // the RIP moves on
        }
        let mut live = LiveStats::new(LiveConfig { stuck: config, ..LiveConfig::default() });
        let pass = run(&t, &mut live);
        assert!(live.tick(Duration::from_secs(1), pass.model()).stuck.is_empty());
    }

    #[test]
    fn an_exit_without_entry_while_time_goes_on_is_a_stall() {
        let mut t = EventBuilder::new();
        t.l1_exit(48, 0x1000);
        t.exit(30, 0x2000); // IO, never entered again
        let mut live = LiveStats::new(LiveConfig::default());
        let mut pass = run(&t, &mut live);
        assert!(live.tick(Duration::from_secs(1), pass.model()).stuck.is_empty());
        // Another vCPU runs on 3 s later.
        let mut other = EventBuilder::new();
        other.vcpu = 1;
        other.pid = 2000;
        other.l1_exit(48, 0x1000);
        for e in &mut other.events {
            e.ts += 3_000_000_000;
            let _ = pass.step(e, &mut live);
        }
        let s = live.tick(Duration::from_secs(1), pass.model());
        assert_eq!(s.stuck.len(), 1, "{:?}", s.stuck);
        assert!(s.stuck[0].why.contains("in L0"), "{}", s.stuck[0].why);
    }
}
