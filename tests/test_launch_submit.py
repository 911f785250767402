"""`python launch/submit.py` (= `herbs submit`) without a cluster: dry runs, mistakes caught before submitting,
the status table, --local."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from herbs.run import CHECKPOINTS_DIR, EVENTS_FILE, EXIT_REQUEUE, METRICS_FILE, RUN_FILE, STATE_FILE, read_events, read_jsonl
from helpers import REPO, TINY_CONFIG, wait_for
from helpers.runs import micro, write_demo_shards
from herbs.launch import submit
from herbs.launch.job import TrainJob

ODD = """it's a "quoted" value"""


def run(args: list[str], cwd: Path, no_slurm: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """launch/submit.py as a user runs it; `no_slurm` hides sbatch/sinfo (a laptop)."""
    env = dict(os.environ)
    if no_slurm:
        env["PATH"] = str(Path(sys.executable).parent)
    return subprocess.run([sys.executable, str(REPO / "launch" / "submit.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def one_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    prefix = "herbs status: error: " if "status" in out.args else "herbs submit: error: "
    assert len(lines) == 1 and lines[0].startswith(prefix), out.stderr
    assert out.stdout == ""
    return lines[0][len(prefix):]


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"grid": {"optim.lr": [0.01, 0.001]}, "zip": {"train.seed": [1, 2], "log.project": [ODD, "p2"]}},
                                   sort_keys=False))
    return path


def test_dry_run_prints_the_jobs_and_the_slurm_parameters(tmp_path, sweep_file):
    out = run(["--config", str(TINY_CONFIG), "train.output_dir=out", "--sweep", str(sweep_file), "--nodes", "2",
               "--gpus-per-node", "4", "--partition", "gpu", "--time", "120", "--array-parallelism", "2", "--dry-run"], tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("tiny: 4 job(s) as one job array, at most 2 at a time")
    assert "[0] lr-0.01_seed-1_project-it-s-a-quoted-value" in text and "[3] lr-0.001_seed-2_project-p2" in text
    assert f"{tmp_path}/out/{ODD}/tiny/lr-0.01_seed-1_project-it-s-a-quoted-value" in text
    for line in ("nodes: 2", "gpus_per_node: 4", "ntasks_per_node: 4", "cpus_per_task: 4", "partition: gpu", "time: 120",
                 "signal_delay_s: 300", "array_parallelism: 2", "srun_args: ['--cpus-per-task=4', '--kill-on-bad-exit=1']"):
        assert f"  {line}\n" in text
    assert f"-m herbs train --config {TINY_CONFIG} --resume auto train.output_dir=out" in text
    assert "dry run: nothing submitted" in text
    assert not (tmp_path / "out").exists()


def test_jobs_carry_values_with_spaces_and_quotes_as_single_arguments(tmp_path, sweep_file):
    parser = argparse.ArgumentParser()
    submit.add_arguments(parser)
    args = parser.parse_args(["--config", str(TINY_CONFIG), f"log.name={ODD}", "--sweep", str(sweep_file),
                                             "--gpus-per-node", "0"])
    name, points, run_dirs = submit.plan_jobs(args)
    jobs = submit.make_jobs(args, points, run_dirs)
    assert jobs[0].overrides == [f"log.name={ODD}", "optim.lr=0.01", "train.seed=1", f"log.project={ODD}", f"log.name={ODD}/{points[0].name}"]
    cmd = jobs[0].command()
    assert cmd[-5:] == jobs[0].overrides and cmd[1:4] == ["-m", "herbs", "train"]


def test_checkpoint_requeues_the_same_call_with_resume_auto(tmp_path):
    job = TrainJob(config="/c.yaml", overrides=["a.b=1"], run_dir=str(tmp_path), cwd="/", resume=None, name="x")
    job._child = object()  # a running process is never pickled
    again = pickle.loads(pickle.dumps(job))
    assert again._child is None
    job._child = None
    delayed = job.checkpoint()
    assert delayed.function == TrainJob(config="/c.yaml", overrides=["a.b=1"], run_dir=str(tmp_path), cwd="/", resume="auto", name="x")
    assert delayed.args == () and delayed.kwargs == {}


@pytest.mark.parametrize("resume", [None, "/runs/other/checkpoints/step-0000100"])
def test_a_start_that_slurm_requeued_itself_continues_the_run_whatever_resume_was_submitted(monkeypatch, resume):
    job = TrainJob(config="/c.yaml", overrides=["a.b=1"], run_dir="/r", cwd="/", resume=resume)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert job.command()[3:] == ["train", "--config", "/c.yaml", *(["--resume", resume] if resume else []), "a.b=1"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert job.command()[3:] == ["train", "--config", "/c.yaml", "--resume", "auto", "a.b=1"]


@pytest.mark.parametrize("extra, message", [
    (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist; pass an existing YAML file (see configs/)"),
    (["optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    (["--sweep", "SWEEP:grid: {optim.lrr: [1, 2]}"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    (["--sweep", "SWEEP:grid: {}"], "expands to no jobs"),
    (["--sweep", "SWEEP:grid: {train.seed: [1, 2, 3, 4]}", "--max-jobs", "3"], "the sweep expands to 4 jobs, more than --max-jobs 3"),
    (["--sweep", "SWEEP:grid: {" + ", ".join(f"optim.k{i}: [{', '.join(map(str, range(10)))}]" for i in range(10)) + "}"],
     "the sweep expands to 10000000000 jobs, more than --max-jobs 100"),  # said at once, without making them
    (["--sweep", "SWEEP:zip: {log.name: [same, same], train.seed: [1, 2]}"], "would share the run directory"),
    (["--sweep", "SWEEP:grid: {train.seed: [1, 1]}"], "the sweep gives train.seed=1 twice; list each value once"),
    (["--sweep", "SWEEP:zip: {optim.lr: [1, 2], train.seed: [1]}"], "must have one length"),
    (["--local", "--nodes", "2"], "--local runs on this machine only; use --nodes 1"),
    # read by the jobs on their nodes, maybe hours later: checked before they are queued
    (["--accelerate-config", "missing.yaml"], "the accelerate config 'missing.yaml' cannot be read"),
    (["--resume", "runs/missing/checkpoints/step-0000100"], "--resume runs/missing/checkpoints/step-0000100 does not exist;"),
    (["--resume", "FILE:"], "--resume f.yaml is not a directory; pass a checkpoint directory, 'auto' or 'none'"),
    (["--time", "1", "--signal-delay", "60"], "--signal-delay 60 s must be shorter than --time 1 min"),
    # SLURM may signal up to 60 s early: a delay this close to --time could kill a task before submitit listens
    (["--time", "2", "--signal-delay", "60"], "--time 2 min with --signal-delay 60 s leaves 60 s before SLURM's checkpoint signal"),
    (["--time", "1"], "--time 1 min with --signal-delay 15 s leaves 45 s before SLURM's checkpoint signal"),
    ([], "sbatch is not on the PATH, so there is no SLURM to submit to"),
    # values that would be replaced by a default or passed on to SLURM as nonsense
    (["--procs-per-node", "0"], "--procs-per-node must be at least 1, got 0"),
    (["--cpus-per-task", "0"], "--cpus-per-task must be at least 1, got 0"),
    (["--max-jobs", "0"], "--max-jobs must be at least 1, got 0"),
    (["--mem-gb", "0.0001"], "--mem-gb must be a number of GB, at least 0.001 (1 MB), got 0.0001"),
    (["--mem-gb", "-1"], "--mem-gb must be a number of GB, at least 0.001 (1 MB), got -1"),
    (["--mem-gb", "nan"], "--mem-gb must be a number of GB, at least 0.001 (1 MB), got nan"),
    (["--mem-gb", "inf"], "--mem-gb must be a number of GB, at least 0.001 (1 MB), got inf"),
    (["--name", ".."], "log.name must be a relative path inside train.output_dir"),
    (["--name", "a\nb"], "log.name must be a relative path inside train.output_dir"),  # SLURM's job name, too
    (["--sweep", "SWEEP:grid: {log.name: [a, \"b\\tc\"]}"], "log.name must be a relative path inside train.output_dir"),
    (["--accelerate-config", "FILE:- a list"], "the accelerate config 'f.yaml' must hold a mapping"),
    (["--accelerate-config", "FILE:distributed_type: \xff"], "the accelerate config 'f.yaml' cannot be read"),
    (["--sweep", "FILE:grid: {train.seed: [\xff]}"], "is not UTF-8 text"),
    (["--dir", "FILE:"], "is not a directory; pass a directory for the submission's files"),
])
def test_mistakes_end_in_one_sentence_before_anything_is_submitted(tmp_path, extra, message):
    args = ["--config", str(TINY_CONFIG), "--gpus-per-node", "0", "--dir", str(tmp_path / "sub")]
    for i, value in enumerate(extra):
        if value.startswith(("SWEEP:", "FILE:")):  # a file of that text (bytes as Latin-1 writes them), passed by name
            name = "s.yaml" if value.startswith("SWEEP:") else "f.yaml"
            (tmp_path / name).write_bytes(value.split(":", 1)[1].encode("latin-1"))
            extra = [*extra[:i], name, *extra[i + 1:]]
    if "--config" in extra:
        args = args[2:]
    error = one_error(run([*args, *extra], tmp_path))
    assert message in error
    assert not (tmp_path / "sub").exists()


# What `sinfo -h -N -o %P|%N|%c|%m|%G` says on a cluster with two partitions, GPU counts written three ways.
SINFO = """\
gpu*|g1|64|512000|gpu:a100:4(S:0-1)
gpu*|g2|64|512000|gpu:4
gpu*|g3|32|256000|gpu:a100:8,gpu:t4:0
cpu|c1|128|1024000|(null)
"""


@pytest.mark.parametrize("sinfo, extra, message", [
    (SINFO, ["--nodes", "3", "--gpus-per-node", "4"], None),
    (SINFO, ["--nodes", "2", "--gpus-per-node", "8"], "only 1 node(s) of partition 'gpu' have 8 GPUs, fewer than --nodes 2; ask for fewer nodes or less"),
    (SINFO, ["--gpus-per-node", "16"], "--gpus-per-node 16 is more than any node of partition 'gpu' has (at most 8 GPUs); ask for less"),
    (SINFO, ["--mem-gb", "600"], "--mem-gb 600 is more than any node of partition 'gpu' has (at most 512000 MB of memory); ask for less"),
    (SINFO, ["--partition", "cpu", "--gpus-per-node", "0", "--procs-per-node", "4", "--cpus-per-task", "64"],
     "--cpus-per-task 64 (x 4 processes per node) is more than any node of partition 'cpu' has (at most 128 CPUs); ask for less"),
    (SINFO, ["--partition", "nope"], "partition 'nope' does not exist; sinfo lists: cpu, gpu"),
    (SINFO.replace("*", ""), [], "the cluster has no default partition; name one with --partition"),
])
def test_requests_no_node_of_the_partition_can_meet_are_refused(tmp_path, sinfo, extra, message):
    """SLURM would leave such a job pending forever (PartitionConfig): herbs reads the nodes' sizes from sinfo first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "sinfo.txt").write_text(sinfo)
    for name, body in (("sinfo", f"print(open({str(tmp_path / 'sinfo.txt')!r}).read(), end='')"), ("sbatch", "raise SystemExit(1)")):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}"}
    out = subprocess.run([sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(TINY_CONFIG), *extra, "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    if message is None:
        assert out.returncode == 0 and "dry run: nothing submitted" in out.stdout, out.stderr
    else:
        assert one_error(out) == message


def write_run(run_dir: Path, events: list[dict], metrics: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 9, "lo')  # a line being written


def test_status_table(tmp_path):
    done, requeued, fresh = tmp_path / "runs" / "a", tmp_path / "runs" / "b", tmp_path / "runs" / "c"
    earlier = [{"event": "start", "job": "local-7"}, {"event": "end", "job": "local-7", "exit_code": 0}]  # an earlier submission's job
    write_run(done, [{"event": "start", "job": "local-1"}, {"event": "end", "job": "local-1", "exit_code": 75, "requeue": True},
                     {"event": "start", "job": "local-1"}, {"event": "end", "job": "local-1", "exit_code": 0}],
              [{"step": 5, "loss": 1.0}, {"step": 5, "val/ensemble_top1": 40.0}, {"step": 8, "val/ensemble_top1": 37.5}, {"step": 8, "test/ensemble_top1": 30.0}])
    write_run(requeued, [*earlier, {"event": "start", "job": "local-2"}, {"event": "end", "job": "local-2", "exit_code": 75, "requeue": True}],
              [{"step": 3, "loss": 2.0}])
    write_run(fresh, earlier, [])
    stopped, lost = tmp_path / "runs" / "d", tmp_path / "runs" / "e"
    write_run(stopped, [{"event": "start", "job": "local-4"}, {"event": "end", "job": "local-4", "exit_code": 75, "requeue": False,
                                                                "signal": "SIGTERM"}], [{"step": 2, "loss": 2.0}])
    with open(stopped / METRICS_FILE, "ab") as f:  # lines herbs did not write: a number, and bytes that are no UTF-8
        f.write(b'\n7\n{"step": 3, "note": "\xff"}\n')
    gone = subprocess.Popen(["true"])  # a local job whose process ended before training wrote a start
    gone.wait()
    dead_pid = str(gone.pid)
    write_run(lost, [], [])
    record = {"executor": "local", "jobs": [{"name": "a", "job_id": "1", "run_dir": str(done)},
                                            {"name": "b", "job_id": "2", "run_dir": str(requeued)},
                                            {"name": "c", "job_id": None, "run_dir": str(fresh)},
                                            {"name": "d", "job_id": "4", "run_dir": str(stopped)},
                                            {"name": "e", "job_id": dead_pid, "run_dir": str(lost)}]}
    (tmp_path / "sweep.json").write_text(json.dumps(record))
    out = run(["status", str(tmp_path)], tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["NAME", "JOB", "STATE", "RESTARTS", "LAST", "STEP", "BEST", "VAL", "TOP-1", "RUN", "DIR"]
    assert rows[1] == ["a", "1", "COMPLETED", "1", "8", "40.00%", str(done)]
    assert rows[2] == ["b", "2", "REQUEUED", "0", "3", "-", str(requeued)]
    assert rows[3] == ["c", "-", "NOT", "SUBMITTED", "0", "-", "-", str(fresh)]
    assert rows[4] == ["d", "4", "STOPPED", "0", "3", "-", str(stopped)]  # a checkpoint, and no requeue asked for (scancel, Ctrl-C)
    assert rows[5] == ["e", dead_pid, "FAILED", "0", "-", "-", str(lost)]
    (tmp_path / "empty").mkdir()
    assert one_error(run(["status", str(tmp_path / "empty")], tmp_path)).startswith(f"'{tmp_path / 'empty'}' holds no sweep.json")
    for damaged in ('{"jobs": [', '{"jobs": [{"name": "a"}]}', "[]"):
        (tmp_path / "sweep.json").write_text(damaged)
        assert one_error(run(["status", str(tmp_path)], tmp_path)).startswith(f"'{tmp_path / 'sweep.json'}' is not a submission record")


def test_status_of_a_run_directory_lists_its_complete_checkpoints(tmp_path):
    """The checkpoints a resume would consider, each with the run shape that wrote it ('-' where an older herbs did not say)."""
    checkpoints = tmp_path / "run" / CHECKPOINTS_DIR
    states = {"step-0000010": {"step": 10, "epoch": 1, "batch": 0, "processes": 2, "per_process_batch": 4, "accumulation": 1,
                               "global_batch": 8, "lanes": 2},
              "step-0000005": {"step": 5, "epoch": 0, "batch": 10},  # before the shape was recorded
              "step-backup": {"step": 7}, ".step-0000015.tmp": {"step": 15},  # not checkpoints a resume would take
              "step-0000003": []}  # damaged: a resume names it and passes it over
    for name, state in states.items():
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / STATE_FILE).write_text(json.dumps(state))
    (checkpoints / "step-0000020").mkdir()  # being written: no trainer_state.json yet
    out = run(["status", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["CHECKPOINT", "STEP", "EPOCH", "BATCH", "PROCESSES", "PER-PROCESS", "BATCH", "ACCUMULATION", "GLOBAL", "BATCH", "LANES"]
    assert rows[1:] == [["step-0000005", "5", "0", "10", "-", "-", "-", "-", "-"],
                        ["step-0000010", "10", "1", "0", "2", "4", "1", "8", "2"]]


def test_status_of_a_run_before_its_first_checkpoint_says_so_and_a_missing_directory_is_named(tmp_path):
    run_directory = tmp_path / "run"
    run_directory.mkdir()
    (run_directory / RUN_FILE).write_text("{}")  # what a training run writes first
    out = run(["status", str(run_directory)], tmp_path)
    assert out.returncode == 0 and out.stdout.splitlines()[0].split()[:2] == ["CHECKPOINT", "STEP"], out.stderr
    assert "no complete checkpoint yet" in out.stdout
    out = run(["status", str(tmp_path / "nowhere")], tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"herbs status: error: '{tmp_path / 'nowhere'}' does not exist; pass the directory that herbs submit printed, or a run directory")


def fake_slurm(tmp_path, sbatch: str) -> dict[str, str]:
    """An environment whose sbatch runs the shell text `sbatch`, and whose sinfo lists one 2-CPU node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sinfo", "echo 'debug*|vm|2|24000|(null)'"), ("sbatch", sbatch)):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}


def submit_py(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(TINY_CONFIG), "--gpus-per-node", "0",
                           "--cpus-per-task", "1", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_a_submission_directory_is_never_written_over(tmp_path):
    env = fake_slurm(tmp_path, "echo 'Submitted batch job 41'")
    mine = tmp_path / "sub" / "sweep.json"  # e.g. the user's own sweep file
    mine.parent.mkdir()
    mine.write_text("grid: {train.seed: [1, 2]}\n")
    for args in (["--dir", "sub"], ["--dir", "sub", "--dry-run"]):
        assert one_error(submit_py(args, tmp_path, env)) == (
            f"--dir sub already holds a submission ({mine.name}); choose another --dir, or leave it out for a new directory")
    assert mine.read_text() == "grid: {train.seed: [1, 2]}\n"
    # two submissions in the same second without --dir each get their own directory
    for _ in range(2):
        assert submit_py(["train.output_dir=runs"], tmp_path, env).returncode == 0
    folders = sorted((tmp_path / "runs" / "herbs-tiny" / "submitit").iterdir())
    assert len(folders) == 2 and all((f / "sweep.json").is_file() for f in folders)


def test_submissions_at_once_each_get_their_own_directory(tmp_path):
    env = fake_slurm(tmp_path, "echo 'Submitted batch job 44'")
    command = [sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(TINY_CONFIG), "--gpus-per-node", "0",
               "--cpus-per-task", "1", "train.output_dir=runs"]
    started = [subprocess.Popen([*command, f"train.seed={seed}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for seed in range(4)]
    assert [p.wait(timeout=120) for p in started] == [0] * 4
    folders = sorted((tmp_path / "runs" / "herbs-tiny" / "submitit").iterdir())
    seeds = sorted(json.loads((f / "sweep.json").read_text())["overrides"][-1] for f in folders)
    assert seeds == [f"train.seed={seed}" for seed in range(4)]  # none written over by another


def test_a_job_trains_the_config_as_submitted_whatever_becomes_of_the_file(tmp_path):
    """Every start of a job (and each requeued one) reads its config: an edit after submitting would change the run."""
    env = fake_slurm(tmp_path, "echo 'Submitted batch job 45'")
    config = tmp_path / "mine.yaml"
    config.write_text(TINY_CONFIG.read_text())
    out = subprocess.run([sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(config), "--gpus-per-node", "0",
                          "--cpus-per-task", "1", "--dir", "sub", "train.output_dir=runs"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    config.write_text("log:\n  name: edited\n")
    with open(tmp_path / "sub" / "logs" / "45_submitted.pkl", "rb") as f:
        job = pickle.load(f).function
    assert Path(job.config).parent.parent == tmp_path / "sub" and Path(job.config).name == "mine.yaml"  # the stem names the run
    assert Path(job.config).read_text() == TINY_CONFIG.read_text()
    assert json.loads((tmp_path / "sub" / "sweep.json").read_text())["submitted_config"] == job.config


def test_a_submission_that_sbatch_refused_leaves_its_directory_free(tmp_path):
    refusing = fake_slurm(tmp_path, "echo 'sbatch: error: Invalid feature specification' >&2; exit 1")
    assert one_error(submit_py(["--dir", "sub"], tmp_path, refusing)) == "sbatch refused the job: Invalid feature specification"
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/bash\necho 'Submitted batch job 46'\n")
    out = submit_py(["--dir", "sub"], tmp_path, refusing)
    assert out.returncode == 0, out.stderr
    assert [job["job_id"] for job in json.loads((tmp_path / "sub" / "sweep.json").read_text())["jobs"]] == ["46"]


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a directory that cannot be written, even as root")
def test_a_dir_that_cannot_be_written_is_one_sentence(tmp_path):
    error = one_error(submit_py(["--dir", "/sys/kernel"], tmp_path, fake_slurm(tmp_path, "echo 'Submitted batch job 47'")))
    assert error.startswith("cannot write --dir /sys/kernel (") and error.endswith("); pass a directory you can write")


def test_jobs_that_sbatch_accepted_are_on_record_even_if_herbs_submit_is_killed_right_after(tmp_path):
    env = fake_slurm(tmp_path, "echo 'Submitted batch job 42'; kill -KILL $PPID")
    out = submit_py(["--dir", "sub", "train.output_dir=runs"], tmp_path, env)
    assert out.returncode == -9
    record = json.loads((tmp_path / "sub" / "sweep.json").read_text())
    assert [job["name"] for job in record["jobs"]] == ["tiny"]  # `herbs status sub` shows it (NOT SUBMITTED: sbatch's answer was lost)


def test_resume_none_on_a_run_directory_that_holds_a_run_is_refused_at_submission(tmp_path):
    write_run(tmp_path / "runs" / "herbs-tiny" / "tiny", [], [{"step": 3, "loss": 2.0}])
    env = fake_slurm(tmp_path, "echo 'Submitted batch job 43'")
    error = one_error(submit_py(["--resume", "none", "train.output_dir=runs"], tmp_path, env))
    assert error == (f"run directory '{tmp_path / 'runs' / 'herbs-tiny' / 'tiny'}' already holds a run, and --resume none would "
                     "start a new one there; continue it with --resume auto, or choose another --name")


def test_debug_shows_the_traceback_through_launch_submit_py(tmp_path):
    out = submit_py(["--debug", "--max-jobs", "0"], tmp_path, fake_slurm(tmp_path, "exit 1"))
    assert "Traceback" in out.stderr and "LaunchError: --max-jobs must be at least 1" in out.stderr


@pytest.mark.slow
def test_local_runs_through_submitits_local_executor(tmp_path):
    shards = tmp_path / "shards"
    write_demo_shards(shards)
    out = run(["--config", str(TINY_CONFIG), *micro(shards, tmp_path / "runs", "data.num_workers=0", "train.max_steps=4"),
               f"log.name={ODD}", "--local", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "10"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # without --dir the submission's files go to <output_dir>/<project>/submitit/<name>-<time>
    [folder] = (tmp_path / "runs" / "herbs-tiny" / "submitit").iterdir()
    assert folder.name.startswith(f"{ODD}-") and (folder / "sweep.json").is_file()
    assert f"status: herbs status {shlex.quote(str(folder))}" in out.stdout
    table = out.stdout.splitlines()[-2:]
    assert table[0].startswith("NAME") and table[1].startswith(ODD), out.stdout
    assert table[1][len(ODD):].split()[1:4] == ["COMPLETED", "0", "4"], out.stdout
    run_dir = tmp_path / "runs" / "herbs-tiny" / ODD
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["log"]["name"] == ODD
    assert (run_dir / "checkpoints" / "latest").is_file()
    assert list(run_dir.glob("local-*.log"))


@pytest.mark.slow
def test_a_local_job_that_fails_says_where_and_why_and_the_submission_fails(tmp_path):
    (tmp_path / "empty").mkdir()  # a --resume that training refuses on the node, after the wait in the queue
    out = run(["--config", str(TINY_CONFIG), "train.output_dir=runs", "--local", "--gpus-per-node", "0", "--cpus-per-task", "1",
               "--resume", str(tmp_path / "empty"), "--dir", "sub"], tmp_path, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    record = json.loads((tmp_path / "sub" / "sweep.json").read_text())
    log = tmp_path / "runs" / "herbs-tiny" / "tiny" / f"local-{record['jobs'][0]['job_id']}.log"
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"herbs submit: job {record['jobs'][0]['job_id']} (tiny) failed: herbs train: error: --resume ")
    assert line.endswith(f"(the whole output is in {log})")
    assert out.stdout.splitlines()[-1].split()[2] == "FAILED"  # the status table


@pytest.mark.slow
def test_ctrl_c_on_a_local_submission_stops_its_jobs_at_a_checkpoint_in_one_sentence(tmp_path):
    shards = tmp_path / "shards"
    write_demo_shards(shards)
    command = [sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(TINY_CONFIG),
               *micro(shards, tmp_path / "runs", "data.num_workers=0", "train.max_steps=100000", "train.epochs=10000",
                      "train.eval_every=100000", "log.every=1"),
               "--local", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "10", "--dir", "sub"]
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a terminal's foreground group: Ctrl-C reaches every process in it
    run_dir = tmp_path / "runs" / "herbs-tiny" / "tiny"
    try:
        wait_for(lambda: any("loss" in r for r in read_jsonl(run_dir / METRICS_FILE)), 180, "training steps")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2 and err.strip().splitlines()[-1] == (
        "herbs submit: error: interrupted: the local jobs stop at a checkpoint; run the same command to continue them "
        "(--resume auto)"), err
    assert "Traceback" not in err  # neither herbs submit's nor submitit's controller's
    wait_for(lambda: (read_events(run_dir) or [{}])[-1].get("event") == "end", 60, "the job's end record")
    assert read_events(run_dir)[-1]["exit_code"] == EXIT_REQUEUE and not read_events(run_dir)[-1]["requeue"]
