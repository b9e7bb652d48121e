#!/usr/bin/env bash
# Compiles and tests the Swift package (swift-package/) on Linux with the real
# Swift compiler: Swift 6 from Debian 13 "trixie" (package swiftlang), in a
# chroot, linked against the host build of libtandem_ffi.so and tested
# against a `tandem serve` built from the same commit. scripts/test.sh calls
# it; it also runs on its own. Needs root (debootstrap, chroot, mounts).
#
# Phases, each timed in the output:
#  1. host build: scripts/gen-bindings.sh (the debug tandem-ffi library, never
#     stripped, and the generated Swift, C header and modulemap) and the
#     `tandem` binary the tests start as their server.
#  2. toolchain: a trixie root with swiftlang in
#       ${TANDEM_CACHE_DIR:-$HOME/.cache/tandem}/swift-trixie
#     outside the checkout. It is built once per machine (debootstrap and apt,
#     a few minutes, about 3.3 GB) in a scratch directory that becomes the
#     root only when complete; later runs check it (its stamp, its packages,
#     `swift --version`) and reuse it, or rebuild it when broken. debootstrap
#     is installed on the host when missing. TANDEM_DEBIAN_MIRROR picks the
#     mirror (default http://deb.debian.org/debian).
#  3. package: the README's Swift example is checked against the code
#     ReadmeExampleTests runs; then the Linux package is staged in
#       ${TANDEM_CACHE_DIR:-$HOME/.cache/tandem}/swift-package-linux/<checkout>
#     (kept between runs, files copied only when changed, so builds are
#     incremental) with a manifest written here (swift-tools-version 6.0):
#     the generated C header and modulemap as a system library target,
#     TandemFFI, in place of the xcframework swift-package/Package.swift uses
#     on Apple platforms; the generated Tandem.swift as module TandemBindings
#     in Swift 5 language mode; Sources/Tandem's conveniences as module
#     Tandem (re-exporting TandemBindings) and Tests/TandemTests, both in
#     Swift 6 language mode.
#  4. swift build (with the tests), warnings as errors.
#  5. swift test, with TANDEM_CLI naming the `tandem` binary and
#     TANDEM_FIXTURES the checkout's tests/fixtures (the TLS certificates);
#     the output counts the tests that passed, failed and were skipped. A
#     failed or skipped test, or a crash, fails the script.
#
# Each run happens in private mount and PID namespaces (unshare): the mounts
# into the root (/proc, /dev, a tmpfs /tmp, the staged package, the target
# directory and tests/fixtures read-only) are undone by a trap on exit and, in any case, vanish
# with the namespace, also when the run is killed. A process the tests leave
# running (a `tandem serve` they did not stop) is reported as a failure and
# killed; the kernel kills whatever else is left when the namespace ends.
#
#   TANDEM_SWIFT_TEST_TIMEOUT   seconds `swift test` may take (default 900)
#   TANDEM_SWIFT_TEST_FILTER    passed to `swift test --filter` (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$(pwd -P)"
self="$checkout/scripts/swift-test.sh"

suite=trixie
mirror="${TANDEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages=(swiftlang swiftlang-dev libc6-dev libstdc++-14-dev ca-certificates)
cache_dir="${TANDEM_CACHE_DIR:-${HOME:-/root}/.cache/tandem}"
root="$cache_dir/swift-$suite"
# What the root was built from; a root with another stamp is rebuilt.
stamp="suite=$suite packages=${packages[*]}"
swift_bin=/usr/libexec/swift/bin
# Where the staged package, the host's target directory and the checkout's
# test fixtures appear in the root.
package_in_root=/tandem/package
lib_in_root=/tandem/lib
fixtures_in_root=/tandem/fixtures

fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
elapsed() { printf '%d s' "$((SECONDS - $1))"; }

# Runs a command in the root: PATH has the Swift toolchain, the environment
# is otherwise empty but for the given NAME=VALUE words.
in_root() {
  local env_words=()
  while [[ "${1:-}" == *=* ]]; do env_words+=("$1"); shift; done
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TMPDIR=/tmp \
    PATH="$swift_bin:/usr/sbin:/usr/bin:/sbin:/bin" "${env_words[@]}" "$@"
}

