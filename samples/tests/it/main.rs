//! The integration tests of this crate, in one binary (one link instead of one per file).

mod host_samples;
mod lab_record;
mod provenance;
mod sim_behaviour;
mod sim_devices;
mod sim_props;
mod sim_samples;
mod sim_text;
mod sim_vs_real;
