"""The synthetic demo dataset and `herbs shard demo`."""

from __future__ import annotations

import io

from PIL import Image

from herbs.cli import main
from herbs.data.demo import VARIANTS, make_demo
from herbs.data.manifest import load_manifest


def test_demo_is_deterministic_and_shaped_like_a_fine_grained_dataset():
    demo = make_demo(seed=0, train=2, val=1, test=1)
    assert len(demo.class_names) == 20 and len(set(demo.class_names)) == 20
    assert {k: len(v) for k, v in demo.splits.items()} == {"train": 40, "val": 20, "test": 20}
    assert [len(g.classes) for g in demo.groups] == [5, 5, 5, 5]
    assert all(demo.class_names[c].startswith(g.name) for g in demo.groups for c in g.classes)
    assert [s.label for s in demo.splits["test"]] == list(range(20))
    image = Image.open(io.BytesIO(demo.splits["train"][0].data))
    assert image.format == "JPEG" and image.size == (128, 128)
    assert [s.data for s in make_demo(seed=0, train=2, val=1, test=1).splits["train"]] == [s.data for s in demo.splits["train"]]
    assert make_demo(seed=1, train=2, val=1, test=1).splits["train"][0].data != demo.splits["train"][0].data
    assert len(VARIANTS) == 5


def test_herbs_shard_demo_writes_train_val_test_with_a_hierarchy(tmp_path, capsys):
    assert main(["shard", "demo", str(tmp_path / "demo")]) == 0
    manifest = load_manifest(tmp_path / "demo", verify=True)
    assert manifest.dataset == "demo" and manifest.num_classes == 20
    assert {n: s.num_samples for n, s in manifest.splits.items()} == {"train": 960, "val": 200, "test": 300}
    assert [g.name for g in manifest.hierarchy] == ["slate", "olive", "rust", "grey"]
    assert "wrote" in capsys.readouterr().out
