"""Shard writing, the manifest and verification, through the real `herbs shard` command."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from helpers.data import CUB_CLASSES, bomb_png, jpeg, make_cub, make_nabirds, photo, tiny_dataset
from herbs.cli import main
from herbs.errors import DataError
from herbs.data import writer as writer_module
from herbs.data.manifest import MANIFEST, load_manifest, verify_shards
from herbs.data.source import Sample, SourceDataset
from herbs.data.writer import ShardSize, parse_shard_size, write_shards


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_cub_shards_keep_counts_classes_bytes_and_metadata(tmp_path, capsys):
    src = make_cub(tmp_path / "cub", per_class=6, train_per_class=4)
    before = files(src)
    assert main(["shard", "cub", str(src), str(tmp_path / "out"), "--shard-size", "7", "--val-fraction", "0.25"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert files(src) == before  # nothing written into the source dataset

    manifest = load_manifest(tmp_path / "out")
    assert manifest.dataset == "cub" and manifest.class_names == CUB_CLASSES and manifest.num_classes == 5
    assert manifest.original_ids == ["1", "2", "3", "4", "5"]
    assert {g.name: g.classes for g in manifest.hierarchy} == {"Albatross": (0, 1), "Warbler": (2, 3), "Cardinal": (4,)}
    assert {n: s.num_samples for n, s in manifest.splits.items()} == {"train": 15, "val": 5, "test": 10}
    assert [s.num_samples for s in manifest.split("train").shards] == [7, 7, 1]
    assert [s.name for s in manifest.split("test").shards] == ["test-000000.tar", "test-000001.tar"]

    samples = {}
    for shard in manifest.split("test").shards:
        for name, data in members(manifest.path(shard)).items():
            key, ext = name.split(".", 1)
            samples.setdefault(key, {})[ext] = data
    assert sorted(samples) == [f"test_{i:06d}" for i in range(10)]
    for fields in samples.values():
        meta = json.loads(fields["json"])
        assert fields["jpg"] == (src / meta["source"]).read_bytes()  # original JPEG bytes, untouched
        label = int(fields["cls"])
        assert meta["class"] == CUB_CLASSES[label] and meta["class_id"] == str(label + 1)
        assert len(meta["bbox"]) == 4


def test_shards_read_with_webdataset_itself(tmp_path):
    write_shards(tiny_dataset(num_classes=3, train=4, test=2), tmp_path / "out", shard_size=ShardSize(samples=5))
    manifest = load_manifest(tmp_path / "out")
    urls = [str(manifest.path(s)) for s in manifest.split("train").shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None).decode("rgb8"))
    assert len(samples) == 12
    assert {int(s["cls"]) for s in samples} == {0, 1, 2}
    assert samples[0]["jpg"].shape == (30, 40, 3)


def test_nabirds_shards_keep_ids_hierarchy_and_tree(tmp_path):
    src = make_nabirds(tmp_path / "nabirds")
    assert main(["shard", "nabirds", str(src), str(tmp_path / "out")]) == 0
    manifest = load_manifest(tmp_path / "out")
    assert manifest.original_ids == ["295", "296", "313", "1000"]
    assert manifest.class_names[3] == "Northern Cardinal (Adult Male)"
    assert {g.name: g.classes for g in manifest.hierarchy}["Mallard"] == (0, 1)
    assert manifest.tree["296"] == ("Mallard (Female/Juvenile)", "100")
    assert {n: s.num_samples for n, s in manifest.splits.items()} == {"train": 12, "test": 8}


def test_same_input_gives_byte_identical_shards(tmp_path):
    src = make_cub(tmp_path / "cub", per_class=3, train_per_class=2)
    for out in ("a", "b"):
        assert main(["shard", "cub", str(src), str(tmp_path / out), "--shard-size", "4kB", "--seed", "5"]) == 0
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) > 3 and a == b
    main(["shard", "cub", str(src), str(tmp_path / "c"), "--shard-size", "4kB", "--seed", "6"])
    assert files(tmp_path / "c")["train-000000.tar"] != a["train-000000.tar"]  # the seed sets the order


def test_other_formats_are_reencoded_losslessly_and_said_so(tmp_path, capsys):
    image = photo(20, 10, seed=1)
    bmp, png = io.BytesIO(), io.BytesIO()
    image.save(bmp, format="BMP")
    image.save(png, format="PNG")
    dataset = SourceDataset("folder", ["a"], ["a"], {"train": [Sample("x.bmp", 0, data=bmp.getvalue()), Sample("y.png", 0, data=png.getvalue()),
                                                              Sample("z.jpg", 0, data=b"not an image")]})
    floats = io.BytesIO()
    Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255).save(floats, format="TIFF")  # values 0..1
    dataset.splits["train"].append(Sample("w.tif", 0, data=floats.getvalue()))
    manifest = write_shards(dataset, tmp_path / "out")
    assert manifest.notes["reencoded_as_png"] == 1 and sorted(manifest.notes["unreadable"]) == ["w.tif", "z.jpg"]  # w.tif: not a black PNG
    stored = members(tmp_path / "out" / "train-000000.tar")
    pngs = [data for name, data in stored.items() if name.endswith(".png")]
    assert png.getvalue() in pngs  # PNG kept as it was
    for data in pngs:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))
    assert manifest.split("train").num_samples == 2


def test_images_cut_short_are_left_out_named_and_listed(tmp_path):
    """A copy that stopped early has a whole header: only decoding its pixels shows that they are missing."""
    whole, png = jpeg(seed=1), io.BytesIO()
    photo(20, 10, seed=2).save(png, format="PNG")
    samples = [Sample("whole.jpg", 0, data=whole), Sample("cut.jpg", 0, data=whole[: len(whole) // 2]),
               Sample("cut.png", 0, data=png.getvalue()[: len(png.getvalue()) // 2])]
    manifest = write_shards(SourceDataset("folder", ["a"], ["a"], {"train": samples}), tmp_path / "out")
    assert manifest.notes["unreadable"] == ["cut.jpg", "cut.png"] and manifest.split("train").num_samples == 1
    assert list(members(tmp_path / "out" / "train-000000.tar").values())[0] == whole  # kept byte for byte


def test_camera_jpegs_with_more_frames_are_kept_as_they_are(tmp_path):
    """Phones and cameras write JPEGs with extra frames appended (MPO to Pillow): still a JPEG, kept byte for byte."""
    mpo = io.BytesIO()
    photo(40, 30, seed=3).save(mpo, format="MPO", save_all=True, append_images=[photo(40, 30, seed=4)])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    manifest = write_shards(SourceDataset("folder", ["a"], ["a"], {"train": [Sample("camera.jpg", 0, data=mpo.getvalue())]}), tmp_path / "out")
    assert manifest.notes["reencoded_as_png"] == 0  # the old code re-encoded it as a PNG twice its size
    stored = members(tmp_path / "out" / "train-000000.tar")
    assert stored["train_000000.jpg"] == mpo.getvalue()


def test_a_class_or_a_dataset_without_one_readable_image_is_one_sentence(tmp_path, capsys):
    src = image_folder(tmp_path / "imgs")
    for junk in (src / "a").iterdir():
        junk.write_bytes(b"not really a jpeg")
    assert main(["shard", "folder", str(src), str(tmp_path / "out"), "--val-fraction", "0.5"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "class 'a' has no readable image" in line and not (tmp_path / "out" / MANIFEST).exists()
    for junk in (src / "b").iterdir():
        junk.write_bytes(b"")
    assert main(["shard", "folder", str(src), str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no image of" in line and "4 files" in line and not (tmp_path / "out" / MANIFEST).exists()


def test_an_interrupted_write_leaves_no_manifest_and_an_interrupted_overwrite_leaves_the_earlier_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    dataset = tiny_dataset(num_classes=2, train=6, test=2)
    real, calls = writer_module.image_fields, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(writer_module, "image_fields", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_shards(dataset, out, shard_size=ShardSize(samples=3))
    assert not (out / MANIFEST).exists()
    with pytest.raises(DataError, match="has no manifest.json"):
        load_manifest(out)
    monkeypatch.setattr(writer_module, "image_fields", real)
    # No --overwrite needed over an interrupted write; smaller shards: its files must all go.
    write_shards(dataset, out, shard_size=ShardSize(samples=2))
    shards = [f"test-{i:06d}" for i in range(2)] + [f"train-{i:06d}" for i in range(6)]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [f"{s}.{ext}" for s in shards for ext in ("idx", "tar")])
    verify_shards(out)

    # An overwrite that stops (Ctrl-C here; an unreadable image or a full disk alike) leaves the earlier output whole.
    earlier = files(out)
    calls.clear()
    monkeypatch.setattr(writer_module, "image_fields", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_shards(dataset, out, shard_size=ShardSize(samples=3), overwrite=True)
    assert {name: data for name, data in files(out).items() if name != ".herbs-shard.lock"} == earlier  # the old code: no manifest
    verify_shards(out)
    monkeypatch.setattr(writer_module, "image_fields", real)
    write_shards(dataset, out, shard_size=ShardSize(samples=3), overwrite=True)
    shards = [f"test-{i:06d}" for i in range(2)] + [f"train-{i:06d}" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [f"{s}.{ext}" for s in shards for ext in ("idx", "tar")])
    verify_shards(out)


def test_verify_catches_a_checksum_mismatch(tmp_path, capsys):
    out = tmp_path / "out"
    write_shards(tiny_dataset(num_classes=2, train=4, test=2), out, shard_size=ShardSize(samples=3))
    assert main(["shard", "verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(data))
    assert main(["shard", "verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "train-000001.tar" in err and "sha256" in err and "\n" not in err
    with pytest.raises(DataError, match="sha256"):
        load_manifest(out, verify=True)
    load_manifest(out)  # without verify only existence is checked: cheap on every rank


def test_each_shard_has_a_sample_index_and_verify_checks_it(tmp_path, capsys):
    out = tmp_path / "out"
    write_shards(tiny_dataset(num_classes=2, train=4, test=2), out, shard_size=ShardSize(samples=3))
    shard = out / "train-000000.tar"
    sample_starts: dict[str, int] = {}
    with tarfile.open(shard) as tar:
        for member in tar:  # tarfile's own offsets: where each sample's first member header is
            sample_starts.setdefault(member.name.split(".")[0], member.offset)
    index = (out / "train-000000.idx").read_bytes()
    assert list(struct.unpack(f"<{len(index) // 8}Q", index)) == list(sample_starts.values()) and len(sample_starts) == 3
    (out / "train-000000.idx").write_bytes(struct.pack("<3Q", 0, 1024, 2048))
    capsys.readouterr()
    assert main(["shard", "verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sample index" in err and "train-000000.idx" in err and "\n" not in err


def test_missing_things_are_one_sentence(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(out)
    write_shards(tiny_dataset(num_classes=2, train=4, test=2), out, shard_size=ShardSize(samples=3))
    with pytest.raises(DataError, match=r"split 'val' is not in .* \(it has test, train\)"):
        load_manifest(out).split("val")
    written = json.loads((out / MANIFEST).read_text())
    for field, value in (("sha256", None), ("name", None), ("index", 5), ("num_samples", "3")):
        damaged = json.loads(json.dumps(written))
        damaged["splits"]["train"]["shards"][0][field] = value
        (out / MANIFEST).write_text(json.dumps(damaged))
        assert main(["shard", "verify", str(out)]) == 2, field
        assert f"is not a readable herbs manifest (ValueError: shard field '{field}' is {value!r}" in capsys.readouterr().err
    (out / MANIFEST).write_text(json.dumps(written))
    (out / "train-000002.tar").unlink()
    with pytest.raises(DataError, match="train-000002.tar"):
        load_manifest(out)
    assert main(["shard", "verify", str(out)]) == 2
    assert "train-000002.tar' listed in" in capsys.readouterr().err
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not a readable herbs manifest"):
        load_manifest(out)
    (out / MANIFEST).write_text('[{"format": 1}]')
    with pytest.raises(DataError, match=f"{out / MANIFEST} holds a JSON list, not the object herbs writes"):
        load_manifest(out)
    (out / MANIFEST).write_text('{"format": 1, "dataset": "x", "classes": [], "hierarchy": [], "tree": {}, "splits": [], "notes": {}}')
    with pytest.raises(DataError, match="not a readable herbs manifest"):
        load_manifest(out)
    with pytest.raises(DataError, match="is a file; pass the shards directory that holds manifest.json"):
        load_manifest(out / "train-000000.tar")
    assert main(["shard", "cub", str(tmp_path / "nowhere"), str(out)]) == 2
    assert "'" + str(tmp_path / "nowhere") + "' does not exist" in capsys.readouterr().err


def test_output_inside_the_source_is_refused(tmp_path, capsys):
    src = make_cub(tmp_path / "cub", per_class=1, train_per_class=1)
    before = files(src)
    assert main(["shard", "cub", str(src), str(src / "shards")]) == 2
    assert "inside the dataset" in capsys.readouterr().err
    assert files(src) == before


@pytest.mark.parametrize("text, expected", [("1000", ShardSize(samples=1000)), ("100MB", ShardSize(bytes=10**8)),
                                            ("1.5gb", ShardSize(bytes=15 * 10**8)), ("64k", ShardSize(bytes=64000))])
def test_shard_size_parsing(text, expected):
    assert parse_shard_size(text) == expected


@pytest.mark.parametrize("text", ["", "big", "-5", "1.5", "0"])
def test_bad_shard_size(text):
    with pytest.raises(DataError, match="--shard-size"):
        parse_shard_size(text)


def image_folder(root, names=("a", "b"), per_class=2):
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            photo(40, 30, seed=10 * label + i).save(root / name / f"{i}.jpg")
    return root


def test_a_link_that_leads_nowhere_is_named(tmp_path, capsys):
    src = image_folder(tmp_path / "imgs")
    (src / "a" / "gone.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    assert main(["shard", "folder", str(src), str(tmp_path / "out")]) == 2  # the old code left it out without a word
    assert f"cannot read image '{src / 'a' / 'gone.jpg'}' (No such file or directory)" in capsys.readouterr().err


def test_shard_never_deletes_a_file_it_did_not_write(tmp_path, capsys):
    src, out = image_folder(tmp_path / "imgs"), tmp_path / "out"
    out.mkdir()
    (out / "photos-000001.tar").write_text("x\n")  # someone else's data, named like a shard
    assert main(["shard", "folder", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"herbs shard: error: '{out}' is not empty and holds no shards written by herbs (e.g. 'photos-000001.tar'); "
                   "choose an empty or new directory")
    assert files(out) == {"photos-000001.tar": b"x\n"}
    assert main(["shard", "folder", str(src), str(out / "photos-000001.tar")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"'{out / 'photos-000001.tar'}' is a file; pass a directory (new or empty) for the shards")


def test_rewriting_needs_overwrite_and_removes_only_the_listed_files(tmp_path, capsys):
    src, out = image_folder(tmp_path / "imgs", per_class=3), tmp_path / "out"
    assert main(["shard", "folder", str(src), str(out), "--shard-size", "1"]) == 0
    assert len(load_manifest(out).split("train").shards) == 6
    (out / "README.md").write_text("my notes")
    capsys.readouterr()
    assert main(["shard", "folder", str(src), str(out)]) == 2
    assert "already holds shards written by herbs (manifest.json); pass --overwrite" in capsys.readouterr().err
    assert main(["shard", "folder", str(src), str(out), "--overwrite", "--shard-size", "4"]) == 0
    assert sorted(files(out)) == ["README.md", MANIFEST, "train-000000.idx", "train-000000.tar", "train-000001.idx", "train-000001.tar"]  # the six older shards gone
    assert (out / "README.md").read_text() == "my notes"
    verify_shards(out)

    (out / "train-000007.tar").write_text("not listed")  # would be overwritten by a larger write
    assert main(["shard", "folder", str(src), str(out), "--overwrite", "--shard-size", "1"]) == 2
    err = capsys.readouterr().err
    assert f"'{out / 'train-000007.tar'}' was not written by herbs here" in err and "move it away" in err
    assert (out / "train-000007.tar").read_text() == "not listed" and verify_shards(out)


def test_a_manifest_that_is_not_text_is_one_sentence_for_readers_and_writers(tmp_path, capsys):
    src, out = image_folder(tmp_path / "imgs", per_class=3), tmp_path / "out"
    assert main(["shard", "folder", str(src), str(out)]) == 0
    (out / MANIFEST).write_bytes(b"\xff\xfe{")
    capsys.readouterr()
    assert main(["shard", "verify", str(out)]) == 2
    assert f"{out / MANIFEST} is not a readable herbs manifest" in capsys.readouterr().err
    assert main(["shard", "folder", str(src), str(out), "--overwrite"]) == 2
    assert f"'{out / MANIFEST}' cannot be read, so which files herbs wrote is unknown" in capsys.readouterr().err


def test_a_split_an_edited_manifest_lists_empty_is_one_sentence(tmp_path):
    import json

    from herbs.data.manifest import load_manifest

    src, out = image_folder(tmp_path / "imgs", per_class=3), tmp_path / "out"
    assert main(["shard", "folder", str(src), str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["splits"]["holdout"] = {"num_samples": 0, "shards": []}
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        load_manifest(out).split("holdout")
    assert str(err.value).startswith(f"split 'holdout' of {out / MANIFEST} lists no samples; choose another split, or ")


def test_a_directory_that_cannot_be_written_is_one_sentence(capsys):
    unwritable = Path("/sys/kernel")  # refuses new files even to root
    if not unwritable.is_dir():
        pytest.skip("no /sys/kernel here")
    assert main(["shard", "demo", str(unwritable)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"herbs shard: error: cannot write in the shards directory '{unwritable}'") and len(err.splitlines()) == 1


def test_a_second_writer_is_refused_and_a_dead_one_leaves_nothing_in_the_way(tmp_path, capsys):
    src, out = image_folder(tmp_path / "imgs"), tmp_path / "out"
    # A real writer in another process, holding the output directory (and having started a shard).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from herbs.data.outdir import OutputDir\n"
        "with OutputDir(Path(sys.argv[1])) as output:\n"
        "    output.new('train-000000.tar.tmp').write_bytes(b'half a shard'); print('writing', flush=True); time.sleep(120)"),
        str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "writing\n"
        assert main(["shard", "folder", str(src), str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"herbs shard: error: '{out}' is being written by another `herbs shard` (host {socket.gethostname()}, "
                       f"pid {holder.pid}); wait for it to finish, or write to another directory")
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the OS drops its lock
        holder.wait()
    assert main(["shard", "folder", str(src), str(out)]) == 0
    assert sorted(files(out)) == [MANIFEST, "train-000000.idx", "train-000000.tar"]  # its half shard removed, no lock file left
    verify_shards(out)


def test_a_decompression_bomb_is_left_out_and_named(tmp_path, capsys, caplog):
    src = image_folder(tmp_path / "imgs")
    (src / "a" / "huge.png").write_bytes(bomb_png())
    with caplog.at_level(logging.WARNING, logger="herbs.data.writer"):
        assert main(["shard", "folder", str(src), str(tmp_path / "out")]) == 0
    assert "1 files were not readable images and were left out" in capsys.readouterr().out
    manifest = load_manifest(tmp_path / "out")
    assert manifest.notes["unreadable"] == ["a/huge.png"] and manifest.split("train").num_samples == 4
    assert ("skipping 'a/huge.png': not a readable image: a 20000x20000 PNG of 400,000,000 pixels, over the limit of "
            "178,956,970 (data.max_image_pixels, or --max-image-pixels)") in caplog.messages
    # The limit is the user's: lower, and the photos (1200 pixels) go too, which leaves nothing to write.
    assert main(["shard", "folder", str(src), str(tmp_path / "small"), "--max-image-pixels", "1199"]) == 2
    assert "(5 files left out, named above)" in capsys.readouterr().err
