"""A trained model ready for inference: weights, config, class names, device and precision.

Every command here reads a herbs model directory (`herbs/model/checkpoint.py`). A directory
without class names (an imported original checkpoint without `--classes`) gets the names
`class_0`, `class_1`, ... in label order.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from herbs.config import Config
from herbs.errors import HerbsError
from herbs.model.checkpoint import META, load_model
from herbs.model.tapped import TappedModel

PRECISIONS = ("no", "bf16", "fp16")


def generic_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


@dataclass
class InferenceModel:
    path: Path
    model: TappedModel  # in eval mode, on `device`
    config: Config
    meta: dict
    class_names: list[str]
    names_from: str  # "checkpoint", or "generic" when the directory names no classes
    device: torch.device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, name: str) -> int:
        """The index of a class given by name (or by its number); one sentence with the closest names if unknown."""
        if name in self.class_names:
            return self.class_names.index(name)
        if name.isascii() and name.isdigit() and int(name) < self.num_classes:  # isdigit alone takes '²'
            return int(name)
        close = difflib.get_close_matches(name, self.class_names, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"it has {self.num_classes} classes: {describe_names(self.class_names)}"
        raise HerbsError(f"class '{name}' is not one of the model's classes ({hint}); give a class name or index the model knows")


def describe_names(names: list[str], shown: int = 4) -> str:
    head = ", ".join(repr(n) for n in names[:shown])
    return head + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def writable_dir(path: Path, option: str) -> Path:
    """Create `path` if needed; one sentence naming `option` when it cannot be written, or is a model directory
    (written over whole by the next export of a model there, with anything put in it)."""
    if (path / META).is_file():
        raise HerbsError(f"'{path}' is a model directory, which the next model saved there replaces with everything in it; "
                         f"pass another folder as {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise HerbsError(f"'{path}' cannot be written ({err.strerror}); pass a writable folder as {option}") from None
    return path


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; `cpu`, `cuda`, `cuda:N` as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HerbsError(f"device '{name}' is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise HerbsError(f"device '{name}' is not one herbs runs on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HerbsError(f"device '{name}' was asked for but this machine has no usable GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise HerbsError(f"device '{name}' was asked for but this machine has {torch.cuda.device_count()} GPU(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise HerbsError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise HerbsError("--precision fp16 needs a GPU; use --precision bf16 or no on the CPU")


def autocast(device: torch.device, precision: str):
    """Mixed-precision forward passes for `bf16`/`fp16`; nothing for `no`."""
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def load_for_inference(path: str | Path, device: str | torch.device = "cpu", max_image_pixels: Optional[int] = None) -> InferenceModel:
    """The model directory at `path` on `device`; `max_image_pixels` replaces its config's data.max_image_pixels."""
    path = Path(path)
    device = pick_device(device) if isinstance(device, str) else device
    model, config, meta = load_model(path, map_location=device)
    if max_image_pixels is not None:
        config.data.max_image_pixels = max_image_pixels
    names = meta.get("class_names")
    if names is None:
        names, names_from = generic_names(config.model.num_classes), "generic"
    else:
        names_from = "checkpoint"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise HerbsError(f"'{path / 'meta.json'}' lists class_names that are not distinct names ({str(names)[:60]}); "
                             "the model directory is damaged: export or import it again")
        if len(names) != config.model.num_classes:
            raise HerbsError(
                f"'{path / 'meta.json'}' names {len(names)} classes but the model has {config.model.num_classes}; "
                "the model directory is damaged: export or import it again"
            )
    return InferenceModel(path, model, config, meta, list(names), names_from, device)
