"""The per-node launcher: command lines from a (simulated) SLURM environment, and signal delivery.

No cluster is needed here: the SLURM variables of a 4-node, 8-GPU allocation are set by hand,
and slurm/train.sh runs with stand-in `srun`/`scontrol` that play the 4 nodes on this machine
(the real cluster runs the same script in test_slurm_train.py).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # launch/ is part of the checkout, not of the installed package
from launch import node  # noqa: E402
TINY = REPO / "configs" / "tiny.yaml"

FOUR_NODES = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_NNODES": "4",
    "SLURM_JOB_NODELIST": "gpu[017-020]",
    "SLURM_GPUS_ON_NODE": "8",
    "SLURM_CPUS_PER_TASK": "64",
}


def expected_command(rank: int, python: str = sys.executable) -> list[str]:
    return [python, "-m", "accelerate.commands.launch", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
            "--num_machines", "4", "--num_processes", "32", "--machine_rank", str(rank),
            "--main_process_ip", "gpu017", "--main_process_port", str(15000 + 4242 % 15000),
            "--num_cpu_threads_per_process", "8",
            str(REPO / "train.py"), "--config", "cfg.yaml", "--resume", "auto", "optim.lr=0.1", "log.name=a 'b' \"c\""]


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_four_node_eight_gpu_command_line(rank):
    env = {**FOUR_NODES, "SLURM_NODEID": str(rank), "SLURM_PROCID": str(rank)}
    spec = node.slurm_node_spec(env)
    assert spec == node.NodeSpec(num_nodes=4, node_rank=rank, head="gpu017", port=19242, procs_per_node=8, threads_per_proc=8)
    cmd = node.accelerate_command(spec, node.train_arguments("cfg.yaml", ["optim.lr=0.1", "log.name=a 'b' \"c\""]))
    assert cmd == expected_command(rank)


@pytest.mark.parametrize("accelerate_config", [None, "zero2.yaml"])
def test_accelerate_reads_the_command_as_meant(accelerate_config):
    """accelerate's own parser and checks (what `accelerate launch` runs first) on node 2's command."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    spec = node.slurm_node_spec({**FOUR_NODES, "SLURM_NODEID": "2"})
    config = str(REPO / "configs" / "accelerate" / accelerate_config) if accelerate_config else None
    cmd = node.accelerate_command(spec, ["--config", "c.yaml"], accelerate_config=config)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert (args.num_machines, args.num_processes, args.machine_rank, args.main_process_ip, args.main_process_port) == (4, 32, 2, "gpu017", 19242)
    assert args.training_script == str(REPO / "train.py") and args.training_script_args == ["--config", "c.yaml"]
    if config:  # the config file's DeepSpeed stays in charge (an explicit --multi_gpu would replace it)
        assert args.use_deepspeed and not args.multi_gpu and args.deepspeed_multinode_launcher == "standard"
    else:
        assert args.multi_gpu and not args.use_deepspeed and args.num_cpu_threads_per_process == 8


