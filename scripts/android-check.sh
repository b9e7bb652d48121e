#!/usr/bin/env bash
# The Android flavour of the Kotlin bindings, checked on Linux without an
# Android SDK or NDK (android-lib/robolectric-test, Maven):
#
#  1. The Android flavour of the generated bindings plus android-lib's
#     src/main/kotlin compile with warnings as errors against Robolectric's
#     android-all jar (the Android framework as Java classes).
#  2. The JVM test suites of android-lib/jvm-test (the local client, sync
#     against a real `tandem serve`, coordination, the README example) run
#     unchanged under Robolectric, against the host libtandem_ffi.so, at two
#     SDK levels: the newest Robolectric runs on JDK 17, where the bindings
#     release objects through android.system.SystemCleaner, and the
#     library's minSdk (android-lib/build.gradle.kts), where they fall back
#     to JNA's cleaner. Prints passed/failed counts per SDK; any failure
#     fails the script.
#
# Before anything is built, the Kotlin example of README.md ("Use Tandem
# from an app") must be the code ReadmeExampleTest runs (the lines between
# its `// README: begin/end Kotlin example` markers, indentation aside).
#
# Not checked here: libtandem_ffi.so built for the device ABIs, the AAR
# built by Gradle, tests on a device or emulator (scripts/build-android.sh
# builds the first two with the NDK).
#
# Generates the bindings (scripts/gen-bindings.sh) and builds the `tandem`
# server first. The first run downloads about 750 MB from Maven Central
# into ~/.m2 (two android-all-instrumented jars, one android-all, Robolectric).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }
}
need cargo "install Rust with rustup (https://rustup.rs)"
need java "install a JDK 17 or newer (Debian: apt-get install -y openjdk-17-jdk-headless)"
need mvn "install Maven (Debian: apt-get install -y maven)"
need pgrep "install procps (Debian: apt-get install -y procps)"
java_version="$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')"
if [[ "${java_version%%.*}" -lt 17 ]]; then
  echo "error: java is version $java_version: install a JDK 17 or newer" >&2
  exit 1
fi

module=android-lib/robolectric-test
pom_property() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$module/pom.xml"; }
newest_sdk="$(pom_property android.sdk.newest)"
oldest_sdk="$(pom_property android.sdk.oldest)"
min_sdk="$(sed -n 's/^ *minSdk *= *\([0-9]*\).*/\1/p' android-lib/build.gradle.kts)"
if [[ -z "$min_sdk" || "$oldest_sdk" != "$min_sdk" ]]; then
  echo "error: $module/pom.xml runs the tests at SDK $oldest_sdk but android-lib/build.gradle.kts has minSdk ${min_sdk:-(not found)}: make android.sdk.oldest (and android.all.oldest) match" >&2
  exit 1
fi

readme_example() {
  awk '/^## / { section = $0 } section == "## Use Tandem from an app" && /^```kotlin$/ { inside = 1; next }
       /^```$/ { inside = 0 } inside' README.md
}
tested_example() {
  awk '/README: end Kotlin example/ { inside = 0 } inside; /README: begin Kotlin example/ { inside = 1 }' \
    android-lib/jvm-test/src/test/kotlin/dev/tandem/ReadmeExampleTest.kt
}
unindent() { sed -E 's/^[[:space:]]+//'; }
if [[ -z "$(tested_example)" || -z "$(readme_example)" ]]; then
  echo "error: no Kotlin example in README.md's \"Use Tandem from an app\" or between the markers in ReadmeExampleTest.kt" >&2
  exit 1
fi
if ! diff -u --label README.md --label ReadmeExampleTest.kt <(readme_example | unindent) <(tested_example | unindent); then
  echo "error: the Kotlin example in README.md differs from the one ReadmeExampleTest runs (diff above)" >&2
  exit 1
fi
echo "README's Kotlin example is the code ReadmeExampleTest runs"

started=$SECONDS
target_dir="$(realpath "${CARGO_TARGET_DIR:-target}")"
scripts/gen-bindings.sh >/dev/null
cargo build --locked -p tandem-cli

echo "compiling the Android flavour against android-all and running the tests under Robolectric at SDK $newest_sdk and SDK $oldest_sdk"
rm -rf "$module"/target/surefire-reports-sdk*
# Maven runs in a process group of its own: whatever the tests start (each
# `tandem serve`) is in it, so anything still running when Maven is done is
# a leak, reported and stopped here, and an interrupted run stops it too.
# Its output goes to a file first: Maven 3.8 with -q writes stray colour
# resets without a newline, which would run into the count lines below.
maven_log="$(mktemp)"
set -m
(cd "$module" && exec mvn -B -q -Dstyle.color=never test \
  -Djna.library.path="$target_dir/debug" -Dtandem.cli="$target_dir/debug/tandem" \
  -Dmaven.test.failure.ignore=true) >"$maven_log" 2>&1 &
maven_group=$!
set +m
trap 'kill -- -"$maven_group" 2>/dev/null || true; rm -f "$maven_log"' EXIT
maven_status=0
wait "$maven_group" || maven_status=$?
sed 's/\x1b\[0m//g' "$maven_log"
rm -f "$maven_log"
trap - EXIT
leaked="$(pgrep -g "$maven_group" || true)"
if [[ -n "$leaked" ]]; then
  echo "error: the tests left processes running; stopping them:" >&2
  # shellcheck disable=SC2086  # one PID a word
  ps -o pid=,args= -p $(echo $leaked | tr ' ' ',') >&2 || true
  kill -KILL -- -"$maven_group" 2>/dev/null || true
  exit 1
fi
if [[ "$maven_status" -ne 0 ]]; then
  echo "error: Maven failed (exit $maven_status) in $module" >&2
  exit 1
fi

# `mvn -q` prints only failures; say what ran at each SDK.
failed_sdks=0
for sdk in "$newest_sdk" "$oldest_sdk"; do
  reports=("$module/target/surefire-reports-sdk$sdk"/TEST-*.xml)
  if [[ ! -f "${reports[0]}" ]]; then
    echo "error: no test report for SDK $sdk in $module/target/surefire-reports-sdk$sdk" >&2
    exit 1
  fi
  counts="$(cat "${reports[@]}" | awk '
    /<testsuite / {
      for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) { gsub(/"/, "", kv[2]); n[kv[1]] += kv[2] }
    }
    END {
      failed = n["failures"] + n["errors"]
      printf "%d %d %d\n", n["tests"] - failed - n["skipped"], failed, n["skipped"]
    }')"
  read -r passed failed skipped <<<"$counts"
  echo "Robolectric-SDK-$sdk: $passed passed, $failed failed, $skipped skipped"
  if [[ "$failed" -ne 0 || "$passed" -eq 0 ]]; then
    failed_sdks=$((failed_sdks + 1))
  fi
done
echo "android: $((SECONDS - started)) s"
if [[ "$failed_sdks" -ne 0 ]]; then
  echo "error: the Android tests failed or ran none at $failed_sdks SDK level(s): see $module/target/surefire-reports-sdk*" >&2
  exit 1
fi
