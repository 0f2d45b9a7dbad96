#!/usr/bin/env bash
# The local Slurm cluster for the test suite: a thin wrapper around slurm/local-cluster.sh.
#
#   tests/services/slurm.sh start|stop|status   as slurm/local-cluster.sh
#   tests/services/slurm.sh env-file            print the path of the file that sets SLURM_CONF
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
case "${1:-}" in
  env-file) echo "${HPCQUEUE_SLURM_DIR:-/tmp/hpcqueue-local-slurm}/env.sh" ;;
  *) exec "$repo/slurm/local-cluster.sh" "$@" ;;
esac
