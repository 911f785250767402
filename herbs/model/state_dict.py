"""Reading weight files safely: `torch.load(weights_only=True)` or safetensors, never arbitrary unpickling."""

from __future__ import annotations

from pathlib import Path

import torch

from herbs.errors import CheckpointError


def read_weights(path: str | Path) -> dict:
    """Return the object stored in a .pt/.pth/.bin or .safetensors file, or say why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file '{path}' does not exist; check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"'{path}' is not a readable safetensors file ({err}); re-download or re-export it") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"'{path}' cannot be read as a weights-only PyTorch checkpoint ({type(err).__name__}); "
            "it must be a state dict saved with torch.save or a .safetensors file"
        ) from err


def unwrap_state_dict(obj) -> dict:
    """Find the parameter dict inside the common checkpoint wrappers ({'model': ...}, {'state_dict': ...})."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("the file holds no state dict of tensors; pass a model checkpoint")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_matching(module: torch.nn.Module, state: dict, source: str, ignore: tuple[str, ...] = ()) -> None:
    """`load_state_dict(strict=True)` with one sentence naming the first missing key or mismatched shape."""
    own = module.state_dict()
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: parameter '{name}' has shape {tuple(tensor.shape)} but the model built from the config "
                f"expects {tuple(own[name].shape)}; the config does not match the checkpoint"
            )
    missing = [k for k in own if k not in state and not k.startswith(ignore)]
    unexpected = [k for k in state if k not in own and not k.startswith(ignore)]
    if missing:
        raise CheckpointError(
            f"{source}: parameter '{missing[0]}' is missing ({len(missing)} missing in all); "
            "the checkpoint was made for a different model or config"
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: parameter '{unexpected[0]}' is not part of the model ({len(unexpected)} such); "
            "the checkpoint was made for a different model or config"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
