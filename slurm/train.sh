#!/bin/bash
# Multi-node HERBS training under SLURM: one srun task per training process, each running `herbs task`.
#
#   sbatch [sbatch options] slurm/train.sh CONFIG [section.key=value ...]
#
# Submit where herbs is installed (pip install -e .); relative paths in CONFIG and the overrides
# are taken from the submit directory. Command-line sbatch options override the defaults below,
# e.g. CPU nodes:  HERBS_PROCS_PER_NODE=2 sbatch --gpus-per-node=0 --cpus-per-task=2 slurm/train.sh ...
#
# Environment (exported into the job by sbatch):
#   HERBS_PROCS_PER_NODE     training processes per node (default: GPUs on the node, 1 without GPUs)
#   HERBS_ACCELERATE_CONFIG  accelerate config file (e.g. configs/accelerate/zero2.yaml)
#   HERBS_PYTHON             python to use (default: python on PATH)
#
# The job holds one task per node with all of its CPUs and GPUs; training is one srun step with a
# task per process sharing them (herbs/run.py says why), and --kill-on-bad-exit, so one
# failed process ends them all instead of leaving the others waiting in a collective.
#
# Time limit and preemption: SLURM sends SIGUSR1 to this script 5 minutes before the limit
# (--signal=B:USR1@300; it may come up to a minute earlier). The trap below forwards it to srun,
# and srun to every training process. Training finishes its step, writes a checkpoint and exits
# 75; the script then requeues the job with `scontrol requeue`, and the next start continues with
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
forward() {  # $1: signal name; srun passes it on to every training process
    echo "=== $(date '+%F %T') received SIG$1, forwarding to the training processes"
    [ "$1" = TERM ] && terminated=1
    if [ -n "$srun_pid" ]; then kill -s "$1" "$srun_pid" 2>/dev/null; else early=$1; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

[ $# -ge 1 ] || die "usage: sbatch [sbatch options] slurm/train.sh CONFIG [section.key=value ...]"
[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a SLURM job; submit it with: sbatch slurm/train.sh CONFIG"
herbs=("${HERBS_PYTHON:-python}" -m herbs)

# Validates CONFIG and the overrides (one sentence on a mistake) and names this attempt's log.
log=$("${herbs[@]}" run-dir --log "$@") || exit 2
mkdir -p "$(dirname "$log")" || die "cannot create the run directory $(dirname "$log")"
echo "herbs: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}: output goes to $log"
exec >>"$log" 2>&1

gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}
gpus=${gpus##*:}  # "a100:8" -> 8
procs=${HERBS_PROCS_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}
[[ "$procs" =~ ^[1-9][0-9]*$ ]] || die "HERBS_PROCS_PER_NODE must be a whole number of at least 1, got '$procs'"
cpus=$(( ${SLURM_CPUS_PER_TASK:-$procs} / procs ))
share=(--cpus-per-task="$cpus")
[ "$cpus" -ge 1 ] || share=(--cpus-per-task=1 --overcommit)  # more processes than CPUs: they share them
nodes=$SLURM_JOB_NUM_NODES
echo "=== $(date '+%F %T') job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: $nodes node(s) x $procs process(es), ${share[*]}, on $SLURM_JOB_NODELIST"

[ "$terminated" = 1 ] && { echo "=== terminated before training started"; exit 143; }
srun --nodes="$nodes" --ntasks=$((nodes * procs)) --ntasks-per-node="$procs" "${share[@]}" --kill-on-bad-exit=1 \
    "${herbs[@]}" task --resume auto --config "$1" "${@:2}" &
srun_pid=$!
if [ -n "$early" ]; then  # came before srun: pass it on once the processes are up
    echo "=== SIG$early came before training started; passing it on in 10 s"
    (sleep 10; kill -s "$early" "$srun_pid" 2>/dev/null) &
fi
# `wait` returns early (>128) whenever a trapped signal arrives: wait again while srun runs, then once
# more for the status of an srun that ended in between (127: none left, so the one we have is srun's).
wait "$srun_pid"; rc=$?
while [ "$rc" -gt 128 ] && kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; rc=$?; done
if [ "$rc" -gt 128 ]; then wait "$srun_pid" 2>/dev/null; next=$?; [ "$next" -ne 127 ] && rc=$next; fi
echo "=== $(date '+%F %T') training exited with $rc"

if [ "$rc" -eq 75 ] && [ "$terminated" = 0 ]; then
    echo "=== checkpoint written; requeueing job $SLURM_JOB_ID (it continues with --resume auto)"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "=== scontrol requeue $SLURM_JOB_ID failed; resubmit the same command to continue"
fi
exit "$rc"
