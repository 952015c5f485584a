//! Synthetic lines for every print-format generation of the typed KVM events, in every column
//! layout, → exact typed events; lost markers; errors and permissive mode.

use vmxray_capture::read::text::TextReader;
use vmxray_capture::{EventReader, Location, ReadErrorKind, ReadOptions};
use vmxray_events::codes::{
    ExceptionVector, ExitCode, ExitReason, IntrInfo, Isa, MmuPageRole, SvmExitCode,
    UserspaceExitReason, VmInstructionError,
};
use vmxray_events::{
    Entry, Event, EventKind, ExitFields, ExitInfo, InsnBytes, MmuPage, NestedVmenter,
};

fn read(text: &str, opts: ReadOptions) -> (Vec<Result<Event, String>>, TextReader<&[u8]>) {
    let mut r = TextReader::new("<test>", text.as_bytes(), opts);
    let out = r.by_ref().map(|e| e.map_err(|e| e.to_string())).collect();
    (out, r)
}

/// The body rendered in ftrace, trace-cmd and perf layouts must give one and the same event.
fn decode(system: &str, name: &str, body: &str) -> EventKind {
    let lines = [
        format!("       CPU 0/KVM-4242    [002] d..1.  1000.000001: {name}: {body}\n"),
        format!(
            "cpus=4\n       CPU 0/KVM-4242  [002]  1000.000001: {:<20} {body}\n",
            format!("{name}:")
        ),
        format!("       CPU 0/KVM  4242 [002]  1000.000001:  {system}:{name}: {body}\n"),
    ];
    let mut kinds = Vec::new();
    for text in &lines {
        let (events, _) = read(text, ReadOptions::default());
        assert_eq!(events.len(), 1, "{text}");
        let event = events.into_iter().next().unwrap().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!((event.ts, event.cpu, event.pid), (1_000_000_001_000, 2, 4242), "{text}");
        assert_eq!(event.comm.as_deref(), Some("CPU 0/KVM"));
        kinds.push(event.kind);
    }
    // ftrace and trace-cmd do not print the system of an untyped event; perf does.
    if let EventKind::Other(o) = &kinds[2] {
        assert_eq!(&*o.system, system);
        for k in &kinds[..2] {
            let EventKind::Other(k) = k else { panic!("{k:?}") };
            assert_eq!((&k.name, &k.fields, &*k.system), (&o.name, &o.fields, ""));
        }
    } else {
        assert_eq!(kinds[2].system(), system);
        assert_eq!(kinds[0], kinds[1], "{body}");
        assert_eq!(kinds[0], kinds[2], "{body}");
    }
    kinds.pop().unwrap()
}

fn kvm(name: &str, body: &str) -> EventKind {
    decode("kvm", name, body)
}

fn vmx(reason: u32) -> ExitCode {
    ExitCode::Vmx(ExitReason(reason))
}

fn exit(reason: ExitCode, isa: Option<Isa>) -> ExitInfo {
    ExitInfo::from(ExitFields {
        reason,
        isa,
        guest_rip: None,
        info1: None,
        info2: None,
        intr_info: None,
        error_code: None,
        vcpu_id: None,
        requests: None,
    })
}

