#!/usr/bin/env bash
# scripts/fuzz.sh [--seconds N] [target...] — builds every libFuzzer target with clang +
# ASan/UBSan (build-fuzz/) and runs each for N seconds (default 20) on a copy of its seed
# corpus (tests/fuzz/corpus/<name>/; the committed seeds are never modified). Prints
# execs/s per target; exits 1 on any crash, leak or sanitizer report (the reproducer is
# kept in build-fuzz/artifacts/).
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=20
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang meson setup build-fuzz -Dfuzz=true -Dtests=false -Db_sanitize=address,undefined \
    -Db_lundef=false -Dbuildtype=debugoptimized -Dc_args=-fsanitize=fuzzer-no-link >/dev/null || exit 1
fi
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
meson setup --reconfigure build-fuzz >/dev/null || exit 1
for t in "${targets[@]}"; do
  ninja -C build-fuzz "tests/fuzz/$t" >/dev/null || { ninja -C build-fuzz "tests/fuzz/$t" | tail -20; exit 1; }
done
mkdir -p build-fuzz/artifacts
rc=0
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  work=$(mktemp -d)
  [ -d "tests/fuzz/corpus/$name" ] && cp -r "tests/fuzz/corpus/$name/." "$work/"
  log=build-fuzz/artifacts/$t.log
  if build-fuzz/tests/fuzz/$t -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 \
       -rss_limit_mb=2048 -artifact_prefix=build-fuzz/artifacts/$t- "$work" >"$log" 2>&1; then
    execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
    echo "fuzz $t: clean, $execs execs in ${SECONDS_EACH}s ($rate execs/s)"
  else
    echo "fuzz $t: FAILED (see $log)"; grep -m5 -E 'ERROR|SUMMARY|Test unit written' "$log"; rc=1
  fi
  rm -rf "$work"
done
exit $rc
