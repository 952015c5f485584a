#!/bin/sh
# The TUI's anomaly pass counted in instructions, per thread, with callgrind: a figure that does
# not move with the machine's load. Wall-clock rates on the 2-core development machine vary by
# up to a third between runs, which hides any change under ~10 %; the instruction count of the
# same pass over the same file is the same to a few parts in a thousand, so it tells whether a
# change removed work, and from which thread. (It does not see time spent in the kernel, cache
# misses or waits: confirm a change with runs alternating with the build before, as the README's
# benchmark rows do.)
#
# The trace is $VMXRAY_BENCH_PASS_DAT (default /tmp/vmxray-pass-1m.dat), generated when missing
# with `vmxray simulate muen --kvm buggy --vcpus 4 --events 1000000` (the 100 M bench's scenario).
# valgrind is installed when missing (Debian package `valgrind`).
#
# Prints the program's total and, for each thread, its instructions per event, the replaying
# thread first (the one that runs the merge, the model, the rules and the index). The decoding
# jobs that thread runs itself at the start (before the pool has any ready) are counted apart.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
file=${VMXRAY_BENCH_PASS_DAT:-/tmp/vmxray-pass-1m.dat}
events=1000000
cd "$root"
if ! command -v valgrind > /dev/null; then
  apt-get update -qq && apt-get install -y -qq valgrind > /dev/null
fi
cargo build -q --release -p vmxray-tui --example pass_rate
if [ ! -f "$file" ]; then
  cargo build -q --release -p vmxray
  target/release/vmxray simulate muen --kvm buggy --vcpus 4 --events "$events" -o "$file" > /dev/null
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out/cg" \
  target/release/examples/pass_rate "$file" 1 > "$out/run" 2> "$out/valgrind"
n=$(sed -n 's/^\([0-9]*\) events in .*/\1/p' "$out/run" | head -n 1)
[ -n "$n" ] && [ "$n" -gt 0 ] || { echo "the pass did not run:" >&2; cat "$out/run" "$out/valgrind" >&2; exit 1; }
total=$(sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$out/valgrind" | tr -d ,)
echo "pass over $n events of $file: $(awk -v t="$total" -v n="$n" 'BEGIN { printf "%.0f", t / n }') instructions per event ($total in all)"
for f in "$out"/cg-*; do
  all=$(callgrind_annotate "$f" 2> /dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  [ -n "$all" ] || continue
  inline=$(callgrind_annotate --inclusive=yes "$f" 2> /dev/null \
    | sed -n 's/^ *\([0-9,]*\) .*Slot<T>::run_if_pending \[.*/\1/p' | head -n 1 | tr -d ,)
  # The thread's own work: without the decoding jobs it ran itself (all of a pool thread's work
  # is such jobs, so a pool thread is told apart by its share of them).
  printf '%s %s\n' "${all:-0}" "${inline:-0}"
done | awk -v n="$n" '
  { own = $1 - $2; if ($1 < n) next
    if ($2 > $1 / 2) { pool += $1; next }
    if (own > main) { if (main > 0) other += main; main = own; main_inline = $2 } else other += own }
  END {
    printf "  replaying thread: %.0f per event (and %.0f in decoding jobs it ran itself)\n", main / n, main_inline / n
    printf "  decoding pool:    %.0f per event\n", pool / n
    printf "  other threads:    %.0f per event (the statistics stage, the UI side of the loader)\n", other / n
  }'