#[test]
fn kvm_exit_every_generation() {
    let v = Some(Isa::Vmx);
    // ≤5.2 (and trace-cmd's plugin): `reason %s rip 0x%lx info %llx %llx`.
    let old = ExitInfo::from(ExitFields {
        guest_rip: Some(0xfff0),
        info1: Some(0x181),
        info2: Some(0),
        ..exit(vmx(48), v).fields()
    });
    assert_eq!(
        kvm("kvm_exit", "reason EPT_VIOLATION rip 0xfff0 info 181 0"),
        EventKind::KvmExit(old)
    );
    // The plugin may name the guest function after the rip.
    assert_eq!(
        kvm("kvm_exit", "reason EPT_VIOLATION rip 0xfff0 start_kernel+0x10 info 181 0"),
        EventKind::KvmExit(old)
    );
    // 5.3: vcpu_id; ~5.8: flag names.
    assert_eq!(
        kvm("kvm_exit", "vcpu 3 reason EPT_VIOLATION rip 0xfff0 info 181 0"),
        EventKind::KvmExit(ExitInfo::from(ExitFields { vcpu_id: Some(3), ..old.fields() }))
    );
    assert_eq!(
        kvm("kvm_exit", "vcpu 0 reason INVALID_STATE FAILED_VMENTRY rip 0x0 info 0 0"),
        EventKind::KvmExit(ExitInfo::from(ExitFields {
            guest_rip: Some(0),
            info1: Some(0),
            info2: Some(0),
            vcpu_id: Some(0),
            ..exit(vmx(0x8000_0021), v).fields()
        }))
    );
    // 5.10 and 6.14.
    let new = ExitInfo::from(ExitFields {
        guest_rip: Some(0xffff_ffff_8100_0000),
        info1: Some(3),
        info2: Some(0),
        intr_info: Some(IntrInfo(0)),
        error_code: Some(0),
        vcpu_id: Some(1),
        ..exit(vmx(28), v).fields()
    });
    let body_510 = "vcpu 1 reason CR_ACCESS rip 0xffffffff81000000 info1 0x0000000000000003 \
                    info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000";
    assert_eq!(kvm("kvm_exit", body_510), EventKind::KvmExit(new));
    assert_eq!(
        kvm("kvm_exit", &format!("{body_510} requests 0x0000000000000040")),
        EventKind::KvmExit(ExitInfo::from(ExitFields { requests: Some(0x40), ..new.fields() }))
    );
    // SVM names (lower case, possibly with a space), unknown codes, the plugin's names.
    let svm = |name: &str| match kvm(
        "kvm_exit",
        &format!("vcpu 0 reason {name} rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0"),
    ) {
        EventKind::KvmExit(info) => (info.reason(), info.isa()),
        other => panic!("{other:?}"),
    };
    assert_eq!(svm("npf"), (ExitCode::Svm(SvmExitCode::NPF), Some(Isa::Svm)));
    assert_eq!(svm("PF excp"), (ExitCode::Svm(SvmExitCode::EXCP_PF), Some(Isa::Svm)));
    assert_eq!(svm("0x4e"), (ExitCode::Raw(0x4e), None));
    assert_eq!(svm("EXIT_NPF"), (ExitCode::Svm(SvmExitCode::NPF), Some(Isa::Svm)));
    assert_eq!(svm("EXIT_EXCP_PF"), (ExitCode::Svm(SvmExitCode::EXCP_PF), Some(Isa::Svm)));
    assert_eq!(svm("EXIT_IOIO"), (ExitCode::Svm(SvmExitCode::IOIO), Some(Isa::Svm)));
    assert_eq!(svm("UNKNOWN (2147483681)"), (ExitCode::Raw(0x8000_0021), None));
    assert_eq!(svm("PENDING_INTERRUPT"), (vmx(7), Some(Isa::Vmx)));
}

#[test]
fn kvm_exit_raw_field_renderings() {
    let want = EventKind::KvmExit(ExitInfo::from(ExitFields {
        guest_rip: Some(0xfff0),
        info1: Some(0x181),
        info2: Some(0),
        intr_info: Some(IntrInfo(0)),
        error_code: Some(0),
        vcpu_id: Some(0),
        ..exit(vmx(48), Some(Isa::Vmx)).fields()
    }));
    // trace-cmd report -R: info1/info2 are `%llx` in the ≤5.9 print, so bare hex.
    assert_eq!(
        kvm(
            "kvm_exit",
            "exit_reason=48 guest_rip=0xfff0 isa=1 info1=181 info2=0 intr_info=0 error_code=0 vcpu_id=0"
        ),
        want
    );
    // ftrace `fields` option.
    assert_eq!(
        kvm(
            "kvm_exit",
            "exit_reason=0x30 (48) guest_rip=0xfff0 (65520) isa=0x1 (1) info1=0x181 (385) \
             info2=0x0 (0) intr_info=0x0 (0) error_code=0x0 (0) vcpu_id=0x0 (0)"
        ),
        want
    );
    // libtraceevent's [FAILED TO PARSE]: plain decimal.
    assert_eq!(
        kvm(
            "kvm_exit",
            "[FAILED TO PARSE] exit_reason=48 guest_rip=65520 isa=1 info1=385 info2=0 intr_info=0 error_code=0 vcpu_id=0"
        ),
        want
    );
}

