#!/usr/bin/env bash
# Benchmarks of `jetbridge server`, each beside a baseline measured in the same run:
#   latency   hyperfine: `jetbridge submit --watch` (idle server, memory queue) beside
#             `jetbridge run` of the same one-step plan
#   reads     wrk: GET /api/v1/builds/1 (Postgres queue) beside GET /healthz (no database)
#   submits   wrk: POST /api/v1/builds (Postgres queue, --max-queued 0, --max-builds 1)
#   claims    builds completed per second from a pre-loaded Postgres queue, 1 replica
#             beside 2 replicas sharing the schema
#   memory    RSS of an idle server and while N `sleep` builds run at once (memory queue)
# It prints a Markdown summary on stdout (progress goes to stderr). Every server it
# starts listens on free loopback ports and is stopped on exit; every Postgres schema
# it creates is dropped on exit.
#
# Settings (environment):
#   JB_BIN                    the binary (default $CARGO_TARGET_DIR/release/jetbridge,
#                             else target/release/jetbridge)
#   JB_BENCH_ONLY             which parts (default "latency reads submits claims memory")
#   JB_BENCH_PG               Postgres URL (default postgres://postgres@127.0.0.1:5432/postgres)
#   JB_BENCH_RUNS             hyperfine runs per command (default 30), JB_BENCH_WARMUP (5)
#   JB_BENCH_WRK_DURATION     wrk duration (default 10s); JB_BENCH_WRK_THREADS (2),
#                             JB_BENCH_WRK_CONNECTIONS (16)
#   JB_BENCH_CLAIM_BUILDS     builds pre-loaded for each claims run (default 300)
#   JB_BENCH_CLAIM_MAX_BUILDS --max-builds of each claiming replica (default 4)
#   JB_BENCH_MEM_COUNTS       concurrent builds for the memory part (default "100 500")
#   JB_BENCH_MEM_SLEEP        how long each of those builds sleeps, s (default 60)
#   JB_BENCH_NODELAY_SHIM=0   skip the latency diagnostic that forces TCP_NODELAY on the
#                             server's sockets with an LD_PRELOAD shim (needs gcc)
#   JB_BENCH_KEEP=1           keep the work directory (logs, hyperfine and wrk output)
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-bench-tools.sh >&2

JB=${JB_BIN:-${CARGO_TARGET_DIR:-target}/release/jetbridge}
PG=${JB_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}
ONLY=${JB_BENCH_ONLY:-latency reads submits claims memory}
RUNS=${JB_BENCH_RUNS:-30}
WARMUP=${JB_BENCH_WARMUP:-5}
WRK_DURATION=${JB_BENCH_WRK_DURATION:-10s}
WRK_THREADS=${JB_BENCH_WRK_THREADS:-2}
WRK_CONNECTIONS=${JB_BENCH_WRK_CONNECTIONS:-16}
CLAIM_BUILDS=${JB_BENCH_CLAIM_BUILDS:-300}
CLAIM_MAX_BUILDS=${JB_BENCH_CLAIM_MAX_BUILDS:-4}
MEM_COUNTS=${JB_BENCH_MEM_COUNTS:-100 500}
MEM_SLEEP=${JB_BENCH_MEM_SLEEP:-60}

