//! SVG plots of exits (feature `plot`): what `vmxray stats --plot DIR` and `vmxray scan --plot
//! DIR` write, with no browser or Python needed to produce or view them.
//!
//! [`ExitPlots`] is a streaming accumulator: it is fed one exit at a time (timestamp, lane,
//! reason, level, latency) and keeps bounded state whatever the trace length:
//!
//! - one [`LogHistogram`] per (reason, level), drawn with the same log-spaced bins the TUI and
//!   the stats report show ([`LogHistogram::bins`]);
//! - exits per time bin per lane (a vCPU, or for a fleet a host), in at most
//!   [`MAX_TIME_BINS`] bins: when the trace outgrows them the bin width doubles and neighbours
//!   merge, so the bins always cover the whole trace;
//! - a time × latency grid with the same time bins and one latency row per power of two
//!   (perf-prof's heatmap).
//!
//! [`ExitPlots::write_svgs`] then writes, into a directory:
//!
//! | file | what |
//! |---|---|
//! | `latency-<REASON>-<LEVEL>.svg` | histogram of one group, log-scaled latency axis, one bar per bin (the [`MAX_HISTOGRAMS`] most frequent groups) |
//! | `exits-per-second.svg` | exits per second over time, one line per lane (the [`MAX_LANES`] busiest; the rest summed as `other`) |
//! | `latency-heatmap.svg` | time × latency, one cell per non-empty (time bin, power of two), colour by log count |
//!
//! Drawn with `plotters`' SVG backend only (no font files: text is left to the SVG viewer).

// Drawing maps counts and times to floating-point chart coordinates and colours: the
// conversions are the point, and their rounding is invisible at pixel scale.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::histogram::{LogHistogram, MAX_BINS};

/// Time bins kept (the bin width doubles rather than exceed this).
pub const MAX_TIME_BINS: usize = 512;
/// Lanes drawn in `exits-per-second.svg`; the others are summed into one `other` line.
pub const MAX_LANES: usize = 16;
/// Histogram files written (the most frequent (reason, level) groups).
pub const MAX_HISTOGRAMS: usize = 24;
/// Latency rows of the heatmap: one per power of two of a `u64`.
const LATENCY_ROWS: usize = 65;

/// A plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The directory could not be created.
    #[error("Cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// plotters failed to draw or write a file.
    #[error("Cannot draw {}: {message}", path.display())]
    Draw {
        /// The file.
        path: PathBuf,
        /// plotters' error, which is generic over the backend and not `'static`.
        message: String,
    },
}

/// Exits binned over time, per lane and per latency row.
#[derive(Clone, Debug, Default)]
struct TimeBins {
    /// Timestamp of bin 0's start.
    origin: Option<u64>,
    /// Bin width in trace time units (a power of two ≥ 1).
    width: u64,
    /// Exits per bin, per lane.
    lanes: BTreeMap<String, Vec<u64>>,
    /// Exits per bin and latency row (`row = 64 - leading_zeros(latency)`).
    heat: Vec<[u64; LATENCY_ROWS]>,
}

impl TimeBins {
    fn bin(&mut self, ts: u64) -> usize {
        let origin = *self.origin.get_or_insert(ts);
        if self.width == 0 {
            self.width = 1;
        }
        let offset = ts.saturating_sub(origin);
        while offset / self.width >= MAX_TIME_BINS as u64 {
            self.coarsen();
        }
        usize::try_from(offset / self.width).unwrap_or(MAX_TIME_BINS - 1)
    }

    /// Doubles the bin width, merging neighbours.
    fn coarsen(&mut self) {
        self.width = self.width.saturating_mul(2);
        for counts in self.lanes.values_mut() {
            *counts = counts.chunks(2).map(|pair| pair.iter().sum()).collect();
        }
        self.heat = self
            .heat
            .chunks(2)
            .map(|pair| {
                let mut row = [0u64; LATENCY_ROWS];
                for cells in pair {
                    for (sum, c) in row.iter_mut().zip(cells) {
                        *sum += c;
                    }
                }
                row
            })
            .collect();
    }

    fn record(&mut self, ts: u64, lane: &str, latency: Option<u64>) {
        let bin = self.bin(ts);
        let counts = match self.lanes.get_mut(lane) {
            Some(c) => c,
            None => self.lanes.entry(lane.to_owned()).or_default(),
        };
        if counts.len() <= bin {
            counts.resize(bin + 1, 0);
        }
        counts[bin] += 1;
        if let Some(latency) = latency {
            if self.heat.len() <= bin {
                self.heat.resize(bin + 1, [0; LATENCY_ROWS]);
            }
            self.heat[bin][latency_row(latency)] += 1;
        }
    }

