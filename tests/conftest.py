"""Shared test fixtures: tiny model configs and the reference fixture of the original code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from herbs.config import from_dict

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("HERBS_FIXTURES", REPO.parent / "shared" / "fixtures" / "herbs_reference"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded torch: reproducible numbers, and two test processes share 2 cores fairly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference fixture made with the original code; CI must have it, elsewhere its absence skips."""
    if not (FIXTURE / "checkpoint.pt").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixture missing at {FIXTURE}")
        pytest.skip(f"reference fixture not found at {FIXTURE}")
    return FIXTURE


def tiny_config(**model_overrides):
    """A tiny random Swin HERBS config (embed 32, one block per stage pair) at 224 px, 10 classes."""
    model = dict(
        backbone="swin_tiny_patch4_window7_224",
        pretrained=False,
        backbone_args=dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7),
        img_size=224,
        num_classes=10,
        fpn_size=64,
        num_selects=[64, 32, 16, 16],
    )
    model.update(model_overrides)
    return from_dict({"model": model, "data": {"resize": max(256, model["img_size"])}})
