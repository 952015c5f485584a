#!/usr/bin/env bash
# The test command: prepares the machine (scripts/setup.sh), then runs every test of the
# workspace. Under CI=true, tests that need a kernel feature fail instead of printing SKIP.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --workspace "$@"
