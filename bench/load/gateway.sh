#!/usr/bin/env bash
# Gateway load benchmark (issue 5, "Benchmark"): side by side in one run, the same requests
# sent direct to the upstream stub, through nginx as a plain reverse proxy, through our
# proxy stack without governance (bench/src/bin/passthrough.rs) and through the gateway
# fully governed (a fresh pre-minted ES256 mandate per request, jti, revocation, policy,
# api_key injection, audit), and (issue 6) governed with one WebAssembly authorizer bound.
# Maximum throughput (closed loop), latency at a fixed rate of about half the governed
# maximum (open loop), and resident memory with 10,000 idle keep-alive connections.
#
#   bench/load/gateway.sh            # build, set up, measure, write bench/results/gateway-<date>.md
#
# Settings (environment): DURATION (s per run, 10), RUNS (5), WARMUP (s per target, 10),
# CONNECTIONS (closed loop, 64), OPEN_CONNECTIONS (open loop, 64), RATE (fixed rate; default
# 50 % of the governed warm-up throughput, rounded down to 100/s), RATE_LIMIT_SERIES (1: also
# a governed series on the resource with a rate limit), PLUGIN_SERIES (1: also a governed
# series, at maximum throughput and at the fixed rate, on resource://echo-plugin, which has
# one authorizer plugin bound, tests-fixtures' fixture-allow), FRESH_RECORDS (0; N > 0
# provisions N authority records and adds a governed series whose mandates each name their
# own record), RSS_CONNECTIONS (10000), RSS_HOLD (s, 10), PORT_BASE (18490: upstream +1,
# nginx +2, passthrough +3, gateway +4), REDIS_DB (15; must be empty, flushed at the end),
# POOL_MAX (gateway pool, 4), PROXY_CPU (1), LOAD_CPU (0), REPIN (1: move Postgres and Redis to
# LOAD_CPU for the pinned phase), WHOLE_MACHINE (1: also maximum throughput with nothing
# pinned), WHOLE_LOAD_THREADS (0: current-thread load generator in that phase too),
# SKIP_BUILD (0), FOREIGN_MAX (0.1, see gateway_report), PERF (0; 1 records a flat `perf`
# profile of the gateway during the pinned governed warm-up and adds its top symbols to the
# report), PERF_CALLGRAPH (0; 1 records call chains too, unwound with DWARF, and keeps the
# profile as OUT with `.perf.data` for `perf report -g`), PERF_TARGET (governed; the series
# whose warm-up is profiled, e.g. governed+plugin), SMOKE (0; 1 labels the report
# "smoke, not a measurement"), OUT.
#
# Everything it starts is stopped and the database dropped on exit, failure included; the
# CPU affinity of Postgres and Redis is restored. Traffic stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-10}
RUNS=${RUNS:-5}
WARMUP=${WARMUP:-10}
CONNECTIONS=${CONNECTIONS:-64}
OPEN_CONNECTIONS=${OPEN_CONNECTIONS:-64}
RATE=${RATE:-}
RATE_LIMIT_SERIES=${RATE_LIMIT_SERIES:-1}
PLUGIN_SERIES=${PLUGIN_SERIES:-1}
FRESH_RECORDS=${FRESH_RECORDS:-0}
RSS_CONNECTIONS=${RSS_CONNECTIONS:-10000}
RSS_HOLD=${RSS_HOLD:-10}
PORT_BASE=${PORT_BASE:-18490}
REDIS_HOST=127.0.0.1
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DB=${REDIS_DB:-15}
POOL_MAX=${POOL_MAX:-4}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
REPIN=${REPIN:-1}
WHOLE_MACHINE=${WHOLE_MACHINE:-1}
WHOLE_LOAD_THREADS=${WHOLE_LOAD_THREADS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
FOREIGN_MAX=${FOREIGN_MAX:-0.1}
SMOKE=${SMOKE:-0}
PERF=${PERF:-0}
PERF_CALLGRAPH=${PERF_CALLGRAPH:-0}
PERF_TARGET=${PERF_TARGET:-governed}
ADMIN_URL=${CARACAL_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DATE=$(date +%F)
if [[ $SMOKE == 1 ]]; then
  OUT=${OUT:-bench/results/gateway-$DATE-smoke.md}
else
  OUT=${OUT:-bench/results/gateway-$DATE.md}
fi

UP_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
PASS_PORT=$((PORT_BASE + 3))
GW_PORT=$((PORT_BASE + 4))

BIN=$ROOT/target/release
WORK=$(mktemp -d /tmp/caracal-bench-gateway.XXXXXX)
RESULTS=$WORK/results.jsonl
COMMANDS=$WORK/commands.txt
LOADS=$WORK/loadavg.txt
NOTES=$WORK/notes.txt
DENIALS=$WORK/denials.txt
SCENARIO=$WORK/scenario.json
: >"$RESULTS" >"$COMMANDS" >"$LOADS" >"$NOTES" >"$DENIALS"

UP_PID="" NGINX_PID="" PASS_PID="" GW_PID="" PERF_PID=""
BENCH_DB=""
REDIS_CLAIMED=0
declare -A SAVED_MASK=()
PG_PM=""
REDIS_PID=""
FRESH_NEXT=0

rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" "$@"; }
log() { echo "[gateway] $*" >&2; }
note() { echo "$*" >>"$NOTES"; log "$*"; }

stop_pid() { # $1: pid
  local pid=$1
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_perf() {
  if [[ -n $PERF_PID ]]; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
  fi
}

stop_all() {
  stop_perf
  stop_pid "$GW_PID"
  stop_pid "$PASS_PID"
  stop_pid "$NGINX_PID"
  stop_pid "$UP_PID"
  GW_PID="" PASS_PID="" NGINX_PID="" UP_PID=""
}

restore_affinity() {
  local pid
  for pid in "${!SAVED_MASK[@]}"; do
    kill -0 "$pid" 2>/dev/null && taskset -a -p "${SAVED_MASK[$pid]}" "$pid" >/dev/null 2>&1 || true
  done
  # Backends forked while the postmaster was pinned inherited the pin.
  if [[ -n $PG_PM && -n ${SAVED_MASK[$PG_PM]:-} ]]; then
    for pid in $(pgrep -P "$PG_PM" || true); do
      taskset -a -p "${SAVED_MASK[$PG_PM]}" "$pid" >/dev/null 2>&1 || true
    done
  fi
  SAVED_MASK=()
}

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  stop_all
  restore_affinity
  rm -f "$SCENARIO"
  if [[ -n $BENCH_DB ]]; then
    "$BIN/gateway_setup" --admin-url "$ADMIN_URL" --drop "$BENCH_DB" || log "could not drop $BENCH_DB"
  fi
  if [[ $REDIS_CLAIMED == 1 ]]; then
    rcli FLUSHDB >/dev/null || log "could not flush redis db $REDIS_DB"
  fi
  if [[ $status != 0 ]]; then
    log "failed (exit $status); logs kept in $WORK"
    for f in "$WORK"/gateway.log "$WORK"/passthrough.log "$WORK"/nginx-*/error.log; do
      [[ -s $f ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in taskset curl jq psql redis-cli; do
  command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done
if [[ $PERF == 1 ]] && ! command -v perf >/dev/null; then
  log "PERF=1 needs perf (Debian: linux-perf)"
  exit 1
fi
if ! command -v nginx >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing nginx-light (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    log "needs nginx (Debian: apt-get install nginx-light)"
    exit 1
  fi
fi

# --- build -------------------------------------------------------------------------------
if [[ $SKIP_BUILD != 1 ]]; then
  log "building caracal and the bench tools (release)"
  cargo build --release -p caracal -p bench
fi
for b in caracal gateway_setup gateway_load gateway_report passthrough; do
  [[ -x $BIN/$b ]] || { log "missing $BIN/$b"; exit 1; }
done

# --- file descriptors for the idle-connection test -------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < RSS_CONNECTIONS + 1000)); then
  note "ulimit -n is $(ulimit -n): the idle-connection test opens $((($(ulimit -n) - 1000))) connections instead of $RSS_CONNECTIONS."
  RSS_CONNECTIONS=$(($(ulimit -n) - 1000))
fi

# --- Redis: a database index of our own -----------------------------------------------------
if [[ $(rcli DBSIZE) != 0 ]]; then
  log "redis db $REDIS_DB is not empty; choose another REDIS_DB"
  exit 1
fi
REDIS_CLAIMED=1

# --- Postgres: a fresh database, the scenario file ---------------------------------------------
log "creating the benchmark database"
SETUP_ENV=$("$BIN/gateway_setup" --admin-url "$ADMIN_URL" --upstream "http://127.0.0.1:$UP_PORT" \
  --scenario-out "$SCENARIO" --records "$FRESH_RECORDS")
eval "$SETUP_ENV"
log "database $BENCH_DB ready"

PG_DATA=$(psql "$ADMIN_URL" -Atc 'show data_directory')
PG_PM=$(head -n 1 "$PG_DATA/postmaster.pid")
REDIS_PID=$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" INFO server | tr -d '\r' | awk -F: '$1=="process_id"{print $2}')

pin_services() {
  local pid ok=1
  for pid in "$PG_PM" $(pgrep -P "$PG_PM") "$REDIS_PID"; do
    local mask
    mask=$(taskset -p "$pid" 2>/dev/null | awk '{print $NF}') || continue
    [[ -n $mask ]] || continue
    SAVED_MASK[$pid]=$mask
    taskset -a -p -c "$LOAD_CPU" "$pid" >/dev/null 2>&1 || ok=0
  done
  if [[ $ok == 1 ]]; then
    note "Postgres (postmaster $PG_PM and its children) and Redis ($REDIS_PID) repinned to CPU $LOAD_CPU for the pinned phase (taskset -a -p -c $LOAD_CPU), restored afterwards."
  else
    note "Could not repin every Postgres/Redis process to CPU $LOAD_CPU (taskset -p failed for some); they float."
  fi
}

# --- nginx configurations ---------------------------------------------------------------------
# $1 name, $2 worker_processes, $3 server block body, $4 extra http directives
nginx_conf() {
  local dir=$WORK/nginx-$1
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $2;
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $((RSS_CONNECTIONS + 2048)); }
http {
  access_log off;
  default_type text/plain;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  $4
  server {
    $3
  }
}
EOF
}

write_nginx_confs() { # $1 worker_processes of the proxy
  # The upstream stub: a fixed 17-byte body; the governed resource's path also requires the
  # injected credential, so a governed 200 proves the api_key was placed.
  nginx_conf upstream 1 "listen 127.0.0.1:$UP_PORT backlog=4096;
    location /gw/ {
      if (\$http_x_api_key != \"$UPSTREAM_API_KEY\") { return 403 \"missing upstream credential\\n\"; }
      return 200 \"caracal-bench-ok\\n\";
    }
    location / { return 200 \"caracal-bench-ok\\n\"; }" ""
  nginx_conf proxy "$1" "listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://stub;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }" "upstream stub { server 127.0.0.1:$UP_PORT; keepalive 256; keepalive_requests 1000000000; keepalive_timeout 300s; }"
}

wait_http() { # $1 url, $2 pid, $3 name
  local i
  for i in $(seq 1 150); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null) == 200 ]]; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || { log "$3 exited during start"; return 1; }
    sleep 0.1
  done
  log "$3 not ready after 15 s"
  return 1
}

# $1: taskset prefix for the proxies ("" for none), $2: for the upstream stub, $3: tag,
# $4: TOKIO_WORKER_THREADS for the gateway and the passthrough ("" for tokio's default)
start_all() {
  local proxy=$1 stub=$2 tag=$3 workers=$4
  local threads=()
  [[ -n $workers ]] && threads=(TOKIO_WORKER_THREADS="$workers")
  $stub nginx -e "$WORK/nginx-upstream/error.log" -p "$WORK/nginx-upstream" -c "$WORK/nginx-upstream/nginx.conf" -g 'daemon off;' &
  UP_PID=$!
  $proxy nginx -e "$WORK/nginx-proxy/error.log" -p "$WORK/nginx-proxy" -c "$WORK/nginx-proxy/nginx.conf" -g 'daemon off;' &
  NGINX_PID=$!
  echo "== $tag" >>"$WORK/passthrough.log"
  env "${threads[@]}" $proxy "$BIN/passthrough" --listen "127.0.0.1:$PASS_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" >>"$WORK/passthrough.log" 2>&1 &
  PASS_PID=$!
  echo "== $tag" >>"$WORK/gateway.log"
  env "${threads[@]}" RUST_LOG=warn \
    DATABASE_URL="$DATABASE_URL" \
    REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/$REDIS_DB" \
    ZONE_KEK="$ZONE_KEK" AUDIT_HMAC_KEY="$AUDIT_HMAC_KEY" STREAMS_HMAC_KEY="$STREAMS_HMAC_KEY" \
    ISSUER_URL="$GATEWAY_ISSUER" CARACAL_GATEWAY_ADDR="127.0.0.1:$GW_PORT" \
    AUDIT_REPLAY_DIR="$WORK/replay" CARACAL_INSTANCE_ID=bench-gateway \
    CARACAL_DB_POOL_MAX="$POOL_MAX" \
    $proxy "$BIN/caracal" gateway >>"$WORK/gateway.log" 2>&1 &
  GW_PID=$!
  wait_http "http://127.0.0.1:$UP_PORT/" "$UP_PID" "upstream nginx"
  wait_http "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID" "proxy nginx"
  wait_http "http://127.0.0.1:$PASS_PORT/" "$PASS_PID" "passthrough"
  wait_http "http://127.0.0.1:$GW_PORT/ready" "$GW_PID" "gateway"
  log "ready ($tag): upstream $UP_PID, nginx $NGINX_PID, passthrough $PASS_PID, gateway $GW_PID"
}

target_port() {
  case $1 in
    direct) echo "$UP_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    passthrough) echo "$PASS_PORT" ;;
    governed*) echo "$GW_PORT" ;;
  esac
}

target_watch() { # the system under test's CPU group
  case $1 in
    direct) ;;
    nginx) echo "--watch proxy=+$NGINX_PID" ;;
    passthrough) echo "--watch proxy=$PASS_PID" ;;
    governed*) echo "--watch proxy=$GW_PID" ;;
  esac
}

