#!/usr/bin/env bash
# Every test the project has. This is the command CI runs.
#
# Parts whose tools are missing fail with a message saying what to install.
# A caller may opt out of a part explicitly, and the output says so:
#   TANDEM_SKIP_KOTLIN=1    skip the Kotlin bindings tests on the JVM
#   TANDEM_SKIP_SWIFT_CHECKS=1  skip the Swift bindings checks (header, symbols, API)
#   TANDEM_SKIP_SWIFT=1     skip compiling and testing the Swift package on Linux
#   TANDEM_SKIP_ANDROID=1   skip the Android flavour of the Kotlin bindings (Robolectric)
#   TANDEM_SKIP_POSTGRES=1  skip the PostgreSQL tests
#   TANDEM_SKIP_MOBILE=1    skip the mobile targets (tandem-ffi for Android, iOS, macOS)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each section's time, printed at the end: what a run spends where.
section_times=()
section_name=""
section_started=$SECONDS
section() {
  if [[ -n "$section_name" ]]; then
    section_times+=("$(printf '%5d s  %s' "$((SECONDS - section_started))" "$section_name")")
  fi
  section_name="$*"
  section_started=$SECONDS
  printf '\n==> %s\n' "$*"
}
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }
}

need cargo "install Rust with rustup (https://rustup.rs)"

section "cargo fmt --check"
cargo fmt --all --check

section "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The protocol crate and the engine (tandem-core without its native
# driver: the store, the sync engine, the observers) compile for the
# browser's WebAssembly target, with no tokio sockets, tungstenite, reqwest
# or rustls. SQLite is compiled for wasm32 by rusqlite's sqlite-wasm-rs,
# which needs clang. The target is added with rustup when missing.
section "wasm32: tandem-protocol and the engine (tandem-core, no native driver) compile for wasm32-unknown-unknown"
need clang "install clang (Debian: apt-get install -y clang): it compiles SQLite for wasm32"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo check --locked -p tandem-protocol --target wasm32-unknown-unknown
cargo check --locked -p tandem-core --no-default-features --target wasm32-unknown-unknown
# The same build on the host, held to the lints (clippy above builds the
# default features only).
cargo clippy --locked -p tandem-core --no-default-features --all-targets -- -D warnings

# ---- PostgreSQL --------------------------------------------------------------
# The PostgreSQL store's tests (server/tests/integration/postgres_*.rs: the
# conformance suite, several instances on one database, two server processes
# with one killed) run in `cargo test` below against the database named by
# TANDEM_TEST_POSTGRES_URL. Unless the caller gave one, a throwaway cluster
# is started here (scripts/pg-cluster.sh) and removed on exit, also on
# failure. PostgreSQL is installed from Debian's packages when missing.
postgres_started=$SECONDS
pg_cluster_dir=""
if [[ -n "${TANDEM_TEST_POSTGRES_URL:-}" ]]; then
  section "PostgreSQL: using TANDEM_TEST_POSTGRES_URL from the environment"
elif [[ "${TANDEM_SKIP_POSTGRES:-}" == 1 ]]; then
  section "PostgreSQL tests: SKIPPED (TANDEM_SKIP_POSTGRES=1); each test says so"
else
  section "PostgreSQL: a throwaway cluster for the tests"
  if ! command -v initdb >/dev/null 2>&1 && ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    if [[ "$(id -u)" -ne 0 ]]; then
      echo "error: PostgreSQL is missing: apt-get install -y postgresql (as root), or set TANDEM_SKIP_POSTGRES=1" >&2
      exit 1
    fi
    echo "installing PostgreSQL from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  pg_cluster_dir="$(mktemp -d "${TMPDIR:-/tmp}/tandem-pg.XXXXXX")"
  rmdir "$pg_cluster_dir"
  pg_previous_exit_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
  # shellcheck disable=SC2064  # expand now: the directory is known now
  trap "scripts/pg-cluster.sh stop '$pg_cluster_dir'; ${pg_previous_exit_trap:-:}" EXIT
  TANDEM_TEST_POSTGRES_URL="$(scripts/pg-cluster.sh start "$pg_cluster_dir")"
  export TANDEM_TEST_POSTGRES_URL
  echo "cluster: $TANDEM_TEST_POSTGRES_URL ($((SECONDS - postgres_started)) s to start)"
fi
# ---- end of PostgreSQL ---------------------------------------------------------

