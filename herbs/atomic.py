"""Files and directories that a reader sees whole or not at all: each is written under its
in-progress name beside its place, then renamed into place in one step. A writer killed midway
leaves only the in-progress name, which the next start of its owner removes.

A directory cannot be renamed over another one, so replacing one takes two renames: the old
directory goes aside, the new one comes in (`replace_dir`). A writer killed between them leaves
the old one aside and nothing in place; `restore_replaced` puts it back. A directory is removed
the other way round (`remove_dir`): it leaves its name in one rename, then is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def in_progress(path: Path, writer: str = "") -> Path:
    """Where `path` is written before its rename: `.NAME.tmp`, `.NAME.tmp-WRITER` where several processes may write it
    (a glob pattern for either, given one)."""
    return path.with_name(f".{path.name}.tmp" + (f"-{writer}" if writer else ""))


def write_atomic(path: Path, text: str, *, replace: bool = True) -> bool:
    """`text` at `path`, whole. `replace=False`: only where nothing is at `path` yet, so of two writers at once
    one wins, whole; False for the other."""
    tmp = in_progress(path, str(os.getpid()))
    try:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # a file name that is not UTF-8 keeps its bytes
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails where the name is taken, never replaces
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def remove_dir(path: Path) -> None:
    """Delete a directory that no reader may see half deleted: a kill midway leaves only its in-progress name."""
    doomed = in_progress(path)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def set_aside(path: Path, writer: str) -> Path:
    """Where `replace_dir` keeps the directory it replaces until the new one is in place: `.NAME.old-WRITER`."""
    return path.with_name(f".{path.name}.old-{writer}")


def replace_dir(tmp: Path, path: Path) -> None:
    """Rename the complete directory `tmp` to `path`, replacing the directory there; `path` is never missing
    except between two renames, and a kill there is undone by the next `restore_replaced(path)`."""
    restore_replaced(path)
    if not path.exists():
        os.replace(tmp, path)
        return
    old = set_aside(path, str(os.getpid()))
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)


def restore_replaced(path: Path) -> None:
    """Finish the replaces of `path` (its name may be a glob pattern) whose writers were killed: a directory set
    aside with nothing in its place goes back; one whose successor is in place is removed."""
    for old in sorted(path.parent.glob(set_aside(path, "*").name)):
        target = old.with_name(old.name[1:].rsplit(".old-", 1)[0])
        if target.exists():
            log.warning("removing %s, the old copy of %s left by an interrupted replace", old, target)
            shutil.rmtree(old)
        else:
            log.warning("restoring %s from %s: the write that was replacing it was interrupted", target, old)
            os.replace(old, target)
