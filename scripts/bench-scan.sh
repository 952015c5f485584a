#!/usr/bin/env bash
# Benchmarks `vmxray scan` (release build): a fleet of N traces of ~100k events each, scanned
# into a Parquet dataset with 1 and 2 jobs, against the single-file path (one trace, one job).
#
# The traces are one simulated `noise` trace (kernel 6.14, 8 vCPUs, ~100k events, ~18 MB of
# text) linked N times under distinct names: the scan reads and replays every one in full, so the
# work is N real traces' worth, without N × 18 MB of disk. Inputs stay in the page cache, so this
# measures CPU throughput (decode → replay → tables → zstd Parquet), not the disk.
#
# For each run it prints wall and CPU seconds (user + sys, which load from other users of the
# machine inflates much less than wall time), events/s on the wall clock and per CPU second,
# and the peak RSS (/usr/bin/time -v). The 2-job speedup is given both on wall time and as
# "CPU efficiency" (events per CPU second relative to the single-file run).
#
# usage: scripts/bench-scan.sh [N=1000] [ITERATIONS=182]
# env:   OUT=/tmp/vmxray-bench-scan (kept: the datasets are removed after each run)
#        SUBSET=N (how many of the N traces the 1-job fleet run scans; default N)
set -euo pipefail

N=${1:-1000}
ITERATIONS=${2:-182}
SUBSET=${SUBSET:-$N}
OUT=${OUT:-/tmp/vmxray-bench-scan}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN="$REPO/target/release/vmxray"

(cd "$REPO" && cargo build --release --bin vmxray -q)
rm -rf "$OUT" && mkdir -p "$OUT/fleet" "$OUT/subset"
"$BIN" simulate noise --kernel 6.14 --vcpus 8 --iterations "$ITERATIONS" -o "$OUT/base.txt"
# The single-file baseline: one trace 10x longer (~1M events), long enough to time well.
"$BIN" simulate noise --kernel 6.14 --vcpus 8 --iterations $((ITERATIONS * 10)) -o "$OUT/long.txt"
events_of() {
    "$BIN" stats --format json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["events_total"])'
}
EVENTS=$(events_of "$OUT/base.txt")
LONG_EVENTS=$(events_of "$OUT/long.txt")
for i in $(seq 1 "$N"); do
    host=$(printf 'host=h%03d' $((i % 100)))
    mkdir -p "$OUT/fleet/$host"
    ln -s "$OUT/base.txt" "$OUT/fleet/$host/trace-$i.txt"
    if [ "$i" -le "$SUBSET" ]; then
        mkdir -p "$OUT/subset/$host"
        ln -s "$OUT/base.txt" "$OUT/subset/$host/trace-$i.txt"
    fi
done
echo "trace: $EVENTS events, $(du -m "$OUT/base.txt" | cut -f1) MB of text; fleet: $N traces; single file: $LONG_EVENTS events"

# run NAME TRACES EVENTS_PER_TRACE ARGS...: scans, prints one line of figures, removes the dataset.
BASE_CPU_RATE=""
run() {
    local name=$1 traces=$2 events=$3
    shift 3
    local log="$OUT/$name.time"
    /usr/bin/time -v "$BIN" scan -q --out "$OUT/out-$name" "$@" > "$OUT/$name.out" 2> "$log" || true
    python3 - "$name" "$traces" "$events" "$log" "$(du -sm "$OUT/out-$name" | cut -f1)" "${BASE_CPU_RATE:-0}" << 'PY'
import re, sys
name, traces, events, log, out_mb, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6])
text = open(log).read()
def field(label):
    return re.search(re.escape(label) + r": (.*)", text).group(1)
user, sys_ = float(field("User time (seconds)")), float(field("System time (seconds)"))
wall_text = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
parts = [float(p) for p in wall_text.split(":")]
wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
rss = int(field("Maximum resident set size (kbytes)")) / 1024
total = traces * events
cpu = user + sys_
rate, cpu_rate = total / wall, total / cpu
eff = f"  cpu-efficiency {cpu_rate / base:.2f}x" if base else ""
print(f"{name:<14} {traces:>5} traces  {total/1e6:8.1f} M events  wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
      f"{rate/1e6:6.2f} M ev/s wall  {cpu_rate/1e6:6.2f} M ev/s/cpu-s  peak RSS {rss:6.0f} MB  out {out_mb} MB{eff}")
open(sys.argv[4] + ".rate", "w").write(f"{rate} {cpu_rate}\n")
PY
    rm -rf "$OUT/out-$name"
}

run single-file 1 "$LONG_EVENTS" --jobs 1 "$OUT/long.txt"
read -r BASE_RATE BASE_CPU_RATE < "$OUT/single-file.time.rate"
run fleet-1job "$SUBSET" "$EVENTS" --jobs 1 "$OUT/subset"
run fleet-2jobs "$N" "$EVENTS" --jobs 2 "$OUT/fleet"
read -r FLEET_RATE _ < "$OUT/fleet-2jobs.time.rate"
python3 -c "import sys; print(f'2-job fleet vs single-file path: {float(sys.argv[2]) / float(sys.argv[1]):.2f}x events/s (wall)')" \
    "$BASE_RATE" "$FLEET_RATE"