section "cargo test"
# The soak and the kill loop (tandem-e2e's `reliability` test binary,
# tests/tests/reliability/) each leave a one-line summary of their figures
# under the target directory; earlier runs' are removed first, and this
# run's are printed after the tests.
summary_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/tmp/reliability-summary"
rm -rf "$summary_dir"
cargo test --workspace --locked
section "reliability figures: the soak and the kill loop (mutations, kills, lost, duplicated)"
if compgen -G "$summary_dir/*.txt" >/dev/null; then
  cat "$summary_dir"/*.txt
else
  echo "no figures: neither the soak nor the kill loop ran"
fi

# Crashes at named fail points (compiled in only with the feature).
section "cargo clippy with fail points"
cargo clippy -p tandem-e2e --all-targets --features failpoints --locked -- -D warnings
section "fail points: crashes between commit, send, ack and outbox delete"
cargo test -p tandem-e2e --features failpoints --test failpoints --locked

# ---- Kotlin and Swift bindings ---------------------------------------------
# The generated bindings, checked where Linux can check them: the Kotlin
# bindings (host-JVM flavour) compiled with android-lib's conveniences and
# tested with JUnit against the host library and a real `tandem serve`; the
# Swift bindings' C header, exported symbols and public API. The Swift
# package itself is compiled and tested in the next section.
bindings_started=$SECONDS
skip_kotlin="${TANDEM_SKIP_KOTLIN:-}"
skip_swift="${TANDEM_SKIP_SWIFT_CHECKS:-}"
if [[ "$skip_kotlin" == 1 && "$skip_swift" == 1 ]]; then
  section "bindings: SKIPPED (TANDEM_SKIP_KOTLIN=1, TANDEM_SKIP_SWIFT_CHECKS=1)"
else
  target_dir="$(realpath "${CARGO_TARGET_DIR:-target}")"

  section "bindings: generate Swift and Kotlin from the host library"
  scripts/gen-bindings.sh

  if [[ "$skip_kotlin" == 1 ]]; then
    section "Kotlin bindings on the JVM: SKIPPED (TANDEM_SKIP_KOTLIN=1)"
  else
    section "Kotlin bindings on the JVM (JUnit via Maven, against a real tandem serve)"
    need java "install a JDK 17 or newer (Debian: apt-get install -y openjdk-17-jdk-headless)"
    need mvn "install Maven (Debian: apt-get install -y maven)"
    java_version="$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')"
    if [[ "${java_version%%.*}" -lt 17 ]]; then
      echo "error: java is version $java_version: install a JDK 17 or newer" >&2
      exit 1
    fi
    # The server the tests start; `cargo test` has built it already.
    cargo build --locked -p tandem-cli
    rm -rf android-lib/jvm-test/target/surefire-reports
    # Maven 3.8 with -q writes stray colour resets (ESC[0m) without a
    # newline, also with -Dstyle.color=never: stripped, so they do not run
    # into the count line below (pipefail keeps Maven's exit status).
    (cd android-lib/jvm-test && mvn -B -q -Dstyle.color=never test \
      -Djna.library.path="$target_dir/debug" -Dtandem.cli="$target_dir/debug/tandem") 2>&1 |
      sed 's/\x1b\[0m//g'
    # `mvn -q` prints only failures; say what ran.
    cat android-lib/jvm-test/target/surefire-reports/TEST-*.xml | awk '
      /<testsuite / {
        for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) { gsub(/"/, "", kv[2]); n[kv[1]] += kv[2] }
      }
      END {
        failed = n["failures"] + n["errors"]
        printf "JUnit: %d passed, %d failed, %d skipped\n", n["tests"] - failed - n["skipped"], failed, n["skipped"]
      }'
  fi

  if [[ "$skip_swift" == 1 ]]; then
    section "Swift bindings checks: SKIPPED (TANDEM_SKIP_SWIFT_CHECKS=1)"
  else
    section "Swift bindings: header, symbols and API"
    scripts/check-swift-bindings.sh
  fi
  echo "bindings: $((SECONDS - bindings_started)) s"
fi
# ---- end of Kotlin and Swift bindings ----------------------------------------

# ---- Swift package on Linux ----------------------------------------------------
# The Swift package (the generated bindings, the conveniences of
# swift-package/Sources/Tandem and Tests/TandemTests) compiled with the real
# Swift compiler, Swift 6.0.3 from Debian trixie in a chroot cached outside
# the checkout, and tested against a real `tandem serve` (scripts/swift-test.sh;
# needs root; the first run on a machine sets the toolchain up, a few
# minutes). The output counts the tests and times each phase.
swift_started=$SECONDS
if [[ "${TANDEM_SKIP_SWIFT:-}" == 1 ]]; then
  section "Swift package on Linux: SKIPPED (TANDEM_SKIP_SWIFT=1)"
else
  section "Swift package on Linux: swift build and swift test (Swift 6 from Debian trixie, in a chroot)"
  scripts/swift-test.sh
  echo "Swift package: $((SECONDS - swift_started)) s"
fi
# ---- end of Swift package on Linux ---------------------------------------------

# ---- Android flavour of the Kotlin bindings ------------------------------------
# The Android flavour (what the AAR compiles) compiled with warnings as errors
# against Robolectric's android-all, and android-lib/jvm-test's suites run
# under Robolectric at the newest SDK JDK 17 allows and at minSdk, against the
# host library and a real `tandem serve` (scripts/android-check.sh). The
# Android .so for device ABIs, the AAR and on-device tests need the NDK and
# Gradle (scripts/build-android.sh) and are not run here.
if [[ "${TANDEM_SKIP_ANDROID:-}" == 1 ]]; then
  section "Android bindings under Robolectric: SKIPPED (TANDEM_SKIP_ANDROID=1)"
else
  section "Android bindings: compiled against android-all, tests under Robolectric"
  scripts/android-check.sh
fi
# ---- end of Android flavour of the Kotlin bindings -----------------------------

# ---- Mobile targets -----------------------------------------------------------
# tandem-ffi checked for the Android ABIs and iOS devices (cargo check, with
# zig standing in for the platforms' C toolchains) and built as a real
# static library for macOS whose exports must match the Swift header. What
# is and is not verified: scripts/check-mobile-targets.sh.
# The script prints the time of each target; the section's total is in the
# summary at the end.
if [[ "${TANDEM_SKIP_MOBILE:-}" == 1 ]]; then
  section "mobile targets: SKIPPED (TANDEM_SKIP_MOBILE=1)"
else
  section "mobile targets: tandem-ffi checked for Android and iOS, built for macOS"
  scripts/check-mobile-targets.sh
fi
# ---- end of mobile targets -----------------------------------------------------

# ---- Fuzzing ------------------------------------------------------------------
# Every fuzz target (fuzz/: the wire decoder, the change-apply path, the user
# token parser) runs for TANDEM_FUZZ_SECONDS (default 20) each when a nightly
# toolchain and cargo-fuzz are installed; new inputs go to a scratch
# directory, not fuzz/corpus. Without them, the kept corpus is replayed
# through the same checks on the stable toolchain. The output says which ran,
# with executions and crashes per target; a crash fails the script.
fuzz_started=$SECONDS
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  section "fuzzing: each target for ${TANDEM_FUZZ_SECONDS:-20} s (nightly, cargo-fuzz)"
  scripts/fuzz.sh --seconds "${TANDEM_FUZZ_SECONDS:-20}" --scratch
else
  section "fuzzing: NOT RUN (no nightly toolchain or no cargo-fuzz); replaying the kept corpus on stable instead"
  scripts/fuzz.sh --replay
fi
echo "fuzzing: $((SECONDS - fuzz_started)) s"
# ---- end of fuzzing ------------------------------------------------------------

# ---- cargo deny ----------------------------------------------------------------
# Licenses, banned and duplicate crates and sources (deny.toml) are checked
# offline. Advisories need the RustSec database from github.com: when it
# cannot be fetched the output says so plainly and the script goes on; when
# it can, any finding fails the script.
deny_started=$SECONDS
section "cargo deny: licenses, bans, sources"
need cargo-deny "cargo install --locked cargo-deny"
cargo deny --locked check licenses bans sources
section "cargo deny: advisories"
advisories_log="$(mktemp)"
if cargo deny --locked check advisories >"$advisories_log" 2>&1; then
  echo "advisories: checked against the RustSec advisory database, no findings"
elif grep -q "failed to fetch advisory database" "$advisories_log"; then
  echo "advisories: not checked, the advisory database (github.com/rustsec/advisory-db) is unreachable from this machine"
else
  cat "$advisories_log" >&2
  rm -f "$advisories_log"
  echo "error: cargo deny found advisories (see above)" >&2
  exit 1
fi
rm -f "$advisories_log"
echo "cargo deny: $((SECONDS - deny_started)) s"
# ---- end of cargo deny -----------------------------------------------------------

section "done"
printf "time per section (%d s in all):\n" "$SECONDS"
printf "  %s\n" "${section_times[@]}"
