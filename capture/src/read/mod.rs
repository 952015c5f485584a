//! What every reader provides: the event iterator, the trace's metadata, counted problems, and
//! the error type. [`open`](fn@crate::open) picks the reader from the input's first bytes.

pub(crate) mod decode;
pub mod fields_file;
mod merge;
pub use merge::{SharedBatch, Taken};
pub mod open;
pub mod perfdata;
pub mod salvage;
pub mod text;
pub mod tracedat;
pub mod tracefs_tree;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use serde::Serialize;

use vmxray_events::event::{DecodeError, Event, KnownSet};

/// The trace clock, which fixes the unit of [`Event::ts`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// `local` (ns, per-CPU, not synchronized across CPUs).
    Local,
    /// `global` (ns).
    Global,
    /// `perf` (ns; `local_clock()`).
    Perf,
    /// `mono` (ns).
    Mono,
    /// `mono_raw` (ns).
    MonoRaw,
    /// `boot` (ns).
    Boot,
    /// `tai` (ns).
    Tai,
    /// `x86-tsc` (TSC cycles).
    X86Tsc,
    /// `counter` (a plain counter).
    Counter,
    /// `uptime` (jiffies).
    Uptime,
    /// `x86-tsc` cycles converted to nanoseconds with the trace.dat's TSC2NSEC multiplier and
    /// shift (trace-cmd's `tsc2nsec` clock, recorded with `-C tsc2nsec`).
    Tsc2Nsec,
    /// Nanoseconds, clock not named by the input (text with `sec.usec` stamps).
    Nanoseconds,
    /// Raw units of a clock the input does not name.
    Raw,
    /// A clock this table does not know, by its tracefs name.
    Other(Box<str>),
}

impl Clock {
    /// Parses a tracefs clock name, or the `trace_clock` file with its `[selected]` entry.
    pub fn from_name(name: &str) -> Self {
        let name = name.trim();
        let selected = match (name.find('['), name.find(']')) {
            (Some(a), Some(b)) if a < b => &name[a + 1..b],
            _ => name,
        };
        match selected {
            "local" => Self::Local,
            "global" => Self::Global,
            "perf" => Self::Perf,
            "mono" => Self::Mono,
            "mono_raw" => Self::MonoRaw,
            "boot" => Self::Boot,
            "tai" => Self::Tai,
            "x86-tsc" => Self::X86Tsc,
            "counter" => Self::Counter,
            "uptime" => Self::Uptime,
            "tsc2nsec" => Self::Tsc2Nsec,
            other => Self::Other(other.into()),
        }
    }

    /// True when timestamps are nanoseconds.
    pub fn is_ns(&self) -> bool {
        match self {
            Self::Local
            | Self::Global
            | Self::Perf
            | Self::Mono
            | Self::MonoRaw
            | Self::Boot
            | Self::Tai
            | Self::Tsc2Nsec
            | Self::Nanoseconds => true,
            Self::X86Tsc | Self::Counter | Self::Uptime | Self::Raw | Self::Other(_) => false,
        }
    }

