#!/usr/bin/env bash
# Object store emulators for the object-store adapter's live conformance tests, on
# 127.0.0.1: moto (S3, installed from PyPI when missing) and jetbridge's own Cloud
# Storage simulator (`gcs-sim`, built from this repository).
#
#   eval "$(./.ci/emulators.sh start)"   # install/build if missing, start, wait, make the buckets
#   ./.ci/emulators.sh stop              # stop what `start` started
#
# `start` prints only `export` lines on stdout (progress goes to stderr):
#   JETBRIDGE_S3_ENDPOINT, JETBRIDGE_S3_BUCKET, JETBRIDGE_GCS_ENDPOINT, JETBRIDGE_GCS_BUCKET
# A server already answering on a port is reused. Ports: JETBRIDGE_S3_PORT (default
# 9301), JETBRIDGE_GCS_PORT (default 9302). Logs and pid files live in
# JETBRIDGE_EMULATOR_DIR (default ${TMPDIR:-/tmp}/jetbridge-emulators).
#
# Why a GCS simulator of our own: the object_store GCS client speaks the GCS XML API
# (HEAD, DELETE, `?list-type=2` listings, XML multipart uploads, percent-encoded
# bucket and object names), and the PyPI gcp-storage-emulator implements the JSON API
# plus plain XML GET/PUT only (it answers 501 to the rest). `gcs-sim`
# (conformance/gcs-sim) serves that XML subset in memory. It is built with
# `cargo build --locked -p jetbridge-gcs-sim --bin gcs-sim` into CARGO_TARGET_DIR
# (default ~/.cache/jetbridge-target, as in .ci/test.sh) and run from there.
set -euo pipefail

S3_PORT="${JETBRIDGE_S3_PORT:-9301}"
GCS_PORT="${JETBRIDGE_GCS_PORT:-9302}"
BUCKET="${JETBRIDGE_EMULATOR_BUCKET:-jetbridge-test}"
STATE="${JETBRIDGE_EMULATOR_DIR:-${TMPDIR:-/tmp}/jetbridge-emulators}"
PY="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/jetbridge-target}"

log() { echo "emulators: $*" >&2; }

# Whether an HTTP server answers at $1 (any status counts as an answer).
answers() {
  "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
EOF
}

wait_for() { # name url
  for _ in $(seq 1 60); do
    if answers "$2"; then return 0; fi
    sleep 0.5
  done
  log "$1 did not answer at $2; its log:"
  tail -n 30 "$STATE/$1.log" >&2 || true
  return 1
}

install_missing() {
  local want=()
  command -v moto_server >/dev/null 2>&1 || want+=('moto[server]')
  if [ "${#want[@]}" -gt 0 ]; then
    log "installing ${want[*]} from PyPI"
    "$PY" -m pip install --quiet --disable-pip-version-check "${want[@]}" >&2
    # pyenv installs console scripts behind shims that need a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
  fi
}

# Create a bucket with `PUT URL` (idempotent: an existing bucket answers 409, also fine).
make_bucket() { # url
  "$PY" - "$1" <<'EOF' >&2
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method="PUT")
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        raise
EOF
}

start_bg() { # name command...
  local name="$1"
  shift
  nohup "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

start() {
  mkdir -p "$STATE"
  install_missing
  local s3="http://127.0.0.1:$S3_PORT"
  if answers "$s3/"; then
    log "reusing the S3 emulator at $s3"
  else
    log "starting moto_server on $s3"
    start_bg moto moto_server -H 127.0.0.1 -p "$S3_PORT"
  fi
  wait_for moto "$s3/"
  make_bucket "$s3/$BUCKET"
  log "the S3 emulator is up at $s3 (bucket $BUCKET)"

  local gcs="http://127.0.0.1:$GCS_PORT"
  if answers "$gcs/"; then
    log "reusing the GCS simulator at $gcs"
  else
    log "building gcs-sim into $TARGET"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --locked -p jetbridge-gcs-sim --bin gcs-sim >&2)
    log "starting gcs-sim on $gcs"
    start_bg gcs-sim "$TARGET/debug/gcs-sim" --port "$GCS_PORT" --bucket "$BUCKET"
  fi
  wait_for gcs-sim "$gcs/"
  make_bucket "$gcs/$BUCKET"
  log "the GCS simulator is up at $gcs (bucket $BUCKET)"

  echo "export JETBRIDGE_S3_ENDPOINT=$s3"
  echo "export JETBRIDGE_S3_BUCKET=$BUCKET"
  echo "export JETBRIDGE_GCS_ENDPOINT=$gcs"
  echo "export JETBRIDGE_GCS_BUCKET=$BUCKET"
}

stop() {
  for name in moto gcs-sim; do
    local pidfile="$STATE/$name.pid"
    if [ -f "$pidfile" ]; then
      local pid
      pid="$(cat "$pidfile")"
      if kill "$pid" 2>/dev/null; then log "stopped $name ($pid)"; fi
      rm -f "$pidfile"
    fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
