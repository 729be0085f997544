#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for msnet's real-SLURM test (tests/slurm/).
#
#   .ci/slurm_cluster.sh install   apt-get install the Debian packages (skipped when present)
#   .ci/slurm_cluster.sh start     start munged, MariaDB, slurmdbd, slurmctld, slurmd (idempotent)
#   .ci/slurm_cluster.sh stop      stop them in reverse order, each by its PID file
#   .ci/slurm_cluster.sh status    which daemons run, and `sinfo`
#
# Needs root on Debian/Ubuntu; works without systemd (every daemon is started by hand, since
# policy-rc.d usually blocks service starts in containers). What it sets up:
#   - one node: this machine's CPUs and 80 % of its memory, partition `debug` (the default);
#   - accounting in slurmdbd on a local MariaDB (the executor plugin asks `sacct` for job
#     states, and a wrong account is refused at once, as on real clusters), enforced
#     associations, job comments stored (sacct shows which rule or group each job ran);
#   - accounts `msnet_ci` (the one the test passes, README-style, as slurm_account) and
#     `ci_default` (root's default account, so a job that lost its account shows up).
# It writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf and refuses to overwrite
# files it did not write. Logs: /var/log/slurm/. PID files: /run/slurm/, /run/munge/,
# /run/mysqld/. About 20 s from scratch once the packages are installed.
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
CLUSTER=single
PARTITION=debug
TEST_ACCOUNT=msnet_ci
DEFAULT_ACCOUNT=ci_default
MARK="# written by msnet .ci/slurm_cluster.sh"
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
PID_DIR=/run/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
DB_SOCKET=/run/mysqld/mysqld.sock
DB_PID=/run/mysqld/mysqld.pid
MUNGE_PID=/run/munge/munged.pid

say() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: ERROR: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it starts system daemons and writes $CONF_DIR)"
}

# pid_alive PIDFILE NAME: the PID file names a live process whose command is NAME
pid_alive() {
  local pidfile=$1 name=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(tr -dc '0-9' < "$pidfile")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.5 s until it succeeds
wait_for() {
  local seconds=$1 what=$2; shift 2
  local tries=$((seconds * 2))
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up within ${seconds} s (logs in $LOG_DIR, /var/log/munge)"
}

# own_file PATH: PATH is absent or was written by this script
own_file() { [ ! -e "$1" ] || grep -qF "$MARK" "$1"; }

cmd_install() {
  need_root
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "packages already installed: ${PACKAGES[*]}"
    return 0
  fi
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if pid_alive "$MUNGE_PID" munged; then
    say "munged already running"
  else
    runuser -u munge -- /usr/sbin/munged --force
  fi
  wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  if pid_alive "$DB_PID" mariadbd; then
    say "mariadbd already running"
  else
    # mariadbd does not daemonise itself: detach it into its own session
    setsid -f runuser -u mysql -- /usr/sbin/mariadbd --socket="$DB_SOCKET" \
      --pid-file="$DB_PID" --bind-address=127.0.0.1 \
      </dev/null >>"$LOG_DIR/mariadb.log" 2>&1
  fi
  wait_for 60 MariaDB mysqladmin --socket="$DB_SOCKET" ping
}

db_password() {
  # reuse the password of an existing slurmdbd.conf written by this script
  local pass=""
  if [ -s "$CONF_DIR/slurmdbd.conf" ]; then
    pass=$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf")
  fi
  [ -n "$pass" ] || pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  echo "$pass"
}

write_slurmdbd_conf() {
  local pass=$1
  mariadb --socket="$DB_SOCKET" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
  umask 077
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$PID_DIR/slurmdbd.pid
EOF
  umask 022
  chown slurm:slurm "$CONF_DIR/slurmdbd.conf"
  chmod 0600 "$CONF_DIR/slurmdbd.conf"
}

write_slurm_conf() {
  local host node mem_kb real_mb
  host=$(hostname -s)
  # the hardware line slurmd detects (CPUs, sockets, cores, threads), with memory set to 80 %
  # of this machine's so that slurmd never finds less than configured
  node=$(slurmd -C | head -n 1 | sed 's/ RealMemory=[0-9]*//')
  mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  real_mb=$((mem_kb * 8 / 10 / 1024))
  cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# finished jobs stay visible to squeue for 5 min (--slurm-status-command squeue needs that)
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
$node RealMemory=$real_mb NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 0644 "$CONF_DIR/slurm.conf"
}

ensure_accounting() {
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  local have
  have=$(sacctmgr -n -P list account format=account)
  for account in "$TEST_ACCOUNT" "$DEFAULT_ACCOUNT"; do
    if ! grep -qx "$account" <<<"$have"; then
      sacctmgr -i add account "$account" Cluster="$CLUSTER" \
        Description="msnet CI" Organization=msnet >/dev/null
    fi
  done
  have=$(sacctmgr -n -P list association cluster="$CLUSTER" user=root format=account)
  for account in "$DEFAULT_ACCOUNT" "$TEST_ACCOUNT"; do
    if ! grep -qx "$account" <<<"$have"; then
      sacctmgr -i add user root Account="$account" Cluster="$CLUSTER" >/dev/null
    fi
  done
  sacctmgr -i modify user root set DefaultAccount="$DEFAULT_ACCOUNT" >/dev/null || true
}

node_ready() {
  local state
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1)
  case "$state" in
    idle|mixed|allocated|completing) return 0 ;;
    *) return 1 ;;
  esac
}

