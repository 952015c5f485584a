//! The typed statistics report and its JSON wire format (see the crate docs for the schema).

use serde::{Deserialize, Serialize};
use vmxray_events::codes::ExitCode;
use vmxray_events::{Actor, Vm, VmId};
pub use vmxray_replay::Level;

pub use crate::histogram::HistogramBin;

/// The `schema` value of the JSON report; bumped on any incompatible change.
pub const SCHEMA: &str = "vmxray-stats/1";

/// Everything `vmxray stats` reports about one trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// What the input said about itself, when the caller had a reader.
    pub input: Option<InputInfo>,
    /// Unit of every time value in the report.
    pub time_unit: TimeUnit,
    /// Events seen (every kind, lost-event markers included).
    pub events_total: u64,
    /// Events per tracepoint name, most frequent first.
    pub events_by_name: Vec<NameCount>,
    /// Exit statistics; `None` when the trace has no `kvm_exit` at all.
    pub exits: Option<ExitReport>,
    /// `kvm_emulate_insn` grouped by instruction bytes.
    pub emulated_instructions: EmulationReport,
    /// `kvm_inj_exception` by vector.
    pub injected_exceptions: Vec<ExceptionRow>,
    /// `kvm_userspace_exit` by `KVM_EXIT_*` reason.
    pub userspace_exits: Vec<UserspaceExitRow>,
    /// `kvm_pio` by direction, port and size.
    pub pio: Vec<PioRow>,
    /// Lost, skipped and unknown events.
    pub losses: LossReport,
    /// Plain-language remarks (missing tracepoints, clock caveats).
    pub notes: Vec<String>,
    /// The VMs of a host trace (more than one): the VMM processes, or VMs inferred from vCPU
    /// threads when the trace carries no tgid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<Vm>,
    /// Where the exits' time went on the host ([`crate::context`]), when the trace has host
    /// scheduler or interrupt events and the caller ran the analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_context: Option<crate::context::HostContextReport>,
    /// `perf kvm stat report`'s table for `--event`/`--key`/`--vcpu`/`--pid`
    /// ([`crate::kvm_stat`]), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_stat: Option<crate::kvm_stat::KvmStatReport>,
}

/// The input's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    /// Path or `<stdin>`.
    pub name: String,
    /// Detected format (`trace-dat`, `perf-data`, `ftrace-text`, ...).
    pub format: String,
    /// Trace clock name (`local`, `x86-tsc`, ...).
    pub clock: String,
    /// CPUs, when the input says.
    pub cpus: Option<u32>,
    /// Traced kernel release, when the input says.
    pub kernel: Option<String>,
    /// The input is an excerpt, not a complete trace (see `vmxray_capture::TraceMeta::excerpt`).
    #[serde(default)]
    pub excerpt: bool,
    /// Captures after the first in the input (segment markers).
    #[serde(default)]
    pub segments: u32,
}

/// The unit of times: nanoseconds, or the raw units of a clock that is not in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Nanoseconds.
    Ns,
    /// The trace clock's own units (TSC cycles for `x86-tsc`, counts for `counter`).
    Raw,
}

/// A name and how often it occurred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCount {
    /// The name.
    pub name: String,
    /// Occurrences.
    pub count: u64,
}

/// Exit statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitReport {
    /// `kvm_exit` events.
    pub total: u64,
    /// Exits with an exit→entry latency.
    pub with_latency: u64,
    /// Exits counted without a latency, by cause.
    pub without_latency: Unpaired,
    /// True when the trace has `kvm_nested_vmexit`, so exits are split into L1 and L2.
    pub nested: bool,
    /// Level totals, when `nested`.
    pub levels: Option<LevelTotals>,
    /// All exits together (reason and vCPU absent, level `all`).
    pub overall: ExitRow,
    /// Per exit reason over every vCPU and level, most frequent first.
    pub by_reason: Vec<ExitRow>,
    /// Per (reason, level) over every vCPU, when `nested`; otherwise empty.
    pub by_reason_level: Vec<ExitRow>,
    /// Per vCPU over every reason and level, by vCPU.
    pub by_vcpu: Vec<ExitRow>,
    /// Per VM over every reason, level and vCPU, when the trace holds more than one VM (a
    /// host trace); `vm` says which ([`StatsReport::vms`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_vm: Vec<ExitRow>,
    /// The finest groups: one row per (reason, level, vCPU). Level is `all` unless `nested`.
    pub groups: Vec<ExitRow>,
    /// `kvm_nested_vmexit_inject` events that are not the reflection of an L2 hardware exit
    /// (exits L0 synthesized for L1: interrupts, its preemption timer, INIT, ...), by reason.
    pub synthesized_nested_exits: Vec<NameCount>,
    /// `kvm_nested_vmexit` events with no pending `kvm_exit` on their vCPU.
    pub orphan_nested_vmexits: u64,
    /// The slowest exits (at most 10), slowest first, with the timestamp to find them by.
    pub slowest: Vec<SlowExit>,
}

