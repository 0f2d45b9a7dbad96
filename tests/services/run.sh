#!/usr/bin/env bash
# Run a command (the test suite) with the real services the tests need, then stop them.
#
#   tests/services/run.sh .venv/bin/python -m pytest
#
# PostgreSQL: started here and passed as HPCQUEUE_TEST_PG_URL (unless that is already set). Where it cannot
# be started (no root, no package) the PostgreSQL tests skip with that reason, except under CI=true where
# they fail: CI must test against the real server.
#
# Slurm: the local cluster (slurm/local-cluster.sh) is started here, SLURM_CONF and HPCQUEUE_TEST_SLURM=1 are
# exported, and the cluster is stopped afterwards if this script started it (unless HPCQUEUE_TEST_SLURM is
# already set: then the caller decides). Where it cannot start, the tests marked `slurm` skip, except under
# CI=true where they fail.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

started_pg=""
started_slurm=""
cleanup() {
  [ -n "$started_pg" ] && "$here/postgres.sh" stop
  started_pg=""
  if [ -n "$started_slurm" ]; then
    started_slurm=""
    local t0
    t0=$(date +%s.%N)
    "$here/slurm.sh" stop >/dev/null && echo "run.sh: local Slurm cluster stopped in $(since "$t0") s" >&2
  fi
  return 0
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

# Chromium for the report's browser tests (tests/report/): installed when missing and we are root.
"$here/chromium.sh" install || echo "run.sh: no chromium: the browser tests skip, or fail under CI=true" >&2

if [ -z "${HPCQUEUE_TEST_SLURM:-}" ]; then
  slurm_ok=""
  t0=$(date +%s.%N)
  if "$here/slurm.sh" status >/dev/null 2>&1; then
    # Already running (started by hand): use it and leave it running.
    echo "run.sh: using the local Slurm cluster that is already running" >&2
    slurm_ok=1
  else
    started_slurm=1  # also when start fails half-way: stop cleans up whatever it did start
    if "$here/slurm.sh" start >&2; then
      slurm_ok=1
      echo "run.sh: local Slurm cluster started in $(since "$t0") s" >&2
    else
      echo "run.sh: the local Slurm cluster could not be started (see above): the tests marked 'slurm'" \
        "skip, or fail under CI=true" >&2
    fi
  fi
  if [ -n "$slurm_ok" ]; then
    # shellcheck disable=SC1090
    . "$("$here/slurm.sh" env-file)"
    export SLURM_CONF HPCQUEUE_TEST_SLURM=1
  fi
fi

"$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run.sh: pytest collected no tests: that is a failure" >&2
  rc=1
fi
exit "$rc"
