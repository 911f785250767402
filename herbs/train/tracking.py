"""Where metrics go: `metrics.jsonl` in the run directory (always) and Weights & Biases (optional).

W&B runs through Accelerate's tracker. Without an API key it writes offline into the run
directory (`wandb sync <run>/wandb/offline-run-*` uploads it later); a resumed run continues
the same W&B run, whose id is kept in `<run>/wandb_id`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from herbs.config import Config

log = logging.getLogger(__name__)


def wandb_mode(config: Config) -> str:
    if config.log.wandb_mode != "auto":
        return config.log.wandb_mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def start_wandb(accelerator, config: Config, run_dir: Path) -> None:
    """Collective (all ranks call it); only the main process talks to W&B."""
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    if accelerator.is_main_process:
        id_file.write_text(run_id + "\n")
    accelerator.init_trackers(
        project_name=config.log.project,
        config=config.to_dict(),
        init_kwargs={"wandb": {"name": config.log.name, "dir": str(run_dir), "id": run_id, "resume": "allow",
                               "mode": wandb_mode(config)}},
    )


class MetricsFile:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Forget records past `step`: a resumed run writes them again. A line that is not JSON (a
        write cut short, e.g. by a full disk) is dropped too, with a warning."""
        if self.enabled and self.path.is_file():
            kept, torn = [], 0
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    torn += 1
                    continue
                if record.get("step", 0) <= step:
                    kept.append(line + "\n")
            if torn:
                log.warning("%s: dropped %d line(s) that are not complete JSON records (a write was cut short)", self.path, torn)
            self.path.write_text("".join(kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            data = memoryview((json.dumps(record) + "\n").encode())
            with self.path.open("ab", buffering=0) as f:  # unbuffered: a failed write is known here, not at close
                end = f.seek(0, os.SEEK_END)
                try:
                    while data:
                        data = data[f.write(data):]
                except OSError:
                    f.truncate(end)  # no partial line left behind (truncating needs no space)
                    raise
