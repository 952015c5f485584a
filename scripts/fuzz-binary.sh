#!/bin/sh
# Fuzzes the binary readers (page, tracedat, perfdata, format_file) and the print-fmt
# evaluator (printfmt: seeded with every print fmt of the committed formats and, when readable,
# of the running kernel's tracefs) for SECONDS each
# (default 180). Only stable Rust is available: cargo-fuzz's nightly flags are allowed with
# RUSTC_BOOTSTRAP=1 and no sanitizer (-s none); crashes land in fuzz/artifacts/<target>/.
# usage: scripts/fuzz-binary.sh [SECONDS] [TARGET...]
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${1:-180}
[ $# -gt 0 ] && shift
targets=${*:-page format_file tracedat perfdata tracedat_salvage printfmt}
s=../samples/real
mkdir -p corpus/page corpus/tracedat corpus/perfdata corpus/format_file corpus/tracedat_salvage \
  corpus/printfmt
cp "$s"/raw/*.bin corpus/page/
cp "$s"/tracedat/lm-v6.dat "$s"/tracedat/lm-v7-zstd.dat "$s"/tracedat/lm-v7-none.dat corpus/tracedat/
cp "$s"/perf/*.perf.data corpus/perfdata/
# Salvage: the recorder's files whole and cut short (index lost), and a trace-cmd file.
cp ../samples/lab/*.dat "$s"/tracedat/lm-v7-zstd.dat corpus/tracedat_salvage/
for f in ../samples/lab/*.dat; do
  head -c $(( $(wc -c < "$f") - 3000 )) "$f" > "corpus/tracedat_salvage/cut-$(basename "$f")"
done
for f in kvm/kvm_exit kvm/kvm_nested_vmenter_failed kvm/kvm_emulate_insn ftrace/print; do
  cp "$s/raw/tracefs/events/$f/format" "corpus/format_file/$(echo "$f" | tr / _)"
done
cp "$s"/raw/tracefs/events/header_page corpus/format_file/header_page
n=0
for f in "$s"/raw/tracefs/events/*/*/format /sys/kernel/tracing/events/*/*/format; do
  [ -r "$f" ] || continue
  n=$((n + 1))
  sed -n 's/^print fmt: //p' "$f" > "corpus/printfmt/fmt$n" 2>/dev/null || true
done
for t in $targets; do
  echo "== fuzzing $t for ${secs}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -O "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -max_len=8000000 -print_final_stats=1
done
