"""HERBS on timm backbones other than Swin: ConvNets through timm's feature pyramid, a plain ViT
through four of its blocks. Each family's tiny member (random weights) trains, checkpoints,
exports and is evaluated by `herbs eval`; a backbone that cannot work is one sentence."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from herbs.errors import ConfigError
from herbs.model.herbs_model import HERBSModel

from helpers import REPO
from helpers.runs import micro, run_dir, run_training, tiny_config, write_demo_shards
from test_eval_helpers import run_cli

TINY = str(REPO / "configs" / "tiny.yaml")
VIT = {"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}  # 64 tokens a block at 64 px
FAMILIES = {  # model overrides of the micro model (64 px, taps of 48/12/2/2 selected tokens)
    "convnext": {"backbone": "convnext_atto", "backbone_args": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}},
    "resnet": {"backbone": "resnet18", "backbone_args": {"layers": [1, 1, 1, 1]}},
    "efficientnet": {"backbone": "efficientnet_b0", "backbone_args": {}},
    "swinv2": {"backbone": "swinv2_tiny_window8_256",
               "backbone_args": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}},
    "vit": {"backbone": "vit_tiny_patch16_224", "backbone_args": {**VIT, "out_indices": [0, 1, 2, 3]}, "num_selects": [32, 16, 8, 8]},
}


def overrides(model: dict) -> list[str]:
    return [f"model.{key}={json.dumps(value)}" for key, value in model.items()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo", train=2, val=1, test=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_taps_are_the_last_four_levels_as_token_sequences(family):
    model = HERBSModel(tiny_config(**FAMILIES[family]).model)
    taps = model.backbone(torch.zeros(2, 3, 64, 64))
    assert [tuple(t.shape) for t in taps] == [(2, n, c) for n, c in zip(model.backbone.tokens, model.backbone.channels)]
    expected = [64] * 4 if family == "vit" else [256, 64, 16, 4]  # strides 4..32 of a 64 px image; a ViT's blocks all at 8
    assert model.backbone.tokens == expected


@pytest.mark.slow
@pytest.mark.parametrize("family", ["convnext", "swinv2", "vit"])  # ResNet and EfficientNet share ConvNeXt's path
def test_a_backbone_trains_checkpoints_exports_and_is_evaluated(family, shards, tmp_path, capsys):
    run_training(1, TINY, *micro(shards, tmp_path, *overrides(FAMILIES[family]), "train.max_steps=2", "train.checkpoint_every=2"))
    run = run_dir(tmp_path)
    assert (run / "checkpoints" / "step-0000002").is_dir()
    code, _, err = run_cli(capsys, "eval", "--checkpoint", run / "best", "--shards", shards, "--out", tmp_path / "eval", "--workers", "0")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["samples"] == 20 and 0 <= report["metrics"]["ensemble_top1"] <= 100  # percent


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pretrained_file_loads_the_familys_own_timm_checkpoint(family, tmp_path):
    """A file saved from the whole timm model (classifier included), as timm and its hub publish them."""
    spec = FAMILIES[family]
    args = {k: v for k, v in spec["backbone_args"].items() if k != "out_indices"}
    torch.manual_seed(1)
    whole = timm.create_model(spec["backbone"], pretrained=False, **args, **({"img_size": 64} if family == "vit" else {}))
    save_file(whole.state_dict(), str(tmp_path / "backbone.safetensors"))
    model = HERBSModel(tiny_config(**spec, pretrained_file=str(tmp_path / "backbone.safetensors")).model)
    def flat(name: str) -> str:  # timm's feature wrappers rename modules (stem.0 -> stem_0) or nest them (model.)
        return name.removeprefix("model.").replace(".", "_")

    loaded = {flat(k): v for k, v in model.backbone.body.state_dict().items()}
    shared = [k for k in whole.state_dict() if flat(k) in loaded]
    assert len(shared) > 10
    assert all(torch.equal(whole.state_dict()[k], loaded[flat(k)]) for k in shared)
    fresh = {flat(k): v for k, v in HERBSModel(tiny_config(**spec).model).backbone.body.state_dict().items()}
    assert not all(torch.equal(fresh[flat(k)], loaded[flat(k)]) for k in shared)  # the file, not a same-seed build


@pytest.mark.parametrize("model, says", [
    ({"backbone": "vit_tiny_patch16_224", "backbone_args": VIT, "num_selects": [32, 16, 8, 8]},
     "gives 3 feature levels and HERBS taps 4"),
    ({"backbone": "vit_tiny_patch16_224", "backbone_args": {**VIT, "out_indices": [0, 1, 2, 9]}, "num_selects": [32, 16, 8, 8]},
     "feature index 9 is out of range (0 to 3)"),
    ({**FAMILIES["convnext"], "num_selects": [300, 12, 2, 2]}, "layer1 is 300 but that tap of convnext_atto has only 256 tokens"),
    ({**FAMILIES["convnext"], "img_size": 72}, "img_size 72 is not a multiple of 32, the coarsest stride of 'convnext_atto'"),
    ({"backbone": "no_such_net", "backbone_args": {}}, "'no_such_net' is not a timm model"),
])
def test_a_backbone_that_cannot_work_is_one_sentence(model, says):
    with pytest.raises(ConfigError) as err:
        HERBSModel(tiny_config(**model).model)
    assert says in str(err.value) and "\n" not in str(err.value)
