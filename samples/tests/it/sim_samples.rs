//! The committed simulated samples are reproducible: every `samples/sim/` row of
//! `samples/README.md` is regenerated with its command and compared byte for byte, and every
//! file in `samples/sim/` has a row.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vmxray_samples::sim::{self, SimConfig};

/// A `vmxray simulate` command line, as the README rows spell it.
struct Command {
    config: SimConfig,
    output: PathBuf,
    truth: Option<PathBuf>,
}

fn parse(cmd: &str) -> Command {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(&words[..2], ["vmxray", "simulate"], "{cmd}");
    let scenario = words[2].parse().expect("scenario");
    let mut config = SimConfig::new(scenario);
    let (mut output, mut truth) = (None, None);
    let mut flavour = Some(sim::KvmFlavour::Fixed);
    let mut i = 3;
    while i < words.len() {
        let value = words[i + 1];
        match words[i] {
            "--kvm" => flavour = sim::parse_flavour(value).expect("flavour"),
            "--kernel" => config = config.kernel(value.parse().expect("kernel")),
            "--seed" => config = config.seed(value.parse().expect("seed")),
            "--vcpus" => config = config.vcpus(value.parse().expect("vcpus")),
            "--subjects" => config = config.subjects(value.parse().expect("subjects")),
            "--iterations" => config = config.iterations(value.parse().expect("iterations")),
            "-o" => output = Some(PathBuf::from(value)),
            "--truth" => truth = Some(PathBuf::from(value)),
            other => panic!("unknown option {other} in {cmd}"),
        }
        i += 2;
    }
    config = config.kvm(SimConfig::resolve(scenario, flavour).expect("flavour"));
    Command { config, output: output.expect("-o"), truth }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The first backticked `vmxray simulate …` of each row of the `## sim/` table.
fn sim_rows() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(workspace().join("samples/README.md")).expect("README");
    let section = readme.split("## sim/").nth(1).expect("sim section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let file = l.split('`').nth(1).unwrap().to_owned();
            let cmd =
                l.split('`').nth(3).filter(|c| c.starts_with("vmxray simulate")).map(str::to_owned);
            (file, cmd)
        })
        .collect()
}

#[test]
fn committed_samples_regenerate_byte_for_byte() {
    let root = workspace();
    let mut covered = BTreeSet::new();
    let rows = sim_rows();
    assert!(rows.len() >= 8, "sim table has {} rows", rows.len());
    for (_, cmd) in &rows {
        let Some(cmd) = cmd else { continue };
        let c = parse(cmd);
        let simulation = sim::simulate(&c.config).expect("simulate");
        let text = sim::text::render_trace(&simulation.events, &simulation.text_options());
        let committed = std::fs::read_to_string(root.join(&c.output)).expect("committed sample");
        assert!(committed == text, "{} differs from `{cmd}`", c.output.display());
        assert!(committed.len() < 200_000, "{} is too big", c.output.display());
        covered.insert(c.output.file_name().unwrap().to_string_lossy().into_owned());
        if let Some(truth) = &c.truth {
            let mut json = serde_json::to_string_pretty(&simulation.truth).expect("json");
            json.push('\n');
            let committed = std::fs::read_to_string(root.join(truth)).expect("committed truth");
            assert!(committed == json, "{} differs from `{cmd}`", truth.display());
            covered.insert(truth.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    let listed: BTreeSet<String> = rows.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(listed, covered, "every row is produced by a command");
    let on_disk: BTreeSet<String> = std::fs::read_dir(root.join("samples/sim"))
        .expect("samples/sim")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, listed, "samples/sim/ and the README's sim/ table agree");
}
