"""One run per run directory, and one process at a time in it.

`run.json` names the run the directory holds: an id made from the config's hash, the start
time, the host and the pid. Every checkpoint records that id, so pruning only ever removes
checkpoints of the run that writes. A fresh start (no `--resume`) in a directory that already
holds a run is refused, or with `--overwrite` moves the old run aside; it never deletes it.
A resume that goes back to an earlier step moves the later checkpoints aside the same way
(`set_aside_later`), so that pruning and `--resume auto` only ever see the branch being trained.

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
from herbs.model.checkpoint import META
from herbs.run import (BEST_MODEL, CHECKPOINTS, CHECKPOINTS_DIR, EMA_MODEL, EVENTS_FILE, METRICS_FILE, RUN_FILE, checkpoint_step,
                       complete_checkpoints, run_traces, step_name)
from herbs.train.checkpoints import BEING_WRITTEN, LATEST, CheckpointDir

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# Temporaries of interrupted writes (herbs.atomic); only the lock holder writes here, so none of them is in use.
TEMPORARIES = (f"{CHECKPOINTS_DIR}/{BEING_WRITTEN}", *(str(in_progress(Path(name), "*")) for name in
                                                       (f"{CHECKPOINTS_DIR}/{LATEST}", BEST_MODEL, EMA_MODEL, RUN_FILE)))


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
        nested = next((d for d in sorted(run_dir.iterdir()) if d.is_dir() and ((d / RUN_FILE).is_file() or (d / EVENTS_FILE).is_file())), None)
        if nested is not None:
            lock.close()
            raise HerbsError(f"run directory '{run_dir}' holds the run directory '{nested}' of another run, which --overwrite would "
                             "move aside with it; choose another log.name, or move that run out")
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


def set_aside_later(run: Run, resumed_from: Path, step: int) -> None:
    """Main process, after a resume from `resumed_from` at `step`: move what this run had written after that step
    (every checkpoint of it, when `resumed_from` is not one of its own) to `<run>/abandoned-after-step-N/`.

    Pruning keeps the newest steps and `--resume auto` falls back to the next newest, so the branch that the
    resume left would otherwise outlive the new one's checkpoints and be resumed in their stead, and its best/
    would be the model tested. It is moved, never deleted, with a copy of the metrics logged so far."""
    checkpoints = run.dir / CHECKPOINTS_DIR
    elsewhere = resumed_from.resolve().parent != checkpoints.resolve()
    later = [path for path in complete_checkpoints(checkpoints)
             if CheckpointDir.written_by(path) in (run.id, None) and (elsewhere or checkpoint_step(path) > step)]
    # Without a later checkpoint, a later best/ is a crashed attempt's, which the resumed one retraces.
    models = [run.dir / name for name in (BEST_MODEL, EMA_MODEL) if (later or elsewhere) and (run.dir / name).is_dir()
              and (elsewhere or _read_json(run.dir / name / META).get("step", -1) > step)]
    if not later and not models:
        return
    aside = _unused(run.dir / f"abandoned-after-{step_name(step)}")
    (aside / CHECKPOINTS_DIR).mkdir(parents=True)
    if (run.dir / METRICS_FILE).is_file():
        shutil.copy2(run.dir / METRICS_FILE, aside / METRICS_FILE)
    for path in later + models:
        os.replace(path, aside / path.relative_to(run.dir))
    if elsewhere:  # `latest` named a checkpoint moved aside; the next save writes it again
        (checkpoints / LATEST).unlink(missing_ok=True)
    else:
        write_atomic(checkpoints / LATEST, resumed_from.name + "\n")
    if run.finished_step is not None and (elsewhere or run.finished_step > step):  # that branch finished, this one has not
        run.finished_step = None
        _write_json(run.dir / RUN_FILE, {k: v for k, v in _read_json(run.dir / RUN_FILE).items() if k != "finished_step"})
    came_from = f"{resumed_from}, outside {checkpoints}" if elsewhere else f"step {step}, which this run had gone past"
    log.warning("resumed from %s: moved %s to %s, which herbs never deletes (--resume can name its checkpoints)",
                came_from, ", ".join(str(path.relative_to(run.dir)) for path in later + models), aside)


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
    return _unused(run_dir.with_name(f"{run_dir.name}.old-{stamp}"))


def _unused(path: Path) -> Path:
    """`path`, or the first of `path-2`, `path-3`, ... that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")