#[test]
fn kvm_entry_four_prints_and_the_plugin() {
    let entry = |rip, immediate_exit, intr: Option<u32>, err| {
        EventKind::KvmEntry(Entry {
            vcpu_id: 2,
            rip,
            immediate_exit,
            intr_info: intr.map(IntrInfo),
            error_code: err,
        })
    };
    assert_eq!(kvm("kvm_entry", "vcpu 2"), entry(None, None, None, None));
    assert_eq!(kvm("kvm_entry", "vcpu 2, rip 0xfff0"), entry(Some(0xfff0), None, None, None));
    assert_eq!(
        kvm("kvm_entry", "vcpu 2, rip 0xfff0[immediate exit]"),
        entry(Some(0xfff0), Some(true), None, None)
    );
    assert_eq!(
        kvm("kvm_entry", "vcpu 2, rip 0xfff0 intr_info 0x80000b0e error_code 0x00000002"),
        entry(Some(0xfff0), Some(false), Some(0x8000_0b0e), Some(2))
    );
    assert_eq!(
        kvm(
            "kvm_entry",
            "vcpu 2, rip 0xfff0 intr_info 0x00000000 error_code 0x00000000[immediate exit]"
        ),
        entry(Some(0xfff0), Some(true), Some(0), Some(0))
    );
    assert_eq!(kvm("kvm_entry", " vcpu 2 rip 0xfff0"), entry(Some(0xfff0), None, None, None));
}

#[test]
fn kvm_cr_msr_pio_cpuid_smm() {
    assert_eq!(
        kvm("kvm_cr", "cr_write 3 = 0x5000"),
        EventKind::KvmCr { write: true, cr: 3, val: 0x5000 }
    );
    assert_eq!(
        kvm("kvm_cr", "cr_read 0 = 0x80050033"),
        EventKind::KvmCr { write: false, cr: 0, val: 0x8005_0033 }
    );
    assert_eq!(
        kvm("kvm_msr", "msr_write 1b = 0xfee00900"),
        EventKind::KvmMsr { write: true, index: 0x1b, data: 0xfee0_0900, exception: false }
    );
    assert_eq!(
        kvm("kvm_msr", "msr_read c0000080 = 0x0 (#GP)"),
        EventKind::KvmMsr { write: false, index: 0xc000_0080, data: 0, exception: true }
    );
    assert_eq!(
        kvm("kvm_pio", "pio_read at 0x3f8 size 1 count 4 val 0x41 (...)"),
        EventKind::KvmPio { write: false, port: 0x3f8, size: 1, count: 4, val: Some(0x41) }
    );
    assert_eq!(
        kvm("kvm_pio", "pio_write at 0x10 size 2 count 1"),
        EventKind::KvmPio { write: true, port: 0x10, size: 2, count: 1, val: None }
    );
    assert_eq!(
        kvm(
            "kvm_cpuid",
            "func 40000000 idx 0 rax 40000001 rbx 4b4d564b rcx 564b4d56 rdx 4d, cpuid entry found, used max basic"
        ),
        EventKind::KvmCpuid {
            function: 0x4000_0000,
            index: Some(0),
            rax: 0x4000_0001,
            rbx: 0x4b4d_564b,
            rcx: 0x564b_4d56,
            rdx: 0x4d,
            found: Some(true),
            used_max_basic: Some(true),
        }
    );
    assert_eq!(
        kvm("kvm_smm_transition", "vcpu 1: entering SMM, smbase 0x30000"),
        EventKind::KvmSmmTransition { vcpu_id: 1, smbase: 0x30000, entering: true }
    );
}

