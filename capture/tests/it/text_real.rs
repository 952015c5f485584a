//! Every real text sample, parsed and checked against the raw-field rendering of the same run:
//! `tc_reportR.txt` for the `tc_report*` family, `text_fields.txt` / `text_raw.txt` for the
//! `text_*` family, and the perf script variants against each other.

use std::path::PathBuf;

use vmxray_capture::read::text::TextReader;
use vmxray_capture::{Clock, EventReader, InputFormat, Location, ReadErrorKind, ReadOptions};
use vmxray_events::codes::{ExceptionVector, MmuPageRole, UserspaceExitReason};
use vmxray_events::{Event, EventKind, FieldValue};

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/real/text").join(name)
}

fn reader(name: &str, opts: ReadOptions) -> TextReader<std::io::BufReader<std::fs::File>> {
    let file = std::fs::File::open(sample(name)).unwrap();
    TextReader::new(name, std::io::BufReader::new(file), opts)
}

fn read_all(name: &str) -> (Vec<Event>, TextReader<std::io::BufReader<std::fs::File>>) {
    let mut r = reader(name, ReadOptions::default());
    let events = r.by_ref().collect::<Result<Vec<_>, _>>().unwrap_or_else(|e| panic!("{e}"));
    (events, r)
}

fn other_field<'a>(e: &'a Event, field: &str) -> Option<&'a FieldValue> {
    match &e.kind {
        EventKind::Other(o) => o.fields.get(field),
        _ => None,
    }
}

/// Makes a plugin rendering comparable with the raw fields of the same event: the plugin
/// prints no emulation mode, and no gfn for the zap/sync pages.
fn assert_same_event(variant: &str, i: usize, got: &Event, want: &Event, plugin: bool) {
    let ctx = format!("{variant} event {i}: {got:?}\n vs {want:?}");
    assert_eq!(got.name(), want.name(), "{ctx}");
    assert_eq!((got.cpu, got.pid), (want.cpu, want.pid), "{ctx}");
    match (&got.kind, &want.kind) {
        (EventKind::Other(g), EventKind::Other(w)) => assert_eq!(g.name, w.name, "{ctx}"),
        (
            EventKind::KvmEmulateInsn { rip, csbase, insn, flags, failed },
            EventKind::KvmEmulateInsn {
                rip: w_rip,
                csbase: w_cs,
                insn: w_insn,
                flags: w_flags,
                failed: w_failed,
            },
        ) => {
            assert_eq!((rip, csbase, insn, failed), (w_rip, w_cs, w_insn, w_failed), "{ctx}");
            assert_eq!(*flags, if plugin { 0 } else { *w_flags }, "{ctx}");
        }
        (
            EventKind::KvmMmuGetPage { page, created },
            EventKind::KvmMmuGetPage { page: w_page, created: w_created },
        ) if plugin => {
            // The plugin does not print mmu_valid_gen.
            assert_eq!(page.mmu_valid_gen, None, "{ctx}");
            // It determines role bits 0-15 and whether smm is set, nothing of bits 16-23.
            let w = vmxray_events::MmuPage {
                mmu_valid_gen: None,
                ..known_bits(w_page, vmxray_events::MmuPage::ROLE_KNOWN_PLUGIN)
            };
            assert_eq!((*page, created), (w, w_created), "{ctx}");
        }
        (EventKind::Other(g), EventKind::KvmMmuPrepareZapPage { page }) if plugin => {
            // trace-cmd's plugin prints the role's low 16 bits, root count and sync state.
            assert_eq!(
                g.fields.get("role"),
                Some(&FieldValue::U64(u64::from(page.role.0 & 0xffff)))
            );
            assert_eq!(
                g.fields.get("root_count"),
                Some(&FieldValue::U64(u64::from(page.root_count)))
            );
            assert_eq!(g.fields.get("unsync"), Some(&FieldValue::U64(u64::from(page.unsync))));
        }
        (g, w) => assert_eq!(g, w, "{ctx}"),
    }
}

