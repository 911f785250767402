"""What the tests share: the checkout, the tiny model, demo shards, training runs, SLURM, data files.

    runs        the micro model (the one tiny-model definition), demo shards, training processes
    slurm       the local SLURM cluster: skip or fail without one, job states
    data        small real files: JPEG/PNG bytes, CUB and NABirds layouts, damaged shards
    reference   the original code's numbers (tests/fixtures/herbs_reference)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, on_timeout=None, poll: float = 0.2):
    """Poll until `predicate()` is truthy and return its value; fail naming `what` after `timeout` s, or
    as soon as `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(poll)