#[test]
fn nested_vmexit_old_new_plugin_and_inject() {
    let old = EventKind::KvmNestedVmexit(ExitInfo::from(ExitFields {
        guest_rip: Some(0xfff0),
        info1: Some(0),
        info2: Some(0),
        intr_info: Some(IntrInfo(0)),
        error_code: Some(0),
        ..exit(vmx(18), Some(Isa::Vmx)).fields()
    }));
    assert_eq!(
        kvm(
            "kvm_nested_vmexit",
            "rip: 0x000000000000fff0 reason: VMCALL ext_inf1: 0x0000000000000000 ext_inf2: \
             0x0000000000000000 ext_int: 0x00000000 ext_int_err: 0x00000000"
        ),
        old
    );
    assert_eq!(
        kvm(
            "kvm_nested_vmexit",
            " rip fff0 reason VMCALL info1 0 info2 0 int_info 0 int_info_err 0"
        ),
        old
    );
    let EventKind::KvmNestedVmexit(new) = kvm(
        "kvm_nested_vmexit",
        "vcpu 0 reason EPT_VIOLATION rip 0x401000 info1 0x0000000000000181 info2 \
         0x0000000000000000 intr_info 0x00000000 error_code 0x00000000",
    ) else {
        panic!()
    };
    assert_eq!((new.reason(), new.vcpu_id(), new.info1()), (vmx(48), Some(0), Some(0x181)));
    let inject = EventKind::KvmNestedVmexitInject(ExitInfo::from(ExitFields {
        info1: Some(0x1000),
        info2: Some(0),
        intr_info: Some(IntrInfo(0x8000_0b0e)),
        error_code: Some(2),
        ..exit(vmx(0), Some(Isa::Vmx)).fields()
    }));
    assert_eq!(
        kvm(
            "kvm_nested_vmexit_inject",
            "reason: EXCEPTION_NMI ext_inf1: 0x0000000000001000 ext_inf2: 0x0000000000000000 \
             ext_int: 0x80000b0e ext_int_err: 0x00000002"
        ),
        inject
    );
    assert_eq!(
        kvm(
            "kvm_nested_vmexit_inject",
            "reason EXCEPTION_NMI info1 1000 info2 0 int_info 80000b0e int_info_err 2"
        ),
        inject
    );
}

#[test]
fn nested_vmenter_labels_and_generations() {
    let base = NestedVmenter {
        rip: 0x40_1000,
        vmcs: 0x12_3000,
        nested_rip: 0x40_2000,
        int_ctl: 0,
        event_inj: IntrInfo(0),
        tdp_enabled: Some(false),
        guest_pgd: Some(0x5000),
        isa: Some(Isa::Vmx),
    };
    let head = "rip: 0x0000000000401000 vmcs: 0x0000000000123000 nested_rip: 0x0000000000402000 \
                int_ctl: 0x00000000 event_inj: 0x00000000";
    let k =
        kvm("kvm_nested_vmenter", &format!("{head} nested_ept=n guest_cr3: 0x0000000000005000"));
    assert_eq!(k, EventKind::KvmNestedVmenter(base.clone()));
    let EventKind::KvmNestedVmenter(v) = k else { panic!() };
    assert_eq!(v.guest_cr3(), Some(0x5000));
    let EventKind::KvmNestedVmenter(v) =
        kvm("kvm_nested_vmenter", &format!("{head} nested_ept=y nested_eptp: 0x000000000000701e"))
    else {
        panic!()
    };
    assert_eq!(
        (v.tdp_enabled, v.nested_tdp_root(), v.guest_cr3()),
        (Some(true), Some(0x701e), None)
    );
    // The first 6.1 print: `nested_ept: on`, no pgd.
    assert_eq!(
        kvm("kvm_nested_vmenter", &format!("{head} nested_ept: on")),
        EventKind::KvmNestedVmenter(NestedVmenter {
            tdp_enabled: Some(true),
            guest_pgd: None,
            ..base.clone()
        })
    );
    // SVM, and the pre-6.1 SVM-only kvm_nested_vmrun.
    let EventKind::KvmNestedVmenter(v) = kvm(
        "kvm_nested_vmenter",
        "rip: 0x1 vmcb: 0x2 nested_rip: 0x3 int_ctl: 0x4 event_inj: 0x5 nested_npt=y nested_cr3: 0x6",
    ) else {
        panic!()
    };
    assert_eq!(
        (v.isa, v.vmcs, v.tdp_enabled, v.guest_pgd),
        (Some(Isa::Svm), 2, Some(true), Some(6))
    );
    let EventKind::KvmNestedVmenter(v) = kvm(
        "kvm_nested_vmrun",
        "rip: 0x1 vmcb: 0x2 nrip: 0x3 int_ctl: 0x4 event_inj: 0x5 npt: off",
    ) else {
        panic!()
    };
    assert_eq!((v.isa, v.nested_rip, v.tdp_enabled), (Some(Isa::Svm), 3, Some(false)));
    // eVMCS.
    let EventKind::KvmNestedVmenter(v) = kvm(
        "kvm_nested_vmenter",
        "rip: 0x1 vmcs: 0xffffffffffffffff nested_rip: 0x3 int_ctl: 0x0 event_inj: 0x0 nested_ept=n guest_cr3: 0x9000",
    ) else {
        panic!()
    };
    assert!(v.is_evmcs());
}

