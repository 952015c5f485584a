#!/bin/sh
# Regenerates the recordings of our own L1 hypervisor under samples/real/vmx/ (l1-*.dat and
# their .truth.json) with the real-VMX lab harness (`vmxray lab --vmx`, samples/vmx/README.md):
# every vmx-* scenario but vmx-init, with kvm_intel ept=1 and ept=0 (`-shadow`), --profile mmu,
# plus two --profile vmcs recordings, on each kernel generation given (default: 6.1 6.12).
# One Bochs boot per kernel: several minutes each on an idle 2-core machine.
#
# vmx-init needs two emulated host CPUs (with one, the emulated host stalls while the two vCPU
# threads of the L1 run); the harness boots one, so its samples are made by
# samples/vmx/l1/smp/run.sh (see samples/README.md).
#
#   scripts/vmx-l1-samples.sh [6.1] [6.12]
set -eu
cd "$(dirname "$0")/.."
KERNELS=${*:-6.1 6.12}
cargo build -q -p vmxray
make -s -C samples/vmx/l1 O="$PWD/target/vmx-l1"
OUT=target/vmx-l1/samples
rm -rf "$OUT" && mkdir -p "$OUT"
# Scenarios the L1 runs with and without EPT for L1 go twice (ept=1, ept=0); those that need
# EPT for L1 (nested EPT needs L0's EPT) and the vmcs-profile recordings are custom steps (ept=1).
BOTH="vmx-io vmx-noept=2 vmx-hlt vmx-vmfail vmx-hwfail vmx-triple-fault"
IMG=/lib/vmxray/l1.bin
step() { echo "$1=vmxray lab $2 --profile $3 --l1-image $IMG -o {out}/trace.dat"; }
for k in $KERNELS; do
    # shellcheck disable=SC2086
    nice -n 10 target/debug/vmxray lab --vmx $BOTH --kernel "$k" --ept both --profile mmu \
        --extra "$PWD/target/vmx-l1/l1.bin:$IMG" --guest-arg --l1-image --guest-arg $IMG \
        --vmx-step "$(step l1-rr-3 vmx-rr=3 mmu)" \
        --vmx-step "$(step l1-hlt-ept vmx-hlt-ept mmu)" \
        --vmx-step "$(step l1-invept vmx-invept mmu)" \
        --vmx-step "$(step l1-rr-3-vmcs vmx-rr=3 vmcs)" \
        --vmx-step "$(step l1-hlt-vmcs vmx-hlt vmcs)" \
        -o "$OUT"
done
mkdir -p samples/real/vmx
# vmx-rr-3-ept-6.1.dat -> l1-rr-3-6.1.dat, vmx-hlt-shadow-6.1.dat -> l1-hlt-shadow-6.1.dat
for f in "$OUT"/*.dat "$OUT"/*.dat.truth.json; do
    [ -e "$f" ] || continue
    base=$(basename "$f")
    case "$base" in
    vmx-*) new=$(echo "$base" | sed -e 's/^vmx-/l1-/' -e 's/-ept-\([0-9.]*\.dat\)/-\1/') ;;
    *) new=$base ;;
    esac
    cp "$f" "samples/real/vmx/$new"
    echo "samples/real/vmx/$new"
done
