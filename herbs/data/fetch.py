"""Reading shards from a remote location: webdataset's gopen for the opening, herbs' rules for the
rest (a deadline on every read, bounded retries with backoff, checksums while streaming, a cache).

A piece (samples `start` .. `stop - 1` of a shard) is read in one of two ways:

  - streamed: the shard is read up to `stop`. Over HTTP(S) a shard with a sample index starts at
    sample `start` with one byte-range request (its index is fetched first, 8 bytes a sample);
    elsewhere (a pipe, a server that refuses ranges, a shard without an index) it is read from
    its front and the samples before `start` are dropped. A transient failure (connection reset,
    HTTP 5xx, a command exiting non-zero, no byte within `timeout`) re-opens the shard, at the
    first sample not yet delivered where ranges work, up to `retries` times with growing pauses.
  - fetched whole (with `verify` or a `cache_dir`): the shard is copied to a local file while
    its sha256 and size are computed, checked against the manifest, and then read from that file.
    A shard that does not match gives no samples. With `cache_dir` the file is kept (under a
    directory named by the location, the file named by its sha256) and later epochs read it
    without the network.

Either way a piece gives exactly `stop - start` items, and samples that could not be had come
back as ("<shard>#<index>", None), to be counted and named as skipped like a damaged local shard's;
except for a shard the server does not have (HTTP 4xx), which is a DataError, as a missing local one is.

Why ranges: a training lane's part of the epoch starts at a random sample of some shard (see
`plan.py`), so without them every lane reads on average half a shard it does not use, each
epoch; with small datasets and many lanes that is several times the dataset.
`benchmarks/data_sources.py` measures both.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from herbs.data.location import STORES, Location
from herbs.errors import DataError
from herbs.data.tario import DamagedShard, Fields, ShardInfo, parse_index, read_samples, report_missing, stream_samples

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RANGED = ("http", "https")  # schemes whose shards are read from sample N by a byte-range request
CURL_RANGE_REFUSED = 33  # curl --continue-at: the server sent the whole file instead of the range
refused_ranges: set[str] = set()  # locations that answered a range with the whole file: not asked again in this process


class RangeRefused(OSError):
    """The server does not serve byte ranges."""


class Unworkable(OSError):
    """A command that cannot run at all (not found, not executable, a URL curl cannot parse): no retry changes it."""


# exit statuses that say so: the shell's 126 (not executable) and 127 (not found); curl's 3 (a malformed URL)
UNWORKABLE, CURL_MALFORMED_URL = (126, 127), 3


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 60.0  # seconds a read may wait for a byte before the attempt fails
    retries: int = 3  # further attempts after a transient failure
    verify: bool = False  # remote shards: fetch whole, check size and sha256 against the manifest before use
    cache_dir: Optional[str] = None  # keep fetched remote shards here, verified, for later epochs

    @classmethod
    def from_config(cls, data) -> "FetchPolicy":
        return cls(data.timeout, data.retries, data.verify_checksums, data.cache_dir)


def pause(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (0, 1, ...): 1, 2, 4, ... capped at 30."""
    return min(30.0, 2.0 ** attempt)


class Source:
    """A remote file's bytes, front to back. Every read waits at most `timeout` for data: what
    webdataset's Pipe does not bound (a server that accepts and never answers would hang it)."""

    def __init__(self, url: str, scheme: str, timeout: float, offset: int = 0):
        self.url, self.scheme, self.timeout = url, scheme, timeout
        self.handle = gopen_handle(url, scheme, timeout, offset)
        self.proc: Optional[subprocess.Popen] = getattr(self.handle, "proc", None)
        self.ignore = getattr(self.handle, "ignore_status", [0])

    def read(self, size: int = CHUNK) -> bytes:
        if self.proc is None:
            return self.handle.read(size)
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], self.timeout)[0]:
            self.stop()
            raise TimeoutError(f"{self.url} sent nothing for {self.timeout:g} s")
        data = os.read(fd, size)  # the raw pipe: a buffered read could wait for more than select saw
        if not data:
            self.check_exit()
        return data

    def check_exit(self) -> None:
        try:
            status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"{self.url}: the command closed its output but did not exit within {self.timeout:g} s") from None
        if status in self.ignore:
            return
        said = self.proc.stderr.read().decode("utf-8", "replace").strip() if self.proc.stderr else ""
        message = f"{self.url}: exit status {status}" + (f" ({said.splitlines()[-1]})" if said else "")
        if status == CURL_RANGE_REFUSED:
            raise RangeRefused(message)
        if status in UNWORKABLE or (status == CURL_MALFORMED_URL and self.scheme in RANGED):
            raise Unworkable(message)
        if said and " returned error: 4" in said:  # curl --fail on HTTP 4xx: no retry will change it
            raise FileNotFoundError(message)
        raise OSError(message)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:  # the command's whole group (`command` starts one): a shell's children would outlive it
                os.killpg(self.proc.pid, signal.SIGKILL) if os.getpgid(self.proc.pid) == self.proc.pid else self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *_) -> None:
        self.stop()  # before webdataset's Pipe.close, which would wait for an unfinished command
        try:
            self.handle.close()
        except OSError:
            pass  # the exit status was checked at the end of the data, or the read was given up


