"""Nothing lost, nothing hangs: run directories, checkpoints and resume under misuse and damage,
with real single-process runs of train.py (one 2-process run for the lock's broadcast)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile

import pytest
import torch

from herbs.config import load_config
from herbs.errors import EXIT_USAGE, ConfigError, HerbsError, exit_code
from herbs.train.fit import progressing
from herbs.train.preemption import PreemptionWatch
from herbs.run import EXIT_REQUEUE, METRICS_FILE, REQUEUE_MARKER

from helpers import REPO, wait_for
from helpers.data import rewrite_shard
from helpers.runs import checkpoint_weights, error_line, latest_step, metrics, micro, run_dir, run_training, start_training, write_demo_shards

TINY = str(REPO / "configs" / "tiny.yaml")
TEN = ["train.checkpoint_every=5", "train.max_steps=10"]  # checkpoints at steps 5 and 10, then val, best, test


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards") / "demo")


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    """The output directory of a finished 10-step run; tests work on copies of it."""
    out = tmp_path_factory.mktemp("finished")
    run_training(1, TINY, *micro(shards, out, *TEN))
    return out


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def steps(run) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_a_fresh_run_never_reuses_a_directory_and_overwrite_moves_the_old_run_aside(shards, copy):
    run = run_dir(copy)
    first = json.loads((run / "run.json").read_text())
    other = micro(shards, copy, "optim.lr=0.02", "train.max_steps=2", "train.checkpoint_every=1")
    line = error_line(run_training(1, TINY, *other, check=False))
    assert "already holds a run" in line and "--resume auto" in line and "log.name" in line and "--overwrite" in line
    assert steps(run) == [5, 10] and latest_step(run) == 10  # untouched

    nested = run / "lr-0.1"  # a sweep point's run (herbs submit names it <name>/<point>), which --overwrite would carry off
    shutil.copytree(run, nested, ignore=shutil.ignore_patterns("lr-0.1", "run.lock"))
    line = error_line(run_training(1, TINY, *other, "--overwrite", check=False))
    assert line.endswith(f"run directory '{run}' holds the run directory '{nested}' of another run, which --overwrite would move "
                         "aside with it; choose another log.name, or move that run out")
    assert steps(nested) == [5, 10] and steps(run) == [5, 10]
    shutil.rmtree(nested)
    run_training(1, TINY, *other, "--overwrite")
    [aside] = run.parent.glob("tiny.old-*")
    assert steps(aside) == [5, 10] and json.loads((aside / "run.json").read_text())["id"] == first["id"]
    assert steps(run) == [1, 2] and json.loads((run / "run.json").read_text())["id"] != first["id"]


@pytest.mark.slow
def test_pruning_keeps_this_runs_newest_checkpoints_by_step_and_never_another_runs(shards, copy):
    run = run_dir(copy)
    foreign = run / "checkpoints" / "step-0000100"  # e.g. copied in from another run
    shutil.copytree(run / "checkpoints" / "step-0000005", foreign)
    record = json.loads((foreign / "checkpoint.json").read_text())
    (foreign / "checkpoint.json").write_text(json.dumps({**record, "run": "another-run"}))
    (run / "checkpoints" / "latest").write_text("step-0000011\n")  # e.g. its checkpoint was deleted by hand

    result = run_training(1, TINY, *micro(shards, copy, "train.checkpoint_every=5", "train.max_steps=20", "train.keep_checkpoints=2"),
                          "--resume", "auto")
    assert steps(run) == [15, 20, 100] and latest_step(run) == 20
    assert result.stderr.count("which is not a complete checkpoint") == 1  # said once, by the resume


@pytest.mark.slow
def test_a_resume_from_an_earlier_step_sets_the_later_branch_aside_and_prunes_only_the_new_one(shards, copy):
    """Resuming step 5 of a run that went on to 10 abandons 10 (and the best/ it chose): pruning must keep the
    new branch's newest, --resume auto must never fall back to the old branch, and nothing of it is deleted."""
    run = run_dir(copy)
    old_best = json.loads((run / "best" / "meta.json").read_text())
    assert old_best["step"] == 10  # the finished run chose its final weights
    old_ten, old_metrics = checkpoint_weights(run, 10), (run / METRICS_FILE).read_text()

    result = run_training(1, TINY, *micro(shards, copy, "train.checkpoint_every=1", "train.max_steps=8", "train.keep_checkpoints=2"),
                          "--resume", str(run / "checkpoints" / "step-0000005"))
    assert steps(run) == [7, 8] and latest_step(run) == 8  # the old code kept the abandoned 10 and pruned 7: [8, 10]
    [aside] = run.glob("abandoned-after-step-0000005")
    assert f"{aside}" in result.stderr and "step-0000010" in result.stderr
    kept = checkpoint_weights(aside, 10)
    assert all(torch.equal(kept[key], old_ten[key]) for key in old_ten)
    assert json.loads((aside / "best" / "meta.json").read_text()) == old_best
    assert (aside / METRICS_FILE).read_text() == old_metrics
    assert json.loads((run / "best" / "meta.json").read_text())["step"] <= 8  # the test evaluation used this branch's weights
    assert json.loads((run / "run.json").read_text())["finished_step"] == 8

    # Back to the abandoned step 10, from its new place: now this run's 7 and 8 are another branch.
    result = run_training(1, TINY, *micro(shards, copy, "train.checkpoint_every=1", "train.max_steps=12", "train.keep_checkpoints=2"),
                          "--resume", str(aside / "checkpoints" / "step-0000010"))
    assert steps(run) == [11, 12] and steps(run / "abandoned-after-step-0000010") == [7, 8], result.stderr
    assert f"outside {run / 'checkpoints'}" in result.stderr