    /// The tracefs name, or a description for the unnamed cases.
    pub fn name(&self) -> &str {
        match self {
            Self::Local => "local",
            Self::Global => "global",
            Self::Perf => "perf",
            Self::Mono => "mono",
            Self::MonoRaw => "mono_raw",
            Self::Boot => "boot",
            Self::Tai => "tai",
            Self::X86Tsc => "x86-tsc",
            Self::Counter => "counter",
            Self::Uptime => "uptime",
            Self::Tsc2Nsec => "tsc2nsec",
            Self::Nanoseconds => "ns",
            Self::Raw => "raw",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of input vmxray reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// ftrace `trace` / `trace_pipe` text.
    FtraceText,
    /// `trace-cmd report` text.
    TraceCmdText,
    /// `perf script` text.
    PerfScriptText,
    /// trace-cmd's trace.dat (v6 or v7).
    TraceDat,
    /// perf.data.
    PerfData,
    /// A copied tracefs tree with `per_cpu/cpuN/trace_pipe_raw` dumps.
    TracefsDir,
}

/// What the input says about itself.
#[derive(Clone, Debug, Serialize)]
pub struct TraceMeta {
    /// How the input is named in messages (its path, or `<stdin>`).
    pub input: Arc<str>,
    /// The detected format.
    pub format: InputFormat,
    /// The trace clock.
    pub clock: Clock,
    /// Number of CPUs, when the input says it.
    pub cpus: Option<u32>,
    /// The traced kernel's release (`uname -r`), when the input says it.
    pub kernel: Option<String>,
    /// The input is an excerpt rather than a complete trace: text with no tool header that
    /// does not start at the VM's creation, text whose reader skipped lines between events
    /// (prose, lines it could not read) or events without their time, or text holding
    /// several captures (segments). Gaps in an excerpt are the poster's cuts, not KVM's
    /// doing. Binary inputs are complete traces. Final once the reader is exhausted (inputs
    /// read whole, see [`crate::read::text`], know it from the start).
    pub excerpt: bool,
}

/// Lost events on one CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostOnCpu {
    /// How many times the input marked a loss.
    pub markers: u64,
    /// Events known to be lost (sum of the counts the markers carried).
    pub events: u64,
    /// Markers that did not say how many events were lost.
    pub uncounted_markers: u64,
}

/// Non-fatal problems and losses, counted while reading; shown at the end of every command.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadStats {
    /// Events yielded.
    pub events: u64,
    /// Lost-event markers per CPU.
    pub lost: BTreeMap<u32, LostOnCpu>,
    /// Records or lines skipped under `--permissive`.
    pub skipped: u64,
    /// The first skipped problems, with their locations (at most [`ReadStats::MAX_PROBLEMS`]).
    #[serde(skip)]
    pub problems: Vec<Arc<ReadError>>,
    /// Records whose event id or name no format describes, by id or name.
    pub unknown_events: BTreeMap<String, u64>,
    /// Records of the [`ReadOptions::count_only`] events, counted instead of yielded, by
    /// event name.
    pub counted_only: BTreeMap<String, u64>,
    /// Lines of text that are no trace text (prose, mail quoting, prompts): skipped in every
    /// mode, and not an error.
    pub non_trace_lines: u64,
    /// The first of those lines (at most [`ReadStats::MAX_NON_TRACE`]), with their line
    /// numbers.
    #[serde(skip)]
    pub non_trace: Vec<NonTraceLine>,
    /// Captures after the first in an input holding several (the [`vmxray_events::EventKind::Segment`]
    /// markers yielded): 0 for one capture.
    pub segments: u32,
    /// Records of text that were cut (a hard wrap whose continuation is lost, a paste cut
    /// short): read with what they have, their missing fields unknown, never as whole records.
    pub truncated: u64,
    /// The first of them (at most [`ReadStats::MAX_PROBLEMS`]).
    #[serde(skip)]
    pub truncated_records: Vec<TruncatedRecord>,
}

/// A record of text that lacks fields every rendering of its event prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedRecord {
    /// Its 1-based line number in the input (its first line when it was joined).
    pub line: u64,
    /// The event's name.
    pub event: &'static str,
    /// What its text lacks.
    pub missing: &'static str,
}

/// A line of text the reader skipped as no trace text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonTraceLine {
    /// Its 1-based line number in the input.
    pub line: u64,
    /// The line as it stands in the input.
    pub text: String,
}

impl ReadStats {
    /// How many skipped problems are kept with their details.
    pub const MAX_PROBLEMS: usize = 20;

    /// How many lines of prose are kept with their text (a bound that keeps memory
    /// independent of the input).
    pub const MAX_NON_TRACE: usize = 10_000;

