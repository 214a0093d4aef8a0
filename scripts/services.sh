#!/usr/bin/env bash
# Make PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) available for the tests.
# Idempotent: uses running servers, starts installed-but-stopped ones, installs missing ones
# with apt-get (Debian). Safe to run before every test run.
set -euo pipefail

log() { printf 'services: %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not become ready within 30 s" >&2
  return 1
}

postgres_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }

ensure_postgres() {
  if ! command -v pg_isready >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  if postgres_ready; then
    log "PostgreSQL is running"
  else
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL postgres_ready
  fi
  # Tests log in as postgres and as the caracal_* roles over loopback without passwords.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
    local version hba
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    log "allowing loopback trust authentication for the test cluster in $hba"
    sed -i '1i host all all 127.0.0.1/32 trust\nlocal all all trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    wait_for "PostgreSQL login" psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1'
  fi
}

redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis"
    apt_install redis-server redis-tools
  fi
  if redis_ready; then
    log "Redis is running"
  else
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis_ready
  fi
}

ensure_postgres
ensure_redis
