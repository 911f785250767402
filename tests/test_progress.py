"""Progress output: whole lines where stderr is a file or pipe (SLURM logs, CI), a bar in a terminal."""

from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import termios

import pytest
from PIL import Image
from helpers import REPO
from helpers.runs import MICRO, run_dir, run_training, write_demo_shards

from herbs.cli import main
from herbs.progress import Progress

TINY = str(REPO / "configs" / "tiny.yaml")
RATE_ETA = r"[\d.]+ (?:step|img|batch)/s(?: ETA \d+:\d\d:\d\d)?"


def test_plain_lines_carry_count_values_rate_and_eta():
    out = io.StringIO()
    with Progress(6, "train", unit="step", stream=out) as bar:
        for step in range(1, 7):
            bar.update()
            if step % 2 == 0:
                bar.report(loss=f"{1 / step:.3f}", lr="1.00e-03")
        bar.write("epoch 0: val ensemble top-1 50.00%")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in lines[:3]] == ["2/6", "4/6", "6/6"]
    assert all(re.fullmatch(rf"train \d/6 loss=[\d.]+ lr=1\.00e-03 {RATE_ETA}", line) for line in lines[:3]), lines
    assert lines[3:] == ["epoch 0: val ensemble top-1 50.00%"]


def test_a_loop_without_values_gets_a_line_per_twentieth_and_its_end():
    out = io.StringIO()
    assert list(Progress(45, "shard train", unit="img", stream=out).wrap(range(45))) == list(range(45))
    counts = [line.split()[2] for line in out.getvalue().splitlines()]
    assert counts == [f"{n}/45" for n in range(2, 45, 2)] + ["45/45"]


def test_a_terminal_gets_a_redrawn_bar():
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a fresh pty is 0 columns wide
    with open(follower, "w") as tty:
        with Progress(3, "train", unit="step", stream=tty) as bar:
            for _ in range(3):
                bar.update()
            bar.report(loss="0.500")
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal side is closed and all it wrote has been read
            break
        drawn += chunk
    os.close(leader)
    assert b"\r" in drawn.replace(b"\r\n", b"") and b"3/3" in drawn and b"loss=0.500" in drawn, drawn


@pytest.mark.slow
def test_training_sharding_eval_and_predict_write_plain_lines_to_a_pipe(tmp_path, capsys):
    shards = write_demo_shards(tmp_path / "shards")
    sharding = capsys.readouterr().err
    assert "\r" not in sharding and re.search(rf"^shard train 80/80 {RATE_ETA}$", sharding, flags=re.M), sharding

    result = run_training(1, TINY, *MICRO, f"data.shards={shards}", f"train.output_dir={tmp_path}")
    assert "\r" not in result.stderr
    steps = re.findall(rf"^train (\d+)/40 loss=[\d.]+ lr=\S+ img_s=\d+ {RATE_ETA}$", result.stderr, flags=re.M)
    assert steps == [str(n) for n in range(2, 41, 2)], result.stderr  # one line every log.every=2 steps
    assert "epoch 1: val ensemble top-1" in result.stderr

    best = run_dir(tmp_path) / "best"
    assert main(["eval", "--checkpoint", str(best), "--shards", str(shards), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and re.search(rf"^eval 3/3 {RATE_ETA}$", err, flags=re.M), err  # 20 test images, batches of 8

    for i in range(3):
        Image.new("RGB", (80, 80), (40 * i, 90, 160)).save(tmp_path / f"{i}.png")
    assert main(["predict", "--checkpoint", str(best), *(str(tmp_path / f"{i}.png") for i in range(3)), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and re.search(rf"^predict 3/3 {RATE_ETA}$", err, flags=re.M), err
