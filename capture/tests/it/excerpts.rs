//! The excerpt reader (issue 14) on the real-excerpt corpus `samples/real/excerpts/` and on
//! fixtures taken from it: every hand-counted trace line read as an event in the default
//! (strict) mode, the captures of multi-capture files split as `expectations.json` lists,
//! mailed and decoded copies read alike, each layout and kind of join on its own, and the
//! strict-mode error message.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use vmxray_capture::read::text::TextReader;
use vmxray_capture::{EventReader, Location, ReadOptions};
use vmxray_events::codes::UserspaceExitReason;
use vmxray_events::irq::IrqEvent;
use vmxray_events::{Event, EventKind, KnownEvent, SegmentReason};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/excerpts")
}

/// The corpus's hand counts: file → (trace lines, events per capture when several).
fn expectations() -> Vec<(String, u64, Option<Vec<u64>>)> {
    let text = std::fs::read_to_string(corpus().join("expectations.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = json["files"].as_object().unwrap();
    files
        .iter()
        .map(|(name, v)| {
            let segments =
                v["segments"].as_array().map(|s| s.iter().map(|n| n.as_u64().unwrap()).collect());
            (name.clone(), v["trace_lines"].as_u64().unwrap(), segments)
        })
        .collect()
}

/// Every event of a corpus file read as `vmxray` opens it, in the default mode.
fn read_file(name: &str) -> (Vec<Event>, Box<dyn EventReader>) {
    let mut reader = vmxray_capture::open(&corpus().join(name), ReadOptions::default()).unwrap();
    let events = reader
        .by_ref()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{name}: strict mode stopped: {e}"));
    (events, reader)
}

/// Events per capture (the segment markers split them).
fn per_segment(events: &[Event]) -> Vec<u64> {
    let mut counts = vec![0];
    for e in events {
        match e.kind {
            EventKind::Segment { index, .. } => {
                assert_eq!(index as usize, counts.len(), "segments are numbered 1, 2, ...");
                counts.push(0);
            }
            _ => *counts.last_mut().unwrap() += 1,
        }
    }
    counts
}

#[test]
fn every_hand_counted_trace_line_reads_as_an_event_in_strict_mode() {
    let (mut hand, mut read) = (0, 0);
    let expected = expectations();
    assert_eq!(expected.len(), 38);
    for (name, lines, segments) in &expected {
        let (events, reader) = read_file(name);
        let counts = per_segment(&events);
        let n: u64 = counts.iter().sum();
        assert!(n > 0, "{name}: no event");
        // The hand count, exactly: a regression in any file shows here.
        assert_eq!(n, *lines, "{name}: {counts:?}");
        match segments {
            Some(want) => assert_eq!(&counts, want, "{name}"),
            None => assert_eq!(counts.len(), 1, "{name}: {counts:?}"),
        }
        let stats = reader.stats();
        assert_eq!(stats.segments as usize, counts.len() - 1, "{name}");
        assert_eq!(stats.skipped, 0, "{name}");
        // Every file is an excerpt but one: a `trace-cmd report` with its `cpus=48` header,
        // cut before its events and after them only.
        let complete = name == "ept-qualification-question-trace-cmd-session.txt";
        assert_eq!(reader.meta().excerpt, !complete, "{name}");
        hand += lines;
        read += n.min(*lines);
    }
    assert!(read * 100 >= hand * 98, "{read} of {hand} hand-counted trace lines read");
}

#[test]
fn events_are_read_whole_with_their_comm() {
    for (name, _, _) in expectations() {
        let (events, _) = read_file(&name);
        for e in &events {
            if let Some(comm) = &e.comm {
                // Quote and author markers are not part of a task name, nor are blanks.
                assert!(!comm.starts_with(['>', ' ']) && !comm.ends_with(' '), "{name}: {comm:?}");
                assert!(!comm.contains("  "), "{name}: {comm:?}");
                let marker = comm.split_once(": ").is_some_and(|(m, _)| m.len() <= 2);
                assert!(!marker, "{name}: {comm:?}");
            }
            if let Some(source) = e.kind.untyped_source() {
                for (_, value) in source.fields.iter() {
                    let text = value.to_string();
                    // No annotation tail, no empty body (a wrap left unjoined).
                    assert!(!text.contains("<---"), "{name}: {text}");
                    assert!(!text.trim().is_empty(), "{name}: {e:?}");
                }
            }
        }
    }
}

#[test]
fn mailed_copies_read_as_their_decoded_copies() {
    let mut pairs = 0;
    for (name, _, _) in expectations() {
        let Some(clean) = name.strip_suffix(".mailed.txt") else { continue };
        let (mailed, _) = read_file(&name);
        let (decoded, _) = read_file(&format!("{clean}.txt"));
        assert_eq!(mailed, decoded, "{name}");
        pairs += 1;
    }
    assert_eq!(pairs, 5);
}

#[test]
fn captures_split_where_the_sources_say() {
    let reason = |name: &str| {
        let (events, _) = read_file(name);
        events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Segment { reason, .. } => Some(reason),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Time going back: the AMD capture after the Intel one.
    assert_eq!(reason("ept-violation-livelock-mmu-seq.txt"), [SegmentReason::TimeBack]);
    // A line pasted again after the prose.
    assert_eq!(
        reason("blog-1gb-pages-emulation-failure.txt"),
        [SegmentReason::TimeBack, SegmentReason::RepeatedEvent]
    );
    // `=====` / `migration happens here` / `=====` between stripped-column events.
    assert_eq!(reason("nsvm-migration-lost-event-injection.txt"), [SegmentReason::Separator]);
    // The run with the patch: later, after prose, another thread.
    assert_eq!(reason("svm-gp-interception-loop-vs-fixed.txt"), [SegmentReason::TimeJump]);
    // One capture, however much prose between its blocks.
    assert!(reason("nested-cr0wp-ltr-emulation-triple-fault.txt").is_empty());
    assert!(reason("svm-cpu-hotplug-gp-df-shutdown-kprobes.txt").is_empty());
}

/// Reads `text` as an excerpt (what `open` does with a small file).
fn excerpt(text: &str) -> (Vec<Event>, TextReader<std::io::Empty>) {
    let mut reader = TextReader::excerpt("<t>", text.as_bytes(), ReadOptions::default());
    let events = reader.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
    (events, reader)
}

fn only(text: &str) -> Event {
    let (events, _) = excerpt(text);
    assert_eq!(events.len(), 1, "{events:?}");
    events.into_iter().next().unwrap()
}

fn body(e: &Event) -> String {
    match &e.kind {
        EventKind::Other(o) => {
            o.fields.get("text").and_then(|v| v.as_str()).unwrap_or_default().to_owned()
        }
        other => panic!("not untyped: {other:?}"),
    }
}

/// The interrupt-controller events of the PIT hang excerpts, typed as the whole line says
/// (a fragment alone would lack the level, the pin or the vector).
fn set_irq(gsi: u32, level: i32) -> EventKind {
    EventKind::Irq(IrqEvent::SetIrq { gsi, level: Some(level), irq_source_id: Some(0) })
}

fn pic_pin0_edge_masked(e: &Event) -> bool {
    matches!(
        &e.kind,
        EventKind::Irq(IrqEvent::PicSetIrq(p))
            if (p.chip, p.pin, p.elcr & 1, p.imr & 1, p.masks_known & 1) == (0, 0, 0, 1, 1)
    )
}

fn accepted_edge(e: &Event, vector: u8) -> bool {
    matches!(
        &e.kind,
        EventKind::Irq(IrqEvent::ApicAcceptIrq(a)) if (a.apicid, a.vector, a.level) == (0, vector, false)
    )
}

#[test]
fn joins_a_hard_wrap_of_an_untyped_event() {
    // bz214423-pit-irq-only-hung-guest.txt (bugzilla wraps at 80 columns)
    let e = only(
        "           <...>-3441924 [004] .... 1907374.582977: kvm_pic_set_irq: chip 0 pin\n\
         0 (edge|masked)\n",
    );
    assert!(pic_pin0_edge_masked(&e), "{e:?}");
    // pit-irq-only-hung-guest-gmail-wrapped.txt (gmail breaks elsewhere)
    let e = only(
        "           <...>-3441924 [004] .... 1907374.582983: kvm_set_irq: gsi 0\n\
         level 0 source 0\n",
    );
    assert_eq!(e.kind, set_irq(0, 0));
}

#[test]
fn joins_a_line_that_ends_after_the_event_name_or_the_timestamp() {
    // bz220549-split-irqchip-eoi-tracepoints.txt: perf, fields on the next line.
    let e = only(
        "     CPU 0/KVM  699876 [020] 18136.763622:                    kvm:kvm_set_irq:\n\
         gsi 19 level 1 source 0\n",
    );
    assert_eq!((&e.kind, e.comm.as_deref(), e.pid), (&set_irq(19, 1), Some("CPU 0/KVM"), 699_876));
    // pit-irq-only-hung-guest-gmail-wrapped.txt: the event on the line after its stamp.
    let e = only(
        "           <...>-3441924 [004] .... 1907374.582979:\n\
         kvm_apic_accept_irq: apicid 0 vec 209 (Fixed|edge)\n",
    );
    assert_eq!((e.name(), e.ts), ("kvm_apic_accept_irq", 1_907_374_582_979_000));
    // bz220549-vmcs-dump-bprint.txt: a print with its function only, the message below.
    let e = only(
        "      CPU 0/KVM-251862 [019]  6384.132433: bprint:               dump_vmcs:\n\
         CR0: actual=0x0000000080010031, shadow=0x0000000080010031,\n\
         gh_mask=fffffffffffefff7\n",
    );
    let EventKind::Printk(p) = &e.kind else { panic!("{e:?}") };
    assert_eq!(p.func.as_deref(), Some("dump_vmcs"));
    assert_eq!(
        &*p.text,
        "CR0: actual=0x0000000080010031, shadow=0x0000000080010031, gh_mask=fffffffffffefff7"
    );
}

#[test]
fn joins_typed_fields_over_several_lines() {
    // bz220549-split-irqchip-eoi-tracepoints.txt: kvm_nested_vmenter over four lines, then an
    // annotation the join must leave alone.
    let (events, r) = excerpt(
        "      CPU 0/KVM  699876 [020] 18136.763652:             kvm:kvm_nested_vmenter:\n\
         rip: 0xfffff8489b641308 vmcs: 0xffffffffffffffff nested_rip: 0xfffff8031964b2b6\n\
         int_ctl: 0x00000000 event_inj: 0x80000081 nested_ept=y nested_eptp:\n\
         0x00000001019a701e\n\
         \x20     ————————————————————————————— L2 services the interrupt\n",
    );
    assert_eq!(events.len(), 1);
    let EventKind::KvmNestedVmenter(v) = &events[0].kind else { panic!("{events:?}") };
    assert_eq!(
        (v.nested_rip, v.guest_pgd, v.tdp_enabled),
        (0xfffff8031964b2b6, Some(0x1019a701e), Some(true))
    );
    assert_eq!(r.stats().non_trace_lines, 1);
    // rsm-into-l2-triple-fault.txt: columns cut, continuations indented with tabs, `guest_cr3`
    // wrapped at its underscore.
    let (events, _) = excerpt(
        "kvm_nested_vmenter: rip: 0x0000000000008002 vmcs: 0x0000000000007000\n\
         \x20                   nested_rip: 0x0000000000000000 int_ctl: 0x00000000\n\
         \t\t    event_inj: 0x00000000 nested_ept=n guest\n\
         \t\t    cr3: 0x0000000000002000\n\
         kvm_nested_vmexit_inject: reason: TRIPLE_FAULT ext_inf1: 0x0000000000000000\n\
         \x20                         ext_inf2: 0x0000000000000000 ext_int: 0x00000000\n\
         \t\t\t  ext_int_err: 0x00000000\n",
    );
    assert_eq!(events.len(), 2);
    let EventKind::KvmNestedVmenter(v) = &events[0].kind else { panic!("{events:?}") };
    assert_eq!((v.guest_pgd, v.tdp_enabled), (Some(0x2000), Some(false)));
    assert_eq!(events[0].time(), None);
    let EventKind::KvmNestedVmexitInject(x) = &events[1].kind else { panic!("{events:?}") };
    assert_eq!(x.error_code(), Some(0));
    // nested-failed-vmentry-invalid-guest-state.txt: a label without its value at a wrap.
    let e = only(
        "CPU 12/KVM-9319    [014] .... 17072.747744: kvm_nested_vmexit: vcpu 12 \n\
         reason INVALID_STATE FAILED_VMENTRY rip 0x103c00 info1 \n\
         0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 \n\
         error_code 0x00000000\n",
    );
    assert_eq!((e.comm.as_deref(), e.kind.vcpu_id()), (Some("CPU 12/KVM"), Some(12)));
    let EventKind::KvmNestedVmexit(x) = &e.kind else { panic!("{e:?}") };
    assert_eq!((x.guest_rip(), x.error_code()), (Some(0x103c00), Some(0)));
}

#[test]
fn an_untyped_event_takes_field_data_but_not_prose() {
    // nsvm-rsm-l1-state-corruption.txt: an indented continuation of fields.
    let e = only(
        "  kvm_nested_intercepts: cr_read: 0000 cr_write: 0010 excp: 40060002\n\
         \x20   intercepts: fd44bfeb 0000217f 00000000\n",
    );
    assert!(body(&e).ends_with("intercepts: fd44bfeb 0000217f 00000000"));
    // vmx-preemption-timer-debug-tracepoint-perf.txt: the author's explanation below an event.
    let (events, r) = excerpt(
        "preempt_test  20677.199521: kvm:kvm_vmx_debug: kvm_vmx_debug: 3, a0:0x77fd5554 a1:0x880042ad\n\
         \x20 a0: The previous vmcs.VMX_PREEMPTION_TIMER_VALUE value\n\
         \x20     saved by CPU when VMEXIT.\n",
    );
    assert_eq!(events.len(), 1);
    assert!(body(&events[0]).ends_with("a1:0x880042ad"));
    assert_eq!((events[0].comm.as_deref(), events[0].pid), (Some("preempt_test"), -1));
    assert_eq!(r.stats().non_trace_lines, 2);
}

#[test]
fn mail_encodings_and_blanks() {
    // bz214423-pit-irq-only-hung-guest.mailed.txt: quoted-printable soft breaks.
    let (events, _) = excerpt(
        " <...>-3441924 [004] .... 1907374.582975: kvm_set_irq: gsi 0 level 1 source=\n\
         \x200\n\
         \x20          <...>-3441924 [004] .... 1907374.582977: kvm_pic_set_irq: chip 0=\n\
         \x20pin\n\
         0 (edge|masked)\n\
         \x20          <...>-3441924 [004] .... 1907374.582979: kvm_apic_accept_irq: ap=\n\
         icid\n\
         0 vec 209 (Fixed|edge)\n",
    );
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].kind, set_irq(0, 1));
    assert!(pic_pin0_edge_masked(&events[1]), "{events:?}");
    assert!(accepted_edge(&events[2], 209), "{events:?}");
    // ept-violation-livelock-mmu-seq.mailed.txt: format=flowed soft break, no-break spaces.
    let e = only(
        " \u{a0}\u{a0} \u{a0} \u{a0}CPU-2386625 [094] 6598425.465406: kvm_inj_virq:\u{a0} \u{a0}\u{a0} IRQ 0xec \n\
         [reinjected]\n",
    );
    assert_eq!(
        e.kind,
        EventKind::KvmInjVirq { vector: 0xec, soft: Some(false), reinjected: Some(true) }
    );
    // ept-livelock-reply-mojibake-quoted.txt: three lines per event, `ï¿½` for blanks, quoted.
    let e = only(
        ">>> ï¿½ï¿½ ï¿½CPU-2386625 [094] 6598425.465404: \n\
         >>> kvm_entry:ï¿½ï¿½ï¿½ï¿½ï¿½ï¿½ï¿½ï¿½ï¿½ï¿½ï¿½ vcpu 1, rip\n\
         >>> 0xffffffffc0771aa2\n",
    );
    let EventKind::KvmEntry(entry) = &e.kind else { panic!("{e:?}") };
    assert_eq!(
        (entry.rip, e.comm.as_deref(), e.pid),
        (Some(0xffffffffc0771aa2), Some("CPU"), 2_386_625)
    );
}

#[test]
fn layouts_of_pasted_lines() {
    // rsm-into-l2-triple-fault-deep-quote.txt: eight levels of quoting, columns cut.
    let e = only("> > > > > > > > kvm_smm_transition: vcpu 0: leaving SMM, smbase 0x30000\n");
    assert_eq!(
        e.kind,
        EventKind::KvmSmmTransition { vcpu_id: 0, smbase: 0x30000, entering: false }
    );
    // dirty-ring-full-exit-quoted-annotated.txt: quoted, with an annotation appended.
    let e = only(
        ">   dirty_log_test-29003 [001] 184503.505194: kvm_page_fault:       address 7fc036f000 error_code 582              <-------- [1]\n",
    );
    assert_eq!((e.comm.as_deref(), e.pid, e.cpu), (Some("dirty_log_test"), 29003, 1));
    assert!(matches!(
        e.kind,
        EventKind::KvmPageFault { fault_address: 0x7fc036f000, error_code: 0x582, .. }
    ));
    // svm-idle-hlt-two-runs-time-only.txt: the timestamp column only.
    let e = only(" 220.696239: kvm_inj_virq: IRQ 0xb0\n");
    assert_eq!((e.ts, e.pid, e.comm.as_deref()), (220_696_239_000, -1, None));
    // nested-l2-triple-fault-perf-qemu.txt: QEMU's view of KVM_RUN.
    let e = only("    15268@1647341556.928341:kvm_run_exit cpu_index 0, reason 8\n");
    assert_eq!(
        e.kind,
        EventKind::QemuRunExit { cpu_index: 0, reason: UserspaceExitReason::SHUTDOWN }
    );
    assert_eq!((e.pid, e.system(), e.kind.known()), (15268, "qemu", Some(KnownEvent::QemuRunExit)));
    // svm-nested-vmexit-cant-find-field.txt: libtraceevent's CAN'T FIND FIELD pieces.
    let e = only(
        ">>            <...>-315119 [010]  3733.092646: kvm_nested_vmexit:    CAN'T FIND FIELD \"rip\"<CANT FIND FIELD exit_code>vcpu 0 reason npf rip 0x400433 info1 0x0000000200000006 info2 0x0000000000641000 intr_info 0x00000000 error_code 0x00000000\n",
    );
    let EventKind::KvmNestedVmexit(x) = &e.kind else { panic!("{e:?}") };
    assert_eq!((x.guest_rip(), x.info2(), e.pid), (Some(0x400433), Some(0x641000), 315_119));
    // nested-vmport-io-loop-l2.txt: trace-cmd's old plugin rendering of a shadow page.
    let e = only(
        " qemu-system-x86-6660  [007]   398.691443: kvm_mmu_get_page:     existing sp gfn 3a22e 1/4 q3 direct --x !pge !nxe root 6 sync\n",
    );
    let EventKind::KvmMmuGetPage { page, created: false } = &e.kind else { panic!("{e:?}") };
    assert_eq!((page.gfn, page.role.level(), page.root_count), (0x3a22e, 1, 6));
    // nested-dr6-l1-and-l0-views-hack-printk.txt: an author's marker, a made-up print name.
    let (events, _) = excerpt(
        " B:        CPU 0/KVM-7289    [023] d....  2925.640967: kvm_exit: vcpu 0 reason EXTERNAL_INTERRUPT intr_info 0x800000ec\n\
         \x20          CPU 0/KVM-7289    [023] d....  2925.640969: <hack>: Sync DRs, DR6 = 0xffff0ff0\n",
    );
    assert_eq!(events[0].comm.as_deref(), Some("CPU 0/KVM"));
    let EventKind::Printk(p) = &events[1].kind else { panic!("{events:?}") };
    assert_eq!((p.func.as_deref(), &*p.text), (Some("<hack>"), "Sync DRs, DR6 = 0xffff0ff0"));
    // svm-cpu-hotplug-gp-df-shutdown-kprobes.txt: a kprobe's fields after its address.
    let e = only(
        "             CPU-1838  [000] 69194.834180: kvm_multiple_exception_L41: (ffffffff81431493) vcpu=0xffff93ee9a528000 exception=0xd000001 has_error=0x0 nr=0xd error_code=0x0 has_payload=0x0\n",
    );
    let EventKind::Other(o) = &e.kind else { panic!("{e:?}") };
    assert_eq!(o.fields.get("nr").and_then(|v| v.as_u64()), Some(0xd));
}

#[test]
fn prose_is_skipped_and_headers_are_prose() {
    let (events, r) = excerpt(
        "vmxray-excerpt: a-name\nsource: kvm mailing list, 2024-01-23\nsubject: x\n---\n\
         Syzkaller found a warning.\n\nkvm_entry: vcpu 0, rip 0x8000\nNote: all is good.\n",
    );
    assert_eq!(events.len(), 1);
    assert_eq!(r.stats().non_trace_lines, 6);
    let lines: Vec<u64> = r.stats().non_trace.iter().map(|l| l.line).collect();
    assert_eq!(lines, [1, 2, 3, 4, 5, 8]);
    assert!(r.meta().excerpt);
}

#[test]
fn strict_mode_errors_name_the_file_the_real_line_and_permissive() {
    let dir = std::env::temp_dir().join(format!("vmxray-excerpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.mailed.txt");
    // Quoted-printable (lines 2-3 are one logical line) and prose; line 6 looks like a trace
    // line and does not read.
    std::fs::write(
        &path,
        "Here is the trace:\n\
         \x20         smm_test-7600  [002]  4497.073918: kvm_exit:             reason EXIT_RSM rip =\n\
         0x8004 info 0 0\n\
         =3D=3D=3D\n\
         \n\
         \x20         smm_test-7600  [002]  4497.073921: kvm_emulate_insn:     banana\n",
    )
    .unwrap();
    let mut reader = vmxray_capture::open(&path, ReadOptions::default()).unwrap();
    let first = reader.next().unwrap().unwrap();
    assert!(matches!(first.kind, EventKind::KvmExit(_)));
    let err = reader.next().unwrap().unwrap_err();
    assert_eq!(err.at, Location::Line(6));
    let message = err.to_string();
    assert!(message.starts_with(&format!("{}:6: ", path.display())), "{message}");
    assert!(message.contains("expected") && message.contains("--permissive"), "{message}");
    assert!(reader.next().is_none());
    let mut reader =
        vmxray_capture::open(&path, ReadOptions { permissive: true, ..ReadOptions::default() })
            .unwrap();
    assert_eq!(reader.by_ref().count(), 1);
    assert_eq!(reader.stats().skipped, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_format_text_reads_as_the_streaming_reader_reads_it() {
    // Whole or streamed, a tool's output gives the same events (the samples of every layout).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real/text");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        for permissive in [false, true] {
            let opts = ReadOptions { permissive, ..ReadOptions::default() };
            let streamed: Vec<_> = TextReader::one_thread("<t>", &bytes[..], opts)
                .map(|r| r.map_err(|e| e.to_string()))
                .collect();
            let whole: Vec<_> = TextReader::excerpt("<t>", &bytes, opts)
                .map(|r| r.map_err(|e| e.to_string()))
                .collect();
            assert_eq!(whole, streamed, "{name} (permissive {permissive})");
        }
    }
}

/// Lines of the corpus and around it, for soups.
const SOUP: &[&str] = &[
    "           <...>-3441924 [004] .... 1907374.582977: kvm_pic_set_irq: chip 0 pin",
    "0 (edge|masked)",
    "      CPU 0/KVM  699876 [020] 18136.763652:             kvm:kvm_nested_vmen=",
    "ter:",
    "int_ctl: 0x00000000 event_inj: 0x80000081 nested_ept=3Dy nested_eptp:",
    "0x00000001019a701e",
    ">>> ï¿½ï¿½ ï¿½CPU-2386625 [094] 6598425.465404: ",
    ">>> kvm_entry:ï¿½ï¿½ï¿½ vcpu 1, rip",
    "> > > > kvm_nested_vmexit_inject: reason: TRIPLE_FAULT",
    "\t\t\t  ext_int_err: 0x00000000",
    " B:        CPU 0/KVM-7289    [023] d....  2925.640967: kvm_exit: vcpu 0 reason HLT",
    "    15268@1647341556.928341:kvm_run_exit cpu_index 0, reason 8",
    " 220.696238: kvm_apic: apic_write APIC_ICR = 0xb0000440b0",
    "preempt_test  20677.199579:      kvm:kvm_exit: reason PREEMPTION_TIMER rip 0x40274d info 0 0 intr 0",
    "============================================================",
    "cpus=48",
    "Without idle halt enabled",
    "  a0: The previous value.",
    "\u{a0}\u{a0} \u{2002}\u{fffd}",
    "kvm_exit: vcpu 0 reason garbage",
    "<hack>: Set DRs, DR6 = 0xffff0ff1",
    "CPU:1 [LOST 3 EVENTS]",
    "",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any soup of corpus lines and random bytes: no panic; strict mode stops at its one
    /// error, permissive mode never fails; segments are numbered in order and counted.
    #[test]
    fn any_soup_of_lines_reads_without_panic(
        lines in proptest::collection::vec(
            prop_oneof![
                6 => (0..SOUP.len()).prop_map(|i| SOUP[i].as_bytes().to_vec()),
                1 => proptest::collection::vec(any::<u8>(), 0..60),
            ],
            0..50,
        ),
    ) {
        let text = lines.join(&b'\n');
        let strict: Vec<_> =
            TextReader::excerpt("<soup>", &text, ReadOptions::default()).collect();
        prop_assert!(strict.iter().filter(|r| r.is_err()).count() <= 1);
        let mut permissive = TextReader::excerpt("<soup>", &text, ReadOptions { permissive: true, ..ReadOptions::default() });
        let events: Vec<_> = permissive.by_ref().collect::<Result<_, _>>().unwrap();
        let markers = events.iter().filter(|e| matches!(e.kind, EventKind::Segment { .. })).count();
        prop_assert_eq!(permissive.stats().segments as usize, markers);
        prop_assert_eq!(per_segment(&events).len(), markers + 1);
        let physical = text.iter().filter(|&&c| c == b'\n').count() as u64 + 1;
        for problem in &permissive.stats().problems {
            if let Location::Line(n) = problem.at {
                prop_assert!(n >= 1 && n <= physical, "line {} of {}", n, physical);
            }
        }
    }
}

#[test]
fn a_record_cut_short_is_counted_as_truncated_never_read_as_whole() {
    // nested-hyperv-rep-movsw-emulation-ud.txt, as a mailer that hard-wraps at 72 columns and
    // a reply that quotes only the first fragment would leave it: `kvm_exit` without its rip
    // and qualification, `kvm_emulate_insn` without its bytes and `FAIL`.
    let cut = " qemu-system-x86-23579 [005] 22018.775584: kvm_exit:             reason EPT_VIOLATION\n\
               \n\
               qemu-system-x86-23579 [005] 22018.775585: kvm_page_fault:       address febd0000 error_code 181\n\
               qemu-system-x86-23579 [005] 22018.775593: kvm_emulate_insn:     0:fffff802987d6169:\n";
    let (events, r) = excerpt(cut);
    assert_eq!(events.len(), 3);
    let st = r.stats();
    assert_eq!(st.truncated, 2);
    assert!(!st.is_clean());
    let cut_at: Vec<_> = st.truncated_records.iter().map(|t| (t.line, t.event)).collect();
    assert_eq!(cut_at, [(1, "kvm_exit"), (4, "kvm_emulate_insn")]);
    let EventKind::KvmExit(x) = &events[0].kind else { panic!("{events:?}") };
    assert_eq!((x.guest_rip(), x.info1()), (None, None), "what the text lacks stays unknown");

    // The same records whole, and with their continuation on the next line: nothing cut.
    for whole in [
        " qemu-system-x86-23579 [005] 22018.775584: kvm_exit:             reason EPT_VIOLATION rip 0xfffff802987d6169 info 181 0\n\
          qemu-system-x86-23579 [005] 22018.775593: kvm_emulate_insn:     0:fffff802987d6169: f3 a5 FAIL\n",
        " qemu-system-x86-23579 [005] 22018.775584: kvm_exit:             reason EPT_VIOLATION\n\
         rip 0xfffff802987d6169 info 181 0\n\
          qemu-system-x86-23579 [005] 22018.775593: kvm_emulate_insn:     0:fffff802987d6169:\n\
         f3 a5 FAIL\n",
    ] {
        let (events, r) = excerpt(whole);
        assert_eq!((events.len(), r.stats().truncated), (2, 0), "{whole}");
        assert!(matches!(events[1].kind, EventKind::KvmEmulateInsn { failed: true, .. }));
    }

    // A rendering of its own is no cut: nested-dr6-l1-and-l0-views-hack-printk.txt's patched
    // kernel prints an exit's qualification without its rip; KVM's `(real) failed` form has no
    // bytes when the instruction could not be fetched.
    let (_, r) = excerpt(
        "          CPU 23/KVM-5046    [001] d....  3410.005610: kvm_exit: vcpu 23 reason DR_ACCESS info1 0x0000000000000216\n\
         \x20         CPU 23/KVM-5046    [001] d....  3410.005611: kvm_emulate_insn: 0:7c00: (real) failed\n",
    );
    assert_eq!(r.stats().truncated, 0);
}
