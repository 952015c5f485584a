#!/usr/bin/env bash
# The main job on the bundled samples: build vmxray, then replay every sample trace (real,
# lab-recorded and simulated) and print the anomalies, and triage the real crashes.
# Exit status 1 means anomalies were found (the simulated buggy samples contain bugs).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet || exit 2
vmxray=target/release/vmxray
traces=(samples/real/tracedat/*.dat samples/real/perf/*.data samples/lab/*.dat samples/sim/*.txt)
status=0
"$vmxray" replay --severity warning "${traces[@]}" || status=$?
for crash in samples/real/tracedat/triple-fault-v7-zstd.dat samples/lab/pf-triple-fault.dat; do
    "$vmxray" triage "$crash"
done
exit "$status"
