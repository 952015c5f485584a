#!/usr/bin/env bash
# Benchmarks vmxray's text reader against `trace-cmd report` on a large real trace.
#
# 1. records `guest_io_loop.py N` (default 100000 iterations) with
#    `trace-cmd record -e kvm -e kvmmmu` through the locked-ftrace wrapper
#    (shared/reference/trace-formats.md §3.6), restoring tracing_on and the kvm/kvmmmu
#    `enable` files afterwards (trace-cmd leaves tracing_on at 0);
# 2. times `trace-cmd report` of it into a text file (~160 MB, ~1.9M events);
# 3. times vmxray's parse of that text (release build of the `text_parse` example);
# 4. prints MB/s, events/s and the ratio.
#
# usage: scripts/bench-text.sh            (as root; reuses $OUT/x.dat unless FORCE_RECORD=1)
# env:   N=100000  OUT=/tmp/vmxray-bench-text  SHARED=/work/shared  FORCE_RECORD=0
set -euo pipefail

N=${N:-100000}
OUT=${OUT:-/tmp/vmxray-bench-text}
SHARED=${SHARED:-/work/shared}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"

# measure STDOUT_FILE STDERR_FILE CMD...: runs CMD; prints "wall cpu" seconds (cpu = user + sys, which load from other users of
# the machine inflates much less than wall time).
measure() {
    python3 - "$@" << 'PY'
import resource, subprocess, sys, time
out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.monotonic()
with open(out, "wb") as f, open(err, "wb") as e:
    subprocess.run(cmd, stdout=f, stderr=e, check=True)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {ru.ru_utime + ru.ru_stime:.3f}")
PY
}

tracefs=$(awk '$3 == "tracefs" { print $2; exit }' /proc/mounts)
if [ -z "$tracefs" ]; then
    mount -t tracefs nodev /sys/kernel/tracing
    tracefs=/sys/kernel/tracing
fi
if ! command -v trace-cmd > /dev/null; then
    apt-get update && apt-get install -y trace-cmd
fi

if [ ! -s "$OUT/x.dat" ] || [ "${FORCE_RECORD:-0}" = 1 ]; then
    tracing_on=$(cat "$tracefs/tracing_on")
    kvm_enable=$(cat "$tracefs/events/kvm/enable")
    kvmmmu_enable=$(cat "$tracefs/events/kvmmmu/enable")
    restore() {
        echo "$tracing_on" > "$tracefs/tracing_on"
        # `X` (some events on) cannot be written back; trace-cmd only turns events off.
        case "$kvm_enable" in 0|1) echo "$kvm_enable" > "$tracefs/events/kvm/enable" ;; esac
        case "$kvmmmu_enable" in 0|1) echo "$kvmmmu_enable" > "$tracefs/events/kvmmmu/enable" ;; esac
    }
    trap restore EXIT
    echo "== recording guest_io_loop.py $N"
    unshare -m "$SHARED/tools/trace-cmd-locked-ftrace.sh" \
        trace-cmd record -e kvm -e kvmmmu -o "$OUT/x.dat" -- \
        python3 "$SHARED/tools/guest_io_loop.py" "$N" > "$OUT/record.log" 2>&1
    restore
    trap - EXIT
fi

echo "== trace-cmd report"
read -r report_s report_cpu < <(measure "$OUT/x.txt" "$OUT/report.err" trace-cmd report -i "$OUT/x.dat")
bytes=$(stat -c %s "$OUT/x.txt")
lines=$(wc -l < "$OUT/x.txt")
echo "trace-cmd report: $report_s s wall, $report_cpu s cpu, $bytes bytes, $lines lines"

echo "== vmxray text reader (release)"
(cd "$REPO" && cargo build --release -q -p vmxray-capture --example text_parse)
parser="$REPO/target/release/examples/text_parse"
"$parser" "$OUT/x.txt" > /dev/null 2> "$OUT/warmup.err" || { cat "$OUT/warmup.err"; exit 1; }
best=""; best_cpu=""
for run in 1 2 3; do
    read -r s cpu < <(measure /dev/null "$OUT/parse.err" "$parser" "$OUT/x.txt")
    echo "run $run: $s s wall, $cpu s cpu"
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $s < $best else 1)"; then best=$s; fi
    if [ -z "$best_cpu" ] || python3 -c "import sys; sys.exit(0 if $cpu < $best_cpu else 1)"; then best_cpu=$cpu; fi
done
cat "$OUT/parse.err"
events=$(sed -E 's/^([0-9]+) events.*/\1/' "$OUT/parse.err")

python3 - "$bytes" "$events" "$best" "$best_cpu" "$report_s" "$report_cpu" << 'PY'
import sys
size, events = int(sys.argv[1]), int(sys.argv[2])
parse_s, parse_cpu, report_s, report_cpu = map(float, sys.argv[3:7])
print(f"== summary: {size/1e6:.1f} MB, {events} events (best of 3, whole process incl. reading)")
for label, p, r in (("wall", parse_s, report_s), ("cpu ", parse_cpu, report_cpu)):
    print(f"{label}: vmxray {p:.3f} s = {size/p/1e6:.0f} MB/s, {events/p/1e6:.2f} M events/s; "
          f"trace-cmd report {r:.3f} s; ratio {r/p:.1f}x")
PY
