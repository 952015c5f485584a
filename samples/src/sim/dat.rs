//! Simulated traces written as trace.dat v7 (zstd), with the event-format files of a real
//! kernel, so that `trace-cmd report`, KernelShark and vmxray's readers read them like a
//! recording.
//!
//! The formats come from recordings bundled in `samples/` (embedded in the binary):
//!
//! | `--kernel` | formats of | taken from |
//! |---|---|---|
//! | 6.1 | Debian 6.1.0-57-amd64 | `samples/real/vmx/cr3-switch-ept-6.1.dat` |
//! | 6.14 | 6.18.44 (the 6.14 layouts of every simulated event) | `samples/real/tracedat/lm-v7-zstd.dat` |
//! | 5.10 | — (no 5.10 recording is bundled: refused) | |
//!
//! Debian's 6.1.0-57 carries two backports the simulator's 6.1 layout (upstream 6.1) lacks:
//! `kvm_entry.immediate_exit` and `kvm_page_fault`'s `vcpu_id`/`guest_rip`. [`Fit`] gives
//! those events the values that kernel records (no immediate exit; the vCPU and RIP of the
//! exit being handled, which is where the simulator's page faults always are), so no field
//! is written as a made-up 0: [`DatSummary::zeroed`] lists any that would be, and the tests
//! require it to be empty.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use vmxray_capture::ReadError;
use vmxray_capture::bin::format::EventFormats;
use vmxray_capture::read::tracedat::TraceDat;
use vmxray_capture::write::WriterOptions;
use vmxray_capture::write::encode::{EncodeError, EventsFile, EventsWriter};
use vmxray_events::{Event, EventKind};

use super::KernelVersion;

/// A Debian 6.1.0-57 recording (the lab's `cr3-switch` guest): its formats.
const FORMATS_6_1: &[u8] = include_bytes!("../../real/vmx/cr3-switch-ept-6.1.dat");
/// A 6.18.44 recording (`lm`): its formats, whose layouts are 6.14's for every simulated event.
const FORMATS_6_18: &[u8] = include_bytes!("../../real/tracedat/lm-v7-zstd.dat");

/// Writing a simulated trace.dat failed.
#[derive(Debug, thiserror::Error)]
pub enum DatError {
    /// No recording of this kernel's formats is bundled.
    #[error(
        "No event formats of kernel {0} are bundled (trace.dat output is available for 6.1 and \
         6.14; write text for 5.10)"
    )]
    NoFormats(KernelVersion),
    /// The bundled recording does not parse (a build problem).
    #[error("The bundled formats of kernel {kernel} do not parse")]
    BadFormats {
        /// The kernel.
        kernel: KernelVersion,
        /// Why.
        #[source]
        source: Box<ReadError>,
    },
    /// An event could not be encoded or written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The formats of one simulated kernel, and where they come from.
#[derive(Clone, Debug)]
pub struct KernelFormats {
    /// The parsed recording (formats, header texts, page layout).
    pub recording: Arc<TraceDat>,
    /// Which recording.
    pub source: &'static str,
    /// The recorded kernel's release.
    pub release: String,
}

/// The formats trace.dat output uses for `kernel`.
pub fn kernel_formats(kernel: KernelVersion) -> Result<KernelFormats, DatError> {
    let (bytes, source) = match kernel {
        KernelVersion::V6_1 => (FORMATS_6_1, "samples/real/vmx/cr3-switch-ept-6.1.dat"),
        KernelVersion::V6_14 => (FORMATS_6_18, "samples/real/tracedat/lm-v7-zstd.dat"),
        KernelVersion::V5_10 => return Err(DatError::NoFormats(kernel)),
    };
    let recording = TraceDat::from_bytes(source.into(), bytes.to_vec())
        .map_err(|e| DatError::BadFormats { kernel, source: Box::new(e) })?;
    let release = recording.kernel_release().unwrap_or_default();
    Ok(KernelFormats { recording: Arc::new(recording), source, release })
}

/// Gives events of the simulator's layout the fields the chosen formats have beyond it, with
/// the values that kernel records (see the [module docs](self)).
#[derive(Clone, Debug, Default)]
pub struct Fit {
    entry_immediate_exit: bool,
    page_fault_vcpu: bool,
    /// Per CPU: the vCPU and RIP of the last hardware exit.
    last_exit: Vec<Option<(u32, u64)>>,
}

