#!/usr/bin/env bash
# Runs every fuzz target for a while, starting from the kept corpus, and
# reports executions and crashes per target.
#
#   scripts/fuzz.sh                 20 s per target
#   scripts/fuzz.sh --seconds 600   a longer run
#   scripts/fuzz.sh --scratch       new inputs go to a temporary directory,
#                                   not fuzz/corpus (what scripts/test.sh runs)
#   scripts/fuzz.sh --replay        no fuzzing: every kept corpus input runs
#                                   once through its target's checks, on the
#                                   stable toolchain (fuzz/src/lib.rs)
#
# Fuzzing needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz --locked
# New inputs found during a run are added to fuzz/corpus/<target> (unless
# --scratch); crashes are written to fuzz/artifacts/<target> and fail the run.
# A failing input in a replay fails it too.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=20
scratch=0
replay=0
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --scratch) scratch=1; shift ;;
    --replay) replay=1; shift ;;
    *) echo "usage: scripts/fuzz.sh [--seconds N] [--scratch] [--replay]" >&2; exit 2 ;;
  esac
done

if ((replay)); then
  # The fuzz workspace is separate (its own lock file): not --locked, like
  # cargo fuzz.
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  status=0
  cargo test --lib -- --nocapture >"$log" 2>&1 || status=$?
  if ! grep -E "^replay " "$log"; then
    cat "$log" >&2
    echo "error: the corpus replay did not run" >&2
    exit 1
  fi
  if ((status)); then
    grep -A20 "inputs that fail" "$log" >&2 || tail -30 "$log" >&2
  fi
  exit "$status"
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "error: fuzzing needs a nightly toolchain: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "error: fuzzing needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2
  exit 1
fi

cargo +nightly fuzz build -O
status=0
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  if ((scratch)); then
    # libFuzzer writes new inputs to the first directory; the kept corpus
    # is only read.
    new_inputs=$(mktemp -d)
    corpora=("$new_inputs" "corpus/$target")
  else
    new_inputs=""
    corpora=("corpus/$target")
  fi
  log=$(mktemp)
  if cargo +nightly fuzz run -O "$target" "${corpora[@]}" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    status=1
    grep -E "panicked|ERROR|artifact|SUMMARY" "$log" | head -10 >&2 || true
  fi
  runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  echo "fuzz $target: ${runs} executions in ${seconds}s, crashes: ${crashes}"
  rm -f "$log"
  if [[ -n "$new_inputs" ]]; then rm -rf "$new_inputs"; fi
done
exit "$status"