@pytest.mark.slow
def test_skipped_samples_are_counted_once_across_a_crash_between_logged_steps(tmp_path, monkeypatch):
    """A checkpoint between two logged steps must carry the samples skipped since the last one: the resumed
    run does not see those batches again."""
    shards = write_demo_shards(tmp_path / "shards")
    for tar in sorted(shards.glob("train-*.tar")):  # every second training sample has a label outside the classes
        with tarfile.open(tar) as opened:
            keys = sorted({member.name.split(".")[0] for member in opened})
        rewrite_shard(shards, tar.name, {key: {"cls": b"77"} for key in keys[::2]})
    args = ("train.checkpoint_every=1", "train.max_steps=8", "log.every=4", "data.num_workers=0")
    run_training(1, TINY, *micro(shards, tmp_path / "straight", *args))
    monkeypatch.setenv("HERBS_FAULT_EXIT", "6")  # dies in the seventh step: after the log at step 4 and the checkpoint at 6
    assert run_training(1, TINY, *micro(shards, tmp_path / "resumed", *args), check=False).returncode == 3
    monkeypatch.delenv("HERBS_FAULT_EXIT")
    run_training(1, TINY, *micro(shards, tmp_path / "resumed", *args), "--resume", "auto")
    straight, resumed = ([(r["step"], r["skipped_samples"]) for r in metrics(run_dir(tmp_path / out)) if "skipped_samples" in r]
                         for out in ("straight", "resumed"))
    assert resumed == straight and straight[-1][1] > straight[0][1] > 0  # the old code lost steps 5 and 6's: 12, not 16


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_75_while_a_second_process_is_refused(shards, tmp_path):
    run = run_dir(tmp_path)
    args = micro(shards, tmp_path, "train.epochs=50", "train.checkpoint_every=1000", "data.num_workers=1")
    proc = start_training(1, TINY, *args, log=tmp_path / "log")
    try:
        wait_for(lambda: (run / METRICS_FILE).is_file(), 300, "training to start", proc)
        line = error_line(run_training(1, TINY, *args, "--resume", "auto", check=False))
        assert f"in use by pid {proc.pid} on host {socket.gethostname()}" in line
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group, loader workers too
        assert proc.wait(timeout=120) == EXIT_REQUEUE
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    assert latest_step(run) == int((run / REQUEUE_MARKER).read_text()) > 0


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_the_lock_goes_with_the_process(shards, tmp_path):
    log = tmp_path / "log"
    args = micro(shards, tmp_path, "train.epochs=50", "train.checkpoint_every=1000", "data.num_workers=1")
    proc = start_training(1, TINY, *args, log=log)
    try:
        # the first step takes seconds (the loader's worker starts): both Ctrl-Cs land in it
        wait_for(lambda: "steps in all" in log.read_text(), 300, "the training loop", proc)
        os.killpg(proc.pid, signal.SIGINT)
        wait_for(lambda: "press Ctrl-C again" in log.read_text(), 60, "the first Ctrl-C", proc)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == -signal.SIGINT
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert latest_step(run_dir(tmp_path)) == -1  # no checkpoint: it really stopped at once
    run_training(1, TINY, *micro(shards, tmp_path, "train.max_steps=2"), "--resume", "auto")  # the lock died with it


