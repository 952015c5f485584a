#!/usr/bin/env bash
# Prepares a fresh machine for vmxray's tests: the peer tools the differential tests compare
# against (trace-cmd, perf), tmux for the terminal end-to-end test, and a mounted tracefs for
# the recorder tests. Idempotent; needs root for the installs and the mount (without root it
# only reports what is missing, and the tests that need it print SKIP).
set -euo pipefail

need=()
command -v trace-cmd >/dev/null 2>&1 || need+=(trace-cmd)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "setup: missing ${need[*]} (not root: cannot install)" >&2
    fi
fi

if ! grep -q ' tracefs ' /proc/mounts 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && [ -d /sys/kernel/tracing ]; then
        mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
            && echo "setup: mounted tracefs at /sys/kernel/tracing" >&2 \
            || echo "setup: could not mount tracefs" >&2
    fi
fi