#[test]
fn every_trace_cmd_report_variant_yields_the_raw_field_events() {
    let (raw, r) = read_all("tc_reportR.txt");
    assert_eq!(raw.len(), 67);
    assert_eq!(r.meta().format, InputFormat::TraceCmdText);
    assert_eq!(r.meta().cpus, Some(2));
    assert_eq!(r.meta().clock, Clock::Nanoseconds);
    assert!(r.stats().is_clean());
    // Decoded from `-R` raw fields: ts, CPU, pid, comm and typed fields.
    assert_eq!((raw[0].ts, raw[0].cpu, raw[0].pid), (665_844_340_000, 1, 17796));
    assert_eq!(raw[0].comm.as_deref(), Some("qemu vcpu-0 x"));
    let get_page = raw.iter().find(|e| e.name() == "kvm_mmu_get_page").unwrap();
    let EventKind::KvmMmuGetPage { page, created } = &get_page.kind else { panic!() };
    assert_eq!((page.gfn, page.role, page.root_count, *created), (2, MmuPageRole(5892), 0, true));
    let walk = raw.iter().find(|e| e.name() == "kvm_mmu_pagetable_walk").unwrap();
    // `-R` prints `addr=1000 pferr=10`: bare hex, as the kernel's `%llx`.
    assert_eq!(walk.kind, EventKind::KvmMmuPagetableWalk { addr: 0x1000, pferr: 0x10 });
    let pio = raw.iter().find(|e| e.name() == "kvm_pio").unwrap();
    assert_eq!(
        pio.kind,
        EventKind::KvmPio { write: true, port: 0x10, size: 1, count: 1, val: Some(1) }
    );
    let exit = raw.iter().find(|e| e.name() == "kvm_userspace_exit").unwrap();
    assert_eq!(
        exit.kind,
        EventKind::KvmUserspaceExit { reason: UserspaceExitReason::IO, errno: Some(0) }
    );
    assert_eq!(other_field(&raw[4], "load"), Some(&FieldValue::U64(1)));

    for (variant, plugin, nsec) in [
        ("tc_report.txt", true, false),
        ("tc_reportN.txt", false, false),
        ("tc_reportl.txt", true, false),
        ("tc_reportlt.txt", true, true),
        ("tc_reportt.txt", true, true),
        ("tc_reporttsdiff.txt", true, false),
    ] {
        let (events, r) = read_all(variant);
        assert_eq!(events.len(), raw.len(), "{variant}");
        assert_eq!(r.meta().cpus, Some(2), "{variant}");
        for (i, (got, want)) in events.iter().zip(&raw).enumerate() {
            if nsec {
                // `-t` prints nanoseconds; the others round to the microsecond.
                assert!(
                    got.ts.abs_diff(want.ts) <= 500,
                    "{variant} {i}: {} vs {}",
                    got.ts,
                    want.ts
                );
                assert_ne!(got.ts % 1000, 0, "{variant} {i}: nanoseconds kept");
            } else {
                assert_eq!(got.ts, want.ts, "{variant} {i}");
            }
            let comm = want.comm.as_deref().unwrap();
            let expected_comm = if variant.starts_with("tc_reportl") { &comm[..8] } else { comm };
            assert_eq!(got.comm.as_deref(), Some(expected_comm), "{variant} {i}");
            assert_same_event(variant, i, got, want, plugin);
        }
    }
}

