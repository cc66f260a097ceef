#!/usr/bin/env bash
# scripts/test.sh — installs what is missing, builds, and runs every test:
#   1. release build (-Werror) + unit tests (cmocka)
#   2. integration, security and replication tests (pytest, the real binary, real clients,
#      a real nats-server cluster on loopback)
#   3. the same unit tests and a subset of integration tests under ASan+UBSan
#   4. every libFuzzer target for a short bounded time
#   5. the benchmark's --quick mode (keeps it working; no thresholds)
# Prints one closing line "N passed, M failed". Exit 0 only if everything passed.
#
# Environment: MG_TEST_QUICK=1 skips the sanitizer integration run, fuzzing and the bench;
# FUZZ_SECONDS (default 10) per fuzz target.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=/usr/bin/python3     # Debian's interpreter: it has python3-h2, -jwt, -grpcio, -pytest
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
QUICK=${MG_TEST_QUICK:-0}

bash scripts/deps.sh || { echo "test.sh: installing dependencies failed"; exit 1; }

passed=0
failed=0
failures=()
step() { # name, command...
  local name=$1; shift
  echo
  echo "=== $name"
  local t0=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); echo "=== $name: ok ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "=== $name: FAILED ($((SECONDS - t0)) s)"
  fi
}

build() { # dir, extra meson args...
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >/dev/null || return 1
  else
    meson setup --reconfigure "$dir" "$@" >/dev/null || return 1
  fi
  ninja -C "$dir"
}

WERROR=false
[ "${CI:-}" = "true" ] && WERROR=true

step "build (release, werror=$WERROR)" build build -Dbuildtype=release -Dwerror=$WERROR
step "unit tests" meson test -C build --suite unit --print-errorlogs

export MESHGATE_BIN=$ROOT/build/sidecar/meshgate
export MG_PASSTHROUGH=$ROOT/build/tests/integration/passthrough
pytest_run() { # args...
  "$PY" -m pytest -q -p no:cacheprovider "$@"
  local rc=$?
  [ $rc -eq 5 ] && { echo "(no tests collected)"; return 1; }
  return $rc
}
if [ -x "$MESHGATE_BIN" ]; then
  step "integration tests" pytest_run tests/integration
fi

if [ "$QUICK" != 1 ]; then
  step "build (ASan+UBSan)" build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # suite 'unit' includes test_shipper (a real 3-node cluster, leader kills): since the
  # shipper reads the stream back and re-sends what NATS lost after acknowledging it, its
  # cases wait for that read-back and hold under the sanitizers' slowdown too
  step "unit tests (ASan+UBSan)" meson test -C build-asan --suite unit --print-errorlogs
  if [ -x build-asan/sidecar/meshgate ] && [ -d tests/integration ]; then
    # The data path, admin, security and lineage suites against the sanitized binary and
    # passthrough. Sanitizers quarantine freed memory, so the RSS bounds are raised; the
    # NATS cluster scenarios and tests marked slow run in the pass above only.
    step "integration tests (ASan+UBSan binary)" env MESHGATE_BIN=$ROOT/build-asan/sidecar/meshgate \
      MG_PASSTHROUGH=$ROOT/build-asan/tests/integration/passthrough MG_SANITIZED=1 \
      MG_RSS_GROWTH_KB=262144 MG_RSS_LIMIT_KB=524288 \
      "$PY" -m pytest -q -p no:cacheprovider -m "not slow" --ignore=tests/integration/test_replication.py tests/integration
  fi
  unset ASAN_OPTIONS UBSAN_OPTIONS
  if [ -x scripts/fuzz.sh ]; then
    step "fuzzers (${FUZZ_SECONDS}s each)" bash scripts/fuzz.sh --seconds "$FUZZ_SECONDS"
  fi
  if [ -x scripts/bench.sh ]; then
    step "benchmark --quick" bash scripts/bench.sh --quick
  fi
fi

echo
if [ $failed -gt 0 ]; then
  echo "failed steps: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
