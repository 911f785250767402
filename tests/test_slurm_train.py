"""`sbatch slurm/train.sh` on the real local SLURM cluster: a full run, and a run stopped by SIGUSR1.

Both runs use the tiny config with 2 CPU training processes on one node (one srun task each,
gloo), the way a GPU-less cluster would run it (--gpus-per-node=0).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from herbs.run import EVENTS_FILE, METRICS_FILE, log_file
from helpers import REPO, TINY_CONFIG
from helpers.runs import micro, write_demo_shards
from helpers.slurm import (final_checkpoint, in_queue, model_weights, read_jsonl, sacct_elapsed, sacct_states, sbatch, slurm,  # noqa: F401
                           tail, wait_job_done)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Carried intact through sbatch and srun into the run's resolved config.
ODD_NAME = """uninterrupted "run" it's"""
CHECKPOINT_EVERY = 5


def overrides(shards: Path, out: Path, name: str) -> list[str]:
    # 80 training images, batch 4 on 2 processes: 10 steps per epoch, 40 in all. No randomness or
    # per-process statistics in the model, so that a run resumed on 1 process can match one on 2.
    return micro(shards, out, "data.num_workers=0", "train.epochs=4", f"train.checkpoint_every={CHECKPOINT_EVERY}", f"log.name={name}",
                 "model.freeze_batchnorm=true", "model.drop_path_rate=0.0", "model.combiner_dropout=0.0")


def submit(tmp: Path, args: list[str], processes: int = 2, sbatch_args: tuple[str, ...] = ()) -> str:
    # From a directory outside the checkout: the script finds the checkout through SLURM.
    return sbatch(["--gpus-per-node=0", "--cpus-per-task=1", "--time=10", f"--output={tmp}/sbatch-%j.out", *sbatch_args,
                   str(REPO / "slurm" / "train.sh"), str(TINY_CONFIG), *args], cwd=tmp, env={"HERBS_PROCS_PER_NODE": str(processes)})


def run_dir_of(out: Path, name: str) -> Path:
    return out / "herbs-tiny" / name


class Interrupter(threading.Thread):
    """Sends SIGUSR1 (or `signal`) to a job's batch script once its run has written a checkpoint (mid-run)."""

    def __init__(self, job: str, run_dir: Path, timeout: float = 240, signal: str = "USR1"):
        super().__init__(daemon=True)
        self.job, self.run_dir, self.timeout, self.signal = job, run_dir, timeout, signal
        self.sent = False
        self.problem = ""

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if (self.run_dir / "checkpoints" / "latest").is_file():
                out = subprocess.run(["scancel", f"--signal={self.signal}", "--batch", self.job], capture_output=True, text=True)
                self.sent, self.problem = out.returncode == 0, out.stderr
                return
            if not in_queue(self.job):
                self.problem = "the job left the queue before its first checkpoint"
                return
            time.sleep(0.2)
        self.problem = f"no checkpoint after {self.timeout} s"


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, slurm):
    """Both runs at once (one CPU each, so SLURM runs them side by side): the one to interrupt and the reference."""
    tmp = tmp_path_factory.mktemp("sbatch")
    shards, out = tmp / "shards", tmp / "runs"
    write_demo_shards(shards)
    interrupted = submit(tmp, overrides(shards, out, "interrupted"))
    reference = submit(tmp, overrides(shards, out, ODD_NAME))
    # preempted where SLURM may not requeue it: resubmitted by hand, on 1 process
    stopped = submit(tmp, overrides(shards, out, "elastic"), sbatch_args=("--no-requeue",))
    interrupter = Interrupter(interrupted, run_dir_of(out, "interrupted"))
    stopper = Interrupter(stopped, run_dir_of(out, "elastic"), timeout=600)  # may wait in the queue
    interrupter.start()
    stopper.start()
    yield {"tmp": tmp, "out": out, "shards": shards, "reference": reference, "interrupted": interrupted, "interrupter": interrupter,
           "stopped": stopped, "stopper": stopper}
    interrupter.join(1)
    for job in (interrupted, reference, stopped):
        if in_queue(job):
            subprocess.run(["scancel", job])


def diagnose(tmp: Path, job: str, run_dir: Path):
    return lambda: tail(tmp / f"sbatch-{job}.out") + "\n" + tail(log_file(run_dir, job))


@pytest.fixture(scope="module")
def reference(jobs):
    """The uninterrupted run: (job id, run directory, final state)."""
    job, run_dir = jobs["reference"], run_dir_of(jobs["out"], ODD_NAME)
    return job, run_dir, wait_job_done(job, 300, on_timeout=diagnose(jobs["tmp"], job, run_dir))


def test_sbatch_train_sh_completes_with_two_cpu_processes(reference):
    job, run_dir, state = reference
    log = log_file(run_dir, job)
    assert state == "COMPLETED", tail(log)
    text = log.read_text(errors="replace")
    assert "1 node(s) x 2 process(es)" in text and "2 processes x batch 4" in text
    assert "training exited with 0" in text
    # checkpoints and metrics
    latest = final_checkpoint(run_dir)
    assert latest.name == "step-0000040" and (latest / "model.safetensors").is_file()
    metrics = read_jsonl(run_dir / METRICS_FILE)
    assert [r["step"] for r in metrics if "loss" in r][-1] == 40
    assert any("val/ensemble_top1" in r for r in metrics) and "test/ensemble_top1" in metrics[-1]
    assert (run_dir / "best" / "model.safetensors").is_file()
    # the value with spaces and both quote kinds arrived as it was written
    import yaml

    assert yaml.safe_load((run_dir / "config.yaml").read_text())["log"]["name"] == ODD_NAME
    events = read_jsonl(run_dir / EVENTS_FILE)
    assert [e["event"] for e in events] == ["start", "end"] and events[-1]["exit_code"] == 0