# ---- inside the namespaces --------------------------------------------------
# `--in-namespace setup|test ROOT` is how this script re-runs itself under
# unshare. It is PID 1 of its PID namespace: every process it starts dies
# when it exits.
if [[ "${1:-}" == --in-namespace ]]; then
  mode=$2
  root=$3
  mounted=()
  unmount_all() {
    local index
    for ((index = ${#mounted[@]} - 1; index >= 0; index--)); do
      umount -R "${mounted[index]}" 2>/dev/null || umount -lR "${mounted[index]}" 2>/dev/null || true
    done
    mounted=()
  }
  trap unmount_all EXIT
  # PID 1 ignores signals it has no handler for.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mount_in_root() { # mount ARGS... TARGET (TARGET inside the root)
    local target="$root${*: -1}"
    mkdir -p "$target"
    mount "${@:1:$#-1}" "$target"
    mounted+=("$target")
  }
  mount_in_root -t proc proc /proc
  mount_in_root --rbind /dev /dev
  mount_in_root -t tmpfs -o size=8g,mode=1777 tmpfs /tmp

  case "$mode" in
    check)
      in_root swift --version 2>/dev/null | awk '/Swift version 6\./ { print; found = 1 } END { exit !found }'
      ;;
    setup)
      if [[ -f /etc/resolv.conf ]]; then cp -L /etc/resolv.conf "$root/etc/resolv.conf"; fi
      in_root DEBIAN_FRONTEND=noninteractive apt-get update -qq
      in_root DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
      in_root apt-get clean
      ;;
    test)
      build_dir=$4
      lib_dir=$5
      fixtures_dir=$6
      mount_in_root --bind "$build_dir" "$package_in_root"
      mount_in_root --bind "$lib_dir" "$lib_in_root"
      mount -o remount,bind,ro "$root$lib_in_root"
      mount_in_root --bind "$fixtures_dir" "$fixtures_in_root"
      mount -o remount,bind,ro "$root$fixtures_in_root"

      started=$SECONDS
      printf '\n==> swift build (Swift 6 language mode, warnings are errors)\n'
      in_root sh -c "cd $package_in_root && swift build --build-tests -Xswiftc -warnings-as-errors"
      echo "swift build: $(elapsed "$started")"

      started=$SECONDS
      printf '\n==> swift test (against a real tandem serve)\n'
      filter=""
      [[ -n "${TANDEM_SWIFT_TEST_FILTER:-}" ]] && filter="--filter $(printf '%q' "$TANDEM_SWIFT_TEST_FILTER")"

      # The processes of this namespace but this shell, its command
      # substitutions and the ones named in $1 (pids), one per line with
      # their command line; with $2 = orphans, only those whose parent is
      # this shell, PID 1, which adopts a process whose parent ended.
      processes() {
        local keep=" 1 $BASHPID ${1:-} " proc pid cmdline
        for proc in /proc/[0-9]*; do
          pid=${proc#/proc/}
          [[ "$keep" == *" $pid "* ]] && continue
          if [[ "${2:-}" == orphans ]]; then
            [[ "$(awk '/^PPid:/ { print $2 }' "$proc/status" 2>/dev/null)" == 1 ]] || continue
          fi
          cmdline="$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null || true)"
          [[ -n "$cmdline" ]] && echo "$pid: $cmdline"
        done
        return 0
      }
      leftovers=""
      kill_leftovers() { # $1: the list from `processes`
        echo "error: processes the tests left running (killed now):" >&2
        sed 's/^/  /' <<<"$1" >&2
        while read -r line; do kill -KILL "${line%%:*}" 2>/dev/null || true; done <<<"$1"
        leftovers+="$1"$'\n'
      }

      # The output goes to a file that tail shows as it grows, not through a
      # pipe that a process left behind could hold open. A crash prints a
      # backtrace; symbolicating the debug build of the library in full
      # would take minutes.
      log="$root/tmp/swift-test.log" # on the tmpfs: gone with the run
      : >"$log"
      in_root TANDEM_CLI="$lib_in_root/tandem" TANDEM_FIXTURES="$fixtures_in_root" \
        SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=yes,symbolicate=fast}" \
        timeout --kill-after=30 "${TANDEM_SWIFT_TEST_TIMEOUT:-900}" \
        sh -c "cd $package_in_root && exec swift test --skip-build $filter" >"$log" 2>&1 &
      test_pid=$!
      tail -n +1 -f --pid="$test_pid" "$log" &
      tail_pid=$!
      # swift test waits until the output of the test process closes, which
      # a process the tests left behind (inheriting it) would delay forever.
      # Such a process outlives its parent and is adopted by PID 1: one that
      # stays for 30 s is killed, so that swift test can end.
      orphaned_since=""
      while kill -0 "$test_pid" 2>/dev/null; do
        orphans="$(processes "$test_pid $tail_pid" orphans)"
        if [[ -z "$orphans" ]]; then
          orphaned_since=""
        elif [[ -z "$orphaned_since" ]]; then
          orphaned_since=$SECONDS
        elif ((SECONDS - orphaned_since >= 30)); then
          kill_leftovers "$orphans"
          orphaned_since=""
        fi
        sleep 1
      done
      status=0
      wait "$test_pid" || status=$?
      wait "$tail_pid" || true
      [[ $status -eq 124 ]] && echo "error: swift test took more than ${TANDEM_SWIFT_TEST_TIMEOUT:-900} s" >&2
      echo "swift test: $(elapsed "$started")"

      # XCTest prints one line per test case: passed, failed or skipped.
      passed=$(grep -cE "^Test Case '.*' passed" "$log" || true)
      failed=$(grep -cE "^Test Case '.*' failed" "$log" || true)
      skipped=$(grep -cE "^Test Case '.*' skipped" "$log" || true)
      # A test that started and has no result crashed the test process.
      crashed=$(awk -F"'" '/^Test Case .* started/ { name = $2 } /^Test Case .* (passed|failed|skipped)/ { name = "" }
        END { print name }' "$log")
      echo "Swift tests: $passed passed, $failed failed, $skipped skipped${crashed:+; the test process crashed in $crashed}"

      # Every server a test starts must be stopped by the test. Anything
      # still running now (after a moment for a watcher to see its test
      # process gone) was left behind.
      for _ in 1 2 3 4 5 6 7 8 9 10; do
        [[ -z "$(processes)" ]] && break
        sleep 0.2
      done
      remaining="$(processes)"
      [[ -z "$remaining" ]] || kill_leftovers "$remaining"
      if [[ -n "$leftovers" ]]; then
        [[ $status -ne 0 ]] || status=1
      elif [[ $status -eq 0 && $skipped -gt 0 ]]; then
        echo "error: $skipped Swift tests were skipped" >&2
        status=1
      elif [[ $status -eq 0 && $passed -eq 0 ]]; then
        echo "error: no Swift test ran" >&2
        status=1
      fi
      exit "$status"
      ;;
    *) fail "unknown mode $mode" ;;
  esac
  exit 0
