//! `--plot DIR` of `vmxray stats` and `vmxray scan`: feeds the exits a command already computes
//! into [`ExitPlots`] and writes its SVG files (see `vmxray_analyze::plot`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use vmxray_analyze::pass::{Pass, PassConfig, Sink as _, StatsMode};
use vmxray_analyze::plot::ExitPlots;
use vmxray_analyze::scan::{Chunk, SinkError, Table, TableSink, TraceLabels};
use vmxray_capture::{EventReader, ReadError};
use vmxray_events::Event;
use vmxray_replay::ModelConfig;

/// Closed exits buffered before they are handed to the plots.
const TAKE_EVERY: usize = 4096;

/// The statistics pass of `vmxray stats` (of one VM with `vm`), also feeding every closed exit
/// to `plots`.
pub fn accumulate_with_plots(
    reader: &mut dyn EventReader,
    vm: Option<&str>,
    plots: &mut ExitPlots,
    kvm: Option<vmxray_analyze::kvm_stat::KvmStatConfig>,
) -> Result<super::stats::Accumulated, ReadError> {
    let mut extra = super::stats::Extra::new(
        vm,
        kvm,
        vmxray_analyze::context::HostContext::possible_in(reader),
    );
    let mut pass =
        Pass::new(PassConfig { model: ModelConfig::attribution_only(), stats: StatsMode::ExitLog });
    if let Some(vm) = vm {
        pass = pass.stats_of_vm(vm);
    }
    let mut feed = |pass: &mut Pass| {
        let Some(stats) = pass.stats_mut() else { return };
        for exit in stats.take_closed_exits() {
            if exit.ts == Event::TS_UNKNOWN {
                // Text pasted without its timestamps: no place on a time axis.
                continue;
            }
            let reason = exit.reason.to_string();
            plots.record(
                exit.ts,
                &exit.vcpu.to_string(),
                &reason,
                exit.level.label(),
                exit.latency.ok(),
            );
        }
    };
    let mut counted = 0;
    while let Some(event) = reader.next() {
        let event = event?;
        let before = reader.counted_before();
        if before != counted {
            counted = before;
            extra.counted_before(before);
        }
        let _ = pass.step(&event, &mut extra);
        if pass.stats_mut().is_some_and(|s| s.closed_exits_pending() >= TAKE_EVERY) {
            feed(&mut pass);
        }
    }
    if let Some(stats) = pass.stats_mut() {
        stats.close_pending();
    }
    feed(&mut pass);
    Ok(super::stats::Accumulated { pass, extra })
}

/// Writes the plots into `dir` and says so on stderr.
pub fn write(plots: &ExitPlots, dir: &Path) -> anyhow::Result<()> {
    let files =
        plots.write_svgs(dir).with_context(|| format!("Cannot plot into {}", dir.display()))?;
    if files.is_empty() {
        eprintln!("vmxray: no kvm_exit to plot, nothing written in {}", dir.display());
    } else {
        eprintln!("vmxray: {} SVG plots in {}", files.len(), dir.display());
    }
    Ok(())
}

/// A scan sink that passes every chunk on and feeds the `exits` rows to the fleet's plots:
/// time is counted from each trace's first exit seen, lanes are hosts (or traces without a
/// `host=` label).
pub struct PlotTap<'a> {
    inner: &'a dyn TableSink,
    state: Mutex<(ExitPlots, HashMap<String, u64>)>,
}

impl<'a> PlotTap<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a dyn TableSink, plots: ExitPlots) -> Self {
        Self { inner, state: Mutex::new((plots, HashMap::new())) }
    }

    /// The plots accumulated.
    pub fn into_plots(self) -> ExitPlots {
        match self.state.into_inner() {
            Ok((plots, _)) => plots,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

impl TableSink for PlotTap<'_> {
    fn wants(&self, table: Table) -> bool {
        table == Table::Exits || self.inner.wants(table)
    }

    fn begin(&self, labels: &TraceLabels) -> Result<(), SinkError> {
        self.inner.begin(labels)
    }

    fn write(&self, labels: &TraceLabels, part: u32, chunk: Chunk) -> Result<(), SinkError> {
        if let Chunk::Exits(rows) = &chunk {
            let mut guard = match self.state.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let (plots, origins) = &mut *guard;
            let lane = labels.host.clone().unwrap_or_else(|| labels.trace.clone());
            let first = rows.iter().filter_map(|r| r.ts).min().unwrap_or(0);
            let origin = *origins.entry(labels.trace.clone()).or_insert(first);
            for row in rows {
                // Rows without a time (text pasted without its timestamps) have no place.
                let Some(ts) = row.ts else { continue };
                plots.record(
                    ts.saturating_sub(origin),
                    &lane,
                    &row.reason,
                    row.level,
                    row.latency_ns,
                );
            }
            if !self.inner.wants(Table::Exits) {
                return Ok(());
            }
        }
        self.inner.write(labels, part, chunk)
    }
}
