//! What vmxray concludes on the real excerpts of public KVM reports (`samples/real/excerpts`),
//! against what each source's author concluded (`expectations.json`: `cause`, `correct_kvm`).
//! [`CONCLUSIONS`] is the table of samples/README.md ("What vmxray says of each excerpt"): for
//! each file, the words the conclusion must contain, or `None` where vmxray does not reach the
//! poster's conclusion (with why). Every excerpt must have a row, and on every source that shows
//! KVM behaving correctly replay reports nothing at or above warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// (file, what the conclusion must say, or None when it is not reached).
const CONCLUSIONS: &[(&str, Option<&str>)] = &[
    ("blog-1gb-pages-emulation-failure.txt", Some("could not emulate `in al, dx`")),
    ("blog-1gb-pages-walker-rsvd.txt", Some("hit a reserved bit")),
    ("bz214423-pit-irq-only-hung-guest.mailed.txt", None),
    ("bz214423-pit-irq-only-hung-guest.txt", None),
    (
        "bz220549-split-irqchip-eoi-tracepoints.mailed.txt",
        Some(
            "level_eoi_line_asserted: level-triggered vector 129 (GSI 19) was EOIed while its line was still asserted",
        ),
    ),
    (
        "bz220549-split-irqchip-eoi-tracepoints.txt",
        Some(
            "level_eoi_line_asserted: level-triggered vector 129 (GSI 19) was EOIed while its line was still asserted",
        ),
    ),
    ("bz220549-vmcs-dump-bprint.mailed.txt", None),
    ("bz220549-vmcs-dump-bprint.txt", None),
    ("dirty-ring-full-exit-quoted-annotated.txt", None),
    ("efault-loop-vvar-in-guest-memory.txt", Some("livelock: KVM_RUN error loop")),
    ("emulation-failure-option-rom-gmail-wrapped.txt", Some("The code stream is garbage")),
    ("ept-livelock-reply-mojibake-quoted.txt", Some("livelock: page-fault livelock")),
    ("ept-qualification-question-trace-cmd-session.txt", None),
    ("ept-violation-livelock-mmu-seq.mailed.txt", Some("livelock: page-fault livelock")),
    ("ept-violation-livelock-mmu-seq.txt", Some("livelock: page-fault livelock")),
    (
        "nested-cr0wp-ltr-emulation-triple-fault.txt",
        Some("emulator raised it while emulating `ltr`"),
    ),
    ("nested-dr6-l1-and-l0-views-hack-printk.txt", None),
    ("nested-failed-vmentry-invalid-guest-state.txt", Some("a guest-state check failed")),
    (
        "nested-hyperv-rep-movsw-commit-message.txt",
        Some("emulation_ud_in_l2: KVM's emulator failed `rep movs`"),
    ),
    (
        "nested-hyperv-rep-movsw-emulation-ud.txt",
        Some("emulation_ud_in_l2: KVM's emulator failed `rep movs`"),
    ),
    ("nested-l2-triple-fault-perf-qemu.txt", Some("returned KVM_EXIT_SHUTDOWN")),
    ("nested-vmport-io-loop-l2.txt", None),
    (
        "nsvm-migration-lost-event-injection.txt",
        Some("exit_while_run_pending: nested VM-exit to L1 (kvm_nested_intr_vmexit) at RIP 0xfff0"),
    ),
    ("nsvm-rsm-l1-state-corruption.txt", Some("rsm_l1_state: after RSM returned into L2")),
    ("nsvm-vmcb-split-ud-truncated-comm-quoted.txt", None),
    ("perf-irq-injection-noapic-pic.txt", None),
    ("pit-irq-only-hung-guest-gmail-wrapped.txt", None),
    (
        "rsm-emulation-failure-internal-error-vs-shutdown.txt",
        Some("KVM synthesized the triple fault"),
    ),
    ("rsm-into-l2-triple-fault-deep-quote.mailed.txt", Some("It follows an RSM back into L2")),
    ("rsm-into-l2-triple-fault-deep-quote.txt", Some("It follows an RSM back into L2")),
    ("rsm-into-l2-triple-fault.txt", Some("It follows an RSM back into L2")),
    ("svm-cpu-hotplug-gp-df-shutdown-kprobes.txt", None),
    ("svm-gp-interception-loop-vs-fixed.txt", Some("livelock: exception-delivery loop")),
    ("svm-idle-hlt-two-runs-time-only.txt", None),
    ("svm-nested-vmexit-cant-find-field.txt", None),
    ("vmx-preemption-timer-debug-tracepoint-perf.txt", None),
    ("xen-hvmop-access-test-pf-loop-rip0.txt", None),
    ("xsetbv-ud-exit-not-xsetbv-exit.txt", None),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/real/excerpts")
}

fn vmxray(args: &[&str], path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmxray")).args(args).arg(path).output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "vmxray {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What vmxray concludes on one excerpt, in its default mode: the replay anomalies at or above
/// warning (`rule: message`), triage's "What happened" sentences of every death and stuck
/// vCPU, and its conclusion from QEMU's register dump where the excerpt holds one.
fn conclusions(path: &Path) -> (Vec<String>, Vec<String>) {
    let mut anomalies = Vec::new();
    for line in vmxray(&["replay", "--format", "jsonl", "--severity", "warning"], path).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "anomaly" {
            anomalies.push(format!(
                "{}: {}",
                v["rule"].as_str().unwrap(),
                v["message"].as_str().unwrap()
            ));
        }
    }
    let triage: Value =
        serde_json::from_str(&vmxray(&["triage", "--format", "json"], path)).unwrap();
    let mut stories = Vec::new();
    for group in ["crashes", "stuck"] {
        for item in triage[group].as_array().unwrap() {
            for s in item["what_happened"].as_array().unwrap() {
                stories.push(s.as_str().unwrap().to_owned());
            }
        }
    }
    // QEMU's own report of the death, where the poster pasted it.
    for report in triage["qemu"].as_array().unwrap() {
        stories.push(report["conclusion"].as_str().unwrap().to_owned());
    }
    (anomalies, stories)
}

fn expectations() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(dir().join("expectations.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["files"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn every_excerpt_has_a_row() {
    let rows: Vec<&str> = CONCLUSIONS.iter().map(|(f, _)| *f).collect();
    let files: Vec<String> = expectations().into_keys().collect();
    assert_eq!(rows, files, "CONCLUSIONS and expectations.json list different excerpts");
}

#[test]
fn vmxray_reaches_the_posters_conclusions_it_claims() {
    let mut reached = 0;
    for (file, needle) in CONCLUSIONS {
        let Some(needle) = needle else { continue };
        let (anomalies, stories) = conclusions(&dir().join(file));
        let all = anomalies.iter().chain(&stories).cloned().collect::<Vec<_>>().join("\n");
        assert!(all.contains(needle), "{file}: `{needle}` not in:\n{all}");
        reached += 1;
    }
    assert_eq!(reached, CONCLUSIONS.iter().filter(|(_, n)| n.is_some()).count());
}

#[test]
fn nothing_above_info_where_the_source_shows_kvm_correct() {
    for (file, exp) in expectations() {
        if exp["correct_kvm"] != true {
            continue;
        }
        let (anomalies, _) = conclusions(&dir().join(&file));
        // An excerpt that shows a loop KVM handles correctly (the guest's own EFAULT memslot)
        // is still a stuck vCPU: livelock is a warning about the vCPU, not about KVM.
        let against_kvm: Vec<_> =
            anomalies.iter().filter(|a| !a.starts_with("livelock:")).collect();
        assert!(against_kvm.is_empty(), "{file}: {against_kvm:?}");
    }
}
