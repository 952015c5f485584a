#!/bin/busybox sh
# Runs inside the real-VMX lab's emulated host (busybox sh, ONE CPU) as a
# `vmxray lab --vmx --vmx-step` command: a busy thread shares the only CPU with the lab guest's
# vCPU thread while `vmxray record --profile context` records KVM's exits together with the
# host's scheduler, interrupt, softirq and timer events.
#
#   /bin/ctx-busy-step N
#
# N is the io-loop scenario's count of `out` instructions. The busy thread is a script named
# `busyloop` (so its comm says what it is) spinning in `while :; do :; done`; the emulated
# host has one CPU, so it is pinned to the vCPU thread's CPU by construction. It runs at nice
# -5 (busybox has renice, not nice), three times the weight of the vCPU thread and of the
# recorder's own threads at nice 0, so that it is the one CFS runs while the vCPU thread waits.
# The step's directory is the working directory: the trace goes to ./trace.dat, what the run
# needs for its provenance to ./context.txt.
set -u
n=${1:-200}
say() { echo "CTXBUSY: $*"; }

printf '#!/bin/busybox sh\nwhile :; do :; done\n' > /tmp/busyloop
chmod +x /tmp/busyloop
/tmp/busyloop &
busy=$!
renice -n -5 -p "$busy" > /dev/null
sleep 1
busy_comm=$(cat /proc/$busy/comm)
busy_nice=$(cut -d' ' -f19 /proc/$busy/stat)
say "busy thread pid $busy ($busy_comm) on $(grep -c ^processor /proc/cpuinfo) CPU(s)"
/bin/vmxray record --profile context -o trace.dat -- /bin/vmxray lab "io-loop=$n" --no-record
rc=$?
kill "$busy"
say "vmxray record rc=$rc"
{
    echo "busy pid $busy comm $busy_comm nice $busy_nice"
    echo "cpus $(grep -c ^processor /proc/cpuinfo)"
    echo "kernel $(uname -r)"
    echo "rc $rc"
} > context.txt
exit $rc