    fn len(&self) -> usize {
        self.lanes.values().map(Vec::len).chain([self.heat.len()]).max().unwrap_or(0)
    }
}

/// The heatmap row of a latency: 0 for 0, else 1 + floor(log2).
fn latency_row(latency: u64) -> usize {
    (64 - latency.leading_zeros()) as usize
}

/// The streaming accumulator behind the plots (see the module docs).
#[derive(Clone, Debug)]
pub struct ExitPlots {
    /// What the plots are of (a file name, or "fleet of N traces").
    pub title: String,
    /// True when timestamps and latencies are nanoseconds; else raw clock units.
    pub ns: bool,
    histograms: BTreeMap<(String, String), LogHistogram>,
    time: TimeBins,
    exits: u64,
}

impl ExitPlots {
    /// An empty accumulator.
    pub fn new(title: impl Into<String>, ns: bool) -> Self {
        Self {
            title: title.into(),
            ns,
            histograms: BTreeMap::new(),
            time: TimeBins::default(),
            exits: 0,
        }
    }

    /// Counts one exit: its timestamp (for a fleet: time since its trace's start), the lane it
    /// is drawn in (`vcpu 0`, a host), its reason and level names, its latency if it has one.
    pub fn record(&mut self, ts: u64, lane: &str, reason: &str, level: &str, latency: Option<u64>) {
        self.exits += 1;
        self.time.record(ts, lane, latency);
        if let Some(latency) = latency {
            let key = (reason.to_owned(), level.to_owned());
            self.histograms.entry(key).or_default().record(latency);
        }
    }

