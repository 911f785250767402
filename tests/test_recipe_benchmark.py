"""benchmarks/recipe_demo.py trains its setups and prints one JSON line; run again, it reads the
finished runs instead of training them again (numbers are not asserted: two steps learn nothing)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from helpers import REPO
from helpers.runs import write_demo_shards


def recipe_demo(shards, out, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "recipe_demo.py"), "--shards", str(shards), "--out", str(out),
                           "--seeds", "0", "1", "--set", "train.max_steps=2", "data.num_workers=0", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_recipe_demo_prints_each_setups_seeds_and_reuses_finished_runs(tmp_path):
    shards = write_demo_shards(tmp_path / "shards", train=2, val=1, test=1)
    done = recipe_demo(shards, tmp_path / "out", "--setups", "linear_swin", "herbs_mix")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["seeds"] == [0, 1] and list(result["setups"]) == ["linear_swin", "herbs_mix"]
    for setup in result["setups"].values():
        assert len(setup["test_top1"]) == 2 and all(0 <= v <= 100 for v in setup["test_top1"])
        assert setup["mean"] == round(statistics.mean(setup["test_top1"]), 2)
    logs = sorted(p.name for p in (tmp_path / "out" / "recipe-demo").glob("*.log"))
    assert len(logs) == 4  # one run per setup and seed
    again = recipe_demo(shards, tmp_path / "out", "--setups", "linear_swin", "herbs_mix")
    assert again.returncode == 0, again.stderr
    reread = json.loads(again.stdout)["setups"]
    assert reread == result["setups"]  # the same figures, minutes included (from the runs' own start and end events)
    assert all((tmp_path / "out" / "recipe-demo" / name).read_text().count("test ensemble top-1") == 1 for name in logs)  # not trained again
