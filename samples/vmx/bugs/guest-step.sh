#!/bin/busybox sh
# Runs inside the real-VMX lab's emulated host (busybox sh) as a `vmxray lab --vmx --vmx-step`
# command: swaps in one KVM module set built by build.sh, then runs one vmxray lab scenario
# recorded by vmxray itself.
#
#   [env VMXBUGS_TIMEOUT=SECS] /bin/vmxbugs-step VARIANT 'KVM_INTEL_PARAMS' SCENARIO [ARGS...]
#   env VMXBUGS_HOST=GUEST,GUEST,... /bin/vmxbugs-step VARIANT 'KVM_INTEL_PARAMS' SCENARIO [ARGS...]
#       (a host: SCENARIO and the other guests at once, each its own VM, in one recording)
#
# VARIANT is a directory /lib/vmxbugs/VARIANT/ holding kvm.ko, kvm_intel.ko and BUILD-INFO
# (put there with --extra by record.sh); KVM_INTEL_PARAMS is one word with commas for spaces
# (the harness splits a step at whitespace), e.g. nested=1,ept=0. The step's directory is the
# working directory: the trace goes to ./trace.dat (+ .truth.json for vmx-* scenarios), and
# With VMXBUGS_TIMEOUT the scenario runs unrecorded under `vmxray record ARGS -- timeout`, so a
# hung vCPU cannot take the trace with it. What the run needs for its provenance goes to
# ./vmxbugs.txt (the module set's BUILD-INFO, the
# kvm_intel parameters as loaded, the taint flags, KVM's dmesg lines).
set -u
variant=$1
params=$(echo "$2" | tr , ' ')
scenario=$3
shift 3
dir=/lib/vmxbugs/$variant
say() { echo "VMXBUGS: $*"; }

for m in kvm_intel kvm; do
    grep -q "^$m " /proc/modules && { rmmod $m || { say "rmmod $m failed"; exit 3; }; }
done
grep -q '^irqbypass ' /proc/modules || insmod /lib/modules/irqbypass.ko
dmesg -c > /dev/null
# shellcheck disable=SC2086 # the parameters are separate words on purpose
if ! insmod "$dir/kvm.ko" || ! insmod "$dir/kvm_intel.ko" $params; then
    say "$variant: the module set did not load"
    dmesg | tail -20
    exit 4
fi
say "$variant loaded with '$params'"
{
    echo "variant $variant"
    sed 's/^/build /' "$dir/BUILD-INFO"
    for p in /sys/module/kvm_intel/parameters/*; do echo "param kvm_intel.${p##*/} $(cat "$p")"; done
    echo "tainted $(cat /proc/sys/kernel/tainted)"
    echo "scenario $scenario $*"
} > vmxbugs.txt

if [ -n "${VMXBUGS_HOST:-}" ]; then
    # A host of several VMs: the scenario and, at the same time, each guest of VMXBUGS_HOST
    # (commas between them), each its own process and VM, recorded into one trace: only the
    # scenario's VM meets the bug; the others must replay clean.
    guests="/bin/vmxray lab $scenario --no-record"
    for g in $(echo "$VMXBUGS_HOST" | tr , ' '); do
        guests="$guests & /bin/vmxray lab $g --no-record"
    done
    echo "host $guests" >> vmxbugs.txt
    /bin/vmxray record -o trace.dat "$@" -- sh -c "$guests & wait"
elif [ -n "${VMXBUGS_TIMEOUT:-}" ]; then
    # A bug may leave the vCPU spinning inside KVM_RUN: record from outside and kill the lab
    # run after VMXBUGS_TIMEOUT seconds, so that the trace survives ("$@" is for the recorder).
    /bin/vmxray record -o trace.dat "$@" -- \
        timeout -s KILL "$VMXBUGS_TIMEOUT" /bin/vmxray lab "$scenario" --no-record
else
    /bin/vmxray lab "$scenario" "$@" -o trace.dat
fi
rc=$?
say "$variant $scenario: vmxray lab rc=$rc"
{
    echo "rc $rc"
    echo "tainted-after $(cat /proc/sys/kernel/tainted)"
    dmesg | grep -v -E '^\[ *[0-9.]+\] (kvm: (loading out-of-tree|module verification failed)|VMXLAB)' \
        | sed 's/^/dmesg /' | tail -60
} >> vmxbugs.txt
exit $rc
