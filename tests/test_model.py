"""HERBSModel on several Swin sizes and image sizes; selector; weights from local files."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from herbs.config import TAPS, token_counts
from herbs.errors import CheckpointError
from herbs.loss import HERBSLoss
from herbs.model import HERBSModel, ensemble_scores
from herbs.model.selector import select_tokens, select_tokens_loop

from helpers.runs import tiny_config

SWINS = {
    # timm name -> backbone_args shrinking depth/width while keeping each variant's shape ratios
    "swin_tiny_patch4_window7_224": dict(embed_dim=24, depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 6]),
    "swin_small_patch4_window7_224": dict(embed_dim=24, depths=[1, 1, 3, 1], num_heads=[1, 2, 3, 6]),
    "swin_large_patch4_window12_384": dict(embed_dim=48, depths=[1, 1, 1, 1], num_heads=[2, 4, 8, 16]),
}


@pytest.mark.parametrize("img_size", [224, 256])
@pytest.mark.parametrize("backbone", list(SWINS))
def test_output_keys_and_shapes(backbone, img_size):
    window = 12 if "window12" in backbone else 7
    config = tiny_config(backbone=backbone, backbone_args=dict(SWINS[backbone], window_size=window),
                         img_size=img_size, num_selects=[64, 32, 8, 8])
    model = HERBSModel(config.model).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, img_size, img_size))
    tokens = token_counts(config.model)
    K = config.model.num_classes
    expected = {f"FPN1_{t}" for t in TAPS} | set(TAPS) | {f"select_{t}" for t in TAPS} | {f"drop_{t}" for t in TAPS} | {"comb_outs"}
    assert set(out) == expected
    for tap, L, n in zip(TAPS, tokens, config.model.num_selects):
        assert out[tap].shape == (2, L, K) and out[f"FPN1_{tap}"].shape == (2, L, K)
        assert out[f"select_{tap}"].shape == (2, n, K) and out[f"drop_{tap}"].shape == (2, L - n, K)
    assert out["comb_outs"].shape == (2, K)
    scores = ensemble_scores(out)
    assert torch.allclose(scores.sum(-1), torch.full((2,), 9.0), atol=1e-4)


def test_every_parameter_gets_a_gradient():
    config = tiny_config().model
    model = HERBSModel(config).train()
    with torch.no_grad():
        model.combiner.alpha.fill_(0.1)  # at its init of 0 the query/key convolutions get exactly zero gradient
    out = model(torch.randn(2, 3, config.img_size, config.img_size))
    sum(v.float().mean() for v in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []


def test_batched_selector_equals_per_sample_loop():
    torch.manual_seed(0)
    feats, logits = torch.randn(5, 196, 16), torch.randn(5, 196, 10)
    fast, loop = select_tokens(feats, logits, 32), select_tokens_loop(feats, logits, 32)
    for a, b in zip(fast, loop):
        assert torch.equal(a, b)


def test_selector_keeps_the_most_confident_tokens():
    logits = torch.zeros(1, 6, 3)
    logits[0, :, 1] = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])  # class 1 predicted; confidence rises with it
    feats = torch.arange(6.0).view(1, 6, 1)
    chosen = select_tokens(feats, logits, 2)
    assert chosen.features.flatten().tolist() == [1.0, 3.0]
    assert chosen.dropped_logits[0, :, 1].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = HERBSModel(tiny_config().model)
    ckpt = HERBSModel(tiny_config(grad_checkpointing=True).model)
    ckpt.load_state_dict(plain.state_dict())
    for m in (plain, ckpt):
        m.train()
        for mod in m.modules():  # same randomness in both: no stochastic depth or dropout
            if isinstance(mod, torch.nn.Dropout) or type(mod).__name__ == "DropPath":
                mod.eval()
    size = tiny_config().model.img_size
    x = torch.randn(2, 3, size, size)
    for m in (plain, ckpt):
        sum(v.mean() for v in m(x).values()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def _old_layout(state: dict) -> dict:
    """timm 0.4.12 / original Swin layout: patch merging at the end of the previous stage."""
    import re

    return {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
            for k, v in state.items()}


@pytest.mark.parametrize("layout", ["timm", "original"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_from_a_local_file(tmp_path, layout, suffix):
    source = HERBSModel(tiny_config().model)
    state = {k.removeprefix("backbone."): v.clone() for k, v in source.state_dict().items() if k.startswith("backbone.")}
    if layout == "original":
        state = _old_layout(state)
        assert "layers.0.downsample.reduction.weight" in state
    path = tmp_path / f"swin{suffix}"
    if suffix == ".pth":
        torch.save({"model": state}, path)
    else:
        save_file(state, str(path))
    loaded = HERBSModel(tiny_config(pretrained_file=str(path)).model)
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v), k


def test_backbone_file_of_another_size_names_the_parameter(tmp_path):
    wider = {**tiny_config().model.backbone_args, "embed_dim": 48}
    other = HERBSModel(tiny_config(backbone_args=wider).model)
    path = tmp_path / "big.pth"
    torch.save(other.backbone.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight.*\(48, 3, 4, 4\).*\(16, 3, 4, 4\)"):
        HERBSModel(tiny_config(pretrained_file=str(path)).model)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        HERBSModel(tiny_config(pretrained_file=str(path)).model)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matmul_heads_compute_what_the_conv_heads_do_from_the_same_weights(precision):
    """model.matmul_heads changes how the per-token classifiers compute, not their parameters or result:
    the same state dict loads, train-mode outputs agree (fp32: to ~1e-6; bf16 autocast: to bf16's
    resolution) and the loss backpropagates finite fp32 gradients."""
    config = tiny_config()
    conv = HERBSModel(config.model, load_pretrained=False).train()
    matmul = HERBSModel(dataclasses.replace(config.model, matmul_heads=True), load_pretrained=False).train()
    matmul.load_state_dict(conv.state_dict())  # strict: the same parameter names and shapes
    images = torch.randn(4, 3, config.model.img_size, config.model.img_size, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    dtype = torch.bfloat16 if precision == "bf16" else None
    outputs = []
    for model in (conv, matmul):
        torch.manual_seed(1)  # the same drop-path and dropout draws in both
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(images)
            total, _ = HERBSLoss(config.loss)(out, labels, epoch=0)
        total.backward()
        assert all(p.grad is None or (p.grad.dtype == torch.float32 and p.grad.isfinite().all()) for p in model.parameters())
        outputs.append(out)
    tolerance = 1e-5 if dtype is None else 0.1
    for tap in TAPS:
        for key in (tap, f"FPN1_{tap}"):
            a, b = outputs[0][key].float(), outputs[1][key].float()
            assert outputs[1][key].dtype == outputs[0][key].dtype
            assert (a - b).abs().max() <= tolerance * max(1.0, a.abs().max().item()), key
