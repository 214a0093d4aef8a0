#!/usr/bin/env bash
# Drop databases left behind by interrupted test runs (every test database is named
# caracal_test_*; a finished test drops its own). Touches no other database.
set -euo pipefail
admin_url=${CARACAL_TEST_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
psql "$admin_url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'caracal\_test\_%'" |
  while read -r db; do
    [ -n "$db" ] && psql "$admin_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
  done
