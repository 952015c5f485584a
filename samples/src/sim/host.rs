//! A host running several VMs at once: the trace a recorder writes on a real host, where every
//! VM has its own vCPU 0.
//!
//! Each VM is one [`super::simulate`] run (its scenario, flavour and seed), given its own VMM
//! process (tgid) and vCPU threads; the runs start together and their events are interleaved by
//! time, as one host trace. Rendered as ftrace text with or without the `record-tgid` column
//! ([`super::text::TextOptions::tgid`]): with it the VMs are the processes; without, the replay
//! model must tell them apart from their vCPU threads alone.

use std::collections::BTreeMap;

use vmxray_events::Event;

use super::{SimConfig, SimError, Simulation, simulate};

/// The VMM processes get tgids from here, one block of [`PIDS_PER_VM`] each.
pub const FIRST_TGID: i32 = 20_000;
/// Room for a VM's threads.
pub const PIDS_PER_VM: i32 = 1_000;

/// One VM of a host.
#[derive(Clone, Debug)]
pub struct HostVm {
    /// Its VMM process.
    pub tgid: i32,
    /// The run.
    pub simulation: Simulation,
    /// Where each of the run's events landed in the host trace.
    pub indices: Vec<usize>,
}

/// The host trace.
#[derive(Clone, Debug)]
pub struct HostSimulation {
    /// Every VM's events, interleaved by time.
    pub events: Vec<Event>,
    /// The VMs, in the order given.
    pub vms: Vec<HostVm>,
}

impl HostSimulation {
    /// The host index of event `local` of VM `vm`.
    pub fn index_of(&self, vm: usize, local: usize) -> Option<usize> {
        self.vms.get(vm)?.indices.get(local).copied()
    }

    /// Text options: the first VM's kernel, every CPU, the tgid column when asked.
    pub fn text_options(&self, tgid: bool) -> super::text::TextOptions {
        let mut opts = self.vms.first().map_or(
            super::text::TextOptions {
                kernel: super::KernelVersion::V6_1,
                nr_cpus: 2,
                tgid: false,
            },
            |vm| vm.simulation.text_options(),
        );
        opts.nr_cpus = self
            .vms
            .iter()
            .map(|vm| vm.simulation.text_options().nr_cpus)
            .max()
            .unwrap_or(opts.nr_cpus);
        opts.tgid = tgid;
        opts
    }
}

/// Runs every VM and interleaves them. The runs keep their own timestamps' spacing; each is
/// moved to start with the first (VM `k` one `k` µs later, so that no two VMs' events tie).
pub fn simulate_host(vms: &[SimConfig]) -> Result<HostSimulation, SimError> {
    let mut runs = Vec::with_capacity(vms.len());
    for config in vms {
        runs.push(simulate(config)?);
    }
    let base = runs.iter().filter_map(|r| r.events.first()).map(|e| e.ts).min().unwrap_or(0);
    let mut tagged: Vec<(u64, usize, usize, Event)> = Vec::new();
    for (k, run) in runs.iter().enumerate() {
        let tgid = FIRST_TGID + PIDS_PER_VM * i32::try_from(k).unwrap_or(0);
        let start = run.events.first().map_or(0, |e| e.ts);
        let mut pids: BTreeMap<i32, i32> = BTreeMap::new();
        for (local, e) in run.events.iter().enumerate() {
            let next = tgid + 1 + i32::try_from(pids.len()).unwrap_or(0);
            let pid = *pids.entry(e.pid).or_insert(next);
            let ts = e.ts - start + base + 1_000 * k as u64;
            let event = Event { ts, pid, tgid: Some(tgid), ..e.clone() };
            tagged.push((ts, k, local, event));
        }
    }
    // Stable by (time, VM): each VM's own order is kept.
    tagged.sort_by_key(|(ts, k, local, _)| (*ts, *k, *local));
    let mut host = HostSimulation {
        events: Vec::with_capacity(tagged.len()),
        vms: runs
            .into_iter()
            .enumerate()
            .map(|(k, simulation)| HostVm {
                tgid: FIRST_TGID + PIDS_PER_VM * i32::try_from(k).unwrap_or(0),
                indices: vec![0; simulation.events.len()],
                simulation,
            })
            .collect(),
    };
    for (at, (_, k, local, event)) in tagged.into_iter().enumerate() {
        host.vms[k].indices[local] = at;
        host.events.push(event);
    }
    Ok(host)
}

/// What the simulator knows of a host trace: per VM, its process, its run's ground truth, and
/// where its bug sites landed in the host trace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostTruth {
    /// One entry per VM, in the order given.
    pub vms: Vec<HostVmTruth>,
}

/// One VM of [`HostTruth`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostVmTruth {
    /// Its VMM process.
    pub tgid: i32,
    /// The run's own ground truth (indices into the run's own events).
    pub truth: super::GroundTruth,
    /// The divergence event of each bug occurrence, as a host-trace index.
    pub divergences: Vec<usize>,
}

impl HostSimulation {
    /// The ground truth, with bug sites translated to host-trace indices.
    pub fn truth(&self) -> HostTruth {
        HostTruth {
            vms: self
                .vms
                .iter()
                .map(|vm| HostVmTruth {
                    tgid: vm.tgid,
                    truth: vm.simulation.truth.clone(),
                    divergences: vm
                        .simulation
                        .truth
                        .occurrences
                        .iter()
                        .filter_map(|site| vm.indices.get(site.divergence).copied())
                        .collect(),
                })
                .collect(),
        }
    }
}
