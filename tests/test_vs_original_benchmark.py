"""benchmarks/vs_original.py needs a checkout of the original code, which a clone does not carry (and
CI cannot download): without one it says in one sentence how to get it, and exits 2; so does fp16
asked for on a machine without CUDA, for either side."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_without_an_original_checkout_it_says_how_to_get_one(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "vs_original.py"), str(tmp_path / "FGVC-HERBS")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stdout.strip().splitlines()
    error = json.loads(line)["error"]
    assert "is not a checkout of the original HERBS code" in error
    assert "git clone https://github.com/chou141253/FGVC-HERBS" in error and "checkout f3deb47" in error


def test_fp16_on_either_side_needs_a_gpu(tmp_path):
    checkout = tmp_path / "FGVC-HERBS"  # looks like the original to the checkout check; nothing of it runs
    (checkout / "models" / "pim_module").mkdir(parents=True)
    (checkout / "models" / "pim_module" / "pim_module.py").touch()
    (checkout / "timm").mkdir()
    for flags in (["--precision", "fp16"], ["--precision", "bf16", "--original-precision", "fp16"]):
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "vs_original.py"), str(checkout), *flags],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "fp16 needs --device cuda" in done.stderr, done.stderr
