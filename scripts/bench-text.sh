#!/usr/bin/env bash
# Benchmarks vmxray's text reader against `trace-cmd report` on a large real trace.
#
# 1. records `guest_io_loop.py N` (default 100000 iterations) with
#    `trace-cmd record -e kvm -e kvmmmu` through the locked-ftrace wrapper
#    (shared/reference/trace-formats.md §3.6), restoring tracing_on and the kvm/kvmmmu
#    `enable` files afterwards (trace-cmd leaves tracing_on at 0);
# 2. writes `trace-cmd report` of it to a text file (~160 MB, ~1.9M events), then times
#    `trace-cmd report > /dev/null` RUNS times;
# 3. times vmxray's parse of that text RUNS times each way (release build of the `text_parse`
#    example): as `vmxray` reads it (blocks of lines parsed in parallel on the rayon pool, one
#    thread per CPU unless RAYON_NUM_THREADS says otherwise) and with `--one-thread` (line by
#    line on one thread);
# 4. prints MB/s, events/s and the ratio to trace-cmd, wall and CPU (user + sys) time, best of
#    RUNS each (the machine may be shared: CPU time is inflated much less than wall time).
#
# usage: scripts/bench-text.sh            (as root; reuses $OUT/x.dat unless FORCE_RECORD=1)
# env:   N=100000  OUT=/tmp/vmxray-bench-text  SHARED=/work/shared  FORCE_RECORD=0  RUNS=5
set -euo pipefail

N=${N:-100000}
RUNS=${RUNS:-5}
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

if [ ! -s "$OUT/x.txt" ] || [ "$OUT/x.txt" -ot "$OUT/x.dat" ]; then
    trace-cmd report -i "$OUT/x.dat" > "$OUT/x.txt" 2> "$OUT/report.err"
fi
bytes=$(stat -c %s "$OUT/x.txt")
lines=$(wc -l < "$OUT/x.txt")

# best CMD...: runs CMD (stdout to /dev/null) $RUNS times; prints "best_wall best_cpu".
best() {
    local b="" bc="" s cpu run
    for run in $(seq "$RUNS"); do
        read -r s cpu < <(measure /dev/null "$OUT/run.err" "$@")
        echo "  run $run: $s s wall, $cpu s cpu" >&2
        if [ -z "$b" ] || python3 -c "import sys; sys.exit(0 if $s < $b else 1)"; then b=$s; fi
        if [ -z "$bc" ] || python3 -c "import sys; sys.exit(0 if $cpu < $bc else 1)"; then bc=$cpu; fi
    done
    echo "$b $bc"
}

echo "== trace-cmd report > /dev/null ($bytes bytes, $lines lines)"
read -r report_s report_cpu < <(best trace-cmd report -i "$OUT/x.dat")

echo "== vmxray text reader (release)"
(cd "$REPO" && cargo build --release -q -p vmxray-capture --example text_parse)
parser="$REPO/target/release/examples/text_parse"
"$parser" "$OUT/x.txt" > /dev/null 2> "$OUT/warmup.err" || { cat "$OUT/warmup.err"; exit 1; }
cat "$OUT/warmup.err"
events=$(sed -E 's/^([0-9]+) events.*/\1/' "$OUT/warmup.err")
threads=$(sed -E 's/.*\(([0-9]+) thread.*/\1/' "$OUT/warmup.err")
echo "-- parallel ($threads rayon threads)"
read -r par_s par_cpu < <(best "$parser" "$OUT/x.txt")
echo "-- one thread"
read -r one_s one_cpu < <(best "$parser" "$OUT/x.txt" --one-thread)

python3 - "$bytes" "$events" "$threads" "$report_s" "$report_cpu" "$par_s" "$par_cpu" "$one_s" "$one_cpu" << 'PY'
import sys
size, events, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
report_s, report_cpu, par_s, par_cpu, one_s, one_cpu = map(float, sys.argv[4:10])
print(f"== summary: {size/1e6:.1f} MB, {events} events; best of each, whole process incl. reading")
print(f"trace-cmd report:          {report_s:.3f} s wall, {report_cpu:.3f} s cpu")
for label, w, c in ((f"vmxray parallel ({threads} thr):", par_s, par_cpu),
                    ("vmxray one thread:", one_s, one_cpu)):
    print(f"{label:26} {w:.3f} s wall = {size/w/1e6:.0f} MB/s, {events/w/1e6:.2f} M events/s, "
          f"{report_s/w:.1f}x trace-cmd; {c:.3f} s cpu = {size/c/1e6:.0f} MB/s, "
          f"{report_cpu/c:.1f}x trace-cmd cpu")
PY
