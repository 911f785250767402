"""benchmarks/data_pipeline.py runs and prints one JSON line (numbers are not asserted: tests never time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"


def test_data_pipeline_benchmark_prints_one_json_line():
    done = subprocess.run([sys.executable, str(SCRIPT), "--images", "6", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["images"] == 6
    for key in ("herbs_img_per_s_per_core", "original_img_per_s_per_core", "ratio", "decode_img_per_s_per_core"):
        assert result[key] > 0
