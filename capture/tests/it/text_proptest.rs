//! Arbitrary bytes and mutated trace lines never panic the text reader.

use proptest::prelude::*;
use vmxray_capture::ReadOptions;
use vmxray_capture::read::text::TextReader;

fn drain(bytes: &[u8], permissive: bool) -> usize {
    let r = TextReader::new("<prop>", bytes, ReadOptions { permissive, ..ReadOptions::default() });
    r.count()
}

const SEEDS: &[&str] = &[
    "   qemu vcpu-0 x-15045   [001] d..1.   511.173882: kvm_exit: vcpu 0 reason CR_ACCESS rip 0x1 info1 0x3 info2 0x0 intr_info 0x0 error_code 0x0",
    "   qemu vcpu-0 x-17796 [001]   665.848413: kvm_mmu_get_page:     new sp gfn 2 4 q0 wux !pae nxe !wp root 0 sync",
    "   qemu vcpu-0 x 19254 [001]   759.456761:            kvmmmu:kvm_mmu_get_page: [FAILED TO PARSE] mmu_valid_gen=0 gfn=2 role=5892",
    "   qemu vcpu-0 x-17796 [001]   665.848425: kvm_emulate_insn:      rip=1000 csbase=0 len=2 insn=ARRAY[ff, c0] flags=9 failed=0",
    "qemu vcp-17796   1d..1.   665.844340: kvm_nested_vmenter: rip: 0x1 vmcs: 0x2 nested_rip: 0x3 int_ctl: 0x0 event_inj: 0x0 nested_ept=y nested_eptp: 0x5",
    "CPU:1 [LOST 330608 EVENTS]",
    "   qemu vcpu-0 x-15045   [001] .....   511.176454: kvm_mmu_get_page: mmu_valid_gen=(0) gfn=0x2 (2) role=0x1704 (5892) root_count=0x0 (0)",
    "  759.455910:        kvm:kvm_inj_exception: #PF (0x2) [reinjected]",
    "15045 1 511173882349 type: 82",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        drain(&bytes, false);
        drain(&bytes, true);
    }

    #[test]
    fn arbitrary_text_lines_never_panic(lines in proptest::collection::vec("[ -~]{0,120}", 0..12)) {
        let text = lines.join("\n");
        drain(text.as_bytes(), true);
    }

    #[test]
    fn mutated_real_lines_never_panic(
        seed in 0..SEEDS.len(),
        cut in 0usize..200,
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
    ) {
        let mut line = SEEDS[seed].as_bytes().to_vec();
        for (at, byte) in edits {
            if !line.is_empty() {
                let at = at % line.len();
                line[at] = byte;
            }
        }
        line.truncate(cut.max(1));
        line.push(b'\n');
        let text = [line.as_slice(), SEEDS[seed].as_bytes()].concat();
        drain(&text, true);
        drain(&text, false);
    }

    #[test]
    fn permissive_mode_yields_every_good_line(garbage in "[ -~]{1,80}") {
        // A good line after any garbage line is still read.
        let good = "            a-10    [000]   5.000001: kvm_cr: cr_write 3 = 0x1000";
        let text = format!("{garbage}\n{good}\n");
        let r = TextReader::new("<prop>", text.as_bytes(), ReadOptions { permissive: true, ..ReadOptions::default() });
        let events: Vec<_> = r.filter_map(Result::ok).collect();
        prop_assert!(events.iter().any(|e| e.name() == "kvm_cr" && e.ts == 5_000_001_000));
    }
}
