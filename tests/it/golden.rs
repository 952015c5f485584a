//! Golden anomaly lists: every committed sample trace replayed by `vmxray replay --format
//! jsonl`, compared with `samples/golden/<folder>-<name>.anomalies.jsonl` (the anomaly lines,
//! without the `input` key, and without `segment` when it is 0: a trace of one capture). Real
//! and lab traces (a real KVM) must have nothing above info.
//!
//! `VMXRAY_BLESS=1 cargo test --test it golden` rewrites the golden files from the current model.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The sample folders with golden lists, the file suffixes replayed there, and whether the
/// traces come from a real KVM.
const SETS: &[(&str, &str, bool)] = &[
    ("sim", ".txt", false),
    ("host", ".txt", false),
    ("real/tracedat", ".dat", true),
    ("real/perf", ".perf.data", true),
    ("lab", ".dat", true),
    ("real/vmx", ".dat", true),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `samples/golden/<last folder>-<file name without suffix>.anomalies.jsonl`.
fn golden_path(folder: &str, file: &str, suffix: &str) -> PathBuf {
    let set = folder.rsplit('/').next().unwrap_or(folder);
    let stem = file.strip_suffix(suffix).unwrap_or(file);
    root().join("samples/golden").join(format!("{set}-{stem}.anomalies.jsonl"))
}

/// The anomaly lines `vmxray replay --format jsonl` prints for `path`, without `input`.
fn anomalies(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_vmxray"))
        .args(["replay", "--format", "jsonl"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "anomaly")
        .map(|mut v| {
            let object = v.as_object_mut().unwrap();
            object.remove("input");
            if object.get("segment").is_some_and(|s| s == 0) {
                object.remove("segment");
            }
            v
        })
        .collect()
}

#[test]
fn every_sample_replays_to_its_golden_anomaly_list() {
    let bless = std::env::var_os("VMXRAY_BLESS").is_some_and(|v| v == "1");
    let mut compared = 0;
    for (folder, suffix, real) in SETS {
        let dir = root().join("samples").join(folder);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        files.sort();
        for file in files {
            let path = dir.join(&file);
            let got = anomalies(&path);
            if *real {
                let above_info: Vec<_> = got.iter().filter(|a| a["severity"] != "info").collect();
                assert!(
                    above_info.is_empty(),
                    "{}: a real KVM trace, yet {above_info:?}",
                    path.display()
                );
            }
            let text: String = got.iter().map(|v| format!("{v}\n")).collect();
            let golden = golden_path(folder, &file, suffix);
            if bless {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &text).unwrap();
            }
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e} (VMXRAY_BLESS=1 writes it)", golden.display()));
            assert_eq!(text, want, "{} vs {}", path.display(), golden.display());
            compared += 1;
        }
    }
    assert!(compared >= 30, "only {compared} samples");
}