    /// Exits recorded.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    fn unit(&self) -> &'static str {
        if self.ns { "ns" } else { "clock units" }
    }

    /// Seconds (or raw units) per trace time unit.
    fn seconds_per_unit(&self) -> f64 {
        if self.ns { 1e-9 } else { 1.0 }
    }

    /// Writes the SVG files into `dir` (created if needed); returns their paths. Nothing is
    /// written for an accumulator without exits.
    pub fn write_svgs(&self, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| PlotError::CreateDir { path: dir.to_owned(), source })?;
        let mut written = Vec::new();
        if self.exits == 0 {
            return Ok(written);
        }
        let mut groups: Vec<(&(String, String), &LogHistogram)> = self.histograms.iter().collect();
        groups.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(b.0)));
        for ((reason, level), hist) in groups.into_iter().take(MAX_HISTOGRAMS) {
            let path = dir.join(format!("latency-{}-{}.svg", file_part(reason), file_part(level)));
            self.histogram_svg(&path, reason, level, hist)?;
            written.push(path);
        }
        let path = dir.join("exits-per-second.svg");
        self.rate_svg(&path)?;
        written.push(path);
        if !self.time.heat.is_empty() {
            let path = dir.join("latency-heatmap.svg");
            self.heatmap_svg(&path)?;
            written.push(path);
        }
        Ok(written)
    }

    fn histogram_svg(
        &self,
        path: &Path,
        reason: &str,
        level: &str,
        hist: &LogHistogram,
    ) -> Result<(), PlotError> {
        let bins = hist.bins(MAX_BINS);
        let lo = bins.first().map_or(0, |b| b.lo).max(1);
        let hi = bins.last().map_or(1, |b| b.hi).saturating_add(1).max(lo + 1);
        let top = bins.iter().map(|b| b.count).max().unwrap_or(1);
        let title = format!("{reason} ({level}): exit latency, {} exits", hist.count());
        draw(path, (800, 480), |root| {
            let mut chart = ChartBuilder::on(&root)
                .caption(&title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((lo..hi).log_scale(), 0u64..top + top / 10 + 1)?;
            chart
                .configure_mesh()
                .x_desc(format!("latency ({}, log scale)", self.unit()))
                .y_desc("exits")
                .draw()?;
            chart.draw_series(bins.iter().map(|b| {
                let x0 = b.lo.max(lo);
                let x1 = b.hi.saturating_add(1).max(x0 + 1);
                Rectangle::new([(x0, 0), (x1, b.count)], BLUE.mix(0.6).filled())
            }))?;
            Ok(())
        })
    }

    fn rate_svg(&self, path: &Path) -> Result<(), PlotError> {
        let bins = self.time.len().max(1);
        let width_s = self.time.width.max(1) as f64 * self.seconds_per_unit();
        // The busiest lanes, the rest summed.
        let mut lanes: Vec<(&String, &Vec<u64>)> = self.time.lanes.iter().collect();
        lanes.sort_by(|a, b| {
            let (sa, sb) = (a.1.iter().sum::<u64>(), b.1.iter().sum::<u64>());
            sb.cmp(&sa).then(a.0.cmp(b.0))
        });
        let mut series: Vec<(String, Vec<u64>)> =
            lanes.iter().take(MAX_LANES).map(|(n, c)| ((*n).clone(), (*c).clone())).collect();
        if lanes.len() > MAX_LANES {
            let mut other = vec![0u64; bins];
            for (_, counts) in lanes.iter().skip(MAX_LANES) {
                for (o, c) in other.iter_mut().zip(counts.iter()) {
                    *o += c;
                }
            }
            series.push((format!("other ({} lanes)", lanes.len() - MAX_LANES), other));
        }
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let rate = |count: u64| count as f64 / width_s;
        let max_rate =
            series.iter().flat_map(|(_, c)| c.iter()).map(|c| rate(*c)).fold(1.0f64, f64::max);
        let span = bins as f64 * width_s;
        let x_unit = if self.ns { "s" } else { "clock units" };
        let y_desc = if self.ns { "exits per second" } else { "exits per clock unit" };
        let title = format!(
            "{}: exits per {} over time",
            self.title,
            if self.ns { "second" } else { "unit" }
        );
        draw(path, (960, 540), |root| {
            let mut chart = ChartBuilder::on(&root)
                .caption(&title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..span, 0f64..max_rate * 1.1)?;
            chart.configure_mesh().x_desc(format!("time ({x_unit})")).y_desc(y_desc).draw()?;
            for (i, (name, counts)) in series.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let points = (0..bins).map(|b| {
                    let count = counts.get(b).copied().unwrap_or(0);
                    ((b as f64 + 0.5) * width_s, rate(count))
                });
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            Ok(())
        })
    }

    fn heatmap_svg(&self, path: &Path) -> Result<(), PlotError> {
        let heat = &self.time.heat;
        let rows_used: Vec<usize> =
            (0..LATENCY_ROWS).filter(|r| heat.iter().any(|cells| cells[*r] > 0)).collect();
        let (row_lo, row_hi) = (rows_used[0], rows_used[rows_used.len() - 1] + 1);
        let max = heat.iter().flat_map(|c| c.iter()).copied().max().unwrap_or(1).max(1);
        let width_s = self.time.width.max(1) as f64 * self.seconds_per_unit();
        let span = heat.len() as f64 * width_s;
        let x_unit = if self.ns { "s" } else { "clock units" };
        let title = format!("{}: exit latency over time ({} exits)", self.title, self.exits);
        let unit = self.unit();
        draw(path, (960, 540), |root| {
            let mut chart = ChartBuilder::on(&root)
                .caption(&title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(80)
                .build_cartesian_2d(0f64..span, row_lo..row_hi)?;
            chart
                .configure_mesh()
                .x_desc(format!("time ({x_unit})"))
                .y_desc(format!("latency ({unit}, powers of two)"))
                .y_label_formatter(&|row| match row {
                    0 => "0".to_owned(),
                    r => format!("2^{}", r - 1),
                })
                .draw()?;
            let cells = heat.iter().enumerate().flat_map(|(bin, cells)| {
                cells
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(move |(row, n)| (bin, row, *n))
            });
            chart.draw_series(cells.map(|(bin, row, n)| {
                // Colour by log count: one exit is pale, the busiest cell dark.
                let shade = ((n as f64).ln_1p() / (max as f64).ln_1p()).clamp(0.0, 1.0);
                let colour = RGBColor(
                    (255.0 * (1.0 - shade)) as u8,
                    (255.0 * (1.0 - 0.6 * shade)) as u8,
                    (255.0 * (1.0 - 0.2 * shade)) as u8,
                );
                let x0 = bin as f64 * width_s;
                Rectangle::new([(x0, row), (x0 + width_s, row + 1)], colour.filled())
            }))?;
            Ok(())
        })
    }
}

/// A name as a file-name part: letters, digits, `-` and `_` kept, the rest `_`.
fn file_part(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws one SVG file with `f` on a white canvas.
fn draw(
    path: &Path,
    size: (u32, u32),
    f: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    f(root.clone()).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests;
