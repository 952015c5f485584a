//! The SVG files parse as XML and hold the expected series.

use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmxray-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Two vCPUs over 3 s: vCPU 0 exits 1000/s (EPT_VIOLATION, L2, ~2 µs), vCPU 1 100/s (HLT, L1,
/// ~50 µs), and one exit without a latency.
fn plots() -> ExitPlots {
    let mut p = ExitPlots::new("test.dat", true);
    for i in 0..3000u64 {
        p.record(i * 1_000_000, "vcpu 0", "EPT_VIOLATION", "L2", Some(1500 + i % 1000));
    }
    for i in 0..300u64 {
        p.record(i * 10_000_000, "vcpu 1", "HLT", "L1", Some(50_000 + i));
    }
    p.record(2_999_000_000, "vcpu 1", "HLT", "L1", None);
    p
}

fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_owned())
        .collect()
}

#[test]
fn svgs_are_valid_and_hold_their_series() {
    let dir = temp_dir("series");
    let p = plots();
    let files = p.write_svgs(&dir).unwrap();
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "latency-EPT_VIOLATION-L2.svg",
            "latency-HLT-L1.svg",
            "exits-per-second.svg",
            "latency-heatmap.svg"
        ]
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(doc.root_element().has_tag_name("svg"), "{file:?}");
    }

    // Histogram: its title, and one bar per display bin (the TUI's log-spaced bins).
    let text = std::fs::read_to_string(dir.join("latency-EPT_VIOLATION-L2.svg")).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let labels = texts(&doc);
    assert!(
        labels.iter().any(|t| t == "EPT_VIOLATION (L2): exit latency, 3000 exits"),
        "{labels:?}"
    );
    let bins = p.histograms[&("EPT_VIOLATION".to_owned(), "L2".to_owned())].bins(MAX_BINS);
    let bars = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#0000FF"))
        .count();
    assert_eq!(bars, bins.iter().filter(|b| b.count > 0).count());
    assert!(bars > 3, "{bars} bars");

    // Rate: one line per vCPU with its legend entry, at the right height (1000/s and 100/s).
    let text = std::fs::read_to_string(dir.join("exits-per-second.svg")).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let lines: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .collect();
    assert_eq!(lines.len(), 2);
    let labels = texts(&doc);
    assert!(
        labels.iter().any(|t| t == "vcpu 0") && labels.iter().any(|t| t == "vcpu 1"),
        "{labels:?}"
    );
    assert!(labels.iter().any(|t| t.contains("exits per second")), "{labels:?}");

    // Heatmap: one cell per non-empty (time bin, latency row); EPT ~2^10..2^11, HLT ~2^15.
    let text = std::fs::read_to_string(dir.join("latency-heatmap.svg")).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let cells: usize = p.time.heat.iter().map(|c| c.iter().filter(|n| **n > 0).count()).sum();
    let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
    // Plus the white background.
    assert_eq!(rects, cells + 1);
    assert!(texts(&doc).iter().any(|t| t == "2^10"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn time_bins_stay_bounded_and_cover_the_trace() {
    let mut p = ExitPlots::new("long", true);
    // 10^6 exits over 1000 s on 3 lanes.
    for i in 0..1_000_000u64 {
        p.record(i * 1_000_000, &format!("vcpu {}", i % 3), "X", "L1", Some(i % 5000));
    }
    assert!(p.time.len() <= MAX_TIME_BINS);
    let counted: u64 = p.time.lanes.values().flatten().sum();
    assert_eq!(counted, 1_000_000);
    let heat: u64 = p.time.heat.iter().flatten().sum();
    assert_eq!(heat, 1_000_000);
    // The bins span the whole trace: width × bins ≥ 1000 s.
    assert!(p.time.width * p.time.len() as u64 >= 999_000_000_000);
}

#[test]
fn nothing_to_plot_writes_nothing() {
    let dir = temp_dir("empty");
    assert!(ExitPlots::new("empty", true).write_svgs(&dir).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
