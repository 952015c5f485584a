//! `vmxray stats --event vmexit|ioport|mmio` against `perf kvm stat report` itself, on real VMX
//! perf.data recordings (samples/real/vmx/*.perf.data: lab guests under kvm_intel in Bochs,
//! recorded once by `vmxray record --backend perf` and once by `perf kvm stat record`).
//!
//! Beside each sample, `FILE.perf-kvm-stat-TABLE.txt` holds perf 6.1's reports (made by
//! scripts/perf-kvm-stat-reports.sh): sections of `$ COMMAND` and what it printed. Every
//! section's table is compared row by row with vmxray's for the same options: keys and sample
//! counts exactly, percentages and times as perf prints them (2 decimals, µs). When `perf` is
//! installed, the same commands are also run live and compared the same way.
//!
//! One known divergence, perf's: with `--vcpu`, perf 6.1 prints every row's Min Time as 0.00us
//! (builtin-kvm.c's `kvm_event_expand` zero-fills the per-vCPU statistics instead of
//! `init_stats`, so their `min` starts at 0 and never rises). vmxray prints the true minimum;
//! there the test checks it against perf's all-vCPU row of the same key when that row has the
//! same sample count (all its samples are from that vCPU).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmxray_samples::lab::vmx;

const BIN: &str = env!("CARGO_BIN_EXE_vmxray");

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples/real/vmx")
}

/// One row as perf prints it: numbers other than counts kept as their printed text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    key: String,
    samples: u64,
    samples_percent: String,
    time_percent: String,
    min_us: String,
    max_us: String,
    avg_us: String,
    rel_stddev: String,
}

/// One report: its "Analyze events for ..." line, rows and totals.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Table {
    scope: String,
    rows: Vec<Row>,
    total_samples: u64,
    total_time_us: String,
}

/// `--event=E --key=K --vcpu=N --pid=P` of a saved perf command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Options {
    file: String,
    event: String,
    key: Option<String>,
    vcpu: Option<String>,
    pid: Option<String>,
}

impl Options {
    fn parse(command: &str) -> Self {
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(words[..2], ["perf", "kvm"], "{command}");
        let mut o = Self::default();
        let mut i = 2;
        while i < words.len() {
            let w = words[i];
            if w == "-i" {
                o.file = words[i + 1].to_owned();
                i += 1;
            } else if let Some((name, value)) = w.split_once('=') {
                let slot = match name {
                    "--event" => {
                        o.event = value.to_owned();
                        i += 1;
                        continue;
                    }
                    "--key" => &mut o.key,
                    "--vcpu" => &mut o.vcpu,
                    "--pid" => &mut o.pid,
                    _ => panic!("unexpected option {w} in {command}"),
                };
                *slot = Some(value.to_owned());
            } else {
                assert!(["stat", "report"].contains(&w), "unexpected {w} in {command}");
            }
            i += 1;
        }
        assert!(!o.file.is_empty() && !o.event.is_empty(), "{command}");
        o
    }

    /// The same table from vmxray.
    fn vmxray_args(&self) -> Vec<String> {
        let mut args =
            vec!["stats".to_owned(), self.file.clone(), "--event".into(), self.event.clone()];
        for (flag, value) in [("--key", &self.key), ("--vcpu", &self.vcpu), ("--pid", &self.pid)] {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v.clone()]);
            }
        }
        args
    }

    /// The same options without `--vcpu` and `--pid`.
    fn all_vcpus(&self) -> Self {
        Self { vcpu: None, pid: None, ..self.clone() }
    }
}

/// Parses one report as perf prints it (and `vmxray stats --event` does).
fn parse_table(text: &str) -> Table {
    let mut scope = None;
    let mut rows = Vec::new();
    let mut total = None;
    for line in text.lines() {
        if line.starts_with("Analyze events for ") {
            scope = Some(line.to_owned());
        } else if let Some(rest) = line.strip_prefix("Total Samples:") {
            let (samples, time) = rest
                .split_once(", Total events handled time:")
                .unwrap_or_else(|| panic!("bad total line {line:?}"));
            let time = time.strip_suffix("us.").unwrap_or_else(|| panic!("{line:?}"));
            total = Some((samples.parse().unwrap(), time.to_owned()));
        } else if line.contains("us ( +-") {
            let (head, rel) = line.split_once("( +-").unwrap();
            let w: Vec<&str> = head.split_whitespace().collect();
            assert_eq!(w.len(), 7, "bad row {line:?}");
            let strip = |s: &str, suffix: &str| {
                s.strip_suffix(suffix).unwrap_or_else(|| panic!("{s:?} in {line:?}")).to_owned()
            };
            rows.push(Row {
                key: w[0].to_owned(),
                samples: w[1].parse().unwrap_or_else(|e| panic!("{e}: {line:?}")),
                samples_percent: strip(w[2], "%"),
                time_percent: strip(w[3], "%"),
                min_us: strip(w[4], "us"),
                max_us: strip(w[5], "us"),
                avg_us: strip(w[6], "us"),
                rel_stddev: strip(rel.trim(), "% )").trim().to_owned(),
            });
        }
    }
    let (total_samples, total_time_us) = total.unwrap_or_else(|| panic!("no total in {text:?}"));
    Table { scope: scope.expect("an Analyze line"), rows, total_samples, total_time_us }
}

/// Every saved section: (command line, perf's table).
fn saved_sections() -> Vec<(String, Table)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".perf-kvm-stat-"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut sections = text.split("\n$ ").skip(1);
        for section in sections.by_ref() {
            let (command, output) = section.split_once('\n').unwrap_or((section, ""));
            out.push((command.to_owned(), parse_table(output)));
        }
    }
    out
}

