#!/usr/bin/env bash
# The audit ledger's fault run (issue 8): while producers emit, kill -9 the ledger, restart
# Redis, stop Redis (producers spill to replay files), restart Postgres; then check that
# events produced = rows in Postgres = acknowledged, the chain verifies and there are no
# alerts. bench/src/bin/audit_fault.rs does the work; see its header for the details.
#
#   scripts/audit-fault-run.sh [--short] [--release] [audit_fault options...]
#
#   --short    the short form (about a minute; the test command runs it): prints the report
#   --release  build and run release binaries (the full form's default rate is meant for it)
#
# Without --short it runs the full form and writes bench/results/audit-fault-<date>.md.
# Other options go to audit_fault (--rate, --seconds-per-phase, --redis-stop-seconds,
# --producers, --zones, --drain-timeout-seconds, --keep, --out).
#
# It starts its own Postgres cluster (initdb/pg_ctl, as the postgres user when run as root)
# and its own Redis (redis-server) on free ports in a temporary directory, and removes them
# afterwards; the machine's shared Postgres and Redis are never touched.
set -euo pipefail

cd "$(dirname "$0")/.."

short=0
profile=debug
build_flags=()
pass=()
for arg in "$@"; do
  case "$arg" in
    --short) short=1; pass+=(--short) ;;
    --release) profile=release; build_flags+=(--release) ;;
    *) pass+=("$arg") ;;
  esac
done

for tool in redis-server; do
  command -v "$tool" >/dev/null 2>&1 || { echo "audit-fault-run: $tool is not installed (run scripts/services.sh)" >&2; exit 2; }
done

cargo build --locked ${build_flags[@]+"${build_flags[@]}"} -p caracal -p bench --bin caracal --bin audit_fault

bin="${CARGO_TARGET_DIR:-target}/$profile"
if [ "$short" = 1 ]; then
  exec "$bin/audit_fault" --caracal "$bin/caracal" ${pass[@]+"${pass[@]}"}
fi
out="bench/results/audit-fault-$(date -u +%Y-%m-%d).md"
"$bin/audit_fault" --caracal "$bin/caracal" ${pass[@]+"${pass[@]}"} --out "$out"
echo "audit-fault-run: report written to $out"