impl Fit {
    /// What `formats` have beyond the simulator's layouts.
    pub fn new(formats: &EventFormats) -> Self {
        let has = |name: &str, field: &str| {
            formats.find("kvm", name).is_some_and(|f| f.field(field).is_some())
        };
        Self {
            entry_immediate_exit: has("kvm_entry", "immediate_exit"),
            page_fault_vcpu: has("kvm_page_fault", "vcpu_id") && has("kvm_page_fault", "guest_rip"),
            last_exit: Vec::new(),
        }
    }

    /// The event as the formats' kernel records it (events in time order per CPU).
    pub fn apply<'e>(&mut self, event: &'e Event) -> Cow<'e, Event> {
        match &event.kind {
            EventKind::KvmExit(x) | EventKind::KvmNestedVmexit(x) => {
                let cpu = usize::try_from(event.cpu).unwrap_or(usize::MAX);
                if cpu < 1 << 16 {
                    if self.last_exit.len() <= cpu {
                        self.last_exit.resize(cpu + 1, None);
                    }
                    self.last_exit[cpu] = x.vcpu_id().zip(x.guest_rip());
                }
                Cow::Borrowed(event)
            }
            EventKind::KvmEntry(e) if self.entry_immediate_exit && e.immediate_exit.is_none() => {
                let mut fitted = event.clone();
                if let EventKind::KvmEntry(e) = &mut fitted.kind {
                    e.immediate_exit = Some(false);
                }
                Cow::Owned(fitted)
            }
            EventKind::KvmPageFault { vcpu_id: None, guest_rip: None, .. }
                if self.page_fault_vcpu =>
            {
                let exit = usize::try_from(event.cpu)
                    .ok()
                    .and_then(|cpu| self.last_exit.get(cpu).copied().flatten());
                let mut fitted = event.clone();
                if let (EventKind::KvmPageFault { vcpu_id, guest_rip, .. }, Some((v, rip))) =
                    (&mut fitted.kind, exit)
                {
                    *vcpu_id = Some(v);
                    *guest_rip = Some(rip);
                }
                Cow::Owned(fitted)
            }
            _ => Cow::Borrowed(event),
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct DatSummary {
    /// Events written.
    pub events: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// Uncompressed page bytes.
    pub raw_bytes: u64,
    /// Fields of the formats that no event carried (written as 0), by `system:event:field`.
    pub zeroed: BTreeMap<String, u64>,
    /// The recording whose formats were used.
    pub formats_from: &'static str,
}

/// Writes simulated events (in trace order) as trace.dat.
pub struct DatSink {
    writer: EventsWriter,
    fit: Fit,
    source: &'static str,
}

impl DatSink {
    /// Creates `path` for a run of `kernel` on CPUs `0..cpus`.
    pub fn create(path: &Path, kernel: KernelVersion, cpus: u32) -> Result<Self, DatError> {
        let formats = kernel_formats(kernel)?;
        let rec = &formats.recording;
        let fit = Fit::new(&rec.formats);
        let uname = format!(
            "Linux vmxray-simulate {} #1 SMP (simulated {kernel} with the formats of {}) x86_64",
            formats.release, formats.source
        );
        let version = format!("vmxray {} simulate", env!("CARGO_PKG_VERSION"));
        let file = EventsFile {
            texts: &rec.texts,
            layout: rec.layout,
            cpus,
            clock: "mono",
            uname: &uname,
            version: &version,
        };
        let writer =
            EventsWriter::create(path, Arc::clone(&rec.formats), &file, WriterOptions::default())?;
        Ok(Self { writer, fit, source: formats.source })
    }

    /// Writes one event.
    pub fn push(&mut self, event: &Event) -> Result<(), DatError> {
        let fitted = self.fit.apply(event);
        self.writer.push(&fitted)?;
        Ok(())
    }

    /// Completes the file.
    pub fn finish(self) -> Result<DatSummary, DatError> {
        let zeroed = self.writer.encoder().zeroed().clone();
        let events = self.writer.events();
        let written = self.writer.finish()?;
        Ok(DatSummary {
            events,
            file_bytes: written.file_bytes,
            raw_bytes: written.raw_bytes,
            zeroed,
            formats_from: self.source,
        })
    }
}
