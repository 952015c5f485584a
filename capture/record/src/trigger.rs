//! Flight-recorder triggers: what ends the wait, and finding it in raw pages.
//!
//! Detection runs in user space on the pages the recorder already reads. A page is decoded
//! only when it *can* contain a trigger: the little-endian bytes of one of the trigger events'
//! ids must occur in its data (one `memmem` per id, no record walk). Candidate pages are then
//! walked with the page decoder and the matching records decoded with their format.

use std::fmt;
use std::str::FromStr;

use vmxray_capture::bin::format::{EventFormats, PageLayout};
use vmxray_capture::bin::page::{PageItem, PageRecords};
use vmxray_events::codes::{ExitCode, SvmExitCode, UserspaceExitReason, VmxBasicReason};
use vmxray_events::event::EventKind;

/// A trigger as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerSpec {
    /// `shutdown`: `kvm_userspace_exit` with `KVM_EXIT_SHUTDOWN` (a triple fault reaching
    /// userspace).
    Shutdown,
    /// `internal-error`: `KVM_EXIT_INTERNAL_ERROR`.
    InternalError,
    /// `fail-entry`: `KVM_EXIT_FAIL_ENTRY`, or a `kvm_exit` whose VM entry failed (VMX bit 31,
    /// SVM `VMEXIT_INVALID`).
    FailEntry,
    /// `triple-fault`: a `kvm_exit` / `kvm_nested_vmexit` with reason TRIPLE_FAULT (VMX) or
    /// `shutdown` (SVM).
    TripleFault,
    /// `exit-reason=NAME`: a `kvm_exit` with this reason (VMX or SVM name as the kernel prints
    /// it).
    ExitReason(ExitCode),
    /// `event=SYS:NAME`: any occurrence of the event.
    Event {
        /// The system.
        system: String,
        /// The event.
        name: String,
    },
}

/// A trigger string that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum TriggerParseError {
    /// Unknown trigger keyword.
    #[error(
        "Unknown trigger {0:?}: expected shutdown, internal-error, fail-entry, triple-fault, \
         exit-reason=NAME or event=SYS:NAME"
    )]
    Unknown(String),
    /// `exit-reason=` with a name no table knows.
    #[error("Unknown exit reason {0:?} (use the kernel's name: EPT_VIOLATION, npf, ...)")]
    ExitReason(String),
    /// `event=` without `SYS:NAME`.
    #[error("Expected event=SYS:NAME, got {0:?}")]
    Event(String),
}

impl FromStr for TriggerSpec {
    type Err = TriggerParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shutdown" => return Ok(Self::Shutdown),
            "internal-error" => return Ok(Self::InternalError),
            "fail-entry" => return Ok(Self::FailEntry),
            "triple-fault" => return Ok(Self::TripleFault),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("exit-reason=") {
            return ExitCode::from_name(name)
                .map(Self::ExitReason)
                .ok_or_else(|| TriggerParseError::ExitReason(name.into()));
        }
        if let Some(ev) = s.strip_prefix("event=") {
            return match ev.split_once(':') {
                Some((system, name)) if !system.is_empty() && !name.is_empty() => {
                    Ok(Self::Event { system: system.into(), name: name.into() })
                }
                _ => Err(TriggerParseError::Event(ev.into())),
            };
        }
        Err(TriggerParseError::Unknown(s.into()))
    }
}

impl fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shutdown => f.write_str("shutdown"),
            Self::InternalError => f.write_str("internal-error"),
            Self::FailEntry => f.write_str("fail-entry"),
            Self::TripleFault => f.write_str("triple-fault"),
            Self::ExitReason(code) => write!(f, "exit-reason={code}"),
            Self::Event { system, name } => write!(f, "event={system}:{name}"),
        }
    }
}

impl TriggerSpec {
    /// The events that carry this trigger (`(system, name)`); the recorder enables them.
    pub fn events(&self) -> Vec<(String, String)> {
        let kvm = |n: &str| ("kvm".to_string(), n.to_string());
        match self {
            Self::Shutdown | Self::InternalError => vec![kvm("kvm_userspace_exit")],
            Self::FailEntry => vec![kvm("kvm_userspace_exit"), kvm("kvm_exit")],
            Self::TripleFault => vec![kvm("kvm_exit"), kvm("kvm_nested_vmexit")],
            Self::ExitReason(_) => vec![kvm("kvm_exit")],
            Self::Event { system, name } => vec![(system.clone(), name.clone())],
        }
    }

