//! The committed host samples regenerate byte for byte from their README rows (`vmxray
//! simulate host ...`), like the single-VM ones.

use std::path::{Path, PathBuf};

use vmxray_samples::sim::host::simulate_host;
use vmxray_samples::sim::{self, SimConfig};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The commands of the `## host/` table.
fn commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace().join("samples/README.md")).expect("README");
    let section = readme.split("## host/").nth(1).expect("host section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.split('`').nth(3).filter(|c| c.starts_with("vmxray simulate host")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn committed_host_samples_regenerate_byte_for_byte() {
    let commands = commands();
    assert_eq!(commands.len(), 3, "{commands:?}");
    for cmd in &commands {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let (mut vms, mut kernel, mut seed, mut iterations) = (Vec::new(), None, 1u64, None);
        let (mut output, mut tgid) = (None, true);
        let mut i = 3;
        while i < words.len() {
            match words[i] {
                "--no-tgid" => {
                    tgid = false;
                    i += 1;
                    continue;
                }
                "--vm" => vms.push(words[i + 1]),
                "--kernel" => kernel = Some(words[i + 1].parse().expect("kernel")),
                "--seed" => seed = words[i + 1].parse().expect("seed"),
                "--iterations" => iterations = Some(words[i + 1].parse().expect("iterations")),
                "-o" => output = Some(words[i + 1]),
                "--truth" => {}
                other => panic!("unknown option {other} in {cmd}"),
            }
            i += 2;
        }
        let configs: Vec<SimConfig> = vms
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                let (scenario, kvm) = spec.split_once(':').unwrap_or((spec, "fixed"));
                let scenario = scenario.parse().expect("scenario");
                let flavour = sim::parse_flavour(kvm).expect("flavour");
                let mut c = SimConfig::new(scenario)
                    .kvm(SimConfig::resolve(scenario, flavour).expect("flavour"))
                    .seed(seed + k as u64);
                if let Some(kernel) = kernel {
                    c = c.kernel(kernel);
                }
                if let Some(n) = iterations {
                    c = c.iterations(n);
                }
                c
            })
            .collect();
        let host = simulate_host(&configs).expect("simulate");
        let text = sim::text::render_trace(&host.events, &host.text_options(tgid));
        let path = workspace().join(output.expect("-o"));
        let committed = std::fs::read_to_string(&path).expect("committed sample");
        assert!(committed == text, "{} differs from `{cmd}`", path.display());
        assert!(committed.len() < 200_000, "{} is too big", path.display());
    }
}
