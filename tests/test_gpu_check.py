"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's every part, CPU-sized (numbers are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
@pytest.mark.deepspeed
def test_gpu_check_cpu_smoke_passes_and_prints_one_json_line():
    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    report = json.loads(lines[0])
    assert done.returncode == 0 and report["ok"], report
    settings = {(s["precision"], s["fused_attention"], s["grad_checkpointing"]) for s in report["steps"]}
    assert settings == {("bf16", f, c) for f in (False, True) for c in (False, True)}
    assert all(s["images_per_s"] > 0 for s in report["steps"])
    assert report["train_resume"]["ok"] and report["zero2_bf16"]["ok"]