#[test]
fn nested_vmenter_failed_messages() {
    let failed = |body: &str| match kvm("kvm_nested_vmenter_failed", body) {
        EventKind::KvmNestedVmenterFailed { msg, err, .. } => (msg.to_string(), err),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        failed("vmcs12->launch_state == launch"),
        ("vmcs12->launch_state == launch".into(), VmInstructionError(0))
    );
    assert_eq!(
        failed("hardware VM-instruction error: VMENTRY_INVALID_CONTROL_FIELD"),
        ("hardware VM-instruction error: ".into(), VmInstructionError::ENTRY_INVALID_CONTROL_FIELD)
    );
    assert_eq!(
        failed("early hardware check VM-instruction error: VMLAUNCH_NONCLEAR_VMCS"),
        ("early hardware check VM-instruction error: ".into(), VmInstructionError(4))
    );
}

#[test]
fn page_fault_exception_virq_userspace_exit() {
    let pf = |vcpu, rip, addr, err| EventKind::KvmPageFault {
        vcpu_id: vcpu,
        guest_rip: rip,
        fault_address: addr,
        error_code: err,
    };
    assert_eq!(kvm("kvm_page_fault", "address 7f0000 error_code 6"), pf(None, None, 0x7f_0000, 6));
    assert_eq!(
        kvm("kvm_page_fault", "vcpu 1 rip 0x401000 address 0x7f0000 error_code 6"),
        pf(Some(1), Some(0x40_1000), 0x7f_0000, 6)
    );
    assert_eq!(
        kvm("kvm_page_fault", "vcpu 1 rip 0x401000 address 0x00000000007f0000 error_code 0x181"),
        pf(Some(1), Some(0x40_1000), 0x7f_0000, 0x181)
    );
    let exc = |v, has_error, error_code, reinjected| EventKind::KvmInjException {
        exception: ExceptionVector(v),
        has_error,
        error_code,
        reinjected,
    };
    assert_eq!(kvm("kvm_inj_exception", "#PF (0x2) [reinjected]"), exc(14, true, 2, Some(true)));
    assert_eq!(kvm("kvm_inj_exception", "#UD"), exc(6, false, 0, Some(false)));
    // ≤5.18 `%s (0x%x)`: the code is always printed, so reinjection is unknown.
    assert_eq!(kvm("kvm_inj_exception", "#GP (0x0)"), exc(13, true, 0, None));
    assert_eq!(kvm("kvm_inj_exception", "0x14"), exc(20, false, 0, Some(false)));
    assert_eq!(
        kvm("kvm_inj_virq", "IRQ 0x20"),
        EventKind::KvmInjVirq { vector: 0x20, soft: Some(false), reinjected: Some(false) }
    );
    assert_eq!(
        kvm("kvm_inj_virq", "Soft/INTn 0x80 [reinjected]"),
        EventKind::KvmInjVirq { vector: 0x80, soft: Some(true), reinjected: Some(true) }
    );
    assert_eq!(
        kvm("kvm_inj_virq", "irq 32"),
        EventKind::KvmInjVirq { vector: 32, soft: None, reinjected: None }
    );
    assert_eq!(
        kvm("kvm_userspace_exit", "reason KVM_EXIT_SHUTDOWN (8)"),
        EventKind::KvmUserspaceExit { reason: UserspaceExitReason::SHUTDOWN, errno: Some(0) }
    );
    assert_eq!(
        kvm("kvm_userspace_exit", "reason restart (4)"),
        EventKind::KvmUserspaceExit { reason: UserspaceExitReason(0), errno: Some(-4) }
    );
    assert_eq!(
        kvm("kvm_userspace_exit", "reason error (14)"),
        EventKind::KvmUserspaceExit { reason: UserspaceExitReason(0), errno: Some(-14) }
    );
}

