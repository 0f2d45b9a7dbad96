#!/usr/bin/env bash
# A real single-host Slurm cluster for demos and tests, without systemd.
#
#   slurm/local-cluster.sh start          install the Debian packages if missing, start (or re-check) the cluster
#   slurm/local-cluster.sh stop [--purge] cancel its jobs, stop the daemons it started; --purge deletes its state
#   slurm/local-cluster.sh status         daemons, sinfo, sacct; exit code 0 only when healthy
#
# Partitions: lowpower (node lp01, the default) and gpu (node gpu01, fake gres/gpu backed by regular files).
# Accounting: slurmdbd with a private MariaDB, so sacct works. Auth: a private munged with its own key.
# Everything lives in $HPCQUEUE_SLURM_DIR and runs on its own ports, so a system Slurm is left alone.
# After `start`:  source "$HPCQUEUE_SLURM_DIR/env.sh"   (sets SLURM_CONF)
#
# Settings (environment):
#   HPCQUEUE_SLURM_DIR             state directory                           (/tmp/hpcqueue-local-slurm)
#   HPCQUEUE_SLURM_CTLD_PORT       slurmctld port                            (6917)
#   HPCQUEUE_SLURM_DBD_PORT        slurmdbd port                             (6919)
#   HPCQUEUE_SLURM_SLURMD_PORT     slurmd port of gpu01; lp01 uses the next  (6921)
#   HPCQUEUE_SLURM_DB_PORT         MariaDB port (127.0.0.1 only)             (16133)
#   HPCQUEUE_SLURM_MAX_ARRAY_SIZE  MaxArraySize, deliberately small          (16)
#   HPCQUEUE_SLURM_FAKE_GPUS       gres/gpu count on gpu01, 0 for none       (2)
#   HPCQUEUE_SLURM_MEM_PERCENT     share of the host's RAM given to each node, >= 4 GB (40)
#   HPCQUEUE_SLURM_CLUSTER         ClusterName                               (hpcqueue)
#   HPCQUEUE_SLURM_LINK_ETC        1: symlink /etc/slurm/slurm.conf to ours when that path is free (1)
#   HPCQUEUE_SLURM_TIMEOUT_S       how long start waits for the nodes        (120)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=$HERE/templates
S=${HPCQUEUE_SLURM_DIR:-/tmp/hpcqueue-local-slurm}
CTLD_PORT=${HPCQUEUE_SLURM_CTLD_PORT:-6917}
DBD_PORT=${HPCQUEUE_SLURM_DBD_PORT:-6919}
GPU01_PORT=${HPCQUEUE_SLURM_SLURMD_PORT:-6921}
DB_PORT=${HPCQUEUE_SLURM_DB_PORT:-16133}
MAX_ARRAY_SIZE=${HPCQUEUE_SLURM_MAX_ARRAY_SIZE:-16}
FAKE_GPUS=${HPCQUEUE_SLURM_FAKE_GPUS:-2}
MEM_PERCENT=${HPCQUEUE_SLURM_MEM_PERCENT:-40}
CLUSTER=${HPCQUEUE_SLURM_CLUSTER:-hpcqueue}
LINK_ETC=${HPCQUEUE_SLURM_LINK_ETC:-1}
TIMEOUT_S=${HPCQUEUE_SLURM_TIMEOUT_S:-120}
NODES=(gpu01 lp01)

CONF=$S/etc/slurm.conf
MUNGE_SOCKET=$S/munge/run/munge.socket.2
ETC_LINK=/etc/slurm/slurm.conf
LINK_MARKER=$S/run/etc-link-created
T0=$(date +%s.%N)

