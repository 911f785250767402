"""Mixup, CutMix and label smoothing: soft targets through the HERBS loss, mixing keyed by the
batch (not by the process that runs it), off by default, and a real bf16 training run with them."""

from __future__ import annotations

import pytest
import torch

from herbs.config import load_config
from herbs.errors import ConfigError
from herbs.loss import HERBSLoss
from herbs.model.herbs_model import HERBSModel
from herbs.train.mixing import BatchMixer

from helpers import REPO
from helpers.runs import metrics, micro, run_dir, run_training, tiny_config, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")
KEYS = [f"train_{i:06d}" for i in range(4)]


def batch():
    torch.manual_seed(0)
    return torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])


def test_one_hot_targets_give_the_loss_of_the_labels():
    config = tiny_config()
    model = HERBSModel(config.model).eval()
    images, labels = batch()
    with torch.no_grad():
        outputs = model(images)
    loss = HERBSLoss(load_config(TINY, ["loss.lambda_s=1"]).loss)
    hard_total, hard = loss(outputs, labels, 0)
    soft_total, soft = loss(outputs, torch.nn.functional.one_hot(labels, config.model.num_classes).float(), 0)
    assert hard.keys() == soft.keys() and "select_ce/layer1" in hard
    assert all(torch.allclose(hard[k], soft[k], rtol=1e-6) for k in hard)
    assert torch.allclose(hard_total, soft_total, rtol=1e-6)


def test_mixup_mixes_each_image_with_its_mirror_in_the_batch_and_the_targets_alike():
    images, labels = batch()
    mixer = BatchMixer(num_classes=20, seed=0, mixup_alpha=0.4)
    mixed, targets = mixer(images, labels, KEYS, epoch=3)
    weight = targets[0, 0].item()  # image 0 is labelled 0 and mixed with image 3
    assert 0 < weight < 1 and torch.allclose(targets[0, 3], torch.tensor(1 - weight))
    assert torch.allclose(mixed, images * weight + images.flip(0) * (1 - weight), atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    again = mixer(images, labels, KEYS, epoch=3)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # keyed: any process mixes this batch so
    assert not torch.equal(mixer(images, labels, KEYS, epoch=4)[1], targets)


def test_cutmix_pastes_a_box_and_weighs_the_targets_by_its_area():
    images, labels = batch()
    mixed, targets = BatchMixer(num_classes=20, seed=0, cutmix_alpha=1.0)(images, labels, KEYS, epoch=0)
    pasted = (mixed != images).any(1)[0]  # where image 0 shows image 3
    assert pasted.any() and torch.equal(mixed[0][:, pasted], images[3][:, pasted])
    assert targets[0, 0].item() == pytest.approx(1 - pasted.float().mean().item(), abs=1e-6)


def test_label_smoothing_alone_leaves_the_images_and_spreads_the_targets():
    images, labels = batch()
    mixed, targets = BatchMixer(num_classes=20, seed=0, label_smoothing=0.1)(images, labels, KEYS, epoch=0)
    assert torch.equal(mixed, images)
    assert targets[0, 0].item() == pytest.approx(0.9 + 0.1 / 20) and targets[0, 1].item() == pytest.approx(0.1 / 20)
    assert not BatchMixer(num_classes=20, seed=0).active  # the published recipe: integer labels, as before


@pytest.mark.parametrize("override, says", [
    (["data.mixup_alpha=0.8", "data.batch_size=1"], "data.batch_size 1 has no other image"),
    (["data.cutmix_alpha=-1"], "data.cutmix_alpha must be 0 (off) or more"),
    (["data.mixup_prob=1.5"], "data.mixup_prob is a probability"),
    (["loss.label_smoothing=1"], "loss.label_smoothing must be from 0"),
])
def test_bad_mixing_settings_are_one_sentence(override, says):
    from herbs.config import validate

    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        validate(load_config(TINY, override))


@pytest.mark.slow
def test_a_bf16_run_with_mixup_cutmix_and_label_smoothing_trains(tmp_path):
    shards = write_demo_shards(tmp_path / "shards", train=2, val=1, test=1)
    run_training(1, TINY, *micro(shards, tmp_path, "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0", "loss.label_smoothing=0.1",
                                 "train.mixed_precision=bf16", "train.max_steps=4"))
    losses = [row["loss"] for row in metrics(run_dir(tmp_path)) if "loss" in row]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
