"""One run per run directory, and one process at a time in it.

`run.json` names the run the directory holds: an id made from the config's hash, the start
time, the host and the pid. Every checkpoint records that id, so pruning only ever removes
checkpoints of the run that writes. A fresh start (no `--resume`) in a directory that already
holds a run is refused, or with `--overwrite` moves the old run aside; it never deletes it.

`run.lock` is held with `flock` by the main process for as long as it trains; the kernel drops
the lock when that process ends, however it ends, so a killed run never leaves a stale lock.
Under `accelerate launch` only the main process takes it, and its verdict is broadcast, so a
refused start stops every rank instead of leaving the others waiting.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from accelerate.utils import broadcast_object_list

from herbs import lockfile
from herbs.config import Config
from herbs.errors import HerbsError
from herbs.atomic import in_progress, restore_replaced, write_atomic
from herbs.run import BEST_MODEL, CHECKPOINTS, CHECKPOINTS_DIR, RUN_FILE, run_traces
from herbs.train.checkpoints import BEING_WRITTEN, LATEST

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# Temporaries of interrupted writes (herbs.atomic); only the lock holder writes here, so none of them is in use.
TEMPORARIES = (f"{CHECKPOINTS_DIR}/{BEING_WRITTEN}", *(str(in_progress(Path(name), "*")) for name in
                                                       (f"{CHECKPOINTS_DIR}/{LATEST}", BEST_MODEL, RUN_FILE)))


@dataclass
class Run:
    dir: Path
    id: str
    finished_step: Optional[int]  # the step at which this run last completed (test evaluated), if it did
    lock: Optional[IO]  # main process: the open lock file; closing it (or exiting) releases the lock

    def finished(self, step: int, total_steps: int) -> bool:
        """Whether resuming at `step` has nothing left to do."""
        return self.finished_step == step and step >= total_steps

    def finish(self, step: int, is_main: bool) -> None:
        if is_main:
            identity = json.loads((self.dir / RUN_FILE).read_text())
            _write_json(self.dir / RUN_FILE, {**identity, "finished_step": step})


def claim_run_directory(run_dir: Path, config: Config, accelerator, *, resume: str | None, overwrite: bool) -> Run:
    """Collective: lock `run_dir` for this run (main process) and tell every rank the run's id, or
    raise the same one-sentence refusal on every rank."""
    problem, identity, lock = None, None, None
    if accelerator.is_main_process:
        try:
            lock, identity = _claim(run_dir, config, resume, overwrite)
        except HerbsError as err:
            problem = str(err)
    if accelerator.num_processes > 1:
        problem, identity = broadcast_object_list([problem, identity])
    if problem:
        raise HerbsError(problem)
    return Run(run_dir, identity["id"], identity.get("finished_step"), lock)


def _claim(run_dir: Path, config: Config, resume: str | None, overwrite: bool) -> tuple[IO, dict]:
    lock = _lock(run_dir)
    previous = _read_json(run_dir / RUN_FILE)
    traces = run_traces(run_dir)
    if not resume and traces:
        if not overwrite:
            lock.close()
            started = f" (started {previous['started']} on {previous['host']})" if "started" in previous else ""
            raise HerbsError(
                f"run directory '{run_dir}' already holds a run{started}; continue it with --resume auto, "
                "choose another log.name, or pass --overwrite to move it aside"
            )
        aside = _aside_name(run_dir)
        run_dir.rename(aside)  # the lock file moves with it: take the new directory's lock before letting go
        run_dir.mkdir()
        old, lock = lock, _lock(run_dir)
        old.close()
        log.warning("--overwrite: moved the earlier run in %s to %s", run_dir, aside)
        previous = {}
    for replaced in ("*", CHECKPOINTS):  # every directory replaced here (best/, ema/), and the checkpoints
        restore_replaced(run_dir / replaced)
    for pattern in TEMPORARIES:
        for leftover in run_dir.glob(pattern):
            log.warning("removing %s, left by an interrupted write", leftover)
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
    identity = _identity(config)
    if resume and "id" in previous:  # a resumed run is the same run, in a new process
        identity = {**identity, "id": previous["id"], "finished_step": previous.get("finished_step")}
    _write_json(run_dir / RUN_FILE, identity)
    return lock, identity


def _lock(run_dir: Path) -> IO:
    try:
        lock = os.fdopen(lockfile.take(run_dir / LOCK_FILE), "r+")
    except lockfile.Held as held:
        raise HerbsError(
            f"run directory '{run_dir}' is in use by {held.text.strip() or 'another process'}; "
            "wait for that run to end or stop it, or choose another log.name"
        ) from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    lock.flush()
    return lock


def _identity(config: Config) -> dict:
    config_sha256 = hashlib.sha256(config.to_yaml().encode()).hexdigest()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    host, pid = socket.gethostname(), os.getpid()
    run_id = hashlib.sha256(f"{config_sha256} {started} {host} {pid}".encode()).hexdigest()[:12]
    return {"id": run_id, "config_sha256": config_sha256, "started": started, "host": host, "pid": pid}


def _aside_name(run_dir: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    return aside


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")
