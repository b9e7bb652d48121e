#!/usr/bin/env bash
# Builds swift-package/Frameworks/TandemFFI.xcframework (macOS with Xcode):
# tandem-ffi as static libraries for iOS devices, the iOS simulator (arm64 +
# x86_64, merged with lipo) and macOS (arm64 + x86_64), with the generated C
# header and module map; and generates the Swift bindings into
# swift-package/Sources/Tandem/Generated. Then `cd swift-package && swift
# build` (or add the package to an Xcode project).
#
# One module name, TandemFFI, everywhere: the xcframework's file name, the
# module in its module.modulemap, the package's binaryTarget, and
# `ffi_module_name` in bindings/ffi/uniffi.toml.
#
#   scripts/build-xcframework.sh            release libraries
#   scripts/build-xcframework.sh --debug    debug libraries (faster to build)
set -euo pipefail
cd "$(dirname "$0")/.."

module=TandemFFI
profile=release
[[ "${1:-}" == "--debug" ]] && profile=debug

[[ "$(uname -s)" == Darwin ]] || { echo "error: building the xcframework needs macOS with Xcode" >&2; exit 1; }
for tool in cargo rustup xcodebuild lipo; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool is missing: install Xcode (xcode-select --install) and Rust (https://rustup.rs)" >&2
    exit 1
  }
done

ios=aarch64-apple-ios
ios_sim=(aarch64-apple-ios-sim x86_64-apple-ios)
macos=(aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "$ios" "${ios_sim[@]}" "${macos[@]}"

# The package's platforms (Package.swift): iOS 15, macOS 12.
export IPHONEOS_DEPLOYMENT_TARGET=15.0
export MACOSX_DEPLOYMENT_TARGET=12.0

target_dir="${CARGO_TARGET_DIR:-target}"
profile_flag=()
[[ "$profile" == release ]] && profile_flag=(--release)
for target in "$ios" "${ios_sim[@]}" "${macos[@]}"; do
  cargo build --locked -p tandem-ffi --lib "${profile_flag[@]}" --target "$target"
done

# The header, module map and Swift sources, generated from the (unstripped)
# debug build of the host library.
scripts/gen-bindings.sh
grep -q "^module $module " bindings/generated/swift/$module.modulemap || {
  echo "error: bindings/generated/swift/$module.modulemap does not declare module $module" >&2
  exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The header and module map sit in a directory named after the module: with
# several xcframeworks in one app, each copying a bare module.modulemap into
# the same include directory would collide; clang finds <include>/<Module>/module.modulemap.
headers="$work/headers/$module"
mkdir -p "$headers" "$work/ios" "$work/ios-simulator" "$work/macos"
cp "bindings/generated/swift/$module.h" "$headers/"
cp "bindings/generated/swift/$module.modulemap" "$headers/module.modulemap"

lib() { echo "$target_dir/$1/$profile/libtandem_ffi.a"; }
cp "$(lib "$ios")" "$work/ios/libtandem_ffi.a"
lipo -create "$(lib "${ios_sim[0]}")" "$(lib "${ios_sim[1]}")" -output "$work/ios-simulator/libtandem_ffi.a"
lipo -create "$(lib "${macos[0]}")" "$(lib "${macos[1]}")" -output "$work/macos/libtandem_ffi.a"

output="swift-package/Frameworks/$module.xcframework"
rm -rf "$output"
mkdir -p "$(dirname "$output")"
xcodebuild -create-xcframework \
  -library "$work/ios/libtandem_ffi.a" -headers "$work/headers" \
  -library "$work/ios-simulator/libtandem_ffi.a" -headers "$work/headers" \
  -library "$work/macos/libtandem_ffi.a" -headers "$work/headers" \
  -output "$output"

echo "built $output ($profile) and swift-package/Sources/Tandem/Generated/Tandem.swift"
echo "for a release: (cd swift-package/Frameworks && zip -qry $module.xcframework.zip $module.xcframework)"
echo "               then swift package compute-checksum swift-package/Frameworks/$module.xcframework.zip"