#[test]
fn emulate_insn_kernel_and_plugin() {
    let insn = |rip, cs, bytes: &[u8], flags, failed| EventKind::KvmEmulateInsn {
        rip,
        csbase: cs,
        insn: InsnBytes::new(bytes, bytes.len()),
        flags,
        failed,
    };
    assert_eq!(
        kvm("kvm_emulate_insn", "0:1000:ff c0 (prot64)"),
        insn(0x1000, 0, &[0xff, 0xc0], 9, false)
    );
    assert_eq!(
        kvm("kvm_emulate_insn", "0:1007:0f 22 d8 (prot64) failed"),
        insn(0x1007, 0, &[0x0f, 0x22, 0xd8], 9, true)
    );
    assert_eq!(
        kvm("kvm_emulate_insn", "f0000:fff0:ea 5b e0 00 f0 (real)"),
        insn(0xfff0, 0xf0000, &[0xea, 0x5b, 0xe0, 0x00, 0xf0], 0, false)
    );
    // KVM could not fetch the instruction (insn_len 0): no bytes, only the mode and `failed`.
    assert_eq!(kvm("kvm_emulate_insn", "0:7c00: (real) failed"), insn(0x7c00, 0, &[], 0, true));
    assert_eq!(
        kvm("kvm_emulate_insn", "10:ffffffff81000000: (prot64)"),
        insn(0xffff_ffff_8100_0000, 0x10, &[], 9, false)
    );
    assert_eq!(kvm("kvm_emulate_insn", "0:1000: ff c0"), insn(0x1000, 0, &[0xff, 0xc0], 0, false));
    assert_eq!(
        kvm("kvm_emulate_insn", "0:1000: ff c0 FAIL"),
        insn(0x1000, 0, &[0xff, 0xc0], 0, true)
    );
    // -R: `rip=1000 csbase=0` are bare hex.
    assert_eq!(
        kvm(
            "kvm_emulate_insn",
            "rip=1000 csbase=0 len=2 insn=ARRAY[ff, c0, e6, 10, eb, fa, 00, 00, 00, 00, 00, 00, 00, 00, 00] flags=9 failed=0"
        ),
        insn(0x1000, 0, &[0xff, 0xc0], 9, false)
    );
}

