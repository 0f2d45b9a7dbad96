#!/usr/bin/env bash
# Start or stop a private PostgreSQL server for the test suite.
#
#   tests/services/postgres.sh start   # prints the SQLAlchemy URL on stdout
#   tests/services/postgres.sh stop
#
# Installs Debian's postgresql package when it is missing and we are root. The server runs as the
# 'postgres' user from a throw-away data directory, listens on 127.0.0.1 only (trusted) and on a socket in
# that directory (peer authentication when started as root, else trusted), and is stopped (and its data
# removed) by `stop`. It never touches a system cluster.
set -euo pipefail

PGDIR=${HPCQUEUE_TEST_PG_DIR:-/tmp/hpcqueue-test-pg}
PGPORT=${HPCQUEUE_TEST_PG_PORT:-15432}
DB=hpcqueue_test

log() { echo "postgres.sh: $*" >&2; }

pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_if_missing() {
  if pg_bindir >/dev/null; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    log "PostgreSQL is not installed and we are not root: install Debian's 'postgresql' package"
    return 1
  fi
  log "installing Debian package postgresql"
  # Keep the package's own service from starting with its stock config while apt runs.
  local created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
  # A stock cluster created by the package may have been started on 5432: stop it, we use our own.
  command -v pg_ctlcluster >/dev/null && for c in /etc/postgresql/*/main; do
    [ -d "$c" ] && pg_ctlcluster "$(basename "$(dirname "$c")")" main stop >/dev/null 2>&1 || true
  done
  return 0
}

start() {
  install_if_missing
  local bin; bin=$(pg_bindir)
  if [ -f "$PGDIR/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
    log "already running on port $PGPORT"
  else
    rm -rf "$PGDIR"
    mkdir -p "$PGDIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDIR"
    # TCP from 127.0.0.1 is trusted (the suite's URL). As root, the socket uses peer authentication, as a
    # site's would: a Unix user connects as the role of its own name only (tests/ledger/test_access.py).
    local auth_local=trust
    [ "$(id -u)" = 0 ] && auth_local=peer
    as_pg "$bin/initdb" -D "$PGDIR/data" --auth-host=trust --auth-local="$auth_local" --username=postgres \
      --encoding=UTF8 >/dev/null
    as_pg "$bin/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w \
      -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDIR -c fsync=off" start >/dev/null
    as_pg "$bin/psql" -h "$PGDIR" -p "$PGPORT" -U postgres -qc "CREATE DATABASE $DB" >/dev/null
    log "started on 127.0.0.1:$PGPORT (data in $PGDIR)"
  fi
  echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/$DB"
}

stop() {
  local bin; bin=$(pg_bindir) || return 0
  if [ -d "$PGDIR/data" ]; then
    as_pg "$bin/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
    log "stopped"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
