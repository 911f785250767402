#!/usr/bin/env python
"""Turn a reference fixture in the original code's own files into the compact in-repo fixture.

    python tools/compact_reference_fixture.py SOURCE OUT

SOURCE holds what the original code writes (see tools/make_reference_fixture.py): checkpoint.pt,
input.pt, outputs_eval.pt, loss_train.pt, grads.pt, eval_metrics.json, config.yaml, facts.json.
OUT gets only what the tests read: the model weights, the input batch and the eval outputs as
safetensors; the loss terms, gradient norms and facts as JSON; config.yaml and eval_metrics.json
as they are. The optimizer state, intermediate activations, train-mode outputs, BatchNorm
statistics and per-parameter gradients are left out. After writing, every kept number is read
back and compared bit for bit with SOURCE.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.reference import load_reference  # noqa: E402 (the tests' reader is the one definition of the format)


def _load(source: Path, name: str):
    return torch.load(source / name, map_location="cpu", weights_only=True)


def _floats(terms: dict) -> dict:
    # float32 -> Python float is exact, and JSON keeps a float's repr exactly
    return {key: float(value) for key, value in terms.items()}


def compact(source: Path, out: Path) -> None:
    checkpoint, inputs = _load(source, "checkpoint.pt"), _load(source, "input.pt")
    outputs, loss, grads = _load(source, "outputs_eval.pt"), _load(source, "loss_train.pt"), _load(source, "grads.pt")
    facts = json.loads((source / "facts.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint["model"].items()}, str(out / "weights.safetensors"))
    save_file({"images": inputs["images"].contiguous(), "labels": inputs["labels"].contiguous()}, str(out / "input.safetensors"))
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(out / "outputs_eval.safetensors"))
    epochs = [key for key in loss["loss_terms"]]
    expected = {
        "checkpoint_epoch": checkpoint["epoch"],
        "outputs_eval_order": list(outputs),
        "loss_terms": {epoch: _floats(loss["loss_terms"][epoch]) for epoch in epochs},
        "grad_norm": {epoch: {"float32": float(grads[epoch]["grad_norm_total"]),
                              "float64": float(grads[epoch]["grad_norm_total_float64"])} for epoch in epochs},
        "params_without_grad": list(grads["params_without_grad"]),
        "disabled_modules": list(loss["disabled_modules"]),
        "update_freq": loss["update_freq"],
        "lambdas": loss["lambdas"],
        "temperature_base": loss["temperature_base"],
        "pre_steps_losses_div_update_freq": facts["pre_steps_losses_div_update_freq"],
        "alpha1_after_pre_steps": facts["alpha1_after_pre_steps"],
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for name in ("config.yaml", "eval_metrics.json"):
        shutil.copyfile(source / name, out / name)
    verify(source, out)


def verify(source: Path, out: Path) -> None:
    """Every number in OUT equals SOURCE's bit for bit; raises AssertionError naming the first that does not."""
    ref = load_reference(out)
    checkpoint, inputs = _load(source, "checkpoint.pt"), _load(source, "input.pt")
    outputs, loss, grads = _load(source, "outputs_eval.pt"), _load(source, "loss_train.pt"), _load(source, "grads.pt")
    assert set(ref.weights) == set(checkpoint["model"]), "weight names"
    for key, value in checkpoint["model"].items():
        assert ref.weights[key].dtype == value.dtype and torch.equal(ref.weights[key], value), key
    assert torch.equal(ref.images, inputs["images"]) and torch.equal(ref.labels, inputs["labels"]), "input"
    assert list(ref.outputs_eval) == list(outputs), "output order"
    for key, value in outputs.items():
        assert torch.equal(ref.outputs_eval[key], value), key
    for epoch, terms in loss["loss_terms"].items():
        for key, value in terms.items():
            assert torch.tensor(ref.expected["loss_terms"][epoch][key], dtype=value.dtype) == value, (epoch, key)
        want = grads[epoch]["grad_norm_total_float64"]
        assert torch.tensor(ref.expected["grad_norm"][epoch]["float64"], dtype=torch.float64) == want, epoch
    assert ref.eval_metrics == json.loads((source / "eval_metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a fixture in the original code's files")
    parser.add_argument("out", type=Path, help="where the compact fixture goes, e.g. tests/fixtures/herbs_reference")
    args = parser.parse_args()
    compact(args.source, args.out)
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB); every number equals {args.source}'s bit for bit")


if __name__ == "__main__":
    main()
