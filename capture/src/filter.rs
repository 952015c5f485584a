//! Selecting events: the filters `vmxray dump` (and the TUI) apply. An event's vCPU, for
//! events without a `vcpu_id`, comes from the one thread → vCPU attribution
//! (`vmxray_events::Attribution`).

use std::fmt;
use std::str::FromStr;

use vmxray_events::codes::ExitCode;
use vmxray_events::event::{Event, EventKind};

/// A closed-open time window in the trace clock's units; either end may be open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// First timestamp included.
    pub from: Option<u64>,
    /// First timestamp excluded.
    pub to: Option<u64>,
}

/// A `--time` argument that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Invalid time range `{0}`: expected FROM..TO in seconds (e.g. 665.8..666.1, 665.8.., ..666)"
)]
pub struct TimeRangeError(String);

impl TimeRange {
    /// Parses `FROM..TO` where each end is seconds with up to nine decimals (`665.844340`) and
    /// may be empty. For clocks that are not in ns the ends are raw integers.
    pub fn parse(text: &str, ns_clock: bool) -> Result<Self, TimeRangeError> {
        let err = || TimeRangeError(text.to_owned());
        let (a, b) = text.split_once("..").ok_or_else(err)?;
        let end = |s: &str| -> Result<Option<u64>, TimeRangeError> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if !ns_clock {
                return s.parse().map(Some).map_err(|_| err());
            }
            let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
            if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            let sec: u64 = sec.parse().map_err(|_| err())?;
            let frac_ns: u64 = if frac.is_empty() {
                0
            } else {
                frac.parse::<u64>().map_err(|_| err())?
                    * 10u64.pow(9 - u32::try_from(frac.len()).map_err(|_| err())?)
            };
            sec.checked_mul(1_000_000_000)
                .and_then(|n| n.checked_add(frac_ns))
                .map(Some)
                .ok_or_else(err)
        };
        Ok(Self { from: end(a)?, to: end(b)? })
    }

    /// True when `ts` is inside the window.
    pub fn contains(&self, ts: u64) -> bool {
        self.from.is_none_or(|f| ts >= f) && self.to.is_none_or(|t| ts < t)
    }
}

/// An exit reason to match: a name (`EPT_VIOLATION`, `npf`) or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReasonMatch {
    /// Matches the code's printed name (case-insensitive) or its VMX basic reason name.
    Name(String),
    /// Matches the raw code, or the VMX basic reason number.
    Number(u64),
}

impl FromStr for ReasonMatch {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let num = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        };
        Ok(num.map_or_else(|| Self::Name(s.to_owned()), Self::Number))
    }
}

impl ReasonMatch {
    /// True when `code` is this reason.
    pub fn matches(&self, code: ExitCode) -> bool {
        match self {
            Self::Number(n) => {
                code.raw() == *n || code.vmx_basic().is_some_and(|b| u64::from(b.0) == *n)
            }
            Self::Name(name) => {
                code.to_string().eq_ignore_ascii_case(name)
                    || code
                        .vmx_basic()
                        .and_then(|b| b.name())
                        .is_some_and(|b| b.eq_ignore_ascii_case(name))
            }
        }
    }
}

impl fmt::Display for ReasonMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Number(n) => write!(f, "{n:#x}"),
        }
    }
}

/// What to keep. Empty lists match everything; all criteria must hold.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// vCPUs (by the event's `vcpu_id` or its thread's vCPU).
    pub vcpus: Vec<u32>,
    /// CPUs.
    pub cpus: Vec<u32>,
    /// Event names: bare (`kvm_exit`), `system:name`, `system:*`, or a `prefix*`.
    pub events: Vec<String>,
    /// Exit reasons (keeps only exit events with one of these reasons).
    pub reasons: Vec<ReasonMatch>,
    /// Time window.
    pub time: TimeRange,
}

