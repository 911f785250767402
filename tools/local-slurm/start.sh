#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the SLURM tests (run as root).
#
# Installs the Debian packages it needs when they are missing, then starts munged, a private
# MariaDB + slurmdbd (submitit and the tests read job states with `sacct`, which needs
# accounting), slurmctld and slurmd -- without systemd or cgroups, each as a plain daemon with
# a PID file under $HERBS_SLURM_DIR/run -- and returns once the node is idle.
# tools/local-slurm/stop.sh stops it again. Settings (environment):
#   HERBS_SLURM_DIR   state, logs and PID files          (default /tmp/herbs-slurm)
#   HERBS_SLURM_CPUS  CPUs the node offers; more than nproc oversubscribes (default nproc)
#   HERBS_SLURM_WAIT  seconds to wait for each daemon and for the idle node (default 60)
set -euo pipefail

DIR=${HERBS_SLURM_DIR:-/tmp/herbs-slurm}
CPUS=${HERBS_SLURM_CPUS:-$(nproc)}
WAIT=${HERBS_SLURM_WAIT:-60}
DB_PORT=3307  # not 3306, so a MySQL the machine already runs is left alone
CONF_DIR=/etc/slurm
TAG="# written by herbs tools/local-slurm/start.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { echo "[local-slurm] $*"; }
die() { echo "[local-slurm] error: $*" >&2; exit 1; }
# A PID file names a live process (a zombie counts as gone).
alive() { [ -s "$1" ] && [ -n "$(ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -v '^Z')" ]; }
# Poll `cmd...` every 0.2 s until it succeeds; fail naming `what` after $WAIT s.
wait_until() {
    local what=$1; shift
    local deadline=$((SECONDS + WAIT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what not reached after ${WAIT} s (logs: $DIR/log)"
        sleep 0.2
    done
}

[ "$(id -u)" = 0 ] || die "run as root (the daemons run as root and write $CONF_DIR)"

install_missing() {
    local need=()
    command -v munged >/dev/null || need+=(munge)
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v sbatch >/dev/null || need+=(slurm-client)
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null || need+=(mariadb-server-core)
    command -v mariadb >/dev/null || need+=(mariadb-client-core)
    [ ${#need[@]} -gt 0 ] || return 0
    say "installing ${need[*]}"
    # While installing, keep the packages' own service scripts from starting daemons.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; own_policy=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    [ $own_policy = 0 ] || rm -f $policy
}

# A config file this script did not write is kept as <file>.orig before it is replaced.
write_conf() {
    local file=$1
    if [ -e "$file" ] && ! grep -qF "$TAG" "$file"; then cp -a "$file" "$file.orig"; say "kept the existing $file as $file.orig"; fi
    { echo "$TAG"; cat; } >"$file"
}

install_missing
for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
    ! alive "$DIR/run/$daemon.pid" || die "$daemon is already running (pid $(cat "$DIR/run/$daemon.pid")); run $HERE/stop.sh first"
done

NODE=$(hostname -s)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
rm -rf "$DIR"
mkdir -p "$DIR"/{run,log,munge,db,ctld,spool}
mkdir -p $CONF_DIR

# munge: its own key (once) and a private socket, so a system munged is not disturbed.
if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 700 /etc/munge
    head -c 1024 /dev/urandom >/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key "$DIR/munge"
chmod 400 /etc/munge/munge.key
SOCKET=$DIR/munge/socket
runuser -u munge -- munged --socket="$SOCKET" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/seed" --key-file=/etc/munge/munge.key
wait_until "munged's socket" test -S "$SOCKET"
cp "$DIR/munge/munged.pid" "$DIR/run/munged.pid"
munge -S "$SOCKET" -n | unmunge -S "$SOCKET" >/dev/null || die "munge cannot decode its own credential ($DIR/munge/munged.log)"
say "munged running (pid $(cat "$DIR/run/munged.pid"))"

# Accounting: a MariaDB that lives in $DIR and listens on 127.0.0.1 only, and slurmdbd on it.
mariadb-install-db --no-defaults --datadir="$DIR/db/data" --user=root --skip-test-db \
    --auth-root-authentication-method=normal >"$DIR/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed ($DIR/log/mariadb-install.log)"
# mariadbd stays in the foreground: setsid detaches it from this shell; it writes its own PID file.
# The InnoDB sizes are the ones slurmdbd asks for (it warns otherwise).
setsid mariadbd --no-defaults --datadir="$DIR/db/data" --user=root --socket="$DIR/db/socket" \
    --port=$DB_PORT --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" \
    --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
wait_until "MariaDB answering" mariadb --no-defaults -S "$DIR/db/socket" -u root -e "SELECT 1"
mariadb --no-defaults -S "$DIR/db/socket" -u root -e \
    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
say "mariadbd running (pid $(cat "$DIR/run/mariadbd.pid"), 127.0.0.1:$DB_PORT)"

write_conf $CONF_DIR/slurmdbd.conf <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
EOF
chmod 600 $CONF_DIR/slurmdbd.conf  # slurmdbd refuses a config others can read (it holds the DB password)
slurmdbd
wait_until "slurmdbd started" grep -q "slurmdbd version .* started" "$DIR/log/slurmdbd.log"
say "slurmdbd running (pid $(cat "$DIR/run/slurmdbd.pid"))"

# More CPUs than the machine has only works when slurmd is told to trust the config.
OVERRIDES=""
[ "$CPUS" -le "$(nproc)" ] || OVERRIDES="SlurmdParameters=config_overrides"
write_conf $CONF_DIR/slurm.conf <<EOF
ClusterName=herbs
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
# No cgroups in containers: track processes by PID, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# In SLURM 22.05 the munge socket for slurmdbd goes here; without it slurmctld uses the default socket.
AccountingStoragePass=$SOCKET
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Schedule every 2 s so test jobs start (and requeued ones restart) promptly.
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
KillWait=10
$OVERRIDES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld
wait_until "slurmctld answering" sh -c "scontrol ping | grep -q 'is UP'"
say "slurmctld running (pid $(cat "$DIR/run/slurmctld.pid"))"
slurmd
wait_until "slurmd started" alive "$DIR/run/slurmd.pid"
say "slurmd running (pid $(cat "$DIR/run/slurmd.pid"))"

wait_until "node $NODE idle" sh -c "sinfo -h -n $NODE -o %T | grep -qx idle"
sacct -n -X -o JobID >/dev/null || die "sacct does not answer ($DIR/log/slurmdbd.log)"
say "ready: node $NODE, $CPUS CPUs, ${MEM} MB, partition debug, accounting on; logs in $DIR/log; stop with $HERE/stop.sh"
