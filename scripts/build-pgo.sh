#!/bin/sh
# The release build of vmxray with profile-guided optimization (PGO): the binary that is
# installed and the one the README's speed figures are measured with.
#
#   scripts/build-pgo.sh            # -> target/pgo/release/vmxray, the TUI's benches and examples
#
# Three steps, each in its own target directory under $VMXRAY_PGO_DIR (default target/pgo):
#   1. an instrumented build (`-Cprofile-generate`) of the `vmxray` binary and of the TUI's
#      `pass_rate` example (the TUI's loading pass without a terminal);
#   2. training: every command that reads traces (stats, stats --format json, replay, triage,
#      dump, and the TUI's pass) over the committed real traces (trace.dat, perf.data, text,
#      pasted excerpts, the Bochs real-VMX captures, the /dev/kvm lab's) and over simulated
#      traces of every scenario, fixed and buggy, with one of 2 M events for the hot loops; the
#      profiles are merged with llvm-profdata (rustup's `llvm-tools` component, installed when
#      missing: it must match rustc's LLVM);
#   3. the optimized build (`-Cprofile-use`): the binary, the `pass_rate` example and the TUI's
#      benches (`cargo bench --no-run`; run them from target/pgo/release/deps or with the same
#      RUSTFLAGS and --target-dir).
#
# A plain `cargo build --release` stays a valid build: the same code, without the profile. On
# the TUI's pass the profile saves 10-17 % of the CPU time, on `vmxray stats` 12 % (README,
# Benchmarks). 20-30 minutes on 2 cores the first time (polars is built twice), ~10 when run
# again after a change; ~6 GB of disk.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=${VMXRAY_PGO_DIR:-$root/target/pgo}
case $dir in /*) ;; *) dir=$root/$dir ;; esac
profiles=$dir/profiles
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools
fi
[ -x "$profdata" ] || { echo "build-pgo: no llvm-profdata at $profdata" >&2; exit 1; }

rm -rf "$profiles"
mkdir -p "$profiles/raw" "$profiles/traces"

echo "== 1/3 instrumented build"
instrumented=$dir/instrumented
export RUSTFLAGS="-Cprofile-generate=$profiles/raw"
cargo build -q --release --target-dir "$instrumented" -p vmxray --bin vmxray
cargo build -q --release --target-dir "$instrumented" -p vmxray-tui --example pass_rate
bin=$instrumented/release/vmxray
pass=$instrumented/release/examples/pass_rate

echo "== 2/3 training"
traces=$profiles/traces
"$bin" simulate muen --kvm buggy --vcpus 4 --events 2000000 -o "$traces/muen-2m.dat" > /dev/null
"$bin" simulate host --vm muen:buggy --vm sepkernel --vm noise --iterations 40 -o "$traces/host.txt" > /dev/null
for scenario in $("$bin" simulate --list | cut -d' ' -f1); do
  for kvm in fixed buggy; do
    # Scenarios without a bug have no buggy flavour.
    "$bin" simulate "$scenario" --kvm "$kvm" -o "$traces/$scenario-$kvm.dat" > /dev/null 2>&1 || true
  done
done
real=$(find samples/real samples/lab samples/vmx -type f \( -name '*.dat' -o -name '*.data' -o -name '*.txt' -o -name '*.log' \) 2> /dev/null | sort)
for f in "$traces"/* $real; do
  for cmd in "stats" "stats --format json" "replay" "triage" "dump"; do
    # shellcheck disable=SC2086 # the command's words
    "$bin" $cmd --permissive "$f" > /dev/null 2>&1 || true
  done
done
for f in "$traces"/*.dat samples/real/vmx/*.dat; do
  "$pass" "$f" 1 > /dev/null
done
"$profdata" merge -o "$profiles/merged.profdata" "$profiles/raw"

echo "== 3/3 optimized build"
export RUSTFLAGS="-Cprofile-use=$profiles/merged.profdata"
cargo build -q --release --target-dir "$dir" -p vmxray --bin vmxray
cargo build -q --release --target-dir "$dir" -p vmxray-tui --example pass_rate
cargo bench -q --target-dir "$dir" -p vmxray-tui --no-run 2>&1 | grep -v '^ *Finished' || true
echo "vmxray:    $dir/release/vmxray"
echo "pass_rate: $dir/release/examples/pass_rate"
for b in open_100m open_10m; do
  ls -t "$dir"/release/deps/"$b"-* 2> /dev/null | grep -v '\.d$' | head -n 1 | sed "s/^/$b: /"
done