#[test]
fn kvmmmu_pages_kernel_plugin_and_old_renderings() {
    let mmu = |body: &str| decode("kvmmmu", "kvm_mmu_get_page", body);
    // The kernel's print determines level, bit 4, quadrant, direct, access, invalid, efer_nx
    // and ad_disabled; never guest_mode or smm.
    let kernel = MmuPage::ROLE_KNOWN_KERNEL_PRINT;
    let plugin = MmuPage::ROLE_KNOWN_PLUGIN;
    let page = |valid_gen, gfn, role, known, root_count, unsync| MmuPage {
        mmu_valid_gen: valid_gen,
        gfn,
        role: MmuPageRole(role),
        role_known: known,
        root_count,
        unsync,
    };
    assert_eq!(
        mmu("sp gen 0 gfn 2 l4 8-byte q0 wux nxe ad root 0 sync new"),
        EventKind::KvmMmuGetPage {
            page: page(Some(0), 2, 0x1704, kernel, 0, false),
            created: true
        }
    );
    let role = 1 | (1 << 4) | (3 << 5) | (1 << 7) | (4 << 8) | (1 << 11) | (1 << 16);
    assert_eq!(
        mmu("sp gen 1 gfn 7f l1 4-byte q3 direct -u- invalid !nxe !ad root 2 unsync existing"),
        EventKind::KvmMmuGetPage {
            page: page(Some(1), 0x7f, role, kernel, 2, true),
            created: false
        }
    );
    // trace-cmd's plugin (pre-2019 role layout: raw bit 4 printed as `pae`, cr0_wp as `wp`).
    assert_eq!(
        mmu("new sp gfn 2 4 q0 wux !pae nxe !wp root 0 sync"),
        EventKind::KvmMmuGetPage { page: page(None, 2, 0x1704, plugin, 0, false), created: true }
    );
    assert_eq!(
        mmu("existing sp gfn 5 4 q0 wux pae nxe wp smep root 1 unsync"),
        EventKind::KvmMmuGetPage {
            page: page(None, 5, 4 | 0x10 | 0x700 | 0x1000 | 0x2000 | 0x4000, plugin, 1, true),
            created: false
        }
    );
    // `WORD: %08x` (the file's endianness differs from the host's): the raw word, all known.
    let EventKind::KvmMmuGetPage { page: w, .. } = mmu("new sp gfn 2 WORD: 00021704 root 0 sync")
    else {
        panic!("not a get_page")
    };
    assert_eq!((w.role.0, w.role_known, w.guest_mode()), (0x21704, u32::MAX, Some(true)));
    // The kernel print never says guest_mode or smm: unknown, not 0.
    let EventKind::KvmMmuGetPage { page: k, .. } =
        mmu("sp gen 0 gfn 2 l4 8-byte q0 wux nxe ad root 0 sync new")
    else {
        panic!("not a get_page")
    };
    assert_eq!((k.guest_mode(), k.smm(), k.direct()), (None, None, Some(false)));
    // Old kernels: bare level, ` pae` for 8-byte gptes, no gen/ad.
    assert_eq!(
        mmu("sp gfn 2 4 pae q0 wux nxe root 0 sync new"),
        EventKind::KvmMmuGetPage { page: page(None, 2, 0x1704, kernel, 0, false), created: true }
    );
    assert_eq!(
        decode(
            "kvmmmu",
            "kvm_mmu_prepare_zap_page",
            "sp gen 0 gfn 5 l4 8-byte q0 wux invalid nxe ad root 0 sync"
        ),
        EventKind::KvmMmuPrepareZapPage { page: page(Some(0), 5, 0x1f04, kernel, 0, false) }
    );
    assert_eq!(
        decode("kvmmmu", "kvm_mmu_pagetable_walk", "addr 7f001000 pferr 10 F"),
        EventKind::KvmMmuPagetableWalk { addr: 0x7f00_1000, pferr: 0x10 }
    );
    assert_eq!(
        decode("kvmmmu", "kvm_mmu_paging_element", "pte 3003 level 4"),
        EventKind::KvmMmuPagingElement { pte: 0x3003, level: 4 }
    );
    assert_eq!(
        decode("kvmmmu", "kvm_mmu_walker_error", "pferr 5 P|U"),
        EventKind::KvmMmuWalkerError { pferr: 5 }
    );
}

#[test]
fn untyped_events_keep_fields_or_text() {
    let EventKind::Other(o) =
        kvm("kvm_write_tsc_offset", "vcpu=0 prev=0 next=18446742744508802333")
    else {
        panic!()
    };
    assert_eq!(o.fields.len(), 3);
    assert_eq!(
        o.fields.get("next"),
        Some(&vmxray_events::FieldValue::U64(18_446_742_744_508_802_333))
    );
    let EventKind::Other(o) = kvm("kvm_fpu", "load") else { panic!() };
    assert_eq!(o.fields.get("text"), Some(&vmxray_events::FieldValue::Str("load".into())));
    assert_eq!(&*o.name, "kvm_fpu");
}