def gopen_handle(url: str, scheme: str, timeout: float, offset: int = 0):
    """The stream webdataset's gopen opens for `url`, except where its handler cannot honour herbs'
    retries and timeout: http(s) (its curl retries 30 times inside curl, has no deadline and asks
    for no byte range) and object stores without a gopen handler (s3) or without their CLI
    (fsspec then). `offset` is where to start, for a RANGED scheme only."""
    from webdataset.gopen import gopen  # webdataset imports torch: only remote locations pay for it

    if scheme in RANGED:
        start = ["--continue-at", str(offset)] if offset else []
        return command(["curl", "--fail", "--silent", "--show-error", "--location", "--connect-timeout", f"{timeout:g}", *start, url],
                       ignore=[141, 23])
    if scheme in STORES and shutil.which(STORES[scheme][0]) is None:
        import fsspec

        return fsspec.open(url, "rb").open()
    if scheme == "s3":
        return command(["aws", "s3", "cp", "--only-show-errors", url, "-"], ignore=[141])
    if scheme == "gs":  # as webdataset's gopen_gsutil, in a group of its own
        return command(["gsutil", "cat", url], ignore=[141, 23])
    if scheme == "pipe":  # as webdataset's gopen_pipe: the user's shell command
        return command(url[len("pipe:"):], ignore=[141], shell=True, stderr=None)  # its own messages go where herbs' go
    try:
        return gopen(url, "rb")
    except ValueError:  # no gopen handler for the scheme: one fsspec knows (location.locate checked)
        import fsspec

        return fsspec.open(url, "rb").open()


def command(args, ignore: list[int], shell: bool = False, stderr=subprocess.PIPE):
    """webdataset's Pipe reading a command's output, the command in a process group of its own, which
    `Source.stop` ends whole: a shell's or a CLI's children would otherwise outlive a read given up on.
    Its stderr is kept for the error message (the known clients say little)."""
    from webdataset.gopen import Pipe

    return Pipe(args, mode="rb", stderr=stderr, ignore_status=ignore, shell=shell, bufsize=8192, start_new_session=True)


def read_url(location: Location, name: str, policy: FetchPolicy) -> bytes:
    """The whole file `name` of `location`, retried like a shard; FileNotFoundError when the server
    says it does not exist, OSError (TimeoutError) when the last attempt failed."""
    url = location / name
    for attempt in range(policy.retries + 1):
        try:
            with Source(url, location.scheme, policy.timeout) as source:
                return b"".join(iter(source.read, b""))
        except (FileNotFoundError, Unworkable):
            raise
        except OSError as err:
            if attempt == policy.retries:
                raise
            log.warning("reading %s failed (%s); retrying in %g s", url, err, pause(attempt))
            time.sleep(pause(attempt))
    raise AssertionError("unreachable")


def not_there(url: str, err: OSError) -> DataError:
    """A shard the server says it does not have (HTTP 4xx): no retry brings it, and reading on would train on
    less than the manifest lists, as a missing local shard is refused for."""
    return DataError(f"shard '{url}' listed in the manifest is not at its location ({err}); copy it back, or write the shards there again")


def unworkable(url: str, err: OSError) -> DataError:
    return DataError(f"shard '{url}' cannot be read ({err}); check the command or URL in data.shards")


def read_piece(location: Location, shard: ShardInfo, start: int, stop: int, policy: FetchPolicy) -> Iterator[tuple[str, Optional[Fields]]]:
    """Samples `start` .. `stop - 1` of `shard`, exactly `stop - start` items (see the module's doc)."""
    if location.local:
        yield from read_samples(location / shard.name, start, stop)
    elif policy.verify or policy.cache_dir:
        path, keep = fetched(location, shard, policy)
        if path is None:
            yield from report_missing(location / shard.name, shard.name, start, stop)
            return
        try:
            yield from read_samples(path, start, stop)
        finally:
            if not keep:
                path.unlink(missing_ok=True)
    else:
        yield from streamed(location, shard, start, stop, policy)


