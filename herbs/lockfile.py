"""An exclusive lock on a file that goes with its process: `flock`, taken without waiting; the
kernel drops it when the holder exits, however it exits, so no stale lock is ever left.

A training run's `run.lock` and a shard writer's `.herbs-shard.lock` are both this; what each
writes into its file (who holds it, which files an unfinished write made) is the caller's.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Held(Exception):
    """Another process holds the lock; `text` is what it wrote into the file."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def take(path: Path) -> int:
    """An open descriptor of `path` (created if missing) that holds its lock, positioned at 0."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 4096).decode(errors="replace")
            os.close(fd)
            raise Held(text) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder before us removed the file as we opened it: lock the new one
