"""`launch/submit.py` (submitit) on the real local SLURM cluster: a sweep, the status table, a time limit, a requeue by SLURM."""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from herbs.launch import status
from herbs.run import EVENTS_FILE, METRICS_FILE, log_file
from helpers import TINY_CONFIG, wait_for
from helpers.runs import latest_step, micro, write_demo_shards
from helpers.slurm import in_queue, read_jsonl, sacct_states, slurm, submit_py, tail, wait_job_done  # noqa: F401

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def data(tmp_path_factory, slurm):
    tmp = tmp_path_factory.mktemp("submitit")
    shards = tmp / "shards"
    return tmp, write_demo_shards(shards)


def logs(folder: Path) -> str:
    return "\n".join(tail(p, 40) for p in sorted((folder / "logs").glob("*_log.out")))


def cancel_leftovers(folder: Path) -> None:
    record = folder / "sweep.json"
    if record.is_file():
        for job in json.loads(record.read_text())["jobs"]:
            if job.get("job_id") and in_queue(job["job_id"]):
                subprocess.run(["scancel", str(job["job_id"])])
                wait_for(lambda: not in_queue(job["job_id"]), 60, f"job {job['job_id']} to leave the queue after scancel")


def test_nodes_beyond_the_partition_and_refused_requests_stop_before_submitting(data):
    tmp, shards = data
    base = ["--config", str(TINY_CONFIG), *micro(shards, tmp / "runs", "data.num_workers=0"), "--gpus-per-node", "0", "--time", "5"]
    out = submit_py([*base, "--nodes", "2", "--cpus-per-task", "1"], cwd=tmp)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["herbs submit: error: --nodes 2 is more than the 1 node(s) of partition 'debug'; ask for at most 1"]
    # SLURM would accept 64 CPUs on a 2-CPU node and leave the job pending forever
    out = submit_py([*base, "--cpus-per-task", "64"], cwd=tmp)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "herbs submit: error: --cpus-per-task 64 is more than any node of partition 'debug' has (at most 2 CPUs); ask for less"]
    # what only sbatch knows (here: a node feature nobody has) is its refusal, in one sentence
    out = submit_py([*base, "--cpus-per-task", "1", "--constraint", "no-such-feature", "--dir", str(tmp / "refused")], cwd=tmp)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == ["herbs submit: error: sbatch refused the job: Batch job submission failed: Invalid feature specification"]


def test_status_reads_each_task_of_an_array_from_the_accounting(slurm):
    """sacct shows a pending array as one line, `N_[0-2%1]`; each task's state comes out of it, and a cancel reads as CANCELLED."""
    out = subprocess.run(["sbatch", "--parsable", "--array=0-2%1", "--begin=now+3600", "--wrap", "true"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    tasks = [f"{job}_{i}" for i in range(3)]
    try:
        assert wait_for(lambda: status.slurm_states(tasks) == dict.fromkeys(tasks, "PENDING"), 30, "the array to be listed as pending")
    finally:
        subprocess.run(["scancel", job])
    wait_for(lambda: status.slurm_states(tasks) == dict.fromkeys(tasks, "CANCELLED"), 60, "the array to be listed as cancelled")


@pytest.fixture(scope="module")
def sweep_submission(data):
    """The 2-point sweep, submitted without waiting, one job at a time (the other CPU is for the time-limit job)."""
    tmp, shards = data
    sweep = tmp / "sweep.yaml"
    # zipped: two learning rates, each with a value that holds spaces and both quote kinds
    sweep.write_text(yaml.safe_dump({"zip": {"optim.lr": [0.01, 0.005], "log.project": ["sweep 'one'", 'sweep "two"']}}, sort_keys=False))
    folder = tmp / "sweep-submission"
    args = ["--config", str(TINY_CONFIG), *micro(shards, tmp / "runs", "data.num_workers=0", "train.max_steps=8"),
            "--sweep", str(sweep), "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "10", "--array-parallelism", "1",
            "--dir", str(folder)]
    out = submit_py(args, cwd=tmp)
    assert out.returncode == 0, out.stderr
    yield folder, out
    cancel_leftovers(folder)


@pytest.mark.slow
def test_two_point_sweep_completes_and_status_reports_both(data, sweep_submission, timeout_job):
    tmp = data[0]
    folder, out = sweep_submission
    record = json.loads((folder / "sweep.json").read_text())
    ids = [j["job_id"] for j in record["jobs"]]
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1") and ids[0].split("_")[0] == ids[1].split("_")[0]
    assert f"status: herbs status {folder}" in out.stdout
    for job in ids:
        wait_job_done(job, 300, on_timeout=lambda: logs(folder))

    status = submit_py(["status", str(folder), "--json"], cwd=tmp)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["name"] for r in rows] == ["lr-0.01_project-sweep-one", "lr-0.005_project-sweep-two"]
    for row, project, lr in zip(rows, ["sweep 'one'", 'sweep "two"'], [0.01, 0.005]):
        assert (row["state"], row["restarts"], row["last_step"]) == ("COMPLETED", 0, 8), (row, logs(folder))
        assert row["best_val_top1"] is not None
        resolved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert resolved["log"]["project"] == project and resolved["optim"]["lr"] == lr
        assert resolved["log"]["name"] == f"tiny/{row['name']}"
    table = submit_py(["status", str(folder)], cwd=tmp).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "JOB", "STATE", "RESTARTS"]
    assert all("COMPLETED" in line for line in table[1:]) and len(table) == 3