fn vmxray_table(options: &Options) -> Table {
    let out = Command::new(BIN).args(options.vmxray_args()).current_dir(dir()).output().unwrap();
    assert!(out.status.success(), "{options:?}: {}", String::from_utf8_lossy(&out.stderr));
    parse_table(&String::from_utf8(out.stdout).unwrap())
}

/// What one comparison checked.
#[derive(Default)]
struct Checked {
    rows: usize,
    /// Per-vCPU minima perf printed as 0.00 and vmxray's were checked elsewhere.
    vcpu_minima: usize,
    by_event: BTreeMap<String, usize>,
}

/// Compares perf's tables with vmxray's, `perf_tables` keyed by their options.
fn compare(perf_tables: &[(String, Table)]) -> Checked {
    let by_options: BTreeMap<Options, &Table> =
        perf_tables.iter().map(|(c, t)| (Options::parse(c), t)).collect();
    let mut checked = Checked::default();
    for (command, perf) in perf_tables {
        let options = Options::parse(command);
        let ours = vmxray_table(&options);
        assert_eq!(ours.scope, perf.scope, "{command}");
        assert_eq!(
            (ours.total_samples, &ours.total_time_us),
            (perf.total_samples, &perf.total_time_us),
            "{command}: totals"
        );
        let keys =
            |t: &Table| t.rows.iter().map(|r| (r.key.clone(), r.samples)).collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(perf), "{command}: rows (key, samples) in order");
        for (mine, theirs) in ours.rows.iter().zip(&perf.rows) {
            if options.vcpu.is_some() && theirs.min_us == "0.00" && mine.min_us != "0.00" {
                // perf's per-vCPU minimum is always 0 (see the module docs): vmxray's must be
                // the all-vCPU minimum when every sample of that key is from this vCPU.
                let all = by_options.get(&options.all_vcpus()).unwrap_or_else(|| {
                    panic!("{command}: no all-vCPU report to check the minimum against")
                });
                if let Some(row) =
                    all.rows.iter().find(|r| r.key == mine.key && r.samples == mine.samples)
                {
                    assert_eq!(mine.min_us, row.min_us, "{command}: {} min", mine.key);
                    checked.vcpu_minima += 1;
                }
                let same = Row { min_us: theirs.min_us.clone(), ..mine.clone() };
                assert_eq!(&same, theirs, "{command}");
            } else {
                assert_eq!(mine, theirs, "{command}");
            }
            checked.rows += 1;
            *checked.by_event.entry(options.event.clone()).or_default() += 1;
        }
    }
    checked
}

#[test]
fn stats_tables_equal_perfs_saved_reports() {
    let sections = saved_sections();
    let files: std::collections::BTreeSet<String> =
        sections.iter().map(|(c, _)| Options::parse(c).file).collect();
    // 3 guests (io-loop=200, mmio, multi-vcpu=50) × 2 recorders.
    assert_eq!(files.len(), 6, "{files:?}");
    let checked = compare(&sections);
    eprintln!(
        "{} sections, {} rows equal to perf's ({:?}), {} per-vCPU minima checked",
        sections.len(),
        checked.rows,
        checked.by_event,
        checked.vcpu_minima
    );
    assert!(sections.len() >= 60, "{} sections", sections.len());
    for (event, at_least) in [("vmexit", 50), ("ioport", 30), ("mmio", 16)] {
        let rows = checked.by_event.get(event).copied().unwrap_or(0);
        assert!(rows >= at_least, "{event}: {rows} rows compared");
    }
    assert!(checked.vcpu_minima >= 20, "{} per-vCPU minima", checked.vcpu_minima);
}

/// The saved command lines, run with the `perf` installed here.
#[test]
fn stats_tables_equal_perf_kvm_stat_report_live() {
    if !vmx::on_path("perf") {
        vmxray_events::test_util::skip("perf not installed");
        return;
    }
    let live: Vec<(String, Table)> = saved_sections()
        .into_iter()
        .map(|(command, _)| {
            let words: Vec<&str> = command.split_whitespace().collect();
            let out = Command::new(words[0]).args(&words[1..]).current_dir(dir()).output().unwrap();
            assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
            // perf prints the table with pr_info, on stderr.
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            (command, parse_table(&text))
        })
        .collect();
    let checked = compare(&live);
    assert!(checked.rows >= 100, "{} rows", checked.rows);
}

#[test]
fn perf_reports_parse_back() {
    let text = "\n\nAnalyze events for all VMs, VCPU 1:\n\n      IO Port Access    Samples  \
                Samples%     Time%    Min Time    Max Time         Avg time \n\n           \
                0x11:POUT         49   100.00%   100.00%      0.00us   4159.22us    285.42us \
                ( +- 100.00% )\n\nTotal Samples:49, Total events handled time:13985.74us.\n";
    let t = parse_table(text);
    assert_eq!(t.scope, "Analyze events for all VMs, VCPU 1:");
    assert_eq!((t.total_samples, t.total_time_us.as_str()), (49, "13985.74"));
    assert_eq!(t.rows.len(), 1);
    let r = &t.rows[0];
    assert_eq!((r.key.as_str(), r.samples, r.min_us.as_str()), ("0x11:POUT", 49, "0.00"));
    assert_eq!((r.avg_us.as_str(), r.rel_stddev.as_str()), ("285.42", "100.00"));
    let o = Options::parse("perf kvm -i f.data stat report --event=ioport --vcpu=1");
    assert_eq!(o.vmxray_args(), ["stats", "f.data", "--event", "ioport", "--vcpu", "1"]);
    assert!(Path::new(&dir()).join("io-loop-200-ept-6.1.vmxray.perf.data").exists());
}
