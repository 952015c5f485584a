//! The integration tests of this crate, in one binary (one link instead of one per file).

mod cli;
mod cli_fields;
mod cli_record;
mod convert_cli;
mod fields_sim;
mod golden;
mod model_vs_sim;
mod scan;
mod simulate_cli;
mod tui_e2e;
