#!/usr/bin/env bash
# The mobile targets of tandem-ffi, checked on Linux without the Android NDK
# or Xcode, so that code which compiles only for the host fails here:
#
#  1. `cargo check -p tandem-ffi` for the Android ABIs (aarch64-linux-android,
#     armv7-linux-androideabi, x86_64-linux-android) and iOS devices
#     (aarch64-apple-ios), with the `encryption` feature (SQLCipher on
#     OpenSSL built from source). The Rust check is real: every crate is
#     type-checked for the target, with its pointer width and target_os. The
#     C build scripts (aws-lc, OpenSSL, SQLCipher) configure and compile for
#     the target's architecture with zig's C compiler standing in for the
#     platform's: musl's headers for Android, macOS's for iOS, no
#     optimization (-O0). Those objects are never linked; an app never ships
#     them.
#     OpenSSL is built from source for aarch64 and armv7 Android and for iOS.
#     For x86_64-linux-android, openssl-sys and SQLCipher use the OpenSSL
#     headers installed by the aarch64-linux-android build (OpenSSL installs
#     the same headers for both but for one RC4 typedef) instead of building
#     OpenSSL a third time for Android.
#     SQLCipher is compiled for iOS without its os_log log device
#     (SQLCIPHER_OMIT_LOG_DEVICE): zig ships no <os/log.h>.
#  2. A real static library for macOS on Apple silicon, built with
#     cargo-zigbuild (zig ships macOS's C headers): the debug build (no
#     optimization of ~270 crates, so faster than release) of
#     target/mobile/aarch64-apple-darwin/debug/libtandem_ffi.a, SQLCipher
#     again without the os_log device, on the OpenSSL the iOS check built
#     (zig compiled it for aarch64-macos either way). Its exported FFI functions must be
#     exactly those the generated Swift header declares
#     (bindings/generated/swift/TandemFFI.h, from scripts/gen-bindings.sh,
#     which this script runs first). Only the static library is built (what
#     the xcframework holds): linking the dylib needs the macOS SDK's
#     frameworks.
#
# Not verified here: linking for Android or iOS devices, the xcframework
# (scripts/build-xcframework.sh, macOS), the AAR (scripts/build-android.sh,
# the NDK), running on a device or simulator.
#
# Installed when missing and kept between runs: the rustup targets and
# rustup's llvm-tools (its llvm-nm reads the Mach-O archive, whose objects
# carry the bitcode of rustc's LLVM); zig and cargo-zigbuild from PyPI
# (versions pinned below) in a virtualenv under
# ${TANDEM_CACHE_DIR:-~/.cache/tandem}. Needs python3 with venv (Debian:
# apt-get install -y python3-venv), perl and make (OpenSSL's build).
#
# The cross builds go to $CARGO_TARGET_DIR/mobile (default target/mobile), so
# the host builds in target/ are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

ziglang_version=0.17.1
cargo_zigbuild_version=0.24.1

check_targets=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android aarch64-apple-ios)
library_target=aarch64-apple-darwin
# The environment of the cross builds only (in the host's, it would make
# cargo rebuild the host's target directory): the package's platforms
# (swift-package/Package.swift), iOS 15 and macOS 12; no debug info, of no
# use here and costly in time and disk.
cross_env=(IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=12.0 CARGO_PROFILE_DEV_DEBUG=0)

for tool in cargo rustup python3 perl make flock; do
  command -v "$tool" >/dev/null 2>&1 || {
    case "$tool" in
      cargo | rustup) hint="install Rust with rustup (https://rustup.rs)" ;;
      python3) hint="Debian: apt-get install -y python3 python3-venv" ;;
      flock) hint="Debian: apt-get install -y util-linux" ;;
      *) hint="Debian: apt-get install -y $tool" ;;
    esac
    echo "error: $tool is missing: $hint" >&2
    exit 1
  }
done

timings=()
took() { timings+=("$1: $((SECONDS - $2)) s"); echo "${timings[-1]}"; }

# ---- tools ---------------------------------------------------------------------
tools_started=$SECONDS
installed_targets="$(rustup target list --installed)"
missing_targets=()
for target in "${check_targets[@]}" "$library_target"; do
  grep -qx "$target" <<<"$installed_targets" || missing_targets+=("$target")
