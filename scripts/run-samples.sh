#!/usr/bin/env bash
# The main job on the bundled samples: build vmxray, scan every sample trace (real, lab-recorded
# and simulated) in parallel into a Parquet dataset and print the anomalies and exit summary,
# then triage the real crashes. Exit status 1 means anomalies were found (the simulated buggy
# samples contain the bugs they simulate); 2 means an input could not be read.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet || exit 2
vmxray=target/release/vmxray
out=target/samples-scan
rm -rf "$out"
status=0
"$vmxray" scan samples/real/tracedat samples/real/perf samples/lab samples/sim --out "$out" --format parquet -q || status=$?
# polars prints 10 rows and 30 characters per cell by default; show whole messages here.
POLARS_FMT_MAX_ROWS=60 POLARS_FMT_STR_LEN=200 POLARS_TABLE_WIDTH=240 \
    "$vmxray" scan samples/real/tracedat samples/real/perf samples/lab samples/sim -q || true
for crash in samples/real/tracedat/triple-fault-v7-zstd.dat samples/lab/pf-triple-fault.dat; do
    "$vmxray" triage "$crash"
done
echo "Parquet dataset: $out/table={exits,events,anomalies,summary,traces}/" >&2
exit "$status"