impl EventFilter {
    /// True when the filter keeps `event`, whose vCPU (own or attributed) is `vcpu`. A
    /// segment marker (another capture starts) is kept whatever the filter: it is the input's
    /// structure, not an event. An event without a time is outside any bounded window.
    pub fn keeps(&self, event: &Event, vcpu: Option<u32>) -> bool {
        if let EventKind::Segment { .. } = event.kind {
            return true;
        }
        let in_time = match event.time() {
            Some(ts) => self.time.contains(ts),
            None => self.time.from.is_none() && self.time.to.is_none(),
        };
        in_time
            && (self.cpus.is_empty() || self.cpus.contains(&event.cpu))
            && (self.vcpus.is_empty() || vcpu.is_some_and(|v| self.vcpus.contains(&v)))
            && (self.events.is_empty()
                || self.events.iter().any(|p| name_matches(p, event.system(), event.name())))
            && (self.reasons.is_empty()
                || event
                    .kind
                    .exit_reason()
                    .is_some_and(|r| self.reasons.iter().any(|m| m.matches(r))))
    }
}

fn name_matches(pattern: &str, system: &str, name: &str) -> bool {
    let (sys_pat, name_pat) = match pattern.split_once(':') {
        Some((s, n)) => (Some(s), n),
        None => (None, pattern),
    };
    let glob = |pat: &str, text: &str| match pat.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pat == text,
    };
    sys_pat.is_none_or(|s| glob(s, system)) && glob(name_pat, name)
}

#[cfg(test)]
mod tests {

    use super::*;
    use vmxray_events::codes::{ExitReason, Isa};
    use vmxray_events::event::{Entry, EventKind, ExitFields, ExitInfo};

    fn exit(pid: i32, vcpu: Option<u32>, reason: u32, ts: u64) -> Event {
        Event {
            ts,
            cpu: 0,
            pid,
            tgid: None,
            comm: Some(vmxray_events::Comm::from("CPU 0/KVM")),
            kind: EventKind::KvmExit(ExitInfo::from(ExitFields {
                reason: ExitCode::Vmx(ExitReason(reason)),
                isa: Some(Isa::Vmx),
                guest_rip: Some(0),
                info1: None,
                info2: None,
                intr_info: None,
                error_code: None,
                vcpu_id: vcpu,
                requests: None,
            })),
        }
    }

    #[test]
    fn time_ranges_parse_in_seconds() {
        let r = TimeRange::parse("665.8443..666", true).unwrap();
        assert_eq!(r, TimeRange { from: Some(665_844_300_000), to: Some(666_000_000_000) });
        assert!(r.contains(665_844_300_000) && !r.contains(666_000_000_000));
        assert_eq!(TimeRange::parse("..5", true).unwrap().to, Some(5_000_000_000));
        assert_eq!(TimeRange::parse("100..", false).unwrap().from, Some(100));
        assert!(TimeRange::parse("1.2.3..4", true).is_err());
        assert!(TimeRange::parse("5", true).is_err());
        assert!(TimeRange::parse("99999999999999999999..", true).is_err());
    }

    #[test]
    fn filters_on_attributed_events() {
        let mut by_thread = vmxray_events::Attribution::default();
        let entry = Event {
            kind: EventKind::KvmEntry(Entry {
                vcpu_id: 1,
                rip: None,
                immediate_exit: None,
                intr_info: None,
                error_code: None,
            }),
            ..exit(42, None, 0, 1)
        };
        assert_eq!(by_thread.attribute(&entry).actor.vcpu_id(), Some(1));
        let anon = exit(42, None, 48, 2);
        assert_eq!(by_thread.attribute(&anon).actor.vcpu_id(), Some(1));
        let f = EventFilter {
            vcpus: vec![1],
            reasons: vec!["ept_violation".parse().unwrap()],
            events: vec!["kvm:kvm_*".into()],
            ..EventFilter::default()
        };
        assert!(f.keeps(&anon, Some(1)));
        assert!(!f.keeps(&anon, Some(0)));
        assert!(!f.keeps(&entry, Some(1)), "entry has no exit reason");
        let by_number =
            EventFilter { reasons: vec!["48".parse().unwrap()], ..EventFilter::default() };
        assert!(by_number.keeps(&exit(1, Some(0), 0x8000_0030, 3), None));
    }
}
