#!/usr/bin/env bash
# Records the lab scenario of each bug on the stock and on the buggy KVM modules, in the
# real-VMX lab (Bochs + Debian kernel, `vmxray lab --vmx`), all steps of one kernel in one boot.
#
#   samples/vmx/bugs/record.sh [--kernel 6.1|6.12] [--out DIR] [--cpu-model MODEL] BUG...
#   samples/vmx/bugs/record.sh --list
#   samples/vmx/bugs/record.sh [--kernel K] --smoke
#
# --smoke runs no bug scenario: every patched set runs the L1's nested round robin (vmx-rr=3,
# ept=1), and (b) and (d) also the one without EPT (vmx-noept=2, ept=0) — a check that a set
# loads and leaves nested VMX working where its bug is not triggered (steps smoke-VARIANT).
#
# BUG is a row of the table below (a, c, d, ...). For each BUG two steps run, `BUG-stock` (the
# stock module set built by build.sh from the same source) and `BUG-buggy` (the bug's patch),
# each: unload kvm/kvm_intel, insmod the set with the row's kvm_intel parameters, run
# `vmxray lab SCENARIO --profile PROFILE -o trace.dat` (guest-step.sh). The traces come back as
# DIR/BUG-{stock,buggy}-KERNEL.dat (+ .truth.json from vmx-* scenarios, + .vmxbugs.txt with the
# module set, its parameters, the taint flags and KVM's dmesg lines). DIR defaults to
# target/vmxbugs/rec/KERNEL.
#
# Uses the harness's documented interface only (lab-harness.md): --vmx-step, --extra,
# --vmxray, --cpu-model, --keep. The binaries, all overridable; once the vmx-lab and vmx-l1
# branches are merged, the workspace's own build is all three:
#   VMXRAY_LAB    the host-side vmxray with `lab --vmx`          (default target/debug/vmxray)
#   VMXRAY_GUEST  the vmxray run inside for rows marked `l1` (the vmx-* scenarios; same default)
#   VMXRAY_OWN    the vmxray run inside for rows marked `own` (init-sipi; same default)
#   L1_IMAGE      the L1 hypervisor image, put inside as /bin/l1.bin (default target/vmx-l1/l1.bin)
# The harness's own VMXLAB_DIR and VMXLAB_CACHE pass through (its defaults: samples/vmx and
# target/vmxlab of the workspace it was built in).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
dir=${VMXBUGS_DIR:-$repo/target/vmxbugs}

# bug | patch (variant) | scenario | kvm_intel parameters | profile | Bochs CPU model |
# binary run inside (l1: VMXRAY_GUEST, the L1 helper's build with the vmx-* scenarios; own:
# VMXRAY_OWN, a build of this branch) | guest seconds before a hung run is killed (- = none)
table() {
    cat <<'EOF'
a       a-lazy-guest-cr3     vmx-hlt      nested=1,ept=1  exits  corei7_haswell_4770  l1   -
a-vmcs  a-lazy-guest-cr3     vmx-hlt      nested=1,ept=1  vmcs   corei7_haswell_4770  l1   -
b       b-late-vmfail-cr3    vmx-late-vmfail  nested=1,ept=0  mmu    corei7_haswell_4770  l1   -
c       c-invept-no-free     vmx-invept   nested=1,ept=1  exits  corei7_haswell_4770  l1   -
d       d-init-no-mmu-reset  init-sipi    nested=1,ept=0  mmu    corei7_haswell_4770  own  30
x1      x1-ept-violation-rwx      vmx-ept-upper-nox  nested=1,ept=1  exits  corei7_haswell_4770  l1   -
x2      x2-pae-pdptrs-nested-ept  vmx-pae-pdpte      nested=1,ept=1  exits  corei7_haswell_4770  l1   -
x3      x3-lmsw-exit-routing      vmx-lmsw           nested=1,ept=1  exits  corei7_haswell_4770  l1   -
f       f-pml-in-vmcs02      vmx-dirty    nested=1,ept=1,eptad=1,pml=1  exits  corei7_skylake_x  l1   -
EOF
}

log() { echo "record.sh: $*" >&2; }

kernel=6.1 out="" cpu_model="" bugs=() smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --cpu-model) cpu_model=$2; shift 2 ;;
        --list) table; exit 0 ;;
        --smoke) smoke=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) log "unknown option $1"; exit 2 ;;
        *) bugs+=("$1"); shift ;;
    esac
