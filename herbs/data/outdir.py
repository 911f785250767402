"""The directory `herbs shard` writes into, and which of its files are herbs' to replace.

A write is allowed into a new or empty directory, over an interrupted write, and over a
finished one (its manifest.json) with `overwrite`; it removes only files that the earlier
manifest or write recorded, and refuses anything else in the way. An overwrite writes into
OUT/.herbs-shard.new/ and replaces the earlier output only once it is complete, so a failed or
interrupted overwrite (a file it cannot read, Ctrl-C, a full disk) leaves it whole. For the whole
write the writer holds an advisory lock on OUT/.herbs-shard.lock, which the OS releases however the
process ends, so a second writer into the same directory stops at once. The lock file also
records the writer (host, pid) and each file name before that file is created: after a
crash or Ctrl-C it tells the next write which files were herbs'. A finished write removes it.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Optional

from herbs import lockfile
from herbs.errors import DataError
from herbs.data.manifest import MANIFEST, read_manifest

LOCK = ".herbs-shard.lock"
STAGING = ".herbs-shard.new"  # where an overwrite writes; only ever this writer's
SHARD_LIKE = (".tar", ".tar.tmp", ".idx", ".idx.tmp")  # what a write here could overwrite


class OutputDir:
    """Use as `with OutputDir(out, overwrite) as output:`; name every file through `output.new(name)`."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path, self.overwrite = path, overwrite
        self.fd: Optional[int] = None
        self.recorded = False
        self.replacing: set[str] = set()  # the earlier output's files, kept until the new one is complete
        self.target = path  # where the files go: `path`, or STAGING inside it for an overwrite

    def __enter__(self) -> "OutputDir":
        if self.path.exists() and not self.path.is_dir():
            raise DataError(f"'{self.path}' is a file; pass a directory (new or empty) for the shards")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the shards directory '{self.path}' ({err.strerror}); choose a writable place") from None
        left = self.lock()
        try:
            shutil.rmtree(self.path / STAGING, ignore_errors=True)  # an interrupted overwrite's, never read
            previous = self.previous_files(left[1:])
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.record(f"{socket.gethostname()} {os.getpid()}", *sorted(previous))
            if MANIFEST in previous:  # a finished output: it stays readable until the new one replaces it
                self.replacing, self.target = previous, self.path / STAGING
                self.target.mkdir()
            for name in sorted(previous - self.replacing):  # an interrupted write's: no manifest lists them
                (self.path / name).unlink(missing_ok=True)
        except BaseException:
            self.release(remove=not left and not self.recorded)  # any record of files stays for the next writer
            raise
        return self

    def __exit__(self, kind, *_) -> None:
        if self.target != self.path:
            if kind is None:
                self.replace_earlier()
            else:
                shutil.rmtree(self.target, ignore_errors=True)
        self.release(remove=kind is None)

    def replace_earlier(self) -> None:
        """Swap the complete new output in for the earlier one (its files are recorded, so a kill midway leaves
        nothing that the next write does not remove): the manifest goes first and comes last."""
        written = sorted(p.name for p in self.target.iterdir())
        (self.path / MANIFEST).unlink(missing_ok=True)
        for name in sorted(self.replacing - set(written)):
            (self.path / name).unlink(missing_ok=True)
        for name in sorted(written, key=lambda name: name == MANIFEST):
            os.replace(self.target / name, self.path / name)
        self.target.rmdir()

    def new(self, name: str) -> Path:
        """The path of a file about to be written, recorded first as the writer's."""
        self.record(name)
        return self.target / name

    def finished(self, name: str) -> None:
        """A file from `new` is complete (ShardWriter renamed it into place): nothing left to do here."""

    def write_manifest(self, name: str, text: str) -> None:
        tmp = self.new(name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.target / name)

    def record(self, *lines: str) -> None:
        os.write(self.fd, "".join(line + "\n" for line in lines).encode())
        self.recorded = True

    def lock(self) -> list[str]:
        """Take the lock; the lines an interrupted writer left in the lock file (none: the file is new)."""
        try:
            self.fd = lockfile.take(self.path / LOCK)
        except lockfile.Held as held:
            host, pid = ((held.text.splitlines() or ["? ?"])[0].split() + ["?", "?"])[:2]
            raise DataError(f"'{self.path}' is being written by another `herbs shard` (host {host}, pid {pid}); "
                            "wait for it to finish, or write to another directory") from None
        except OSError as err:  # a read-only mount, a directory of another user's
            raise DataError(f"cannot write in the shards directory '{self.path}' ({err.strerror}); choose a writable place") from None
        return os.read(self.fd, 1 << 24).decode(errors="replace").splitlines()

    def previous_files(self, interrupted: list[str]) -> set[str]:
        """The files of earlier writes that this one replaces; one sentence when anything else is in the way."""
        ours = {name for line in interrupted if (name := line.strip())}
        if (self.path / MANIFEST).exists():
            if not self.overwrite:
                raise DataError(f"'{self.path}' already holds shards written by herbs ({MANIFEST}); "
                                "pass --overwrite to replace them, or choose a new directory")
            try:
                manifest = read_manifest(self.path)
            except DataError:
                raise DataError(f"'{self.path / MANIFEST}' cannot be read, so which files herbs wrote is unknown; "
                                "empty the directory yourself, or choose a new one") from None
            ours |= {MANIFEST} | {name for split in manifest.splits.values() for shard in split.shards for name in (shard.name, shard.index) if name}
        ours = {name for name in ours if Path(name).name == name != ".."}  # a file of this directory, never a path out of it
        ours |= {name + ".tmp" for name in ours}  # what a writer leaves of a file it did not finish
        others = sorted(p.name for p in self.path.iterdir() if p.name not in ours | {LOCK, STAGING})
        if others and not ours:
            raise DataError(f"'{self.path}' is not empty and holds no shards written by herbs (e.g. '{others[0]}'); "
                            "choose an empty or new directory")
        in_the_way = [name for name in others if name.endswith(SHARD_LIKE) or name.startswith(MANIFEST)]
        if in_the_way:
            raise DataError(f"'{self.path / in_the_way[0]}' was not written by herbs here and may be overwritten; "
                            "move it away, or choose a new directory")
        return {name for name in ours if (self.path / name).exists()}

    def release(self, *, remove: bool) -> None:
        if remove:  # while still locked: the next writer must not find our record gone under its lock
            (self.path / LOCK).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
