"""The optimizer herbs trains with: torch's fused kernels, updating exactly as the published SGD and AdamW;
and benchmarks/optimizer_step.py, which times it (numbers are not asserted: tests never time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO, TINY_CONFIG
from herbs.config import OptimConfig, load_config
from herbs.model.build import build_model
from herbs.train.optim import build_optimizer


def reference(name: str, params, config: OptimConfig) -> torch.optim.Optimizer:
    """The per-tensor loop of torch's SGD / AdamW, as the original's main.py builds them."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, foreach=False)
    return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, foreach=False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_step_updates_as_the_reference_loop(name):
    torch.manual_seed(0)
    config = OptimConfig(name=name, lr=0.05, weight_decay=3e-4)
    ours, theirs = torch.nn.Linear(33, 17), torch.nn.Linear(33, 17)  # odd sizes: the kernels' vector tails
    theirs.load_state_dict(ours.state_dict())
    fused, loop = build_optimizer(ours, config), reference(name, theirs.parameters(), config)
    # The fused kernel is why herbs' optimizer step is cheaper (benchmarks/optimizer_step.py)
    assert all(group["fused"] for group in fused.param_groups)
    for _ in range(5):
        x = torch.randn(8, 33)
        for model, optimizer in ((ours, fused), (theirs, loop)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_of_the_per_tensor_loop_resumes_fused_under_a_grad_scaler():
    """Optimizer state written before herbs used the fused kernel names the kernel too ('fused': None):
    torch would take that over, and a fused optimizer's grad scaler then hands the loop a scale it refuses
    (an AssertionError at the first fp16 step of every resumed pre-upgrade run)."""
    torch.manual_seed(0)
    config = OptimConfig(lr=0.05)
    model = torch.nn.Linear(8, 4)
    old = reference("sgd", model.parameters(), config)
    model(torch.randn(2, 8)).sum().backward()
    old.step()
    optimizer = build_optimizer(model, config)
    optimizer.load_state_dict(old.state_dict())
    assert all(group["fused"] for group in optimizer.param_groups)
    torch.testing.assert_close(optimizer.state[model.weight]["momentum_buffer"], old.state[model.weight]["momentum_buffer"])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    before = model.weight.detach().clone()
    optimizer.zero_grad()
    scaler.scale(model(torch.randn(2, 8)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(model.weight, before)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_step_benchmark_prints_one_json_line(name):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "optimizer_step.py"), "--config", str(TINY_CONFIG),
                           f"optim.name={name}", "--steps", "1", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    model = build_model(load_config(TINY_CONFIG).model, load_pretrained=False)
    assert (result["optimizer"], result["parameters"]) == (name, sum(p.numel() for p in model.parameters()))
    assert result["herbs_step_s"] > 0 and result["torch_default_step_s"] > 0
