"""The training engine, for real: single-process and 2-process (gloo) runs of train.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import psutil
import pytest
import torch

from herbs.model.checkpoint import load_model
from herbs.run import EXIT_REQUEUE, METRICS_FILE, REQUEUE_MARKER

from helpers import REPO, wait_for
from helpers.data import rewrite_shard
from helpers.runs import checkpoint_weights, error_line, latest_step, metrics, micro, run_dir, run_training, start_training, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo")


def test_single_process_run_leaves_everything_a_user_needs(shards, tmp_path):
    result = run_training(1, TINY, *micro(shards, tmp_path, "train.checkpoint_every=4", "train.keep_checkpoints=2"))
    run = run_dir(tmp_path)
    steps = 2 * 20  # 2 epochs x (80 images / batch 4) on one process
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [f"step-{steps - 4:07d}", f"step-{steps:07d}"]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{steps:07d}"
    records = metrics(run)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(2, steps + 1, 2))
    for key in ("loss/refine/layer1", "loss/tap_ce/layer4", "loss/suppress/layer2", "loss/combiner_ce", "lr",
                "temperature", "images_per_s", "images_per_s_per_process", "step_time_s", "data_wait_fraction", "skipped_samples"):
        assert key in train_records[-1], key
    val = [r for r in records if "val/ensemble_top1" in r]
    assert [r["epoch"] for r in val] == [1, 2]  # after each epoch
    assert "test/ensemble_top1" in records[-1] and records[-1]["test/samples"] == 20
    assert "test ensemble top-1" in result.stdout
    model, config, meta = load_model(run / "best")
    manifest = json.loads((shards / "manifest.json").read_text())
    assert meta["class_names"] == [c["name"] for c in manifest["classes"]] and config.model.img_size == 64
    assert meta["val_ensemble_top1"] == max(r["val/ensemble_top1"] for r in val)


@pytest.mark.multiprocess
def test_killed_two_process_run_resumes_bitwise(shards, tmp_path):
    args = ["train.checkpoint_every=3", "data.num_workers=1"]
    run_training(2, TINY, *micro(shards, tmp_path / "straight", *args))
    straight = checkpoint_weights(run_dir(tmp_path / "straight"))

    killed = run_dir(tmp_path / "killed")
    proc = start_training(2, TINY, *micro(shards, tmp_path / "killed", *args), log=tmp_path / "killed.log")
    try:
        wait_for(lambda: latest_step(killed) >= 6, 300, "a checkpoint at step 6", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert latest_step(killed) < 20  # it really was interrupted
    run_training(2, TINY, *micro(shards, tmp_path / "killed", *args), "--resume", "auto")
    resumed = checkpoint_weights(killed)
    assert latest_step(killed) == 20
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    steps = [r["step"] for r in metrics(killed) if "loss" in r]
    assert steps == sorted(set(steps))  # records past the checkpoint were not duplicated


@pytest.mark.multiprocess
def test_sigusr1_checkpoints_and_exits_for_requeue(shards, tmp_path):
    run = run_dir(tmp_path)
    proc = start_training(2, TINY, *micro(shards, tmp_path, "train.epochs=50", "train.checkpoint_every=1000"), log=tmp_path / "log")
    try:
        wait_for(lambda: (run / METRICS_FILE).is_file(), 300, "training to start", proc)
        # the launcher's own children are the two ranks (their data workers are grandchildren)
        workers = [p for p in psutil.Process(proc.pid).children() if "train.py" in " ".join(p.cmdline())]
        assert len(workers) == 2
        workers[1].send_signal(signal.SIGUSR1)  # one rank only: all ranks must agree to stop
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert (run / REQUEUE_MARKER).is_file()
    step = int((run / REQUEUE_MARKER).read_text())
    assert step > 0 and latest_step(run) == step
    log = (tmp_path / "log").read_text()
    assert f"exiting with {EXIT_REQUEUE}" in log

    # requeued as it ran: the same 2 processes (a checkpoint fits only the world size that wrote it)
    result = run_training(2, TINY, *micro(shards, tmp_path, "train.epochs=50", f"train.max_steps={step + 2}"), "--resume", "auto")
    assert "resumed from" in result.stderr and latest_step(run) == step + 2
    assert not (run / REQUEUE_MARKER).exists()


@pytest.mark.multiprocess
def test_sigterm_to_the_whole_process_group_still_checkpoints(shards, tmp_path):
    """SLURM's time limit and scancel signal every process of the step: the launcher, both ranks and
    their loader workers. The workers must not die of it before their rank has checkpointed."""
    run = run_dir(tmp_path)
    args = micro(shards, tmp_path, "train.epochs=50", "train.checkpoint_every=1000", "data.num_workers=2")
    proc = start_training(2, TINY, *args, log=tmp_path / "log")
    try:
        wait_for(lambda: (run / METRICS_FILE).is_file(), 300, "training to start", proc)
        loader_workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" not in " ".join(p.cmdline())]
        assert loader_workers  # the group really holds processes other than the launcher and its ranks
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "log").read_text()
    assert f"exiting with {EXIT_REQUEUE}" in log and "Traceback" not in log.split("exiting with")[0], log[-3000:]
    step = int((run / REQUEUE_MARKER).read_text())
    assert step > 0 and latest_step(run) == step

    run_training(2, TINY, *args[:-1], f"train.max_steps={step + 2}", "--resume", "auto")
    assert latest_step(run) == step + 2


def test_checkpoint_minutes_checkpoints_on_the_clock(shards, tmp_path):
    """checkpoint_every far away, a clock of 60 ms: checkpoints come from the clock alone."""
    run_training(1, TINY, *micro(shards, tmp_path, "train.max_steps=12", "train.checkpoint_every=1000",
                                 "train.checkpoint_minutes=0.001", "train.keep_checkpoints=100", "data.num_workers=0"))
    steps = sorted(int(p.name.split("-")[1]) for p in (run_dir(tmp_path) / "checkpoints").glob("step-*"))
    assert len(steps) >= 3 and steps[-1] == 12, steps


def test_single_process_exit_code_is_75(shards, tmp_path):
    run = run_dir(tmp_path)
    proc = start_training(1, TINY, *micro(shards, tmp_path, "train.epochs=50"), log=tmp_path / "log")
    wait_for(lambda: (run / METRICS_FILE).is_file(), 300, "training to start", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_REQUEUE


def test_debug_config_runs(shards, tmp_path):
    result = run_training(1, str(REPO / "configs" / "debug.yaml"), f"data.shards={shards}", f"train.output_dir={tmp_path}",
                          "model.num_classes=20")
    records = metrics(run_dir(tmp_path, "herbs-debug", "debug"))
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert "test ensemble top-1" in result.stdout


def test_wandb_offline_writes_a_run(shards, tmp_path):
    os.environ.pop("WANDB_API_KEY", None)
    run_training(1, TINY, *micro(shards, tmp_path, "train.max_steps=2", "log.wandb=true"))
    run = run_dir(tmp_path)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert (run / "wandb_id").read_text().strip() in offline[0].name


def test_bad_settings_stop_before_training(shards, tmp_path):
    line = error_line(run_training(1, TINY, *micro(shards, tmp_path, "model.num_classes=10"), check=False))
    assert "have 20 classes but model.num_classes is 10" in line
    line = error_line(run_training(1, TINY, *micro(shards, tmp_path, "train.mixed_precision=fp16"), check=False))
    assert "fp16" in line and "no GPU" in line
    line = error_line(run_training(1, TINY, *micro(shards, tmp_path), "--resume", str(tmp_path), check=False))
    assert "no complete checkpoint" in line
    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    tar = next(damaged.glob("train-*.tar"))
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    line = error_line(run_training(1, TINY, *micro(damaged, tmp_path), check=False))
    assert "sha256" in line and tar.name in line
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = error_line(run_training(1, TINY, *micro(shards, blocker / "runs"), check=False))
    assert "cannot be written" in line


def test_a_loader_worker_that_finds_no_usable_sample_ends_the_run_with_its_sentence(tmp_path):
    """The error is raised in a loader worker, which stays up (it ignores the stop signals); the run must
    still exit, not wait at interpreter exit for a worker that nobody told to stop."""
    shards = write_demo_shards(tmp_path / "shards", train=1, classes=4)
    for tar in shards.glob("train-*.tar"):
        with tarfile.open(tar) as members:
            keys = {member.name.split(".")[0] for member in members}
        rewrite_shard(shards, tar.name, {key: {"cls": b"77"} for key in keys})
    result = run_training(1, TINY, *micro(shards, tmp_path, "model.num_classes=4", "data.num_workers=1"), check=False, timeout=90)
    assert "no sample of split 'train'" in error_line(result)


def test_non_finite_losses_stop_with_a_message(shards, tmp_path):
    result = run_training(1, TINY, *micro(shards, tmp_path, "optim.lr=1e30", "optim.warmup_steps=0", "train.max_nonfinite_steps=3"),
                          check=False)
    line = error_line(result)
    assert "non-finite for 3 steps in a row" in line


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """The README's main command, one epoch instead of twelve (the full demo is measured by hand)."""
    shards = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "herbs.cli", "shard", "demo", str(shards)], check=True, capture_output=True)
    result = run_training(1, str(REPO / "configs" / "demo.yaml"), f"data.shards={shards}", f"train.output_dir={tmp_path}",
                          "train.epochs=1")
    assert "test ensemble top-1" in result.stdout and "best weights" in result.stdout
    assert (run_dir(tmp_path, "herbs-demo", "demo") / "best" / "model.safetensors").is_file()
