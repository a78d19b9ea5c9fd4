#!/usr/bin/env bash
# The whole test suite: formatting, lints, dependency policy, and every test of the
# workspace, with the Postgres suite against a real server. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse one build directory outside the clone, so a fresh clone does not rebuild the
# world every time.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jetbridge-target}"

./.ci/install-tools.sh
source ./.ci/postgres-env.sh
# The S3 emulator (moto) and the GCS simulator for the object-store suites; they
# fail rather than skip.
eval "$(./.ci/emulators.sh start)"
trap './.ci/emulators.sh stop >/dev/null 2>&1 || true' EXIT
export JETBRIDGE_REQUIRE_S3=1
export JETBRIDGE_REQUIRE_GCS=1
# Rendered pod manifests are checked against the Kubernetes schema, never skipped.
export JETBRIDGE_REQUIRE_KUBERNETES_VALIDATE=1

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo deny"
cargo deny --log-level error check licenses bans sources
echo "== cargo test"
cargo test --workspace --locked
