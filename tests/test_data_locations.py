"""Shards read from a location other than a local directory: a real HTTP server on 127.0.0.1, `pipe:`
commands, fsspec's in-memory store; servers that drop the connection or never answer."""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from RangeHTTPServer import RangeRequestHandler

from herbs.cli import main as herbs_main
from herbs.errors import DataError
from herbs.data.fetch import FetchPolicy
from herbs.data.location import locate
from herbs.data.manifest import load_manifest
from herbs.data.stream import EvalStream, TrainStream
from herbs.data.tario import sample_members
from herbs.data.transforms import EvalTransform, TrainTransform

from helpers.data import rewrite_shard, write_tiny_shards
from helpers import REPO
from helpers.runs import checkpoint_weights, error_line, metrics, micro, run_dir, run_training, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")
QUICK = FetchPolicy(timeout=5, retries=1)


class Plain(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server`: no byte ranges."""

    def log_message(self, *args):
        pass


class Quiet(RangeRequestHandler, Plain):
    """A server that answers byte-range requests, as web servers and object stores do."""


class Counting:
    """Counts the body bytes it sends of tar shards (mixed into a handler)."""

    sent = 0

    def send_header(self, keyword, value):
        if keyword == "Content-Length" and self.path.endswith(".tar"):
            type(self).sent += int(value)
        super().send_header(keyword, value)


class Dropping(Quiet):
    """Serves the files, but sends only `cut` bytes of `victim` (from where a byte range asks, with
    the full Content-Length) and closes the connection, on the first `drops` requests of it (None:
    every time)."""

    victim, cut, drops, served = "", 0, None, 0

    def do_GET(self):
        if not self.path.endswith("/" + self.victim) or (self.drops is not None and type(self).served >= self.drops):
            return super().do_GET()
        type(self).served += 1
        data = Path(self.directory, self.victim).read_bytes()
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if "Range" in self.headers else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:start + self.cut])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class Html(Quiet):
    """A portal that answers every path with a page (as a login or index page would)."""

    def do_GET(self):
        page = b"<!DOCTYPE html><html><body>Sign in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)


@contextlib.contextmanager
def serve(directory: Path, handler=Quiet):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_server():
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("loc") / "tiny", shard_samples=12)  # train 40 in 4 shards, test 20 in 2


@pytest.fixture(scope="module")
def server(shards):
    with serve(shards) as url:
        yield url


def eval_keys(location, fetch: FetchPolicy, world_size: int = 2, workers: int = 0) -> dict[str, list]:
    """Per rank: every batch's keys, labels and images, and the skipped keys."""
    out = {}
    for rank in range(world_size):
        stream = EvalStream(location, "test", EvalTransform(40, 32), rank=rank, world_size=world_size, batch_size=4,
                            num_workers=workers, fetch=fetch)
        batches = list(stream)
        stream.close()
        out[rank] = [(b["key"], b["label"].tolist(), b["image"], b["skipped_keys"]) for b in batches]
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        len(a[r]) == len(b[r]) and all(x[0] == y[0] and x[1] == y[1] and torch.equal(x[2], y[2]) and x[3] == y[3]
                                       for x, y in zip(a[r], b[r])) for r in a)


def all_keys(result: dict) -> list[str]:
    return [key for batches in result.values() for batch in batches for key in batch[0]]


@pytest.mark.parametrize("verify", [False, True], ids=["streamed", "verified"])
def test_evaluation_from_a_url_sees_every_sample_once_as_from_the_directory(shards, server, verify):
    local = eval_keys(shards, FetchPolicy())
    remote = eval_keys(server, FetchPolicy(verify=verify))
    assert len(all_keys(remote)) == 20 and len(set(all_keys(remote))) == 20
    assert same(local, remote)


def test_pipe_cat_and_fsspec_read_what_the_directory_holds(shards):
    local = eval_keys(shards, FetchPolicy())
    assert same(local, eval_keys(f"pipe:cat {shards}/{{name}}", FetchPolicy()))
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in shards.iterdir():
        memory.pipe(f"/herbs-test/{path.name}", path.read_bytes())
    assert same(local, eval_keys("memory://herbs-test", FetchPolicy()))


def test_loader_workers_read_a_url(shards, server):
    assert same(eval_keys(shards, FetchPolicy(), workers=2), eval_keys(server, FetchPolicy(), workers=2))


def train_batches(location, fetch: FetchPolicy, rank: int, start_batch: int = 0) -> list[tuple[list, torch.Tensor]]:
    stream = TrainStream(location, "train", TrainTransform(40, 32), rank=rank, world_size=2, batch_size=4, num_workers=0,
                         seed=3, shuffle_buffer=8, fetch=fetch)
    batches = [(b["key"], b["image"]) for b in stream.epoch(1, start_batch=start_batch)]
    stream.close()
    return batches


def test_a_lane_starting_inside_a_shard_asks_for_its_own_bytes_only(shards):
    """With byte ranges a lane's read starts at its first sample (the shard's sample index says
    where); a server without them gives the same batches, read from each shard's front."""

    class Ranged(Counting, Quiet):
        sent = 0

    class Whole(Counting, Plain):
        sent = 0

    for rank in range(2):
        local = train_batches(shards, FetchPolicy(), rank)
        for handler in (Ranged, Whole):
            with serve(shards, handler) as url:
                remote = train_batches(url, FetchPolicy(), rank)
            assert [k for k, _ in remote] == [k for k, _ in local]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(remote, local))
    assert 0 < Ranged.sent < Whole.sent


def test_a_wrong_or_missing_sample_index_only_costs_the_read_from_the_front(shards, tmp_path, caplog):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    for wrong in sorted(copy.glob("train-*.idx"))[1:]:  # inside each sample's first member
        starts = struct.unpack(f"<{wrong.stat().st_size // 8}Q", wrong.read_bytes())
        wrong.write_bytes(struct.pack(f"<{len(starts)}Q", 0, *(start + 512 for start in starts[1:])))
    (copy / "train-000000.idx").unlink()
    with caplog.at_level(logging.WARNING), serve(copy) as url:
        for rank in range(2):
            assert [k for k, _ in train_batches(url, FetchPolicy(), rank)] == [k for k, _ in train_batches(shards, FetchPolicy(), rank)]
    said = [record.getMessage() for record in caplog.records]
    assert said and all("does not fit" in line or "cannot be read" in line for line in said)  # one per lane that started inside a shard


def test_training_batches_and_a_resume_mid_epoch_are_the_same_from_a_url(shards, server):
    for rank in range(2):
        local = train_batches(shards, FetchPolicy(), rank)
        for location in (server, f"pipe:cat {shards}/{{name}}"):
            remote = train_batches(location, FetchPolicy(), rank)
            assert [k for k, _ in remote] == [k for k, _ in local]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(remote, local))
        resumed = train_batches(server, FetchPolicy(), rank, start_batch=2)
        assert [k for k, _ in resumed] == [k for k, _ in local[2:]]


def test_a_connection_dropped_mid_shard_is_retried_and_the_run_reads_everything(shards, tmp_path):
    shard = "test-000000.tar"

    class OnceDropping(Dropping):
        victim, cut, drops, served = shard, (shards / shard).stat().st_size // 2, 1, 0

    with serve(shards, OnceDropping) as url:
        result = eval_keys(url, QUICK, world_size=1)
    assert OnceDropping.served == 1  # it did drop once
    assert sorted(all_keys(result)) == sorted(all_keys(eval_keys(shards, FetchPolicy(), world_size=1)))


@pytest.mark.parametrize("verify", [False, True], ids=["streamed", "verified"])
def test_a_connection_that_keeps_dropping_skips_and_names_the_missing_samples(shards, verify, caplog):
    shard = "test-000000.tar"
    manifest = load_manifest(shards)
    count = next(s.num_samples for s in manifest.split("test").shards if s.name == shard)

    class AlwaysDropping(Dropping):  # a quarter of the shard each time: the retry, from where the drop was, cannot finish it
        victim, cut, drops, served = shard, (shards / shard).stat().st_size // 4, None, 0

    with caplog.at_level(logging.WARNING), serve(shards, AlwaysDropping) as url:
        result = eval_keys(url, FetchPolicy(timeout=5, retries=1, verify=verify), world_size=1)
    assert AlwaysDropping.served == 2  # the first attempt and one retry
    skipped = [key for batch in result[0] for key in batch[3]]
    delivered = all_keys(result)
    assert len(skipped) + len(delivered) == 20 and skipped
    assert all(key.startswith(shard + "#") for key in skipped)
    first_missing = int(skipped[0].split("#")[1])
    assert skipped == [f"{shard}#{i}" for i in range(first_missing, count)]  # the rest of that shard, each named
    assert (first_missing == 0) == verify  # streamed: the samples before the drop were used; verified: none of a bad shard
    assert any(shard in record.getMessage() and "attempts" in record.getMessage() for record in caplog.records)


def test_a_server_that_never_answers_is_a_clear_error_within_the_timeout(shards):
    with silent_server() as url:
        with pytest.raises(DataError) as err:
            load_manifest(url, fetch=FetchPolicy(timeout=1, retries=1))
    message = str(err.value)
    assert f"{url}/manifest.json" in message and "sent nothing for 1 s" in message and "data.timeout" in message


def test_a_shard_that_never_arrives_is_skipped_after_the_timeout(shards, caplog):
    manifest = load_manifest(shards)  # read locally, the shards from a server that never answers
    with silent_server() as url:
        manifest.root = locate(url)
        with caplog.at_level(logging.WARNING):
            result = eval_keys(manifest, FetchPolicy(timeout=1, retries=0), world_size=1)
    assert all_keys(result) == [] and sum(len(batch[3]) for batch in result[0]) == 20


@pytest.mark.parametrize("verify", [False, True])
def test_a_shard_the_server_does_not_have_stops_the_read_as_a_missing_local_shard_does(shards, tmp_path, verify):
    """A 404 is no transient failure: it was skipped and its samples replaced, where a local folder refuses to start."""
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    (copy / "test-000001.tar").unlink()
    with serve(copy) as url:
        with pytest.raises(DataError) as err:
            eval_keys(url, FetchPolicy(timeout=5, retries=1, verify=verify), world_size=1)
    assert str(err.value).startswith(f"shard '{url}/test-000001.tar' listed in the manifest is not at its location (")
    assert str(err.value).endswith("); copy it back, or write the shards there again")


def test_a_pipe_command_that_times_out_is_stopped_with_all_it_started(tmp_path):
    """The shell's children kept running (holding the output of a `herbs ... | tail` open forever)."""
    sleep = f"sleep 300.{os.getpid()}"  # a command line of its own, to look for
    with pytest.raises(DataError, match="sent nothing for 1 s"):
        load_manifest(f"pipe:{sleep} && echo {{name}} | cat", fetch=FetchPolicy(timeout=1, retries=1))
    left = subprocess.run(["pgrep", "-f", f"^{sleep}$"], capture_output=True, text=True).stdout.split()
    subprocess.run(["pkill", "-f", f"^{sleep}$"])
    assert left == [], "the pipe command's processes are still running"


def test_a_command_that_does_not_exist_is_not_retried(shards):
    """Exit status 127: no retry (1 + 2 + 4 s of pauses) finds the command."""
    started = time.monotonic()
    with pytest.raises(DataError) as err:
        load_manifest("pipe:no-such-command-herbs {name}", fetch=FetchPolicy(timeout=5, retries=3))
    assert time.monotonic() - started < 3
    assert str(err.value).startswith("manifest pipe:no-such-command-herbs manifest.json cannot be read (")
    assert "exit status 127" in str(err.value) and str(err.value).endswith("); check the command or URL in data.shards")
    manifest = load_manifest(shards)
    manifest.root = locate("pipe:no-such-command-herbs {name}")
    with pytest.raises(DataError) as err:
        eval_keys(manifest, FetchPolicy(timeout=5, retries=3), world_size=1)
    assert str(err.value).startswith("shard 'pipe:no-such-command-herbs test-000000.tar' cannot be read (")


def test_a_failing_pipe_command_is_retried(shards, tmp_path):
    flag = tmp_path / "failed-once"
    command = f"pipe:if [ -e {flag} ]; then cat {shards}/{{name}}; else touch {flag}; exit 1; fi"
    assert len(set(all_keys(eval_keys(command, QUICK, world_size=1)))) == 20
    assert flag.exists()


def test_a_changed_shard_on_the_server_is_caught_while_streaming(shards, tmp_path, caplog):
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in shards.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    tar = changed / "test-000001.tar"
    with open(tar, "rb") as f:
        _, members = next(sample_members(f))
    offset = next(offset for ext, offset, _ in members if ext == "json")
    data = bytearray(tar.read_bytes())
    data[offset + 2] ^= 0x01  # a byte of a sample's metadata: the tar still parses, every image decodes
    tar.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), serve(changed) as url:
        trusting = eval_keys(url, FetchPolicy(verify=False), world_size=1)
        checked = eval_keys(url, FetchPolicy(verify=True), world_size=1)
    assert len(all_keys(trusting)) == 20
    skipped = [key for batch in checked[0] for key in batch[3]]
    assert skipped and all(key.startswith("test-000001.tar#") for key in skipped)
    assert any("sha256" in r.getMessage() and "test-000001.tar" in r.getMessage() for r in caplog.records)


def test_cache_dir_keeps_verified_shards_for_later_epochs(shards, tmp_path):
    fetch = FetchPolicy(cache_dir=str(tmp_path / "cache"))
    with serve(shards) as url:
        first = eval_keys(url, fetch, world_size=1)
        manifest = load_manifest(url)
    cached = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").rglob("*.tar"))  # <sha256>-<name>
    assert cached == ["test-000000.tar", "test-000001.tar"]
    assert not list((tmp_path / "cache").rglob("*.part"))
    # The server is gone: the second pass reads the cache alone.
    assert same(first, eval_keys(manifest, fetch, world_size=1))
    assert same(first, eval_keys(shards, FetchPolicy(), world_size=1))


def test_a_cache_dir_that_cannot_be_made_is_one_sentence(shards, server, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError) as err:
        eval_keys(server, FetchPolicy(timeout=5, retries=1, cache_dir=str(tmp_path / "afile" / "cache")), world_size=1)
    assert str(err.value).startswith(f"data.cache_dir '{tmp_path / 'afile' / 'cache'}' cannot be written (")
    assert str(err.value).endswith("); pass a folder on a local disk you can write, or leave data.cache_dir out")


def test_a_cached_shard_is_never_served_for_a_shard_rewritten_at_its_location(shards, tmp_path):
    """Same name and size, other samples (here one label changed): the manifest's sha256 tells them apart."""
    site = tmp_path / "site"
    shutil.copytree(shards, site)
    fetch = FetchPolicy(cache_dir=str(tmp_path / "cache"))
    with serve(site) as url:
        before = eval_keys(url, fetch, world_size=1)
        size = (site / "test-000000.tar").stat().st_size
        rewrite_shard(site, "test-000000.tar", {"test_000000": {"cls": b"0" if before[0][0][1][0] else b"1"}})
        assert (site / "test-000000.tar").stat().st_size == size
        after = eval_keys(url, fetch, world_size=1)
    assert after[0][0][1][0] != before[0][0][1][0] and same(after, eval_keys(site, FetchPolicy(), world_size=1))
    assert len(list((tmp_path / "cache").rglob("*-test-000000.tar"))) == 1  # the old contents' copy is gone


def test_herbs_shard_verify_reads_a_url(shards, server, capsys):
    assert herbs_main(["shard", "verify", server]) == 0
    assert server in capsys.readouterr().out


@pytest.mark.parametrize("location, expected", [
    ("ftp2://host/shards", "URL scheme 'ftp2://', which neither webdataset nor fsspec can open"),
    ("pipe:aws s3 cp s3://bucket/shards/manifest.json -", "pipe: command without {name}"),
    ("s3:/bucket/shards", "looks like a s3:// URL with a slash missing; write it as 's3://bucket/shards'"),
    ("https:host/shards", "looks like a https:// URL with a slash missing; write it as 'https://host/shards'"),
    # herbs takes the folder that holds manifest.json, not a list of shards or the manifest itself
    ("demo/train-{000000..000023}.tar", "names shards one by one; pass the location that holds them and their manifest.json: 'demo'"),
    ("https://host/demo/manifest.json", "names the manifest itself; pass the location that holds it: 'https://host/demo'"),
])
def test_locations_that_cannot_work_are_one_sentence(location, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a typo read as a local folder must not create one
    assert herbs_main(["shard", "verify", location]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and location in err and len(err.splitlines()) == 1


def test_a_url_with_a_slash_missing_is_not_written_as_a_local_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert herbs_main(["shard", "demo", "s3:/bucket/demo"]) == 2
    assert "slash missing" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_manifest_url_that_is_missing_or_a_web_page_is_one_sentence(shards, tmp_path, capsys):
    with serve(tmp_path) as url:  # a server, but not of the shards directory
        assert herbs_main(["shard", "verify", url]) == 2
    err = capsys.readouterr().err.strip()
    assert f"manifest {url}/manifest.json does not exist" in err and "404" in err and len(err.splitlines()) == 1
    with serve(tmp_path, Html) as url:
        assert herbs_main(["shard", "verify", url + "/shards"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"manifest {url}/shards/manifest.json is an HTML page" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("demo") / "demo")


def test_a_training_run_stops_on_a_bad_location_before_training(demo, tmp_path):
    line = error_line(run_training(1, TINY, *micro("pipe:cat shards/manifest.json", tmp_path), check=False))
    assert "pipe: command without {name}" in line


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_training_from_a_url_equals_the_run_from_the_directory(demo, tmp_path):
    args = ["train.max_steps=6", "train.epochs=1", "data.num_workers=1", "log.every=1"]
    run_training(2, TINY, *micro(demo, tmp_path / "local", *args))
    with serve(demo) as url:
        run_training(2, TINY, *micro(url, tmp_path / "http", *args))
    local, remote = run_dir(tmp_path / "local"), run_dir(tmp_path / "http")
    a, b = checkpoint_weights(local), checkpoint_weights(remote)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    losses = lambda run: [(r["step"], r["loss"]) for r in metrics(run) if "loss" in r]  # noqa: E731
    assert losses(local) == losses(remote) and len(losses(local)) == 6
    tests = lambda run: [(r["test/samples"], r["test/ensemble_top1"]) for r in metrics(run) if "test/samples" in r]  # noqa: E731
    assert tests(local) == tests(remote) and tests(local)[0][0] == 20  # every test sample once across the 2 ranks


def test_shards_written_through_a_pipe_command_arrive_whole_with_the_manifest_last(shards, tmp_path):
    out, log = tmp_path / "out", tmp_path / "names"
    out.mkdir()
    write_tiny_shards(f"pipe:echo {{name}} >> {log} && cat > {out}/{{name}}", shard_samples=12)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in shards.iterdir())
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in shards.iterdir())  # the same bytes as a local write
    names = log.read_text().split()
    assert names[0] == names[-1] == "manifest.json"  # first a placeholder that readers refuse, last the manifest


def test_a_location_written_again_and_interrupted_never_looks_complete(shards, tmp_path):
    """herbs cannot list a pipe: location, so it writes over what is there; the old manifest must not outlive that."""
    out = tmp_path / "out"
    out.mkdir()
    write_tiny_shards(f"pipe:cat > {out}/{{name}}", shard_samples=12)
    with pytest.raises(DataError):
        write_tiny_shards(f"pipe:[ {{name}} = train-000001.tar ] && exit 1; cat > {out}/{{name}}", shard_samples=12, seed=7)
    with pytest.raises(DataError) as err:
        load_manifest(out)
    assert str(err.value) == (f"{out / 'manifest.json'} belongs to shards that are being written, or whose writing was interrupted; "
                              "wait for herbs shard to finish, or run it again")


def test_a_failing_write_command_is_one_sentence(tmp_path):
    with pytest.raises(DataError) as err:
        write_tiny_shards("pipe:cat > /nonexistent-dir/{name}")
    message = str(err.value)
    # The first file written is the placeholder manifest, before any shard is made.
    assert message == ("writing manifest.json through 'pipe:cat > /nonexistent-dir/manifest.json' failed (the command exited with "
                       "status 2); run the command by hand to see why, then write again")  # not webdataset's repr of its arguments