# Per-target request options, into OPTS (not a subshell: the fresh-record offset advances).
# $1 target, $2 mode (closed/open), $3 seconds, $4 rate. Fails when the fresh-record pool
# cannot cover the run.
target_args() {
  local target=$1 mode=$2 seconds=$3 rate=$4 n
  OPTS=""
  case $target in
    direct | nginx | passthrough) OPTS="--reuse-token" ;;
    governed | governed+rl | governed+plugin | governed+fresh)
      if [[ $mode == closed ]]; then
        n=$(awk -v r="$GOV_MAX" -v d="$seconds" 'BEGIN { printf "%d", r * d * 1.5 + 1000 }')
      else
        n=$(awk -v r="$rate" -v d="$seconds" -v c="$OPEN_CONNECTIONS" 'BEGIN { printf "%d", r * d + c + 100 }')
      fi
      OPTS="--mandates $n"
      [[ $target == governed+rl ]] && OPTS+=" --resource resource://echo-rl"
      [[ $target == governed+plugin ]] && OPTS+=" --resource resource://echo-plugin"
      if [[ $target == governed+fresh ]]; then
        ((FRESH_NEXT + n <= FRESH_RECORDS)) || return 1
        OPTS+=" --fresh-records $FRESH_NEXT"
        FRESH_NEXT=$((FRESH_NEXT + n))
      fi
      ;;
  esac
}

