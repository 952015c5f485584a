#!/bin/sh
# Overhead benchmark of the perf backend and of `vmxray top` (needs root, tracefs, perf and
# /dev/kvm).
#
# A busy lab guest (`vmxray lab io-loop=N --no-record`, its own process) is the load. For each
# row the measured process is the recorder alone: `vmxray record --backend perf` into trace.dat
# and into perf.data (as scripts/bench-record.sh does for tracefs), then `vmxray top --batch`
# following the guest (--pid) with each backend and profile — readers, decoding, the ordered
# merge, the replay model and the live statistics. Each row prints events, events/s, the
# process's CPU time as % of one core, that figure per 100k events/s, and events lost.
#
# Target: <= 2% of one core per 100k events/s.
#
# usage: [VMXRAY_BIN=path] scripts/bench-top.sh [N_ITERATIONS] [SECONDS]   (defaults 2000000, 8)
set -eu
cd "$(dirname "$0")/.."
N=${1:-2000000}
SECS=${2:-8}
# VMXRAY_BIN: measure that binary instead of building the release one (a debug build gives an
# upper bound).
if [ -n "${VMXRAY_BIN:-}" ]; then
    BIN=$VMXRAY_BIN
else
    cargo build --release --quiet --bin vmxray
    BIN=$PWD/target/release/vmxray
fi
OUT=$(mktemp -d)
GUEST=
cleanup() {
    [ -n "$GUEST" ] && kill "$GUEST" 2>/dev/null || true
    rm -rf "$OUT"
}
trap cleanup EXIT
printf '%-28s %10s %10s %8s %16s %8s\n' run events events/s "%core" "%core/100k ev/s" lost

# `vmxray record --backend perf` with the guest as its command (system-wide, like bench-record).
for out in bench.dat bench.data; do
    for profile in exits all; do
        "$BIN" record -q --backend perf --profile "$profile" -o "$OUT/$out" -- \
            "$BIN" lab "io-loop=$N" --no-record 2>"$OUT/log"
        awk -v run="record perf $profile $out" '
            /events in/ { ev = $3; secs = $6; sub(/s,/, "", secs) }
            /recorder CPU/ { pct = $11; sub(/^\(/, "", pct); sub(/%/, "", pct) }
            /events lost/ { lost += $5 }
            END {
                rate = (secs > 0) ? ev / secs : 0
                per = (rate > 0) ? pct / (rate / 100000) : 0
                printf "%-28s %10d %10.0f %8.2f %16.3f %8d\n", run, ev, rate, pct, per, lost
            }' "$OUT/log"
    done
done

# `vmxray top --batch` following the guest for SECS seconds, stopped by SIGINT.
for backend in tracefs perf; do
    for profile in exits all; do
        "$BIN" lab "io-loop=$((N * 10))" --no-record >/dev/null 2>&1 &
        GUEST=$!
        sleep 0.3
        timeout -s INT "$SECS" "$BIN" top --batch --backend "$backend" --profile "$profile" \
            --pid "$GUEST" >"$OUT/lines" 2>"$OUT/log" || true
        kill "$GUEST" 2>/dev/null || true
        wait "$GUEST" 2>/dev/null || true
        GUEST=
        # "vmxray top: E events in S s (R/s); CPU C s = P% of a core = Q% of a core per 100k events/s"
        awk -v run="top $backend $profile" '
            /events in/ { ev = $3; rate = $7; sub(/^\(/, "", rate); sub(/\/s\);/, "", rate)
                          pct = $11; sub(/%/, "", pct); per = $16; sub(/%/, "", per) }
            END { printf "%-28s %10d %10.0f %8.2f %16.3f", run, ev, rate, pct, per }' "$OUT/log"
        awk 'NR > 1 { lost += $7 } END { printf " %8d\n", lost }' "$OUT/lines"
    done
done
