#!/usr/bin/env bash
# The checks of the Swift bindings that run without a Swift compiler (on
# Linux CI). Run scripts/gen-bindings.sh first.
#
#  1. The generated C header compiles as Objective-C with -Wpedantic -Werror.
#     (clang: the header uses clang's nullability qualifiers, which gcc does
#     not know.)
#  2. Every FFI function the header declares is exported by the library: a
#     program that takes the address of each one links against it, and
#     `nm -D` lists each one, and every FFI function the Swift source calls
#     is declared in the header.
#  3. The public Swift API equals the golden file swift-package/api/Tandem.api,
#     so API changes show in review. `--update` rewrites the golden file.
#
# scripts/swift-test.sh compiles and tests the Swift package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

update=false
[[ "${1:-}" == "--update" ]] && update=true

for tool in clang nm awk; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool is missing: install it (Debian: apt-get install -y clang binutils gawk)" >&2
    exit 1
  }
done

target_dir="${CARGO_TARGET_DIR:-target}"
library="$target_dir/debug/libtandem_ffi.so"
swift_dir=bindings/generated/swift
header="$swift_dir/TandemFFI.h"
swift_source="$swift_dir/Tandem.swift"
golden=swift-package/api/Tandem.api
for file in "$library" "$header" "$swift_source"; do
  [[ -f "$file" ]] || { echo "error: $file is missing: run scripts/gen-bindings.sh" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ffi_names() { grep -oE '\b(uniffi|ffi)_tandem_ffi_[a-z0-9_]+' "$@" | sort -u; }

# 1 and 2: a program that includes the header and takes every function's
# address, compiled as Objective-C with warnings as errors, linked against
# the library.
grep -oE '\b(uniffi|ffi)_tandem_ffi_[a-z0-9_]+[[:space:]]*\(' "$header" \
  | sed -E 's/[[:space:]]*\($//' | sort -u >"$work/declared"
declared_count=$(wc -l <"$work/declared")
[[ "$declared_count" -gt 0 ]] || { echo "error: no FFI functions found in $header" >&2; exit 1; }
{
  echo '#include "TandemFFI.h"'
  echo 'static void *const functions[] = {'
  sed -E 's/^(.*)$/  (void *)\&\1,/' "$work/declared"
  echo '};'
  echo 'int main(void) { return functions[0] == 0; }'
} >"$work/functions.m"
clang -x objective-c -std=c11 -Wall -Wextra -Wpedantic -Werror -I"$swift_dir" \
  "$work/functions.m" -L"$(dirname "$library")" -ltandem_ffi -o "$work/functions"
echo "header: TandemFFI.h compiles as Objective-C (-Wpedantic -Werror); its $declared_count functions link against $(basename "$library")"

nm -D --defined-only "$library" | awk '{print $NF}' | grep -E '^(uniffi|ffi)_tandem_ffi_' \
  | sort -u >"$work/exported"
missing="$(comm -23 "$work/declared" "$work/exported")"
[[ -z "$missing" ]] || { echo "error: declared in the header, not exported by the library:" >&2; echo "$missing" >&2; exit 1; }
ffi_names "$swift_source" >"$work/called"
undeclared="$(comm -23 "$work/called" "$work/declared")"
[[ -z "$undeclared" ]] || { echo "error: called by Tandem.swift, not declared in the header:" >&2; echo "$undeclared" >&2; exit 1; }
echo "symbols: every function the header declares and Tandem.swift calls is exported"

# 3: the public API against the golden file.
awk -f scripts/lib/swift-api.awk "$swift_source" >"$work/api"
if $update; then
  cp "$work/api" "$golden"
  echo "api: wrote $golden"
elif ! diff -u "$golden" "$work/api"; then
  echo "error: the generated Swift API differs from $golden (diff above)." >&2
  echo "If the change is intended, run scripts/check-swift-bindings.sh --update and commit $golden." >&2
  exit 1
else
  echo "api: the public Swift API matches $golden ($(wc -l <"$golden") declarations)"
fi
