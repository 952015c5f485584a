//! The integration tests of this crate, in one binary (one link instead of one per file).

mod common;
mod convert;
mod count_only;
mod devices;
mod differential;
mod excerpts;
mod fields_import;
mod printfmt;
mod raw_pages;
mod robustness;
mod salvage;
mod text_parallel;
mod text_proptest;
mod text_real;
mod text_synthetic;
mod tracedat_parallel;
