#!/usr/bin/env bash
# Long fuzzing run of the cargo-fuzz targets in fuzz/, outside CI: each target runs until it
# has executed FUZZ_RUNS inputs (default 10,000,000; libFuzzer's -runs=), at nice 19, and a
# table of the figures is printed at the end (Markdown, for the README):
#
#   target | executions | seconds | exec/s | corpus size | result
#
# Targets run one at a time, or FUZZ_JOBS at once (one libFuzzer process each). Each
# target's corpus lives in fuzz/corpus/<target>/ (git-ignored), topped up from the committed
# seeds (fuzz/seeds/<target>/) and kept between runs, so a second run goes on where the first
# stopped; "corpus size" counts its files at the end. FUZZ_MAX_SECONDS stops a target that
# has not reached FUZZ_RUNS by then (result "stopped: time"), so the table shows how far it
# got. Inputs are at most 4096 bytes, the TSP message limit, as in tests/fuzz-smoke.sh. A
# crash, panic, sanitizer report or timeout is "FAILED"; the input is kept under
# fuzz/artifacts/<target>/ and the log beside it. Exit status 1 if any target failed.
#
# The build has debug assertions and overflow checks, but by default no sanitizer
# (FUZZ_SANITIZER=none): tsp-proto and tsp-config have no unsafe code, and AddressSanitizer
# costs these targets 3 to 8 times their speed, so the same hours explore several times more
# inputs. tests/fuzz-smoke.sh (and CI) keeps AddressSanitizer; FUZZ_SANITIZER=address runs
# the long run with it too. Other builds go to fuzz/target/sanitizer-<name>/, so that
# the two do not rebuild over each other.
#
#   bash tests/fuzz-long.sh                                  # every target, 10M inputs each
#   FUZZ_JOBS=2 FUZZ_RUNS=1000000 bash tests/fuzz-long.sh server_session digest_response
#   FUZZ_MAX_SECONDS=5400 bash tests/fuzz-long.sh            # at most 90 min per target
#   FUZZ_SANITIZER=address bash tests/fuzz-long.sh           # as the smoke builds them
#   FUZZ_TARGET_DIR=/tmp/fuzz-target bash tests/fuzz-long.sh # build elsewhere
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

runs="${FUZZ_RUNS:-10000000}"
jobs="${FUZZ_JOBS:-1}"
max_seconds="${FUZZ_MAX_SECONDS:-0}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-long: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
build=(--sanitizer "$sanitizer")
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  build+=(--target-dir "$FUZZ_TARGET_DIR")
elif [ "$sanitizer" != address ]; then
  build+=(--target-dir "fuzz/target/sanitizer-$sanitizer")
fi

echo "== building fuzz targets (cargo +nightly fuzz build ${build[*]})"
nice -n 19 cargo +nightly fuzz build "${build[@]}"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-long.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

# One target to the end; writes its table row to $scratch/<target>.row.
run_target() {
  local t=$1
  local corpus="fuzz/corpus/$t" artifacts="$scratch/artifacts/$t" log="$scratch/$t.log"
  mkdir -p "$corpus" "$artifacts"
  if [ -d "fuzz/seeds/$t" ]; then
    cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  fi
  local limit=()
  if [ "$max_seconds" -gt 0 ]; then
    limit=(-max_total_time="$max_seconds")
  fi
  local start rc=0
  start=$(date +%s%N)
  nice -n 19 cargo +nightly fuzz run "${build[@]}" "$t" "$corpus" -- \
    -runs="$runs" "${limit[@]}" -max_len=4096 -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
  local took_ms=$((($(date +%s%N) - start) / 1000000))
  local took=$(((took_ms + 500) / 1000))
  local done_runs
  done_runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
  done_runs="${done_runs:-0}"
  local result
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc)"
    mkdir -p "fuzz/artifacts/$t"
    cp "$log" "fuzz/artifacts/$t/fuzz-long.log"
    find "$artifacts" -type f -exec cp {} "fuzz/artifacts/$t/" \;
  elif [ "$done_runs" -lt "$runs" ]; then
    result="stopped: time"
  else
    result="ok"
  fi
  local rate=$((done_runs * 1000 / (took_ms > 0 ? took_ms : 1)))
  local files
  files="$(find "$corpus" -type f | wc -l)"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$done_runs" "$took" "$rate" "$files" "$result" \
    >"$scratch/$t.row"
  echo "fuzz $t: $result, $done_runs executions in $took s ($rate exec/s), corpus $files files"
}

cap=""
if [ "$max_seconds" -gt 0 ]; then
  cap=", at most $max_seconds s each"
fi
echo "== $runs executions per target, $jobs at a time$cap, sanitizer: $sanitizer"
echo "== $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
wait || true

echo
echo "| target | executions | seconds | exec/s | corpus size | result |"
echo "|---|---:|---:|---:|---:|---|"
failed=0
for t in "${targets[@]}"; do
  if [ -f "$scratch/$t.row" ]; then
    cat "$scratch/$t.row"
    grep -q "FAILED" "$scratch/$t.row" && failed=$((failed + 1))
  else
    echo "| $t | - | - | - | - | FAILED (no result) |"
    failed=$((failed + 1))
  fi
done
[ "$failed" -eq 0 ]
