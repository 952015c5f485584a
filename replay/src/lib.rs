//! # vmxray-replay: a nested-VMX/MMU model of KVM
//!
//! This crate owns the model: a pure, deterministic state machine per vCPU (L1/L2 level, current
//! vmcs12, what each vmcs12 holds, L1 CR3, MMU roots and their roles, SMM) that steps through a
//! [`vmxray_events::Event`] stream, predicts what KVM must do next, and returns every divergence
//! as an [`Anomaly`] value citing the KVM commit whose behaviour the rule checks ([`rules`]).
//! It also owns [`mod@triage`]: the post-mortem of a shutdown / triple fault / failed entry, as data.
//!
//! It does **not** read files, print, or keep statistics: it has no I/O, no clock and no globals.
//!
//! ```
//! use vmxray_events::codes::{ExitCode, ExitReason};
//! use vmxray_events::{Entry, Event, EventKind, ExitFields, ExitInfo};
//! use vmxray_replay::{Model, RuleId};
//!
//! let event = |ts, kind| Event { ts, cpu: 0, pid: 100, tgid: None, comm: None, kind };
//! let entry = |ts| event(ts, EventKind::KvmEntry(Entry {
//!     vcpu_id: 0, rip: Some(0x1000), immediate_exit: None, intr_info: None, error_code: None,
//! }));
//! let cpuid_exit = event(2, EventKind::KvmExit(ExitInfo::from(ExitFields {
//!     reason: ExitCode::Vmx(ExitReason(10)), isa: None, guest_rip: Some(0x1000),
//!     info1: Some(0), info2: Some(0), intr_info: None, error_code: None,
//!     vcpu_id: Some(0), requests: None,
//! })));
//! let mut model = Model::default();
//! for e in [entry(1), cpuid_exit, entry(3)] {
//!     assert!(model.step(&e).anomalies.is_empty());
//! }
//! // A kvm_entry with no kvm_exit since the previous one.
//! let step = model.step(&entry(4));
//! assert_eq!(step.anomalies[0].rule, RuleId::EntryWithoutExit);
//! assert_eq!(step.anomalies[0].evidence[0].0, 2);
//! ```
//!
//! **VMCS fields.** Every step also returns the VMCS field values the event revealed
//! ([`Step::fields`], derivation table in [`mod@fields`]); each vCPU keeps the last few values
//! of every field ([`VcpuState::fields`]) for the rules to cite, and
//! [`fields::FieldHistory`] collects a whole trace's for views.
//!
//! **State at any event.** [`Model`] is `Clone` and bounded, so a browser keeps
//! [`Model::snapshot`]s every few thousand events and steps a copy forward to the event the user
//! selects ([`checkpoints::Checkpoints`] does exactly that); [`Model::state`] exposes each
//! vCPU's [`VcpuState`].

#![forbid(unsafe_code)]

pub mod anomaly;
pub mod checkpoints;
pub mod explain;
pub mod fields;
pub mod model;
pub mod rules;
pub mod state;
pub mod story;
pub mod transition;
pub mod triage;

pub use anomaly::{
    Actor, Anomaly, EventIndex, RuleId, RuleSet, Severity, UnknownRule, UnknownSeverity,
};
pub use model::{
    Model, ModelConfig, ResyncReason, RuleStatus, RuleSummary, Step, TraceSummary, Transition,
    Vmcs12Field,
};
pub use rules::livelock::{LoopKind, LoopSummary};
pub use state::{Features, Level, Mode, VcpuState, Vmcs12Record};
pub use triage::{Crash, CrashKind, Triage, TriageConfig, TriageReport, triage};
