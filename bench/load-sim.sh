#!/usr/bin/env bash
# `jetbridge load` against two `jetbridge server` replicas on the Kubernetes API
# simulator, sharing one Postgres schema (queue and registry) and one directory store:
# a soak (`--mix --duration D`, continuous submission) by default, or N builds at once
# with JB_SOAK_BUILDS, on one simulated node or several (JB_SOAK_NODES), then the
# harness's leak verdict (nothing left; RSS and fd slopes for a soak). The report
# (report.md, report.json, the PNG plots) goes to JB_SOAK_REPORT. The 2-minute soak and
# the 50-build run of bins/jetbridge/tests/load.rs are the same runs, compressed.
#
# Settings (environment):
#   JB_BIN               the binary (default $CARGO_TARGET_DIR/release/jetbridge, else
#                        target/release/jetbridge); a debug build works, slower
#   JB_SIM_BIN           the simulator (default: kube-sim beside JB_BIN)
#   JB_SOAK_DURATION     how long to submit (default 60m)
#   JB_SOAK_BUILDS       instead of a soak: this many builds in all (no duration)
#   JB_SOAK_CONCURRENCY  builds in flight (default 4)
#   JB_SOAK_MAX_BUILDS   each replica's --max-builds (default 8)
#   JB_SOAK_NODES        simulated nodes (default 1); JB_SOAK_MAX_PODS: pods per node
#                        (default: no limit)
#   JB_SOAK_SAMPLE       --sample-every (default 5s)
#   JB_SOAK_TTL          the replicas' --worker-ttl (default 15s)
#   JB_SOAK_REPORT       report directory (default ./soak-report)
#   JB_SOAK_PG           Postgres URL (default postgres://postgres@127.0.0.1:5432/postgres)
#   JB_SOAK_KEEP=1       keep the work directory (replica logs, the store)
# Every process it starts is stopped on exit, and its schema dropped.
set -euo pipefail
cd "$(dirname "$0")/.."

JB=${JB_BIN:-${CARGO_TARGET_DIR:-target}/release/jetbridge}
[ -x "$JB" ] || { echo "error: no binary at $JB (cargo build --release -p jetbridge -p jetbridge-kube-sim --bins --locked)" >&2; exit 2; }
JB=$(cd "$(dirname "$JB")" && pwd)/$(basename "$JB")
SIM=${JB_SIM_BIN:-$(dirname "$JB")/kube-sim}
[ -x "$SIM" ] || { echo "error: no simulator at $SIM (cargo build -p jetbridge-kube-sim --bin kube-sim)" >&2; exit 2; }
DURATION=${JB_SOAK_DURATION:-60m}
BUILDS=${JB_SOAK_BUILDS:-}
CONCURRENCY=${JB_SOAK_CONCURRENCY:-4}
MAX_BUILDS=${JB_SOAK_MAX_BUILDS:-8}
NODES=${JB_SOAK_NODES:-1}
MAX_PODS=${JB_SOAK_MAX_PODS:-}
SAMPLE=${JB_SOAK_SAMPLE:-5s}
TTL=${JB_SOAK_TTL:-15s}
REPORT=${JB_SOAK_REPORT:-soak-report}
PG=${JB_SOAK_PG:-postgres://postgres@127.0.0.1:5432/postgres}
MOCK_IMAGE=ghcr.io/jetbridge/jetbridge:soak
for tool in curl psql python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing" >&2; exit 2; }
done
pg_isready -q -d "$PG" || { echo "error: no Postgres answers at $PG" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/jb-soak.XXXXXX")
SCHEMA="jb_soak_$$_$(date +%s)"
PIDS=()
log() { echo "[$(date +%T)] $*" >&2; }
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  psql -q -d "$PG" -c "DROP SCHEMA IF EXISTS \"$SCHEMA\" CASCADE" >/dev/null 2>&1 \
    || echo "warning: could not drop schema $SCHEMA" >&2
  if [ "${JB_SOAK_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_for WHAT CMD...: run CMD until it succeeds, at most 60 s.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "error: $what did not come up" >&2
  exit 1
}

# The simulator; the mock resource's image holds this binary as its scripts, as the
# jetbridge image does.
SIM_ARGS=(--kubeconfig-out "$WORK/kubeconfig" --namespace jb-soak --port "$(free_port)" --nodes "$NODES")
[ -z "$MAX_PODS" ] || SIM_ARGS+=(--max-pods-per-node "$MAX_PODS")
for s in check in out; do SIM_ARGS+=(--image-file "$MOCK_IMAGE=/opt/resource/$s=$JB"); done
(cd "$WORK" && exec "$SIM" "${SIM_ARGS[@]}") >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_for "the simulator" test -s "$WORK/kubeconfig"
log "simulator up: $NODES node(s), ${MAX_PODS:-unlimited} pods each ($WORK/kubeconfig)"

"$JB" migrate --registry "$PG" --registry-schema "$SCHEMA" >&2
mkdir -p "$WORK/volumes"
SERVERS=() METRICS=()
for name in a b; do
  port=$(free_port) mport=$(free_port)
  "$JB" server --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --data-dir "$WORK/$name" --worker "soak-$name" --backend kube \
    --kubeconfig "$WORK/kubeconfig" --volumes "$WORK/volumes" --mock-image "$MOCK_IMAGE" \
    --worker-ttl "$TTL" --max-builds "$MAX_BUILDS" --max-queued 0 \
    --registry "$PG" --registry-schema "$SCHEMA" \
    >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PIDS+=($!)
  wait_for "replica $name" curl -fsS "http://127.0.0.1:$port/healthz"
  SERVERS+=(--server "http://127.0.0.1:$port")
  METRICS+=(--metrics "http://127.0.0.1:$mport/metrics")
  log "replica $name on :$port (metrics :$mport)"
done

if [ -n "$BUILDS" ]; then SHAPE=(--builds "$BUILDS"); else SHAPE=(--duration "$DURATION"); fi
log "load: ${SHAPE[*]}, $CONCURRENCY at once, sampling every $SAMPLE; report in $REPORT"
rc=0
"$JB" load "${SERVERS[@]}" "${METRICS[@]}" --kubeconfig "$WORK/kubeconfig" \
  --volumes "$WORK/volumes" --registry "$PG" --registry-schema "$SCHEMA" \
  --mix "${SHAPE[@]}" --concurrency "$CONCURRENCY" --sample-every "$SAMPLE" \
  --large-artifact-mib 4 --reap-timeout 3m --report "$REPORT" || rc=$?
grep -c " ERROR " "$WORK/a.log" "$WORK/b.log" >&2 || true
exit "$rc"
