"""benchmarks/data_pipeline.py and data_sources.py run and print one JSON line (numbers are not asserted: tests never time)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

BENCHMARKS = REPO / "benchmarks"
SCRIPT = BENCHMARKS / "data_pipeline.py"


def test_data_pipeline_benchmark_prints_one_json_line():
    done = subprocess.run([sys.executable, str(SCRIPT), "--images", "6", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["images"] == 6
    for key in ("herbs_img_per_s_per_core", "original_img_per_s_per_core", "ratio", "decode_img_per_s_per_core"):
        assert result[key] > 0


def test_data_sources_benchmark_prints_one_json_line():
    # 20 images (one shard) and one round: a single batch of 16 from each location, a few seconds.
    done = subprocess.run([sys.executable, str(BENCHMARKS / "data_sources.py"), "--images", "20", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["images"] == 20 and result["rounds"] == 1 and result["image_size"] == [500, 375]
    for source in ("local", "http", "http_verified", "pipe_cat", "lanes16_http_ranges", "lanes16_http_no_ranges"):
        assert result[f"{source}_img_per_s_per_core"] > 0
    assert result["cub_samples_read_per_sample_without_ranges"] > result["inat_samples_read_per_sample_without_ranges"] > 1
    # The planning figures are named by herbs/data/plan.py's current shape; only their presence is checked here.
    assert any(key.startswith("plan_") for key in result)