def fake_bin(tmp_path: Path) -> Path:
    """`srun` that runs its command once per simulated node, `scontrol` for hostnames and requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(textwrap.dedent("""\
        #!/bin/bash
        # stand-in for srun: skip its options, run the command as task i on node i of 4
        while [[ "$1" == --* ]]; do echo "srun option $1" >&2; shift; done
        for i in 0 1 2 3; do
            SLURM_NODEID=$i SLURM_PROCID=$i SLURM_STEP_NUM_NODES=4 SLURMD_NODENAME=gpu0$((17 + i)) "$@" || exit $?
        done
        """))
    (bin_dir / "scontrol").write_text(textwrap.dedent("""\
        #!/bin/bash
        case "$1 $2" in
            "show hostnames") printf 'gpu017\\ngpu018\\ngpu019\\ngpu020\\n' ;;
            "show job") echo "   Command=$FAKE_SCRIPT" ;;
            *) echo "scontrol $*" >> "$FAKE_CALLS" ;;
        esac
        """))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def test_train_sh_reads_each_nodes_rank_on_that_node(tmp_path):
    """The batch script runs once (on node 0); the rank must come from each srun task, not from it."""
    bin_dir = fake_bin(tmp_path)
    out = tmp_path / "runs"
    env = {**os.environ, **FOUR_NODES, "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_SUBMIT_DIR": str(tmp_path),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HERBS_PRINT_COMMAND": "1", "HERBS_PYTHON": sys.executable,
           "FAKE_SCRIPT": str(REPO / "slurm" / "train.sh"), "FAKE_CALLS": str(tmp_path / "calls")}
    odd = "log.name=a 'b' \"c\""
    result = subprocess.run(["bash", str(REPO / "slurm" / "train.sh"), str(TINY), f"train.output_dir={out}", odd],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    run_dir = out / "herbs-tiny" / "a 'b' \"c\""
    log = (run_dir / "slurm-4242.log").read_text()
    assert result.returncode == 0, result.stderr + log
    assert f"output goes to {run_dir}/slurm-4242.log" in result.stdout
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [line["node_rank"] for line in lines] == [0, 1, 2, 3]
    for line in lines:
        cmd = line["command"]
        assert cmd[cmd.index("--machine_rank") + 1] == str(line["node_rank"])
        assert cmd[cmd.index("--main_process_ip") + 1] == "gpu017"
        assert cmd[cmd.index("--main_process_port") + 1] == "19242"
        assert cmd[cmd.index("--num_processes") + 1] == "32"
        assert cmd[-2:] == [f"train.output_dir={out}", odd]  # arrived as one argument each, quotes and all
        assert cmd[cmd.index("--resume") + 1] == "auto"
    assert "srun option --cpus-per-task=64" in log  # srun asked for the task's CPUs again
    assert not (tmp_path / "calls").exists()  # nothing to requeue


def test_train_sh_finds_the_checkout_through_slurm_and_stops_on_a_bad_config(tmp_path):
    bin_dir = fake_bin(tmp_path)
    env = {**os.environ, **FOUR_NODES, "SLURM_NODEID": "0", "SLURM_SUBMIT_DIR": str(tmp_path), "HERBS_PYTHON": sys.executable,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SCRIPT": f"{REPO}/slurm/train.sh missing.yaml"}
    result = subprocess.run(["bash", str(REPO / "slurm" / "train.sh"), "missing.yaml"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "launch/node.py: error: config file 'missing.yaml' does not exist; pass an existing YAML file (see configs/)"]


@pytest.mark.parametrize("env, procs, expected", [
    ({}, None, ["--num_processes", "1"]),  # one CPU process: no launcher at all
    ({"HERBS_PROCS_PER_NODE": "2"}, None, ["--multi_gpu", "--num_machines", "1", "--num_processes", "2"]),
    ({}, 2, ["--multi_gpu", "--num_machines", "1", "--num_processes", "2"]),
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, None, ["--multi_gpu", "--num_machines", "1", "--num_processes", "4"]),
])
def test_cpu_and_gpu_nodes(env, procs, expected):
    base = {"SLURM_JOB_ID": "7", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "cpu1", "HERBS_HEAD_NODE": "cpu1"}
    spec = node.slurm_node_spec({**base, **env}, procs_per_node=procs)
    cmd = node.accelerate_command(spec, ["--config", "c.yaml"])
    if expected == ["--num_processes", "1"]:
        assert cmd == [sys.executable, str(REPO / "train.py"), "--config", "c.yaml"]
    else:
        joined = " ".join(cmd)
        assert " ".join(expected) in joined and "--machine_rank 0 --main_process_ip cpu1 --main_process_port 15007" in joined


def test_rank_outside_a_job_step_is_an_error():
    with pytest.raises(node.LaunchError, match="not inside a SLURM job step"):
        node.slurm_node_spec({"SLURM_JOB_ID": "1"})


@pytest.mark.parametrize("text, hosts", [
    ("gpu[017-020]", ["gpu017", "gpu018", "gpu019", "gpu020"]),
    ("a[1-2,5],login", ["a1", "a2", "a5", "login"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("vm", ["vm"]),
])
def test_hostlist(text, hosts):
    assert node.expand_hostlist(text) == hosts


def test_constants_match_the_engine(tmp_path):
    from herbs.config import load_config
    from herbs.train import preemption
    from herbs.train.loop import run_directory

    assert (node.EXIT_REQUEUE, node.REQUEUE_MARKER) == (preemption.EXIT_REQUEUE, preemption.REQUEUE_MARKER)
    overrides = [f"train.output_dir={tmp_path}", "log.name=x y"]
    assert node.run_dir_for(str(TINY), overrides) == run_directory(load_config(TINY, overrides))


# ---------------------------------------------------------------------------- signal delivery

TRAINER = """\
import os, signal, sys, time
out, run_dir = sys.argv[1], sys.argv[2]
def note(text):
    with open(out, "a") as f:
        f.write(text + "\\n")