# One load run: $1 label, $2 loadgen prefix, $3 target, $4 phase, $5 round, then options.
load() {
  local label=$1 prefix=$2 target=$3 phase=$4 round=$5
  shift 5
  local cmd
  # shellcheck disable=SC2046 # word splitting of the option lists is intended
  cmd=("$BIN/gateway_load" --addr "127.0.0.1:$(target_port "$target")" --scenario "$SCENARIO"
    --target "$target" --phase "$phase" --round "$round" --label "$label"
    $(target_watch "$target") --watch "upstream=+$UP_PID" --watch "redis=$REDIS_PID"
    --watch "postgres=+$PG_PM" "$@")
  if ! grep -qF "[$label]" "$COMMANDS"; then
    echo "[$label] ${prefix:+$prefix }${cmd[*]}" >>"$COMMANDS"
  fi
  echo "$label #$round | $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOADS"
  local line profile=0
  # The profile is taken in the warm-up, so no reported run carries perf's overhead.
  if [[ $PERF == 1 && $label == "warmup $PERF_TARGET pinned" ]]; then
    profile=1
    local graph=()
    [[ $PERF_CALLGRAPH == 1 ]] && graph=(--call-graph dwarf,16384)
    perf record -q -e cpu-clock -F 999 "${graph[@]}" -o "$WORK/perf.data" -p "$GW_PID" 2>>"$WORK/perf.log" &
    PERF_PID=$!
    sleep 0.5
  fi
  line=$($prefix "${cmd[@]}")
  if [[ $profile == 1 ]]; then
    stop_perf
    perf report -i "$WORK/perf.data" --no-children -g none --sort dso,symbol --stdio --percent-limit 0.7 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+(-[[:space:]]+)*$//' | head -n 45 >"$WORK/perf.txt" || true
    [[ $PERF_CALLGRAPH == 1 ]] && cp "$WORK/perf.data" "$OUT.perf.data"
  fi
  echo "$line" >>"$RESULTS"
  log "$(jq -rc '[.label, .round, .throughput, .latency_us.p50, .latency_us.p99, .errors, .foreign_util, .steal_util] | @tsv' <<<"$line" 2>/dev/null || echo "$line")"
  if [[ $target == governed* ]]; then
    # Stand in for the audit consumer: keep the stream short between runs. A run with
    # errors keeps the audit events that were not allows.
    sleep 1
    if [[ $(jq -r '.errors' <<<"$line") != 0 ]]; then
      {
        echo "[$label #$round]"
        rcli --raw XRANGE caracal.audit.events - + COUNT 200 | grep '^{' | grep -v '"decision":"allow"' | head -n 10 | cut -c1-2000
      } >>"$DENIALS" || true
    fi
    rcli XTRIM caracal.audit.events MAXLEN 0 >/dev/null || true
  fi
  LAST_LINE=$line
}