fi

# ---- on the host ------------------------------------------------------------
[[ "$(uname -s)" == Linux ]] || fail "this script is for Linux; on macOS run swift test in swift-package/"
[[ "$(id -u)" -eq 0 ]] || fail "needs root (debootstrap, chroot, mounts): run as root, or set TANDEM_SKIP_SWIFT=1 for scripts/test.sh"
for tool in unshare chroot flock mount cargo; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing"
done
total_started=$SECONDS

# Runs this script's namespace part: private mounts, own PIDs. unshare waits
# with SIGINT and SIGTERM blocked and kills the namespace (--kill-child) when
# it dies, so a signal that stops this script kills unshare.
namespace_pid=""
in_namespaces() {
  unshare --mount --propagation private --pid --fork --kill-child --mount-proc -- \
    "$self" --in-namespace "$@" &
  namespace_pid=$!
  local status=0
  wait "$namespace_pid" || status=$?
  namespace_pid=""
  return "$status"
}
stop_namespace() {
  if [[ -n "$namespace_pid" ]]; then kill -KILL "$namespace_pid" 2>/dev/null || true; fi
}
trap 'stop_namespace; exit 130' INT
trap 'stop_namespace; exit 143' TERM
trap 'stop_namespace; exit 129' HUP

# 1. host build
started=$SECONDS
printf '\n==> host build: tandem-ffi (generated bindings) and tandem\n'
scripts/gen-bindings.sh >/dev/null
cargo build --locked -p tandem-cli
target_dir="$(realpath "${CARGO_TARGET_DIR:-target}")"
lib_dir="$target_dir/debug"
for file in "$lib_dir/libtandem_ffi.so" "$lib_dir/tandem" bindings/generated/swift/TandemFFI.h; do
  [[ -f "$file" ]] || fail "$file was not built"
done
echo "host build: $(elapsed "$started")"

