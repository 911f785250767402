"""The shard format: WebDataset tar files (`<key>.<ext>` members, one key per sample), written
byte-for-byte reproducibly and read back by sample index.

Beside each shard the writer puts its sample index, `<shard stem>.idx`: the byte offset at which
each sample's first member header starts, as little-endian unsigned 64-bit integers. A local
shard needs none (it is walked by its headers); a remote one is read from sample N with one
byte-range request instead of streaming through the N samples before it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

log = logging.getLogger(__name__)

# WebDataset's rule (webdataset.tariterators.base_plus_ext): the key is the member name up to the
# first dot of its last path component, the extension everything after it. Not imported: the
# shard commands would pay seconds for webdataset's import of torch.
KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

Fields = dict[str, bytes]  # extension -> bytes, e.g. {"jpg": ..., "cls": b"3", "json": ...}
BLOCK = 512  # tar's unit: each member is a header block plus its data padded to whole blocks
OFFSET = struct.Struct("<Q")  # one entry of a sample index


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name inside the shards directory
    num_samples: int
    bytes: int
    sha256: str
    index: Optional[str] = None  # the sample index's file name; shards written before indexes have none


def index_name(shard_name: str) -> str:
    return f"{shard_name.rsplit('.', 1)[0]}.idx"


def parse_index(data: bytes, shard: ShardInfo) -> Optional[list[int]]:
    """The sample offsets in `data`, or None when they cannot be the index of `shard` (wrong length,
    not starting at 0, not increasing, past the end)."""
    if len(data) != OFFSET.size * shard.num_samples:
        return None
    starts = [value for (value,) in OFFSET.iter_unpack(data)]
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= shard.bytes:
        return None
    return starts


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def member_bytes(fields: Fields) -> int:
    """Bytes a sample adds to a tar."""
    return sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for data in fields.values())


class ShardWriter:
    """One tar shard and its sample index, each written to `<name>.tmp` and renamed when complete,
    so that a file under its final name is always whole. Every header field that could vary
    between runs (time, owner, permissions) is fixed: the same samples give the same bytes."""

    def __init__(self, path: Path, index_path: Path):
        self.path, self.index_path = path, index_path
        self.tmp = path.with_name(path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.starts: list[int] = []

    @property
    def num_samples(self) -> int:
        return len(self.starts)

    @property
    def bytes(self) -> int:
        return self.tar.offset

    def add(self, key: str, fields: Fields) -> None:
        self.starts.append(self.tar.offset)
        for ext, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> ShardInfo:
        self.tar.close()
        index_tmp = self.index_path.with_name(self.index_path.name + ".tmp")
        index_tmp.write_bytes(b"".join(OFFSET.pack(start) for start in self.starts))
        os.replace(index_tmp, self.index_path)
        info = ShardInfo(self.path.name, self.num_samples, self.tmp.stat().st_size, sha256_file(self.tmp), self.index_path.name)
        os.replace(self.tmp, self.path)
        return info


class DamagedShard(Exception):
    """A shard whose bytes stop making sense as a tar (cut short, overwritten)."""


Member = tuple[str, int, int]  # extension, data offset, data size


def parse_header(header: bytes, offset: int) -> Optional[tuple[Optional[tuple[str, str]], int]]:
    """((key, extension) of a file member or None for any other member, data size) of the header
    block at byte `offset`; None for the end-of-archive marker. Only the plain USTAR members
    ShardWriter writes are understood; each header's checksum is checked."""
    if len(header) < BLOCK:
        raise DamagedShard(f"it ends at byte {offset + len(header)}, inside or before a member header")
    if header.count(0) == BLOCK:  # the end-of-archive marker
        return None
    try:
        stored, size = int(header[148:156].strip(b"\0 "), 8), int(header[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise DamagedShard(f"the member header at byte {offset} is not a tar header") from None
    if stored != 256 + sum(header[:148]) + sum(header[156:]):  # the checksum field counts as 8 spaces
        raise DamagedShard(f"the member header at byte {offset} fails its checksum")
    match = KEY_AND_EXTENSION.match(header[:100].split(b"\0", 1)[0].decode("utf-8", "replace"))
    name = match.groups() if header[156:157] in (b"0", b"\0") and match else None
    return name, size


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def sample_members(f: BinaryIO) -> Iterator[tuple[str, list[Member]]]:
    """(key, members) of each sample of a shard written by ShardWriter, from the headers alone.

    A seek and one 512-byte read per member instead of `tarfile`'s parsing, which cost more
    than decoding the image when walking past samples.
    """
    offset, key, members = 0, None, []
    while True:
        f.seek(offset)
        parsed = parse_header(f.read(BLOCK), offset)
        if parsed is None:
            break
        name, size = parsed
        if name:
            if name[0] != key and members:
                yield key, members
                members = []
            key = name[0]
            members.append((name[1].lower(), offset + BLOCK, size))
        offset += BLOCK + padded(size)
    if members:
        yield key, members


def read_exactly(f: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def stream_samples(f: BinaryIO, offset: int = 0) -> Iterator[tuple[str, Fields]]:
    """(key, fields) of each sample of a shard read front to back from byte `offset` (where `f`
    starts), for sources that cannot seek (a pipe, an HTTP body): samples are read whole,
    whether or not the caller wants them.

    Not webdataset's `tar_file_iterator`: it parses through `tarfile` and does not say at which
    sample a damaged shard stopped, which the callers' skipped-sample accounting needs; this
    applies the same header rules as `sample_members`.
    """
    key, fields = None, {}
    while True:
        parsed = parse_header(read_exactly(f, BLOCK), offset)
        if parsed is None:
            break
        name, size = parsed
        data = read_exactly(f, padded(size))
        if len(data) < size:
            raise DamagedShard(f"it ends inside the data of the member at byte {offset}")
        if name:
            if name[0] != key and fields:
                yield key, fields
                fields = {}
            key = name[0]
            fields[name[1].lower()] = data[:size]
        offset += BLOCK + padded(size)
    if fields:
        yield key, fields


def missing_key(shard_name: str, index: int) -> str:
    """The key a sample that could not be read is reported under."""
    return f"{shard_name}#{index}"


def read_samples(path: Path, start: int, stop: int) -> Iterator[tuple[str, Optional[Fields]]]:
    """Samples `start` .. `stop - 1` of a shard, numbered in file order, as (key, fields).

    Samples before `start` are stepped over by their headers, their data never read. A shard
    that ends early or is damaged still gives `stop - start` items: each sample it could not
    deliver comes back as ("<shard>#<index>", None), so callers' sample positions never shift.
    """
    delivered = start
    try:
        with open(path, "rb") as f:
            for index, (key, members) in enumerate(sample_members(f)):
                if index >= stop:
                    break
                if index < start:
                    continue
                fields = {}
                for ext, offset, size in members:
                    f.seek(offset)
                    fields[ext] = f.read(size)
                    if len(fields[ext]) != size:
                        raise DamagedShard(f"it ends inside the data of sample {key}")
                yield key, fields
                delivered += 1
    except (DamagedShard, OSError) as err:
        log.warning("shard %s is damaged after sample %d: %s", path, delivered, err)
    yield from report_missing(str(path), path.name, delivered, stop)


def report_missing(where: str, shard_name: str, delivered: int, stop: int) -> Iterator[tuple[str, None]]:
    if delivered < stop:
        log.warning("shard %s ends after %d samples; %d expected samples are missing", where, delivered, stop - delivered)
    for missing in range(delivered, stop):
        yield missing_key(shard_name, missing), None


def sample_starts(path: Path) -> list[int]:
    """The byte offset of each sample's first member header, from the headers alone (what the
    sample index holds); DamagedShard if they do not add up."""
    with open(path, "rb") as f:
        return [members[0][1] - BLOCK for _, members in sample_members(f)]
