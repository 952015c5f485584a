//! # vmxray-samples: traces we can trust
//!
//! This crate owns what produces traces with known content: the simulator of KVM's nested-VMX
//! behaviour (scripted scenarios in a fixed and a buggy flavour for each known bug, written from
//! the KVM reference, never from the replay model's code) and the lab of tiny real guests run on
//! `/dev/kvm` while `vmxray record` captures them. The committed sample traces and their
//! provenance live beside it in `samples/`.
//!
//! It depends on `vmxray-capture` only.
//!
//! ```
//! use vmxray_samples::sim::{simulate, Bug, KernelVersion, KvmFlavour, Scenario, SimConfig};
//!
//! let config = SimConfig::new(Scenario::Muen)
//!     .kvm(KvmFlavour::Buggy(Bug::HltStaleCr3))
//!     .kernel(KernelVersion::V6_1)
//!     .seed(7);
//! let sim = simulate(&config).unwrap();
//! let site = sim.truth.bug.as_ref().expect("bug (a) was injected");
//! // The event a correct model must flag: L1 re-enters subject B with subject A's CR3.
//! assert_eq!(sim.events[site.divergence].name(), "kvm_nested_vmenter");
//! let text = vmxray_samples::sim::text::render_trace(&sim.events, &sim.text_options());
//! assert!(text.starts_with("# tracer: nop"));
//! ```

pub mod sim;

#[cfg(target_os = "linux")]
pub mod lab;
