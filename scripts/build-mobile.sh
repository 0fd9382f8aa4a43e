#!/usr/bin/env bash
# Builds libtomoe.a for iOS (aarch64-apple-ios) and Android (aarch64-linux-android), with the
# converter feature off, and checks that each library defines every function of include/tomoe.h
# and that no C/C++ build dependency (cc, cmake) is in the build graph.
#
# Only the static library is built: linking the cdylib needs Apple's or the NDK's linker, which a
# Linux CI machine does not have, so `cargo rustc --crate-type staticlib` overrides the crate's
# list of library types. (On a Mac or with the NDK, `cargo build --lib` builds both.)
# Usage: scripts/build-mobile.sh [target...]   (default: both targets above)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tomoe/target}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-apple-ios aarch64-linux-android)

nm_tool=""
for candidate in llvm-nm $(compgen -c llvm-nm- | sort -rV); do
  if command -v "$candidate" >/dev/null; then nm_tool="$candidate"; break; fi
done
[ -n "$nm_tool" ] || { echo "build-mobile: llvm-nm is needed to read Mach-O and ELF archives (apt install llvm)" >&2; exit 1; }

# The C API's functions, from the checked-in header (kept current by tests/capi_header.rs).
mapfile -t api < <(grep -oE '\btomoe_[a-z_]+\(' include/tomoe.h | tr -d '(' | sort -u)
[ ${#api[@]} -gt 10 ] || { echo "build-mobile: could not read the function list of include/tomoe.h" >&2; exit 1; }

for target in "${targets[@]}"; do
  echo "== $target"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"

  # A C or C++ build step would need the platform's SDK/NDK toolchain: there must be none.
  if cargo tree -p tomoe --target "$target" -e normal,build --prefix none 2>/dev/null \
      | grep -E '^(cc|cmake|bindgen) v' >/dev/null; then
    echo "build-mobile: a C/C++ build dependency is in the $target build graph:" >&2
    cargo tree -p tomoe --target "$target" -e normal,build -i cc >&2 || true
    exit 1
  fi

  cargo rustc -p tomoe --lib --release --target "$target" --crate-type staticlib
  lib="$CARGO_TARGET_DIR/$target/release/libtomoe.a"
  [ -s "$lib" ] || { echo "build-mobile: $lib was not produced" >&2; exit 1; }

  # Mach-O prefixes C symbols with '_'; ELF does not. An older llvm-nm cannot read the LLVM
  # bitcode some std objects carry for iOS and exits non-zero, but still lists every symbol of
  # the machine-code objects, which is what is checked here.
  defined=$({ "$nm_tool" --defined-only --extern-only "$lib" 2>/dev/null || true; } \
    | awk '{print $NF}' | sed 's/^_//' | sort -u)
  missing=()
  for fn in "${api[@]}"; do
    grep -qx "$fn" <<<"$defined" || missing+=("$fn")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "build-mobile: $lib lacks: ${missing[*]}" >&2
    exit 1
  fi
  echo "$lib: $(du -h "$lib" | cut -f1), all ${#api[@]} C API functions defined"
done
