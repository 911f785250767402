"""Training checkpoints: `accelerate.save_state` plus the loop's own position, crash-safe and checked.

Layout under `<run>/checkpoints/`:

    step-0000120/        complete checkpoint: Accelerate's state (model, optimizer, grad scaler,
                         every rank's RNG), trainer_state.json (epoch, batch, counters) and
                         checkpoint.json (the run that wrote it, what a resume must match, the
                         sha256 of every other file)
    .step-0000130.tmp/   being written; never read, removed by the next save
    latest               name of the newest complete checkpoint, replaced atomically, written last

A directory only gets its `step-*` name once every rank has finished writing into it, so a
crash at any moment leaves the previous checkpoint loadable. A resume checks the files against
their sha256 before loading: Accelerate itself skips an unreadable RNG state with a log line, and
a truncated weights file would be a traceback. `--resume auto` then falls back to the previous
complete checkpoint, saying so; an explicit `--resume PATH` stops with one sentence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from accelerate.utils import broadcast_object_list

from herbs.data.tario import sha256_file
from herbs.errors import CheckpointError, HerbsError
from herbs.atomic import in_progress, remove_dir, replace_dir, write_atomic
from herbs.run import CHECKPOINTS_DIR, STATE_FILE, STEP_PREFIX, complete_checkpoints, step_name
from herbs.train.diskspace import mount_point, out_of_space
from herbs.train.fit import check_fit

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
LATEST = "latest"
BEING_WRITTEN = in_progress(Path(f"{STEP_PREFIX}*")).name  # under checkpoints/: a checkpoint whose writing has not finished


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
    # The shape of the run that wrote the checkpoint (0: written by a herbs that did not record it).
    # A resume keeps the global batch, the per-process batch and the lanes, on any number of processes.
    processes: int = 0
    per_process_batch: int = 0
    accumulation: int = 0  # micro-batches per optimizer step on each process; `batch` counts in these
    global_batch: int = 0
    lanes: int = 0  # the training data plan's lanes (herbs.data.plan)
    zero_stage: int = 0  # DeepSpeed ZeRO's stage; 0: not DeepSpeed (Accelerate's own checkpoint layout)


class CheckpointDir:
    def __init__(self, root: str | Path, keep: int, run_id: str | None = None, requires: dict | None = None):
        """`run_id`: the run that saves here (only its checkpoints are pruned); `requires`: what a
        checkpoint must match to be resumed by this run (`herbs.train.fit.requirements`)."""
        self.root = Path(root)
        self.keep = keep
        self.run_id, self.requires = run_id, requires or {}

    def complete(self) -> list[Path]:
        """Complete checkpoints, lowest step first."""
        return complete_checkpoints(self.root)

    def latest(self, say: bool = True) -> Path | None:
        """The newest complete checkpoint; unfinished ones are ignored (with a warning if `say`)."""
        newest = self.newest_first(say)
        return newest[0] if newest else None

    def newest_first(self, say: bool = True) -> list[Path]:
        """Complete checkpoints to resume from, best first: the one `latest` names, then by step."""
        for tmp in sorted(self.root.glob(BEING_WRITTEN)) if self.root.is_dir() and say else []:
            log.warning("ignoring incomplete checkpoint %s (its writing was interrupted)", tmp)
        done = self.complete()[::-1]
        pointer = self.root / LATEST
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if named in done:
                return [named] + [p for p in done if p != named]
            if say:
                log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", pointer, named)
        return done

    def save(self, accelerator, state: TrainerState) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        final = self.root / step_name(state.step)
        tmp = in_progress(final)
        is_main = accelerator.is_main_process
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            if is_main:
                (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1))
            accelerator.wait_for_everyone()
            if is_main:  # every rank's files are there now
                files = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
                record = {"run": self.run_id, "requires": self.requires, "files": files}
                (tmp / CHECKPOINT_FILE).write_text(json.dumps(record, indent=1))
        except Exception as err:
            full = out_of_space(err, tmp)  # before the partial files are removed: they are what filled the disk
            if is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise self.no_space(final) from err
            raise
        if is_main:
            replace_dir(tmp, final)  # final exists when a step is saved again (preempted right after a periodic save)
            with self.guard_space(self.root / LATEST):
                write_atomic(self.root / LATEST, final.name + "\n")
            self.prune(keep_also=final)
        accelerator.wait_for_everyone()
        return final

    def prune(self, keep_also: Path) -> None:
        """Keep this run's newest `keep` checkpoints (by step) and `keep_also`; never touch another run's."""
        mine = [p for p in self.complete() if self.written_by(p) in (self.run_id, None)]
        for old in mine[: -self.keep]:
            if old == keep_also:
                continue
            try:
                remove_dir(old)  # never a partial step-N that still reads as complete
            except OSError as err:  # a checkpoint kept too many is no reason to stop training
                log.warning("could not remove the old checkpoint %s (%s); training goes on", old, err)

    @staticmethod
    def written_by(path: Path) -> str | None:
        """The id of the run that wrote the checkpoint (None: written before herbs recorded it)."""
        try:
            return json.loads((path / CHECKPOINT_FILE).read_text()).get("run")
        except (OSError, ValueError):
            return None

    def resume(self, accelerator, resume: str | None) -> tuple[TrainerState, Path | None]:
        """Collective. The state to start from and the checkpoint it came from: fresh (no `resume`,
        or `auto` without a checkpoint), else the checkpoint `resume` names, checked first."""
        if not resume:
            return TrainerState(), None
        candidates = self.newest_first() if resume == "auto" else [explicit_checkpoint(resume)]
        damaged = []
        for path in candidates:
            found = list(self.problems(path)) if accelerator.is_main_process else [None, None]
            if accelerator.num_processes > 1:
                found = broadcast_object_list(found)  # every rank takes the same checkpoint, or stops
            damage, misfit = found
            if misfit:
                raise CheckpointError(misfit)
            if damage is None:
                if damaged and accelerator.is_main_process:
                    log.warning("resuming from %s, the newest intact checkpoint, instead of %s", path.name, ", ".join(damaged))
                return self.load(accelerator, path), path
            if resume != "auto":
                raise CheckpointError(f"--resume {resume}: checkpoint {path} is damaged: {damage}; "
                                      "resume from an earlier checkpoint, or with --resume auto (the newest intact one)")
            if accelerator.is_main_process:
                log.warning("checkpoint %s is damaged: %s; falling back to the checkpoint before it", path, damage)
            damaged.append(path.name)
        if damaged:
            raise CheckpointError(f"every checkpoint in {self.root} is damaged ({', '.join(damaged)}); "
                                  "start the run afresh with --overwrite (the old one is moved aside)")
        return TrainerState(), None

    def problems(self, path: Path) -> tuple[str | None, str | None]:
        """(why the checkpoint is damaged, why this run cannot resume it); None where it is not."""
        try:
            record = json.loads((path / CHECKPOINT_FILE).read_text())
            files = dict(record["files"])
        except FileNotFoundError:
            log.warning("%s was written without checksums (by an older herbs): its files are not checked", path)
            return None, None
        except (OSError, ValueError, KeyError, TypeError):
            return f"{CHECKPOINT_FILE} cannot be read", None
        for name, digest in files.items():
            if not (path / name).is_file():
                return f"{name} is missing", None
            if sha256_file(path / name) != digest:
                return f"{name} does not match the sha256 recorded when it was written", None
        try:
            check_fit(str(path), record.get("requires", {}), self.requires)
        except CheckpointError as err:
            return None, str(err)
        return None, None

    def load(self, accelerator, path: Path) -> TrainerState:
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        if state.zero_stage and state.processes not in (0, accelerator.num_processes):
            from herbs.train.zero_resize import load_resized  # torch.distributed and DeepSpeed's layout: only here

            load_resized(accelerator, path, state.zero_stage)
        else:
            accelerator.load_state(str(path))
        return state

    def no_space(self, path: Path) -> HerbsError:
        previous = self.latest()
        intact = f"the previous checkpoint {previous.name} is intact" if previous else "no checkpoint had been written yet"
        return HerbsError(f"no space left on {mount_point(path)} while writing {path}; {intact}; "
                          "free some space and continue with --resume auto")

    @contextmanager
    def guard_space(self, path: Path) -> Iterator[None]:
        """Running out of disk space while writing `path` becomes one sentence (the writer removes its own temporaries)."""
        try:
            yield
        except HerbsError:
            raise
        except Exception as err:
            if not out_of_space(err, path):
                raise
            raise self.no_space(path) from err


def to_resume(root: Path, resume: str | None) -> tuple[Path, TrainerState] | None:
    """The checkpoint a resume would start from, and its trainer state, read from the files before
    the process group exists: the run's global batch and lanes decide the accumulation and the
    loaders. None when there is none (a damaged one is named and passed over by the resume itself); a damaged
    trainer state is passed over here too, so that the plan is checked against the checkpoint that is resumed."""
    if not resume:
        return None
    # Quiet: the resume itself lists the checkpoints again, and says what it passes over.
    candidates = CheckpointDir(root, keep=1).newest_first(say=False) if resume == "auto" else [explicit_checkpoint(resume)]
    for path in candidates:  # the first whose trainer state is intact: the one resumed, or one of the same run before it
        try:
            digest = json.loads((path / CHECKPOINT_FILE).read_text())["files"][STATE_FILE]
        except (OSError, ValueError, KeyError, TypeError):
            digest = None  # written without checksums, or damaged: the resume says which
        try:
            if digest in (None, sha256_file(path / STATE_FILE)):
                return path, TrainerState(**json.loads((path / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            pass
    return None


def explicit_checkpoint(resume: str) -> Path:
    """The checkpoint `--resume PATH` means: a step directory, or the newest in a checkpoints/ or run directory."""
    path = Path(resume)
    if path.is_dir() and not (path / STATE_FILE).is_file():
        inner = CheckpointDir(path, keep=1).latest()
        if inner is None:
            inner = CheckpointDir(path / CHECKPOINTS_DIR, keep=1).latest()
        path = inner if inner is not None else path
    if not (path / STATE_FILE).is_file():
        raise HerbsError(f"--resume {resume}: no complete checkpoint there; pass a checkpoints/step-NNNNNNN directory or 'auto'")
    return path