TARGETS_MAX=(direct nginx passthrough governed)
TARGETS_OPEN=(direct nginx passthrough governed)
# Right after governed, so the per-round plugin/governed pair runs back to back.
if [[ $PLUGIN_SERIES == 1 ]]; then
  TARGETS_MAX+=(governed+plugin)
  TARGETS_OPEN+=(governed+plugin)
fi
[[ $RATE_LIMIT_SERIES == 1 ]] && TARGETS_MAX+=(governed+rl)
if ((FRESH_RECORDS > 0)); then
  TARGETS_MAX+=(governed+fresh)
  TARGETS_OPEN+=(governed+fresh)
fi

GOV_MAX=${GOV_GUESS:-6000}

# $1 phase tag, $2 loadgen prefix, $3 "open" to add the fixed-rate series, $4 loadgen threads
series() {
  local tag=$1 prefix=$2 with_open=$3 threads=$4 i target
  log "warm-up ($WARMUP s per target, $tag)"
  for target in "${TARGETS_MAX[@]}"; do
    [[ $target == governed+fresh ]] && continue
    target_args "$target" closed "$WARMUP" 0
    # shellcheck disable=SC2086 # OPTS is a list of options
    load "warmup $target $tag" "$prefix" "$target" "$tag" 0 --threads "$threads" --connections "$CONNECTIONS" --duration "$WARMUP" $OPTS
    if [[ $target == governed ]]; then
      GOV_MAX=$(jq -r '.throughput' <<<"$LAST_LINE")
    fi
  done
  if [[ $with_open == open && -z $RATE ]]; then
    RATE=$(awk -v r="$GOV_MAX" 'BEGIN { v = int(r / 2 / 100) * 100; if (v < 100) v = 100; print v }')
    note "Fixed rate: $RATE/s, 50 % of the governed warm-up throughput ($GOV_MAX/s) rounded down to 100/s."
  fi
  for i in $(seq 1 "$RUNS"); do
    log "round $i/$RUNS ($tag)"
    for target in "${TARGETS_MAX[@]}"; do
      if ! target_args "$target" closed "$DURATION" 0; then
        note "FRESH_RECORDS ($FRESH_RECORDS) ran out in round $i ($tag, maximum throughput); that run was skipped."
        continue
      fi
      # shellcheck disable=SC2086
      load "$target max, $tag" "$prefix" "$target" "$tag" "$i" --timeline --threads "$threads" --connections "$CONNECTIONS" --duration "$DURATION" $OPTS
      if [[ $target == governed ]]; then
        local seen
        seen=$(jq -r '.throughput' <<<"$LAST_LINE")
        GOV_MAX=$(awk -v a="$GOV_MAX" -v b="$seen" 'BEGIN { print (b > a ? b : a) }')
      fi
    done
    if [[ $with_open == open ]]; then
      for target in "${TARGETS_OPEN[@]}"; do
        if ! target_args "$target" open "$DURATION" "$RATE"; then
          note "FRESH_RECORDS ($FRESH_RECORDS) ran out in round $i ($tag, fixed rate); that run was skipped."
          continue
        fi
        # shellcheck disable=SC2086
        load "$target @${RATE}/s, $tag" "$prefix" "$target" "$tag" "$i" --timeline --threads "$threads" --rate "$RATE" --connections "$OPEN_CONNECTIONS" --duration "$DURATION" $OPTS
      done
    fi
  done
}

