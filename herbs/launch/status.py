"""`herbs status DIR`: the jobs of a submission, from its `sweep.json` and each run's own records;
or, for a run directory, its checkpoints and the shape of the run that wrote each.

State comes from SLURM (sacct, then squeue) and, where SLURM has nothing (the local executor, a
job that left the accounting), from the run's attempt records (`herbs.run.EVENTS_FILE`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from herbs.atomic import write_atomic
from herbs.errors import LaunchError, not_a_directory
from herbs.run import CHECKPOINTS_DIR, EXIT_REQUEUE, METRICS_FILE, RUN_FILE, STATE_FILE, complete_checkpoints, read_events, read_jsonl


RECORD = "sweep.json"  # in a submission's directory: what `herbs submit` submitted, and the job ids


def write_record(folder: Path, record: dict, *, first: bool = False) -> bool:
    """The submission's record, replaced whole; `first`: only where no submission's is yet (False then)."""
    return write_atomic(folder / RECORD, json.dumps(record, indent=2) + "\n", replace=not first)


def read_metrics(run_dir: Path) -> tuple[int | None, float | None]:
    """(last step, best val/ensemble_top1) from metrics.jsonl."""
    last, best = None, None
    for rec in read_jsonl(run_dir / METRICS_FILE):
        if isinstance(rec.get("step"), int):
            last = rec["step"] if last is None else max(last, rec["step"])
        acc = rec.get("val/ensemble_top1")
        if isinstance(acc, (int, float)):
            best = acc if best is None else max(best, acc)
    return last, best


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Job id -> SLURM state, from sacct (squeue for what sacct has not got), array ranges read as submitit reads them."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    ids = ",".join(sorted({str(j).split("_")[0] for j in job_ids if j}))
    states: dict[str, str] = {}
    if not ids:
        return states
    reader = SlurmInfoWatcher()
    for command in (["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ids], ["squeue", "-h", "-o", "%i|%T", "-j", ids]):
        out = subprocess.run(command, capture_output=True, text=True) if shutil.which(command[0]) else None
        if out is None or out.returncode != 0:
            continue
        for job, info in reader.read_info("JobID|State\n" + out.stdout).items():
            states.setdefault(job, (info["State"].split() or ["UNKNOWN"])[0])  # "CANCELLED by 0" -> CANCELLED
    return states


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError, PermissionError):
        return False


def event_state(events: list[dict]) -> str | None:
    """What the run's own start/end records say: RUNNING, COMPLETED, REQUEUED, STOPPED (checkpoint written, no
    requeue asked for: scancel, Ctrl-C), FAILED."""
    if not events:
        return None
    last = events[-1]
    if last.get("event") == "start":
        return "RUNNING"
    if last.get("exit_code") == 0:
        return "COMPLETED"
    if last.get("exit_code") == EXIT_REQUEUE:
        return "REQUEUED" if last.get("requeue") else "STOPPED"
    return "FAILED"


def read_record(folder: Path) -> dict:
    path = folder / RECORD
    if not path.is_file():
        raise LaunchError(f"'{folder}' holds no {RECORD}; pass the directory that herbs submit printed")
    try:
        record = json.loads(path.read_text())
        if all(isinstance(job["name"], str) and isinstance(job["run_dir"], str) for job in record["jobs"]):
            return record
    except (ValueError, TypeError, KeyError):
        pass
    raise LaunchError(f"'{path}' is not a submission record that herbs submit wrote (damaged or edited); submit again with another --dir")


def status_rows(folder: Path) -> list[dict]:
    record = read_record(folder)
    slurm = record.get("executor") == "slurm"
    states = slurm_states([j["job_id"] for j in record["jobs"] if j.get("job_id")]) if slurm else {}
    rows = []
    for entry in record["jobs"]:
        run_dir = Path(entry["run_dir"])
        jid = str(entry.get("job_id") or "")
        # this job's attempts only: the run directory also holds those of earlier submissions that trained it
        label = jid if slurm else f"local-{jid}"  # what herbs.run.job_label calls it inside the job
        events = [e for e in read_events(run_dir) if jid and e.get("job") == label]
        last, best = read_metrics(run_dir)
        if slurm:
            state = states.get(jid) or event_state(events) or ("UNKNOWN" if jid else "NOT SUBMITTED")
        else:
            state = event_state(events) or ("PENDING" if jid else "NOT SUBMITTED")
            if state in ("RUNNING", "PENDING") and jid and not _pid_alive(jid):
                state = "FAILED"  # the local job is gone without an end record (or before training began)
        starts = sum(1 for e in events if e.get("event") == "start")
        rows.append({"name": entry["name"], "job_id": jid, "state": state, "restarts": max(starts - 1, 0),
                     "last_step": last, "best_val_top1": best, "run_dir": str(run_dir)})
    return rows


# A checkpoint's columns: trainer_state.json's key for each. The data position is always there;
# the run's shape is 0 or absent where the herbs that wrote it did not record it.
POSITION_COLUMNS = {"STEP": "step", "EPOCH": "epoch", "BATCH": "batch"}
SHAPE_COLUMNS = {"PROCESSES": "processes", "PER-PROCESS BATCH": "per_process_batch", "ACCUMULATION": "accumulation",
                 "GLOBAL BATCH": "global_batch", "LANES": "lanes"}
CHECKPOINT_COLUMNS = {**POSITION_COLUMNS, **SHAPE_COLUMNS}


def checkpoint_rows(run_dir: Path) -> list[dict]:
    """One row per complete checkpoint of the run, lowest step first."""
    rows = []
    for checkpoint in complete_checkpoints(run_dir / CHECKPOINTS_DIR):
        try:
            state = json.loads((checkpoint / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue  # damaged: a resume names it
        if not isinstance(state, dict):
            continue
        rows.append({"checkpoint": checkpoint.name, **{key: state.get(key) for key in POSITION_COLUMNS.values()},
                     **{key: state.get(key) or None for key in SHAPE_COLUMNS.values()}})
    return rows


def format_checkpoints(rows: list[dict]) -> str:
    header = ["CHECKPOINT", *CHECKPOINT_COLUMNS]
    body = [[r["checkpoint"], *("-" if r[key] is None else str(r[key]) for key in CHECKPOINT_COLUMNS.values())] for r in rows]
    return columns(header, body)


def format_table(rows: list[dict]) -> str:
    header = ["NAME", "JOB", "STATE", "RESTARTS", "LAST STEP", "BEST VAL TOP-1", "RUN DIR"]
    body = [[r["name"], r["job_id"] or "-", r["state"], str(r["restarts"]),
             "-" if r["last_step"] is None else str(r["last_step"]),
             "-" if r["best_val_top1"] is None else f"{r['best_val_top1']:.2f}%", r["run_dir"]] for r in rows]
    return columns(header, body)


def columns(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body])


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        raise LaunchError(f"'{folder}' {not_a_directory(folder)}; pass the directory that herbs submit printed, or a run directory")
    if not (folder / RECORD).is_file() and ((folder / CHECKPOINTS_DIR).is_dir() or (folder / RUN_FILE).is_file()):
        rows, table = checkpoint_rows(folder), format_checkpoints
    else:
        rows, table = status_rows(folder), format_table
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    if not rows and table is format_checkpoints and not args.json:
        print("no complete checkpoint yet")
    return 0