def test_ctrl_c_after_the_last_checkpoint_says_what_it_still_waits_for(caplog):
    with caplog.at_level(logging.WARNING, logger="herbs.train.preemption"), PreemptionWatch() as watch:
        watch.doing = "training is done and its last checkpoint written; finishing the final export and test evaluation"
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: watch.received == signal.SIGINT, 10, "the handler")
    assert caplog.messages == ["Ctrl-C: training is done and its last checkpoint written; finishing the final export and test "
                               "evaluation; press Ctrl-C again to stop at once"]


@pytest.mark.multiprocess
def test_a_locked_run_directory_stops_every_rank(shards, tmp_path):
    run = run_dir(tmp_path)
    run.mkdir(parents=True)
    with (run / "run.lock").open("a+") as lock:  # held as a running train.py holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 4242 on host elsewhere\n")
        lock.flush()
        result = run_training(2, TINY, *micro(shards, tmp_path), check=False, timeout=300)
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if "in use by pid 4242 on host elsewhere" in line]
    assert len(refusals) == 2, result.stderr  # one per rank: neither waits for the other


def test_an_error_leaves_in_one_write_so_ranks_failing_together_keep_their_own_lines(monkeypatch):
    writes = []

    class Recording:  # what the pipe sees: sys.stderr writes through, one syscall per write()
        def write(self, text):
            writes.append(text)

    def refuse():
        raise HerbsError("run directory is in use")

    monkeypatch.setattr("sys.stderr", Recording())
    assert exit_code("train.py", refuse) == EXIT_USAGE
    assert writes == ["train.py: error: run directory is in use\n"]


@pytest.mark.slow
def test_a_resume_that_does_not_fit_is_one_sentence(shards, copy, tmp_path):
    resume = ["train.max_steps=20", "--resume", "auto"]
    line = error_line(run_training(1, TINY, *micro(shards, copy, "data.batch_size=8"), *resume, check=False, timeout=300))
    assert "data.batch_size was 4 when it was written and is 8 now" in line
    newest = run_dir(copy) / "checkpoints" / "step-0000010" / "trainer_state.json"
    kept = newest.read_bytes()
    newest.write_bytes(kept[: len(kept) // 2])  # damaged: --resume auto falls back to step 5, whose batch must be checked as well
    line = error_line(run_training(1, TINY, *micro(shards, copy, "data.batch_size=8"), *resume, check=False, timeout=300))
    assert "checkpoint" in line and "step-0000005" in line and "data.batch_size was 4 when it was written and is 8 now" in line
    newest.write_bytes(kept)
    line = error_line(run_training(1, TINY, *micro(shards, copy, "train.gradient_accumulation_steps=2"), *resume, check=False))
    assert "the global batch was 4 when it was written and is 8 with this config now" in line
    line = error_line(run_training(1, TINY, *micro(shards, copy, "model.fpn_size=16"), *resume, check=False))
    assert re.search(r"the shape of \S+ was \[.*\] when it was written and is \[.*\] now", line)
    ten = write_demo_shards(tmp_path / "ten", classes=10)
    checkpoint = run_dir(copy) / "checkpoints" / "step-0000010"
    line = error_line(run_training(1, TINY, *micro(ten, tmp_path / "new", "model.num_classes=10", "train.max_steps=20"),
                                   "--resume", str(checkpoint), check=False))
    assert "model.num_classes was 20 when it was written and is 10 now" in line


def test_an_epoch_without_batches_stops_instead_of_spinning():
    with pytest.raises(HerbsError, match="epoch 3 has no batches from batch 10 on"):
        list(progressing(iter([]), 3, 10))
    assert list(progressing(iter([1, 2]), 0, 0)) == [1, 2]


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])