log() { echo "local-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed_s() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
usage() { echo "usage: $0 start | stop [--purge] | status" >&2; exit 2; }

check_int() {  # check_int NAME VALUE MIN
  [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || die "$1=$2 is not a whole number >= $3"
}
check_int HPCQUEUE_SLURM_CTLD_PORT "$CTLD_PORT" 1
check_int HPCQUEUE_SLURM_DBD_PORT "$DBD_PORT" 1
check_int HPCQUEUE_SLURM_SLURMD_PORT "$GPU01_PORT" 1
check_int HPCQUEUE_SLURM_DB_PORT "$DB_PORT" 1
check_int HPCQUEUE_SLURM_MAX_ARRAY_SIZE "$MAX_ARRAY_SIZE" 2
check_int HPCQUEUE_SLURM_FAKE_GPUS "$FAKE_GPUS" 0
check_int HPCQUEUE_SLURM_MEM_PERCENT "$MEM_PERCENT" 1
LP01_PORT=$((GPU01_PORT + 1))

# Run as root; otherwise re-run through sudo, passing our settings explicitly (sudo may reset the environment).
as_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  command -v sudo >/dev/null 2>&1 || die "'$0 $*' must run as root (and sudo is not installed)"
  local settings=() name
  for name in $(compgen -v HPCQUEUE_SLURM_ || true); do settings+=("$name=${!name}"); done
  if sudo -n true 2>/dev/null; then
    exec sudo -n -E env "${settings[@]}" bash "$0" "$@"
  elif [ -t 0 ]; then
    exec sudo -E env "${settings[@]}" bash "$0" "$@"
  fi
  die "'$0 $*' must run as root: sudo needs a password and there is no terminal to ask for it"
}

# running PID: the process exists and is not a zombie. A daemon that exited stays a zombie until init reaps
# it, which some container inits do only every few seconds: waiting for the pid to vanish would be slow.
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# alive PIDFILE COMM: print the pid when the pid file names a running process with that command name.
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && running "$pid" || return 1
  echo "$pid"
}

# The daemons we start, as "PIDFILE:COMM", in start order.
daemon_list() {
  echo "$S/munge/run/munged.pid:munged"
  echo "$S/mysql/run/mysqld.pid:mariadbd"
  echo "$S/run/slurmdbd.pid:slurmdbd"
  echo "$S/run/slurmctld.pid:slurmctld"
  local n
  for n in "${NODES[@]}"; do echo "$S/run/slurmd-$n.pid:slurmd"; done
}

# stop_group PIDFILE:COMM...: SIGTERM them all at once, wait up to 15 s, then SIGKILL what is left.
stop_group() {
  local item pid pids=()
  for item in "$@"; do
    if pid=$(alive "${item%%:*}" "${item##*:}"); then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
      STOPPED+=("${item##*:}:$pid")
    fi
  done
  local _ left
  for _ in $(seq 300); do
    left=0
    for pid in "${pids[@]}"; do running "$pid" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do if running "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi; done
  for item in "$@"; do rm -f "${item%%:*}"; done
}

