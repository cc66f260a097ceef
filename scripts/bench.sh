#!/usr/bin/env bash
# scripts/bench.sh — meshgate performance benchmark (issue #6): meshgate vs the upstream alone
# vs nghttpx, one command. All options go to tests/bench/bench.py (see tests/bench/README.md):
#   scripts/bench.sh               full run (~6 min): table, ratios, targets, results/latest.*
#   scripts/bench.sh --quick       CI mode, < 60 s, nothing asserted
#   scripts/bench.sh --soak 600    10-minute soak of meshgate, RSS sampled every 10 s
# Debian's interpreter on purpose: it has python3-jwt and python3-cryptography.
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 tests/bench/bench.py "$@"
