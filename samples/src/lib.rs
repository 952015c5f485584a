//! # vmxray-samples: traces we can trust
//!
//! This crate owns what produces traces with known content: the simulator of KVM's nested-VMX
//! behaviour (scripted scenarios in a fixed and a buggy flavour for each known bug, written from
//! the KVM reference, never from the replay model's code) and the lab of tiny real guests run on
//! `/dev/kvm` while `vmxray record` captures them. The committed sample traces and their
//! provenance live beside it in `samples/`.
//!
//! It depends on `vmxray-capture` only.

#[cfg(target_os = "linux")]
pub mod lab;
