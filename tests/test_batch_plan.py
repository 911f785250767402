"""The global batch, accumulation, peak LR and warmup a run derives for its number of processes."""

from __future__ import annotations

import pytest

from herbs.config import load_config
from herbs.errors import CheckpointError, ConfigError
from herbs.train.checkpoints import TrainerState
from herbs.train.batch import plan_batch, warmup_steps

from helpers import REPO

CUB = REPO / "configs" / "cub200.yaml"


@pytest.mark.parametrize("processes, batch, accumulation", [(1, 8, 4), (2, 8, 2), (8, 4, 1), (32, 1, 1)])
def test_the_recipe_keeps_its_global_batch_on_any_number_of_processes(processes, batch, accumulation):
    config = load_config(CUB, [f"data.batch_size={batch}"])
    plan = plan_batch(config, processes)
    assert (plan.accumulation, plan.global_batch, plan.peak_lr) == (accumulation, 32, 5e-4)


def test_a_global_batch_that_cannot_be_kept_is_one_sentence_naming_a_fix():
    with pytest.raises(ConfigError, match=r"train.global_batch_size 32 cannot be made of data.batch_size 8 on 8 processes .* use data.batch_size=4"):
        plan_batch(load_config(CUB), 8)
    with pytest.raises(ConfigError, match="use a train.global_batch_size that is a multiple of 3"):
        plan_batch(load_config(CUB, ["data.batch_size=1", "train.global_batch_size=32"]), 3)


@pytest.mark.parametrize("rule, lr", [("linear", 5e-4 * 2), ("sqrt", 5e-4 * 2 ** 0.5)])
def test_lr_scaling_follows_a_global_batch_that_changes(rule, lr):
    # 8 GPUs x 8 images: 64 per step, twice the recipe's 32
    plan = plan_batch(load_config(CUB, [f"optim.lr_scaling={rule}"]), 8)
    assert (plan.accumulation, plan.global_batch) == (1, 64) and plan.peak_lr == pytest.approx(lr)
    fixed = plan_batch(load_config(CUB, [f"optim.lr_scaling={rule}", "train.gradient_accumulation_steps=4"]), 32)
    assert fixed.global_batch == 1024 and fixed.peak_lr == pytest.approx(5e-4 * {"linear": 32, "sqrt": 32 ** 0.5}[rule])


def test_a_fixed_accumulation_without_a_rule_keeps_the_lr():
    plan = plan_batch(load_config(CUB, ["train.gradient_accumulation_steps=4"]), 8)
    assert (plan.global_batch, plan.peak_lr) == (256, 5e-4)


def test_warmup_is_a_share_of_the_run_not_a_step_count():
    config = load_config(CUB)  # 8 warmup epochs
    assert warmup_steps(config, steps_per_epoch=168) == 1344
    assert warmup_steps(load_config(CUB, ["optim.warmup_steps=1500"]), steps_per_epoch=168) == 1500


@pytest.mark.parametrize("override, key", [
    ("train.checkpoint_minutes=0", "train.checkpoint_minutes"),
    ("optim.lr_scaling=cubic", "optim.lr_scaling"),
    ("train.global_batch_size=0", "train.global_batch_size"),
])
def test_bad_batch_and_schedule_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(CUB, [override])


# What a checkpoint of the recipe on 2 processes x 8 images x 2 accumulated records.
WRITTEN = TrainerState(step=100, processes=2, per_process_batch=8, accumulation=2, global_batch=32, lanes=4)


@pytest.mark.parametrize("processes, accumulation", [(1, 4), (2, 2), (4, 1)])
def test_a_resume_keeps_the_checkpoints_global_batch_on_any_number_of_processes(processes, accumulation):
    config = load_config(CUB, ["data.batch_size=8", "train.gradient_accumulation_steps=2"])  # fixed by hand when it was written
    plan = plan_batch(config, processes, WRITTEN, "ckpt")
    assert (plan.accumulation, plan.global_batch, plan.peak_lr) == (accumulation, 32, 5e-4)


def test_a_resume_that_cannot_keep_the_global_batch_is_one_sentence():
    config = load_config(CUB, ["data.batch_size=8"])
    with pytest.raises(CheckpointError, match=r"checkpoint ckpt was written with global batch 32 \(2 processes x 8 x 2 accumulated\), "
                                              r"which 3 processes of 8 cannot make with a whole accumulation; resume on one of \[1, 2, 4\] processes"):
        plan_batch(config, 3, WRITTEN, "ckpt")
    with pytest.raises(CheckpointError, match="the global batch was 32 when it was written and is 64 with this config now; set train.global_batch_size"):
        plan_batch(load_config(CUB, ["data.batch_size=8", "train.global_batch_size=64"]), 2, WRITTEN, "ckpt")
    with pytest.raises(CheckpointError, match="data.batch_size was 8 when it was written and is 4 now; set data.batch_size=8"):
        plan_batch(load_config(CUB, ["data.batch_size=4"]), 2, WRITTEN, "ckpt")
