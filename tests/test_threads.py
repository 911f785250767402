"""train.threads: the thread count a run uses, whatever OMP_NUM_THREADS says (a step's last bits depend on it)."""

from __future__ import annotations

import subprocess

import pytest
from helpers import REPO
from helpers.runs import MICRO, env, metrics, run_dir, train_command, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.mark.slow
def test_train_threads_pins_the_thread_count_whatever_the_environment(tmp_path):
    """train.threads=2 under OMP_NUM_THREADS=1 and =2 takes bit-identical steps; without it, OMP_NUM_THREADS=1 differs."""
    shards = write_demo_shards(tmp_path / "shards")

    def losses(omp: str, *threads: str) -> list:
        out = tmp_path / f"omp{omp}{''.join(threads)}"
        cmd = train_command(1, "--config", TINY, *MICRO, f"data.shards={shards}", f"train.output_dir={out}", "train.epochs=1", *threads)
        subprocess.run(cmd, env={**env(), "OMP_NUM_THREADS": omp}, cwd=REPO, check=True, capture_output=True, timeout=600)
        return [(r["step"], r["loss"]) for r in metrics(run_dir(out)) if "loss" in r]

    pinned = losses("1", "train.threads=2")
    assert pinned and pinned == losses("2", "train.threads=2")
    assert losses("1") != pinned
