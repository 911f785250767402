"""Elastic resume: a run interrupted on 2 processes continues on 1 (accumulation doubled), and one
interrupted on 1 continues on 2, with the same global batch, the same samples and the same weights
as the uninterrupted run. Real runs of train.py (2 processes: accelerate launch, gloo), fp32."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch

from helpers import REPO
from helpers.runs import MICRO, checkpoint_weights, run_dir, run_training, write_demo_shards
from herbs.run import STATE_FILE

TINY = str(REPO / "configs" / "tiny.yaml")
# Global batch 8 of 4 per process; 80 samples in 2 lanes: 10 steps per epoch. Interrupted at step 5,
# mid-epoch; the resumed part crosses into the next epoch. No randomness in the model itself.
SAME = ["train.max_steps=14", "train.checkpoint_every=5", "train.global_batch_size=8", "train.gradient_accumulation_steps=null",
        "model.freeze_batchnorm=true", "model.drop_path_rate=0.0", "model.combiner_dropout=0.0", "data.num_workers=0"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo")


def train(processes, shards, out, keys, monkeypatch, *extra, launch_config=None):
    monkeypatch.setenv("HERBS_RECORD_KEYS", str(keys))
    return run_training(processes, TINY, *MICRO, f"data.shards={shards}", f"train.output_dir={out}", *SAME, *extra,
                        launch_config=launch_config)


def trained(keys_file, processes, before_step=None, from_step=0) -> Counter:
    """The (epoch, key) pairs of the micro-batches the ranks recorded, in steps from_step..before_step - 1."""
    pairs = Counter()
    for rank in range(processes):
        for line in (keys_file.parent / f"{keys_file.name}.{rank}").read_text().splitlines():
            record = json.loads(line)
            if from_step <= record["step"] < (before_step if before_step is not None else 10**9):
                pairs.update((record["epoch"], key) for key in record["keys"])
    return pairs


def interrupted_at(finished, step, out):
    """A copy of the finished run as it was when its checkpoint at `step` was the newest."""
    shutil.copytree(finished, out)
    checkpoints = run_dir(out) / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"step-{step:07d}\n")
    return out


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("written_on, resumed_on", [(2, 1), (1, 2)])
def test_a_run_resumed_on_another_number_of_processes_trains_the_same_samples_to_the_same_weights(
        shards, tmp_path, monkeypatch, written_on, resumed_on):
    straight_keys, resumed_keys = tmp_path / "straight.keys", tmp_path / "resumed.keys"
    train(written_on, shards, tmp_path / "straight", straight_keys, monkeypatch)
    copy = interrupted_at(tmp_path / "straight", 5, tmp_path / "resumed")
    result = train(resumed_on, shards, copy, resumed_keys, monkeypatch, "--resume", "auto")

    accumulation = {1: 2, 2: 1}
    assert (f"resumed at step 5 on {resumed_on} processes, written by {written_on}; accumulation "
            f"{accumulation[written_on]} -> {accumulation[resumed_on]}, global batch 8 kept") in result.stderr
    # Every sample of the interrupted epoch trained on once, in the step it would have been: the same
    # (epoch, key) pairs as the uninterrupted run, counted with their repeats.
    assert trained(straight_keys, written_on, before_step=5) + trained(resumed_keys, resumed_on) == trained(straight_keys, written_on)
    assert trained(resumed_keys, resumed_on) == trained(straight_keys, written_on, from_step=5)
    straight, resumed = checkpoint_weights(run_dir(tmp_path / "straight"), 14), checkpoint_weights(run_dir(copy), 14)
    for name in straight:
        assert torch.allclose(straight[name].float(), resumed[name].float(), atol=1e-5, rtol=0), name
    state = json.loads((run_dir(copy) / "checkpoints" / "step-0000014" / STATE_FILE).read_text())
    assert (state["processes"], state["per_process_batch"], state["accumulation"], state["global_batch"], state["lanes"]) == \
        (resumed_on, 4, accumulation[resumed_on], 8, 2)

    # herbs status RUN_DIR: each checkpoint with the shape of the run that wrote it
    table = subprocess.run([sys.executable, "-m", "herbs", "status", str(run_dir(copy))], capture_output=True, text=True, check=True).stdout
    assert table.split("\n")[0].split() == ["CHECKPOINT", "STEP", "EPOCH", "BATCH", "PROCESSES", "PER-PROCESS", "BATCH",
                                             "ACCUMULATION", "GLOBAL", "BATCH", "LANES"]
    rows = [line.split() for line in table.strip().split("\n")[1:]]
    assert [row[0] for row in rows] == ["step-0000005", "step-0000010", "step-0000014"]
    assert rows[0][1:] == ["5", "0", str(5 * accumulation[written_on]), str(written_on), "4", str(accumulation[written_on]), "8", "2"]
    assert rows[-1][1:] == ["14", "1", str(4 * accumulation[resumed_on]), str(resumed_on), "4", str(accumulation[resumed_on]), "8", "2"]


def zero_weights(run, step: int) -> dict:
    """The fp32 weights DeepSpeed saved in a checkpoint, gathered from ZeRO-3's pieces as its zero_to_fp32 does."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints" / f"step-{step:07d}"), tag="pytorch_model")


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize("stage, written_on, resumed_on", [(2, 2, 1), (2, 1, 2), (3, 2, 1), (3, 1, 2)])
def test_a_zero_run_resumed_on_another_number_of_processes_repartitions_its_optimizer_state(
        shards, tmp_path, monkeypatch, stage, written_on, resumed_on):
    """DeepSpeed itself refuses to load ZeRO optimizer state on another process count; herbs re-cuts the
    weights and the SGD momentum into the new partitions, and the run ends where the uninterrupted one does."""
    launch = f"configs/accelerate/zero{stage}.yaml"
    train(written_on, shards, tmp_path / "straight", tmp_path / "straight.keys", monkeypatch, launch_config=launch)
    copy = interrupted_at(tmp_path / "straight", 5, tmp_path / "resumed")
    result = train(resumed_on, shards, copy, tmp_path / "resumed.keys", monkeypatch, "--resume", "auto", launch_config=launch)
    assert f"re-partitioned the ZeRO optimizer state of step-0000005 from {written_on} processes onto {resumed_on}" in result.stderr
    assert trained(tmp_path / "resumed.keys", resumed_on) == trained(tmp_path / "straight.keys", written_on, from_step=5)
    straight, resumed = zero_weights(run_dir(tmp_path / "straight"), 14), zero_weights(run_dir(copy), 14)
    for name in straight:
        assert torch.allclose(straight[name].float(), resumed[name].float(), atol=1e-5, rtol=0), name


def test_the_zero_resize_benchmark_prints_one_json_line():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "zero_resize.py"), "--params", "1e5", "--written", "2", "--resumed", "1"],
                          capture_output=True, text=True, timeout=300, check=True)
    [line] = done.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["params"] == 100_000 and result["published_params"] > 10**8 and result["seconds_per_process"] > 0
