"""The shard format: WebDataset tar files (`<key>.<ext>` members, one key per sample), written
byte-for-byte reproducibly and read back by sample index."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)

# WebDataset's rule (webdataset.tariterators.base_plus_ext): the key is the member name up to the
# first dot of its last path component, the extension everything after it. Not imported: the
# shard commands would pay seconds for webdataset's import of torch.
KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

Fields = dict[str, bytes]  # extension -> bytes, e.g. {"jpg": ..., "cls": b"3", "json": ...}


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name inside the shards directory
    num_samples: int
    bytes: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def member_bytes(fields: Fields) -> int:
    """Bytes a sample adds to a tar: a 512-byte header per member plus its data padded to 512."""
    return sum(512 + -(-len(data) // 512) * 512 for data in fields.values())


class ShardWriter:
    """One tar shard, written to `<name>.tmp` and renamed when complete, so that a shard file
    under its final name is always whole. Every header field that could vary between runs
    (time, owner, permissions) is fixed: the same samples give the same bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0

    @property
    def bytes(self) -> int:
        return self.tar.offset

    def add(self, key: str, fields: Fields) -> None:
        for ext, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1

    def close(self) -> ShardInfo:
        self.tar.close()
        info = ShardInfo(self.path.name, self.num_samples, self.tmp.stat().st_size, sha256_file(self.tmp))
        os.replace(self.tmp, self.path)
        return info


def read_samples(path: Path, start: int, stop: int) -> Iterator[tuple[str, Optional[Fields]]]:
    """Samples `start` .. `stop - 1` of a shard, numbered in file order, as (key, fields).

    Members of samples before `start` are stepped over without reading their data. A shard
    that ends early or is damaged still gives `stop - start` items: each sample it could not
    deliver comes back as ("<shard>#<index>", None), so callers' sample positions never shift.
    """
    index, delivered = -1, start
    try:
        with tarfile.open(path, "r:") as tar:
            key, fields = None, None
            for member in tar:
                match = KEY_AND_EXTENSION.match(member.name)
                if not member.isfile() or match is None:
                    continue
                name_key, ext = match.groups()
                if name_key != key:
                    if fields is not None:
                        yield key, fields
                        delivered += 1
                    index, key = index + 1, name_key
                    if index >= stop:
                        return
                    fields = {} if index >= start else None
                if fields is not None:
                    fields[ext.lower()] = tar.extractfile(member).read()
            if fields is not None:
                yield key, fields
                delivered += 1
    except (tarfile.TarError, OSError, EOFError) as err:
        log.warning("shard %s is damaged after sample %d (%s)", path, delivered, err)
    if delivered < stop:
        log.warning("shard %s ends after %d samples; %d expected samples are missing", path, delivered, stop - delivered)
    for missing in range(delivered, stop):
        yield f"{path.name}#{missing}", None


def count_samples(path: Path) -> int:
    """Samples in a shard, from its member headers alone."""
    keys = set()
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            match = KEY_AND_EXTENSION.match(member.name)
            if member.isfile() and match:
                keys.add(match.group(1))
    return len(keys)