def test_sbatch_usr1_checkpoints_requeues_and_matches_uninterrupted_run(reference, jobs):
    job, run_dir = jobs["interrupted"], run_dir_of(jobs["out"], "interrupted")
    log = log_file(run_dir, job)
    show = diagnose(jobs["tmp"], job, run_dir)
    state = wait_job_done(job, 300, on_timeout=show)
    interrupter = jobs["interrupter"]
    interrupter.join(5)
    assert interrupter.sent, f"SIGUSR1 was not sent: {interrupter.problem}\n{show()}"
    assert state == "COMPLETED", show()

    text = log.read_text(errors="replace")
    assert "received SIGUSR1" in text and "requeueing job" in text, diagnose()
    assert sacct_states(job) == ["REQUEUED", "COMPLETED"]
    events = read_jsonl(run_dir / EVENTS_FILE)
    assert [(e["event"], e.get("restart"), e.get("exit_code")) for e in events] == [
        ("start", 0, None), ("end", None, 75), ("start", 1, None), ("end", None, 0)], events
    assert "resumed from" in text
    stopped_at = int(re.search(r"preempted: checkpoint at step (\d+)", text).group(1))
    assert CHECKPOINT_EVERY <= stopped_at < 40, "the signal must stop the run between its first checkpoint and its end"

    # Same final weights, bit for bit, as the run that was never interrupted.
    _, ref_dir, ref_state = reference
    assert ref_state == "COMPLETED"
    for rel in (final_checkpoint(ref_dir).relative_to(ref_dir) / "model.safetensors", Path("best/model.safetensors")):
        ours, theirs = model_weights(run_dir / rel), model_weights(ref_dir / rel)
        assert ours.keys() == theirs.keys()
        different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not different, f"{rel}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_a_run_stopped_on_two_processes_continues_on_one_with_the_same_global_batch(reference, jobs):
    """sbatch --no-requeue with HERBS_PROCS_PER_NODE=2, preempted (SIGUSR1) after a checkpoint, then the same
    command with HERBS_PROCS_PER_NODE=1: the run continues at its checkpoint, accumulating 2 micro-batches
    where it had 2 processes, and ends with the uninterrupted 2-process run's weights (to float rounding)."""
    tmp, run_dir, first = jobs["tmp"], run_dir_of(jobs["out"], "elastic"), jobs["stopped"]
    wait_job_done(first, 300, on_timeout=diagnose(tmp, first, run_dir))
    jobs["stopper"].join(5)
    assert jobs["stopper"].sent, jobs["stopper"].problem
    first_log = log_file(run_dir, first).read_text(errors="replace")
    assert "preempted: checkpoint at step" in first_log and "resubmit the same command to continue" in first_log, first_log[-3000:]
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert stopped_at < 40

    second = submit(tmp, overrides(jobs["shards"], jobs["out"], "elastic"), processes=1)
    assert wait_job_done(second, 300, on_timeout=diagnose(tmp, second, run_dir)) == "COMPLETED", diagnose(tmp, second, run_dir)()
    text = log_file(run_dir, second).read_text(errors="replace")
    assert "1 node(s) x 1 process(es)" in text
    assert f"resumed at step {stopped_at} on 1 processes, written by 2; accumulation 1 -> 2, global batch 8 kept" in text
    _, ref_dir, ref_state = reference
    assert ref_state == "COMPLETED"
    ours, theirs = model_weights(final_checkpoint(run_dir) / "model.safetensors"), model_weights(final_checkpoint(ref_dir) / "model.safetensors")
    assert final_checkpoint(run_dir).name == "step-0000040" and ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5, rtol=0), name


def test_a_crashed_process_ends_the_job_at_once_instead_of_leaving_the_other_in_a_collective(jobs):
    """Rank 1 dies in step 3 (HERBS_FAULT_EXIT): srun --kill-on-bad-exit ends rank 0, which is waiting for
    it in the gradient all-reduce, in seconds rather than at the collective's timeout (30 min; on one
    node gloo may also notice the closed connection, across nodes NCCL waits), and the job fails
    without a requeue."""
    tmp = jobs["tmp"]
    run_dir = run_dir_of(jobs["out"], "crashed")
    job = sbatch(["--gpus-per-node=0", "--cpus-per-task=1", "--time=10", f"--output={tmp}/sbatch-%j.out",
                  str(REPO / "slurm" / "train.sh"), str(TINY_CONFIG), *overrides(jobs["shards"], jobs["out"], "crashed")],
                 cwd=tmp, env={"HERBS_PROCS_PER_NODE": "2", "HERBS_FAULT_EXIT": "3:1"})
    show = diagnose(tmp, job, run_dir)
    state = wait_job_done(job, 300, on_timeout=show)
    assert state == "FAILED", show()
    text = log_file(run_dir, job).read_text(errors="replace")
    assert "task 1: Exited with exit code 3" in text and "training exited with" in text, show()
    assert "requeueing" not in text
    elapsed = sacct_elapsed(job)
    assert elapsed < 120, f"the job ran {elapsed} s: the surviving process waited for the crashed one\n{show()}"