idle_test() { # $1 loadgen prefix
  local target port rss line
  for target in governed passthrough nginx; do
    port=$(target_port "$target")
    case $target in
      governed) rss="proxy=$GW_PID" ;;
      passthrough) rss="proxy=$PASS_PID" ;;
      nginx) rss="proxy=+$NGINX_PID" ;;
    esac
    local cmd=("$BIN/gateway_load" --addr "127.0.0.1:$port" --idle "$RSS_CONNECTIONS" --hold "$RSS_HOLD"
      --rss "$rss" --target "$target" --phase pinned --label "idle $target")
    echo "[idle $target] ${1:+$1 }${cmd[*]}" >>"$COMMANDS"
    log "idle connections: $target ($RSS_CONNECTIONS for $RSS_HOLD s)"
    line=$($1 "${cmd[@]}")
    echo "$line" >>"$RESULTS"
    log "$(jq -rc '[.label, .opened, .rss_kb.before, .rss_kb.max, .open_at_end] | @tsv' <<<"$line" 2>/dev/null || echo "$line")"
    sleep 2
  done
}

UPTIME_START=$(uptime)

# --- pinned phase: the proxies on PROXY_CPU, everything else on LOAD_CPU -------------------------
if [[ $REPIN == 1 ]]; then
  pin_services
