"""The README's two commands are what a newcomer runs; CI runs the second one verbatim."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO



def readme_commands() -> list[str]:
    quick_start = REPO.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start, flags=re.S)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main, tests = commands
    assert "herbs shard demo shards/demo" in main and "configs/demo.yaml" in main
    ci = REPO.joinpath(".ci", "run").read_text().splitlines()
    assert tests in ci


def test_benchmarks_print_one_json_line():
    import json

    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--steps", "1", "--threads", "1", "--batch", "2"],
                            capture_output=True, text=True, check=True)
    line = result.stdout.strip().splitlines()
    assert len(line) == 1 and json.loads(line[0])["benchmark"] == "train_step"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_loop.py"), "--steps", "6", "--workers", "0", "--batch", "4"],
                            capture_output=True, text=True, check=True)
    line = result.stdout.strip().splitlines()
    assert len(line) == 1 and json.loads(line[0])["images_per_s"] > 0
