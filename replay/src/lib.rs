//! # vmxray-replay: a nested-VMX/MMU model of KVM
//!
//! This crate owns the model: a pure, deterministic state machine per vCPU (L1/L2 level, current
//! vmcs12, what each vmcs12 holds, L1 CR3, MMU roots and their roles, SMM) that steps through a
//! [`vmxray_capture::Event`] stream, predicts what KVM must do next, and returns every divergence
//! as an `Anomaly` value citing the KVM commit whose behaviour the rule checks.
//!
//! It does **not** read files, print, or keep statistics: it has no I/O, no clock and no globals.

#![forbid(unsafe_code)]
