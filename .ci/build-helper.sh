#!/usr/bin/env bash
# Builds jetbridge-helper as one statically linked executable (glibc, static-pie) that
# runs in any image, even one with no libc at all (distroless, scratch). Cargo's output
# goes to stderr; the only line on stdout is the absolute path of the binary, so that
#   JETBRIDGE_STATIC_HELPER=$(.ci/build-helper.sh) cargo test -p jetbridge-helper
# tests that very file.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-target}"
# With an explicit --target, RUSTFLAGS reach only the target's crates, not build
# scripts or proc macros, which stay dynamic host programs. The binary is copied into
# every step pod, so it is built for size (LTO, one codegen unit, no unwinding, no
# symbols): about 1.2 MB instead of 1.7 MB, nearly all of it static glibc and std.
CARGO_PROFILE_RELEASE_LTO=true \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
CARGO_PROFILE_RELEASE_PANIC=abort \
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build --release --locked -p jetbridge-helper --target "$target" >&2

bin="$target_dir/$target/release/jetbridge-helper"
if [ ! -x "$bin" ]; then
  echo "build-helper: no executable at $bin" >&2
  exit 1
fi
echo "$(cd "$(dirname "$bin")" && pwd -P)/$(basename "$bin")"
