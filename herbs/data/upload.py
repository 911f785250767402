"""Writing shards to a location that is not a local directory (`herbs shard ... 'pipe:aws s3 cp - s3://b/shards/{name}'`).

Each shard is written to a local temporary file (so the writer's size accounting and checksum
work as for a directory), handed to the location through webdataset's gopen in "wb" mode (a
`pipe:` command reads it on stdin; gs:// and http(s):// use gopen's gsutil and curl PUT), and
deleted: at most one shard is on local disk at a time. herbs cannot list or delete from such a
location, so it writes over whatever is there: first a placeholder manifest that readers refuse
(as a local write deletes the old manifest first), the real one last, so a location with a
manifest always holds every shard it lists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from herbs.errors import DataError
from herbs.data.location import Location
from herbs.data.manifest import BEING_WRITTEN, MANIFEST


class UploadOutput:
    """The `OutputDir` interface for a remote location: `new(name)`, `finished(name)`, `write_manifest(...)`."""

    def __init__(self, location: Location):
        self.location = location
        self.dir: Path | None = None

    def __enter__(self) -> "UploadOutput":
        self.dir = Path(tempfile.mkdtemp(prefix="herbs-shard-"))
        try:
            self.write_manifest(MANIFEST, json.dumps({"format": BEING_WRITTEN}) + "\n")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def new(self, name: str) -> Path:
        return self.dir / name

    def finished(self, name: str) -> None:
        path = self.dir / name
        upload(path, self.location / name)
        path.unlink()

    def write_manifest(self, name: str, text: str) -> None:
        (self.dir / name).write_text(text)
        self.finished(name)


def upload(path: Path, url: str) -> None:
    from webdataset.gopen import gopen  # webdataset imports torch: only remote outputs pay for it

    target = None
    try:
        with open(path, "rb") as source:
            target = gopen(url, "wb")
            with target:
                shutil.copyfileobj(source, target, 1 << 20)
    except ValueError as err:  # gopen has no writer for the scheme
        raise DataError(f"shards cannot be written to '{url}' ({err}); write through a command instead, "
                        "e.g. 'pipe:aws s3 cp - s3://bucket/shards/{name}'") from None
    except OSError as err:  # the command exited non-zero, or closed its input early
        status = getattr(target, "status", None)  # webdataset's error text is the repr of its Popen arguments
        why = f"the command exited with status {status}" if status else err.strerror or str(err)
        raise DataError(f"writing {path.name} through '{url}' failed ({why}); run the command by hand to see why, then write again") from None