else
  note "Postgres and Redis were not repinned (REPIN=0); they float over both CPUs."
fi
write_nginx_confs 1
start_all "taskset -c $PROXY_CPU" "taskset -c $LOAD_CPU" pinned 1
LOAD_PREFIX_PINNED="taskset -c $LOAD_CPU"
# One governed request first: a scenario the gateway refuses fails here, not in the runs.
load "warmup check" "$LOAD_PREFIX_PINNED" governed check 0 --rate 20 --duration 1 --connections 2
if [[ $(jq -r '.errors' <<<"$LAST_LINE") != 0 || $(jq -r '.ok' <<<"$LAST_LINE") == 0 ]]; then
  log "the governed check failed: $(jq -r '.sample_error' <<<"$LAST_LINE")"
  exit 1
fi
if [[ $PLUGIN_SERIES == 1 ]]; then
  load "warmup check plugin" "$LOAD_PREFIX_PINNED" governed+plugin check 0 --rate 20 --duration 1 --connections 2 \
    --resource resource://echo-plugin
  if [[ $(jq -r '.errors' <<<"$LAST_LINE") != 0 || $(jq -r '.ok' <<<"$LAST_LINE") == 0 ]]; then
    log "the governed+plugin check failed: $(jq -r '.sample_error' <<<"$LAST_LINE")"
    exit 1
  fi
