"""Benchmarks refuse counts and sizes they cannot use in one line, before any work (they ended in a traceback,
some after the whole run), and recipe_demo never passes off one shard set's results as another's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


@pytest.mark.parametrize("script, args, message", [
    ("train_loop.py", ["--steps", "1"], "--steps and --epochs must be 2 or more"),  # its medians leave out the first window
    ("predict.py", ["--batch", "0"], "argument --batch: must be 1 or more, got 0"),
    ("zero_resize.py", ["--params", "0"], "--params must be 1 or more, got 0"),
    ("recipe_demo.py", ["--seeds", "0", "0"], "--seeds lists a seed twice (0 0); list each once"),  # two threads, one run
    ("vs_original.py", ["checkout", "--steps", "0"], "--steps must be 1 or more, got 0"),
])
def test_a_value_a_benchmark_cannot_use_is_one_line(script, args, message):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(f"{script}: error: {message}"), done.stderr


def test_recipe_demo_runs_on_other_shards_are_other_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("recipe_demo", REPO / "benchmarks" / "recipe_demo.py")
    recipe_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_demo)

    def name(shards: str) -> str:
        return next(o for o in recipe_demo.overrides("herbs_swin", 0, Path(shards), tmp_path, []) if o.startswith("log.name="))

    assert name("/data/a") != name("/data/b") and name("/data/a") == name("/data/a")
