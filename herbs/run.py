"""What a run is, for everything that starts, stops or reads one: the training loop, the preemption
handler, the launchers, `herbs status` and the tests all take these facts from here.

Torch-free on purpose: the launchers import it on login nodes and inside SLURM's batch script.

    <train.output_dir>/<log.project>/<log.name>/     the run directory (`run_dir`)
        launch.jsonl     one record per start and end of an attempt (`append_event`, `read_events`)
        metrics.jsonl    one record per logged step and evaluation
        requeue          left by a preempted run: it wrote a checkpoint and asks to be started again
    exit code 75         preempted, checkpoint written, requeue me (EX_TEMPFAIL: "try again")
    exit code 2          a mistake of the user's, told in one sentence (herbs.errors.EXIT_USAGE)
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
from pathlib import Path
from typing import Mapping

EXIT_REQUEUE = 75
REQUEUE_MARKER = "requeue"
EVENTS_FILE = "launch.jsonl"
METRICS_FILE = "metrics.jsonl"
SUBMISSIONS = "submitit"  # <output_dir>/<project>/submitit/<name>-<time>: a submission's own files


def run_dir(config) -> Path:
    """The run directory a config trains in (not created here)."""
    return Path(config.train.output_dir) / config.log.project / (config.log.name or "run")


def job_label(env: Mapping[str, str] | None = None) -> str:
    """`123`, `123_4` for an array task, `local-PID` outside SLURM: names the attempt's log file and events."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local-{os.getpid()}"


def log_file(run_dir_: Path, job: str) -> Path:
    """Where an attempt's output goes: `slurm-<job>.log`, or `local-<id>.log` for one started here."""
    return Path(run_dir_) / (f"{job}.log" if job.startswith("local-") else f"slurm-{job}.log")


def rendezvous_port(job_id: str | int) -> int:
    """The processes' meeting port, derived from the job id: 15000-29999, below Linux's ephemeral range."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 15000 + int(digits) % 15000


def restart_count(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return int(env.get("SLURM_RESTART_COUNT") or 0)


def append_event(run_dir_: Path, **record) -> None:
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), **record}
    with open(Path(run_dir_) / EVENTS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def start_event(run_dir_: Path, command: list[str]) -> None:
    job = job_label()
    append_event(run_dir_, event="start", job=job, restart=restart_count(), host=socket.gethostname(), command=command)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl, launch.jsonl); a line still being written is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_events(run_dir_: Path) -> list[dict]:
    return read_jsonl(Path(run_dir_) / EVENTS_FILE)
