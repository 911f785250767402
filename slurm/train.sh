#!/bin/bash
# Multi-node HERBS training under SLURM: one srun task per node, each runs `accelerate launch`.
#
#   sbatch [sbatch options] slurm/train.sh CONFIG [section.key=value ...]
#
# Run it from the repository (or set HERBS_ROOT). Command-line sbatch options override the
# defaults below, e.g. CPU nodes:  sbatch --gpus-per-node=0 --cpus-per-task=2 slurm/train.sh ...
#
# Environment (exported into the job by sbatch):
#   HERBS_PROCS_PER_NODE     training processes per node (default: GPUs on the node, 1 without GPUs)
#   HERBS_ACCELERATE_CONFIG  accelerate config file (e.g. configs/accelerate/zero2.yaml)
#   HERBS_PYTHON             python to use (default: python on PATH)
#   HERBS_ROOT               the herbs checkout (default: found from this script / the submit directory)
#
# Time limit and preemption: SLURM sends SIGUSR1 to this script 5 minutes before the limit
# (--signal=B:USR1@300; it may come up to a minute earlier). The trap below forwards it to srun,
# srun to every node's launch/node.py, and node.py to the train.py processes (torch elastic
# would not forward it). Training finishes its step, writes a checkpoint and exits 75; the
# script then requeues the job with `scontrol requeue`, and the next start continues with
# --resume auto. SIGTERM (scancel, the hard time limit) is forwarded too but never requeues.
#
# Output goes to <run_dir>/slurm-<jobid>.log (appended across requeues); the file named by
# --output below only holds the first lines, until the run directory is known.
#
#SBATCH --job-name=herbs
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -uo pipefail

die() { echo "slurm/train.sh: error: $*" >&2; exit 2; }

# First of all: SIGUSR1's default action would end this script.
srun_pid=
early=
terminated=0
forward() {  # $1: signal name; srun passes it on to every node's node.py
    echo "=== $(date '+%F %T') received SIG$1, forwarding to the training processes"
    [ "$1" = TERM ] && terminated=1
    if [ -n "$srun_pid" ]; then kill -s "$1" "$srun_pid" 2>/dev/null; else early=$1; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

[ $# -ge 1 ] || die "usage: sbatch [sbatch options] slurm/train.sh CONFIG [section.key=value ...]"
[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a SLURM job; submit it with: sbatch slurm/train.sh CONFIG"

# The checkout: sbatch runs a spooled copy of this file, so find the original through SLURM.
root=${HERBS_ROOT:-}
if [ -z "$root" ]; then
    # scontrol's Command= is "<script path> <arguments joined by spaces>"
    command=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n1)
    script=${command% "$*"}
    for candidate in "$(dirname "$(dirname "$script")")" "${SLURM_SUBMIT_DIR:-$PWD}"; do
        if [ -f "$candidate/launch/node.py" ]; then root=$candidate; break; fi
    done
fi
[ -n "$root" ] && [ -f "$root/launch/node.py" ] \
    || die "cannot find the herbs checkout (no launch/node.py); submit from the repository or set HERBS_ROOT"
python=${HERBS_PYTHON:-python}
node=("$python" "$root/launch/node.py")

# Validates CONFIG and the overrides (one sentence on a mistake) and names the run directory.
run_dir=$("${node[@]}" run-dir "$@") || exit 2
mkdir -p "$run_dir" || die "cannot create the run directory $run_dir"
job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
job=${job:-$SLURM_JOB_ID}
log="$run_dir/slurm-$job.log"
echo "herbs: job $job, restart ${SLURM_RESTART_COUNT:-0}: output goes to $log"
exec >>"$log" 2>&1

# Rendezvous: node 0 of the allocation, a port derived from the job id (node.py does the same
# without these). Each node's rank is read by node.py on that node (SLURM_NODEID).
HERBS_HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
HERBS_PORT=$((15000 + SLURM_JOB_ID % 15000))
export HERBS_HEAD_NODE HERBS_PORT
echo "=== $(date '+%F %T') job $job restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_JOB_NUM_NODES} node(s) $SLURM_JOB_NODELIST, head $HERBS_HEAD_NODE:$HERBS_PORT"

srun_args=(--nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1)
# srun of SLURM 22.05 does not inherit --cpus-per-task from the job
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
[ "$terminated" = 1 ] && { echo "=== terminated before training started"; exit 143; }
srun "${srun_args[@]}" "${node[@]}" run -- "$@" &
srun_pid=$!
if [ -n "$early" ]; then  # came before srun: pass it on once the tasks are up (node.py holds it until training listens)
    echo "=== SIG$early came before training started; passing it on in 10 s"
    (sleep 10; kill -s "$early" "$srun_pid" 2>/dev/null) &
fi
# `wait` returns early (>128) whenever a trapped signal arrives; keep waiting for srun itself.
while :; do
    wait "$srun_pid"; rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$srun_pid" 2>/dev/null; then continue; fi
    break
done
if [ "$rc" -gt 128 ]; then wait "$srun_pid" 2>/dev/null; rc2=$?; [ "$rc2" -ne 127 ] && rc=$rc2; fi
echo "=== $(date '+%F %T') training exited with $rc"

if [ "$rc" -eq 75 ] && [ "$terminated" = 0 ]; then
    echo "=== checkpoint written; requeueing job $job (it continues with --resume auto)"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "=== scontrol requeue $SLURM_JOB_ID failed; resubmit the same command to continue"
fi
exit "$rc"
