#!/usr/bin/env bash
# Short fuzzing pass over every cargo-fuzz target in fuzz/ (the wire parsers), for CI.
#
# Needs a nightly toolchain (libFuzzer + AddressSanitizer); without one it prints a
# "skipped" line and exits 0. Installs cargo-fuzz if it is missing. Each target starts from
# a scratch copy of its committed seeds (fuzz/seeds/<target>/) and runs for FUZZ_SECONDS
# with inputs of at most 4096 bytes, the TSP message limit. By default the targets share
# 180 s of fuzzing (at least 5 s each; with 13 targets, 13 s each), so the whole smoke stays
# near 3 minutes on top of the build however many targets there are. Any crash, panic,
# sanitizer report or timeout fails the script; the crashing input is printed as hex and
# kept under fuzz/artifacts/<target>/ (git-ignored). Long runs (10 million inputs per
# target) are tests/fuzz-long.sh's, outside CI.
#
#   FUZZ_SECONDS=60 bash tests/fuzz-smoke.sh
#   FUZZ_TARGET_DIR=/tmp/fuzz-target bash tests/fuzz-smoke.sh   # build elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never


if ! command -v rustup >/dev/null 2>&1; then
  echo "fuzz-smoke: skipped: rustup is not installed (cargo-fuzz needs a nightly toolchain)"
  exit 0
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz-smoke: skipped: no nightly toolchain in 'rustup toolchain list' (cargo-fuzz needs nightly)"
  exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

target_dir=()
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  target_dir=(--target-dir "$FUZZ_TARGET_DIR")
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-smoke.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

echo "== building fuzz targets (cargo +nightly fuzz build)"
build_start=$SECONDS
if ! cargo +nightly fuzz build "${target_dir[@]}" >"$scratch/build.log" 2>&1; then
  tail -n 60 "$scratch/build.log"
  echo "fuzz-smoke: build failed"
  echo "fuzz-smoke: 0 passed, 1 failed"
  exit 1
fi
echo "== built in $((SECONDS - build_start)) s"

mapfile -t targets < <(cargo +nightly fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz-smoke: no fuzz targets found"
  echo "fuzz-smoke: 0 passed, 1 failed"
  exit 1
fi
seconds=$((180 / ${#targets[@]}))
if [ "$seconds" -lt 5 ]; then
  seconds=5
fi
seconds="${FUZZ_SECONDS:-$seconds}"
echo "== ${#targets[@]} targets, $seconds s each"

passed=0
failed=0
for t in "${targets[@]}"; do
  corpus="$scratch/corpus/$t"
  artifacts="$scratch/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  seeds=0
  if [ -d "fuzz/seeds/$t" ]; then
    cp fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    seeds=$(find "$corpus" -type f | wc -l)
  fi
  log="$scratch/$t.log"
  start=$SECONDS
  set +e
  cargo +nightly fuzz run "${target_dir[@]}" "$t" "$corpus" -- \
    -max_len=4096 -max_total_time="$seconds" -timeout=20 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  took=$((SECONDS - start))
  runs="$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -n 1)"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz $t: ok (${runs:-?} runs in ${took} s from $seeds seeds)"
  else
    failed=$((failed + 1))
    artifact="$(find "$artifacts" -type f | head -n 1)"
    echo "fuzz $t: FAILED (exit $rc after ${took} s)"
    grep -A 2 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer: (timeout|out-of-memory)" "$log" | head -n 8 | sed 's/^/    /' || true
    if [ -n "$artifact" ]; then
      mkdir -p "fuzz/artifacts/$t"
      cp "$artifact" "fuzz/artifacts/$t/"
      echo "    input kept as fuzz/artifacts/$t/$(basename "$artifact") ($(wc -c <"$artifact") bytes), hex:"
      od -An -tx1 -v "$artifact" | head -n 32 | sed 's/^/   /'
      echo "    reproduce: cargo +nightly fuzz run $t fuzz/artifacts/$t/$(basename "$artifact")"
    fi
    echo "    --- project frames of the backtrace ---"
    grep -E "^ +#[0-9]+ .* in (nm_tsp|nm_tsp_fuzz|[a-z_]+::)" "$log" | grep -E "nm_tsp|fuzz_targets" | head -n 15 | sed 's/^/    /' || true
    mkdir -p "fuzz/artifacts/$t"
    cp "$log" "fuzz/artifacts/$t/fuzz.log"
    echo "    full log: fuzz/artifacts/$t/fuzz.log"
  fi
done

echo "fuzz-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