    /// True when the decoded event fires this trigger.
    pub fn matches(&self, system: &str, name: &str, kind: &EventKind) -> bool {
        match self {
            Self::Shutdown => userspace_exit(kind) == Some(UserspaceExitReason::SHUTDOWN),
            Self::InternalError => {
                userspace_exit(kind) == Some(UserspaceExitReason::INTERNAL_ERROR)
            }
            Self::FailEntry => {
                userspace_exit(kind) == Some(UserspaceExitReason::FAIL_ENTRY)
                    || matches!(kind, EventKind::KvmExit(info) if match info.reason() {
                        ExitCode::Vmx(r) => r.failed_vmentry(),
                        ExitCode::Svm(c) => c == SvmExitCode::ERR,
                        ExitCode::Raw(_) => false,
                    })
            }
            Self::TripleFault => match kind {
                EventKind::KvmExit(info) | EventKind::KvmNestedVmexit(info) => {
                    match info.reason() {
                        ExitCode::Vmx(r) => r.basic() == VmxBasicReason::TRIPLE_FAULT,
                        ExitCode::Svm(c) => c == SvmExitCode::SHUTDOWN,
                        ExitCode::Raw(_) => false,
                    }
                }
                _ => false,
            },
            Self::ExitReason(code) => match kind {
                EventKind::KvmExit(info) => match (code, info.reason()) {
                    (ExitCode::Vmx(want), ExitCode::Vmx(got)) => {
                        want.basic() == got.basic()
                            && (!want.failed_vmentry() || got.failed_vmentry())
                    }
                    (ExitCode::Vmx(want), ExitCode::Raw(raw)) => {
                        u64::from(want.basic().0) == raw & 0xffff
                    }
                    (want, got) => want.raw() == got.raw(),
                },
                _ => false,
            },
            Self::Event { system: s, name: n } => s == system && n == name,
        }
    }
}

fn userspace_exit(kind: &EventKind) -> Option<UserspaceExitReason> {
    match kind {
        EventKind::KvmUserspaceExit { reason, errno } if errno.unwrap_or(0) >= 0 => Some(*reason),
        _ => None,
    }
}

/// A trigger that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// Which trigger.
    pub trigger: TriggerSpec,
    /// The event's timestamp.
    pub ts: u64,
    /// The event's name.
    pub event: String,
}

/// Finds triggers in raw pages.
#[derive(Debug)]
pub struct Detector {
    triggers: Vec<TriggerSpec>,
    /// Event ids (and their little-endian bytes, for the prefilter) that can fire a trigger.
    ids: Vec<(u32, Vec<u8>)>,
    formats: EventFormats,
    layout: PageLayout,
    /// Pages walked because the prefilter let them through.
    pub pages_decoded: u64,
    /// Pages seen.
    pub pages_seen: u64,
}

impl Detector {
    /// A detector for `triggers` over pages of `layout` whose events `formats` describes.
    /// Triggers whose events the formats lack can never fire; they are returned separately.
    pub fn new(
        triggers: Vec<TriggerSpec>,
        formats: EventFormats,
        layout: PageLayout,
    ) -> (Self, Vec<TriggerSpec>) {
        let mut ids = Vec::new();
        let mut dead = Vec::new();
        for t in &triggers {
            let mut any = false;
            for (system, name) in t.events() {
                if let Some(f) = formats.find(&system, &name) {
                    any = true;
                    if !ids.iter().any(|(id, _)| *id == f.id) {
                        let bytes = u16::try_from(f.id)
                            .map(|id| layout.endian.put_u16(id).to_vec())
                            .unwrap_or_default();
                        ids.push((f.id, bytes));
                    }
                }
            }
            if !any {
                dead.push(t.clone());
            }
        }
        (Self { triggers, ids, formats, layout, pages_decoded: 0, pages_seen: 0 }, dead)
    }

