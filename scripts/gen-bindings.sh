#!/usr/bin/env bash
# Generates the Swift and Kotlin bindings of tandem-ffi from the host build
# of the library. The outputs are build products (git-ignored, never edited
# by hand):
#
#   bindings/generated/swift/          Tandem.swift, TandemFFI.h, TandemFFI.modulemap
#   swift-package/Sources/Tandem/Generated/Tandem.swift   (a copy, compiled by the package)
#   bindings/generated/kotlin-jvm/     host-JVM flavour, compiled by android-lib/jvm-test
#   android-lib/src/generated/kotlin/  Android flavour, compiled into the AAR
#
# UniFFI reads the interface from metadata embedded in the library, so the
# library must not be stripped: this uses the unstripped debug build of the
# host. Honours CARGO_TARGET_DIR (default: ./target), so CI builds once.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
  echo "error: cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}

target_dir="${CARGO_TARGET_DIR:-target}"
case "$(uname -s)" in
  Darwin) library="$target_dir/debug/libtandem_ffi.dylib" ;;
  *) library="$target_dir/debug/libtandem_ffi.so" ;;
esac

cargo build --locked -p tandem-ffi -p uniffi-bindgen
[[ -f "$library" ]] || { echo "error: $library was not built" >&2; exit 1; }
bindgen="$target_dir/debug/uniffi-bindgen"

generated=bindings/generated
rm -rf "$generated" android-lib/src/generated swift-package/Sources/Tandem/Generated
mkdir -p "$generated/swift" "$generated/kotlin-jvm" android-lib/src/generated/kotlin \
  swift-package/Sources/Tandem/Generated

# Swift: the sources, the C header and the modulemap (names in
# bindings/ffi/uniffi.toml).
"$bindgen" generate --library "$library" --language swift --no-format \
  --out-dir "$generated/swift"
cp "$generated/swift/Tandem.swift" swift-package/Sources/Tandem/Generated/Tandem.swift

# Kotlin, host-JVM flavour (the Linux test harness) and Android flavour (the
# AAR); they differ only in how released objects are cleaned up.
"$bindgen" generate --library "$library" --language kotlin --no-format \
  --out-dir "$generated/kotlin-jvm"
"$bindgen" generate --library "$library" --language kotlin --no-format \
  --config bindings/ffi/uniffi-android.toml --out-dir android-lib/src/generated/kotlin

echo "generated bindings from $library:"
find "$generated" android-lib/src/generated swift-package/Sources/Tandem/Generated -type f | sort
