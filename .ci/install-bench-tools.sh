#!/usr/bin/env bash
# Installs the load tools bench/server.sh drives (wrk, hyperfine), from Debian's
# packages, when they are missing. Idempotent. Not part of CI.
set -euo pipefail
missing=()
for tool in wrk hyperfine; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
for tool in "${missing[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool still missing" >&2; exit 1; }
done
