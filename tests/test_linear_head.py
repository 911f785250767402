"""`model.head: linear`, the baseline HERBS is compared with: the same backbone, one linear classifier on
the last tap. It trains, exports and is evaluated and predicted with by the same commands, as a one-head
ensemble; what needs the HERBS pyramids (heatmaps) and configs that cannot train it are one sentence."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from herbs.errors import ConfigError
from herbs.model import build_model, ensemble_probabilities, head_logits
from herbs.model.linear_head import LinearHeadModel
from herbs.loss import HERBSLoss

from helpers import REPO
from helpers.runs import micro, run_dir, run_training, tiny_config, write_demo_shards
from test_eval_helpers import bird, one_sentence, run_cli

TINY = str(REPO / "configs" / "tiny.yaml")


def test_the_linear_head_is_one_classifier_on_the_last_tap():
    config = tiny_config(head="linear")
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    assert isinstance(model, LinearHeadModel)
    images = torch.randn(3, 3, 64, 64)
    out = model(images)
    assert list(out) == ["comb_outs"] and out["comb_outs"].shape == (3, 20)
    last = model.backbone(images)[-1]  # the coarsest tap's tokens, averaged
    assert torch.allclose(out["comb_outs"], model.classifier(model.norm(last.mean(1))))
    assert list(head_logits(out)) == ["comb_outs"]
    assert torch.allclose(ensemble_probabilities(out), out["comb_outs"].softmax(-1))  # one head: its own probabilities
    labels = torch.tensor([0, 1, 2])
    total, terms = HERBSLoss(config.loss)(out, labels, 0)
    assert list(terms) == ["combiner_ce"]
    assert torch.allclose(total, config.loss.lambda_c * torch.nn.functional.cross_entropy(out["comb_outs"], labels))


@pytest.mark.parametrize("overrides, says", [
    ({"model": {"head": "mlp"}}, "model.head must be one of herbs, linear, got 'mlp'"),
    ({"model": {"head": "linear"}, "loss": {"lambda_c": 0}}, "set loss.lambda_c above 0"),
])
def test_a_head_that_cannot_train_is_one_sentence(overrides, says):
    from herbs.config import from_dict

    with pytest.raises(ConfigError) as err:
        from_dict({**overrides, "model": {"pretrained": False, **overrides["model"]}})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_linear_head_needs_no_token_selection():
    """num_selects says how many tokens HERBS keeps per tap; a linear head keeps none, so no limit applies."""
    config = tiny_config(head="linear", num_selects=[4000, 12, 2, 2])
    assert build_model(config.model).config.num_selects[0] == 4000
    with pytest.raises(ConfigError):
        tiny_config(num_selects=[4000, 12, 2, 2])


@pytest.mark.slow
def test_a_linear_head_trains_in_bf16_exports_and_is_evaluated_and_predicted(tmp_path, capsys):
    shards = write_demo_shards(tmp_path / "shards", train=2, val=1, test=1)
    run_training(1, TINY, *micro(shards, tmp_path, "model.head=linear", "train.mixed_precision=bf16", "train.max_steps=2",
                                 "train.checkpoint_every=2"))
    run = run_dir(tmp_path)
    assert (run / "checkpoints" / "step-0000002").is_dir()
    code, _, err = run_cli(capsys, "eval", "--checkpoint", run / "best", "--shards", shards, "--out", tmp_path / "eval", "--workers", "0")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["samples"] == 20
    assert {key.rsplit("_top", 1)[0] for key in report["metrics"] if "_top" in key} == {"comb_outs", "ensemble"}
    assert report["metrics"]["comb_outs_top1"] == report["metrics"]["ensemble_top1"]

    photo = tmp_path / "photo.jpg"
    bird("rust_plain").save(photo)
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run / "best", photo, "--workers", "0", "--topk", "20")
    assert code == 0, err
    row = next(csv.DictReader(out.splitlines()))
    assert sum(float(v) for k, v in row.items() if k.startswith("score")) == pytest.approx(1.0, abs=1e-4)  # probabilities, not a sum of 9
    code, _, err = run_cli(capsys, "heatmap", "--checkpoint", run / "best", photo, "--out", tmp_path / "maps", "--workers", "0")
    assert "heatmaps are drawn from the HERBS pyramids; pass a model trained with model.head herbs" in one_sentence(code, err)