def streamed(location: Location, shard: ShardInfo, start: int, stop: int, policy: FetchPolicy) -> Iterator[tuple[str, Optional[Fields]]]:
    url = location / shard.name
    ranged = location.scheme in RANGED and shard.index is not None and location.text not in refused_ranges
    starts: Optional[list[int]] = None  # the sample index, fetched when a read is to start inside the shard
    delivered, attempt = start, 0
    while True:
        if ranged and delivered and starts is None:
            starts = sample_index(location, shard, policy)
            ranged = starts is not None
        first = delivered if ranged else 0  # the sample the stream begins at
        offset = starts[first] if first else 0
        try:
            with Source(url, location.scheme, policy.timeout, offset) as source:
                for index, (key, fields) in enumerate(stream_samples(source, offset), first):
                    if index >= delivered:
                        yield key, fields
                        delivered += 1
                    if delivered >= stop:
                        return
            break  # the shard ended early: damaged, not a failure to retry
        except RangeRefused:
            log.warning("%s does not serve byte ranges; its shards are read from their start", location)
            refused_ranges.add(location.text)
            ranged = False
        except DamagedShard as err:
            if first and delivered == first:  # nothing made sense from the index's offset: the index is wrong
                log.warning("the sample index of %s does not fit it (%s); reading it from its start", url, err)
                ranged = False
                continue
            log.warning("shard %s is damaged after sample %d: %s", url, delivered, err)
            break
        except FileNotFoundError as err:
            raise not_there(url, err) from None
        except Unworkable as err:
            raise unworkable(url, err) from None
        except OSError as err:
            if attempt == policy.retries:
                log.warning("shard %s failed after sample %d, %d attempts: %s", url, delivered, attempt + 1, err)
                break
            log.warning("shard %s failed after sample %d (%s); retrying in %g s", url, delivered, err, pause(attempt))
            time.sleep(pause(attempt))
            attempt += 1
    yield from report_missing(url, shard.name, delivered, stop)


@functools.lru_cache(maxsize=1024)  # a lane opens the same shards every epoch; 8 bytes a sample
def sample_index(location: Location, shard: ShardInfo, policy: FetchPolicy) -> Optional[list[int]]:
    """The shard's sample offsets, or None (said once per shard) when its index cannot be had."""
    try:
        starts = parse_index(read_url(location, shard.index, policy), shard)
    except OSError as err:
        log.warning("the sample index %s cannot be read (%s); shard %s is read from its start", location / shard.index, err, shard.name)
        return None
    if starts is None:
        log.warning("the sample index %s does not fit shard %s; the shard is read from its start", location / shard.index, shard.name)
    return starts


def cache_path(location: Location, shard: ShardInfo, cache_dir: str) -> Path:
    # One directory per location: two datasets whose shards share names never share cache files;
    # and one file per content: a shard written again at its location is fetched again, whatever its size.
    return Path(cache_dir) / hashlib.sha256(location.text.encode()).hexdigest()[:16] / f"{shard.sha256[:16]}-{shard.name}"


def fetched(location: Location, shard: ShardInfo, policy: FetchPolicy) -> tuple[Optional[Path], bool]:
    """(a local copy of `shard` whose size and sha256 match the manifest, whether it is to be kept),
    or (None, False) when it could not be had. A cached copy was checked when it was written."""
    if policy.cache_dir:
        target = cache_path(location, shard, policy.cache_dir)
        if target.is_file() and target.stat().st_size == shard.bytes:
            return target, True
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"data.cache_dir '{policy.cache_dir}' cannot be written ({err.strerror}); pass a folder on a local disk "
                            "you can write, or leave data.cache_dir out") from None
    else:
        target = Path(tempfile.gettempdir()) / f"herbs-{uuid.uuid4().hex}-{shard.name}"
    url = location / shard.name
    for attempt in range(policy.retries + 1):
        part = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")  # concurrent fetchers
        try:
            digest, size = hashlib.sha256(), 0
            with Source(url, location.scheme, policy.timeout) as source, open(part, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if (size, digest.hexdigest()) != (shard.bytes, shard.sha256):
                log.warning("shard %s has %d bytes and sha256 %s... but the manifest lists %d and %s...; its samples are skipped",
                            url, size, digest.hexdigest()[:12], shard.bytes, shard.sha256[:12])
                return None, False
            os.replace(part, target)
            if policy.cache_dir:  # the copies of this shard's earlier contents are of no use any more
                for stale in set(target.parent.glob(f"{'?' * 16}-{shard.name}")) - {target}:
                    stale.unlink(missing_ok=True)
            return target, policy.cache_dir is not None
        except FileNotFoundError as err:
            raise not_there(url, err) from None
        except Unworkable as err:
            raise unworkable(url, err) from None
        except OSError as err:
            if attempt == policy.retries:
                log.warning("shard %s failed, %d attempts: %s", url, attempt + 1, err)
                return None, False
            log.warning("shard %s failed (%s); retrying in %g s", url, err, pause(attempt))
            time.sleep(pause(attempt))
        finally:
            part.unlink(missing_ok=True)
    return None, False
