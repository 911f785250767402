"""EMA weights: the average itself, validation of both kinds of weights, best/ chosen by either,
the average saved with every checkpoint and resumed step-exactly, and ema/ evaluated by herbs eval."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from herbs.config import load_config, validate
from herbs.errors import ConfigError
from herbs.model.checkpoint import META, WEIGHTS
from herbs.train.ema import WeightAverage

from helpers import REPO
from helpers.runs import error_line, metrics, micro, run_dir, run_training, write_demo_shards
from test_eval_helpers import run_cli

TINY = str(REPO / "configs" / "tiny.yaml")
EMA = ["train.ema_decay=0.9", "train.max_steps=8", "train.checkpoint_every=4", "data.num_workers=0"]


def test_the_average_warms_up_follows_the_weights_and_is_applied_only_inside_its_block():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.99)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update()  # first update: decay (1 + 0) / (10 + 0) = 0.1
    assert torch.allclose(average.shadow["0.weight"], start["0.weight"] * 0.1 + model[0].weight * 0.9)
    assert "1.num_batches_tracked" not in average.shadow  # counters are the model's own
    own = model[0].weight.detach().clone()
    with average.applied():
        assert torch.equal(model[0].weight, average.shadow["0.weight"])
    assert torch.equal(model[0].weight, own)
    assert average.decay_now() == pytest.approx(2 / 11)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo", train=2, val=1, test=1)


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema")
    run_training(1, TINY, *micro(shards, out, *EMA, "train.select_best=ema"))
    return out


@pytest.mark.slow
def test_validation_reports_both_weights_and_best_holds_the_chosen_ones(shards, finished, tmp_path, capsys):
    run = run_dir(finished)
    rows = [row for row in metrics(run) if "val/ensemble_top1" in row]
    assert rows and all("val_ema/ensemble_top1" in row for row in rows)
    assert (run / "checkpoints" / "step-0000004" / "custom_checkpoint_0.pkl").is_file()
    best = json.loads((run / "best" / META).read_text())
    assert best["val_ensemble_top1"] == max(row["val_ema/ensemble_top1"] for row in rows)  # chosen by the average's score
    averaged, raw = load_file(str(run / "ema" / WEIGHTS)), load_file(str(run / "checkpoints" / "step-0000008" / "model.safetensors"))
    assert not all(torch.equal(averaged[k], raw[k]) for k in raw)  # ema/ holds the average, not the final weights
    best_weights = load_file(str(run / "best" / WEIGHTS))  # validated once, at the end: best/ is that average
    assert all(torch.equal(best_weights[k], averaged[k]) for k in averaged)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", run / "ema", "--shards", shards, "--out", tmp_path / "eval", "--workers", "0")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["samples"] == 20


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_average_of_the_uninterrupted_one(shards, finished, tmp_path):
    copy = tmp_path / "resumed"
    shutil.copytree(finished, copy)
    checkpoints = run_dir(copy) / "checkpoints"
    shutil.rmtree(checkpoints / "step-0000008")
    (checkpoints / "latest").write_text("step-0000004\n")
    shutil.rmtree(run_dir(copy) / "ema")
    run_training(1, TINY, *micro(shards, copy, *EMA, "train.select_best=ema"), "--resume", "auto")
    want, got = load_file(str(run_dir(finished) / "ema" / WEIGHTS)), load_file(str(run_dir(copy) / "ema" / WEIGHTS))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_turning_the_average_off_on_resume_is_one_sentence(shards, finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    line = error_line(run_training(1, TINY, *micro(shards, copy, "train.max_steps=12", "train.checkpoint_every=4",
                                                   "data.num_workers=0"), "--resume", "auto", check=False))
    assert "EMA weights (train.ema_decay above 0) was True" in line


@pytest.mark.parametrize("override, says", [
    (["train.ema_decay=1"], "train.ema_decay must be from 0"),
    (["train.ema_decay=-0.1"], "train.ema_decay must be from 0"),
    (["train.select_best=ema"], "train.select_best must be raw, or ema with train.ema_decay set"),
    (["train.select_best=last"], "train.select_best must be raw"),
])
def test_bad_ema_settings_are_one_sentence(override, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        validate(load_config(TINY, override))
