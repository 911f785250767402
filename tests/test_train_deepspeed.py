"""DeepSpeed ZeRO-2 and ZeRO-3 through `accelerate launch --config_file configs/accelerate/zeroN.yaml`:
two real CPU processes over gloo train, checkpoint, resume and export a usable model."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from herbs.config import load_config
from herbs.errors import ConfigError
from herbs.model.checkpoint import load_model
from herbs.train.accel import fill_deepspeed_config

from train_helpers import MICRO, REPO, metrics, run_dir, run_training, write_demo_shards

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
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_saves_resumes_and_exports(deepspeed_installed, shards, tmp_path, stage):
    launch = f"configs/accelerate/zero{stage}.yaml"
    args = [*MICRO, f"data.shards={shards}", f"train.output_dir={tmp_path}", "data.num_workers=0", "log.every=1"]
    run_training(2, TINY, *args, "train.max_steps=2", launch_config=launch)
    run = run_dir(tmp_path)
    first = run / "checkpoints" / "step-0000002"
    assert (first / "pytorch_model").is_dir()  # DeepSpeed's own (sharded) checkpoint format
    assert json.loads((first / "trainer_state.json").read_text())["step"] == 2

    result = run_training(2, TINY, *args, "train.max_steps=4", "--resume", "auto", launch_config=launch)
    assert "resumed from" in result.stderr and "step 2" in result.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert [r["step"] for r in metrics(run) if "loss" in r] == [1, 2, 3, 4]

    model, config, meta = load_model(run / "best")  # gathered from the shards into one safetensors file
    val = {r["step"]: r["val/ensemble_top1"] for r in metrics(run) if "val/ensemble_top1" in r}
    assert sorted(val) == [2, 4] and meta["step"] == min(s for s in val if val[s] == max(val.values()))
    assert config.model.num_classes == 20
    assert sum(p.abs().sum().item() for p in model.parameters()) > 0


def test_deepspeed_json_contradicting_the_herbs_config_is_refused():
    config = load_config(REPO / "configs" / "tiny.yaml", ["train.gradient_accumulation_steps=4"])
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero2.json").read_text())
    fill_deepspeed_config(ds, config)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == config.data.batch_size
    ds = {"gradient_accumulation_steps": 2, "train_micro_batch_size_per_gpu": "auto"}
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=2 but the herbs config has train.gradient_accumulation_steps=4"):
        fill_deepspeed_config(ds, config)
    with pytest.raises(ConfigError, match="bf16.enabled=True but train.mixed_precision is no"):
        fill_deepspeed_config({"bf16": {"enabled": True}}, load_config(REPO / "configs" / "tiny.yaml"))
