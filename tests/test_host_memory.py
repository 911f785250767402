"""CPU training reuses the memory of the step before instead of faulting in fresh pages every step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from herbs.train.host_memory import on_glibc
from helpers import REPO

# A step whose activations (64 MB) are larger than glibc's largest mmap threshold, as the published
# widths' are: page faults per step after two warm-up steps, with and without keep_freed_memory().
STEP_FAULTS = """
import resource, sys
import torch
from herbs.train.host_memory import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else None)
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
x = torch.randn(16384, 256)
def step():
    model.zero_grad()
    model(x).square().mean().backward()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(); step()
start = faults()
for _ in range(5):
    step()
print((faults() - start) / 5)
"""

glibc = pytest.mark.skipif(not on_glibc(), reason="mallopt is glibc's")


def step_faults(mode: str, **env: str) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True, cwd=REPO,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    applied, faults = done.stdout.split()
    return applied, float(faults)


@glibc
def test_kept_memory_saves_most_page_faults_of_a_step():
    applied, kept = step_faults("keep")
    _, default = step_faults("default")
    assert applied == "True"
    assert kept < default / 4, (kept, default)  # measured: 5.7k against 69k a step


@glibc
def test_the_users_malloc_settings_stay():
    applied, _ = step_faults("keep", MALLOC_MMAP_MAX_="65536")
    assert applied == "False"
