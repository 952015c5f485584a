//! The timeline filter typed after `f`: `vcpu=0,1 level=L2 reason=EPT_VIOLATION
//! event=kvm_exit,kvm_nested_* rule=changed_subject_cr3 cpu=3`. Words are ANDed, commas OR.
//! The event, reason, vCPU and CPU criteria are `vmxray_capture::filter::EventFilter` (the
//! same matching as `vmxray dump`); level and rule come from the model's tags and anomalies.

use vmxray_capture::filter::EventFilter;
use vmxray_replay::RuleId;

use crate::trace::{Tier, Trace};

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
        // The model's attribution, else the event's own vcpu_id (untyped events carry one).
        let vcpu = trace.actor(index).and_then(|a| a.vcpu_id()).or_else(|| event.vcpu());
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

/// The rows of the timeline: every event, or the indices a filter keeps (kept up to date as
/// chunks arrive).
#[derive(Clone, Debug, Default)]
pub struct Rows {
    filter: Option<Filter>,
    kept: Vec<u64>,
    scanned: u64,
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
        self.kept.clear();
        self.scanned = 0;
        self.catch_up(trace, budget);
    }

    /// Filters up to `budget` more of the loaded events; true while some remain.
    pub fn catch_up(&mut self, trace: &Trace, budget: u64) -> bool {
        let end = match &self.filter {
            Some(f) => {
                let end = trace.len().min(self.scanned.saturating_add(budget));
                for i in self.scanned..end {
                    if f.keeps(trace, i) {
                        self.kept.push(i);
                    }
                }
                end
            }
            None => trace.len(),
        };
        self.scanned = end;
        self.pending(trace)
    }

    /// Loaded events the filter has not looked at yet.
    pub fn pending(&self, trace: &Trace) -> bool {
        self.scanned < trace.len()
    }

    /// Events looked at so far.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Number of rows.
    pub fn len(&self, trace: &Trace) -> u64 {
        match self.filter {
            Some(_) => self.kept.len() as u64,
            None => trace.len(),
        }
    }

    /// The event shown on row `row`.
    pub fn event_at(&self, row: u64) -> Option<u64> {
        match self.filter {
            Some(_) => self.kept.get(usize::try_from(row).ok()?).copied(),
            None => Some(row),
        }
    }

    /// The row of event `index`, or of the first kept event after it (the last row if none).
    pub fn row_of(&self, index: u64, trace: &Trace) -> u64 {
        match self.filter {
            Some(_) => {
                let p = self.kept.partition_point(|&e| e < index) as u64;
                p.min((self.kept.len() as u64).saturating_sub(1))
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
