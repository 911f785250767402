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
import original_code  # noqa: E402  (this script's folder is first on sys.path; it imports nothing of herbs)

original_code.use_checkout(CHECKOUT)

import torch  # noqa: E402
import yaml  # noqa: E402
from timm.models.layers import DropPath  # noqa: E402

from eval import evaluate  # noqa: E402  (the original's eval.py)

# One thread: at 2 threads the same run gave a different checkpoint after the pre-steps.
torch.set_num_threads(1)
cfg = yaml.safe_load(RECIPE.read_text())
recipe = cfg["fixture"]


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
        _, loss = original_code.loss_terms(model, cfg, model(images), labels, epoch=0)
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
    model = original_code.build(cfg)
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
        terms, loss = original_code.loss_terms(model, cfg, model(images), labels, epoch)
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
