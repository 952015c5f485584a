//! Which kernel interface records: a private tracefs instance ([`crate::TracefsRecorder`]) or
//! `perf_event_open` ([`crate::perf::recorder::PerfRecorder`]), behind one [`Recorder`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::perf::recorder::PerfRecorder;
use crate::{RecordError, RecordOptions, RecordReport, TracefsRecorder};

/// The recording backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// A private tracefs instance (needs a writable tracefs).
    #[default]
    Tracefs,
    /// `perf_event_open` on each tracepoint (needs perf permission; tracefs is only read).
    Perf,
    /// tracefs, or perf when no tracefs instance can be created or written.
    Auto,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tracefs" => Ok(Self::Tracefs),
            "perf" => Ok(Self::Perf),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("unknown backend {s:?}: expected tracefs, perf or auto")),
        }
    }
}

/// The file format written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// trace-cmd's trace.dat v7 (zstd), for trace-cmd, KernelShark and vmxray.
    #[default]
    TraceDat,
    /// perf.data, for `perf script` / `perf report` and vmxray (perf backend only).
    PerfData,
}

impl OutputFormat {
    /// The format a file name asks for: `perf.data`, `*.data` and `*.perf` are perf.data,
    /// anything else trace.dat.
    pub fn for_path(path: &Path) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".data") || name.ends_with(".perf") || name == "perf.data" {
            Self::PerfData
        } else {
            Self::TraceDat
        }
    }
}

/// A running recording with either backend.
pub struct Recorder {
    inner: Inner,
    /// Why `auto` did not use tracefs.
    fallback: Option<String>,
}

enum Inner {
    Tracefs(Box<TracefsRecorder>),
    Perf(Box<PerfRecorder>),
}

impl Recorder {
    /// Starts recording with `opts.backend`; `Auto` tries tracefs first and falls back to perf
    /// when tracefs cannot be used ([`RecordError::tracefs_unusable`]), saying why in
    /// [`Recorder::fallback`].
    pub fn start(opts: RecordOptions) -> Result<Self, RecordError> {
        let perf_data = opts.output_format == OutputFormat::PerfData;
        match opts.backend {
            Backend::Tracefs if perf_data => Err(RecordError::Unsupported(
                "The tracefs backend writes trace.dat only: use --backend perf for perf.data",
            )),
            Backend::Tracefs => Ok(Self::tracefs(TracefsRecorder::start(opts)?)),
            Backend::Perf => Ok(Self::perf(PerfRecorder::start(opts)?, None)),
            // perf.data can only come from perf.
            Backend::Auto if perf_data => Ok(Self::perf(PerfRecorder::start(opts)?, None)),
            Backend::Auto => match TracefsRecorder::start(opts.clone()) {
                Ok(r) => Ok(Self::tracefs(r)),
                Err(e) if e.tracefs_unusable() => {
                    let why = error_chain(&e);
                    Ok(Self::perf(PerfRecorder::start(opts)?, Some(why)))
                }
                Err(e) => Err(e),
            },
        }
    }

    fn tracefs(r: TracefsRecorder) -> Self {
        Self { inner: Inner::Tracefs(Box::new(r)), fallback: None }
    }

    fn perf(r: PerfRecorder, fallback: Option<String>) -> Self {
        Self { inner: Inner::Perf(Box::new(r)), fallback }
    }

    /// The backend recording.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Tracefs(_) => Backend::Tracefs,
            Inner::Perf(_) => Backend::Perf,
        }
    }

    /// Why `--backend auto` fell back to perf (tracefs' error), if it did.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The tracefs instance's name (empty for perf).
    pub fn instance_name(&self) -> &str {
        match &self.inner {
            Inner::Tracefs(r) => r.instance_name(),
            Inner::Perf(_) => "",
        }
    }

    /// Selected events this kernel lacks.
    pub fn missing_events(&self) -> &[String] {
        match &self.inner {
            Inner::Tracefs(r) => r.missing_events(),
            Inner::Perf(r) => r.missing_events(),
        }
    }

    /// True once SIGINT/SIGTERM arrived, the flight recorder wrote its last dump, or a thread
    /// ended early.
    pub fn should_stop(&self) -> bool {
        match &self.inner {
            Inner::Tracefs(r) => r.should_stop(),
            Inner::Perf(r) => r.should_stop(),
        }
    }

    /// Waits until `done()`, `duration` or [`Self::should_stop`].
    pub fn wait(&mut self, duration: Option<Duration>, done: impl FnMut() -> bool) {
        match &mut self.inner {
            Inner::Tracefs(r) => r.wait(duration, done),
            Inner::Perf(r) => r.wait(duration, done),
        }
    }

    /// Stops, drains, completes the file(s) and releases everything.
    pub fn finish(self) -> Result<RecordReport, RecordError> {
        match self.inner {
            Inner::Tracefs(r) => r.finish(),
            Inner::Perf(r) => r.finish(),
        }
    }
}

/// An error and its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
