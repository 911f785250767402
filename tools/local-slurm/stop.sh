#!/usr/bin/env bash
# Stop the cluster tools/local-slurm/start.sh started: cancel its jobs, then stop each daemon by
# the PID in $HERBS_SLURM_DIR/run (SIGTERM, SIGKILL if it is still there after its grace time).
# Logs stay in $HERBS_SLURM_DIR/log; the next start.sh clears the directory.
set -uo pipefail

DIR=${HERBS_SLURM_DIR:-/tmp/herbs-slurm}

say() { echo "[local-slurm] $*"; }
running() { [ -n "$(ps -o stat= -p "$1" 2>/dev/null | grep -v '^Z')" ]; }
# Poll `cmd...` every 0.1 s for up to $1 s; returns whether it came true.
poll() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.1; done
}

stop_daemon() {  # name, grace seconds
    local name=$1 grace=$2 file="$DIR/run/$1.pid" pid
    if [ ! -s "$file" ] || ! running "$(cat "$file")"; then rm -f "$file"; say "$name was not running"; return; fi
    pid=$(cat "$file")
    kill -TERM "$pid"
    if ! poll "$grace" eval "! running $pid"; then
        say "$name (pid $pid) still running ${grace} s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        poll 5 eval "! running $pid"
    fi
    rm -f "$file"
    say "$name (pid $pid) stopped"
}

# Jobs first, while the controller can still cancel them (KillWait=10 bounds their exit).
if [ -s "$DIR/run/slurmctld.pid" ] && running "$(cat "$DIR/run/slurmctld.pid")"; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
    if [ -n "$jobs" ]; then
        say "cancelling jobs $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        poll 30 sh -c '[ -z "$(squeue -h -o %A 2>/dev/null)" ]' || say "jobs still in the queue after 30 s"
    fi
fi

stop_daemon slurmd 15
stop_daemon slurmctld 15
stop_daemon slurmdbd 15
stop_daemon mariadbd 30
stop_daemon munged 10
