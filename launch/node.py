"""One node's share of a training run: build its `accelerate launch` command, run it, forward signals.

`slurm/train.sh` runs `python launch/node.py run -- CONFIG [key=value ...]` as one srun task per
node; the submitit job of `launch/submit.py` calls `run_training` the same way. Everything that
differs between nodes (this node's rank) is read here, on the node, from the task's own SLURM
environment; nothing is computed at submission.

Signals. `accelerate launch` (torch elastic) does not forward SIGUSR1 to its workers, and
SIGUSR1's default action would kill it, so the launcher is started with SIGUSR1/SIGUSR2 ignored
(an ignored disposition survives exec; the training processes install their own handlers) and
this runner delivers SIGUSR1/SIGTERM itself to the training processes: the topmost `train.py`
processes below the launcher (torch elastic puts each in its own session, so a process-group
signal would miss them). A process is signalled once it has installed a handler for that signal
(`SigCgt` in /proc/PID/status), so a signal that arrives during start-up is held, not lost.

Exit codes. Training exits with EXIT_REQUEUE (75) after a checkpoint when it was asked to stop,
and leaves a `requeue` marker in its run directory; `accelerate launch` itself then exits 1, so
the runner turns "non-zero and the marker exists" back into 75 for the caller.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "train.py"
# herbs.train.preemption.EXIT_REQUEUE and REQUEUE_MARKER (a test keeps them equal; importing
# the engine here would load torch in every launcher process).
EXIT_REQUEUE = 75
REQUEUE_MARKER = "requeue"
EVENTS_FILE = "launch.jsonl"  # one line per start and end of an attempt, read by `submit.py status`
FORWARDED = (signal.SIGUSR1, signal.SIGTERM)
IGNORED_BY_LAUNCHER = (signal.SIGUSR1, signal.SIGUSR2)
_EARLY: list[int] = []  # signals that reached `node.py run` before training started; forwarded then


class LaunchError(Exception):
    """A launcher input that cannot work; the message is one sentence naming the fix."""


# ---------------------------------------------------------------------------- the node's place


@dataclass(frozen=True)
class NodeSpec:
    num_nodes: int
    node_rank: int
    head: str  # address of node 0, where the rendezvous listens
    port: int
    procs_per_node: int
    threads_per_proc: int | None = None  # CPU threads per training process (from --cpus-per-task)

    @property
    def num_processes(self) -> int:
        return self.num_nodes * self.procs_per_node


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list (`gpu[017-020,023],login1`) as names; `scontrol show hostnames`."""
    hosts: list[str] = []
    for group in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", group):
            names = [n + literal for n in names]
            if ranges:
                suffixes = []
                for part in ranges.split(","):
                    lo, _, hi = part.partition("-")
                    suffixes += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
                names = [n + s for n in names for s in suffixes]
        hosts += names
    return hosts


def head_node(nodelist: str) -> str:
    """First host of the allocation: `scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1`."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    return expand_hostlist(nodelist)[0]


def port_for_job(job_id: str | int) -> int:
    """A rendezvous port derived from the job id: 15000-29999, below Linux's ephemeral range."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 15000 + int(digits) % 15000


def gpus_on_node(env: Mapping[str, str]) -> int:
    """GPUs SLURM gave this node (0 on CPU nodes)."""
    value = env.get("SLURM_GPUS_ON_NODE")
    if value and value.isdigit():
        return int(value)
    per_node = env.get("SLURM_GPUS_PER_NODE", "")  # "8" or "a100:8"
    if per_node:
        count = per_node.rsplit(":", 1)[-1]
        if count.isdigit():
            return int(count)
    return 0


