"""The original HERBS code (chou141253/FGVC-HERBS at f3deb47), run from a checkout in this process.

Shared by tools/original_reference_run.py (the reference fixture) and benchmarks/vs_original.py.
`use_checkout` must come before anything imports torch-side libraries of this project: it puts the
checkout first on sys.path so that `timm` is its vendored 0.4.12. Nothing of herbs may be imported
in such a process (herbs needs timm >= 1.0). The recipe `cfg` is a mapping in the fixture's
config.yaml layout: the original's config keys plus `backbone` (Swin arguments) and `plugin`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HOW_TO_GET = ("get one with: git clone https://github.com/chou141253/FGVC-HERBS && "
              "git -C FGVC-HERBS checkout f3deb47")
TAPS = ("layer1", "layer2", "layer3", "layer4")


def check_checkout(checkout: Path) -> str | None:
    """None when `checkout` looks like the original code, else the sentence to show the user."""
    if not (checkout / "models" / "pim_module" / "pim_module.py").is_file() or not (checkout / "timm").is_dir():
        return f"'{checkout}' is not a checkout of the original HERBS code; {HOW_TO_GET}"
    return None


def use_checkout(checkout: Path) -> None:
    sys.path.insert(0, str(checkout))
    import timm

    assert Path(timm.__file__).resolve().is_relative_to(checkout), f"timm comes from {timm.__file__}, not the checkout"


def build(cfg: dict):
    """The unmodified builder, except that the Swin-L it hard-codes becomes the recipe's Swin."""
    import timm
    from timm.models.swin_transformer import _create_swin_transformer

    from models import builder

    swin_args = {k: v for k, v in cfg["backbone"].items() if k not in ("variant_name_requested_by_builder", "note")}
    variant, plugin = cfg["backbone"]["variant_name_requested_by_builder"], cfg["plugin"]
    create = timm.create_model
    timm.create_model = lambda name, pretrained=False, **kw: _create_swin_transformer(variant, pretrained=False, **swin_args)
    try:
        return builder.build_swintransformer(
            pretrained=False, num_selects=cfg["num_selects"], img_size=cfg["data_size"], use_fpn=plugin["use_fpn"],
            fpn_size=cfg["fpn_size"], proj_type=plugin["proj_type"], upsample_type=plugin["upsample_type"],
            use_selection=plugin["use_selection"], num_classes=cfg["num_classes"], use_combiner=plugin["use_combiner"],
            comb_proj_size=plugin["comb_proj_size"])
    finally:
        timm.create_model = create


def loss_terms(model, cfg: dict, outs: dict, labels, epoch: int):
    """main.py's train() loss for one batch, each weighted term kept by name (main.py only sums them).
    Returns (terms, total / update_freq)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from eval import suppression  # the original's eval.py

    temperature = 0.5 ** (epoch // 10) * cfg["temperature"]
    terms, total = {}, 0.0
    for name, out in outs.items():
        if name.startswith("FPN1_"):
            tap = name.removeprefix("FPN1_")
            target = suppression(outs[tap].detach(), torch.Tensor(model.selector.thresholds[tap]), temperature)
            term, weight, key = nn.KLDivLoss()(F.log_softmax(out / temperature, dim=-1), target), cfg["lambda_b0"], f"loss_b0/{tap}"
        elif name.startswith("select_"):
            key, weight = f"loss_s/{name.removeprefix('select_')}", cfg["lambda_s"]
            flat = out.reshape(-1, cfg["num_classes"])
            term = (nn.CrossEntropyLoss()(flat, labels.unsqueeze(1).repeat(1, out.size(1)).flatten(0))
                    if weight != 0 else torch.tensor(0.0))
        elif name.startswith("drop_"):
            key, weight = f"loss_n/{name.removeprefix('drop_')}", cfg["lambda_n"]
            flat = out.reshape(-1, cfg["num_classes"])
            term = nn.MSELoss()(torch.tanh(flat), torch.zeros_like(flat) - 1)
        elif name in TAPS:
            key, weight, term = f"loss_b/{name}", cfg["lambda_b"], nn.CrossEntropyLoss()(out.mean(1), labels)
        elif name == "comb_outs":
            key, weight, term = "loss_c", cfg["lambda_c"], nn.CrossEntropyLoss()(out, labels)
        else:
            raise SystemExit(f"the original model returned an output this recipe does not know: {name}")
        terms[key] = term.detach().float()
        if weight != 0:
            total = total + weight * term
    terms["temperature"] = torch.tensor(float(temperature))
    terms["total_before_update_freq_division"] = total.detach()
    terms["total_after_update_freq_division"] = (total / cfg["update_freq"]).detach()
    return terms, total / cfg["update_freq"]
