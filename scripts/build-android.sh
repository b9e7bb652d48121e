#!/usr/bin/env bash
# Builds what android-lib needs: tandem-ffi for the Android ABIs
# (arm64-v8a, armeabi-v7a, x86_64, x86) into android-lib/src/main/jniLibs
# with cargo-ndk, and the Android flavour of the Kotlin bindings into
# android-lib/src/generated/kotlin. Then, if Gradle is installed, the AAR:
# android-lib/build/outputs/aar/.
#
# Needs the Android NDK (ANDROID_NDK_HOME, or an SDK with the NDK installed),
# cargo-ndk (`cargo install cargo-ndk`), and cmake (aws-lc-rs, the TLS
# crypto, compiles C with the NDK's clang).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo rustup cargo-ndk cmake; do
  command -v "$tool" >/dev/null 2>&1 || {
    case "$tool" in
      cargo-ndk) hint="cargo install cargo-ndk" ;;
      cmake) hint="install cmake (Debian: apt-get install -y cmake)" ;;
      *) hint="install Rust with rustup (https://rustup.rs)" ;;
    esac
    echo "error: $tool is missing: $hint" >&2
    exit 1
  }
done
if [[ -z "${ANDROID_NDK_HOME:-}" && -z "${ANDROID_HOME:-}" && -z "${ANDROID_SDK_ROOT:-}" ]]; then
  echo "error: the Android NDK is missing: install it and set ANDROID_NDK_HOME" >&2
  exit 1
fi

# The oldest Android the AAR supports (android-lib/build.gradle.kts minSdk).
min_sdk=24

rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android i686-linux-android
# The Android libraries may be stripped (cargo-ndk does); the bindings are
# generated from the unstripped host library below, never from these.
cargo ndk --platform "$min_sdk" \
  -t arm64-v8a -t armeabi-v7a -t x86_64 -t x86 \
  -o android-lib/src/main/jniLibs \
  build --locked --release -p tandem-ffi --lib

scripts/gen-bindings.sh

if command -v gradle >/dev/null 2>&1; then
  (cd android-lib && gradle --no-daemon assembleRelease)
  echo "built android-lib/build/outputs/aar/"
else
  echo "jniLibs and bindings are in android-lib; build the AAR with Gradle 8.9+: (cd android-lib && gradle assembleRelease)"
fi
