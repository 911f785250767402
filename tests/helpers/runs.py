"""Real training runs for the engine tests: small demo shards, a micro model, and launchers for
one process (`python train.py`) or two CPU processes (`accelerate launch --multi_gpu`, gloo)."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from herbs.config import from_dict, parse_override
from herbs.data.demo import make_demo
from herbs.data.writer import write_shards
from herbs.run import METRICS_FILE, read_jsonl
from helpers import REPO

# The micro Swin HERBS every test uses (64 px, 16 tokens a side): a training step takes milliseconds.
MICRO = [
    "model.backbone=swin_tiny_patch4_window7_224",
    "model.backbone_args={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], window_size: 4}",
    "model.img_size=64", "model.fpn_size=32", "model.num_selects=[48, 12, 2, 2]", "model.num_classes=20",
    "data.resize=72", "data.batch_size=4", "data.eval_batch_size=8", "data.shuffle_buffer=16",
    "optim.lr=0.01", "optim.warmup_steps=2", "train.mixed_precision=no", "train.epochs=2",
    "log.wandb=false", "log.every=2",
]


def tiny_config(**model_overrides):
    """The micro model as a config, for tests that build it in their own process."""
    model = {}
    for item in MICRO:
        section, key, value = parse_override(item)
        if section == "model":
            model[key] = value
    return from_dict({"model": {**model, "pretrained": False, **model_overrides}})


def micro(shards, out, *extra) -> list[str]:
    """Overrides for the micro model on `shards`, writing under `out`."""
    return [*MICRO, f"data.shards={shards}", f"train.output_dir={out}", *extra]


def write_demo_shards(out: Path, train: int = 4, val: int = 1, test: int = 1, classes: int = 20) -> Path:
    """Demo shards with `train`/`val`/`test` images per class (the first `classes` of 20), 64 px."""
    demo = make_demo(seed=0, train=train, val=val, test=test, size=64)
    if classes < len(demo.class_names):
        demo = dataclasses.replace(demo, class_names=demo.class_names[:classes], original_ids=demo.original_ids[:classes], groups=[],
                                   splits={name: [s for s in samples if s.label < classes] for name, samples in demo.splits.items()})
    write_shards(demo, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(processes: int, *args: str, launch_config: str | None = None) -> list[str]:
    """`python train.py ...` for one process, `accelerate launch` (DDP, or `launch_config`) for more or with a launch config."""
    if processes == 1 and not launch_config:
        return [sys.executable, str(REPO / "train.py"), *args]
    launcher = ["--config_file", launch_config] if launch_config else ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(free_port()), str(REPO / "train.py"), *args]


def env(deepspeed: bool = False) -> dict:
    # One thread per process: two processes share the two cores, and results stay reproducible.
    values = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    if not deepspeed:  # ACCELERATE_USE_CPU would switch DeepSpeed off
        values["ACCELERATE_USE_CPU"] = "1"
    return values


def run_training(processes: int, config: str, *overrides: str, timeout: float = 600, check: bool = True,
                 launch_config: str | None = None) -> subprocess.CompletedProcess:
    proc = start_training(processes, config, *overrides, launch_config=launch_config)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # killed whole (launcher, ranks, loader workers), so no orphaned rank runs beside the next test
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"training did not finish in {timeout} s:\n{stdout[-3000:]}\n{stderr[-5000:]}") from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"training exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def start_training(processes: int, config: str, *overrides: str, log: Path | None = None,
                   launch_config: str | None = None) -> subprocess.Popen:
    """A training run in its own process group (so the test can signal or kill all of it), writing
    to `log`, or to pipes without one."""
    streams = {"stdout": log.open("w"), "stderr": subprocess.STDOUT} if log else {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(train_command(processes, "--config", config, *overrides, launch_config=launch_config), **streams,
                            env=env(launch_config is not None), cwd=REPO, start_new_session=True)


def run_dir(output_dir: Path, project: str = "herbs-tiny", name: str = "tiny") -> Path:
    return output_dir / project / name


def checkpoint_weights(run: Path, step: int | None = None) -> dict:
    """Model weights of the newest (or the given step's) checkpoint."""
    ckpts = run / "checkpoints"
    name = f"step-{step:07d}" if step is not None else (ckpts / "latest").read_text().strip()
    return load_file(str(ckpts / name / "model.safetensors"))


def metrics(run: Path) -> list[dict]:
    return read_jsonl(run / METRICS_FILE)


def latest_step(run: Path) -> int:
    latest = run / "checkpoints" / "latest"
    return int(latest.read_text().strip().split("-")[1]) if latest.is_file() else -1


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error sentence of a run that stopped on bad input."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]
