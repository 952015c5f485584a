//! The Spark job (`analyze/spark/vmxray_spark.py`) in Spark's local mode (`local[2]`) on a
//! generated fleet of 200 traces: its tables equal a plain `vmxray scan` of the same fleet,
//! row for row, and its example queries give DuckDB's answers over the plain scan. The work is
//! done by `analyze/spark/test_spark_fleet.py`; this test checks the tools and runs it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use vmxray_events::test_util::skip;

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

#[test]
fn spark_job_equals_a_plain_scan() {
    if !works("java", &["-version"]) {
        return skip("no java (scripts/setup.sh installs default-jre-headless)");
    }
    if !works("python3", &["-c", "import pyspark, duckdb"]) {
        return skip("python3 lacks pyspark or duckdb (scripts/setup.sh installs them)");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("vmxray-spark-{}", std::process::id()));
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(root.join("analyze/spark/test_spark_fleet.py"))
        .arg(env!("CARGO_BIN_EXE_vmxray"))
        .arg(root.join("samples"))
        .arg(&work)
        .arg("200")
        .output()
        .expect("runs python3");
    let _ = std::fs::remove_dir_all(&work);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.starts_with("table ") || l.starts_with("query ") || l.contains(" s, spark job")
        })
        .collect();
    eprintln!("{}\nwall time {:.1} s", report.join("\n"), started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed, 0 failed"));
    assert_eq!(report.iter().filter(|l| l.starts_with("table ")).count(), 5, "{stderr}");
}
