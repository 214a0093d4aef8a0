#!/usr/bin/env bash
# STS mint benchmark (issue 3, "Benchmark"): bootstrap and delegated mints per second, and
# delegated latency at a fixed rate, against the machine's Postgres and Redis.
#
#   bench/load/sts_mints.sh            # build, set up, measure, write bench/results/sts-mints-<date>.md
#
# Settings (environment): DURATION (s per run, 10), RUNS (5), WARMUP (s per kind, 10),
# CONNECTIONS (closed loop, 32), OPEN_CONNECTIONS (open loop, 32), RATE (1000),
# PORT (18480), REDIS_DB (11; must be empty, flushed at the end), POOL_MAX (STS pool, 20),
# STS_CPU (1), LOAD_CPU (0), REPIN (1: move Postgres and Redis to LOAD_CPU for the pinned
# phase), WHOLE_MACHINE (1: also a run with nothing pinned), SKIP_BUILD (0), FOREIGN_MAX
# (0.1: runs during which other processes and hypervisor steal took more CPU than this
# are left out of the medians, see mint_report), PG_SSLMODE (unset: sqlx's default `prefer`, i.e. TLS to a
# Postgres that offers it; `disable` for plain TCP), OUT.
#
# Everything it starts is stopped and the database dropped on exit, failure included; the
# CPU affinity of Postgres and Redis is restored.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-10}
RUNS=${RUNS:-5}
WARMUP=${WARMUP:-10}
CONNECTIONS=${CONNECTIONS:-32}
OPEN_CONNECTIONS=${OPEN_CONNECTIONS:-32}
RATE=${RATE:-1000}
PORT=${PORT:-18480}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DB=${REDIS_DB:-11}
POOL_MAX=${POOL_MAX:-20}
STS_CPU=${STS_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
REPIN=${REPIN:-1}
WHOLE_MACHINE=${WHOLE_MACHINE:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
FOREIGN_MAX=${FOREIGN_MAX:-0.1}
PG_SSLMODE=${PG_SSLMODE:-}
ADMIN_URL=${CARACAL_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DATE=$(date +%F)
OUT=${OUT:-bench/results/sts-mints-$DATE.md}

BIN=$ROOT/target/release
WORK=$(mktemp -d /tmp/caracal-bench-sts.XXXXXX)
RESULTS=$WORK/results.jsonl
COMMANDS=$WORK/commands.txt
LOADS=$WORK/loadavg.txt
NOTES=$WORK/notes.txt
DENIALS=$WORK/denials.txt
: >"$RESULTS" >"$COMMANDS" >"$LOADS" >"$NOTES" >"$DENIALS"

STS_PID=""
BENCH_DB=""
REDIS_CLAIMED=0
declare -A SAVED_MASK=()
PG_PM=""
REDIS_PID=""

rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" "$@"; }
log() { echo "[sts_mints] $*" >&2; }
note() { echo "$*" >>"$NOTES"; log "$*"; }

stop_sts() {
  if [[ -n $STS_PID ]] && kill -0 "$STS_PID" 2>/dev/null; then
    kill -TERM "$STS_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$STS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$STS_PID" 2>/dev/null || true
    wait "$STS_PID" 2>/dev/null || true
  fi
  STS_PID=""
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
  stop_sts
  restore_affinity
  if [[ -n $BENCH_DB ]]; then
    "$BIN/mint_setup" --admin-url "$ADMIN_URL" --drop "$BENCH_DB" || log "could not drop $BENCH_DB"
  fi
  if [[ $REDIS_CLAIMED == 1 ]]; then
    rcli FLUSHDB >/dev/null || log "could not flush redis db $REDIS_DB"
  fi
  if [[ $status != 0 ]]; then
    log "failed (exit $status); logs kept in $WORK"
    [[ -f $WORK/sts.log ]] && tail -n 30 "$WORK/sts.log" >&2
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

# --- build -------------------------------------------------------------------------------
if [[ $SKIP_BUILD != 1 ]]; then
  log "building caracal and the bench tools (release)"
  cargo build --release -p caracal -p bench
fi
for b in caracal mint_setup mint_load mint_report; do
  [[ -x $BIN/$b ]] || { log "missing $BIN/$b"; exit 1; }
done

# --- Redis: a database index of our own -----------------------------------------------------
if [[ $(rcli DBSIZE) != 0 ]]; then
  log "redis db $REDIS_DB is not empty; choose another REDIS_DB"
  exit 1
fi
REDIS_CLAIMED=1

# --- Postgres: a fresh database ------------------------------------------------------------
log "creating the benchmark database"
SETUP_ENV=$("$BIN/mint_setup" --admin-url "$ADMIN_URL")
eval "$SETUP_ENV"
if [[ -n $PG_SSLMODE ]]; then
  DATABASE_URL="$DATABASE_URL?sslmode=$PG_SSLMODE"
fi
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

start_sts() { # $1: taskset prefix ("" for the whole machine), $2: tag
  local log_file=$WORK/sts.log
  echo "== $2" >>"$log_file"
  env RUST_LOG=warn \
    DATABASE_URL="$DATABASE_URL" \
    REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/$REDIS_DB" \
    ZONE_KEK="$ZONE_KEK" AUDIT_HMAC_KEY="$AUDIT_HMAC_KEY" STREAMS_HMAC_KEY="$STREAMS_HMAC_KEY" \
    ISSUER_URL="http://127.0.0.1:$PORT" CARACAL_STS_ADDR="127.0.0.1:$PORT" \
    AUDIT_REPLAY_DIR="$WORK/replay" CARACAL_INSTANCE_ID=bench-sts \
    CARACAL_DB_POOL_MAX="$POOL_MAX" STS_MINT_RATE_LIMIT_PER_MIN=1000000 \
    $1 "$BIN/caracal" sts >>"$log_file" 2>&1 &
  STS_PID=$!
  local i
  for i in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then
      log "sts ready (pid $STS_PID, $2)"
      return 0
    fi
    kill -0 "$STS_PID" 2>/dev/null || { log "sts exited during start"; return 1; }
    sleep 0.1
  done
  log "sts not ready after 10 s"
  return 1
}

STS_CMD_PINNED="taskset -c $STS_CPU $BIN/caracal sts"
LOAD_PREFIX_PINNED="taskset -c $LOAD_CPU"

# One load run: $1 label, $2 taskset prefix ("" for none), then mint_load arguments.
load() {
  local label=$1 prefix=$2
  shift 2
  local cmd=("$BIN/mint_load" --addr "127.0.0.1:$PORT" --label "$label"
    --watch "sts=$STS_PID" --watch "postgres=+$PG_PM" --watch "redis=$REDIS_PID" "$@")
  if ! grep -qF "[$label]" "$COMMANDS"; then
    echo "[$label] ${prefix:+$prefix }${cmd[*]}" >>"$COMMANDS"
  fi
  echo "$label | $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOADS"
  local line
  line=$($prefix "${cmd[@]}")
  echo "$line" >>"$RESULTS"
  log "$(jq -rc '[.label, .throughput, .latency_us.p50, .latency_us.p99, .errors, .foreign_util, .steal_util] | @tsv' <<<"$line" 2>/dev/null || echo "$line")"
  # Stand in for the audit consumer: keep the stream short between runs. A run with
  # errors keeps the audit events that were not allows (their diagnostics say why).
  sleep 1
  if [[ $(jq -r '.errors' <<<"$line") != 0 ]]; then
    {
      echo "[$label]"
      rcli --raw XRANGE caracal.audit.events - + | grep '^{' | grep -v '"decision":"allow"' | head -n 20 | cut -c1-2000
    } >>"$DENIALS" || true
  fi
  rcli XTRIM caracal.audit.events MAXLEN 0 >/dev/null || true
}

series() { # $1 phase tag, $2 loadgen prefix
  local tag=$1 prefix=$2 i
  log "warm-up ($WARMUP s per kind)"
  load "warmup bootstrap $tag" "$prefix" --kind bootstrap --connections "$CONNECTIONS" --duration "$WARMUP"
  load "warmup delegated $tag" "$prefix" --kind delegated --connections "$CONNECTIONS" --duration "$WARMUP"
  for i in $(seq 1 "$RUNS"); do
    log "run $i/$RUNS ($tag)"
    load "bootstrap max, $tag" "$prefix" --timeline --kind bootstrap --connections "$CONNECTIONS" --duration "$DURATION"
    load "delegated max, $tag" "$prefix" --timeline --kind delegated --connections "$CONNECTIONS" --duration "$DURATION"
    if [[ $tag == pinned ]]; then
      load "delegated @${RATE}/s, $tag" "$prefix" --kind delegated --rate "$RATE" --timeline --connections "$OPEN_CONNECTIONS" --duration "$DURATION"
    fi
  done
}

UPTIME_START=$(uptime)

# --- pinned phase: STS on STS_CPU, everything else on LOAD_CPU ------------------------------
if [[ $REPIN == 1 ]]; then
  pin_services
else
  note "Postgres and Redis were not repinned (REPIN=0); they float over both CPUs."
fi
start_sts "taskset -c $STS_CPU" "pinned"
series pinned "$LOAD_PREFIX_PINNED"
METRICS_PINNED=$(curl -sf "http://127.0.0.1:$PORT/metrics.json" || echo '{}')
stop_sts
restore_affinity
UPTIME_PINNED=$(uptime)

# --- whole machine: nothing pinned ---------------------------------------------------------
METRICS_WHOLE='{}'
if [[ $WHOLE_MACHINE == 1 ]]; then
  start_sts "" "whole machine"
  series "whole machine" ""
  METRICS_WHOLE=$(curl -sf "http://127.0.0.1:$PORT/metrics.json" || echo '{}')
  stop_sts
fi
UPTIME_END=$(uptime)

# --- cross-checks --------------------------------------------------------------------------
OK_TOTAL=$(jq -s 'map(.ok) | add' "$RESULTS")
RECORDS=$(psql "$DATABASE_URL" -Atc 'select count(*) from caracal.sessions')
REPLAYED=$(find "$WORK/replay" -type f 2>/dev/null | wc -l)

# --- report ---------------------------------------------------------------------------------
if [[ -n $PG_SSLMODE ]]; then
  SSL_TEXT="sslmode=$PG_SSLMODE"
else
  SSL_TEXT="the driver default sslmode=prefer (TLS when the server offers it)"
fi
TREE_DIFF_SHA=$(git diff HEAD -- . ':!bench' 2>/dev/null | sha256sum | cut -c1-12)
BIN_INFO="$(sha256sum "$BIN/caracal" | cut -c1-12), built $(date -r "$BIN/caracal" '+%F %T')"
mkdir -p "$(dirname "$OUT")"
{
  echo "# STS mints, $DATE"
  echo
  echo "Produced by \`bench/load/sts_mints.sh\` (see \`bench/README.md\` for what each figure means)."
  echo
  echo "## Setting"
  echo
  echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -sr)."
  echo "- Tree: \`$(git rev-parse --short HEAD)\` plus $(git status --short -- . ':!bench' | wc -l) uncommitted files outside bench/ (\`git diff HEAD\` sha256 $TREE_DIFF_SHA; the work tree is shared, so another run may measure other code). Binary \`target/release/caracal\` sha256 $BIN_INFO."
  echo "- Load before: \`$UPTIME_START\`"
  echo "- Load after the pinned phase: \`$UPTIME_PINNED\`"
  echo "- Load at the end: \`$UPTIME_END\`"
  echo "- Postgres $(psql "$ADMIN_URL" -Atc 'show server_version'), synchronous_commit=$(psql "$ADMIN_URL" -Atc 'show synchronous_commit'), fsync=$(psql "$ADMIN_URL" -Atc 'show fsync'), ssl=$(psql "$ADMIN_URL" -Atc 'show ssl'), STS connections with $SSL_TEXT; Redis $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" INFO server | tr -d '\r' | awk -F: '$1=="redis_version"{print $2}') (db $REDIS_DB)."
  echo "- STS: \`RUST_LOG=warn\`, \`CARACAL_DB_POOL_MAX=$POOL_MAX\`, \`STS_MINT_RATE_LIMIT_PER_MIN=1000000\` (the default 1,000/min per zone, resource and application would cap a one-application benchmark at 16.7 mints/s), Argon2id secrets at the production default (m=19456 KiB, t=2, p=1), verified-secret cache at its built-in 60 s."
  echo "- Pinned phase: \`$STS_CMD_PINNED\` (so tokio runs one worker); load generator \`$LOAD_PREFIX_PINNED\`, current-thread runtime."
  while IFS= read -r line; do echo "- $line"; done <"$NOTES"
  echo "- Each run: $DURATION s; $RUNS runs per series, alternating bootstrap max / delegated max / delegated @${RATE}/s; warm-up $WARMUP s per kind before each phase. Between runs the audit stream is trimmed (\`XTRIM caracal.audit.events MAXLEN 0\`), standing in for the audit consumer."
  echo
  echo "## Results"
  echo
  "$BIN/mint_report" "$RESULTS" "$FOREIGN_MAX"
  echo
  echo "Cross-checks: $OK_TOTAL successful mints in all runs (warm-ups included); $RECORDS authority records (\`caracal.sessions\` rows) in the database; STS counters pinned phase \`$METRICS_PINNED\`, whole machine \`$METRICS_WHOLE\`; replay files written: $REPLAYED."
  echo
  STS_WARNINGS=$(grep -v '^== ' "$WORK/sts.log" | sed 's/\x1b\[[0-9;]*m//g' || true)
  if [[ -n $STS_WARNINGS ]]; then
    echo "STS log at \`RUST_LOG=warn\`: $(wc -l <<<"$STS_WARNINGS") lines; the first 10:"
    echo
    echo '```'
    head -n 10 <<<"$STS_WARNINGS" | cut -c1-400
    echo '```'
    echo
  fi
  if [[ -s $DENIALS ]]; then
    echo "Audit events other than allows, kept from the runs that had errors (first 20 per run):"
    echo
    echo '```'
    cat "$DENIALS"
    echo '```'
    echo
  fi
  echo "## Commands"
  echo
  echo '```'
  echo "bench/load/sts_mints.sh   # DURATION=$DURATION RUNS=$RUNS WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS OPEN_CONNECTIONS=$OPEN_CONNECTIONS RATE=$RATE POOL_MAX=$POOL_MAX"
  echo "# which ran, per series (pids as in this run):"
  sed "s|$ROOT/||g" "$COMMANDS"
  echo '```'
  echo
  echo "## Load average before each run"
  echo
  echo "The load average counts the benchmark's own processes too (the STS, its 20 Postgres backends, the load generator), so 4–7 is expected here; other people's load is the foreign+steal column above."
  echo
  echo '```'
  cat "$LOADS"
  echo '```'
  echo
  echo "## Raw results (one mint_load line per run)"
  echo
  echo '```json'
  cat "$RESULTS"
  echo '```'
} >"$OUT"
log "wrote $OUT"
