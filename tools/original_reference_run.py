"""Run the original HERBS code to produce the reference fixture's numbers (child of make_reference_fixture.py).

    python tools/original_reference_run.py ORIGINAL_CHECKOUT RECIPE_YAML OUT

Runs in its own process with the checkout first on sys.path, so `timm` is the checkout's
vendored 0.4.12 and the model, the selector thresholds, `suppression` and `evaluate` are the
original's own code; nothing of this project is imported. RECIPE_YAML is the fixture's
config.yaml (the original's config keys plus `backbone`, `plugin` and `fixture`: sizes and seeds).
OUT receives the files in the layout tools/compact_reference_fixture.py reads.
"""

from __future__ import annotations

import json
import shutil
import sys
from argparse import Namespace
from pathlib import Path

CHECKOUT, RECIPE, OUT = (Path(a).resolve() for a in sys.argv[1:4])
sys.path.insert(0, str(CHECKOUT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import timm  # noqa: E402
from timm.models.layers import DropPath  # noqa: E402
from timm.models.swin_transformer import _create_swin_transformer  # noqa: E402

from eval import evaluate, suppression  # noqa: E402  (the original's eval.py)
from models import builder  # noqa: E402

assert Path(timm.__file__).resolve().is_relative_to(CHECKOUT), f"timm comes from {timm.__file__}, not the checkout"

# One thread: at 2 threads the same run gave a different checkpoint after the pre-steps.
torch.set_num_threads(1)
cfg = yaml.safe_load(RECIPE.read_text())
recipe, plugin = cfg["fixture"], cfg["plugin"]
swin_args = {k: v for k, v in cfg["backbone"].items() if k not in ("variant_name_requested_by_builder", "note")}
TAPS = ("layer1", "layer2", "layer3", "layer4")


def build():
    """The unmodified builder, except that the Swin-L it hard-codes becomes the recipe's tiny Swin."""
    variant = cfg["backbone"]["variant_name_requested_by_builder"]
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


def loss_terms(model, outs: dict, labels: torch.Tensor, epoch: int) -> dict:
    """main.py's train() loss for one batch, each weighted term kept by name (main.py only sums them)."""
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


def pre_train(model) -> list[float]:
    """Random-batch SGD steps in full train mode, then BatchNorm recalibration forwards (no gradient)."""
    torch.manual_seed(recipe["pre_steps_seed"])
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["pre_steps_lr"], momentum=0.9, nesterov=True,
                                weight_decay=recipe["pre_steps_wdecay"])
    size, batch, losses = cfg["data_size"], recipe["pre_steps_batch"], []
    model.train()
    for _ in range(recipe["pre_steps"]):
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, cfg["num_classes"], (batch,))
        _, loss = loss_terms(model, model(images), labels, epoch=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        for _ in range(recipe["bn_recalibration_forwards"]):
            model(torch.randn(batch, 3, size, size))
    return losses, optimizer


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe["model_seed"])
    model = build()
    losses, optimizer = pre_train(model)
    # Copies: the train-mode forwards below update BatchNorm buffers in place.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = {"model": state, "optimizer": optimizer.state_dict(), "epoch": 0}
    torch.save(checkpoint, OUT / "checkpoint.pt")

    generator = torch.Generator().manual_seed(recipe["input_seed"])
    size = cfg["data_size"]
    images = torch.randn(recipe["input_batch"], 3, size, size, generator=generator)
    labels = torch.randint(0, cfg["num_classes"], (recipe["input_batch"],), generator=generator)
    torch.save({"images": images, "labels": labels}, OUT / "input.pt")

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    torch.save(dict(outputs), OUT / "outputs_eval.pt")
    args = Namespace(**cfg, device=torch.device("cpu"))
    best, best_name, accs = evaluate(args, model, [(torch.arange(len(labels)), images, labels)])
    (OUT / "eval_metrics.json").write_text(json.dumps({"best_top1": best, "best_top1_name": best_name, "accs": accs}, indent=1))

    loss_record, grads = {}, {}
    disabled = []
    for epoch in (0, 25):
        model.load_state_dict(checkpoint["model"])
        model.zero_grad(set_to_none=True)
        model.train()
        disabled = [n for n, m in model.named_modules() if isinstance(m, DropPath) or n == "combiner.dropout"]
        for name in disabled:
            model.get_submodule(name).eval()
        terms, loss = loss_terms(model, model(images), labels, epoch)
        loss.backward()
        with_grad = [p.grad for p in model.parameters() if p.grad is not None]
        grads[f"epoch{epoch}"] = {
            "grad_norm_total": torch.sqrt(sum((g.float() ** 2).sum() for g in with_grad)),
            "grad_norm_total_float64": torch.sqrt(sum((g.double() ** 2).sum() for g in with_grad)),
        }
        loss_record[f"epoch{epoch}"] = terms
    grads["params_without_grad"] = [n for n, p in model.named_parameters() if p.grad is None]
    torch.save(grads, OUT / "grads.pt")
    torch.save({"loss_terms": loss_record, "disabled_modules": disabled, "update_freq": cfg["update_freq"],
                "lambdas": {k: cfg[k] for k in ("lambda_b0", "lambda_b", "lambda_s", "lambda_n", "lambda_c")},
                "temperature_base": cfg["temperature"]}, OUT / "loss_train.pt")
    facts = {"pre_steps_losses_div_update_freq": losses,
             "alpha1_after_pre_steps": float(checkpoint["model"]["combiner.alpha1"])}
    (OUT / "facts.json").write_text(json.dumps(facts, indent=1))
    shutil.copyfile(RECIPE, OUT / "config.yaml")


main()
