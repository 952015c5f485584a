//! A whole trace's field observations, for views: per-field histories, the table of every
//! field's value at an event, and diffs between two VMCSs or two events.

use serde::Serialize;
use vmxray_events::Event;
use vmxray_events::vmcs::{FieldEncoding, VmcsField, VmcsRef};

use crate::model::{Model, ModelConfig};

/// Every observation of a trace, in event order (unbounded: one entry per observation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FieldHistory {
    observations: Vec<VmcsField>,
}

/// One observation with the value the field had before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The observation.
    #[serde(flatten)]
    pub now: VmcsField,
    /// The previous observation of the same field of the same VMCS, if any.
    pub previous: Option<u64>,
    /// The value differs from the previous one (on the bits both know).
    pub changed: bool,
}

/// A field whose values differ between two sides of a diff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    /// The field.
    pub field: FieldEncoding,
    /// The left side's latest observation.
    pub left: Option<VmcsField>,
    /// The right side's latest observation.
    pub right: Option<VmcsField>,
}

/// True when two observations disagree on the bits both know.
pub fn differ(a: &VmcsField, b: &VmcsField) -> bool {
    let mask = a.mask & b.mask;
    a.value & mask != b.value & mask
}

impl FieldHistory {
    /// Replays `events` through a model (default configuration, every field stream) and
    /// collects every observation.
    pub fn collect<'e>(events: impl IntoIterator<Item = &'e Event>) -> Self {
        let mut model = Model::new(ModelConfig::with_field_streams());
        let mut history = Self::default();
        for event in events {
            history.extend(model.step(event).fields);
        }
        history
    }

    /// Appends observations (in event order).
    pub fn extend(&mut self, obs: &[VmcsField]) {
        self.observations.extend_from_slice(obs);
    }

    /// Every observation.
    pub fn observations(&self) -> &[VmcsField] {
        &self.observations
    }

    /// The observations made up to and including event `at`.
    pub fn until(&self, at: u64) -> &[VmcsField] {
        let end = self.observations.partition_point(|o| o.event <= at);
        &self.observations[..end]
    }

    /// The latest observation of every (VMCS, field) up to and including event `at`, sorted by
    /// VMCS then encoding: the per-VMCS field table of a state view.
    pub fn table_at(&self, at: u64) -> Vec<VmcsField> {
        let mut table: std::collections::BTreeMap<(VmcsRef, FieldEncoding), &VmcsField> =
            std::collections::BTreeMap::new();
        for o in self.until(at) {
            table.insert((o.vmcs, o.field), o);
        }
        table.into_values().cloned().collect()
    }

    /// Every observation matching the filters, with the value it replaced.
    pub fn changes(&self, vmcs: Option<VmcsRef>, field: Option<FieldEncoding>) -> Vec<FieldChange> {
        let mut last: std::collections::HashMap<(VmcsRef, FieldEncoding), &VmcsField> =
            std::collections::HashMap::new();
        let mut out = Vec::new();
        for o in &self.observations {
            let prev = last.insert((o.vmcs, o.field), o);
            if vmcs.is_some_and(|v| v != o.vmcs) || field.is_some_and(|f| f != o.field) {
                continue;
            }
            out.push(FieldChange {
                now: o.clone(),
                previous: prev.map(|p| p.value),
                changed: prev.is_some_and(|p| differ(p, o)),
            });
        }
        out
    }

    /// The fields of two VMCSs (as of event `at`) that differ or are known on one side only.
    pub fn diff_vmcs(&self, left: VmcsRef, right: VmcsRef, at: u64) -> Vec<FieldDiff> {
        let table = self.table_at(at);
        let side = |v: VmcsRef| table.iter().filter(move |o| o.vmcs == v).cloned();
        diff_sides(side(left).collect(), side(right).collect())
    }

    /// The fields of one VMCS whose value differs between events `from` and `to`.
    pub fn diff_times(&self, vmcs: VmcsRef, from: u64, to: u64) -> Vec<FieldDiff> {
        let side = |at| self.table_at(at).into_iter().filter(|o| o.vmcs == vmcs).collect();
        diff_sides(side(from), side(to))
    }

    /// The VMCSs seen, sorted.
    pub fn vmcs_list(&self) -> Vec<VmcsRef> {
        let mut v: Vec<VmcsRef> = self.observations.iter().map(|o| o.vmcs).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn diff_sides(left: Vec<VmcsField>, right: Vec<VmcsField>) -> Vec<FieldDiff> {
    let mut fields: Vec<FieldEncoding> = left.iter().chain(&right).map(|o| o.field).collect();
    fields.sort_unstable();
    fields.dedup();
    fields
        .into_iter()
        .filter_map(|field| {
            let l = left.iter().find(|o| o.field == field).cloned();
            let r = right.iter().find(|o| o.field == field).cloned();
            let same = matches!((&l, &r), (Some(a), Some(b)) if !differ(a, b));
            (!same).then_some(FieldDiff { field, left: l, right: r })
        })
        .collect()
}