    /// The first trigger in `page`, if any.
    pub fn scan(&mut self, page: &[u8]) -> Option<Fired> {
        self.pages_seen += 1;
        let data = page.get(self.layout.data_offset as usize..).unwrap_or(&[]);
        if !self.ids.iter().any(|(_, b)| !b.is_empty() && memchr::memmem::find(data, b).is_some()) {
            return None;
        }
        self.pages_decoded += 1;
        let records = PageRecords::new(&self.layout, page).ok()?;
        for item in records {
            let Ok(PageItem::Event { ts, payload, .. }) = item else { continue };
            let Some(id) = self.formats.event_id(payload) else { continue };
            if !self.ids.iter().any(|(want, _)| *want == id) {
                continue;
            }
            let Some(format) = self.formats.get(id) else { continue };
            let Ok(kind) = self.formats.decode(payload) else { continue };
            if let Some(t) =
                self.triggers.iter().find(|t| t.matches(&format.system, &format.name, &kind))
            {
                return Some(Fired {
                    trigger: t.clone(),
                    ts,
                    event: format!("{}:{}", format.system, format.name),
                });
            }
        }
        None
    }
}

/// Cuts a page after its last event at or before `cutoff`: `None` when its first event is
/// later, the page unchanged when all of it is earlier. The lost-events flags are kept.
pub fn truncate_page(layout: &PageLayout, page: &[u8], cutoff: u64) -> Option<Vec<u8>> {
    let records = PageRecords::new(layout, page).ok()?;
    let base = page.as_ptr() as usize;
    let mut keep_end: Option<usize> = None;
    let mut any_after = false;
    for item in records {
        match item {
            Ok(PageItem::Event { ts, payload, .. }) => {
                if ts > cutoff {
                    any_after = true;
                    break;
                }
                keep_end = Some(payload.as_ptr() as usize - base + payload.len());
            }
            Ok(PageItem::Lost { .. }) => {}
            Err(_) => break,
        }
    }
    if !any_after {
        return Some(page.to_vec());
    }
    let end = keep_end?;
    // Records are 4-byte aligned; the payload slice may end before the record's padding.
    let data_offset = layout.data_offset as usize;
    let end = (end - data_offset).next_multiple_of(4) + data_offset;
    let mut out = page.to_vec();
    let commit_at = layout.commit_offset as usize;
    let width = layout.commit_size as usize;
    let old = layout.endian.uint(page, commit_at, width)?;
    // Keep MISSED_EVENTS but drop MISSED_STORED: the stored count lived after the old end.
    let flags =
        old & !(vmxray_capture::bin::page::COMMIT_MASK | vmxray_capture::bin::page::MISSED_STORED);
    let new = flags | u64::try_from(end - data_offset).ok()?;
    let bytes = if width == 8 {
        layout.endian.put_u64(new).to_vec()
    } else {
        layout.endian.put_u32(u32::try_from(new & 0xffff_ffff).ok()?).to_vec()
    };
    out[commit_at..commit_at + width].copy_from_slice(&bytes);
    out[end..].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmxray_capture::bin::Endian;
    use vmxray_capture::write::page::PageBuilder;

    const USERSPACE_EXIT: &str = "name: kvm_userspace_exit\nID: 42\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:__u32 reason;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:int errno;\toffset:12;\tsize:4;\tsigned:1;\n\n\
        print fmt: \"reason %d\", REC->reason\n";

    const KVM_EXIT: &str = "name: kvm_exit\nID: 103\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:unsigned long guest_rip;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:u32 isa;\toffset:24;\tsize:4;\tsigned:0;\n\
        \tfield:u64 info1;\toffset:32;\tsize:8;\tsigned:0;\n\
        \tfield:u64 info2;\toffset:40;\tsize:8;\tsigned:0;\n\
        \tfield:u32 intr_info;\toffset:48;\tsize:4;\tsigned:0;\n\
        \tfield:u32 error_code;\toffset:52;\tsize:4;\tsigned:0;\n\
        \tfield:unsigned int vcpu_id;\toffset:56;\tsize:4;\tsigned:0;\n\n\
        print fmt: \"reason %d\", REC->exit_reason\n";

    fn formats() -> EventFormats {
        let mut f = EventFormats::new(Endian::Little, 8);
        f.add_text("kvm", USERSPACE_EXIT.as_bytes()).unwrap();
        f.add_text("kvm", KVM_EXIT.as_bytes()).unwrap();
        f
    }

    fn userspace_exit(reason: u32) -> Vec<u8> {
        let mut p = vec![42, 0, 0, 0, 1, 0, 0, 0];
        p.extend_from_slice(&reason.to_le_bytes());
        p.extend_from_slice(&0i32.to_le_bytes());
        p
    }

    fn kvm_exit(reason: u32, isa: u32) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        p[0] = 103;
        p[8..12].copy_from_slice(&reason.to_le_bytes());
        p[24..28].copy_from_slice(&isa.to_le_bytes());
        p
    }

    fn layout() -> PageLayout {
        PageLayout::default_64(Endian::Little)
    }

    #[test]
    fn parses_every_trigger_form() {
        assert_eq!("shutdown".parse::<TriggerSpec>().unwrap(), TriggerSpec::Shutdown);
        assert_eq!(
            "exit-reason=EPT_VIOLATION".parse::<TriggerSpec>().unwrap().to_string(),
            "exit-reason=EPT_VIOLATION"
        );
        assert_eq!(
            "event=kvm:kvm_pio".parse::<TriggerSpec>().unwrap(),
            TriggerSpec::Event { system: "kvm".into(), name: "kvm_pio".into() }
        );
        assert!("exit-reason=NOPE".parse::<TriggerSpec>().is_err());
        assert!("event=kvm".parse::<TriggerSpec>().is_err());
        assert!("reboot".parse::<TriggerSpec>().is_err());
    }

    #[test]
    fn finds_shutdown_and_skips_other_reasons() {
        let (mut d, dead) = Detector::new(vec![TriggerSpec::Shutdown], formats(), layout());
        assert!(dead.is_empty());
        let io = PageBuilder::new(layout(), 100).event(0, &userspace_exit(2)).build();
        assert_eq!(d.scan(&io), None);
        let page = PageBuilder::new(layout(), 100)
            .event(0, &userspace_exit(2))
            .event(50, &userspace_exit(8))
            .build();
        let fired = d.scan(&page).unwrap();
        assert_eq!((fired.ts, fired.event.as_str()), (150, "kvm:kvm_userspace_exit"));
    }

    #[test]
    fn prefilter_skips_pages_without_trigger_ids() {
        let (mut d, _) = Detector::new(vec![TriggerSpec::Shutdown], formats(), layout());
        let page = PageBuilder::new(layout(), 1).event(0, &kvm_exit(30, 1)).build();
        assert_eq!(d.scan(&page), None);
        assert_eq!((d.pages_seen, d.pages_decoded), (1, 0));
    }

    #[test]
    fn triple_fault_on_vmx_and_svm_and_exit_reason() {
        let triggers = vec![TriggerSpec::TripleFault];
        let (mut d, _) = Detector::new(triggers, formats(), layout());
        let vmx = PageBuilder::new(layout(), 1).event(0, &kvm_exit(2, 1)).build();
        let svm = PageBuilder::new(layout(), 1).event(0, &kvm_exit(0x7f, 2)).build();
        let other = PageBuilder::new(layout(), 1).event(0, &kvm_exit(30, 1)).build();
        assert!(d.scan(&vmx).is_some() && d.scan(&svm).is_some() && d.scan(&other).is_none());
        let t = "exit-reason=IO_INSTRUCTION".parse().unwrap();
        let (mut d, _) = Detector::new(vec![t], formats(), layout());
        assert!(d.scan(&other).is_some() && d.scan(&vmx).is_none());
        let fail = PageBuilder::new(layout(), 1).event(0, &kvm_exit(0x8000_0021, 1)).build();
        let (mut d, _) = Detector::new(vec![TriggerSpec::FailEntry], formats(), layout());
        assert!(d.scan(&fail).is_some() && d.scan(&vmx).is_none());
    }

    #[test]
    fn triggers_without_events_are_reported_dead() {
        let t = TriggerSpec::Event { system: "kvm".into(), name: "kvm_nope".into() };
        let (_, dead) = Detector::new(vec![t.clone()], formats(), layout());
        assert_eq!(dead, vec![t]);
    }

    #[test]
    fn truncation_keeps_events_up_to_the_cutoff() {
        let page = PageBuilder::new(layout(), 100)
            .event(0, &userspace_exit(2))
            .event(10, &userspace_exit(8))
            .event(10, &userspace_exit(2))
            .lost(Some(7))
            .build();
        let cut = truncate_page(&layout(), &page, 110).unwrap();
        let ts: Vec<u64> = PageRecords::new(&layout(), &cut)
            .unwrap()
            .filter_map(|i| match i.unwrap() {
                PageItem::Event { ts, .. } => Some(ts),
                PageItem::Lost { .. } => None,
            })
            .collect();
        assert_eq!(ts, [100, 110]);
        assert_eq!(truncate_page(&layout(), &page, 99), None);
        assert_eq!(truncate_page(&layout(), &page, 1000).unwrap(), page);
    }
}
