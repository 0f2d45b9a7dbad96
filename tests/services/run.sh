#!/usr/bin/env bash
# Run a command (the test suite) with the real services the tests need, then stop them.
#
#   tests/services/run.sh .venv/bin/python -m pytest
#
# PostgreSQL: started here and passed as HPCQUEUE_TEST_PG_URL (unless that is already set). Where it cannot
# be started (no root, no package) the PostgreSQL tests skip with that reason, except under CI=true where
# they fail: CI must test against the real server.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

started_pg=""
cleanup() {
  [ -n "$started_pg" ] && "$here/postgres.sh" stop
}
trap cleanup EXIT INT TERM

if [ -z "${HPCQUEUE_TEST_PG_URL:-}" ]; then
  if url=$("$here/postgres.sh" start); then
    export HPCQUEUE_TEST_PG_URL="$url"
    started_pg=1
  else
    echo "run.sh: PostgreSQL could not be started; its tests will not run against a real server" >&2
  fi
fi

"$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run.sh: pytest collected no tests: that is a failure" >&2
  rc=1
fi
exit "$rc"