# wait_for SECONDS CMD...: retry CMD until it succeeds or the time is up.
wait_for() {
  local end=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------------------------------------ health
nodes_ready() {
  local out
  out=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [ "$(wc -l <<<"$out")" -eq "${#NODES[@]}" ] || return 1
  ! awk '$2 !~ /^(idle|mixed|allocated|completing)$/ { bad = 1 } END { exit !bad }' <<<"$out"
}
sacct_answers() { sacct -n -X -S now -o JobID >/dev/null 2>&1; }

# healthy: all daemons alive, slurmctld answers, both nodes usable, sacct answers.
healthy() {
  local item
  for item in $(daemon_list); do alive "${item%%:*}" "${item##*:}" >/dev/null || return 1; done
  [ -f "$CONF" ] || return 1
  SLURM_CONF=$CONF scontrol ping >/dev/null 2>&1 || return 1
  SLURM_CONF=$CONF nodes_ready || return 1
  SLURM_CONF=$CONF sacct_answers
}

# ------------------------------------------------------------------------------------------ install
install_packages() {
  local need=() pair
  for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge slurmdbd:slurmdbd \
    mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "${pair%%:*}" >/dev/null 2>&1 \
      || need+=("${pair##*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get: install Slurm 22.05+, munge and MariaDB"
  log "installing Debian packages: ${need[*]}"
  local t=$SECONDS made_policy="" rc=0 apt_log=$S/log/apt.log
  # Keep the packages' postinst scripts from starting their services with the stock configuration.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  } >"$apt_log" 2>&1 || rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || { tail -n 20 "$apt_log" >&2; die "apt-get failed (full log: $apt_log)"; }
  log "packages installed in $((SECONDS - t)) s"
}

# ------------------------------------------------------------------------------------------ config
CHANGED=0
# write_if_changed FILE MODE < content: replace FILE only when the content differs; then CHANGED=1.
write_if_changed() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  chmod "$2" "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1" && CHANGED=1; fi
}

# render TEMPLATE: substitute @NAME@ placeholders from the variables below.
render() {
  local f=$TEMPLATES/$1
  [ -f "$f" ] || die "template $f is missing"
  sed -e "s|@STATE@|$S|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" \
    -e "s|@GPU01_PORT@|$GPU01_PORT|g" -e "s|@LP01_PORT@|$LP01_PORT|g" -e "s|@HOST@|$HOST|g" \
    -e "s|@CPUS@|$CPUS|g" -e "s|@NODE_MEM_MB@|$NODE_MEM_MB|g" -e "s|@GPU01_GRES@|$GPU01_GRES|g" \
    -e "s|@DEF_MEM_PER_CPU_MB@|$DEF_MEM_PER_CPU_MB|g" -e "s|@MAX_ARRAY_SIZE@|$MAX_ARRAY_SIZE|g" \
    -e "s|@MAX_ARRAY_INDEX@|$((MAX_ARRAY_SIZE - 1))|g" -e "s|@DB_PASSWORD@|$DB_PASSWORD|g" "$f"
}

write_config() {
  mkdir -p "$S"/{etc,run,log,ctld,fakegpu} "$S"/munge/{etc,run,lib,log} "$S"/mysql/{data,run,log}
  local n
  for n in "${NODES[@]}"; do mkdir -p "$S/spool/$n"; done  # slurmd does not create its spool dir
  chmod 755 "$S" "$S/etc" "$S/run" "$S/log" "$S/munge" "$S/munge/run"
  chmod 700 "$S/munge/etc" "$S/munge/lib" "$S/munge/log"
  [ -s "$S/munge/etc/munge.key" ] || dd if=/dev/urandom of="$S/munge/etc/munge.key" bs=1024 count=1 status=none
  chmod 600 "$S/munge/etc/munge.key"
  chown -R munge:munge "$S/munge"
  if [ ! -s "$S/etc/db.password" ]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$S/etc/db.password")
  fi
  DB_PASSWORD=$(cat "$S/etc/db.password")

  HOST=$(hostname -s 2>/dev/null || hostname)
  CPUS=$(nproc)
  local mem_mb
  mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
  NODE_MEM_MB=$((mem_mb * MEM_PERCENT / 100))  # both nodes share the host
  # At least 4 GB, so that jobs asking for a few GB (hpcqueue's collect job asks for 2) fit on a small host;
  # memory is not enforced here, and SlurmdParameters=config_overrides keeps slurmd from draining the node.
  [ "$NODE_MEM_MB" -ge 4096 ] || NODE_MEM_MB=4096
  DEF_MEM_PER_CPU_MB=$((NODE_MEM_MB / CPUS < 1024 ? NODE_MEM_MB / CPUS : 1024))
  GPU01_GRES=""
  local i
  if [ "$FAKE_GPUS" -gt 0 ]; then
    GPU01_GRES="Gres=gpu:$FAKE_GPUS"
    # Regular files, not devices: slurmd logs "not a valid character or block device" but counts them.
    # A GPU line without File= would be dropped and the node drained ("gres/gpu count reported lower").
    for i in $(seq 0 $((FAKE_GPUS - 1))); do touch "$S/fakegpu/nvidia$i"; done
  fi

  # (input redirections, not pipes: write_if_changed must run in this shell to set CHANGED)
  write_if_changed "$CONF" 644 < <(render slurm.conf.in)
  if [ "$FAKE_GPUS" -gt 0 ]; then
    write_if_changed "$S/etc/gres.conf" 644 <<<"NodeName=gpu01 Name=gpu File=$S/fakegpu/nvidia[0-$((FAKE_GPUS - 1))]"
  else
    write_if_changed "$S/etc/gres.conf" 644 </dev/null
  fi
  write_if_changed "$S/etc/slurmdbd.conf" 600 < <(render slurmdbd.conf.in)
  write_if_changed "$S/mysql/my.cnf" 644 < <(render my.cnf.in)
  write_if_changed "$S/env.sh" 644 <<<"export SLURM_CONF=$CONF"
}

link_etc() {
  [ "$LINK_ETC" = 1 ] || return 0
  if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$CONF" ]; then return 0; fi
  if [ -e "$ETC_LINK" ] || [ -L "$ETC_LINK" ]; then
    log "$ETC_LINK belongs to another Slurm and is left alone: use SLURM_CONF=$CONF"
    return 0
  fi
  mkdir -p "$(dirname "$ETC_LINK")"
  ln -s "$CONF" "$ETC_LINK" && echo "$ETC_LINK" >"$LINK_MARKER"
}

unlink_etc() {
  [ -f "$LINK_MARKER" ] || return 0
  if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$CONF" ]; then rm -f "$ETC_LINK"; fi
  rm -f "$LINK_MARKER"
}

# ------------------------------------------------------------------------------------------ start
need_port() {  # need_port PORT SETTING: fail clearly when something else listens there
  port_free "$1" || die "port $1 is in use by another program: choose another with $2=PORT"
}

start_munge() {
  alive "$S/munge/run/munged.pid" munged >/dev/null && return 0
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$S/munge/etc/munge.key" \
    --log-file="$S/munge/log/munged.log" --pid-file="$S/munge/run/munged.pid" \
    --seed-file="$S/munge/lib/munged.seed" --num-threads=4
  wait_for 20 bash -c "munge -n --socket='$MUNGE_SOCKET' | unmunge --socket='$MUNGE_SOCKET'" \
    || die "munged did not come up (log: $S/munge/log/munged.log)"
}

start_mariadb() {
  local m=$S/mysql
  chown -R mysql:mysql "$m"
  if ! alive "$m/run/mysqld.pid" mariadbd >/dev/null; then
    need_port "$DB_PORT" HPCQUEUE_SLURM_DB_PORT
    if [ ! -d "$m/data/mysql" ]; then
      mariadb-install-db --defaults-file="$m/my.cnf" --user=mysql --auth-root-authentication-method=socket \
        --skip-test-db >"$m/log/install.log" 2>&1 || { tail "$m/log/install.log" >&2; die "mariadb-install-db failed"; }
    fi
    setsid mariadbd --defaults-file="$m/my.cnf" --user=mysql </dev/null >>"$m/log/mysqld.out" 2>&1 &
    wait_for 60 mariadb-admin --defaults-file="$m/my.cnf" ping \
      || { tail "$m/log/mysqld.err" >&2; die "mariadbd did not come up (log: $m/log/mysqld.err)"; }
    wait_for 10 test -s "$m/run/mysqld.pid"
  fi
  chmod 644 "$m/run/mysqld.pid"  # so that `status` works for any user
  mariadb --defaults-file="$m/my.cnf" -uroot <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
  if ! alive "$S/run/slurmdbd.pid" slurmdbd >/dev/null; then
    need_port "$DBD_PORT" HPCQUEUE_SLURM_DBD_PORT
    slurmdbd || die "slurmdbd failed (log: $S/log/slurmdbd.log)"
  fi
  wait_for 60 sacctmgr -n list cluster || { tail "$S/log/slurmdbd.log" >&2; die "slurmdbd does not answer"; }
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurm() {
  if ! alive "$S/run/slurmctld.pid" slurmctld >/dev/null; then
    need_port "$CTLD_PORT" HPCQUEUE_SLURM_CTLD_PORT
    slurmctld || die "slurmctld failed (log: $S/log/slurmctld.log)"
  fi
  wait_for 30 scontrol ping || { tail "$S/log/slurmctld.log" >&2; die "slurmctld does not answer"; }
  local n port
  for n in "${NODES[@]}"; do
    if ! alive "$S/run/slurmd-$n.pid" slurmd >/dev/null; then
      port=$GPU01_PORT
      [ "$n" = lp01 ] && port=$LP01_PORT
      need_port "$port" HPCQUEUE_SLURM_SLURMD_PORT
      slurmd -N "$n" || die "slurmd $n failed (log: $S/log/slurmd-$n.log)"
    fi
  done
  local end=$(($(date +%s) + TIMEOUT_S)) resumed=0
  until nodes_ready; do
    # Nodes left down or drained by an earlier configuration are ours: put them back once.
    if [ "$resumed" = 0 ] && sinfo -h -N -o '%T' | grep -qE 'drain|down|inval'; then
      for n in $(sinfo -h -N -o '%N %T' | awk '$2 ~ /drain|down|inval/ { print $1 }'); do
        scontrol update nodename="$n" state=resume 2>/dev/null || true
      done
      resumed=1
    fi
    if [ "$(date +%s)" -ge "$end" ]; then
      sinfo -N -l >&2 || true
      tail -n 5 "$S/log/slurmctld.log" >&2
      die "nodes not usable after ${TIMEOUT_S} s (logs: $S/log/)"
    fi
    sleep 0.2
  done
}

cmd_start() {
  as_root start
  mkdir -p "$S/log"
  install_packages
  getent passwd munge >/dev/null || die "user 'munge' is missing: reinstall the munge package"
  getent passwd mysql >/dev/null || die "user 'mysql' is missing: reinstall the mariadb-server package"
  write_config
  chmod 644 "$S/mysql/run/mysqld.pid" 2>/dev/null || true  # so that `status` works for any user
  export SLURM_CONF=$CONF
  link_etc
  if [ "$CHANGED" = 1 ]; then
    # A new configuration: restart the Slurm daemons (munge and MariaDB keep running).
    local slurm_daemons=() item
    for item in $(daemon_list); do
      case ${item##*:} in slurm*) slurm_daemons+=("$item") ;; esac
    done
    STOPPED=()
    stop_group "${slurm_daemons[@]}"
    [ ${#STOPPED[@]} -eq 0 ] || log "configuration changed: restarted ${STOPPED[*]}"
  elif healthy; then
    echo "local Slurm cluster already running (checked in $(elapsed_s) s): SLURM_CONF=$CONF"
    return 0
  fi
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  sacct_answers || die "sacct does not answer (log: $S/log/slurmdbd.log)"
  echo "local Slurm cluster ready in $(elapsed_s) s: $(sinfo -h -o '%P=%N(%T)' | tr '\n' ' ')" \
    "MaxArraySize=$MAX_ARRAY_SIZE SLURM_CONF=$CONF"
}

# ------------------------------------------------------------------------------------------ stop
cmd_stop() {
  local purge=0
  [ "${1:-}" = --purge ] && purge=1
  as_root stop "$@"
  STOPPED=()
  if [ -d "$S" ]; then
    export SLURM_CONF=$CONF
    # Cancel our jobs first, so no job outlives the daemons that track it.
    if alive "$S/run/slurmctld.pid" slurmctld >/dev/null && [ -n "$(squeue -h -o %A 2>/dev/null | head -n 1)" ]; then
      log "cancelling the cluster's jobs"
      scancel --full $(squeue -h -o %A 2>/dev/null | sort -u) 2>/dev/null || true
      wait_for 30 bash -c '[ -z "$(squeue -h -o %A 2>/dev/null)" ]' || log "some jobs did not end within 30 s"
    fi
    local slurmds=() n
    for n in "${NODES[@]}"; do slurmds+=("$S/run/slurmd-$n.pid:slurmd"); done
    # slurmctld sends its last records to slurmdbd, which writes them to MariaDB: stop in that order.
    stop_group "${slurmds[@]}" "$S/run/slurmctld.pid:slurmctld"
    stop_group "$S/run/slurmdbd.pid:slurmdbd"
    stop_group "$S/mysql/run/mysqld.pid:mariadbd" "$S/munge/run/munged.pid:munged"
    unlink_etc
    [ "$purge" = 1 ] && rm -rf "$S"
  fi
  echo "local Slurm cluster stopped in $(elapsed_s) s: ${STOPPED[*]:-nothing was running}$(
    [ "$purge" = 1 ] && echo "; deleted $S")"
}

# ------------------------------------------------------------------------------------------ status
cmd_status() {
  local item pid ok=0
  for item in $(daemon_list); do
    local name=${item##*:} pf=${item%%:*}
    [ "$name" = slurmd ] && name="slurmd $(basename "$pf" .pid | sed 's/^slurmd-//')"
    if pid=$(alive "$pf" "${item##*:}"); then
      printf '%-14s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-14s not running\n' "$name"
      ok=1
    fi
  done
  if [ ! -f "$CONF" ]; then
    echo "no configuration at $CONF: run '$0 start'"
    return 1
  fi
  export SLURM_CONF=$CONF
  echo "SLURM_CONF=$CONF"
  if scontrol ping >/dev/null 2>&1; then
    sinfo -o '%10P %.5a %.6D %10T %N %G' 2>&1 || ok=1
    nodes_ready || { echo "nodes: not all usable"; ok=1; }
  else
    echo "slurmctld: does not answer"
    ok=1
  fi
  if sacct_answers; then echo "sacct: answers"; else echo "sacct: does not answer"; ok=1; fi
  [ "$ok" = 0 ] && echo "healthy" || echo "NOT healthy: '$0 start' repairs it (logs: $S/log/)"
  return "$ok"
}

case "${1:-}" in
  start) shift && [ $# -eq 0 ] || usage; cmd_start ;;
  stop) shift && [ $# -le 1 ] && [ "${1:---purge}" = --purge ] || usage; cmd_stop "$@" ;;
  status) shift && [ $# -eq 0 ] || usage; cmd_status ;;
  *) usage ;;
esac