def _int_env(env: Mapping[str, str], names: Sequence[str], what: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                raise LaunchError(f"{name}={value!r} is not a number; {what} must be an integer") from None
    return None


def slurm_node_spec(env: Mapping[str, str] | None = None, procs_per_node: int | None = None) -> NodeSpec:
    """This node's rank and the run's shape, read from the SLURM task environment on this node."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or "SLURM_NODEID" not in env:
        raise LaunchError("not inside a SLURM job step (SLURM_JOB_ID/SLURM_NODEID unset); start it with srun, or use launch/submit.py --local")
    num_nodes = _int_env(env, ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"), "the node count") or 1
    rank = _int_env(env, ("SLURM_NODEID",), "the node rank")
    head = env.get("HERBS_HEAD_NODE") or head_node(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or socket.gethostname())
    port = _int_env(env, ("HERBS_PORT",), "the port") or port_for_job(env["SLURM_JOB_ID"])
    gpus = gpus_on_node(env)
    procs = procs_per_node or _int_env(env, ("HERBS_PROCS_PER_NODE",), "the processes per node") or max(gpus, 1)
    cpus = _int_env(env, ("SLURM_CPUS_PER_TASK",), "the CPUs per task")
    return NodeSpec(num_nodes, rank, head, port, procs, max(1, cpus // procs) if cpus else None)


def local_node_spec(procs_per_node: int = 1) -> NodeSpec:
    """A one-node run on this machine (submitit's local executor)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return NodeSpec(1, 0, "127.0.0.1", port, procs_per_node)


# ---------------------------------------------------------------------------- the command line


def train_arguments(config: str, overrides: Sequence[str] = (), resume: str | None = "auto") -> list[str]:
    args = ["--config", str(config)]
    if resume:
        args += ["--resume", str(resume)]
    return args + [str(o) for o in overrides]


def accelerate_command(spec: NodeSpec, train_args: Sequence[str], *, python: str = sys.executable,
                       train_script: str | Path = TRAIN_SCRIPT, accelerate_config: str | None = None) -> list[str]:
    """`accelerate launch` for this node, as an argument list (no shell ever parses it).

    One process in all and no accelerate config: plain `python train.py`, which is the same run
    without the launcher's start-up.
    """
    if spec.num_processes == 1 and not accelerate_config:
        return [python, str(train_script), *train_args]
    cmd = [python, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
        if spec.num_nodes > 1:
            cmd += ["--deepspeed_multinode_launcher", "standard"]  # used only by DeepSpeed configs: no pdsh
    else:
        # precision comes from train.mixed_precision in the engine; this only silences accelerate's defaults warning
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if spec.num_processes > 1:
            # also the multi-process CPU (gloo) launcher when there is no GPU; never with a config
            # file, whose distributed_type (e.g. DEEPSPEED) an explicit --multi_gpu would override
            cmd.append("--multi_gpu")
    cmd += [
        "--num_machines", str(spec.num_nodes),
        "--num_processes", str(spec.num_processes),
        "--machine_rank", str(spec.node_rank),
        "--main_process_ip", spec.head,
        "--main_process_port", str(spec.port),
    ]
    if spec.threads_per_proc:
        cmd += ["--num_cpu_threads_per_process", str(spec.threads_per_proc)]
    return cmd + [str(train_script), *train_args]


def run_dir_for(config: str, overrides: Sequence[str] = ()) -> Path:
    """The run directory the engine will use, `<train.output_dir>/<log.project>/<log.name>`; validates the config."""
    from herbs.config import load_config

    cfg = load_config(config, list(overrides))
    return Path(cfg.train.output_dir) / cfg.log.project / (cfg.log.name or "run")


def job_label(env: Mapping[str, str] | None = None) -> str:
    """`123`, `123_4` for an array task, `local-PID` outside SLURM."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local-{os.getpid()}"


def append_event(run_dir: Path, **record) -> None:
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), **record}
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / EVENTS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------- the processes


def _proc_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) for every process visible in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        table[int(entry)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return table


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for the signal (not default, not ignored)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return False


def _ignore_user_signals() -> None:  # runs in the launcher child between fork and exec
    for sig in IGNORED_BY_LAUNCHER:
        signal.signal(sig, signal.SIG_IGN)


class TrainingRun:
    """`accelerate launch ... train.py` as a child, with signals delivered to the training processes."""

    def __init__(self, cmd: Sequence[str], *, train_script: str | Path = TRAIN_SCRIPT, cwd: str | None = None,
                 stdout=None, env: Mapping[str, str] | None = None):
        self.cmd = list(cmd)
        self.train_script = str(train_script)
        self.cwd = cwd
        self.stdout = stdout
        self.proc: subprocess.Popen | None = None
        self.env = env
        self.pending: set[int] = set()  # every signal asked for so far (also: what this run was told)
        self.delivered: dict[int, set[int]] = {}

    def start(self) -> "TrainingRun":
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.stdout, stderr=subprocess.STDOUT if self.stdout else None,
                                     env=None if self.env is None else dict(self.env),
                                     start_new_session=True, preexec_fn=_ignore_user_signals)
        return self

    def training_pids(self) -> list[int]:
        """The topmost train.py processes from the child down (their data-loader workers share the command line).

        The child is `accelerate launch` (its argv names train.py too, but it is not training) or,
        for a single process, train.py itself.
        """
        if self.proc is None:
            return []
        table = _proc_table()
        if self.proc.pid not in table:
            return []
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        root_argv = table[self.proc.pid][1]
        if len(root_argv) > 1 and root_argv[1] == self.train_script:  # python train.py ...
            return [self.proc.pid]
        found, stack = [], [(self.proc.pid, False)]
        while stack:
            pid, below_training = stack.pop()
            for child in children.get(pid, []):
                is_training = self.train_script in table[child][1]
                if is_training and not below_training:
                    found.append(child)
                stack.append((child, below_training or is_training))
        return found

    def forward(self, signum: int) -> None:
        """Deliver to every training process once, as soon as it handles the signal."""
        self.pending.add(signum)
        self._deliver()

    def _deliver(self) -> None:
        if not self.pending:
            return
        for pid in self.training_pids():
            for signum in self.pending:
                done = self.delivered.setdefault(signum, set())
                if pid not in done and _catches(pid, signum):
                    try:
                        os.kill(pid, signum)
                        done.add(pid)
                    except ProcessLookupError:
                        pass

    def poll(self) -> int | None:
        self._deliver()
        return self.proc.poll()

    def wait(self, interval: float = 0.25) -> int:
        # A polling loop, not Popen.wait(): a signal handler (submitit's checkpoint) may wait on
        # the same process, and Popen.wait holds a lock that the handler would deadlock on.
        while (rc := self.poll()) is None:
            time.sleep(interval)
        return rc

    def stop(self, grace: float = 30.0) -> None:
        """Terminate a run that is still going (the runner itself is being torn down)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in self.training_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def exit_status(returncode: int) -> int:
    """Popen's negative signal numbers as the shell's 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def process_env(spec: NodeSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The training's environment: CPU threads per process from the allocation.

    `accelerate launch` sets OMP_NUM_THREADS for its workers; a single `python train.py` needs it
    here, or every process spins as many OpenMP threads as the machine has cores (on a shared
    or oversubscribed node that makes CPU training many times slower).
    """
    env = dict(os.environ if base is None else base)
    if spec.threads_per_proc and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(spec.threads_per_proc)
    return env


def run_training(cmd: Sequence[str], run_dir: Path, *, head: bool, job: str, restart: int, log_path: Path | None = None,
                 cwd: str | None = None, train_script: str | Path = TRAIN_SCRIPT, on_start=None,
                 env: Mapping[str, str] | None = None) -> int:
    """Run one attempt on this node; 75 when training checkpointed and asked to be requeued.

    On the head node (rank 0) the requeue marker of an earlier attempt is removed first and the
    attempt's start and end are appended to `<run_dir>/launch.jsonl`.
    """
    run_dir = Path(run_dir)
    marker = run_dir / REQUEUE_MARKER
    if head:
        marker.unlink(missing_ok=True)
        append_event(run_dir, event="start", job=job, restart=restart, host=socket.gethostname(),
                     log=str(log_path) if log_path else None, command=list(cmd))
    log = open(log_path, "ab", buffering=0) if log_path else None
    run = TrainingRun(cmd, train_script=train_script, cwd=cwd, stdout=log, env=env)
    previous = {sig: signal.getsignal(sig) for sig in FORWARDED}
    code = None
    try:
        for sig in FORWARDED:
            signal.signal(sig, lambda signum, frame: run.forward(signum))
        for sig in _EARLY:
            run.forward(sig)
        run.start()
        if on_start is not None:
            on_start(run)
        run.wait()
    finally:
        # Also reached through an exception: submitit's requeue raises SystemExit from its signal
        # handler once training has exited; anything else stops a run that is still going.
        run.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if log:
            log.close()
        requeue = False
        if run.proc is not None and run.proc.returncode is not None:
            rc = exit_status(run.proc.returncode)
            requeue = rc != 0 and marker.exists()
            code = EXIT_REQUEUE if requeue else rc
        if head:
            append_event(run_dir, event="end", job=job, exit_code=code, requeue=requeue)
    return code


# ---------------------------------------------------------------------------- command line


def _error(message: str) -> int:
    print(f"launch/node.py: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch/node.py",
        description="Per-node part of slurm/train.sh: run this node's `accelerate launch train.py` (one srun task per node).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rd = sub.add_parser("run-dir", help="print the run directory of CONFIG + overrides (and validate them)")
    run = sub.add_parser("run", help="run this node's share of the training (inside an srun task)")
    for p in (rd, run):
        p.add_argument("config", metavar="CONFIG")
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
    run.add_argument("--resume", default="auto", help="passed to train.py (default: auto)")
    run.add_argument("--procs-per-node", type=int, default=None,
                     help="training processes per node (default: $HERBS_PROCS_PER_NODE, else the node's GPUs, else 1)")
    run.add_argument("--accelerate-config", default=os.environ.get("HERBS_ACCELERATE_CONFIG") or None,
                     help="accelerate config file, e.g. configs/accelerate/zero2.yaml (default: $HERBS_ACCELERATE_CONFIG)")
    run.add_argument("--log", default=None, help="append the training output to this file")
    run.add_argument("--print-command", action="store_true", default=os.environ.get("HERBS_PRINT_COMMAND") == "1",
                     help="print this node's command as JSON instead of running it ($HERBS_PRINT_COMMAND=1)")
    args = parser.parse_args(argv)

    from herbs.errors import HerbsError

    try:
        run_dir = run_dir_for(args.config, args.overrides)
    except HerbsError as err:
        return _error(str(err))
    if args.command == "run-dir":
        print(run_dir)
        return 0
    try:
        spec = slurm_node_spec(procs_per_node=args.procs_per_node)
    except LaunchError as err:
        return _error(str(err))
    cmd = accelerate_command(spec, train_arguments(args.config, args.overrides, args.resume),
                             accelerate_config=args.accelerate_config)
    if args.print_command:
        print(json.dumps({"node_rank": spec.node_rank, "command": cmd}), flush=True)
        return 0
    print(f"node {spec.node_rank}/{spec.num_nodes} on {socket.gethostname()}: {shlex.join(cmd)}", flush=True)
    return run_training(cmd, run_dir, head=spec.node_rank == 0, job=job_label(),
                        restart=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
                        log_path=Path(args.log) if args.log else None, env=process_env(spec))


if __name__ == "__main__":
    for _sig in FORWARDED:  # as early as possible: srun may forward a signal while this is starting
        signal.signal(_sig, lambda signum, frame: _EARLY.append(signum))
    sys.exit(main())
