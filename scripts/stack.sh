#!/usr/bin/env bash
# The whole stack on this machine, with one command (`make up` / `make down`).
#
#   scripts/stack.sh up             Postgres and Redis (scripts/services.sh), the binary, keys,
#                                   database, migrations, `caracal all`, an echo upstream and a
#                                   demo zone; then prints a governed request to try
#   scripts/stack.sh try            runs that request and shows what the upstream received
#   scripts/stack.sh status         what runs, each role's /ready, where the logs are
#   scripts/stack.sh down [--purge] stops what `up` started (Postgres and Redis keep running);
#                                   --purge also drops the database, empties the stack's Redis
#                                   database and deletes the state directory
#
# `up` is idempotent: a second run starts only what is not running and reuses the keys, the
# database and the demo zone. Everything it keeps is in the state directory (mode 0700):
# secrets.env (the keys and bearer tokens, 0600, never printed), demo.env (the demo zone's
# ids and its demo client secret, 0600), run/ (pid files and the ports of the running stack)
# and logs/.
#
# Settings (environment):
#   CARACAL_BIN                 the binary to run (default: `cargo build --release`, then
#                               target/release/caracal)
#   CARACAL_STACK_PORT_OFFSET   added to every port (default 0): STS 8080, admin API 3000,
#                               Coordinator 4000, gateway 8081, audit 9090, echo upstream 8089
#   CARACAL_STACK_DIR           state directory (default .caracal in the repository)
#   CARACAL_STACK_DB            database name (default caracal_local)
#   CARACAL_STACK_PG_URL        server URL of a role that can create databases and roles
#                               (default postgres://postgres@127.0.0.1:5432)
#   CARACAL_STACK_REDIS_URL     Redis with its database (default redis://127.0.0.1:6379/1: the
#                               tests use 0 and 4-15, and a live STS heartbeating into their
#                               database would hold their activations at waiting_for_sts)
#   CARACAL_STACK_READY_TIMEOUT seconds to wait for every /ready (default 120)
#   CARACAL_STACK_SKIP_SERVICES 1: do not run scripts/services.sh (Postgres and Redis are
#                               provided some other way)
# Extra settings for the roles go into <state>/local.env, one VAR=value per line; they win
# over the stack's own.
set -euo pipefail

caller_dir=$PWD
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf 'stack: %s\n' "$*"; }
fail() {
  printf 'stack: %s\n' "$*" >&2
  exit 1
}

# --- settings ------------------------------------------------------------------------------

offset=${CARACAL_STACK_PORT_OFFSET:-0}
if ! [[ $offset =~ ^[0-9]{1,5}$ ]] || [ "$offset" -gt 50000 ]; then
  fail "CARACAL_STACK_PORT_OFFSET must be a number from 0 to 50000"
