#!/usr/bin/env bash
# Regenerates the real-VMX samples in samples/real/vmx/ (see samples/README.md, "real/vmx/"):
# every lab guest under a real kvm_intel (Bochs' emulated Haswell, Debian 6.1 and 6.12), with
# EPT and with shadow paging, and the nested L1-Linux runs recorded in L0. Four Bochs boots,
# one after the other (~25-35 minutes on a 2-core machine); the boot images are cached under
# target/vmxlab/. Needs root once for scripts/setup.sh (bochs, xorriso, qemu, ...).
#
#   scripts/vmx-lab.sh [--kernel 6.1|6.12|all] [--only single|nested] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

kernel=all
only=
keep=()
while [ $# -gt 0 ]; do
    case $1 in
        --kernel) kernel=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --keep) keep=(--keep); shift ;;
        *) echo "usage: $0 [--kernel 6.1|6.12|all] [--only single|nested] [--keep]" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
cargo build --bin vmxray
bin=target/debug/vmxray
out=samples/real/vmx
mkdir -p "$out"

if [ "$only" != nested ]; then
    # Every kvm and kvmmmu event (--profile all): the guests are tiny, the traces ~18 KB.
    "$bin" lab --vmx cr3-switch triple-fault pf-triple-fault io-loop=200 multi-vcpu=50 mmio \
        --ept both --profile all --kernel "$kernel" -o "$out" "${keep[@]}"
fi
if [ "$only" != single ]; then
    # L1's whole boot is ~90,000 L0 events; the flight recorder keeps the last 1 MiB of ring
    # pages before L1's reset (a TRIPLE_FAULT exit, reboot=t): the L2 run and L1's teardown.
    # ept=0 in L0: L1 has no EPT, so its KVM shadows L2's page tables too.
    "$bin" lab --vmx linux-l1 --ept both --profile exits \
        --flight-recorder 1M --trigger exit-reason=TRIPLE_FAULT \
        --kernel "$kernel" -o "$out" "${keep[@]}"
fi
ls -l "$out"
