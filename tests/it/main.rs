//! The integration tests of this crate, in one binary (one link instead of one per file).

mod backends;
mod cli;
mod cli_fields;
mod cli_record;
mod convert_cli;
mod docs_cli;
mod excerpt_conclusions;
mod fields_sim;
mod golden;
mod host_vms;
mod l1_bochs;
mod l1_samples;
mod l1common;
mod model_vs_sim;
mod perf_kvm_stat;
mod plot_cli;
mod scan;
mod simulate_cli;
mod spark;
mod tmux;
mod top_e2e;
mod tui_e2e;
mod vmx_bugs;
mod vmx_lab;
mod vmx_samples;

/// Held by every test that boots the emulated VMX host: one Bochs at a time on two cores (two
/// would slow each other past the lab's stall detection).
pub static BOCHS: std::sync::Mutex<()> = std::sync::Mutex::new(());
