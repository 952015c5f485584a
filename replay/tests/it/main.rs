//! The integration tests of this crate, in one binary (one link instead of one per file).

mod common;
mod fields;
mod loops;
mod props;
mod rules;
mod triage;
