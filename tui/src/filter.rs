//! The timeline filter typed after `f`: `vcpu=0,1 level=L2 reason=EPT_VIOLATION
//! event=kvm_exit,kvm_nested_* rule=changed_subject_cr3 cpu=3`. Words are ANDed, commas OR.
//! The event, reason, vCPU and CPU criteria are `vmxray_capture::filter::EventFilter` (the
//! same matching as `vmxray dump`); level and rule come from the model's tags and anomalies.

use std::cell::RefCell;
use std::sync::Arc;

use vmxray_capture::filter::EventFilter;
use vmxray_events::Event;
use vmxray_replay::RuleId;

use crate::store::Lru;
use crate::trace::{EventTag, Tier, Trace};

/// A parsed filter.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// What the user typed.
    pub spec: String,
    events: EventFilter,
    levels: Vec<Tier>,
    rules: Vec<RuleId>,
}

/// A filter word that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Filter {
    /// Parses `key=value[,value...]` words; keys: vcpu, cpu, level (L0, L1, L2, unknown),
    /// reason, event, rule.
    pub fn parse(spec: &str) -> Result<Self, FilterError> {
        let mut filter = Self { spec: spec.trim().to_owned(), ..Self::default() };
        for word in spec.split_whitespace() {
            let Some((key, values)) = word.split_once('=') else {
                return Err(FilterError(format!(
                    "`{word}`: expected key=value (vcpu, cpu, level, reason, event, rule)"
                )));
            };
            for value in values.split(',').filter(|v| !v.is_empty()) {
                let bad = || FilterError(format!("`{key}={value}`: not a valid {key}"));
                match key {
                    "vcpu" => filter.events.vcpus.push(value.parse().map_err(|_| bad())?),
                    "cpu" => filter.events.cpus.push(value.parse().map_err(|_| bad())?),
                    "reason" => filter.events.reasons.push(value.parse().map_err(|_| bad())?),
                    "event" => filter.events.events.push(value.to_owned()),
                    "level" => filter.levels.push(match value.to_ascii_uppercase().as_str() {
                        "L0" => Tier::L0Exit,
                        "L1" => Tier::L1,
                        "L2" => Tier::L2,
                        "UNKNOWN" | "--" => Tier::Unknown,
                        _ => return Err(bad()),
                    }),
                    "rule" => filter.rules.push(value.parse().map_err(|_| bad())?),
                    _ => {
                        return Err(FilterError(format!(
                            "`{key}`: unknown key (vcpu, cpu, level, reason, event, rule)"
                        )));
                    }
                }
            }
        }
        Ok(filter)
    }

    /// Whether the event at `index` passes.
    pub fn keeps(&self, trace: &Trace, index: u64) -> bool {
        let (Some(event), Some(tag)) = (trace.event(index), trace.tag(index)) else {
            return false;
        };
        self.keeps_event(trace, index, &event, tag)
    }

    /// Whether `event` (event `index`, with its tag) passes.
    pub fn keeps_event(&self, trace: &Trace, index: u64, event: &Event, tag: EventTag) -> bool {
        // The model's attribution, else the event's own vcpu_id (untyped events carry one).
        let actor = trace.actors.get(usize::from(tag.actor)).copied();
        let vcpu = actor.and_then(|a| a.vcpu_id()).or_else(|| event.vcpu());
        self.events.keeps(event, vcpu)
            && (self.levels.is_empty() || self.levels.contains(&tag.tier()))
            && (self.rules.is_empty()
                || (tag.anomaly()
                    && trace.anomalies_at(index).iter().any(|a| self.rules.contains(&a.rule))))
    }

    /// Whether an anomaly passes the rule and vCPU criteria (for the Anomalies view).
    pub fn keeps_anomaly(&self, anomaly: &vmxray_replay::Anomaly) -> bool {
        (self.rules.is_empty() || self.rules.contains(&anomaly.rule))
            && (self.events.vcpus.is_empty()
                || anomaly.vcpu.vcpu_id().is_some_and(|v| self.events.vcpus.contains(&v)))
    }
}

/// The rows of the timeline: every event, or the events a filter keeps (kept up to date as
/// blocks arrive). A filter keeps, per block of the index, how many of its events match; the
/// matching events of a block are found again when shown (and kept for a few blocks), so
/// memory follows the blocks, not the matches.
#[derive(Debug, Default)]
pub struct Rows {
    filter: Option<Filter>,
    /// Matches before each scanned block, and after the last (`len = scanned blocks + 1`).
    prefix: Vec<u64>,
    /// Events of the scanned blocks.
    scanned: u64,
    /// The matching events' offsets in recently used blocks.
    matches: RefCell<Option<Lru<Vec<u32>>>>,
}

impl Clone for Rows {
    fn clone(&self) -> Self {
        Self {
            filter: self.filter.clone(),
            prefix: self.prefix.clone(),
            scanned: self.scanned,
            matches: RefCell::new(None),
        }
    }
}