/// One of the slowest exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowExit {
    /// Exit→entry latency (exact).
    pub latency: u64,
    /// Timestamp of the `kvm_exit`, in the trace clock's units.
    pub exit_ts: u64,
    /// The vCPU.
    #[serde(with = "wire::vcpu")]
    pub vcpu: Actor,
    /// The exit reason.
    pub reason: Reason,
    /// The level (`all` unless the trace is nested).
    #[serde(with = "wire")]
    pub level: LevelSplit,
}

/// Why exits got no latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpaired {
    /// The trace ended before the vCPU's next `kvm_entry`.
    pub trace_end: u64,
    /// Events were lost (a lost-events marker) between the exit and the next entry.
    pub lost_events: u64,
    /// The same vCPU exited again before any `kvm_entry` (an entry missing from the trace).
    pub next_exit: u64,
    /// The next entry's timestamp is earlier than the exit's (unsynchronized per-CPU clock).
    pub clock_backwards: u64,
    /// The exit's or the entry's time is unknown (text pasted without its timestamps).
    #[serde(default)]
    pub unknown_time: u64,
}

impl Unpaired {
    /// All causes together.
    pub fn total(&self) -> u64 {
        self.trace_end
            + self.lost_events
            + self.next_exit
            + self.clock_backwards
            + self.unknown_time
    }
}

/// Level totals of a nested trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelTotals {
    /// Exits from L1 (no `kvm_nested_vmexit` before the next entry).
    pub l1: u64,
    /// Exits from L2.
    pub l2: u64,
    /// L2 exits L0 handled itself.
    pub l2_l0_handled: u64,
    /// L2 exits reflected to L1.
    pub l2_reflected: u64,
}

/// A report's level column: the exit's [`Level`], or `None` for "all" (summed over levels, or
/// not split because the trace has no nested events). Serialized as `all`, `l1`, `l2`.
pub type LevelSplit = Option<Level>;

/// The label of a [`LevelSplit`]: `all`, `L1`, `L2`.
pub fn level_label(level: LevelSplit) -> &'static str {
    level.map_or("all", Level::label)
}

/// Serde for [`LevelSplit`] (`all` for `None`) and for [`Actor`] as the report writes a vCPU
/// (`{"id": 3}` or `{"thread": 1234}`).
pub(crate) mod wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use vmxray_events::{Actor, Vcpu, VmId};
    use vmxray_replay::Level;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum LevelWire {
        All,
        L1,
        L2,
    }

    pub fn serialize<S: Serializer>(level: &Option<Level>, s: S) -> Result<S::Ok, S::Error> {
        match level {
            None => LevelWire::All,
            Some(Level::L1) => LevelWire::L1,
            Some(Level::L2) => LevelWire::L2,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Level>, D::Error> {
        Ok(match LevelWire::deserialize(d)? {
            LevelWire::All => None,
            LevelWire::L1 => Some(Level::L1),
            LevelWire::L2 => Some(Level::L2),
        })
    }

    /// A vCPU as the report writes it: `{"id": 3}` (a vCPU of the trace's first VM, the
    /// only one of most traces), `{"id": 3, "vm": 1}`, or `{"thread": 1234}`.
    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum VcpuWire {
        Vcpu {
            id: u32,
            #[serde(default, skip_serializing_if = "is_zero")]
            vm: u32,
        },
        Thread {
            thread: i32,
        },
    }

    fn is_zero(v: &u32) -> bool {
        *v == 0
    }

    impl From<Actor> for VcpuWire {
        fn from(a: Actor) -> Self {
            match a {
                Actor::Vcpu(v) => Self::Vcpu { id: v.id, vm: v.vm.0 },
                Actor::Thread(thread) => Self::Thread { thread },
            }
        }
    }

    impl From<VcpuWire> for Actor {
        fn from(v: VcpuWire) -> Self {
            match v {
                VcpuWire::Vcpu { id, vm } => Self::Vcpu(Vcpu { vm: VmId(vm), id }),
                VcpuWire::Thread { thread } => Self::Thread(thread),
            }
        }
    }

    pub mod vcpu {
        use super::*;

        pub fn serialize<S: Serializer>(a: &Actor, s: S) -> Result<S::Ok, S::Error> {
            VcpuWire::from(*a).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Actor, D::Error> {
            VcpuWire::deserialize(d).map(Actor::from)
        }
    }

    pub mod opt_vcpu {
        use super::*;

        pub fn serialize<S: Serializer>(a: &Option<Actor>, s: S) -> Result<S::Ok, S::Error> {
            a.map(VcpuWire::from).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Actor>, D::Error> {
            Ok(Option::<VcpuWire>::deserialize(d)?.map(Actor::from))
        }
    }
}

/// An exit reason as printed, with its raw code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reason {
    /// The kernel's name (`EPT_VIOLATION`, `npf`, `UNKNOWN(0x4e)`).
    pub name: String,
    /// The raw exit reason / exit code.
    pub code: u64,
    /// `vmx`, `svm`, or `unknown` when the trace does not say.
    pub isa: String,
}

impl From<ExitCode> for Reason {
    fn from(code: ExitCode) -> Self {
        let isa = match code {
            ExitCode::Vmx(_) => "vmx",
            ExitCode::Svm(_) => "svm",
            ExitCode::Raw(_) => "unknown",
        };
        Self { name: code.to_string(), code: code.raw(), isa: isa.to_owned() }
    }
}

/// One line of an exit table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitRow {
    /// The reason, or `None` when summed over reasons.
    pub reason: Option<Reason>,
    /// The level (`all` when summed over levels or not split).
    #[serde(with = "wire")]
    pub level: LevelSplit,
    /// The vCPU, or `None` when summed over vCPUs.
    #[serde(with = "wire::opt_vcpu")]
    pub vcpu: Option<Actor>,
    /// The VM of a `by_vm` row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmId>,
    /// Exits.
    pub count: u64,
    /// `count` as a percentage of all `kvm_exit` events.
    pub percent: f64,
    /// This row's total latency as a percentage of the total latency of all exits (perf kvm
    /// stat's `Time%`).
    pub time_percent: f64,
    /// Exits without a latency (see [`Unpaired`]).
    pub without_latency: u64,
    /// L2 exits that L0 handled itself.
    pub l0_handled: u64,
    /// L2 exits reflected to L1.
    pub reflected: u64,
    /// Exit→entry latency of the exits that have one; `None` when none has.
    pub latency: Option<Latency>,
}

/// Latency statistics, in [`StatsReport::time_unit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Exits with a latency.
    pub count: u64,
    /// Sum.
    pub total: u64,
    /// Smallest (exact).
    pub min: u64,
    /// Largest (exact).
    pub max: u64,
    /// Mean (exact).
    pub mean: f64,
    /// Population standard deviation (exact up to floating point).
    pub stddev: f64,
    /// Median (nearest rank; within 1/256 relative error).
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The distribution: at most [`MAX_BINS`](crate::histogram::MAX_BINS) log-spaced,
    /// contiguous bins from `min` to `max`, exact counts summing to `count` (see
    /// [`LogHistogram::bins`](crate::histogram::LogHistogram::bins)). Absent in reports written
    /// before it existed, read back as empty.
    #[serde(default)]
    pub histogram: Vec<HistogramBin>,
}

