#!/usr/bin/env bash
# The one-command stack (scripts/stack.sh) end to end, as a fresh user runs it:
#
#   1. `up` with the debug binary, on ports moved by an offset, a database, a Redis database
#      and a state directory of its own; the state directory and its files are private;
#   2. the request `up` printed, copied and pasted into bash, reaches the echo upstream;
#   3. `try` answers 2xx with the echo of the injected request (the upstream's API key
#      injected by the gateway, the mandate not forwarded) and the call's audit event;
#   4. `up` again changes nothing and starts nothing; a second stack on the same ports
#      stops with one error naming them;
#   5. `down` stops every process and keeps the database; `up` brings the same zone back;
#   6. `down --purge` leaves no process, no database, no state directory.
#
#   tests/stack/run.sh
#
# Needs Postgres and Redis (make services). CARACAL_BIN (default target/debug/caracal, built
# here), CARACAL_STACK_PORT_OFFSET (default 20000) and CARACAL_STACK_REDIS_URL (default
# database 2, which this test empties) may be overridden.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

fail() {
  printf 'stack test: FAIL: %s\n' "$*" >&2
  exit 1
}
step() { printf '\nstack test: %s\n' "$*"; }

if [ -z "${CARACAL_BIN:-}" ]; then
  cargo build --locked --bin caracal
  CARACAL_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/caracal
fi
export CARACAL_BIN
export CARACAL_STACK_PORT_OFFSET=${CARACAL_STACK_PORT_OFFSET:-20000}
export CARACAL_STACK_REDIS_URL=${CARACAL_STACK_REDIS_URL:-redis://127.0.0.1:6379/2}
# caracal_test_* databases are dropped by scripts/drop-test-dbs.sh if a run is interrupted.
export CARACAL_STACK_DB=caracal_test_stack_$$
work=$(mktemp -d)
export CARACAL_STACK_DIR=$work/state
pg_admin=postgres://postgres@127.0.0.1:5432/postgres
stack=$repo/scripts/stack.sh
ports=(8080 3000 4000 8081 9090 8089)

cleanup() {
  "$stack" down --purge >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

db_present() {
  [ "$(psql "$pg_admin" -Atc "SELECT count(*) FROM pg_database WHERE datname = '$CARACAL_STACK_DB'")" = 1 ]
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$(($1 + CARACAL_STACK_PORT_OFFSET))") 2>/dev/null; }
pids() { cat "$CARACAL_STACK_DIR"/run/*.pid 2>/dev/null || true; }
mode() { stat -c %a "$1"; }

# The echo document in $1 shows the request the gateway injected.
check_echo() {
  python3 - "$1" <<'EOF' || fail "the echo does not show the governed request: $(cat "$1")"
import json, sys
echo = json.load(open(sys.argv[1]))
headers = echo["headers"]
assert echo["method"] == "GET" and echo["path"] == "/hello", echo
assert headers.get("x-demo-api-key") == "demo-upstream-key-not-a-secret", "no injected API key"
assert "authorization" not in headers, "the mandate reached the upstream"
assert "x-caracal-resource" not in headers, "a routing header reached the upstream"
assert headers.get("x-request-id"), "no gateway request id"
EOF
}

redis-cli -u "$CARACAL_STACK_REDIS_URL" FLUSHDB >/dev/null

step "1. up (ports +$CARACAL_STACK_PORT_OFFSET, database $CARACAL_STACK_DB)"
"$stack" up | tee "$work/up.log"
[ "$(mode "$CARACAL_STACK_DIR")" = 700 ] || fail "the state directory is $(mode "$CARACAL_STACK_DIR"), not 700"
for f in secrets.env demo.env; do
  [ "$(mode "$CARACAL_STACK_DIR/$f")" = 600 ] || fail "$f is $(mode "$CARACAL_STACK_DIR/$f"), not 600"
done
for key in ZONE_KEK AUDIT_HMAC_KEY STREAMS_HMAC_KEY CARACAL_ADMIN_TOKEN; do
  value=$(grep "^$key=" "$CARACAL_STACK_DIR/secrets.env" | cut -d= -f2-)
  [ -n "$value" ] || fail "secrets.env has no $key"
  if grep -qFf <(printf '%s\n' "$value") "$work/up.log" "$CARACAL_STACK_DIR"/logs/*.log; then
    fail "$key appears in the output or the logs"
  fi
done
for port in "${ports[@]}"; do listening "$port" || fail "nothing listens on $port + offset"; done
first_pids=$(pids)

step "2. the printed request, pasted into bash"
sed -n '/^----- 8< -----$/,/^----- 8< -----$/p' "$work/up.log" | sed '1d;$d' >"$work/request.sh"
if ! grep -q 'oauth/2/token' "$work/request.sh" || ! grep -q 'X-Caracal-Resource' "$work/request.sh"; then
  fail "up printed no request: $(cat "$work/up.log")"
fi
bash -euo pipefail "$work/request.sh" >"$work/pasted.json" || fail "the printed request failed"
check_echo "$work/pasted.json"

step "3. try"
"$stack" try | tee "$work/try.log"
grep -q '^stack:    200; the echo upstream received:' "$work/try.log" || fail "try did not answer 200"
sed -n '/^{/,/^}/p' "$work/try.log" >"$work/try.json"
check_echo "$work/try.json"
grep -q 'gateway_resource_request: allow' "$work/try.log" || fail "try showed no audit event of the call"

step "4. up again, and a second stack on the same ports"
"$stack" up >"$work/up2.log"
grep -q 'already running' "$work/up2.log" || fail "a second up did not notice the running stack"
[ "$(pids)" = "$first_pids" ] || fail "a second up restarted processes"
if CARACAL_STACK_DIR=$work/other CARACAL_STACK_DB=caracal_test_stack_other_$$ \
  "$stack" up >"$work/clash.log" 2>&1; then
  fail "a second stack on the same ports started"
fi
grep -q 'port(s) in use: 8080' <(sed "s/$((8080 + CARACAL_STACK_PORT_OFFSET))/8080/" "$work/clash.log") ||
  fail "the clash was not reported as ports in use: $(cat "$work/clash.log")"
PGOPTIONS='--client-min-messages=warning' psql "$pg_admin" -qc "DROP DATABASE IF EXISTS caracal_test_stack_other_$$"
"$stack" status >/dev/null || fail "status says the stack is not running"

step "5. down keeps the database; up brings the same zone back"
zone=$(grep '^ZONE_ID=' "$CARACAL_STACK_DIR/demo.env" | tail -n 1)
"$stack" down
for pid in $first_pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "process $pid still runs after down"; fi
done
db_present || fail "down dropped the database"
"$stack" up >"$work/up3.log"
[ "$(grep '^ZONE_ID=' "$CARACAL_STACK_DIR/demo.env" | tail -n 1)" = "$zone" ] || fail "the demo zone changed"
"$stack" try >/dev/null || fail "try failed after a restart"
last_pids=$(pids)

step "6. down --purge"
"$stack" down --purge
for pid in $last_pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "process $pid still runs after down --purge"; fi
done
for port in "${ports[@]}"; do
  if listening "$port"; then fail "something still listens on $port + offset"; fi
done
if db_present; then fail "the database survived down --purge"; fi
[ ! -e "$CARACAL_STACK_DIR" ] || fail "the state directory survived down --purge"
[ "$(redis-cli -u "$CARACAL_STACK_REDIS_URL" DBSIZE)" = 0 ] || fail "the stack's Redis database is not empty"

printf '\nstack test: passed\n'
