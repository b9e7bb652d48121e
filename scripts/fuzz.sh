#!/usr/bin/env bash
# Runs every fuzz target for a while, starting from the kept corpus, and
# reports executions and crashes per target.
#
#   scripts/fuzz.sh                 20 s per target (what scripts/test.sh runs)
#   scripts/fuzz.sh --seconds 600   a longer run
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz
# New inputs found during a run are added to fuzz/corpus/<target>; crashes are
# written to fuzz/artifacts/<target> and fail the run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=20
if [ "${1:-}" = "--seconds" ]; then seconds="$2"; fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "error: fuzzing needs a nightly toolchain: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "error: fuzzing needs cargo-fuzz: cargo install cargo-fuzz" >&2
  exit 1
fi

cargo +nightly fuzz build -O
status=0
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    status=1
    grep -E "panicked|ERROR|artifact" "$log" | head -5 >&2 || true
  fi
  runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  echo "fuzz $target: ${runs} executions in ${seconds}s, crashes: ${crashes}"
  rm -f "$log"
done
exit "$status"