note(f"usr1-ignored-at-start {os.getpid()} {signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN}")
time.sleep(1.0)  # start-up: a signal sent now must be held, not lost
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
if os.fork() == 0:  # a data-loader worker: same command line, must not be signalled
    signal.signal(signal.SIGUSR1, lambda s, f: note("worker got USR1"))
    time.sleep(3)
    os._exit(0)
for _ in range(100):
    if got:
        note(f"trainer {os.getpid()} got USR1")
        open(os.path.join(run_dir, "requeue"), "w").write("1\\n")
        os.wait()
        sys.exit(75)
    time.sleep(0.05)
sys.exit(0)
"""

LAUNCHER = """\
import signal, subprocess, sys, time
# like torch elastic: each worker in its own session; a worker's failure fails the launcher with 1
with open(sys.argv[2], "a") as f:
    f.write(f"launcher-usr1-ignored {signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN}\\n")
procs = [subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session=True) for _ in range(2)]
codes = [p.wait() for p in procs]
sys.exit(0 if codes == [0, 0] else 1)
"""


def test_usr1_reaches_each_training_process_once_even_during_start_up(tmp_path):
    """A stand-in launcher and trainer (torch elastic's process layout in a second instead of ten):
    the runner signals the two topmost train processes, only once they handle SIGUSR1, never the
    launcher or a worker, and turns the launcher's 1 plus the marker into 75."""
    trainer, launcher, out, run_dir = tmp_path / "train.py", tmp_path / "launcher.py", tmp_path / "out.txt", tmp_path / "run"
    trainer.write_text(TRAINER)
    launcher.write_text(LAUNCHER)
    cmd = [sys.executable, str(launcher), str(trainer), str(out), str(run_dir)]
    run_dir.mkdir()
    (run_dir / "requeue").write_text("stale\n")  # from an earlier attempt: removed before the start
    code = node.run_training(cmd, run_dir, head=True, job="1", restart=0, train_script=trainer,
                             on_start=lambda run: os.kill(os.getpid(), signal.SIGUSR1))
    lines = out.read_text().splitlines()
    assert code == node.EXIT_REQUEUE, lines
    assert "launcher-usr1-ignored True" in lines
    assert sum("usr1-ignored-at-start" in line and line.endswith("True") for line in lines) == 2
    assert sum(line.startswith("trainer") for line in lines) == 2
    assert "worker got USR1" not in lines
    events = [json.loads(line) for line in (run_dir / "launch.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("exit_code"), e.get("requeue")) for e in events] == [("start", None, None), ("end", 75, True)]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the runner put the test process's handlers back


def test_a_failure_is_not_a_requeue(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys; sys.exit(3)\n")
    code = node.run_training([sys.executable, str(script)], tmp_path, head=True, job="1", restart=0, train_script=script)
    assert code == 3