#[test]
fn lost_markers_take_the_next_timestamp_of_their_cpu_and_are_counted() {
    let text = "\
cpus=2
CPU:1 [12 EVENTS DROPPED]
            a-10    [000]   5.000001: kvm_fpu: load
            b-11    [001]   5.000002: kvm_fpu: load
CPU:0 [EVENTS DROPPED]
CPU:0 [LOST 3 EVENTS]
";
    let (events, r) = read(text, ReadOptions::default());
    let events: Vec<Event> = events.into_iter().map(Result::unwrap).collect();
    let summary: Vec<_> = events.iter().map(|e| (e.name().to_owned(), e.cpu, e.ts)).collect();
    assert_eq!(
        summary,
        [
            ("kvm_fpu".into(), 0, 5_000_001_000),
            ("lost_events".into(), 1, 5_000_002_000),
            ("kvm_fpu".into(), 1, 5_000_002_000),
            // No later event on CPU 0: at the end, with CPU 0's last timestamp.
            ("lost_events".into(), 0, 5_000_001_000),
            ("lost_events".into(), 0, 5_000_001_000),
        ]
    );
    assert_eq!(events[1].kind, EventKind::Lost { count: Some(12) });
    assert_eq!(events[3].kind, EventKind::Lost { count: None });
    assert_eq!(events[4].kind, EventKind::Lost { count: Some(3) });
    assert_eq!(r.stats().lost_total(), (15, true));
    assert_eq!(r.stats().lost[&0].markers, 2);
    assert_eq!(r.stats().events, 5);
}

#[test]
fn bad_lines_stop_strict_mode_at_their_line_and_are_counted_in_permissive_mode() {
    let text = "\
# tracer: nop
            a-10    [000]   5.000001: kvm_fpu: load
            a-10    [000] garbage 5.000001: x
            a-10    [000]   5.000002: kvm_cr: cr_write banana
            a-10    [000]   5.000003: kvm_cr: cr_write 3 = 0x1000
this is not a trace line: prose is skipped in every mode
";
    let (events, _) = read(text, ReadOptions::default());
    assert_eq!(events.len(), 2);
    assert!(events[0].is_ok());
    let mut r = TextReader::new("<t>", text.as_bytes(), ReadOptions::default());
    r.next().unwrap().unwrap();
    let err = r.next().unwrap().unwrap_err();
    assert_eq!(err.at, Location::Line(3));
    assert!(
        err.to_string().starts_with("<t>:3: Unrecognized line: expected an event line"),
        "{err}"
    );
    assert!(r.next().is_none());

    let (events, r) = read(text, ReadOptions { permissive: true, ..ReadOptions::default() });
    let ok: Vec<_> = events.into_iter().map(Result::unwrap).collect();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].kind, EventKind::KvmCr { write: true, cr: 3, val: 0x1000 });
    assert_eq!(r.stats().skipped, 2);
    let problems: Vec<_> = r.stats().problems.iter().map(|p| p.at).collect();
    assert_eq!(problems, [Location::Line(3), Location::Line(4)]);
    assert!(matches!(&r.stats().problems[1].kind, ReadErrorKind::Text(_)));
    assert!(r.stats().problems[1].to_string().contains("Cannot read the kvm_cr text"));
    assert!(r.stats().problems[1].to_string().contains("--permissive"));
    assert_eq!(r.stats().non_trace_lines, 1);
    assert_eq!(r.stats().non_trace[0].line, 6);
}

#[test]
fn memory_stays_bounded_on_hostile_inputs_without_losing_anything() {
    // 3000 markers for a CPU that never shows up again, then 5000 distinct event names.
    let mut text = String::from("            a-1     [009]   1.000000: kvm_fpu: load\n");
    for _ in 0..3000 {
        text.push_str("CPU:7 [LOST 2 EVENTS]\n");
    }
    for i in 0..5000 {
        text.push_str(&format!("            a-1     [000]   2.{i:06}: ev_{i}: x=1\n"));
    }
    let (events, r) = read(&text, ReadOptions::default());
    let events: Vec<Event> = events.into_iter().map(Result::unwrap).collect();
    let lost = events.iter().filter(|e| e.kind == EventKind::Lost { count: Some(2) }).count();
    assert_eq!(lost, 3000);
    assert_eq!(r.stats().lost_total(), (6000, false));
    let named: Vec<_> = events.iter().filter(|e| e.name().starts_with("ev_")).collect();
    assert_eq!(named.len(), 5000);
    assert!(named.iter().enumerate().all(|(i, e)| e.name() == format!("ev_{i}")));
    assert_eq!(r.stats().events, 1 + 3000 + 5000);
}
