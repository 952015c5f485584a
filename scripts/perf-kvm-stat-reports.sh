#!/usr/bin/env bash
# Regenerates perf's reports beside the real-VMX perf.data samples (samples/real/vmx/*.perf.data,
# see samples/README.md): for each sample and table (vmexit, ioport, and mmio where the guest
# did MMIO), `perf kvm -i FILE stat report` with the default key, --key=time, each vCPU and the
# lab's process, into FILE.perf-kvm-stat-TABLE.txt. tests/it/perf_kvm_stat.rs checks
# `vmxray stats --event TABLE` against every table row by row.
#
# Each section of a report file is the command line after "$ ", then what perf printed: its
# table goes to stderr (pr_info), which is kept verbatim except libtraceevent's complaints
# about formats of events the table does not use (kvm_inj_exception, kvmmmu's page events),
# which depend on the libtraceevent perf is linked with.
#
#   scripts/perf-kvm-stat-reports.sh          # needs perf (Debian: linux-perf)
set -euo pipefail
cd "$(dirname "$0")/../samples/real/vmx"
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 2; }
version=$(perf version)

for file in *.perf.data; do
    tables=(vmexit ioport)
    case $file in mmio-*) tables+=(mmio) ;; esac
    # The lab process: the pid of most samples; the vCPUs: every vcpu_id of a kvm_entry.
    pid=$(perf script -i "$file" -F pid 2>/dev/null | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
    vcpus=$(perf script -i "$file" 2>/dev/null | sed -n 's/.*kvm:kvm_entry: *vcpu \([0-9]*\).*/\1/p' | sort -un)
    for table in "${tables[@]}"; do
        out=$file.perf-kvm-stat-$table.txt
        {
            echo "# $version; the sections below: \"\$ \" and the command, then its output (see"
            echo "# scripts/perf-kvm-stat-reports.sh; libtraceevent's warnings about unused formats left out)"
            options=("" "--key=time")
            for v in $vcpus; do options+=("--vcpu=$v"); done
            options+=("--pid=$pid")
            for opt in "${options[@]}"; do
                # shellcheck disable=SC2086 # $opt is one option or none
                cmd=(perf kvm -i "$file" stat report --event="$table" $opt)
                echo "\$ ${cmd[*]}"
                "${cmd[@]}" 2>&1 >/dev/null |
                    grep -Ev '^libtraceevent: |^  \[[a-z0-9_]+:[a-z0-9_]+\] |^  Error: ' || true
            done
        } >"$out"
        echo "wrote $out"
    done
done
