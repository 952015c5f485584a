//! # vmxray-replay: a nested-VMX/MMU model of KVM
//!
//! This crate owns the model: a pure, deterministic state machine per vCPU (L1/L2 level, current
//! vmcs12, what each vmcs12 holds, L1 CR3, MMU roots and their roles, SMM) that steps through a
//! [`vmxray_capture::Event`] stream, predicts what KVM must do next, and returns every divergence
//! as an [`Anomaly`] value citing the KVM commit whose behaviour the rule checks ([`rules`]).
//! It also owns [`triage`]: the post-mortem of a shutdown / triple fault / failed entry, as data.
//!
//! It does **not** read files, print, or keep statistics: it has no I/O, no clock and no globals.
//!
//! ```
//! use vmxray_capture::{Event, EventKind, Entry};
//! use vmxray_replay::{Model, RuleId};
//!
//! let entry = |ts| Event {
//!     ts, cpu: 0, pid: 100, comm: None,
//!     kind: EventKind::KvmEntry(Entry {
//!         vcpu_id: 0, rip: Some(0x1000), immediate_exit: None, intr_info: None, error_code: None,
//!     }),
//! };
//! let mut model = Model::default();
//! assert!(model.step(&entry(1)).anomalies.is_empty());
//! // A second kvm_entry with no kvm_exit between them.
//! let step = model.step(&entry(2));
//! assert_eq!(step.anomalies[0].rule, RuleId::EntryWithoutExit);
//! ```
//!
//! **State at any event.** [`Model`] is `Clone` and bounded, so a browser keeps
//! [`Model::snapshot`]s every few thousand events and steps a copy forward to the event the user
//! selects; [`Model::state`] exposes each vCPU's [`VcpuState`].

pub mod anomaly;
pub mod model;
pub mod rules;
pub mod state;
pub mod transition;
pub mod triage;

pub use anomaly::{
    Actor, Anomaly, EventIndex, RuleId, RuleSet, Severity, UnknownRule, UnknownSeverity,
};
pub use model::{
    Model, ModelConfig, ResyncReason, RuleStatus, RuleSummary, Step, TraceSummary, Transition,
    Vmcs12Field,
};
pub use state::{Features, Level, Mode, VcpuState, Vmcs12Record};
pub use triage::{Crash, CrashKind, Triage, TriageConfig, TriageReport, triage};