/// `kvm_emulate_insn` summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmulationReport {
    /// Emulated instructions.
    pub total: u64,
    /// Of which the emulator reported as failed.
    pub failed: u64,
    /// Per distinct instruction byte string, most frequent first.
    pub by_insn: Vec<InsnRow>,
    /// Instructions beyond the distinct-byte-string limit, counted here instead.
    pub other: u64,
}

/// One emulated instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsnRow {
    /// The bytes, space-separated hex (`0f 22 d8`).
    pub bytes: String,
    /// A short mnemonic for common instructions (`mov cr3, rax`).
    pub mnemonic: Option<String>,
    /// Times emulated.
    pub count: u64,
    /// Times the emulator failed on it.
    pub failed: u64,
}

/// Injected exceptions with one vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRow {
    /// The vector.
    pub vector: u8,
    /// Its name (`#PF`).
    pub name: String,
    /// Injections.
    pub count: u64,
    /// Of which carried an error code.
    pub with_error_code: u64,
    /// Of which were re-injections.
    pub reinjected: u64,
}

/// Userspace exits with one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserspaceExitRow {
    /// `KVM_EXIT_*` name.
    pub reason: String,
    /// Its number.
    pub code: u32,
    /// Occurrences.
    pub count: u64,
    /// Of which returned a non-zero errno.
    pub errors: u64,
}

/// Port I/O with one direction, port and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PioRow {
    /// `in` or `out`.
    pub direction: String,
    /// The port.
    pub port: u32,
    /// Access size in bytes.
    pub size: u32,
    /// Events.
    pub count: u64,
}

/// Lost events on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRow {
    /// The CPU.
    pub cpu: u32,
    /// Lost-event markers.
    pub markers: u64,
    /// Events known lost.
    pub events: u64,
    /// Markers without a count.
    pub uncounted_markers: u64,
}

/// What was lost, skipped or not understood while reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossReport {
    /// Per CPU (from the reader's counters, or from the markers in the stream).
    pub lost: Vec<LostRow>,
    /// Records or lines skipped under `--permissive`.
    pub skipped: u64,
    /// Lines of text that are no trace text (prose around an excerpt), skipped in every mode.
    #[serde(default)]
    pub non_trace_lines: u64,
    /// The first skipped problems, as messages.
    pub problems: Vec<String>,
    /// Records no format describes, by id or name.
    pub unknown_events: Vec<NameCount>,
}

impl LossReport {
    /// Events known lost, and the number of markers that gave no count.
    pub fn lost_total(&self) -> (u64, u64) {
        (
            self.lost.iter().map(|l| l.events).sum(),
            self.lost.iter().map(|l| l.uncounted_markers).sum(),
        )
    }
}
