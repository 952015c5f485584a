#!/bin/sh
# Installs the peer tools the binary readers' differential tests compare against
# (capture/tests/differential.rs): trace-cmd and perf. Under CI=true a missing tool fails those
# tests, so CI runs this first (root, Debian).
set -eu
command -v trace-cmd >/dev/null 2>&1 && command -v perf >/dev/null 2>&1 && exit 0
apt-get update
apt-get install -y trace-cmd linux-perf