@pytest.mark.slow
@pytest.mark.parametrize("name, how", [("random_states_0.pkl", "flip"), ("model.safetensors", "truncate")])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_resumed_step_exactly(shards, finished, copy, name, how):
    run = run_dir(copy)
    straight = checkpoint_weights(run_dir(finished), 10)
    damage(run / "checkpoints" / "step-0000010" / name, how)
    with (run / METRICS_FILE).open("a") as f:
        f.write('{"step": 11, "loss": 1.2')  # torn by a full disk
    result = run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", "auto")
    assert f"checkpoint {run / 'checkpoints' / 'step-0000010'} is damaged: {name} does not match" in result.stderr
    assert "resuming from step-0000005, the newest intact checkpoint" in result.stderr
    assert "dropped 1 line(s) that are not complete JSON" in result.stderr
    assert all(json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines())
    resumed = checkpoint_weights(run, 10)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.slow
def test_an_explicitly_named_damaged_checkpoint_is_one_sentence(shards, copy):
    checkpoint = run_dir(copy) / "checkpoints" / "step-0000010"
    damage(checkpoint / "optimizer.bin", "truncate")
    line = error_line(run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", str(checkpoint), check=False))
    assert f"checkpoint {checkpoint} is damaged: optimizer.bin does not match the sha256" in line


@pytest.mark.slow
def test_resuming_a_finished_run_does_nothing(shards, copy):
    run = run_dir(copy)
    before = (run / METRICS_FILE).read_text()
    result = run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", "auto")
    assert "already finished at step 10; nothing to do" in result.stderr
    assert (run / METRICS_FILE).read_text() == before and len([r for r in metrics(run) if "test/samples" in r]) == 1


@pytest.mark.slow
def test_a_resume_does_not_need_the_backbone_file_the_run_started_from(shards, copy, tmp_path):
    """The checkpoint holds every weight: a pretrained file removed from scratch since must not stop the requeued job."""
    gone = tmp_path / "swin_tiny.safetensors"
    result = run_training(1, TINY, *micro(shards, copy, "train.checkpoint_every=5", "train.max_steps=12", f"model.pretrained_file={gone}"),
                          "--resume", "auto")
    assert latest_step(run_dir(copy)) == 12, result.stderr


# Writes to a run directory, each killed at its rename (as a SIGKILL or a node failure could): argv[1] is the run.
KILLED_AT_RENAME = """
import os, pathlib, signal, sys
import torch
from herbs.atomic import write_atomic
from herbs.config import load_config
from herbs.model.checkpoint import save_model
run = pathlib.Path(sys.argv[1])
def killed(*args):
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = pathlib.Path.rename = pathlib.Path.replace = killed
{write}
"""
KILLED_WRITES = ["write_atomic(run / 'run.json', '{}')", "write_atomic(run / 'checkpoints' / 'latest', 'step-0000099')",
                 *(f"save_model({{'w': torch.zeros(2)}}, load_config({TINY!r}), run / {name!r})" for name in ("best", "ema"))]


@pytest.mark.slow
def test_writes_killed_before_their_rename_leave_only_temporaries_that_the_next_start_removes(shards, copy):
    run = run_dir(copy)
    written = ["run.json", "checkpoints/latest", "best/model.safetensors"]
    kept = [(run / path).read_bytes() for path in written]
    for write in KILLED_WRITES:
        killed = subprocess.run([sys.executable, "-c", KILLED_AT_RENAME.format(write=write), str(run)], capture_output=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob(".*.tmp*"))
    assert [re.sub(r"-\d+$", "", name) for name in left] == [".best.tmp", ".ema.tmp", ".run.json.tmp", "checkpoints/.latest.tmp"], left
    assert [(run / path).read_bytes() for path in written] == kept and not (run / "ema").exists()  # as before each write
    result = run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", "auto")
    assert "already finished at step 10" in result.stderr
    assert not list(run.rglob(".*.tmp*")) and all(f"removing {run / name}" in result.stderr for name in left)


# A directory that replaces an older one (best/, a checkpoint saved again at its step), its writer
# killed at one moment of the replace or of the prune after it: argv[1] is the directory being
# replaced, argv[2] the moment (see `kill_replacing`).
KILLED_REPLACING = """
import json, os, pathlib, shutil, signal, sys
import torch
from accelerate import Accelerator
from herbs.config import load_config
from herbs.model.checkpoint import save_model
from herbs.train.checkpoints import CheckpointDir, TrainerState
target, kill_at = pathlib.Path(sys.argv[1]), sys.argv[2]
real_replace, real_rmtree, real_unlink = os.replace, shutil.rmtree, os.unlink
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
def replace(src, dst):
    if kill_at == "rename" and pathlib.Path(dst) == target:
        kill()
    real_replace(src, dst)
def unlink_one_then_kill(path, *args, **kwargs):
    real_unlink(path, *args, **kwargs)
    kill()
def rmtree(path, *args, **kwargs):
    if kill_at == "old" and ".old-" in str(path):
        kill()
    if kill_at == "prune" and "step-0000005" in str(path):
        os.unlink = unlink_one_then_kill
    real_rmtree(path, *args, **kwargs)
os.replace = pathlib.Path.rename = pathlib.Path.replace = replace
shutil.rmtree = rmtree
if target.name == "best":
    save_model({{"w": torch.zeros(2)}}, load_config({tiny!r}), target)
else:  # step 10 saved again; keeping one checkpoint, the save then prunes step 5
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    run_id = json.loads((target.parent.parent / "run.json").read_text())["id"]
    CheckpointDir(target.parent, keep=1 if kill_at == "prune" else 5, run_id=run_id).save(accelerator, TrainerState(step=10))
"""


def tree(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def kill_replacing(target, kill_at: str) -> dict[str, bytes]:
    """Replace `target` in a process killed at the new directory's rename ("rename"), while removing the old
    one ("old"), or while pruning the checkpoint before it ("prune"); returns what `target` held before."""
    before = tree(target)
    killed = subprocess.run([sys.executable, "-c", KILLED_REPLACING.format(tiny=TINY), str(target), kill_at], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return before


REPLACED = ["best", "checkpoints/step-0000010"]  # best/, and a checkpoint saved again at its step


@pytest.mark.slow
def test_directory_replaces_killed_between_their_renames_are_put_back_by_the_next_start(shards, copy):
    targets = [run_dir(copy) / name for name in REPLACED]
    before = [kill_replacing(target, "rename") for target in targets]
    result = run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", "auto")
    assert "already finished at step 10" in result.stderr
    for target, was in zip(targets, before):
        assert f"restoring {target}" in result.stderr
        assert tree(target) == was  # the directory that was there before the replace, whole
        assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_directory_replaces_killed_after_their_renames_leave_old_copies_that_the_next_start_removes(shards, copy):
    targets = [run_dir(copy) / name for name in REPLACED]
    before = [kill_replacing(target, "old") for target in targets]
    olds = [p for target in targets for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.old-")]
    assert len(olds) == 2 and all(tree(target) != was for target, was in zip(targets, before))  # the new ones are in place
    # the killed writer's checkpoint is not this model's, so the resume may refuse it after the clean-up
    result = run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", "auto", check=False)
    assert all(f"removing {old}" in result.stderr and not old.exists() for old in olds)


@pytest.mark.slow
def test_a_checkpoint_pruned_by_a_killed_writer_is_never_listed_half_removed_and_the_next_start_removes_it(shards, copy):
    checkpoints = run_dir(copy) / "checkpoints"
    kill_replacing(checkpoints / "step-0000010", "prune")
    listed = json.loads(subprocess.run([sys.executable, "-m", "herbs", "status", str(run_dir(copy)), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert [row["checkpoint"] for row in listed] == ["step-0000010"]  # step 5 lost a file: not a checkpoint any more
    # as above, the killed writer's step 10 is not this model's: the resume may refuse it after the clean-up
    result = run_training(1, TINY, *micro(shards, copy, *TEN), "--resume", "auto", check=False)
    assert f"removing {checkpoints / '.step-0000005.tmp'}, left by an interrupted write" in result.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-0000010"]

@pytest.fixture
def small_disk(tmp_path):
    """A real full disk: a 32 MiB tmpfs, mounted for the test (needs root); skipped where mount is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    with (disk / "ballast").open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError:
                pass


def train_until_the_disk_is_full(shards, disk, ready, what: str, *overrides: str) -> str:
    """Train on `disk`, fill it once `ready()`, and return the run's error sentence."""
    proc = start_training(1, TINY, *micro(shards, disk, "train.epochs=50", *overrides))
    try:
        wait_for(ready, 300, what, proc)
        fill(disk)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr))


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_sentence_and_leaves_no_temporaries(shards, small_disk):
    run = run_dir(small_disk)
    line = train_until_the_disk_is_full(shards, small_disk, lambda: latest_step(run) >= 5, "the first checkpoint",
                                        "train.checkpoint_every=5", "log.every=1000")
    # The disk fills while a checkpoint is written, or the best weights exported beside it at an epoch's end
    match = re.search(rf"no space left on {small_disk} while writing ({run / 'checkpoints'}/step-(\d+)|{run / 'best'}); "
                      r"the previous checkpoint step-(\d+) is intact", line)
    assert match, line
    assert int(match[3]) == latest_step(run) and (match[2] is None or int(match[2]) == latest_step(run) + 5)
    assert not list((run / "checkpoints").glob(".*")) and not list(run.glob(".*"))


@pytest.mark.slow
def test_a_full_disk_while_logging_is_one_sentence_and_leaves_no_torn_line(shards, small_disk):
    run = run_dir(small_disk)
    line = train_until_the_disk_is_full(shards, small_disk, lambda: metrics(run), "the first metrics",
                                        "train.checkpoint_every=1000", "log.every=1")
    assert f"no space left on {small_disk} while writing {run / 'metrics.jsonl'}; no checkpoint had been written yet" in line
    assert all(json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines())


def test_a_disk_full_before_training_starts_is_one_sentence(shards, small_disk):
    fill(small_disk)
    line = error_line(run_training(1, TINY, *micro(shards, small_disk), check=False))
    assert f"no space left on {small_disk} for the run directory {run_dir(small_disk)}" in line


@pytest.mark.parametrize("override", ["train.checkpoint_every=0", "train.checkpoint_every=-1", "log.every=0",
                                      "train.eval_every=0", "train.max_steps=0", "loss.temperature_halve_every=0"])
def test_intervals_and_counts_are_checked_before_anything_starts(override):
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0]) + " must be a whole number of at least 1"):
        load_config(None, [override])
    assert load_config(None, ["train.max_steps=null"]).train.max_steps is None