done
if ((${#missing_targets[@]})); then
  rustup target add "${missing_targets[@]}"
fi
rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
llvm_nm="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-nm"
[[ -x "$llvm_nm" ]] || { echo "error: no llvm-nm at $llvm_nm (rustup component add llvm-tools)" >&2; exit 1; }

# One virtualenv per pair of versions, shared by the checkouts on the
# machine; the lock keeps two runs from installing into it at once, and the
# marker file is written only once the installation is complete.
cache_dir="${TANDEM_CACHE_DIR:-$HOME/.cache/tandem}"
venv="$cache_dir/zig-venv-$ziglang_version-$cargo_zigbuild_version"
mkdir -p "$cache_dir"
(
  flock 9
  if [[ ! -f "$venv/installed" ]]; then
    echo "installing zig $ziglang_version and cargo-zigbuild $cargo_zigbuild_version into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || {
      echo "error: python3 cannot create a virtualenv: Debian: apt-get install -y python3-venv" >&2
      exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "ziglang==$ziglang_version" "cargo-zigbuild==$cargo_zigbuild_version"
    touch "$venv/installed"
  fi
) 9>"$venv.lock"
zig="$("$venv/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
[[ -x "$zig" ]] || { echo "error: no zig at $zig: remove $venv and run again" >&2; exit 1; }
took "tools (rustup targets, llvm-tools, zig $ziglang_version, cargo-zigbuild $cargo_zigbuild_version)" "$tools_started"

# The header the library's exports are compared with, generated from the
# host library of the current source.
scripts/gen-bindings.sh >/dev/null
header=bindings/generated/swift/TandemFFI.h

mobile_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/mobile"
# The C compiler, archiver and ranlib of each checked target: launchers of
# zig and scripts/lib/zig-cc (cargo and cc-rs take a program, not a command
# line). Their directory is named after zig's version, so a new zig makes
# cargo run the C build scripts again.
launchers="$mobile_dir/zig-$ziglang_version"
mkdir -p "$launchers"
zig_cc="$(realpath scripts/lib/zig-cc)"
write_launcher() {
  local file="$launchers/$1"
  shift
  {
    printf '#!/bin/sh\nexec'
    printf " '%s'" "$@"
    printf ' "$@"\n'
  } >"$file"
  chmod +x "$file"
}
write_launcher ar "$zig" ar
write_launcher ranlib "$zig" ranlib
# Bionic declares POSIX and BSD functions without feature macros; musl does
# under -std=c11 only with _DEFAULT_SOURCE (not _GNU_SOURCE, with which
# OpenSSL expects glibc's strerror_r).
write_launcher cc-aarch64-linux-android "$zig_cc" "$zig" aarch64-linux-musl -D_DEFAULT_SOURCE -O0 --
write_launcher cc-armv7-linux-androideabi "$zig_cc" "$zig" arm-linux-musleabi -D_DEFAULT_SOURCE -O0 --
write_launcher cc-x86_64-linux-android "$zig_cc" "$zig" x86_64-linux-musl -D_DEFAULT_SOURCE -O0 --
write_launcher cc-aarch64-apple-ios "$zig_cc" "$zig" aarch64-macos -O0 --
# cc-rs wants an existing SDK directory for iOS (or runs xcrun), and
# OpenSSL's ios64-cross configuration wants /SDKs/ in its path. An empty
# directory stands in: zig-cc drops -isysroot and zig uses its macOS headers.
ios_sdk="$launchers/iPhoneOS.platform/Developer/SDKs/iPhoneOS.sdk"
mkdir -p "$ios_sdk"

# ---- cargo check for Android and iOS ---------------------------------------------
for target in "${check_targets[@]}"; do
  target_started=$SECONDS
  env_name="${target//-/_}"
  target_env=(
    "CC_$env_name=$launchers/cc-$target"
    "AR_$env_name=$launchers/ar"
    "RANLIB_$env_name=$launchers/ranlib"
  )
  case "$target" in
    x86_64-linux-android)
      # The OpenSSL that the aarch64-linux-android check (run before) built
      # and installed: the newest, if an older build of openssl-sys is left.
      # shellcheck disable=SC2012  # our own build directories, newest first
      aarch64_openssl="$(ls -dt "$mobile_dir"/aarch64-linux-android/debug/build/openssl-sys-*/out/openssl-build/install 2>/dev/null | head -n 1)"
      [[ -n "$aarch64_openssl" ]] || { echo "error: no OpenSSL built for aarch64-linux-android in $mobile_dir" >&2; exit 1; }
      target_env+=("${env_name^^}_OPENSSL_NO_VENDOR=1" "${env_name^^}_OPENSSL_DIR=$aarch64_openssl")
      ;;
    *-apple-ios) target_env+=("SDKROOT=$ios_sdk" "LIBSQLITE3_FLAGS=-DSQLCIPHER_OMIT_LOG_DEVICE") ;;
  esac
  echo "--> cargo check -p tandem-ffi --target $target"
  env "${cross_env[@]}" "${target_env[@]}" cargo check --locked -p tandem-ffi --target "$target" --target-dir "$mobile_dir"
  took "cargo check $target" "$target_started"
done

# ---- a real static library for macOS -----------------------------------------
target_started=$SECONDS
echo "--> cargo zigbuild: libtandem_ffi.a for $library_target (debug)"
# The OpenSSL that the aarch64-apple-ios check built: zig compiled it for
# aarch64-macos, as it would compile it here, so it is not built again.
# shellcheck disable=SC2012  # our own build directories, newest first
ios_openssl="$(ls -dt "$mobile_dir"/aarch64-apple-ios/debug/build/openssl-sys-*/out/openssl-build/install 2>/dev/null | head -n 1)"
[[ -n "$ios_openssl" ]] || { echo "error: no OpenSSL built for aarch64-apple-ios in $mobile_dir" >&2; exit 1; }
library_env="${library_target//-/_}"
library_env="${library_env^^}"
env "${cross_env[@]}" PATH="$venv/bin:$PATH" LIBSQLITE3_FLAGS=-DSQLCIPHER_OMIT_LOG_DEVICE \
  "${library_env}_OPENSSL_NO_VENDOR=1" "${library_env}_OPENSSL_DIR=$ios_openssl" \
  "$venv/bin/cargo-zigbuild" rustc --locked -p tandem-ffi --lib --crate-type staticlib \
  --target "$library_target" --target-dir "$mobile_dir"
library="$mobile_dir/$library_target/debug/libtandem_ffi.a"
[[ -f "$library" ]] || { echo "error: $library was not built" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
grep -oE '\b(uniffi|ffi)_tandem_ffi_[a-z0-9_]+[[:space:]]*\(' "$header" \
  | sed -E 's/[[:space:]]*\($//' | sort -u >"$work/declared"
declared_count=$(wc -l <"$work/declared")
[[ "$declared_count" -gt 0 ]] || { echo "error: no FFI functions found in $header" >&2; exit 1; }
"$llvm_nm" --defined-only --extern-only --just-symbol-name --quiet "$library" >"$work/symbols"
# Mach-O names C symbols with a leading underscore.
sed -n -E 's/^_((uniffi|ffi)_tandem_ffi_[a-z0-9_]+)$/\1/p' "$work/symbols" | sort -u >"$work/exported"
not_exported="$(comm -23 "$work/declared" "$work/exported")"
not_declared="$(comm -13 "$work/declared" "$work/exported")"
if [[ -n "$not_exported" ]]; then
  echo "error: declared in $header, not exported by $library:" >&2
  echo "$not_exported" >&2
fi
if [[ -n "$not_declared" ]]; then
  echo "error: exported by $library, not declared in $header:" >&2
  echo "$not_declared" >&2
fi
[[ -z "$not_exported" && -z "$not_declared" ]] || exit 1
echo "symbols: $(basename "$library") ($library_target) exports exactly the $declared_count FFI functions TandemFFI.h declares"
took "libtandem_ffi.a for $library_target" "$target_started"

echo "mobile targets, time per part:"
printf "  %s\n" "${timings[@]}"