impl Rows {
    /// The active filter.
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_ref()
    }

    /// Replaces the filter (None: every event) and filters the first `budget` events; the
    /// rest follows with [`Rows::catch_up`] between frames.
    pub fn set_filter(&mut self, filter: Option<Filter>, trace: &Trace, budget: u64) {
        self.filter = filter;
        self.prefix = vec![0];
        self.scanned = 0;
        *self.matches.borrow_mut() = None;
        self.catch_up(trace, budget);
    }

    /// The offsets of block `b`'s matching events.
    fn block_matches(&self, trace: &Trace, b: usize) -> Option<Arc<Vec<u32>>> {
        let filter = self.filter.as_ref()?;
        if let Some(hit) = self.matches.borrow_mut().as_mut().and_then(|m| m.get(b)) {
            return Some(hit);
        }
        let first = trace.blocks().get(b)?.first;
        let events = trace.block_events(b)?;
        let tags = trace.block_tags(b)?;
        let offsets: Vec<u32> = events
            .iter()
            .zip(tags.iter())
            .enumerate()
            .filter(|(k, (e, t))| filter.keeps_event(trace, first + *k as u64, e, **t))
            .map(|(k, _)| u32::try_from(k).unwrap_or(u32::MAX))
            .collect();
        let offsets = Arc::new(offsets);
        self.matches.borrow_mut().get_or_insert_with(|| Lru::new(16)).put(b, Arc::clone(&offsets));
        Some(offsets)
    }

    /// Filters up to `budget` more of the loaded events (whole blocks); true while some remain.
    pub fn catch_up(&mut self, trace: &Trace, budget: u64) -> bool {
        if self.filter.is_none() {
            return false;
        }
        let mut done = 0u64;
        while done < budget {
            let b = self.prefix.len() - 1;
            let Some(block) = trace.blocks().get(b) else { break };
            let Some(m) = self.block_matches(trace, b) else { break };
            let before = self.prefix.last().copied().unwrap_or(0);
            self.prefix.push(before + m.len() as u64);
            self.scanned = block.end();
            done += u64::from(block.len);
        }
        self.pending(trace)
    }

    /// Loaded events the filter has not looked at yet.
    pub fn pending(&self, trace: &Trace) -> bool {
        self.filter.is_some() && self.scanned < trace.len()
    }

    /// Events looked at so far.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Number of rows.
    pub fn len(&self, trace: &Trace) -> u64 {
        match self.filter {
            Some(_) => self.prefix.last().copied().unwrap_or(0),
            None => trace.len(),
        }
    }

    /// The event shown on row `row`.
    pub fn event_at(&self, row: u64, trace: &Trace) -> Option<u64> {
        match self.filter {
            Some(_) => {
                let b = self.prefix.partition_point(|p| *p <= row).checked_sub(1)?;
                if b + 1 >= self.prefix.len() {
                    return None;
                }
                let m = self.block_matches(trace, b)?;
                let k = usize::try_from(row - self.prefix[b]).ok()?;
                let first = trace.blocks().get(b)?.first;
                m.get(k).map(|o| first + u64::from(*o))
            }
            None => (row < trace.len()).then_some(row),
        }
    }

    /// The row of event `index`, or of the first kept event after it (the last row if none).
    pub fn row_of(&self, index: u64, trace: &Trace) -> u64 {
        match self.filter {
            Some(_) => {
                let rows = self.len(trace);
                let last = rows.saturating_sub(1);
                let Some(b) = trace.block_of(index) else { return last };
                if b + 1 >= self.prefix.len() {
                    return last;
                }
                let first = trace.blocks().get(b).map_or(0, |blk| blk.first);
                let within = self
                    .block_matches(trace, b)
                    .map_or(0, |m| m.partition_point(|o| first + u64::from(*o) < index) as u64);
                (self.prefix[b] + within).min(last)
            }
            None => index.min(trace.len().saturating_sub(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_rejects_the_rest() {
        let f =
            Filter::parse("vcpu=0,1 level=L2 reason=EPT_VIOLATION event=kvm_exit rule=livelock")
                .unwrap();
        assert_eq!(f.events.vcpus, [0, 1]);
        assert_eq!(f.levels, [Tier::L2]);
        assert_eq!(f.rules, [RuleId::Livelock]);
        assert_eq!(f.events.events, ["kvm_exit"]);
        assert!(Filter::parse("vcpu=x").unwrap_err().0.contains("vcpu=x"));
        assert!(Filter::parse("colour=red").unwrap_err().0.contains("unknown key"));
        assert!(Filter::parse("level=L3").is_err());
        assert!(Filter::parse("rule=no_such_rule").is_err());
        assert!(Filter::parse("kvm_exit").is_err());
    }
}