[ -x "$JB" ] || { echo "error: no binary at $JB (cargo build --release -p jetbridge --locked)" >&2; exit 2; }
JB=$(cd "$(dirname "$JB")" && pwd)/$(basename "$JB")
for tool in curl python3 wrk hyperfine; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing" >&2; exit 2; }
done
wants() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if wants reads || wants submits || wants claims; then
  command -v psql >/dev/null || { echo "error: psql is missing (needed to drop the schemas)" >&2; exit 2; }
  pg_isready -q -d "$PG" || { echo "error: no Postgres answers at $PG" >&2; exit 2; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/jb-bench-server.XXXXXX")
PIDS=()
SCHEMAS=()
log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  local s
  for s in "${SCHEMAS[@]}"; do
    psql -q -d "$PG" -c "DROP SCHEMA IF EXISTS \"$s\" CASCADE" >/dev/null 2>&1 \
      || echo "warning: could not drop schema $s" >&2
  done
  if [ "${JB_BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# Two free loopback ports, held together while chosen so they differ.
free_ports() {
  python3 - <<'PY'
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
PY
}
# new_schema PART: sets SCHEMA to a fresh name, dropped on exit (no subshell, so the
# list the exit trap reads keeps it).
new_schema() {
  SCHEMA="jb_bench_$1_$$_$(date +%s)"
  SCHEMAS+=("$SCHEMA")
}

# launch_server NAME ARGS...: starts a server in the background; sets SRV_PID, SRV_URL,
# SRV_METRICS. await_server NAME PID URL: waits (bounded) until its first stdout line
# is printed and /healthz answers. start_server NAME ARGS...: both.
launch_server() {
  local name=$1; shift
  local port mport
  read -r port mport < <(free_ports)
  mkdir -p "$WORK/$name"
  env ${SRV_PRELOAD:+LD_PRELOAD="$SRV_PRELOAD"} "$JB" server --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --data-dir "$WORK/$name/data" --worker "bench-$name" "$@" \
    >"$WORK/$name/stdout" 2>"$WORK/$name/stderr" &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  SRV_URL="http://127.0.0.1:$port"
  SRV_METRICS="http://127.0.0.1:$mport/metrics"
}
await_server() {
  local name=$1 pid=$2 url=$3 ok=0
  for _ in $(seq 1 1500); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if [ -s "$WORK/$name/stdout" ] && curl -fsS -o /dev/null "$url/healthz" 2>/dev/null; then
      ok=1; break
    fi
    sleep 0.02
  done
  if [ "$ok" != 1 ]; then
    echo "error: server $name did not come up; its stderr:" >&2
    tail -n 20 "$WORK/$name/stderr" >&2
    exit 1
  fi
  log "server $name (pid $pid): $(head -n1 "$WORK/$name/stdout")"
}
start_server() {
  launch_server "$@"
  await_server "$1" "$SRV_PID" "$SRV_URL"
}

# stop_server PID [BOUND_S]: SIGTERM, wait (bounded) for the exit, print the status.
stop_server() {
  local pid=$1 bound=${2:-60} rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((bound * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "warning: pid $pid still running ${bound}s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  [ "$rc" = 0 ] || echo "warning: server pid $pid exited $rc" >&2
}

# metric URL NAME [LABEL_FILTER]: the sum of NAME's samples whose labels contain the filter.
metric() {
  curl -fsS --max-time 5 "$1" 2>/dev/null | awk -v name="$2" -v filt="${3:-}" '
    $1 == name || index($1, name "{") == 1 { if (filt == "" || index($1, filt) > 0) s += $NF; n++ }
    END { printf "%d\n", s }'
}
# cpu_ticks: "busy total" jiffies of the whole machine; busy_pct BEFORE AFTER.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
busy_pct() { echo "$1 $2" | awk '{ printf "%.0f%%", 100 * ($3 - $1) / ($4 - $2) }'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# submit_many URL PIPELINE_FILE COUNT: POSTs COUNT builds with 8 clients; prints
# "created=N other=M ids=FIRST..LAST seconds=S".
submit_many() {
  python3 - "$@" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(url)
body = json.dumps({"pipeline": open(path).read()}).encode()
lock = threading.Lock()
state = {"next": 0, "created": 0, "other": {}, "ids": []}
def worker():
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    while True:
        with lock:
            if state["next"] >= count:
                return
            state["next"] += 1
        conn.request("POST", "/api/v1/builds", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        with lock:
            if r.status == 201:
                state["created"] += 1
                state["ids"].append(json.loads(data)["id"])
            else:
                state["other"][r.status] = state["other"].get(r.status, 0) + 1
t0 = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ids = sorted(int(i) for i in state["ids"])
span = f"{ids[0]}..{ids[-1]}" if ids else "-"
print(f"created={state['created']} other={sum(state['other'].values())} "
      f"statuses={state['other'] or '{}'} ids={span} seconds={time.monotonic() - t0:.2f}")
PY
}

# wait_metric METRICS_URL NAME FILTER TARGET BOUND_S: polls until the metric >= TARGET.
wait_metric() {
  local url=$1 name=$2 filt=$3 target=$4 bound=$5 v=0
  local deadline; deadline=$(awk -v t="$(now)" -v b="$bound" 'BEGIN { printf "%.1f", t + b }')
  while :; do
    v=$(metric "$url" "$name" "$filt")
    [ "$v" -ge "$target" ] && return 0
    awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' && break
    sleep 0.1
  done
  echo "error: $name${filt:+ ($filt)} reached only $v of $target within ${bound}s" >&2
  return 1
}

cat >"$WORK/t.yml" <<'EOF'
jobs:
- name: j
  plan:
  - task: t
    config: {platform: linux, run: {path: sh, args: [-c, 'true']}}
EOF
cat >"$WORK/sleep.yml" <<EOF
jobs:
- name: j
  plan:
  - task: t
    config: {platform: linux, run: {path: sh, args: [-c, 'sleep $MEM_SLEEP']}}
EOF
cat >"$WORK/block.yml" <<'EOF'
jobs:
- name: j
  plan:
  - task: t
    config: {platform: linux, run: {path: sh, args: [-c, 'sleep 600']}}
EOF

OUT="$WORK/summary.md"
: >"$OUT"
emit() { printf '%s\n' "$*" >>"$OUT"; }

emit "**Run:** $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average before: $(cut -d' ' -f1-3 /proc/loadavg); $("$JB" --version 2>/dev/null | head -n1); $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2); $(hyperfine --version)"
emit ""

# ---------------------------------------------------------------- latency
if wants latency; then
  log "latency: submit --watch against an idle server beside run"
  start_server latency --max-builds 4
  lat_url=$SRV_URL lat_pid=$SRV_PID
  mkdir -p "$WORK/run-data"
  # Both must succeed once before they are timed.
  "$JB" run "$WORK/t.yml" --data-dir "$WORK/run-data" >"$WORK/run.out" 2>&1 \
    || { cat "$WORK/run.out" >&2; exit 1; }
  "$JB" submit "$WORK/t.yml" --server "$lat_url" --watch >"$WORK/submit.out" 2>&1 \
    || { cat "$WORK/submit.out" >&2; exit 1; }
  # A diagnostic beside them: the same server with TCP_NODELAY set on every accepted
  # connection by an LD_PRELOAD shim (the server does not set it; see docs/benchmarks.md).
  nd=()
  if [ "${JB_BENCH_NODELAY_SHIM:-1}" = 1 ] && command -v gcc >/dev/null; then
    cat >"$WORK/nodelay.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
  int c = real(fd, a, l, flags);
  if (c >= 0) { int one = 1; setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
  return c;
}
C
    gcc -shared -fPIC -O2 -o "$WORK/nodelay.so" "$WORK/nodelay.c" -ldl
    SRV_PRELOAD="$WORK/nodelay.so" start_server latency-nodelay --max-builds 4
    nd_url=$SRV_URL nd_pid=$SRV_PID
    "$JB" submit "$WORK/t.yml" --server "$nd_url" --watch >"$WORK/submit-nd.out" 2>&1 \
      || { cat "$WORK/submit-nd.out" >&2; exit 1; }
    nd=(-n submit-nodelay "$JB submit $WORK/t.yml --server $nd_url --watch")
  fi
  hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --export-json "$WORK/latency.json" \
    -n run "$JB run $WORK/t.yml --data-dir $WORK/run-data" \
    -n submit "$JB submit $WORK/t.yml --server $lat_url --watch" "${nd[@]}" >&2
  stop_server "$lat_pid"
  [ "${#nd[@]}" = 0 ] || stop_server "$nd_pid"
  python3 - "$WORK/latency.json" >>"$OUT" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ms = lambda k, f: r[k][f] * 1000
run, sub = ms("run", "median"), ms("submit", "median")
print("| latency, one-step plan of `true` | median | mean ± σ | min | runs |")
print("|---|---|---|---|---|")
for k, label in (("run", "`jetbridge run` (baseline)"), ("submit", "`jetbridge submit --watch`, idle server, memory queue")):
    x = r[k]
    print(f"| {label} | {ms(k,'median'):.1f} ms | {ms(k,'mean'):.1f} ± {ms(k,'stddev'):.1f} ms | {ms(k,'min'):.1f} ms | {len(x['times'])} |")
print(f"| **server adds (median difference)** | **{sub - run:+.1f} ms** | ratio {sub / run:.2f} | | goal < 20 ms |")
if "submit-nodelay" in r:
    k, nd = "submit-nodelay", ms("submit-nodelay", "median")
    print(f"| diagnostic: `submit --watch`, server with `TCP_NODELAY` forced (LD_PRELOAD shim) | {nd:.1f} ms | {ms(k,'mean'):.1f} ± {ms(k,'stddev'):.1f} ms | {ms(k,'min'):.1f} ms | {len(r[k]['times'])} |")
    print(f"| server adds, `TCP_NODELAY` forced | {nd - run:+.1f} ms | ratio {nd / run:.2f} | | |")
print()
PY
fi

# wrk_run NAME ARGS...: runs wrk, keeps its output, sets WRK_RPS, WRK_P50, WRK_P99.
wrk_run() {
  local name=$1; shift
  local c0 c1; c0=$(cpu_ticks)
  wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency "$@" >"$WORK/wrk-$name.txt" 2>&1 \
    || { cat "$WORK/wrk-$name.txt" >&2; exit 1; }
  c1=$(cpu_ticks); WRK_BUSY=$(busy_pct "$c0" "$c1")
  WRK_RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$WORK/wrk-$name.txt")
  WRK_P50=$(awk '$1 == "50%" {print $2}' "$WORK/wrk-$name.txt")
  WRK_P99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk-$name.txt")
  WRK_NON2XX=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WORK/wrk-$name.txt")
  WRK_ERRORS=$(awk '/Socket errors:/ {sub(/.*Socket errors: /, ""); print}' "$WORK/wrk-$name.txt")
  log "wrk $name: $WRK_RPS req/s, p50 $WRK_P50, p99 $WRK_P99, non-2xx ${WRK_NON2XX:-0}, cores busy $WRK_BUSY${WRK_ERRORS:+, socket errors $WRK_ERRORS}"
}

# ---------------------------------------------------------------- reads
if wants reads; then
  log "reads: GET /api/v1/builds/1 (Postgres) beside GET /healthz"
  new_schema reads; schema=$SCHEMA
  start_server reads --registry "$PG" --registry-schema "$schema"
  r_url=$SRV_URL r_pid=$SRV_PID r_metrics=$SRV_METRICS
  "$JB" submit "$WORK/t.yml" --server "$r_url" --watch >"$WORK/reads-submit.out" 2>&1 \
    || { cat "$WORK/reads-submit.out" >&2; exit 1; }
  curl -fsS "$r_url/api/v1/builds/1" >"$WORK/build1.json"
  wrk_run healthz "$r_url/healthz"; h_rps=$WRK_RPS h_p50=$WRK_P50 h_p99=$WRK_P99 h_busy=$WRK_BUSY
  wrk_run build1 "$r_url/api/v1/builds/1"; b_rps=$WRK_RPS b_p50=$WRK_P50 b_p99=$WRK_P99 b_busy=$WRK_BUSY b_bad=${WRK_NON2XX:-0}
  r_rss=$(rss_kib "$r_pid")
  stop_server "$r_pid"
  emit "| wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION, Postgres queue | requests/s | p50 | p99 | ratio to /healthz | both cores busy |"
  emit "|---|---|---|---|---|---|"
  emit "| \`GET /healthz\` (no database; baseline) | $h_rps | $h_p50 | $h_p99 | 1.00 | $h_busy |"
  emit "| \`GET /api/v1/builds/1\` (one ended build, $(wc -c <"$WORK/build1.json") bytes of JSON) | $b_rps | $b_p50 | $b_p99 | $(awk -v a="$b_rps" -v b="$h_rps" 'BEGIN { printf "%.2f", a / b }') | $b_busy |"
  [ "$b_bad" = 0 ] || emit "(status reads: $b_bad non-2xx responses)"
  emit ""
  emit "Server RSS after the reads: $(mib "$r_rss") MiB."
  emit ""
fi

# ---------------------------------------------------------------- submits
if wants submits; then
  log "submits: POST /api/v1/builds (Postgres, --max-queued 0, --max-builds 1)"
  new_schema submits; schema=$SCHEMA
  start_server submits --registry "$PG" --registry-schema "$schema" --max-queued 0 --max-builds 1
  s_url=$SRV_URL s_pid=$SRV_PID s_metrics=$SRV_METRICS
  python3 -c 'import json,sys; print(json.dumps({"pipeline": open(sys.argv[1]).read()}))' "$WORK/t.yml" >"$WORK/body.json"
  cat >"$WORK/submit.lua" <<'EOF'
-- POSTs the same build over and over; counts the 201s per thread.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local f = assert(io.open(os.getenv("JB_BENCH_BODY"), "rb"))
  local body = f:read("*a"); f:close()
  created, busy, other = 0, 0, 0
  req = wrk.format("POST", "/api/v1/builds", {["Content-Type"] = "application/json"}, body)
end
function request() return req end
function response(status, headers, body)
  if status == 201 then created = created + 1
  elseif status == 429 then busy = busy + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local c, b, o = 0, 0, 0
  for _, t in ipairs(threads) do c = c + t:get("created"); b = b + t:get("busy"); o = o + t:get("other") end
  io.write(string.format("JB_STATUS created=%d busy=%d other=%d\n", c, b, o))
end
EOF
  JB_BENCH_BODY="$WORK/body.json" wrk_run submits -s "$WORK/submit.lua" "$s_url/api/v1/builds"
  sub_rps=$WRK_RPS sub_p50=$WRK_P50 sub_p99=$WRK_P99 sub_busy=$WRK_BUSY
  read -r created busy other < <(awk '/^JB_STATUS/ { split($2,a,"="); split($3,b,"="); split($4,c,"="); print a[2], b[2], c[2] }' "$WORK/wrk-submits.txt")
  total=$((created + busy + other))
  queued=$(metric "$s_metrics" jetbridge_queue_depth 'state="queued"')
  ended=$(metric "$s_metrics" jetbridge_builds_total)
  s_rss=$(rss_kib "$s_pid")
  # Stop claiming what is left: --max-builds 1 means at most one build to drain.
  stop_server "$s_pid"
  emit "| wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION \`POST /api/v1/builds\`, Postgres, \`--max-queued 0 --max-builds 1\` | requests/s | p50 | p99 | 201s | both cores busy |"
  emit "|---|---|---|---|---|---|"
  emit "| submissions of the one-step plan (JSON $(wc -c <"$WORK/body.json") bytes) | $sub_rps | $sub_p50 | $sub_p99 | $created of $total ($(awk -v a="$created" -v b="$total" 'BEGIN { printf "%.1f%%", b ? 100 * a / b : 0 }'))$([ "$busy" = 0 ] || echo ", $busy 429s")$([ "$other" = 0 ] || echo ", $other other") | $sub_busy |"
  emit ""
  emit "Meanwhile the one build slot ended $ended builds; $queued were still queued at the end. Server RSS then: $(mib "$s_rss") MiB."
  emit ""
fi

# ---------------------------------------------------------------- claims
if wants claims; then
  log "claims: $CLAIM_BUILDS pre-loaded builds, 1 replica beside 2"
  new_schema claims; schema=$SCHEMA
  # The loader takes the submissions and claims nothing: its one build slot holds a
  # `sleep 600` build for the whole part.
  start_server loader --registry "$PG" --registry-schema "$schema" --max-queued 0 --max-builds 1 --drain-timeout 1s
  l_url=$SRV_URL l_pid=$SRV_PID l_metrics=$SRV_METRICS
  blocker=$(curl -fsS -H 'Content-Type: application/json' \
    --data "$(python3 -c 'import json,sys; print(json.dumps({"pipeline": open(sys.argv[1]).read()}))' "$WORK/block.yml")" \
    "$l_url/api/v1/builds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  wait_metric "$l_metrics" jetbridge_builds_running "" 1 30
  emit "| $CLAIM_BUILDS builds of the one-step plan pre-loaded, Postgres | replicas × \`--max-builds\` | builds/s, from launch | wall time | start until every /healthz answers | builds/s after that | builds per replica | both cores busy |"
  emit "|---|---|---|---|---|---|---|---|"
  for replicas in 1 2; do
    log "claims: pre-loading $CLAIM_BUILDS builds"
    loaded=$(submit_many "$l_url" "$WORK/t.yml" "$CLAIM_BUILDS")
    log "claims: $loaded"
    q=$(metric "$l_metrics" jetbridge_queue_depth 'state="queued"')
    [ "$q" -ge "$CLAIM_BUILDS" ] || { echo "error: only $q builds queued" >&2; exit 1; }
    # The replicas are launched together and timed from their launch: the figure
    # includes their start (connect, schema check, worker registration), which is
    # also reported on its own.
    pids=() metrics=() names=() urls=()
    c0=$(cpu_ticks)
    t0=$(now)
    for i in $(seq 1 "$replicas"); do
      launch_server "claim$replicas-$i" --registry "$PG" --registry-schema "$schema" \
        --max-queued 0 --max-builds "$CLAIM_MAX_BUILDS"
      pids+=("$SRV_PID"); metrics+=("$SRV_METRICS"); names+=("claim$replicas-$i"); urls+=("$SRV_URL")
    done
    for i in "${!pids[@]}"; do await_server "${names[$i]}" "${pids[$i]}" "${urls[$i]}"; done
    t_ready=$(now)
    done_at_ready=0
    for m in "${metrics[@]}"; do done_at_ready=$((done_at_ready + $(metric "$m" jetbridge_builds_total))); done
    deadline=$(awk -v t="$t0" 'BEGIN { printf "%.1f", t + 300 }')
    while :; do
      total=0; per=()
      for m in "${metrics[@]}"; do v=$(metric "$m" jetbridge_builds_total); total=$((total + v)); per+=("$v"); done
      [ "$total" -ge "$CLAIM_BUILDS" ] && break
      awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' \
        && { echo "error: only $total of $CLAIM_BUILDS builds ended within 300 s" >&2; exit 1; }
      sleep 0.05
    done
    t1=$(now)
    c1=$(cpu_ticks)
    ok=0
    for m in "${metrics[@]}"; do ok=$((ok + $(metric "$m" jetbridge_builds_total 'status="succeeded"'))); done
    for p in "${pids[@]}"; do stop_server "$p"; done
    emit "| $replicas replica$([ "$replicas" = 1 ] || echo s) | $replicas × $CLAIM_MAX_BUILDS | **$(awk -v n="$CLAIM_BUILDS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')** | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f s", b - a }') | $(awk -v a="$t0" -v b="$t_ready" 'BEGIN { printf "%.2f s", b - a }') ($done_at_ready ended by then) | $(awk -v n="$((CLAIM_BUILDS - done_at_ready))" -v a="$t_ready" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }') | ${per[*]} ($ok of $total succeeded) | $(busy_pct "$c0" "$c1") |"
  done
  curl -fsS -X POST -o /dev/null "$l_url/api/v1/builds/$blocker/abort" || true
  stop_server "$l_pid"
  emit ""
fi

# ---------------------------------------------------------------- memory
if wants memory; then
  emit "| server RSS, memory queue, local backend | idle (before any build) | builds running | RSS while they run | peak (VmHWM) | per build | \`sh\` children |"
  emit "|---|---|---|---|---|---|---|"
  for count in $MEM_COUNTS; do
    log "memory: $count concurrent sleep builds"
    start_server "mem$count" --max-builds "$count" --max-queued 0 --drain-timeout 1s --abort-grace 5s
    m_url=$SRV_URL m_pid=$SRV_PID m_metrics=$SRV_METRICS
    sleep 2
    idle=$(rss_kib "$m_pid")
    idle_metric=$(metric "$m_metrics" jetbridge_process_resident_memory_bytes)
    loaded=$(submit_many "$m_url" "$WORK/sleep.yml" "$count")
    log "memory: $loaded"
    wait_metric "$m_metrics" jetbridge_builds_running "" "$count" $((MEM_SLEEP - 10))
    sleep 1
    running=$(metric "$m_metrics" jetbridge_builds_running)
    busy=$(rss_kib "$m_pid")
    busy_metric=$(metric "$m_metrics" jetbridge_process_resident_memory_bytes)
    hwm=$(hwm_kib "$m_pid")
    kids=$(pgrep -c -P "$m_pid" || true)
    t0=$(now)
    stop_server "$m_pid" 60
    log "memory: drained (aborting $count builds) in $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'); /metrics said idle $((idle_metric / 1048576)) MiB, busy $((busy_metric / 1048576)) MiB"
    emit "| $count \`sleep $MEM_SLEEP\` builds at once (\`--max-builds $count\`) | $(mib "$idle") MiB | $running | **$(mib "$busy") MiB** | $(mib "$hwm") MiB | $(awk -v a="$busy" -v b="$idle" -v n="$count" 'BEGIN { printf "%.0f KiB", (a - b) / n }') | $kids |"
  done
  emit ""
fi

cat "$OUT"