# 2. toolchain
started=$SECONDS
printf '\n==> Swift toolchain: Debian %s root in %s\n' "$suite" "$root"
mkdir -p "$cache_dir"
# Runs share the root under a shared lock; one that finds it broken takes
# the lock exclusively (once the others are done) to build it again.
exec {lock_fd}>"$cache_dir/swift-$suite.lock"
flock -s "$lock_fd"

# Whether the root is complete (stamp) and working (packages, swift runs);
# sets root_version.
root_version=""
root_works() {
  [[ -f "$root/etc/tandem-swift-root" && "$(cat "$root/etc/tandem-swift-root")" == "$stamp" ]] || return 1
  local states
  states="$(chroot "$root" dpkg-query -W -f='${db:Status-Abbrev}\n' "${packages[@]}" 2>/dev/null)" || return 1
  [[ "$(grep -c '^ii' <<<"$states")" -eq ${#packages[@]} ]] || return 1
  root_version="$(in_namespaces check "$root")"
}

# Removes a root, refusing if anything is mounted inside it (which rm would
# follow into the host's files).
remove_root() {
  local dir=$1
  [[ -e "$dir" ]] || return 0
  if awk -v dir="$dir" '$5 == dir || index($5, dir "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    fail "$dir has mounts inside it (see /proc/self/mountinfo): unmount them, then run again"
  fi
  rm -rf --one-file-system "$dir"
}

if root_works; then
  echo "reusing the root: $root_version"
else
  flock "$lock_fd" # exclusive, once the runs using the root are done
  if root_works; then
    echo "reusing the root, which another run built meanwhile: $root_version"
  else
    if [[ -e "$root" ]]; then
      echo "the root is incomplete or broken: building it again"
    else
      echo "no root yet: building it (a few minutes, once per machine)"
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
      echo "installing debootstrap on the host"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    partial="$root.partial"
    remove_root "$root"
    remove_root "$partial"
    step=$SECONDS
    echo "debootstrap --variant=minbase $suite from $mirror"
    # In a mount namespace of its own: the /proc it mounts in the new root
    # goes away with it, also if it is killed.
    unshare --mount --propagation private -- \
      debootstrap --variant=minbase "$suite" "$partial" "$mirror" >"$cache_dir/debootstrap.log" 2>&1 ||
      fail "debootstrap failed: see $cache_dir/debootstrap.log"
    echo "debootstrap: $(elapsed "$step")"
    step=$SECONDS
    echo "apt-get install ${packages[*]}"
    in_namespaces setup "$partial"
    echo "apt-get install: $(elapsed "$step")"
    echo "$stamp" >"$partial/etc/tandem-swift-root"
    mv "$partial" "$root"
    root_works || fail "the new root at $root does not run swift"
    echo "built the root: $root_version, $(du -sh "$root" | cut -f1)"
  fi
fi
flock -s "$lock_fd" # shared while in use: no other run rebuilds it meanwhile
echo "toolchain: $(elapsed "$started")"

# 3. package
started=$SECONDS
printf '\n==> Swift package for Linux\n'
# The README's Swift example must be the code ReadmeExampleTests runs (the
# same lines, indentation aside).
readme_example() { awk '/^```swift$/ { inside = 1; next } /^```$/ { inside = 0 } inside' README.md; }
tested_example() {
  awk '/README: end Swift example/ { inside = 0 } inside; /README: begin Swift example/ { inside = 1 }' \
    swift-package/Tests/TandemTests/ReadmeExampleTests.swift
}
unindent() { sed -E 's/^[[:space:]]+//'; }
[[ -n "$(tested_example)" ]] || fail "no README example between the markers in ReadmeExampleTests.swift"
if ! diff -u --label README.md --label ReadmeExampleTests.swift <(readme_example | unindent) <(tested_example | unindent); then
  fail "the Swift example in README.md differs from the one ReadmeExampleTests runs (diff above)"
fi
build_dir="$cache_dir/swift-package-linux/$(basename "$checkout")-$(printf '%s' "$checkout" | sha256sum | cut -c1-12)"
mkdir -p "$build_dir"
exec {build_lock_fd}>"$build_dir.lock"
flock -n "$build_lock_fd" || { echo "another run is using $build_dir: waiting"; flock "$build_lock_fd"; }

# Copies the files of directory $1 into $2, writing only those that changed
# (so the build stays incremental) and removing those that are gone; $3, if
# given, names a subdirectory of $1 to leave out.
sync_dir() {
  local from=$1 to=$2 skip=${3:-} file
  mkdir -p "$to"
  (cd "$from" && find . -type f) | while read -r file; do
    [[ -n "$skip" && "$file" == "./$skip/"* ]] && continue
    if ! cmp -s "$from/$file" "$to/$file"; then
      mkdir -p "$(dirname "$to/$file")"
      cp "$from/$file" "$to/$file"
    fi
  done
  (cd "$to" && find . -type f) | while read -r file; do
    if [[ ! -f "$from/$file" || (-n "$skip" && "$file" == "./$skip/"*) ]]; then rm -f "$to/$file"; fi
  done
}
# Copies file $1 to $2 unless $2 already holds the same bytes.
cp_if_changed() { cmp -s "$1" "$2" || cp "$1" "$2"; }
# Writes stdin to file $1 unless it already holds exactly that.
write_if_changed() {
  local content
  content="$(cat)"
  [[ -f "$1" && "$(cat "$1")" == "$content" ]] || printf '%s\n' "$content" >"$1"
}

# The layout of the staged package:
#   FFI/            the generated C header and modulemap: system library TandemFFI
#   Bindings/       the generated Tandem.swift: module TandemBindings, Swift 5 mode
#   Conveniences/   Sources/Tandem but Generated/: module Tandem, Swift 6 mode,
#                   re-exporting TandemBindings
#   Tests/TandemTests
sync_dir swift-package/Sources/Tandem "$build_dir/Conveniences/Tandem" Generated
sync_dir swift-package/Tests/TandemTests "$build_dir/Tests/TandemTests"
mkdir -p "$build_dir/FFI" "$build_dir/Bindings" "$build_dir/Conveniences/Linux"
cp_if_changed swift-package/Sources/Tandem/Generated/Tandem.swift "$build_dir/Bindings/Tandem.swift"
cp_if_changed bindings/generated/swift/TandemFFI.h "$build_dir/FFI/TandemFFI.h"
# The generated modulemap names Darwin, which Linux has not.
grep -v 'use "Darwin"' bindings/generated/swift/TandemFFI.modulemap |
  write_if_changed "$build_dir/FFI/module.modulemap"
write_if_changed "$build_dir/Conveniences/Linux/Exports.swift" <<'EOF'
// Written by scripts/swift-test.sh: on Linux the generated bindings are a
// module of their own (see Package.swift); `import Tandem` brings them too.
@_exported import TandemBindings
EOF
write_if_changed "$build_dir/Package.swift" <<EOF
// swift-tools-version:6.0
// Written by scripts/swift-test.sh: the Tandem package for Linux, from the
// sources of swift-package/ (whose Package.swift builds one module, Tandem,
// on Apple platforms). Here the C side of the bindings is a system library
// target (the generated header and modulemap) linked against the host build
// of libtandem_ffi.so in $lib_in_root instead of the xcframework, and the
// generated Tandem.swift is a module of its own, TandemBindings, compiled in
// Swift 5 language mode: the code UniFFI generates for async callback
// interfaces is not Swift 6 clean, and Swift 6.0.3 crashes on it in Swift 6
// mode. The conveniences (module Tandem, re-exporting TandemBindings) and the
// tests are compiled in Swift 6 language mode; they use only the public API
// of the bindings, as an app does.
import PackageDescription

let package = Package(
    name: "Tandem",
    products: [
        .library(name: "Tandem", targets: ["Tandem"]),
    ],
    targets: [
        .systemLibrary(name: "TandemFFI", path: "FFI"),
        .target(
            name: "TandemBindings",
            dependencies: ["TandemFFI"],
            path: "Bindings",
            swiftSettings: [.swiftLanguageMode(.v5)],
            linkerSettings: [
                .linkedLibrary("tandem_ffi"),
                .unsafeFlags(["-L$lib_in_root", "-Xlinker", "-rpath", "-Xlinker", "$lib_in_root"]),
            ]
        ),
        .target(name: "Tandem", dependencies: ["TandemBindings"], path: "Conveniences"),
        .testTarget(name: "TandemTests", dependencies: ["Tandem"], path: "Tests/TandemTests"),
    ]
)
EOF
echo "staged in $build_dir: $(elapsed "$started")"

# 4 and 5, in the namespaces.
status=0
in_namespaces test "$root" "$build_dir" "$lib_dir" "$checkout/tests/fixtures" || status=$?
echo "Swift on Linux: $(elapsed "$total_started") in all"
exit "$status"
