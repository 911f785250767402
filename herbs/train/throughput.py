"""Model FLOPs utilisation: how much of the GPU's peak the training step turns into model FLOPs.

FLOPs per image are counted once, by `torch.utils.flop_counter` over one forward pass of the
model built on the meta device (no memory, no arithmetic), and tripled for the training step
(the backward pass costs about twice the forward: the usual convention, as in PaLM's MFU).
MFU = FLOPs per image x images/s of one process / the GPU's peak dense bf16/fp16 tensor rate.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from herbs.config import ModelConfig

# Dense (no sparsity) bf16/fp16 tensor-core peaks in FLOP/s from NVIDIA's product datasheets, SXM
# parts unless named; matched against torch.cuda.get_device_name in this order (first match wins).
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak, or None where it is not a GPU in the table (CPU runs log no MFU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def train_flops_per_image(config: ModelConfig) -> float:
    """FLOPs of one training step per image (3 x the forward's)."""
    from herbs.model import build_model  # the model package pulls in timm; only runs that log MFU need it

    with torch.device("meta"):
        model = build_model(config, load_pretrained=False)
        images = torch.empty(1, 3, config.img_size, config.img_size)
    with FlopCounterMode(display=False) as counter:
        model(images)
    return 3.0 * counter.get_total_flops()