    /// Counts a lost-events marker on `cpu`.
    pub fn note_lost(&mut self, cpu: u32, count: Option<u64>) {
        let entry = self.lost.entry(cpu).or_default();
        entry.markers += 1;
        match count {
            Some(n) => entry.events += n,
            None => entry.uncounted_markers += 1,
        }
    }

    /// Counts `n` records of `name` counted instead of yielded.
    pub(crate) fn note_counted(&mut self, name: &str, n: u64) {
        match self.counted_only.get_mut(name) {
            Some(c) => *c += n,
            None => {
                self.counted_only.insert(name.to_owned(), n);
            }
        }
    }

    /// Counts a problem that was skipped.
    pub fn note_skipped(&mut self, problem: ReadError) {
        self.skipped += 1;
        if self.problems.len() < Self::MAX_PROBLEMS {
            self.problems.push(Arc::new(problem));
        }
    }

    /// Total events known lost, and whether some losses were uncounted.
    pub fn lost_total(&self) -> (u64, bool) {
        let events = self.lost.values().map(|l| l.events).sum();
        let uncounted = self.lost.values().any(|l| l.uncounted_markers > 0);
        (events, uncounted)
    }

    /// True when nothing was lost, skipped or unknown (lines of prose around an excerpt do
    /// not count: see [`ReadStats::non_trace_lines`]).
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.skipped == 0
            && self.unknown_events.is_empty()
            && self.truncated == 0
    }

    /// Counts a truncated record, keeping the first ones.
    pub fn note_truncated(&mut self, record: TruncatedRecord) {
        self.truncated += 1;
        if self.truncated_records.len() < Self::MAX_PROBLEMS {
            self.truncated_records.push(record);
        }
    }

    /// Counts a line that is no trace text, keeping the first ones.
    pub fn note_non_trace(&mut self, line: u64, text: impl FnOnce() -> String) {
        self.non_trace_lines += 1;
        if self.non_trace.len() < Self::MAX_NON_TRACE {
            self.non_trace.push(NonTraceLine { line, text: text() });
        }
    }
}

/// Options shared by every reader.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Skip bad records/lines (counting them in [`ReadStats`]) instead of stopping.
    pub permissive: bool,
    /// Events the consumer only counts ([`CountOnly`]).
    pub count_only: CountOnly,
}

/// Events a consumer only counts, by name. A reader of binary records (trace.dat, perf.data, a
/// tracefs tree) then neither decodes nor yields their records: it counts them by name in
/// [`ReadStats::counted_only`], and says where they were ([`EventReader::counted_before`]). A
/// text reader yields them as usual, so a consumer counts both. Counted records are not checked
/// beyond their framing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountOnly {
    /// These typed kinds.
    pub kinds: KnownSet,
    /// The untyped KVM tracepoints whose events are plain `Other` events naming no vCPU
    /// ([`vmxray_events::OtherEvent::is_plain_kvm`]).
    pub plain_kvm: bool,
}

impl CountOnly {
    /// Nothing: every event is decoded and yielded.
    pub const NONE: Self = Self { kinds: KnownSet::EMPTY, plain_kvm: false };

    /// True when nothing is only counted.
    pub fn is_none(self) -> bool {
        self.kinds.is_empty() && !self.plain_kvm
    }

    /// True when the events of `format` are only counted.
    #[inline]
    pub(crate) fn counts(self, format: &crate::bin::format::EventFormat) -> bool {
        match format.known {
            Some(known) => self.kinds.contains(known),
            None => self.plain_kvm && format.plain_kvm(),
        }
    }
}

