"""Reading the reference fixture of the original HERBS code (tests/fixtures/herbs_reference).

The fixture keeps the original's numbers as safetensors + JSON (its README says how they were
made). The importer's input is the original's own checkpoint layout, a torch.save'd
{"model": state_dict, "epoch": N}; `load_reference` writes that file from the stored weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "herbs_reference"
FILES = ("config.yaml", "weights.safetensors", "input.safetensors", "outputs_eval.safetensors", "expected.json",
         "eval_metrics.json")


@dataclass(frozen=True)
class Reference:
    directory: Path
    config: Path                # the original code's YAML config of the fixture model
    weights: dict               # the original's state dict (its module names, timm 0.4.12 layout)
    images: torch.Tensor        # [4, 3, 224, 224] float32
    labels: torch.Tensor        # [4] int64
    outputs_eval: dict          # eval-mode outputs, in the order the original returns them
    expected: dict              # loss terms, gradient norms and facts of the train-mode pass
    eval_metrics: dict          # the original eval.py's accuracies on the batch

    def write_checkpoint(self, path: Path) -> Path:
        """The weights as the original's main.py saves them (less the optimizer state, which nothing reads)."""
        torch.save({"model": self.weights, "epoch": self.expected["checkpoint_epoch"]}, path)
        return path


def missing_files(directory: Path) -> list[str]:
    return [name for name in FILES if not (directory / name).is_file()]


def load_reference(directory: Path = DEFAULT_DIR) -> Reference:
    expected = json.loads((directory / "expected.json").read_text())
    stored = load_file(str(directory / "outputs_eval.safetensors"))
    inputs = load_file(str(directory / "input.safetensors"))
    return Reference(
        directory=directory,
        config=directory / "config.yaml",
        weights=load_file(str(directory / "weights.safetensors")),
        images=inputs["images"],
        labels=inputs["labels"],
        outputs_eval={key: stored[key] for key in expected["outputs_eval_order"]},
        expected=expected,
        eval_metrics=json.loads((directory / "eval_metrics.json").read_text()),
    )
