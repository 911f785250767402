"""One SLURM task per training process: each task's environment, slurm/train.sh's srun step, and
the submitit job's child (signals held during start-up, exit codes).

No cluster is needed here: the SLURM variables of a 4-node, 8-GPU allocation are set by hand, and
slurm/train.sh runs with stand-in `srun`/`scontrol` (the real cluster runs the same script in
test_slurm_train.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from herbs.errors import LaunchError
from herbs.launch.job import TrainingChild
from herbs.run import accelerate_env, slurm_task, task_env
from herbs.run import EXIT_REQUEUE, job_label, log_file
from helpers import REPO, TINY_CONFIG, wait_for


FOUR_NODES = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "gpu[017-020]", "SLURM_NTASKS": "32",
              "SLURM_CPUS_PER_TASK": "8"}


def set_task_vars(monkeypatch, variables: dict[str, str]) -> None:
    """An srun task's SLURM variables, and none of an allocation the tests may run in."""
    for name in list(os.environ):
        if name.startswith("SLURM_") or name == "OMP_NUM_THREADS":
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("procid", [0, 9, 31])
def test_each_task_is_one_process_of_four_nodes_of_eight(monkeypatch, procid):
    set_task_vars(monkeypatch, {**FOUR_NODES, "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % 8), "SLURM_NODEID": str(procid // 8)})
    env = task_env(slurm_task())
    assert env == {"RANK": str(procid), "LOCAL_RANK": str(procid % 8), "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu017", "MASTER_PORT": str(15000 + 4242 % 15000), "OMP_NUM_THREADS": "8"}
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert "OMP_NUM_THREADS" not in task_env(slurm_task())  # a thread count the user set stays


def test_array_tasks_on_one_node_meet_on_ports_of_their_own_job_ids(monkeypatch):
    # task 11 of array 100 and task 1 of array 1001, both one-node jobs on gpu017: `100_11` and `1001_1`
    # have the same digits, their own job ids do not
    ports = []
    for array, task, job in (("100", "11", "4300"), ("1001", "1", "4400")):
        set_task_vars(monkeypatch, {"SLURM_JOB_ID": job, "SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": task,
                                    "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu017", "SLURM_NTASKS": "1",
                                    "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
        ports.append(task_env(slurm_task())["MASTER_PORT"])
    assert ports == [str(15000 + 4300), str(15000 + 4400)]


def test_a_local_submitit_job_names_its_log_and_events_the_same_in_every_process(tmp_path):
    # the task and its training child have different pids but one submitit job id
    assert job_label({"SUBMITIT_LOCAL_JOB_ID": "77"}) == "local-77"
    assert log_file(tmp_path, job_label({"SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "9"})) == tmp_path / "slurm-5_2.log"


def test_outside_an_srun_task_is_one_sentence(monkeypatch):
    set_task_vars(monkeypatch, {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"})
    with pytest.raises(LaunchError, match=r"not inside an srun task \(SLURM_PROCID, SLURM_LOCALID unset\)"):
        slurm_task()


def test_accelerate_configs_become_what_accelerate_launch_would_export(tmp_path):
    assert accelerate_env(str(REPO / "configs" / "accelerate" / "ddp.yaml")) == {}
    assert accelerate_env(str(REPO / "configs" / "accelerate" / "zero2.yaml")) == {
        "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero2.json",
        "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\n")
    with pytest.raises(LaunchError, match="distributed_type FSDP"):
        accelerate_env(str(fsdp))


# ---------------------------------------------------------------------------- slurm/train.sh


def fake_bin(tmp_path: Path, srun_exit: int, srun: str | None = None) -> Path:
    """`srun` that records its arguments and exits with `srun_exit` (or runs the script `srun`); `scontrol`
    that records a requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(srun or textwrap.dedent(f"""\
        #!/usr/bin/env python3
        import json, sys
        print(json.dumps({{"argv": sys.argv[1:]}}))
        sys.exit({srun_exit})
        """))
    (bin_dir / "scontrol").write_text(textwrap.dedent("""\
        #!/bin/bash
        echo "scontrol $*" >> "$FAKE_CALLS"
        """))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def start_train_sh(tmp_path: Path, args: list[str], srun_exit: int = 0, srun: str | None = None, **extra_env: str) -> subprocess.Popen:
    env = {**os.environ, **extra_env, "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "gpu[017-020]",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "64", "HERBS_PYTHON": sys.executable,
           "PATH": f"{fake_bin(tmp_path, srun_exit, srun)}{os.pathsep}{os.environ['PATH']}", "FAKE_CALLS": str(tmp_path / "calls")}
    return subprocess.Popen(["bash", str(REPO / "slurm" / "train.sh"), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_train_sh(tmp_path: Path, args: list[str], srun_exit: int = 0, **extra_env: str) -> subprocess.CompletedProcess:
    proc = start_train_sh(tmp_path, args, srun_exit, **extra_env)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("srun_exit, requeued", [(0, False), (EXIT_REQUEUE, True), (1, False)])
def test_train_sh_runs_one_srun_task_per_gpu_and_requeues_on_75(tmp_path, srun_exit, requeued):
    out = tmp_path / "runs"
    odd = "log.name=a 'b' \"c\""
    result = run_train_sh(tmp_path, [str(TINY_CONFIG), f"train.output_dir={out}", odd], srun_exit)
    log_path = out / "herbs-tiny" / "a 'b' \"c\"" / "slurm-4242.log"
    log = log_path.read_text()
    assert result.returncode == (0 if srun_exit == EXIT_REQUEUE else srun_exit), result.stderr + log
    assert f"output goes to {log_path}" in result.stdout
    step = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    argv = step["argv"]
    assert argv[:6] == ["--nodes=4", "--ntasks=32", "--ntasks-per-node=8", "--cpus-per-task=8", "--kill-on-bad-exit=1", sys.executable]
    # the overrides arrive as one argument each, quotes and all
    assert argv[6:] == ["-m", "herbs", "task", "--resume", "auto", "--config", str(TINY_CONFIG), f"train.output_dir={out}", odd]
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert ("scontrol requeue 4242" in calls) == requeued


# An srun that writes its pid, then either checkpoints on SIGUSR1 (exit 75) or ignores it until it is killed.
WAITING_SRUN = """\
#!/usr/bin/env python3
import os, signal, sys, time
signal.signal(signal.SIGUSR1, {on_usr1})
with open(os.environ["FAKE_CALLS"] + ".srun-pid", "w") as f:
    f.write(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.parametrize("srun_ends, rc, requeued", [("checkpoints", 0, True), ("is killed", 128 + signal.SIGKILL, False)])
def test_train_sh_waits_through_the_signal_for_sruns_own_status(tmp_path, srun_ends, rc, requeued):
    """The time-limit signal interrupts the script's `wait`; the status it acts on is still srun's."""
    on_usr1 = "lambda signum, frame: sys.exit(75)" if srun_ends == "checkpoints" else "signal.SIG_IGN"
    proc = start_train_sh(tmp_path, [str(TINY_CONFIG), f"train.output_dir={tmp_path}", "log.name=w"],
                          srun=WAITING_SRUN.format(on_usr1=on_usr1))
    pid_file, log_path = tmp_path / "calls.srun-pid", tmp_path / "herbs-tiny" / "w" / "slurm-4242.log"
    srun_pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 60, "srun to start", proc))
    proc.send_signal(signal.SIGUSR1)
    if srun_ends == "is killed":
        wait_for(lambda: "received SIGUSR1" in log_path.read_text(), 30, "the script to forward SIGUSR1", proc)
        os.kill(srun_pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=60)
    finally:
        proc.kill()  # a script that never ends must not outlive the test
    log = log_path.read_text()
    assert proc.returncode == rc, log
    assert f"training exited with {75 if requeued else rc}" in log
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert ("scontrol requeue 4242" in calls) == requeued


@pytest.mark.parametrize("procs", ["0", "two"])
def test_train_sh_stops_on_a_process_count_that_is_not_one_or_more(tmp_path, procs):
    result = run_train_sh(tmp_path, [str(TINY_CONFIG), f"train.output_dir={tmp_path}", "log.name=p"], HERBS_PROCS_PER_NODE=procs)
    log = (tmp_path / "herbs-tiny" / "p" / "slurm-4242.log").read_text()
    assert result.returncode == 2 and not (tmp_path / "calls").exists(), log  # srun never ran
    assert f"slurm/train.sh: error: HERBS_PROCS_PER_NODE must be a whole number of at least 1, got '{procs}'" in log


def test_train_sh_stops_on_a_bad_config(tmp_path):
    result = run_train_sh(tmp_path, ["missing.yaml"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "herbs run-dir: error: config file 'missing.yaml' does not exist; pass an existing YAML file (see configs/)"]


# ---------------------------------------------------------------------------- the submitit job's child

TRAINER = """\
import os, signal, sys, time

out = sys.argv[1]
def note(text):
    with open(out, "a") as f:
        f.write(text + "\\n")
note(f"started, SIGUSR2 ignored: {signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN}")
time.sleep(1.0)  # start-up: a signal sent now must be held, not lost (nor kill the process)
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGTERM})  # as herbs train's PreemptionWatch does
for _ in range(100):
    if got:
        note(f"got USR1 {len(got)} time(s)")
        sys.exit(75)
    time.sleep(0.05)
sys.exit(0)
"""


@pytest.mark.parametrize("when", ["before the child exists", "during its start-up"])
def test_a_stop_signal_reaches_the_child_once_it_listens(tmp_path, when):
    trainer, out = tmp_path / "train.py", tmp_path / "out.txt"
    trainer.write_text(TRAINER)
    child = TrainingChild([sys.executable, str(trainer), str(out)], dict(os.environ), str(tmp_path), tmp_path / "log")
    if when == "before the child exists":  # the job's handler is installed before the child starts
        child.forward(signal.SIGUSR1)
        child.start()
    else:
        child.start().forward(signal.SIGUSR1)  # at once: the child has no handler yet
        child.forward(signal.SIGUSR1)  # asked twice, delivered once
    assert child.wait() == EXIT_REQUEUE, (tmp_path / "log").read_text()
    # SIGUSR2 (submitit's, which SLURM sends to every process of the step) must not kill it
    assert out.read_text().splitlines() == ["started, SIGUSR2 ignored: True", "got USR1 1 time(s)"]


def test_herbs_train_takes_a_stop_signal_held_during_its_start_up():
    # what TrainingChild's blocked start leaves to herbs train: the signal is pending when the handler comes
    script = ("import os, signal; from herbs.run import STOP_SIGNALS; from herbs.train.preemption import PreemptionWatch\n"
              "signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS); os.kill(os.getpid(), signal.SIGUSR1)\n"
              "with PreemptionWatch() as watch: print(watch.received)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == [str(int(signal.SIGUSR1))], out.stdout + out.stderr


def test_the_childs_exit_status_comes_back(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import os, signal, sys; sys.exit(3) if sys.argv[1] == 'exit' else os.kill(os.getpid(), signal.SIGKILL)\n")
    for how, status in (("exit", 3), ("kill", 128 + signal.SIGKILL)):
        child = TrainingChild([sys.executable, str(script), how], dict(os.environ), str(tmp_path), tmp_path / "log").start()
        assert child.wait() == status