/// A reader: an iterator of events in time order, with metadata and counted problems.
///
/// In strict mode a bad record yields one `Err` and the iterator ends; with
/// [`ReadOptions::permissive`] it is counted in [`ReadStats`] and reading goes on. Lost-event
/// markers are yielded as [`vmxray_events::EventKind::Lost`] events where they occur, and counted.
pub trait EventReader: Iterator<Item = Result<Event, ReadError>> + Send {
    /// What the input says about itself.
    fn meta(&self) -> &TraceMeta;
    /// What was counted so far (complete once the iterator is exhausted).
    fn stats(&self) -> &ReadStats;
    /// The event formats the input carries (trace.dat, perf.data, a tracefs tree), for
    /// rendering events through their print fmt ([`crate::printfmt`]); `None` for text.
    fn event_formats(&self) -> Option<&Arc<crate::bin::format::EventFormats>> {
        None
    }
    /// How many records of the [`ReadOptions::count_only`] events, counted instead of yielded,
    /// come before the last event yielded, in the order of the whole stream: that event's
    /// index in the stream is the number of events yielded before it plus this. 0 for a reader
    /// that yields every record.
    fn counted_before(&self) -> u64 {
        0
    }
}

/// Where in an input a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// The input as a whole.
    Input,
    /// A 1-based text line.
    Line(u64),
    /// A byte offset in the file.
    Offset(u64),
    /// A byte offset within one CPU's data stream (after decompression).
    CpuOffset {
        /// The CPU.
        cpu: u32,
        /// Byte offset in that CPU's page stream.
        offset: u64,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Input => Ok(()),
            Self::Line(n) => write!(f, ":{n}"),
            Self::Offset(o) => write!(f, " at offset {o:#x}"),
            Self::CpuOffset { cpu, offset } => write!(f, " CPU {cpu} at data offset {offset:#x}"),
        }
    }
}

/// A reader could not interpret its input.
///
/// Its message names the input, the place and what was wrong; its `source()` is the cause
/// behind the kind (an I/O error), so a printed chain says each thing once.
#[derive(Debug)]
pub struct ReadError {
    /// The input's name (path or `<stdin>`).
    pub input: Arc<str>,
    /// Where.
    pub at: Location,
    /// What was wrong.
    pub kind: ReadErrorKind,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}: {}", self.input, self.at, self.kind)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

impl ReadError {
    /// Builds an error.
    pub fn new(input: &Arc<str>, at: Location, kind: impl Into<ReadErrorKind>) -> Self {
        Self { input: Arc::clone(input), at, kind: kind.into() }
    }
}

/// What went wrong, by reader.
#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    /// The input could not be read.
    #[error("Cannot read the input")]
    Io(#[from] io::Error),
    /// No reader recognizes the input.
    #[error(
        "Unrecognized input: expected trace.dat, perf.data, a tracefs directory, or ftrace / \
         trace-cmd report / perf script text"
    )]
    UnknownFormat,
    /// The input ended in the middle of a structure.
    #[error("Truncated: expected {expected}, the input ends")]
    Truncated {
        /// What should have followed.
        expected: &'static str,
    },
    /// A known tracepoint lacked a field.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A format file (or header_page) could not be parsed.
    #[error(transparent)]
    Format(#[from] crate::bin::format::FormatError),
    /// A ring-buffer page is malformed.
    #[error(transparent)]
    Page(#[from] crate::bin::page::PageError),
    /// A tracepoint record could not be decoded with its format.
    #[error(transparent)]
    Record(#[from] crate::bin::format::RecordError),
    /// A copied tracefs tree is unusable.
    #[error(transparent)]
    Tracefs(#[from] crate::read::tracefs_tree::TracefsError),
    /// A trace.dat file is malformed.
    #[error(transparent)]
    TraceDat(#[from] crate::read::tracedat::TraceDatError),
    /// A perf.data file is malformed.
    #[error(transparent)]
    PerfData(#[from] crate::read::perfdata::PerfDataError),
    /// A line of trace text could not be read.
    #[error(transparent)]
    Text(#[from] crate::read::text::TextError),
}

/// Names an input for messages.
pub fn input_name(path: &std::path::Path) -> Arc<str> {
    if path.as_os_str() == "-" { "<stdin>".into() } else { path.display().to_string().into() }
}
