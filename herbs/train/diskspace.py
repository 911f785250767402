"""Telling a full disk from other write failures, whatever library did the writing.

A plain write says ENOSPC; safetensors puts "No space left on device" in its message; torch.save
only says "unexpected pos" or "file write failed". So a failed write also counts as a full disk
when its filesystem has (almost) no space left right after it failed.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from herbs.errors import HerbsError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 1 << 20  # bytes: less than this free after a failed write means the write ran out of space


def out_of_space(err: BaseException, path: Path) -> bool:
    """Whether `err`, raised while writing `path`, means its filesystem is full (check before removing what was written)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        stat = os.statvfs(existing_parent(path))
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < NEARLY_FULL


def existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def space_for_run(run_dir: Path) -> Iterator[None]:
    """A full disk under the run directory that no writer of its own named (the lock, the config, the
    attempt records, ...) becomes one sentence; the checkpoints and metrics writers say more themselves."""
    try:
        yield
    except HerbsError:
        raise
    except OSError as err:
        if not out_of_space(err, run_dir):
            raise
        raise HerbsError(f"no space left on {mount_point(run_dir)} for the run directory {run_dir}; free some space there "
                         "(or set train.output_dir to another disk) and start again: --resume auto continues from the last checkpoint") from err


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path`: what a user recognises as the full device."""
    path = existing_parent(path)
    while not os.path.ismount(path):
        path = path.parent
    return path
