//! The integration tests of this crate, in one binary.

mod count_only;
mod host_context;
mod kvm_stat;
mod real_samples;
