//! The simulator against reality, step by step (issue 13, "Fidelity, measured").
//!
//! For each real recording under `samples/real/vmx/` that has a simulated counterpart
//! ([`vmxray_samples::sim::compare::COUNTERPARTS`]), simulates the counterpart with fixed KVM
//! and prints, per step label (`L1 VMRESUME`, `L2 IO_INSTRUCTION`, …), the step signatures of
//! both traces side by side: `both` (the simulator matches reality), `sim` (the simulator does
//! something the real KVM never did for that L1 action), `real` (a real behaviour the
//! simulation does not show).
//!
//! ```sh
//! cargo run -p vmxray-samples --example sim_vs_real              # every pair
//! cargo run -p vmxray-samples --example sim_vs_real -- l1-hlt    # pairs whose file matches
//! cargo run -p vmxray-samples --example sim_vs_real -- --kvm buggy l1-hlt-6.1
//! cargo run -p vmxray-samples --example sim_vs_real -- --real A.dat B.dat  # two recordings
//! ```
//!
//! Run from the workspace root (the recordings are read by relative path).

use std::path::Path;

use vmxray_capture::{ReadOptions, open};
use vmxray_events::Event;
use vmxray_samples::sim::compare::{COUNTERPARTS, Comparison};
use vmxray_samples::sim::{self, KvmFlavour, SimConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut buggy = false;
    if let Some(at) = args.iter().position(|a| a == "--kvm") {
        buggy = args.get(at + 1).is_some_and(|v| v == "buggy");
        args.drain(at..(at + 2).min(args.len()));
    }
    let mut seed = 1;
    if let Some(at) = args.iter().position(|a| a == "--seed") {
        seed = args.get(at + 1).and_then(|v| v.parse().ok()).unwrap_or(1);
        args.drain(at..(at + 2).min(args.len()));
    }
    if args.first().is_some_and(|a| a == "--real") && args.len() == 3 {
        // Two recordings against each other (6.1 against 6.12): what differs between kernels.
        let read = |p: &str| -> Result<Vec<Event>, Box<dyn std::error::Error>> {
            Ok(open(Path::new(p), ReadOptions::default())?.collect::<Result<_, _>>()?)
        };
        let (a, b) = (read(&args[1])?, read(&args[2])?);
        println!("######## {} (\"sim\" column) vs {} (\"real\" column)", args[1], args[2]);
        let vocabulary = a.iter().chain(&b).map(|e| e.name().to_owned()).collect();
        println!("{}", Comparison::with_vocabulary(&a, &b, vocabulary));
        return Ok(());
    }
    let mut mismatched = 0;
    for pair in COUNTERPARTS {
        if !args.is_empty() && !args.iter().any(|a| pair.real.contains(a.as_str())) {
            continue;
        }
        let real: Vec<Event> =
            open(Path::new(pair.real), ReadOptions::default())?.collect::<Result<_, _>>()?;
        let kvm = match pair.scenario.bugs().first() {
            Some(bug) if buggy => KvmFlavour::Buggy(*bug),
            _ => KvmFlavour::Fixed,
        };
        let config = SimConfig::new(pair.scenario)
            .kvm(kvm)
            .kernel(pair.kernel)
            .subjects(pair.subjects)
            .seed(seed)
            .vcpus(1);
        let simulation = sim::simulate(&config)?;
        let comparison = Comparison::new(&simulation.events, &real);
        println!(
            "######## {} ({} events) vs `vmxray simulate {} --kvm {kvm} --kernel {} --subjects {} --vcpus 1 --seed {seed}` ({} events)",
            pair.real,
            real.len(),
            pair.scenario,
            pair.kernel,
            pair.subjects,
            simulation.events.len()
        );
        println!("{comparison}");
        let mismatches = comparison.mismatches();
        if !mismatches.is_empty() {
            mismatched += 1;
            println!("differences (simulated signatures real KVM never showed for that label):");
            for (label, sigs) in mismatches {
                for sig in sigs {
                    println!("  {label}: {sig}");
                }
            }
        }
        println!();
    }
    if mismatched > 0 {
        println!("{mismatched} pair(s) differ");
    }
    Ok(())
}
