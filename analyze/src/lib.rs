//! # vmxray-analyze: tables over events and anomalies
//!
//! This crate owns everything numeric: exit statistics (counts, exit→entry latency percentiles
//! per reason, vCPU and level), batch scans of many traces in parallel, and their tables written
//! as Parquet/CSV/JSON for any engine to aggregate.
//!
//! It does **not** parse trace bytes (that is `vmxray-capture`) nor model KVM (`vmxray-replay`).

#![forbid(unsafe_code)]
