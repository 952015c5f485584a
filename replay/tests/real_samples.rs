//! Real traces of this machine's KVM (emulator-only PVM backend: no kvm_exit/kvm_entry/kvm_cr)
//! must replay with zero anomalies above info, and every rule must say why it was not checkable.
//!
//! The readers live on other branches; this test reads the `trace-cmd report -R` rendering
//! (raw fields) with a few lines of parsing and types it through `EventKind::decode`, the same
//! vocabulary every reader ends in. It is skipped when the shared samples are not beside the
//! repository.

mod common;

use std::path::PathBuf;

use vmxray_capture::{Event, EventKind, FieldValue, Fields};
use vmxray_replay::{Model, RuleStatus, Severity};

fn sample(name: &str) -> Option<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [
        dir.join("../samples/real/text").join(name),
        dir.join("../../shared/samples/real/text").join(name),
    ]
    .into_iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
}

/// Fields whose `-R` rendering is hexadecimal without a prefix (their print format is `%llx`).
const HEX_FIELDS: &[&str] = &["addr", "pte", "rip", "gpa", "pferr", "gfn"];

fn parse_report_raw(text: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for line in text.lines() {
        // "<comm>-<pid> [cpu] <sec.usec>: <event>: k=v ..."
        let Some(open) = line.find(" [") else { continue };
        let Some(close) = line[open..].find(']').map(|c| open + c) else { continue };
        let head = line[..open].trim();
        let Some(dash) = head.rfind('-') else { continue };
        let (comm, pid) = (&head[..dash], head[dash + 1..].parse::<i32>().unwrap_or(0));
        let cpu: u32 = line[open + 2..close].trim().parse().unwrap_or(0);
        let rest = &line[close + 1..];
        let Some(colon) = rest.find(':') else { continue };
        let ts_text = rest[..colon].trim();
        let ts = ts_text.replace('.', "").parse::<u64>().unwrap_or(0) * 1000;
        let rest = &rest[colon + 1..];
        let Some(colon) = rest.find(':') else { continue };
        let name = rest[..colon].trim();
        let mut fields = Fields::new();
        let mut body = rest[colon + 1..].trim();
        while let Some(eq) = body.find('=') {
            let key = body[..eq].trim();
            let after = &body[eq + 1..];
            let (value, next) = if let Some(array) = after.strip_prefix("ARRAY[") {
                let end = array.find(']').unwrap_or(array.len());
                let bytes: Vec<u8> = array[..end]
                    .split(',')
                    .filter_map(|b| u8::from_str_radix(b.trim(), 16).ok())
                    .collect();
                (FieldValue::Bytes(bytes.into()), &array[(end + 1).min(array.len())..])
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                let raw = &after[..end];
                let v = if let Some(h) = raw.strip_prefix("0x") {
                    u64::from_str_radix(h, 16).ok()
                } else if HEX_FIELDS.contains(&key) {
                    u64::from_str_radix(raw, 16).ok()
                } else {
                    raw.parse().ok()
                };
                (v.map_or_else(|| FieldValue::Str(raw.into()), FieldValue::U64), &after[end..])
            };
            fields.push(key, value);
            body = next.trim_start();
        }
        let system = if name.starts_with("kvm_mmu") { "kvmmmu" } else { "kvm" };
        let Ok(kind) = EventKind::decode(system, name, &fields) else { continue };
        out.push(Event { ts, cpu, pid, comm: Some(comm.into()), kind });
    }
    out
}

#[test]
fn real_pvm_trace_replays_clean_and_reports_rules_not_checkable() {
    let Some(text) = sample("tc_reportR.txt") else {
        eprintln!("shared samples not found; skipped");
        return;
    };
    let events = parse_report_raw(&text);
    assert!(events.len() > 50, "parsed {} events", events.len());
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::KvmMmuGetPage { .. })));
    let mut model = Model::default();
    let anomalies = model.run(&events);
    let loud: Vec<_> = anomalies.iter().filter(|a| a.severity > Severity::Info).collect();
    assert!(loud.is_empty(), "{loud:#?}");
    let summary = model.summary();
    assert!(summary.features.emulator && !summary.features.kvm_exit);
    for rule in &summary.rules {
        assert!(matches!(rule.status, RuleStatus::NotCheckable { .. }), "{rule:?}");
    }
}
