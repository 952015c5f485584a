//! The built `vmxray convert`: the output dumps like the input, errors exit 2 naming the file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn vmxray(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmxray")).args(args).output().expect("runs vmxray")
}

fn sample(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(rel).display().to_string()
}

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("convert-cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dump(path: &str, format: &str) -> Vec<u8> {
    let out = vmxray(&["dump", "--format", format, path]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn converted_files_dump_like_their_input() {
    let dir = scratch("roundtrip");
    for input in [
        "real/tracedat/lm-v6.dat",
        "real/tracedat/comm-spaces-v7-zstd.dat",
        "real/perf/comm-spaces.perf.data",
        "real/raw/sample_raw_time_extend_cpu0.bin",
        "lab/multi-vcpu-50.dat",
    ] {
        let input = sample(input);
        let out = dir.join("out.dat");
        let out = out.to_str().unwrap();
        let run = vmxray(&["convert", &input, "-o", out]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(0), "{input}: {err}");
        assert!(err.contains(" events, ") && err.contains(out), "{err}");
        assert_eq!(dump(out, "text"), dump(&input, "text"), "{input}");
        assert_eq!(dump(out, "jsonl"), dump(&input, "jsonl"), "{input}");
        let mode = std::fs::metadata(out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn stdin_input_converts() {
    let dir = scratch("stdin");
    let out = dir.join("out.dat");
    let input = std::fs::File::open(sample("real/perf/lm.perf.data")).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_vmxray"))
        .args(["convert", "-", "-o", out.to_str().unwrap()])
        .stdin(Stdio::from(input))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(
        dump(out.to_str().unwrap(), "jsonl"),
        dump(&sample("real/perf/lm.perf.data"), "jsonl")
    );

    // Text on stdin needs --formats.
    let text = || std::fs::File::open(sample("sim/init-fixed-6.1.txt")).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_vmxray"))
        .args(["convert", "-", "-o", out.to_str().unwrap()])
        .stdin(Stdio::from(text()))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("<stdin>: text on stdin"));
    let formats = sample("real/raw/tracefs");
    let run = Command::new(env!("CARGO_BIN_EXE_vmxray"))
        .args(["convert", "-", "--formats", &formats, "-o", out.to_str().unwrap()])
        .stdin(Stdio::from(text()))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let want = dump(&sample("sim/init-fixed-6.1.txt"), "text");
    let lines = |b: &[u8]| b.iter().filter(|c| **c == b'\n').count();
    assert_eq!(lines(&dump(out.to_str().unwrap(), "text")), lines(&want));
}

#[test]
fn text_and_truncated_inputs_exit_2_naming_the_file() {
    let dir = scratch("errors");
    let out = dir.join("out.dat");
    let text = sample("real/text/tc_report.txt");
    let run = vmxray(&["convert", &text, "-o", out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(&text) && err.contains("no event format files"), "{err}");
    assert!(err.contains("convert the trace.dat, perf.data"), "{err}");
    assert!(!out.exists());

    let cut = dir.join("cut.dat");
    let bytes = std::fs::read(sample("real/tracedat/lm-v7-zstd.dat")).unwrap();
    std::fs::write(&cut, &bytes[..300_000]).unwrap();
    let run = vmxray(&["convert", cut.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(cut.to_str().unwrap()), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "only the cut input is left");
}

/// `vmxray simulate` output converted with the 6.18 format files: every event comes back
/// (time, CPU, pid, comm, name), and what the text could not say is reported — fields its
/// kernel lacked and kvmmmu role bits the text rendering hides, written as 0. (Replaying the
/// output is therefore not replaying the text: rules see those zeros as values.)
#[test]
fn simulated_text_converts_with_formats() {
    let dir = scratch("sim");
    let formats = sample("real/raw/tracefs");
    for sim in ["sim/invept-buggy-6.1.txt", "sim/smm-fixed-6.14.txt", "sim/init-fixed-6.1.txt"] {
        let input = sample(sim);
        let out = dir.join("sim.dat");
        let out = out.to_str().unwrap();
        let run = vmxray(&["convert", &input, "--formats", &formats, "-o", out]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(0), "{sim}: {err}");
        assert!(err.contains("role bits outside") && err.contains("written as 0"), "{err}");
        let events = |path: &str| -> Vec<(u64, u64, i64, String, String)> {
            let mut v: Vec<_> = String::from_utf8(dump(path, "jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let j: serde_json::Value = serde_json::from_str(l).unwrap();
                    (
                        j["ts"].as_u64().unwrap(),
                        j["cpu"].as_u64().unwrap(),
                        j["pid"].as_i64().unwrap(),
                        j["comm"].to_string(),
                        j["event"].to_string(),
                    )
                })
                .collect();
            // trace.dat readers order events of equal time by CPU.
            v.sort_by_key(|e| (e.0, e.1));
            v
        };
        assert_eq!(events(out), events(&input), "{sim}");
    }
}
