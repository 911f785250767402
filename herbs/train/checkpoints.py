"""Training checkpoints: `accelerator.save_state` plus the loop's own position, crash-safe.

Layout under `<run>/checkpoints/`:

    step-0000120/        complete checkpoint: Accelerate's state (model, optimizer, grad scaler,
                         every rank's RNG) and trainer_state.json (epoch, batch, counters)
    .step-0000130.tmp/   being written; never read, removed by the next save
    latest               name of the newest complete checkpoint, replaced atomically, written last

A directory only gets its `step-*` name once every rank has finished writing into it, so a
crash at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from herbs.errors import HerbsError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST = "latest"


@dataclass
class TrainerState:
    """Where the loop is, and what it has counted; enough to continue step-exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch: int = 0  # micro-batches of `epoch` already consumed
    best_val: float = -1.0  # best validation ensemble top-1 so far
    best_step: int = -1
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    skipped_samples: int = 0


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class CheckpointDir:
    def __init__(self, root: str | Path, keep: int):
        self.root = Path(root)
        self.keep = keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; unfinished ones are ignored with a warning."""
        for tmp in sorted(self.root.glob(".step-*.tmp")) if self.root.is_dir() else []:
            log.warning("ignoring incomplete checkpoint %s (its writing was interrupted)", tmp)
        pointer = self.root / LATEST
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if (named / STATE_FILE).is_file():
                return named
            log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", pointer, named)
        done = self.complete()
        return done[-1] if done else None

    def save(self, accelerator, state: TrainerState) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        final = self.root / step_name(state.step)
        tmp = self.root / f".{final.name}.tmp"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():  # the same step saved again (e.g. preempted right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomic(self.root / LATEST, final.name + "\n")
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator, path: Path) -> TrainerState:
        accelerator.load_state(str(path))
        data = json.loads((path / STATE_FILE).read_text())
        return TrainerState(**data)


def resolve_resume(resume: str | None, checkpoints: CheckpointDir) -> Path | None:
    """`auto` -> newest complete checkpoint of this run (None: start fresh); a path -> that checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        return checkpoints.latest()
    path = Path(resume)
    if path.is_dir() and not (path / STATE_FILE).is_file():
        inner = CheckpointDir(path, keep=1).latest()  # a run's checkpoints/ directory or a run directory
        if inner is None:
            inner = CheckpointDir(path / "checkpoints", keep=1).latest()
        path = inner if inner is not None else path
    if not (path / STATE_FILE).is_file():
        raise HerbsError(f"--resume {resume}: no complete checkpoint there; pass a checkpoints/step-NNNNNNN directory or 'auto'")
    return path
