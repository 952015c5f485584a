//! `vmxray stats --plot` and `vmxray scan --plot`: valid SVG files with one series per vCPU /
//! host and one histogram per (exit reason, level) of the statistics.

use std::path::{Path, PathBuf};
use std::process::Command;

fn vmxray(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmxray")).args(args).output().expect("runs vmxray")
}

fn samples(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(rel).to_string_lossy().into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-plot-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(doc.root_element().has_tag_name("svg"));
    text
}

fn lines(text: &str) -> usize {
    let doc = roxmltree::Document::parse(text).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .count()
}

#[test]
fn stats_plot_writes_one_histogram_per_group_and_one_line_per_vcpu() {
    let dir = temp_dir("stats");
    let trace = samples("sim/noise-fixed-6.14.txt");
    let out = vmxray(&["stats", &trace, "--plot", dir.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = report["exits"]["by_reason_level"].as_array().unwrap();
    let vcpus = report["exits"]["by_vcpu"].as_array().unwrap().len();
    for g in groups {
        let reason = g["reason"]["name"].as_str().unwrap();
        // The JSON writes levels in lower case, the plots as the stats tables show them.
        let level = g["level"].as_str().unwrap().to_uppercase();
        let text = svg(&dir.join(format!("latency-{reason}-{level}.svg")));
        assert!(
            text.contains(&format!(
                "{reason} ({level}): exit latency, {} exits",
                g["latency"]["count"]
            )),
            "{reason} {level}"
        );
    }
    let histograms = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("latency-"))
        .count();
    // Every group's histogram, plus the heatmap.
    assert_eq!(histograms, groups.len() + 1);
    assert_eq!(lines(&svg(&dir.join("exits-per-second.svg"))), vcpus);
    svg(&dir.join("latency-heatmap.svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scan_plot_draws_the_fleet_one_line_per_host() {
    let dir = temp_dir("scan");
    let fleet = temp_dir("fleet");
    for (host, file) in [("a", "noise-fixed-6.14.txt"), ("b", "muen-buggy-6.1.txt")] {
        let d = fleet.join(format!("host={host}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(samples(&format!("sim/{file}")), d.join(file)).unwrap();
    }
    let out = vmxray(&["scan", fleet.to_str().unwrap(), "--plot", dir.to_str().unwrap(), "-q"]);
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    let rate = svg(&dir.join("exits-per-second.svg"));
    assert_eq!(lines(&rate), 2);
    assert!(rate.contains("fleet of 2 traces"));
    svg(&dir.join("latency-heatmap.svg"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&fleet);
}
