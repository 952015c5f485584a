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

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

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
t0=$(now)
trace-cmd report -i "$OUT/x.dat" > "$OUT/x.txt" 2> "$OUT/report.err"
t1=$(now)
report_s=$(elapsed "$t0" "$t1")
bytes=$(stat -c %s "$OUT/x.txt")
lines=$(wc -l < "$OUT/x.txt")
echo "trace-cmd report: $report_s s, $bytes bytes, $lines lines"

echo "== vmxray text reader (release)"
(cd "$REPO" && cargo build --release -q -p vmxray-capture --example text_parse)
parser="$REPO/target/release/examples/text_parse"
"$parser" "$OUT/x.txt" > /dev/null 2> "$OUT/warmup.err" || { cat "$OUT/warmup.err"; exit 1; }
best=""
for run in 1 2 3; do
    t0=$(now)
    "$parser" "$OUT/x.txt" 2> "$OUT/parse.err"
    t1=$(now)
    s=$(elapsed "$t0" "$t1")
    echo "run $run: $s s — $(cat "$OUT/parse.err")"
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $s < $best else 1)"; then best=$s; fi
done
events=$(sed -E 's/^([0-9]+) events.*/\1/' "$OUT/parse.err")

python3 - "$bytes" "$events" "$best" "$report_s" << 'PY'
import sys
size, events, parse_s, report_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"== summary: {size/1e6:.1f} MB, {events} events")
print(f"vmxray parse (best of 3, whole process): {parse_s:.3f} s = {size/parse_s/1e6:.0f} MB/s, {events/parse_s/1e6:.2f} M events/s")
print(f"trace-cmd report producing the text:     {report_s:.3f} s")
print(f"ratio: parsing is {report_s/parse_s:.1f}x faster than trace-cmd report")
PY
