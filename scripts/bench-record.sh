#!/bin/sh
# Overhead benchmark of `vmxray record` (needs root, tracefs and /dev/kvm).
#
# Records a busy lab guest (`vmxray lab io-loop=N --no-record`, run as the recorded command)
# with the default buffer size, once per profile, and prints for each run: events recorded,
# events/s, the recorder's own CPU time (its reader and writer threads; the guest runs in a
# separate process) per million events and as % of one core, and events lost (per-CPU stats).
#
# Targets: <= 2% of one core per 100k events/s (= 0.2 CPU-s per million events), zero loss at
# 500k events/s.
#
# usage: scripts/bench-record.sh [N_ITERATIONS]   (default 400000)
set -eu
cd "$(dirname "$0")/.."
N=${1:-400000}
cargo build --release --quiet --bin vmxray
BIN=$PWD/target/release/vmxray
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
printf '%-8s %10s %12s %14s %12s %8s %10s\n' profile events events/s cpu-s/Mevents "%core" lost MB-file
# "flight": profile all as a flight recorder (4M per CPU, trigger shutdown, which never fires
# here): the cost of keeping the rings and scanning every page for the trigger.
for profile in exits all flight; do
    case $profile in
        flight) set -- --profile all --flight-recorder 4M --trigger shutdown ;;
        *) set -- --profile "$profile" ;;
    esac
    "$BIN" record -q "$@" -o "$OUT/bench-$profile.dat" -- \
        "$BIN" lab "io-loop=$N" --no-record 2>"$OUT/log-$profile"
    awk -v p="$profile" -v f="$OUT/bench-$profile.dat" '
        /events in/ { ev = $3; secs = $6; sub(/s,/, "", secs) }
        /recorder CPU/ { permev = $7; sub(/s$/, "", permev); pct = $11; sub(/^\(/, "", pct); sub(/%/, "", pct) }
        /events lost/ { lost += $5 }
        END {
            size = 0
            cmd = "stat -c %s " f " 2>/dev/null"; cmd | getline size; close(cmd)
            rate = (secs > 0) ? ev / secs : 0
            printf "%-8s %10d %12.0f %14.3f %12.2f %8d %10.2f\n", p, ev, rate, permev, pct, lost, size / 1e6
        }' "$OUT/log-$profile"
done