#[test]
fn ftrace_text_variants_yield_the_fields_option_events() {
    let (fields, r) = read_all("text_fields.txt");
    assert_eq!(fields.len(), 48);
    assert_eq!(r.meta().format, InputFormat::FtraceText);
    // `fields` prints every field as `0x.. (dec)`: all decoded, signedness from the hex.
    let tsc = fields.iter().find(|e| e.name() == "kvm_write_tsc_offset").unwrap();
    assert_eq!(other_field(tsc, "next_tsc_offset"), Some(&FieldValue::U64(0xfffffeca8576251d)));
    assert_eq!(other_field(&fields[0], "host_clock"), Some(&FieldValue::U64(1)));
    let zap = fields.iter().rev().find(|e| e.name() == "kvm_mmu_prepare_zap_page").unwrap();
    let EventKind::KvmMmuPrepareZapPage { page } = zap.kind else { panic!() };
    assert_eq!((page.gfn, page.role.0, page.root_count), (2, 0x1f04, 0));

    for variant in [
        "text_irqinfo.txt",
        "text_irqinfo_tgid.txt",
        "text_noirqinfo.txt",
        "text_noirqinfo_tgid.txt",
    ] {
        let (events, _) = read_all(variant);
        assert_eq!(events.len(), fields.len(), "{variant}");
        for (i, (got, want)) in events.iter().zip(&fields).enumerate() {
            assert_eq!((got.ts, got.cpu, got.pid), (want.ts, want.cpu, want.pid), "{variant} {i}");
            assert_eq!(got.comm, want.comm, "{variant} {i}");
            match (&got.kind, &want.kind) {
                // `fields` cannot print the instruction bytes (`insn=<INVALID-SIZE>`).
                (
                    EventKind::KvmEmulateInsn { rip, csbase, flags, insn, .. },
                    EventKind::KvmEmulateInsn { rip: r2, csbase: c2, flags: f2, insn: i2, .. },
                ) => {
                    assert_eq!((rip, csbase, flags), (r2, c2, f2), "{variant} {i}");
                    assert!(i2.as_slice().is_empty() && insn.as_slice().len() == 2);
                }
                (EventKind::Other(g), EventKind::Other(w)) => assert_eq!(g.name, w.name),
                // The kernel's page print omits guest_mode, smm, cr0_wp, smep/smap, passthrough.
                (g, w) => assert_eq!(g, &kernel_print_view(w.clone()), "{variant} {i}"),
            }
        }
        // The print-fmt text of kvm_write_tsc_offset agrees with the field's hex.
        let tsc = events.iter().find(|e| e.name() == "kvm_write_tsc_offset").unwrap();
        let Some(FieldValue::U64(next)) = other_field(tsc, "next") else { panic!("{tsc:?}") };
        assert_eq!(*next, 0xfffffeca8576251d);
    }

    // `raw` and `hex` keep pid, CPU, the ns timestamp and the numeric type.
    for variant in ["text_raw.txt", "text_hex.txt"] {
        let (events, r) = read_all(variant);
        assert_eq!(events.len(), fields.len(), "{variant}");
        assert_eq!(r.meta().clock, Clock::Raw);
        let mut type_of = std::collections::BTreeMap::new();
        for (got, want) in events.iter().zip(&fields) {
            assert_eq!((got.cpu, got.pid), (want.cpu, want.pid));
            assert!(got.ts.abs_diff(want.ts) <= 500, "{variant}: usecs rounded in the text");
            let Some(FieldValue::U64(id)) = other_field(got, "common_type") else { panic!() };
            // One id per event name, one name per id.
            assert_eq!(*type_of.entry(want.name().to_owned()).or_insert(*id), *id);
        }
        let ids: std::collections::BTreeSet<_> = type_of.values().collect();
        assert_eq!(ids.len(), type_of.len());
        assert_eq!(r.stats().unknown_events.values().sum::<u64>(), 48);
    }
}

#[test]
fn ftrace_clocks() {
    let mut names = None;
    for (variant, clock) in [
        ("text_clock_x86-tsc.txt", Clock::Raw),
        ("text_clock_counter.txt", Clock::Raw),
        ("text_clock_mono.txt", Clock::Nanoseconds),
        ("text_clock_boot.txt", Clock::Nanoseconds),
    ] {
        let (events, r) = read_all(variant);
        assert_eq!(events.len(), 29, "{variant}");
        assert_eq!(r.meta().clock, clock, "{variant}");
        assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
        let these: Vec<_> = events.iter().map(|e| e.name().to_owned()).collect();
        assert_eq!(names.get_or_insert_with(|| these.clone()), &these);
        if variant == "text_clock_counter.txt" {
            assert_eq!(events.iter().map(|e| e.ts).take(3).collect::<Vec<_>>(), [3, 4, 5]);
        }
        if variant == "text_clock_x86-tsc.txt" {
            assert_eq!(events[0].ts, 1_340_799_814_571);
        }
    }
}

#[test]
fn ftrace_trace_file_decodes_typed_kvm_events() {
    let (events, r) = read_all("ftrace_trace_irqinfo.txt");
    assert_eq!(events.len(), 62);
    assert_eq!(r.meta().cpus, Some(2));
    let cpuid = events.iter().find(|e| e.name() == "kvm_cpuid").unwrap();
    assert_eq!(
        cpuid.kind,
        EventKind::KvmCpuid {
            function: 0x2000,
            index: Some(0),
            rax: 0,
            rbx: 0,
            rcx: 0,
            rdx: 0,
            found: Some(false),
            used_max_basic: Some(false),
        }
    );
    let roots: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::KvmMmuGetPage { page, created: true } => Some((page.gfn, page.role.0)),
            _ => None,
        })
        .collect();
    assert_eq!(roots, [(2, 0x1704), (5, 0x1704)]);
    let nx = events.iter().find(|e| e.comm.as_deref() == Some("kvm-nx-lpage-re")).unwrap();
    assert_eq!(nx.pid, 12428);
}

