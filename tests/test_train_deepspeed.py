"""DeepSpeed ZeRO-2 and ZeRO-3 through `accelerate launch --config_file configs/accelerate/zeroN.yaml`:
two real CPU processes over gloo train, checkpoint, resume and export a usable model."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from herbs.accel import fill_deepspeed_config
from herbs.config import load_config
from herbs.errors import ConfigError
from herbs.model.checkpoint import load_model
from herbs.train.optim import Schedule

from helpers import REPO
from helpers.runs import MICRO, error_line, metrics, run_dir, run_training, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def deepspeed_installed():
    """Skip without DeepSpeed, saying how to get it; under CI (CI=true, set by .ci/run) it must be there."""
    if importlib.util.find_spec("deepspeed") is None:
        reason = "DeepSpeed is not installed (pip install -e '.[deepspeed]'; .ci/run installs it with .[dev])"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo", val=1, test=1)


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.multiprocess
@pytest.mark.parametrize("stage, extra", [(1, []), (2, ["loss.lambda_b0=0"]), (3, [])])
def test_zero_bf16_trains_saves_resumes_and_exports(deepspeed_installed, shards, tmp_path, stage, extra):
    """bf16 in every ZeRO stage (DeepSpeed's torch_autocast over fp32 weights); ZeRO-2 also with a zero
    loss weight, whose head then gets no gradient."""
    launch = f"configs/accelerate/zero{stage}.yaml"
    args = [*MICRO, f"data.shards={shards}", f"train.output_dir={tmp_path}", "data.num_workers=0", "log.every=1",
            "train.mixed_precision=bf16", *extra]
    run_training(2, TINY, *args, "train.max_steps=2", launch_config=launch)
    run = run_dir(tmp_path)
    first = run / "checkpoints" / "step-0000002"
    assert (first / "pytorch_model").is_dir()  # DeepSpeed's own (sharded) checkpoint format
    assert json.loads((first / "trainer_state.json").read_text())["step"] == 2

    if stage == 2:  # a DeepSpeed checkpoint does not load into a run without DeepSpeed: one sentence, before loading
        line = error_line(run_training(1, TINY, *args, "train.max_steps=4", "--resume", "auto", check=False))
        assert "were written by DeepSpeed ZeRO-2 processes and this run uses no DeepSpeed" in line
    result = run_training(2, TINY, *args, "train.max_steps=4", "--resume", "auto", launch_config=launch)
    assert "resumed from" in result.stderr and "step 2" in result.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    records = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records) and not records[-1]["nonfinite_steps"]
    assert ("loss/refine/layer1" in records[-1]) == ("loss.lambda_b0=0" not in extra)

    model, config, meta = load_model(run / "best")  # gathered from the shards into one safetensors file
    val = {r["step"]: r["val/ensemble_top1"] for r in metrics(run) if "val/ensemble_top1" in r}
    assert sorted(val) == [2, 4] and meta["step"] == min(s for s in val if val[s] == max(val.values()))
    assert config.model.num_classes == 20
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights, not DeepSpeed's bf16 ones
    assert sum(p.abs().sum().item() for p in model.parameters()) > 0


def zero_weights(run, step: int) -> dict:
    """The module weights DeepSpeed saved in a checkpoint (fp32 under torch_autocast)."""
    path = run / "checkpoints" / f"step-{step:07d}" / "pytorch_model" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.multiprocess
def test_zero2_applies_the_scheduled_lr_and_skips_a_non_finite_group_whole(deepspeed_installed, shards, tmp_path):
    """Under DeepSpeed the optimizer step happens inside the group's last backward: the LR must be set
    before it, and a NaN in one micro-batch (of one rank) must skip the group's step on every rank."""
    launch = "configs/accelerate/zero2.yaml"
    args = [*MICRO, f"data.shards={shards}", "data.num_workers=0", "train.gradient_accumulation_steps=2",
            "optim.warmup_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=10", "train.max_steps=4"]
    lrs = tmp_path / "lr.jsonl"
    faulty = tmp_path / "faulty"
    # step 1 (0-based), micro-batch 0 of 2: the group's other micro-batch goes backward as usual
    os.environ.update(HERBS_RECORD_LR=str(lrs), HERBS_FAULT_NAN="1:0")
    try:
        run_training(2, TINY, *args, f"train.output_dir={faulty}", launch_config=launch)
    finally:
        del os.environ["HERBS_RECORD_LR"], os.environ["HERBS_FAULT_NAN"]
    schedule = Schedule(peak_lr=0.01, min_lr=0.0, warmup_steps=3, total_steps=4)
    applied = [json.loads(line)["lr"] for line in lrs.read_text().splitlines()]
    assert applied == [schedule.lr_at(k) for k in (0, 2, 3)]  # step 1 was not taken; the first is not the peak

    run = run_dir(faulty)
    before, after = zero_weights(run, 1), zero_weights(run, 2)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert [r["nonfinite_steps"] for r in metrics(run) if "loss" in r][-1] == 1

    # A run that resumes after the skipped step never held that group's gradients: its next step is the same.
    resumed = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints" / "step-0000002", run_dir(resumed) / "checkpoints" / "step-0000002")
    run_training(2, TINY, *args, f"train.output_dir={resumed}", "--resume", "auto", launch_config=launch)
    carried, clean = zero_weights(run, 3), zero_weights(run_dir(resumed), 3)
    assert all(torch.equal(carried[name], clean[name]) for name in carried)


def test_deepspeed_json_contradicting_the_herbs_config_is_refused():
    config = load_config(REPO / "configs" / "tiny.yaml", ["train.mixed_precision=bf16"])
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero2.json").read_text())
    fill_deepspeed_config(ds, config, accumulation=4)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == config.data.batch_size
    # precision is DeepSpeed's torch_autocast over fp32 weights, never its half-precision weights
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    ds = {"gradient_accumulation_steps": 2, "train_micro_batch_size_per_gpu": "auto"}
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=2 but the herbs config has train.gradient_accumulation_steps"):
        fill_deepspeed_config(ds, config, accumulation=4)
    with pytest.raises(ConfigError, match="bf16.enabled=True, DeepSpeed's half-precision weights"):
        fill_deepspeed_config({"bf16": {"enabled": True}}, config, accumulation=1)
    with pytest.raises(ConfigError, match="torch_autocast=.* but train.mixed_precision is no"):
        fill_deepspeed_config({"torch_autocast": {"enabled": True, "dtype": "float16"}}, load_config(REPO / "configs" / "tiny.yaml"), 1)


def test_a_contradicting_deepspeed_json_stops_before_any_process_starts(tmp_path):
    """The refusal comes from the JSON file itself, before `Accelerator()` starts a process group."""
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"gradient_accumulation_steps": 3, "zero_optimization": {"stage": 2}}))
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", TINY, "data.shards=/nonexistent"],
                            env={**os.environ, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(bad)},
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gradient_accumulation_steps=3 but the herbs config has" in result.stderr


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.multiprocess
def test_zero3_evaluation_with_unequal_batches_per_rank_does_not_hang(deepspeed_installed, shards, tmp_path):
    """Every parameter partitioned (persistence threshold 0), so every forward gathers from all ranks;
    20 validation images over 3 ranks in batches of 3 give the ranks 3, 3 and 2 batches."""
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    launch = (REPO / "configs" / "accelerate" / "zero3.yaml").read_text().replace(
        "configs/deepspeed/zero3.json", str(tmp_path / "zero3.json"))
    (tmp_path / "zero3.yaml").write_text(launch)
    args = [*MICRO, f"data.shards={shards}", f"train.output_dir={tmp_path}", "data.num_workers=0", "train.max_steps=2",
            "data.eval_batch_size=3"]
    run_training(3, TINY, *args, launch_config=str(tmp_path / "zero3.yaml"), timeout=400)
    records = metrics(run_dir(tmp_path))
    assert [r["val/samples"] for r in records if "val/samples" in r] == [20]
    assert records[-1]["test/samples"] == 20


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.multiprocess
def test_ema_weights_under_zero2_and_one_sentence_under_zero3(deepspeed_installed, shards, tmp_path):
    """ZeRO-2 keeps the whole model on every rank, so every rank averages it; ZeRO-3 is refused."""
    args = [*MICRO, f"data.shards={shards}", "data.num_workers=0", "train.mixed_precision=bf16", "train.ema_decay=0.9",
            "train.select_best=ema", "train.max_steps=2"]
    run_training(2, TINY, *args, f"train.output_dir={tmp_path / 'two'}", launch_config="configs/accelerate/zero2.yaml")
    run = run_dir(tmp_path / "two")
    assert any("val_ema/ensemble_top1" in r for r in metrics(run))
    assert (run / "checkpoints" / "step-0000002" / "custom_checkpoint_0.pkl").is_file()
    load_model(run / "ema")
    refused = run_training(2, TINY, *args, f"train.output_dir={tmp_path / 'three'}", check=False,
                           launch_config="configs/accelerate/zero3.yaml")
    assert refused.returncode != 0  # each rank says it, before any step (accelerate launch exits 1 for them)
    assert refused.stderr.count("train.py: error: train.ema_decay is not supported under DeepSpeed ZeRO-3") == 2
