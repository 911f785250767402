"""Files and directories that a reader sees whole or not at all: each is written under its
in-progress name beside its place, then renamed into place in one step. A writer killed midway
leaves only the in-progress name, which the next start of its owner removes.
"""

from __future__ import annotations

import os
from pathlib import Path


def in_progress(path: Path, writer: str = "") -> Path:
    """Where `path` is written before its rename: `.NAME.tmp`, `.NAME.tmp-WRITER` where several processes may write it
    (a glob pattern for either, given one)."""
    return path.with_name(f".{path.name}.tmp" + (f"-{writer}" if writer else ""))


def write_atomic(path: Path, text: str) -> None:
    tmp = in_progress(path, str(os.getpid()))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