cmd_start() {
  need_root
  command -v slurmctld >/dev/null || die "SLURM is not installed; run: $0 install"
  own_file "$CONF_DIR/slurm.conf" || die "$CONF_DIR/slurm.conf exists and was not written by this script; not touching it"
  own_file "$CONF_DIR/slurmdbd.conf" || die "$CONF_DIR/slurmdbd.conf exists and was not written by this script; not touching it"
  install -d -m 0755 "$CONF_DIR"
  install -d -o slurm -g slurm -m 0755 "$LOG_DIR" "$PID_DIR" "$SPOOL_CTLD"
  install -d -m 0755 "$SPOOL_D"

  start_munge
  start_mariadb
  write_slurmdbd_conf "$(db_password)"
  write_slurm_conf  # the client commands (sacctmgr too) read it
  if pid_alive "$PID_DIR/slurmdbd.pid" slurmdbd; then
    say "slurmdbd already running"
  else
    /usr/sbin/slurmdbd
  fi
  wait_for 60 slurmdbd sacctmgr -n list cluster
  ensure_accounting

  if pid_alive "$PID_DIR/slurmctld.pid" slurmctld; then
    say "slurmctld already running; re-reading slurm.conf"
    scontrol reconfigure >/dev/null
  else
    /usr/sbin/slurmctld
  fi
  wait_for 60 slurmctld scontrol ping
  if pid_alive "$PID_DIR/slurmd.pid" slurmd; then
    say "slurmd already running"
  else
    /usr/sbin/slurmd
  fi
  if ! wait_for_node 60; then
    # a node left DOWN/DRAINED by an earlier run: give it back
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 30 "node $(hostname -s)" node_ready
  fi
  say "up: $(sinfo -h -N -o 'node %N, %c CPUs, %m MB, partition %P, %T')"
  say "accounts: $TEST_ACCOUNT (for the test), $DEFAULT_ACCOUNT (root's default)"
}

wait_for_node() {
  local tries=$(($1 * 2))
  for ((i = 0; i < tries; i++)); do
    node_ready && return 0
    sleep 0.5
  done
  return 1
}

# stop_daemon NAME PIDFILE: SIGTERM the process of PIDFILE and wait for it to exit
stop_daemon() {
  local name=$1 pidfile=$2 pid
  if ! pid_alive "$pidfile" "$name"; then
    say "$name not running"
    return 0
  fi
  pid=$(tr -dc '0-9' < "$pidfile")
  kill -TERM "$pid"
  for ((i = 0; i < 60; i++)); do
    [ -d "/proc/$pid" ] || { say "stopped $name (pid $pid)"; return 0; }
    sleep 0.5
  done
  die "$name (pid $pid) did not stop within 30 s"
}

cmd_stop() {
  need_root
  stop_daemon slurmd "$PID_DIR/slurmd.pid"
  stop_daemon slurmctld "$PID_DIR/slurmctld.pid"
  stop_daemon slurmdbd "$PID_DIR/slurmdbd.pid"
  stop_daemon mariadbd "$DB_PID"
  stop_daemon munged "$MUNGE_PID"
}

cmd_status() {
  local rc=0
  for entry in "munged:$MUNGE_PID" "mariadbd:$DB_PID" "slurmdbd:$PID_DIR/slurmdbd.pid" \
               "slurmctld:$PID_DIR/slurmctld.pid" "slurmd:$PID_DIR/slurmd.pid"; do
    if pid_alive "${entry#*:}" "${entry%%:*}"; then
      say "${entry%%:*} running (pid $(tr -dc '0-9' < "${entry#*:}"))"
    else
      say "${entry%%:*} not running"; rc=1
    fi
  done
  sinfo 2>&1 || rc=1
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