class Extender(threading.Thread):
    """Raises a job's time limit once it has been requeued, so that its next attempt can finish."""

    def __init__(self, job: str, minutes: int = 10, timeout: float = 300):
        super().__init__(daemon=True)
        self.job, self.minutes, self.timeout = job, minutes, timeout
        self.extended = False
        self.problem = ""

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            states = sacct_states(self.job)
            if "REQUEUED" in states:
                out = subprocess.run(["scontrol", "update", f"JobId={self.job}", f"TimeLimit={self.minutes}"], capture_output=True, text=True)
                self.extended, self.problem = out.returncode == 0, out.stderr
                return
            if states and states[-1] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
                self.problem = f"the job ended ({states}) without being requeued"
                return
            time.sleep(0.5)
        self.problem = f"no requeue within {self.timeout} s"


def measured_step_time(run_dir: Path, timeout: float = 180) -> float:
    """Seconds per training step of a 1-process run on this machine now (median of its logged steps 2+)."""
    def times():
        values = sorted(r["step_time_s"] for r in read_jsonl(run_dir / METRICS_FILE) if r.get("step", 0) >= 2 and "step_time_s" in r)
        return values if len(values) >= 3 else None

    values = wait_for(times, timeout, f"step times in {run_dir}")
    return values[len(values) // 2]


@pytest.fixture(scope="module")
def timeout_job(data, sweep_submission):
    """A job with a two-minute time limit, running beside the sweep.

    The signal is asked for 30 s before the limit. SLURM checks every 30 s and signals at the first
    check that finds less than 60 s left (measured here: 83 s after the start), so it comes 60 to 90 s
    after the start, and at least 30 s after it even as early as its man page allows (a minute). So it
    never comes before the task's handler is in place: with a one-minute limit the first check could
    fall in the task's first second, and SIGUSR2 then killed it. Training is sized from the sweep's
    measured step time to take 135 s, so it is still going then; it checkpoints and submitit requeues
    the job. The requeued attempt would be signalled as early again, so its time limit is raised while
    it waits in the queue: the one thing done by hand."""
    tmp, shards = data
    sweep_folder, _ = sweep_submission
    first_point = Path(json.loads((sweep_folder / "sweep.json").read_text())["jobs"][0]["run_dir"])
    # 135 s at the measured pace: past the signal (< 90 s after the start) even if this machine got
    # a third faster meanwhile; it usually gets slower, running beside the sweep
    steps = min(9000, max(900, math.ceil(135 / measured_step_time(first_point))))
    folder = tmp / "timeout-submission"
    args = ["--config", str(TINY_CONFIG),
            *micro(shards, tmp / "runs", "data.num_workers=0", f"train.max_steps={steps}", "train.epochs=1000", "train.eval_every=1000",
                  "train.checkpoint_every=10000", "log.every=20", "log.name=timeout",
                  # thousands of steps of the tiny model: at the usual lr 0.01 its loss may blow up
                  "optim.lr=0.001", "optim.max_grad_norm=1"),
            "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "2", "--signal-delay", "30", "--dir", str(folder)]
    out = submit_py(args, cwd=tmp)
    assert out.returncode == 0, out.stderr
    entry = json.loads((folder / "sweep.json").read_text())["jobs"][0]
    extender = Extender(entry["job_id"])
    extender.start()
    yield {"folder": folder, "job": entry["job_id"], "run_dir": Path(entry["run_dir"]), "extender": extender, "tmp": tmp, "steps": steps}
    extender.join(1)
    cancel_leftovers(folder)


@pytest.mark.slow
def test_submitit_job_that_hits_its_time_limit_is_requeued_and_finishes(timeout_job):
    folder, job, run_dir, tmp, steps = (timeout_job[k] for k in ("folder", "job", "run_dir", "tmp", "steps"))
    show = lambda: logs(folder) + "\n" + tail(log_file(run_dir, job))  # noqa: E731
    state = wait_job_done(job, 400, on_timeout=show)
    extender = timeout_job["extender"]
    extender.join(5)
    assert extender.extended, f"{extender.problem}\n{show()}"
    assert state == "COMPLETED", show()
    assert sacct_states(job) == ["REQUEUED", "COMPLETED"]
    log = logs(folder)
    assert "this job is timed-out" in log and "Requeued job" in log
    events = read_jsonl(run_dir / EVENTS_FILE)
    assert [(e["event"], e.get("exit_code"), e.get("requeue")) for e in events] == [
        ("start", None, None), ("end", 75, True), ("start", None, None), ("end", 0, False)], events
    second = [e for e in events if e["event"] == "start"][1]
    assert second["command"][second["command"].index("--resume") + 1] == "auto" and second["restart"] == 1
    metrics = read_jsonl(run_dir / METRICS_FILE)
    assert max(r["step"] for r in metrics if "step" in r) == steps and "test/ensemble_top1" in metrics[-1]
    status = json.loads(submit_py(["status", str(folder), "--json"], cwd=tmp).stdout)
    assert (status[0]["state"], status[0]["restarts"], status[0]["last_step"]) == ("COMPLETED", 1, steps)


@pytest.mark.slow
def test_a_job_that_slurm_requeues_itself_continues_from_its_checkpoint_whatever_resume_it_was_submitted_with(data):
    """`scancel --signal=USR1` (what a user or a preemption script sends to ask for a checkpoint) requeues the job
    through submitit. Then `scontrol requeue` does to a running job what a preemption with PreemptMode=REQUEUE does:
    SIGTERM, then the same batch script again, which reruns the call submitit pickled at submission (here `--resume none`)."""
    tmp, shards = data
    folder = tmp / "requeued-submission"
    args = ["--config", str(TINY_CONFIG),
            *micro(shards, tmp / "runs", "data.num_workers=0", "train.max_steps=400", "train.epochs=1000", "train.eval_every=1000",
                   "train.checkpoint_every=10", "log.every=1", "log.name=requeued"),
            "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "10", "--resume", "none", "--dir", str(folder)]
    out = submit_py(args, cwd=tmp)
    assert out.returncode == 0, out.stderr
    entry = json.loads((folder / "sweep.json").read_text())["jobs"][0]
    job, run_dir = entry["job_id"], Path(entry["run_dir"])
    show = lambda: logs(folder) + "\n" + tail(log_file(run_dir, job))  # noqa: E731
    try:
        wait_for(lambda: latest_step(run_dir) >= 10, 180, "the first checkpoint", on_timeout=show)
        usr1 = subprocess.run(["scancel", "--signal=USR1", job], capture_output=True, text=True)
        assert usr1.returncode == 0, usr1.stderr
        # the task process hears it too, and SIGUSR1's default action killed it: the job FAILED
        wait_for(lambda: sum(e["event"] == "start" for e in read_jsonl(run_dir / EVENTS_FILE)) == 2, 240, "the second start",
                 on_timeout=show)
        first = latest_step(run_dir)
        wait_for(lambda: latest_step(run_dir) > first, 180, "a checkpoint of the second start", on_timeout=show)
        requeue = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        assert wait_job_done(job, 300, on_timeout=show) == "COMPLETED", show()
    finally:
        cancel_leftovers(folder)
    events = read_jsonl(run_dir / EVENTS_FILE)
    assert [(e["event"], e.get("exit_code")) for e in events] == [("start", None), ("end", 75)] * 2 + [("start", None), ("end", 0)], show()
    assert [e.get("requeue") for e in events[1::2]] == [True, False, False]  # asked for by USR1; SLURM's own requeue (SIGTERM)
    for start in events[2::2]:
        assert start["command"][start["command"].index("--resume") + 1] == "auto"
    assert [e["restart"] for e in events[0::2]] == [0, 1, 2]
    # every step trained once: the second attempt starts from the checkpoint the first wrote on SIGTERM
    assert [r["step"] for r in read_jsonl(run_dir / METRICS_FILE) if "loss" in r] == list(range(1, 401))