#[test]
fn trace_pipe_lost_marker_becomes_a_lost_event_before_the_next_event_of_its_cpu() {
    let (events, r) = read_all("trace_pipe_overflow_head.txt");
    assert_eq!(events.len(), 40);
    assert_eq!(events[0].kind, EventKind::Lost { count: Some(330_608) });
    assert_eq!((events[0].cpu, events[0].ts), (1, events[1].ts));
    assert_eq!(events[0].ts, 489_483_919_000);
    let lost = r.stats().lost.get(&1).unwrap();
    assert_eq!((lost.markers, lost.events), (1, 330_608));
    assert_eq!(r.stats().events, 40);
}

#[test]
fn triple_fault_report_decodes_failed_to_parse_and_shutdown() {
    let (events, r) = read_all("triple-fault.report.txt");
    assert_eq!(events.len(), 153);
    let inj = events.iter().find(|e| e.name() == "kvm_inj_exception").unwrap();
    assert_eq!(
        inj.kind,
        EventKind::KvmInjException {
            exception: ExceptionVector::UD,
            has_error: false,
            error_code: 0,
            reinjected: Some(false),
        }
    );
    assert_eq!((inj.ts, inj.cpu, inj.pid), (1_198_880_301_000, 0, 23323));
    let last_exit = events.iter().rev().find(|e| e.name() == "kvm_userspace_exit").unwrap();
    assert_eq!(
        last_exit.kind,
        EventKind::KvmUserspaceExit { reason: UserspaceExitReason::SHUTDOWN, errno: Some(0) }
    );
    let cr3_loads = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::KvmEmulateInsn { insn, .. } if insn.as_slice() == [0x0f, 0x22, 0xd8]))
        .count();
    // `grep -c '0f 22 d8'`: every `mov cr3, rax` the emulator ran.
    assert_eq!(cr3_loads, 9);
    assert_eq!(r.stats().unknown_events.values().sum::<u64>(), 6, "zaps without gfn are counted");
}

#[test]
fn perf_script_variants_agree() {
    let (default, r) = read_all("ps_default.txt");
    assert_eq!(default.len(), 48);
    assert_eq!(r.meta().format, InputFormat::PerfScriptText);
    assert_eq!(default[0].comm.as_deref(), Some("qemu vcpu-0 x"));
    assert_eq!((default[0].pid, default[0].cpu, default[0].ts), (19254, 1, 759_455_910_000));
    assert_eq!(default[0].system(), "kvm");
    // `[FAILED TO PARSE] mmu_valid_gen=0 gfn=2 role=5892 root_count=0 unsync=0 created=1`.
    let get_page = default.iter().find(|e| e.name() == "kvm_mmu_get_page").unwrap();
    let EventKind::KvmMmuGetPage { page, created } = &get_page.kind else { panic!() };
    assert_eq!((page.gfn, page.role.0, page.mmu_valid_gen, *created), (2, 0x1704, Some(0), true));
    let zap = default.iter().rev().find(|e| e.name() == "kvm_mmu_prepare_zap_page").unwrap();
    let EventKind::KvmMmuPrepareZapPage { page } = &zap.kind else { panic!() };
    assert_eq!(page.role.0, 7940);

    for variant in ["ps_ns.txt", "ps_pidtid.txt", "ps_ipsym.txt", "ps_min.txt"] {
        let (events, _) = read_all(variant);
        assert_eq!(events.len(), default.len(), "{variant}");
        for (i, (got, want)) in events.iter().zip(&default).enumerate() {
            assert_eq!(got.kind, want.kind, "{variant} {i}");
            assert_eq!(got.ts / 1000 * 1000, want.ts, "{variant} {i}");
            if variant == "ps_min.txt" {
                assert_eq!((got.pid, got.cpu, got.comm.as_deref()), (-1, 0, None));
            } else {
                assert_eq!((got.pid, got.cpu, &got.comm), (want.pid, want.cpu, &want.comm));
            }
        }
        if variant == "ps_ns.txt" {
            assert_eq!(events[1].ts, 759_455_912_210);
        }
    }
}