fi
series pinned "$LOAD_PREFIX_PINNED" open 0
idle_test "$LOAD_PREFIX_PINNED"
METRICS_PINNED=$(curl -sf "http://127.0.0.1:$GW_PORT/metrics.json" | jq -c '.' 2>/dev/null || echo '{}')
stop_all
restore_affinity
UPTIME_PINNED=$(uptime)

# --- whole machine: nothing pinned --------------------------------------------------------------
METRICS_WHOLE='{}'
if [[ $WHOLE_MACHINE == 1 ]]; then
  write_nginx_confs auto
  start_all "" "" "whole machine" ""
  series "whole machine" "" max "$WHOLE_LOAD_THREADS"
  METRICS_WHOLE=$(curl -sf "http://127.0.0.1:$GW_PORT/metrics.json" | jq -c '.' 2>/dev/null || echo '{}')
  stop_all
fi
UPTIME_END=$(uptime)

# --- cross-checks ---------------------------------------------------------------------------------
GOV_OK=$(jq -s 'map(select((.target // "") | startswith("governed")) | .ok // 0) | add' "$RESULTS")
REPLAYED=$(find "$WORK/replay" -type f 2>/dev/null | wc -l)

# --- report ---------------------------------------------------------------------------------------
TREE_DIFF_SHA=$(git diff HEAD -- . ':!bench' 2>/dev/null | sha256sum | cut -c1-12)
BIN_INFO="$(sha256sum "$BIN/caracal" | cut -c1-12), built $(date -r "$BIN/caracal" '+%F %T')"
mkdir -p "$(dirname "$OUT")"
{
  if [[ $SMOKE == 1 ]]; then
    echo "# Gateway load benchmark, $DATE — SMOKE, NOT A MEASUREMENT"
    echo
    echo "**Smoke run, not a measurement:** DURATION=$DURATION s, RUNS=$RUNS, WARMUP=$WARMUP s, on a machine shared with concurrent builds. It shows that every phase runs end to end and what the report looks like; none of its figures may be quoted."
  else
    echo "# Gateway load benchmark, $DATE"
  fi
  echo
  echo "Produced by \`bench/load/gateway.sh\` (see \`bench/README.md\`, \"Gateway (issue 5)\", for what each figure means)."
  echo
  echo "## Setting"
  echo
  echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -sr)."
  echo "- Tree: \`$(git rev-parse --short HEAD)\` plus $(git status --short -- . ':!bench' | wc -l) uncommitted files outside bench/ (\`git diff HEAD\` sha256 $TREE_DIFF_SHA; the work tree is shared, so another run may measure other code). Binary \`target/release/caracal\` sha256 $BIN_INFO."
  echo "- Load before: \`$UPTIME_START\`"
  echo "- Load after the pinned phase: \`$UPTIME_PINNED\`"
  echo "- Load at the end: \`$UPTIME_END\`"
  echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //') (Debian \`nginx-light\`) as the upstream stub (one worker, a fixed 17-byte body) and as the baseline proxy (upstream keep-alive pool of 256, \`access_log off\`); Postgres $(psql "$ADMIN_URL" -Atc 'show server_version'); Redis $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" INFO server | tr -d '\r' | awk -F: '$1=="redis_version"{print $2}') (db $REDIS_DB)."
  echo "- Gateway: \`RUST_LOG=warn\`, \`CARACAL_DB_POOL_MAX=$POOL_MAX\`, every other setting at its default (\`CARACAL_GATEWAY_MAX_CONNECTIONS\` 10,000, \`READ_HEADER_TIMEOUT\` 5 s, \`IDLE_TIMEOUT\` 120 s, audit async). Governed requests: \`GET /items\` on \`resource://echo\` (operation enforced, scope \`read\`), provider \`api_key\` (header \`X-Api-Key\`, allowed towards 127.0.0.1), delegated agent session and edge, one ES256 mandate signed per request before the run. Unless the series says \`fresh\`, every mandate names the same authority record (served from the gateway's record cache after the first request); the \`+rl\` series adds a per-application rate limit that never denies (one more Redis round trip); the \`+plugin\` series runs on \`resource://echo-plugin\`, which has one WebAssembly authorizer bound (\`fixture-allow\` of \`tests-fixtures\`, allows every request; deadline 5 ms, memory 16 MiB, gateway plugin host at its defaults)."
  echo "- Pinned phase: the proxies (\`nginx\` with one worker, \`passthrough\` and \`caracal gateway\` with \`TOKIO_WORKER_THREADS=1\`) under \`taskset -c $PROXY_CPU\`; upstream stub, load generator (current-thread runtime), Postgres and Redis on CPU $LOAD_CPU."
  echo "- Whole machine: nothing pinned, nginx \`worker_processes auto\`, tokio's default workers, load generator threads: $WHOLE_LOAD_THREADS (0 = current-thread)."
  while IFS= read -r line; do echo "- $line"; done <"$NOTES"
  echo "- Each run: $DURATION s; $RUNS rounds; in each round the targets run back to back, maximum throughput first ($CONNECTIONS connections), then the fixed rate ($OPEN_CONNECTIONS connections at most in flight); warm-up $WARMUP s per target before each phase. Between governed runs the audit stream is trimmed (\`XTRIM caracal.audit.events MAXLEN 0\`), standing in for the audit consumer."
  echo
  echo "## Results"
  echo
  "$BIN/gateway_report" "$RESULTS" "$FOREIGN_MAX" "$RSS_CONNECTIONS"
  echo "Cross-checks: $GOV_OK successful governed requests in all runs (warm-ups included); replay files written: $REPLAYED; gateway counters pinned phase \`$METRICS_PINNED\`, whole machine \`$METRICS_WHOLE\`."
  echo
  GW_WARNINGS=$(grep -v '^== ' "$WORK/gateway.log" | sed 's/\x1b\[[0-9;]*m//g' || true)
  if [[ -n $GW_WARNINGS ]]; then
    echo "Gateway log at \`RUST_LOG=warn\`: $(wc -l <<<"$GW_WARNINGS") lines; the first 10:"
    echo
    echo '```'
    head -n 10 <<<"$GW_WARNINGS" | cut -c1-400
    echo '```'
    echo
  fi
  if [[ -s $WORK/perf.txt ]]; then
    echo "Where the gateway's CPU went during the pinned $PERF_TARGET warm-up (closed loop, $WARMUP s) (\`perf record -e cpu-clock -F 999 -p <gateway>\`, flat, symbols above 0.7 %):"
    echo
    echo '```'
    cat "$WORK/perf.txt"
    echo '```'
    echo
  fi
  if [[ -s $DENIALS ]]; then
    echo "Audit events other than allows, kept from the governed runs that had errors (first 10 per run):"
    echo
    echo '```'
    cat "$DENIALS"
    echo '```'
    echo
  fi
  echo "## Commands"
  echo
  echo '```'
  echo "bench/load/gateway.sh   # DURATION=$DURATION RUNS=$RUNS WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS OPEN_CONNECTIONS=$OPEN_CONNECTIONS RATE=$RATE RSS_CONNECTIONS=$RSS_CONNECTIONS RSS_HOLD=$RSS_HOLD RATE_LIMIT_SERIES=$RATE_LIMIT_SERIES PLUGIN_SERIES=$PLUGIN_SERIES FRESH_RECORDS=$FRESH_RECORDS"
  echo "# which ran, per series (pids and temporary paths as in this run):"
  sed "s|$ROOT/||g" "$COMMANDS"
  echo '```'
  echo
  echo "## Load average before each run"
  echo
  echo '```'
  cat "$LOADS"
  echo '```'
  echo
  echo "## Raw results (one gateway_load line per run)"
  echo
  echo '```json'
  cat "$RESULTS"
  echo '```'
} >"$OUT"
log "wrote $OUT"