done
[ ${#bugs[@]} -gt 0 ] || [ $smoke = 1 ] || { log "which bugs? (--list, --smoke)"; exit 2; }
out=${out:-$dir/rec/$kernel}
lab=${VMXRAY_LAB:-$repo/target/debug/vmxray}
guest_l1=${VMXRAY_GUEST:-$repo/target/debug/vmxray}
guest_own=${VMXRAY_OWN:-$repo/target/debug/vmxray}
l1=${L1_IMAGE:-$repo/target/vmx-l1/l1.bin}
for f in "$lab" "$l1"; do [ -f "$f" ] || { log "missing $f"; exit 2; }; done

args=(lab --vmx --kernel "$kernel" --keep --timeout "${TIMEOUT:-40m}" -o "$out"
    --extra "$here/guest-step.sh:/bin/vmxbugs-step" --extra "$l1:/bin/l1.bin")
variants=(stock)
models=()
binaries=()
for bug in "${bugs[@]}"; do
    row=$(table | awk -v b="$bug" '$1 == b')
    [ -n "$row" ] || { log "no bug '$bug' in the table (--list)"; exit 2; }
    read -r _ variant scenario params profile model binary timeout <<<"$row"
    variants+=("$variant")
    models+=("$model")
    binaries+=("$binary")
    prefix=""
    [ "$timeout" != - ] && prefix="env VMXBUGS_TIMEOUT=$timeout "
    for kind in stock buggy; do
        set_name=stock
        [ $kind = buggy ] && set_name=$variant
        args+=(--vmx-step "$bug-$kind=${prefix}/bin/vmxbugs-step $set_name $params $scenario --profile $profile")
    done
done
if [ $smoke = 1 ]; then
    for p in "$here/patches/$kernel"/*.patch; do
        v=$(basename "$p" .patch)
        variants+=("$v")
        args+=(--vmx-step "smoke-$v=/bin/vmxbugs-step $v nested=1,ept=1 vmx-rr=3 --profile exits")
        case $v in
            b-*|d-*) args+=(--vmx-step "smoke-$v-noept=/bin/vmxbugs-step $v nested=1,ept=0 vmx-noept=2 --profile exits") ;;
        esac
    done
    models+=(corei7_haswell_4770)
    binaries+=(l1)
fi
binary=$(printf '%s\n' "${binaries[@]}" | sort -u)
[ "$(echo "$binary" | wc -l)" = 1 ] \
    || { log "these bugs need different binaries inside ($binary): record them separately"; exit 2; }
guest=$guest_l1
[ "$binary" = own ] && guest=$guest_own
[ -f "$guest" ] || { log "missing $guest"; exit 2; }
args+=(--vmxray "$guest")
model=${cpu_model:-$(printf '%s\n' "${models[@]}" | sort -u)}
[ "$(echo "$model" | wc -l)" = 1 ] \
    || { log "these bugs need different CPU models ($model): record them separately"; exit 2; }
args+=(--cpu-model "$model")

"$here/build.sh" --kernel "$kernel" "${variants[@]}"
for v in $(printf '%s\n' "${variants[@]}" | sort -u); do
    m=$dir/modules/$kernel/$v
    args+=(--extra "$m/kvm.ko:/lib/vmxbugs/$v/kvm.ko" --extra "$m/kvm-intel.ko:/lib/vmxbugs/$v/kvm_intel.ko"
        --extra "$m/BUILD-INFO:/lib/vmxbugs/$v/BUILD-INFO")
done

mkdir -p "$out"
log "$lab ${args[*]}"
status=0
nice -n 10 "$lab" "${args[@]}" || status=$?
# Each step's vmxbugs.txt stays in the kept work directory; put it next to the trace. When the
# boot failed part-way (a step hung, Bochs died) the harness returns no traces, but the steps
# that finished are in the work directory: take those too.
work=$(ls -td "${VMXLAB_CACHE:-$repo/target/vmxlab}/runs/$kernel-"* 2>/dev/null | head -n1 || true)
for bug in "${bugs[@]}"; do
    for kind in stock buggy; do
        step=$work/out/$bug-$kind
        name=$out/$bug-$kind-$kernel.dat
        [ -f "$step/vmxbugs.txt" ] && cp "$step/vmxbugs.txt" "$name.vmxbugs.txt"
        if [ ! -f "$name" ] && [ -f "$step/trace.dat" ] && [ -f "$step/status" ]; then
            cp "$step/trace.dat" "$name"
            [ -f "$step/trace.dat.truth.json" ] && cp "$step/trace.dat.truth.json" "$name.truth.json"
            log "took $name from the work directory (step status: $(tr '\n' ' ' < "$step/status"))"
        fi
    done
done
log "work directory $work; traces in $out (harness status $status)"
ls -la "$out" >&2
exit $status