#[test]
fn refused_layouts_explain_themselves_with_the_line_number() {
    // Text without its context columns reads now (see the next test); the latency format's
    // relative times are still refused.
    let variant = "text_latency_format.txt";
    let mut r = reader(variant, ReadOptions::default());
    let err = r.next().unwrap().unwrap_err();
    assert_eq!(err.at, Location::Line(19), "{variant}");
    assert!(matches!(err.kind, ReadErrorKind::Text(_)));
    assert!(err.to_string().contains("latency-format"), "{err}");
    assert!(r.next().is_none(), "strict mode stops after the error");

    let mut r = reader(variant, ReadOptions { permissive: true, ..ReadOptions::default() });
    assert_eq!(r.by_ref().count(), 0);
    assert_eq!(r.stats().skipped, 48, "{variant}");
}

#[test]
fn text_without_its_context_columns_reads_as_events_without_a_time() {
    // ftrace with `options/context-info` off: `event: body` and nothing else.
    let mut r = reader("text_nocontext.txt", ReadOptions::default());
    let events: Vec<_> = r.by_ref().map(Result::unwrap).collect();
    assert_eq!(events.len(), 48);
    assert!(events.iter().all(|e| e.time().is_none() && e.pid == -1 && e.comm.is_none()));
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::KvmEmulateInsn { .. })));
    assert!(r.stats().is_clean(), "{:?}", r.stats());
    // Read whole, as `open` reads a small file: the same events, and it is an excerpt.
    let mut whole =
        vmxray_capture::open(&sample("text_nocontext.txt"), ReadOptions::default()).unwrap();
    let again: Vec<_> = whole.by_ref().map(Result::unwrap).collect();
    assert_eq!(again, events);
    assert!(whole.meta().excerpt);
}

#[test]
fn capture_open_reads_text_files_and_knows_the_format_before_the_first_event() {
    for (name, format, clock, cpus) in [
        ("ps_default.txt", InputFormat::PerfScriptText, Clock::Nanoseconds, None),
        ("text_clock_counter.txt", InputFormat::FtraceText, Clock::Raw, Some(2)),
        ("tc_reportl.txt", InputFormat::TraceCmdText, Clock::Nanoseconds, Some(2)),
    ] {
        let r = vmxray_capture::open(&sample(name), ReadOptions::default()).unwrap();
        assert_eq!(
            (r.meta().format, &r.meta().clock, r.meta().cpus),
            (format, &clock, cpus),
            "{name}"
        );
        assert!(r.meta().input.ends_with(name));
    }
    let mut r = vmxray_capture::open(&sample("tc_report.txt"), ReadOptions::default()).unwrap();
    assert_eq!(r.meta().format, InputFormat::TraceCmdText);
    assert_eq!(r.by_ref().filter(|e| e.is_ok()).count(), 67);
}

/// What a text rendering that determines only `known` role bits gives for `page`.
fn known_bits(page: &vmxray_events::MmuPage, known: u32) -> vmxray_events::MmuPage {
    vmxray_events::MmuPage {
        role: vmxray_events::codes::MmuPageRole(page.role.0 & known),
        role_known: known,
        ..*page
    }
}

/// What the kernel's kvmmmu page print gives for a page event read from the raw fields.
fn kernel_print_view(kind: EventKind) -> EventKind {
    let known = vmxray_events::MmuPage::ROLE_KNOWN_KERNEL_PRINT;
    match kind {
        EventKind::KvmMmuGetPage { page, created } => {
            EventKind::KvmMmuGetPage { page: known_bits(&page, known), created }
        }
        EventKind::KvmMmuPrepareZapPage { page } => {
            EventKind::KvmMmuPrepareZapPage { page: known_bits(&page, known) }
        }
        EventKind::KvmMmuSyncPage { page } => {
            EventKind::KvmMmuSyncPage { page: known_bits(&page, known) }
        }
        EventKind::KvmMmuUnsyncPage { page } => {
            EventKind::KvmMmuUnsyncPage { page: known_bits(&page, known) }
        }
        other => other,
    }
}