fi
state=${CARACAL_STACK_DIR:-$repo/.caracal}
case $state in /*) ;; *) state=$caller_dir/$state ;; esac
db_name=${CARACAL_STACK_DB:-caracal_local}
[[ $db_name =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
  fail "CARACAL_STACK_DB must be a lower-case Postgres name ([a-z_][a-z0-9_]*)"
pg_url=${CARACAL_STACK_PG_URL:-postgres://postgres@127.0.0.1:5432}
pg_url=${pg_url%/}
redis_url=${CARACAL_STACK_REDIS_URL:-redis://127.0.0.1:6379/1}
ready_timeout=${CARACAL_STACK_READY_TIMEOUT:-120}
[[ $ready_timeout =~ ^[0-9]+$ ]] || fail "CARACAL_STACK_READY_TIMEOUT must be a number of seconds"

run_dir=$state/run
log_dir=$state/logs
secrets_file=$state/secrets.env
demo_file=$state/demo.env
ports_file=$run_dir/ports.env
local_env=$state/local.env

# The demo zone: what the seed creates and the printed request uses.
DEMO_SLUG=demo
DEMO_RESOURCE=resource://demo-echo
DEMO_SCOPE=echo:read
DEMO_LABEL=demo
DEMO_PATH=/hello
DEMO_HEADER=X-Demo-Api-Key
# The upstream "credential" the gateway injects: a fixed, public demo value, so that the
# echo can show it without showing a secret.
DEMO_UPSTREAM_KEY=demo-upstream-key-not-a-secret
DEMO_SESSION_TTL=86400

ROLES=(sts api coordinator gateway audit)
declare -A BASE_PORT=([sts]=8080 [api]=3000 [coordinator]=4000 [gateway]=8081 [audit]=9090 [echo]=8089)
declare -A PORT=()

ports_from_offset() {
  local name
  for name in "${!BASE_PORT[@]}"; do PORT[$name]=$((BASE_PORT[$name] + offset)); done
}

# The ports of the running stack (written at its start), else those of the offset.
load_ports() {
  ports_from_offset
  if [ -f "$ports_file" ]; then
    local name value
    while IFS='=' read -r name value; do
      [[ $name =~ ^PORT_([a-z]+)$ ]] && PORT[${BASH_REMATCH[1]}]=$value
    done <"$ports_file"
  fi
}

save_ports() {
  local name
  for name in "${!PORT[@]}"; do printf 'PORT_%s=%s\n' "$name" "${PORT[$name]}"; done >"$ports_file"
}

url_of() { printf 'http://127.0.0.1:%s' "${PORT[$1]}"; }

# The database number of the stack's Redis URL (0 when it names none).
redis_db_index() {
  if [[ $redis_url =~ ^rediss?://[^/]+/([0-9]+)$ ]]; then printf '%s' "${BASH_REMATCH[1]}"; else printf 0; fi
}

# --- small tools ---------------------------------------------------------------------------

need_tools() {
  local missing=() tool
  for tool in curl python3 psql redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  fail "missing tools: ${missing[*]} (Debian: apt-get install curl python3 postgresql-client redis-tools)"
}

# Reads KEY=VALUE lines of `file` into the array named by $2 (no shell evaluation).
read_env_lines() {
  local file=$1 line
  local -n into=$2
  [ -f "$file" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && into+=("$line")
  done <"$file"
}

# The value of KEY in an env file (empty when absent).
env_value() {
  local file=$1 key=$2 line
  [ -f "$file" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line == "$key="* ]]; then
      printf '%s' "${line#*=}"
      return 0
    fi
  done <"$file"
}

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# JSON helpers (python3 from the standard library; documents arrive on stdin so that a
# secret in them never shows in a process list).
json_get() { # PATH (dot-separated) < document
  python3 -c 'import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value[int(key)] if isinstance(value, list) else value.get(key)
    if value is None:
        sys.exit(1)
print(value if isinstance(value, str) else json.dumps(value))' "$1"
}
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# call TOKEN_VAR METHOD URL [JSON]: sets `status` and `body`. The bearer is read from the
# secrets file and handed to curl as a header file, never on a command line.
call() {
  local token_var=$1 method=$2 url=$3 data=${4-} token out
  token=$(env_value "$secrets_file" "$token_var")
  local args=(-sS -m 30 -X "$method" -w '\n%{http_code}')
  [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary @-)
  out=$(printf '%s' "$data" | curl "${args[@]}" -H @<(printf 'Authorization: Bearer %s\n' "$token") "$url" 2>&1) ||
    out=$'curl failed\n000'
  status=${out##*$'\n'}
  body=${out%$'\n'*}
}

expect() { # what, wanted status...
  local what=$1 code
  shift
  for code in "$@"; do [ "$status" = "$code" ] && return 0; done
  fail "$what answered $status: $body"
}

# --- processes -----------------------------------------------------------------------------

# The pid in run/<name>.pid when that process is alive and is the one we started.
live_pid() {
  local file=$run_dir/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  printf '%s' "$pid"
}

caracal_pid() { live_pid caracal ' all'; }
echo_pid() { live_pid echo 'echo-upstream.py'; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fails with one message naming every port of `names` that something already listens on.
check_ports_free() {
  local busy=() name
  for name in "$@"; do
    port_in_use "${PORT[$name]}" && busy+=("${PORT[$name]} ($name)")
  done
  [ ${#busy[@]} -eq 0 ] && return 0
  fail "port(s) in use: ${busy[*]}. Stop what listens there (or a stack started from another
       directory), or move this stack with CARACAL_STACK_PORT_OFFSET=<n>."
}

# Starts `cmd...` in its own session with stdout and stderr to logs/<name>.log, and records
# its pid in run/<name>.pid. `env_kind` is `role` (the roles' environment only) or `inherit`.
spawn() {
  local name=$1 env_kind=$2
  shift 2
  rm -f "$run_dir/$name.pid"
  (
    if [ "$env_kind" = role ]; then enter_role_env; fi
    # shellcheck disable=SC2016 # the inner shell expands them
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$run_dir/$name.pid" "$@"
  ) >>"$log_dir/$name.log" 2>&1 </dev/null &
  local waited=0
  until [ -s "$run_dir/$name.pid" ]; do
    sleep 0.1
    waited=$((waited + 1))
    [ $waited -lt 50 ] || fail "$name did not start"
  done
}

# Sends SIGTERM, waits up to `grace` seconds, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 grace=$3 waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ $waited -ge $((grace * 10)) ]; then
      say "$name did not stop within ${grace} s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  say "stopped $name (pid $pid)"
}

# --- up --------------------------------------------------------------------------------------

resolve_binary() {
  if [ -n "${CARACAL_BIN:-}" ]; then
    bin=$CARACAL_BIN
    case $bin in /*) ;; *) bin=$caller_dir/$bin ;; esac
    [ -x "$bin" ] || fail "CARACAL_BIN=$CARACAL_BIN is not an executable file"
  else
    command -v cargo >/dev/null 2>&1 ||
      fail "cargo not found: install rustup (see README, Requirements), or set CARACAL_BIN"
    say "building the release binary (cargo build --release; a no-op when it is current)"
    cargo build --release --locked --bin caracal
    bin=${CARGO_TARGET_DIR:-$repo/target}/release/caracal
  fi
}

db_exists() {
  [ "$(psql "$pg_url/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$db_name'")" = 1 ]
}

# Keys and bearer tokens, generated once, and the database they belong to.
ensure_keys_and_database() {
  local exists=0
  if db_exists; then exists=1; fi
  if [ ! -f "$secrets_file" ]; then
    [ "$exists" = 0 ] || fail "database $db_name exists but the keys it was migrated with are
       gone (no $secrets_file). Drop it with 'scripts/stack.sh down --purge', or point
       CARACAL_STACK_DB at another database."
    local tmp=$secrets_file.tmp
    {
      "$bin" keys generate
      printf 'CARACAL_ADMIN_TOKEN=%s\n' "$(random_hex)"
      printf 'CARACAL_COORDINATOR_TOKEN=%s\n' "$(random_hex)"
      printf 'CARACAL_INTERNAL_TOKEN=%s\n' "$(random_hex)"
    } >"$tmp"
    mv "$tmp" "$secrets_file"
    say "generated keys and tokens into $secrets_file"
  fi
  if [ "$exists" = 0 ]; then
    say "creating database $db_name"
    psql "$pg_url/postgres" -qc "CREATE DATABASE \"$db_name\""
  fi
}

# The environment of the roles: the stack's settings, the secrets, then local.env.
role_env() {
  local -n env_out=$1
  # shellcheck disable=SC2034 # a name reference to the caller's array
  env_out=(
    "PATH=$PATH"
    "HOME=${HOME:-/root}"
    "RUST_LOG=${RUST_LOG:-info}"
    "NO_COLOR=1"
    "CARACAL_MODE=dev"
    "CARACAL_INSTANCE_ID=local"
    "DATABASE_URL=$pg_url/$db_name"
    "CARACAL_MIGRATE_DATABASE_URL=$pg_url/$db_name"
    "REDIS_URL=$redis_url"
    "ISSUER_URL=$(url_of sts)"
    "CARACAL_STS_URL=$(url_of sts)"
    "CARACAL_STS_ADDR=127.0.0.1:${PORT[sts]}"
    "CARACAL_API_ADDR=127.0.0.1:${PORT[api]}"
    "CARACAL_COORDINATOR_ADDR=127.0.0.1:${PORT[coordinator]}"
    "CARACAL_GATEWAY_ADDR=127.0.0.1:${PORT[gateway]}"
    "CARACAL_AUDIT_ADDR=127.0.0.1:${PORT[audit]}"
    "AUDIT_REPLAY_DIR=$state/audit-replay"
  )
  read_env_lines "$secrets_file" env_out
  read_env_lines "$local_env" env_out
}

# Replaces this shell's environment with the roles': every inherited variable is unset, and
# the stack's are set by the `export` builtin, so that no key or token ever appears in a
# process's arguments. Call it in a subshell.
enter_role_env() {
  local vars=() name
  role_env vars
  for name in $(compgen -e); do unset "$name" 2>/dev/null || true; done
  export "${vars[@]}"
}

start_caracal() {
  mkdir -p "$state/audit-replay"
  say "migrating $db_name"
  (
    enter_role_env
    exec "$bin" migrate
  ) >>"$log_dir/migrate.log" 2>&1 || fail "caracal migrate failed; see $log_dir/migrate.log"
  say "starting caracal all (sts :${PORT[sts]}, api :${PORT[api]}, coordinator :${PORT[coordinator]}, gateway :${PORT[gateway]}, audit :${PORT[audit]})"
  spawn caracal role "$bin" all
}

start_echo() {
  say "starting the echo upstream on 127.0.0.1:${PORT[echo]}"
  spawn echo inherit python3 "$repo/scripts/echo-upstream.py" --host 127.0.0.1 --port "${PORT[echo]}"
}

wait_ready() {
  local deadline=$((SECONDS + ready_timeout)) role pending
  while :; do
    pending=()
    for role in "${ROLES[@]}"; do
      curl -fsS -m 3 -o /dev/null "$(url_of "$role")/ready" 2>/dev/null || pending+=("$role")
    done
    curl -fsS -m 3 -o /dev/null "$(url_of echo)/ready" 2>/dev/null || pending+=(echo)
    [ ${#pending[@]} -eq 0 ] && return 0
    if ! caracal_pid >/dev/null; then
      tail -n 20 "$log_dir/caracal.log" >&2 || true
      fail "caracal stopped during start (above: the end of $log_dir/caracal.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      for role in "${pending[@]}"; do
        printf '  %s: %s\n' "$role" "$(curl -sS -m 3 "$(url_of "$role")/ready" 2>&1 || true)" >&2
      done
      fail "not ready after ${ready_timeout} s: ${pending[*]} (logs in $log_dir; 'scripts/stack.sh down' stops what started)"
    fi
    sleep 0.5
  done
}

# --- the demo zone ---------------------------------------------------------------------------

# demo.env gets a line per value a key ever had; the last one counts.
demo_get() {
  local value=
  if [ -f "$demo_file" ]; then
    value=$(grep -E "^$1=" "$demo_file" | tail -n 1 || true)
  fi
  printf '%s' "${value#*=}"
}

demo_set() { printf '%s=%s\n' "$1" "$2" >>"$demo_file"; }

grants_document() { # application id
  cat <<EOF
package caracal.authz
import rego.v1
# caracal:data-document

# The demo application, under a readable key.
app_ids := {"demo-agent": "$1"}

# It owns the echo resource; sessions labelled "$DEMO_LABEL" may hold $DEMO_SCOPE on it.
grants := {"$DEMO_RESOURCE": {"application": "demo-agent", "roles": {"$DEMO_LABEL": ["$DEMO_SCOPE"]}}}
EOF
}

# Creates what demo.env does not record yet, through the admin API; each id is recorded as
# soon as it exists, so an interrupted seed resumes.
seed_demo() {
  local api zone app
  api=$(url_of api)/v1
  zone=$(demo_get ZONE_ID)
  if [ -n "$zone" ]; then
    call CARACAL_ADMIN_TOKEN GET "$api/zones/$zone"
    if [ "$status" = 404 ]; then
      say "the demo zone recorded in demo.env is gone from the database; seeding again"
      : >"$demo_file"
      zone=
    else
      expect "reading the demo zone" 200
    fi
  fi
  if [ -z "$zone" ]; then
    say "seeding the demo zone through the admin API"
    call CARACAL_ADMIN_TOKEN POST "$api/zones" '{"name":"Demo","slug":"'"$DEMO_SLUG"'"}'
    [ "$status" = 409 ] && fail "a zone with slug $DEMO_SLUG exists but $demo_file does not
       record it; run 'scripts/stack.sh down --purge' to start over"
    expect "creating the zone" 201
    zone=$(json_get id <<<"$body")
    demo_set ZONE_ID "$zone"
  fi
  app=$(demo_get APP_ID)
  if [ -z "$app" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/applications" '{"name":"demo-agent","traits":[]}'
    expect "creating the application" 201
    app=$(json_get id <<<"$body")
    local secret
    secret=$(json_get client_secret <<<"$body")
    [[ $secret =~ ^[A-Za-z0-9_-]+$ ]] || fail "the client secret has unexpected characters"
    demo_set CLIENT_SECRET "$secret"
    demo_set APP_ID "$app"
  fi
  if [ -z "$(demo_get PROVIDER_ID)" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/providers" '{"name":"demo-echo-key","kind":"api_key","config_json":{"auth_location":"header","header_name":"'"$DEMO_HEADER"'","api_key":"'"$DEMO_UPSTREAM_KEY"'"}}'
    expect "creating the provider" 201
    demo_set PROVIDER_ID "$(json_get id <<<"$body")"
  fi
  local upstream
  upstream=$(url_of echo)
  if [ -z "$(demo_get RESOURCE_ID)" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/resources" '{"name":"demo-echo","identifier":"'"$DEMO_RESOURCE"'","upstream_url":"'"$upstream"'","scopes":["'"$DEMO_SCOPE"'"],"credential_provider_id":"'"$(demo_get PROVIDER_ID)"'","operations":[{"method":"GET","path":"'"$DEMO_PATH"'","scope":"'"$DEMO_SCOPE"'"},{"method":"POST","path":"'"$DEMO_PATH"'","scope":"'"$DEMO_SCOPE"'"}]}'
    expect "creating the resource" 201
    demo_set RESOURCE_ID "$(json_get id <<<"$body")"
    demo_set UPSTREAM_URL "$upstream"
  elif [ "$(demo_get UPSTREAM_URL)" != "$upstream" ]; then
    # The stack moved (another port offset): point the resource at the echo's new port.
    call CARACAL_ADMIN_TOKEN PATCH "$api/zones/$zone/resources/$(demo_get RESOURCE_ID)" '{"upstream_url":"'"$upstream"'"}'
    expect "moving the resource's upstream" 200
    demo_set UPSTREAM_URL "$upstream"
  fi
  if [ -z "$(demo_get POLICY_VERSION_ID)" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/policies" '{"name":"demo-grants","content":'"$(json_str "$(grants_document "$app")")"'}'
    expect "creating the grants policy" 201
    demo_set POLICY_VERSION_ID "$(json_get version_id <<<"$body")"
  fi
  if [ -z "$(demo_get POLICY_SET_ID)" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/policy-sets" '{"name":"demo"}'
    expect "creating the policy set" 201
    demo_set POLICY_SET_ID "$(json_get id <<<"$body")"
  fi
  local set
  set=$(demo_get POLICY_SET_ID)
  if [ -z "$(demo_get POLICY_SET_VERSION_ID)" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/policy-sets/$set/versions" '{"manifest":[{"policy_version_id":"'"$(demo_get POLICY_VERSION_ID)"'"}]}'
    expect "creating the policy set version" 201
    demo_set POLICY_SET_VERSION_ID "$(json_get version_id <<<"$body")"
  fi
  if [ -z "$(demo_get ACTIVATED)" ]; then
    call CARACAL_ADMIN_TOKEN POST "$api/zones/$zone/policy-sets/$set/activate" '{"version_id":"'"$(demo_get POLICY_SET_VERSION_ID)"'"}'
    expect "activating the policy set" 202
    demo_set ACTIVATED 1
  fi
  wait_policy_loaded "$api/zones/$zone/policy-sets/$set/activation-status?version_id=$(demo_get POLICY_SET_VERSION_ID)"
}

wait_policy_loaded() {
  local deadline=$((SECONDS + 60)) state_now=
  while :; do
    call CARACAL_ADMIN_TOKEN GET "$1"
    expect "reading the activation status" 200
    state_now=$(json_get propagation_status <<<"$body")
    [ "$state_now" = loaded ] && return 0
    [ "$state_now" = failed ] && fail "the demo policy set failed to load: $body"
    [ $SECONDS -lt $deadline ] || fail "the demo policy set is still $state_now after 60 s: $body"
    sleep 0.5
  done
}

# A bootstrap (use=session) mandate of the demo application, on stdout.
bootstrap_mandate() {
  local form out
  form="grant_type=urn:ietf:params:oauth:grant-type:token-exchange&zone_id=$(demo_get ZONE_ID)&application_id=$(demo_get APP_ID)&client_secret=$(demo_get CLIENT_SECRET)&scope=agent:lifecycle&resource=$DEMO_RESOURCE"
  out=$(printf '%s' "$form" | curl -sS -m 30 -w '\n%{http_code}' -H 'Content-Type: application/x-www-form-urlencoded' \
    --data-binary @- "$(url_of sts)/oauth/2/token" 2>&1) || out=$'curl failed\n000'
  status=${out##*$'\n'}
  body=${out%$'\n'*}
  expect "the bootstrap token exchange" 200
  json_get access_token <<<"$body"
}

# The agent sessions and the delegation edge the printed request mints under: a source
# session delegating $DEMO_SCOPE on the echo resource to a target session labelled
# $DEMO_LABEL. Task sessions live a day at most; this makes new ones when those recorded
# have ended or end within ten minutes.
ensure_demo_sessions() {
  local coordinator zone target expires
  coordinator=$(url_of coordinator)
  zone=$(demo_get ZONE_ID)
  target=$(demo_get TARGET_SESSION_ID)
  expires=$(demo_get SESSIONS_EXPIRE_AT)
  if [ -n "$target" ] && [ -n "$expires" ] && [ "$expires" -gt $(($(date +%s) + 600)) ]; then
    call CARACAL_COORDINATOR_TOKEN GET "$coordinator/zones/$zone/agents/$target"
    if [ "$status" = 200 ] && [ "$(json_get status <<<"$body")" = active ]; then
      return 0
    fi
  fi
  say "starting the demo agent sessions and their delegation (Coordinator)"
  sessions_started=1
  local mandate app source edge started
  app=$(demo_get APP_ID)
  mandate=$(bootstrap_mandate)
  started=$(date +%s)
  local session_body='{"application_id":"'"$app"'","lifecycle":"task","ttl_seconds":'"$DEMO_SESSION_TTL"',"labels":["'"$DEMO_LABEL"'"]}'
  call_with_mandate "$mandate" POST "$coordinator/zones/$zone/agents" "$session_body"
  expect "starting the source session" 201
  source=$(json_get id <<<"$body")
  call_with_mandate "$mandate" POST "$coordinator/zones/$zone/agents" "$session_body"
  expect "starting the target session" 201
  target=$(json_get id <<<"$body")
  call_with_mandate "$mandate" POST "$coordinator/zones/$zone/delegations" '{"issuer_application_id":"'"$app"'","receiver_application_id":"'"$app"'","source_session_id":"'"$source"'","target_session_id":"'"$target"'","scopes":["'"$DEMO_SCOPE"'"],"resource_id":"'"$(demo_get RESOURCE_ID)"'","ttl_seconds":'"$DEMO_SESSION_TTL"'}'
  expect "creating the delegation" 201
  edge=$(json_get id <<<"$body")
  demo_set SOURCE_SESSION_ID "$source"
  demo_set TARGET_SESSION_ID "$target"
  demo_set DELEGATION_EDGE_ID "$edge"
  demo_set SESSIONS_EXPIRE_AT $((started + DEMO_SESSION_TTL))
}

# call with a mandate held in a variable (the bootstrap mandate is never written to disk).
call_with_mandate() {
  local mandate=$1 method=$2 url=$3 data=${4-} out
  local args=(-sS -m 30 -X "$method" -w '\n%{http_code}')
  [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary @-)
  out=$(printf '%s' "$data" | curl "${args[@]}" -H @<(printf 'Authorization: Bearer %s\n' "$mandate") "$url" 2>&1) ||
    out=$'curl failed\n000'
  status=${out##*$'\n'}
  body=${out%$'\n'*}
}

exchange_command() {
  cat <<EOF
MANDATE=\$(curl -sS $(url_of sts)/oauth/2/token \\
  -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
  -d zone_id=$(demo_get ZONE_ID) \\
  -d application_id=$(demo_get APP_ID) \\
  -d client_secret=$(demo_get CLIENT_SECRET) \\
  -d scope=$DEMO_SCOPE -d resource=$DEMO_RESOURCE \\
  -d agent_session_id=$(demo_get TARGET_SESSION_ID) \\
  -d delegation_edge_id=$(demo_get DELEGATION_EDGE_ID) \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
EOF
}

gateway_command() {
  cat <<EOF
curl -sS $(url_of gateway)$DEMO_PATH \\
  -H "Authorization: Bearer \$MANDATE" \\
  -H "X-Caracal-Resource: $DEMO_RESOURCE"
EOF
}

print_request() {
  cat <<EOF

The stack is up. Try a governed request (or run: scripts/stack.sh try).
The client secret below is a DEMO credential of the local zone "$DEMO_SLUG", nothing else.

# 1. Token exchange at the STS: a single-use gateway mandate for $DEMO_RESOURCE, minted
#    under the demo agent session and its delegation.
----- 8< -----
$(exchange_command)

# 2. The call through the gateway: it checks the mandate, injects the upstream's API key
#    ($DEMO_HEADER) and forwards to the echo upstream, which shows what it received.
$(gateway_command)
----- 8< -----

Admin API $(url_of api)/v1 (bearer: CARACAL_ADMIN_TOKEN in $secrets_file),
Coordinator $(url_of coordinator), audit $(url_of audit).
Logs: $log_dir/caracal.log (all roles), $log_dir/echo.log. Stop: make down (PURGE=1 to drop everything).
EOF
}

cmd_up() {
  need_tools
  mkdir -p "$state"
  chmod 0700 "$state"
  umask 077
  mkdir -p "$run_dir" "$log_dir"
  if [ "${CARACAL_STACK_SKIP_SERVICES:-0}" != 1 ]; then
    "$repo/scripts/services.sh"
  fi
  if [ "$(redis_db_index)" = 0 ]; then
    say "note: Redis database 0 is the tests' database; a live stack there disturbs them"
  fi
  local running_caracal running_echo
  running_caracal=$(caracal_pid || true)
  running_echo=$(echo_pid || true)
  if [ -n "$running_caracal" ] || [ -n "$running_echo" ]; then
    load_ports
    say "already running (caracal: ${running_caracal:-stopped}, echo: ${running_echo:-stopped}); starting what is not"
  else
    ports_from_offset
  fi
  local wanted=()
  [ -n "$running_caracal" ] || wanted+=("${ROLES[@]}")
  [ -n "$running_echo" ] || wanted+=(echo)
  [ ${#wanted[@]} -eq 0 ] || check_ports_free "${wanted[@]}"
  if [ -z "$running_caracal" ]; then
    resolve_binary
    ensure_keys_and_database
  fi
  save_ports
  [ -n "$running_echo" ] || start_echo
  [ -n "$running_caracal" ] || start_caracal
  wait_ready
  say "every role is ready"
  seed_demo
  ensure_demo_sessions
  print_request
}

# --- try, status, down -----------------------------------------------------------------------

cmd_try() {
  [ -n "$(caracal_pid || true)" ] || fail "the stack is not running (make up)"
  [ -f "$demo_file" ] || fail "no demo zone yet (make up)"
  load_ports
  sessions_started=0
  ensure_demo_sessions
  if [ "$sessions_started" = 1 ]; then
    say "   (the earlier ones had ended: 'scripts/stack.sh up' prints the request with the new ids)"
  fi
  local form out mandate
  say "1. token exchange at the STS ($(url_of sts)/oauth/2/token)"
  form="grant_type=urn:ietf:params:oauth:grant-type:token-exchange&zone_id=$(demo_get ZONE_ID)&application_id=$(demo_get APP_ID)&client_secret=$(demo_get CLIENT_SECRET)&scope=$DEMO_SCOPE&resource=$DEMO_RESOURCE&agent_session_id=$(demo_get TARGET_SESSION_ID)&delegation_edge_id=$(demo_get DELEGATION_EDGE_ID)"
  out=$(printf '%s' "$form" | curl -sS -m 30 -w '\n%{http_code}' -H 'Content-Type: application/x-www-form-urlencoded' \
    --data-binary @- "$(url_of sts)/oauth/2/token" 2>&1) || out=$'curl failed\n000'
  status=${out##*$'\n'}
  body=${out%$'\n'*}
  expect "the token exchange" 200
  mandate=$(json_get access_token <<<"$body")
  say "   200: a use=gateway mandate ($(json_get expires_in <<<"$body") s, scope $(json_get scope <<<"$body"))"
  say "2. GET $(url_of gateway)$DEMO_PATH through the gateway (X-Caracal-Resource: $DEMO_RESOURCE)"
  out=$(curl -sS -m 30 -w '\n%{http_code}' -H @<(printf 'Authorization: Bearer %s\n' "$mandate") \
    -H "X-Caracal-Resource: $DEMO_RESOURCE" "$(url_of gateway)$DEMO_PATH" 2>&1) || out=$'curl failed\n000'
  status=${out##*$'\n'}
  body=${out%$'\n'*}
  say "   $status; the echo upstream received:"
  printf '%s\n' "$body"
  [[ $status == 2?? ]] || fail "the gateway answered $status"
  local request_id
  request_id=$(json_get headers.x-request-id <<<"$body") || return 0
  say "3. the audit ledger's record of request $request_id (admin API, /audit/by-request):"
  show_audit "$request_id"
}

# Prints event type and decision of the audit events of `request_id` once the ledger has
# stored the gateway's (they arrive through the audit stream within a moment).
show_audit() {
  local url deadline=$((SECONDS + 15)) lines
  url=$(url_of api)/v1/zones/$(demo_get ZONE_ID)/audit/by-request/$1
  while :; do
    call CARACAL_ADMIN_TOKEN GET "$url"
    if [ "$status" = 200 ]; then
      lines=$(python3 -c 'import json, sys
for event in json.load(sys.stdin):
    names = [p.get("policy", "") for p in event.get("determining_policies_json") or []]
    print("   %s: %s (%s)" % (event.get("event_type"), event.get("decision"), ", ".join(names) or "no policy"))' <<<"$body") || lines=
      if grep -q gateway_resource_request <<<"$lines"; then
        printf '%s\n' "$lines"
        return 0
      fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      say "   not in the ledger after 15 s (status $status); see $log_dir/caracal.log"
      return 0
    fi
    sleep 0.5
  done
}

running_or_stopped() { if [ -n "$1" ]; then printf 'running, pid %s' "$1"; else printf 'stopped'; fi; }

cmd_status() {
  load_ports
  local pid role answer
  pid=$(caracal_pid || true)
  printf 'caracal all: %s\n' "$(running_or_stopped "$pid")"
  for role in "${ROLES[@]}"; do
    answer=$(curl -sS -m 3 "$(url_of "$role")/ready" 2>/dev/null) || answer="no answer"
    printf '  %-12s %s  /ready %s\n' "$role" "$(url_of "$role")" "$answer"
  done
  pid=$(echo_pid || true)
  printf 'echo upstream: %s (%s)\n' "$(running_or_stopped "$pid")" "$(url_of echo)"
  printf 'database: %s (%s)\n' "$db_name" "$(db_exists 2>/dev/null && echo present || echo absent)"
  printf 'redis: %s\nstate: %s\nlogs: %s\n' "$redis_url" "$state" "$log_dir"
  [ -n "$(caracal_pid || true)" ]
}

cmd_down() {
  local purge=0 arg pid
  for arg in "$@"; do
    case $arg in
      --purge) purge=1 ;;
      *) fail "unknown option $arg (down [--purge])" ;;
    esac
  done
  # The gateway lets open connections finish for up to 30 s; the ledger flushes its batch.
  local stopped=0
  if pid=$(caracal_pid); then stop_pid caracal "$pid" 45 && stopped=1; fi
  if pid=$(echo_pid); then stop_pid echo-upstream "$pid" 10 && stopped=1; fi
  [ "$stopped" = 1 ] || say "nothing of the stack was running"
  rm -f "$run_dir"/*.pid "$ports_file"
  if [ "$purge" = 0 ]; then
    say "Postgres and Redis keep running, and so do the database and keys ('down --purge' drops them)"
    return 0
  fi
  need_tools
  if db_exists; then
    psql "$pg_url/postgres" -qc "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)"
    say "dropped database $db_name"
  fi
  local db_index
  db_index=$(redis_db_index)
  if [ "$db_index" != 0 ]; then
    redis-cli -u "$redis_url" FLUSHDB >/dev/null && say "emptied Redis database $db_index ($redis_url)"
  else
    say "left Redis ($redis_url) as it is: database 0 is shared"
  fi
  if [ -d "$state" ]; then
    # Only a directory this script made (it holds secrets.env or run/) is deleted.
    if [ -f "$secrets_file" ] || [ -d "$run_dir" ]; then
      rm -rf "$state"
      say "deleted $state"
    else
      say "left $state: it does not look like a stack state directory"
    fi
  fi
}

case ${1:-} in
  up) cmd_up ;;
  try) cmd_try ;;
  status) cmd_status ;;
  down)
    shift
    cmd_down "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
