"""Mixed precision, optimizer steps and loss weights as a cluster runs them: bf16 under DDP, a
non-finite micro-batch, every loss weight at zero, the global batch on 1 and 2 processes. Real
2-process runs (gloo); the DeepSpeed side of each is in test_train_deepspeed.py."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import yaml

from herbs.model.checkpoint import load_model

from helpers import REPO
from helpers.runs import MICRO, checkpoint_weights, metrics, run_dir, run_training, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo")


def micro(shards, out, *extra):
    return [*MICRO, f"data.shards={shards}", f"train.output_dir={out}", "data.num_workers=0", *extra]


def losses(run) -> list[float]:
    return [r["loss"] for r in metrics(run) if "loss" in r]


@pytest.mark.multiprocess
def test_bf16_ddp_trains_saves_resumes_and_exports(shards, tmp_path):
    args = micro(shards, tmp_path, "train.mixed_precision=bf16", "log.every=1")
    run_training(2, TINY, *args, "train.max_steps=2")
    result = run_training(2, TINY, *args, "train.max_steps=4", "--resume", "auto")
    run = run_dir(tmp_path)
    assert "resumed from" in result.stderr and (run / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert [r["step"] for r in metrics(run) if "loss" in r] == [1, 2, 3, 4]
    assert all(math.isfinite(x) for x in losses(run))
    model, config, _ = load_model(run / "best")
    assert config.train.mixed_precision == "bf16" and all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_loss_curve_stays_close_to_fp32(shards, tmp_path):
    """Same run in fp32 and bf16 (one process, 12 steps): autocast really runs (the losses differ) and
    stays close: the first step's loss within 1 % of fp32's (the same weights, only the arithmetic
    differs), every later one within 5 % (the two runs' weights drift apart step by step)."""
    curves = {}
    for precision in ("no", "bf16"):
        run_training(1, TINY, *micro(shards, tmp_path / precision, f"train.mixed_precision={precision}", "train.max_steps=12", "optim.lr=0.002",
                                     "log.every=1", "data.verify_checksums=false"))
        curves[precision] = losses(run_dir(tmp_path / precision))
    assert len(curves["no"]) == len(curves["bf16"]) == 12
    assert curves["no"] != curves["bf16"]
    gaps = [abs(bf16 - fp32) / fp32 for fp32, bf16 in zip(curves["no"], curves["bf16"])]
    assert gaps[0] <= 0.01 and max(gaps) <= 0.05, (gaps, curves)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("weight", ["lambda_b0", "lambda_b", "lambda_n", "lambda_c"])
def test_each_loss_weight_can_be_zero_under_ddp(shards, tmp_path, weight):
    """A zero weight skips its term, which leaves a head without gradient: DDP must still step."""
    run_training(2, TINY, *micro(shards, tmp_path, f"loss.{weight}=0", "train.max_steps=3", "log.every=1"))
    records = [r for r in metrics(run_dir(tmp_path)) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)


@pytest.mark.multiprocess
def test_ddp_skips_a_non_finite_group_whole_and_carries_nothing(shards, tmp_path):
    """NaN in micro-batch 0 of step 1 on rank 1 only: every rank skips that step (weights unchanged),
    and the next step equals that of a run resumed after it, which never held the group's gradients."""
    args = micro(shards, tmp_path / "faulty", "train.gradient_accumulation_steps=2", "train.checkpoint_every=1",
                 "train.keep_checkpoints=10", "train.max_steps=4", "log.every=1")
    os.environ["HERBS_FAULT_NAN"] = "1:0:1"
    try:
        run_training(2, TINY, *args)
    finally:
        del os.environ["HERBS_FAULT_NAN"]
    run = run_dir(tmp_path / "faulty")
    before, after = checkpoint_weights(run, 1), checkpoint_weights(run, 2)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert [r["nonfinite_steps"] for r in metrics(run) if "loss" in r] == [0, 1, 1, 1]

    resumed = run_dir(tmp_path / "resumed")
    shutil.copytree(run / "checkpoints" / "step-0000002", resumed / "checkpoints" / "step-0000002")
    run_training(2, TINY, *[a.replace(str(tmp_path / "faulty"), str(tmp_path / "resumed")) for a in args], "--resume", "auto")
    carried, clean = checkpoint_weights(run, 3), checkpoint_weights(resumed, 3)
    assert all(torch.equal(carried[name], clean[name]) for name in carried)


@pytest.mark.multiprocess
def test_two_processes_equal_one_with_the_same_global_batch(shards, tmp_path):
    """train.global_batch_size=8 of batch 4: one process accumulates 2 micro-batches, two processes none;
    the weights agree parameter by parameter, and each run records what it derived."""
    same = ["train.max_steps=4", "model.freeze_batchnorm=true", "model.drop_path_rate=0.0", "model.combiner_dropout=0.0",
            "train.global_batch_size=8", "train.gradient_accumulation_steps=null"]
    run_training(1, TINY, *micro(shards, tmp_path / "one", *same, "data.num_workers=2"))  # 2 slots either way
    run_training(2, TINY, *micro(shards, tmp_path / "two", *same))
    one, two = checkpoint_weights(run_dir(tmp_path / "one"), 4), checkpoint_weights(run_dir(tmp_path / "two"), 4)
    for name in one:
        assert torch.allclose(one[name].float(), two[name].float(), atol=1e-5, rtol=0), name
    for out, processes, accumulation in (("one", 1, 2), ("two", 2, 1)):
        derived = yaml.safe_load((run_dir(tmp_path / out) / "config.yaml").read_text())["derived"]
        assert (derived["processes"], derived["accumulation"], derived["global_batch"]) == (processes, accumulation, 8)
        assert derived["peak_lr"] == 0.01 and derived["warmup_steps"] == 2
