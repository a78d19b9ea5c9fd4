#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency policy, and every test of the
# workspace, with the Postgres suite against a real server. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build directory for both README commands, reused across clean clones: a clone's
# `./target` (what `cargo run` builds into) is used when it is there; otherwise builds
# go to ~/.cache/jetbridge-target and `./target` becomes a link to it, so a later
# `cargo run` in this clone reuses them too.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -e target ]; then
    CARGO_TARGET_DIR="$(cd target && pwd -P)"
  else
    CARGO_TARGET_DIR="$HOME/.cache/jetbridge-target"
    mkdir -p "$CARGO_TARGET_DIR"
    ln -s "$CARGO_TARGET_DIR" target
  fi
fi
export CARGO_TARGET_DIR

./.ci/install-tools.sh
source ./.ci/postgres-env.sh
# The S3 emulator (moto) and the GCS simulator for the object-store suites; they
# fail rather than skip.
eval "$(./.ci/emulators.sh start)"
trap './.ci/emulators.sh stop >/dev/null 2>&1 || true' EXIT
export JETBRIDGE_REQUIRE_S3=1
export JETBRIDGE_REQUIRE_GCS=1
# CI runs as root: the real full-filesystem tests (a 1 MiB tmpfs) must run, not skip.
export JETBRIDGE_REQUIRE_MOUNT=1
# Rendered pod manifests are checked against the Kubernetes schema, never skipped.
export JETBRIDGE_REQUIRE_KUBERNETES_VALIDATE=1

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo deny"
cargo deny --log-level error check licenses bans sources
echo "== static step-pod helper"
# The static build is tested as itself (no interpreter, no libraries, runs in an empty
# root), and the simulator's pods run that very file as their helper.
JETBRIDGE_STATIC_HELPER="$(./.ci/build-helper.sh)"
export JETBRIDGE_STATIC_HELPER
export JETBRIDGE_HELPER_BIN="$JETBRIDGE_STATIC_HELPER"
echo "== cargo test"
cargo test --workspace --locked
echo "== API fuzz (schemathesis)"
cargo build -p jetbridge --locked
./.ci/api-fuzz.sh "$CARGO_TARGET_DIR/debug/jetbridge"
