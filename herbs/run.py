"""What a run is, for everything that starts, stops or reads one: the training loop, the preemption
handler, the launchers, `herbs status` and the tests all take these facts from here.

Torch-free on purpose: the launchers import it on login nodes and inside SLURM's batch script.

One SLURM task per training process (as open_clip runs), rather than one task per node running
`accelerate launch`: srun then starts, signals and stops every training process itself. SIGUSR1
and SIGTERM reach each process directly (torch elastic does not forward SIGUSR1, so a per-node
launcher has to find the training processes below it and signal them), and `srun
--kill-on-bad-exit` ends the whole step when one process fails instead of leaving the others in
a collective until its timeout. Each process reads its place from its task through submitit's
`JobEnvironment` (`slurm_task` for slurm/train.sh's tasks) and gets the variables `torchrun` would
have set (`task_env`), which Accelerate and DeepSpeed read.

    <train.output_dir>/<log.project>/<log.name>/     the run directory (`run_dir`)
        run.json         which run this is: its id, kept across resumes, and the last start
        launch.jsonl     one record per start and end of an attempt (`append_event`, `read_events`)
        metrics.jsonl    one record per logged step and evaluation
        requeue          left by a preempted run: it wrote a checkpoint and asks to be started again
        checkpoints/step-NNNNNNN/trainer_state.json   a checkpoint's position and the run's shape
        best/            the model of the best evaluation, as herbs eval and predict read it
        ema/             the final averaged weights (train.ema_decay above 0)
        abandoned-after-step-NNNNNNN/   what the run had written past the step a resume went back to (herbs.train.rundir)
    SIGUSR1 SIGTERM SIGINT   stop: finish the step, write a checkpoint, exit 75 (`STOP_SIGNALS`)
    exit code 75         preempted, checkpoint written, requeue me (EX_TEMPFAIL: "try again")
    exit code 2          a mistake of the user's, told in one sentence (herbs.errors.EXIT_USAGE)
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
from pathlib import Path
from typing import Mapping

import yaml

from herbs.errors import LaunchError

EXIT_REQUEUE = 75
# SLURM's warning before the time limit, scancel or the hard limit, Ctrl-C: the training process's to
# handle (loader workers ignore them). A launcher may start training with them blocked: the kernel
# holds one sent during start-up, which would otherwise kill the process, until training listens.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
REQUEUE_MARKER = "requeue"
RUN_FILE = "run.json"  # which run the directory holds (herbs.train.rundir); written before the first step
EVENTS_FILE = "launch.jsonl"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
STEP_PREFIX = "step-"  # checkpoints/step-NNNNNNN (`step_name`)
BEST_MODEL = "best"
EMA_MODEL = "ema"
SUBMISSIONS = "submitit"  # <output_dir>/<project>/submitit/<name>-<time>: a submission's own files


def run_dir(config) -> Path:
    """The run directory a config trains in (not created here)."""
    return Path(config.train.output_dir) / config.log.project / (config.log.name or "run")


def step_name(step: int) -> str:
    """A checkpoint's directory name under `checkpoints/`, given once it is completely written."""
    return f"{STEP_PREFIX}{step:07d}"


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint directory's name gives; None for a name that is not `step_name`'s."""
    number = path.name[len(STEP_PREFIX):]
    return int(number) if path.name.startswith(STEP_PREFIX) and number.isdigit() else None


CHECKPOINTS = f"{CHECKPOINTS_DIR}/{STEP_PREFIX}*"  # under a run directory: every checkpoint, complete or not


def run_traces(run_dir_: Path) -> list[Path]:
    """What a run leaves behind that a second, fresh run in the same directory would mix with its own."""
    return [found for pattern in (CHECKPOINTS, METRICS_FILE, BEST_MODEL) for found in sorted(Path(run_dir_).glob(pattern))]


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """The complete checkpoints under a run's `checkpoints/`, lowest step first."""
    found = [p for p in Path(checkpoints).glob(f"{STEP_PREFIX}*") if checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def job_label(env: Mapping[str, str] | None = None) -> str:
    """`123`, `123_4` for an array task, `local-ID` for submitit's local executor (its job id, which
    every task and its training child share), `local-PID` otherwise: names the attempt's log file and events."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local-{env.get('SUBMITIT_LOCAL_JOB_ID') or os.getpid()}"


def log_file(run_dir_: Path, job: str) -> Path:
    """Where an attempt's output goes: `slurm-<job>.log`, or `local-<id>.log` for one started here."""
    return Path(run_dir_) / (f"{job}.log" if job.startswith("local-") else f"slurm-{job}.log")


def rendezvous_port(job_id: str | int) -> int:
    """The processes' meeting port, derived from the job's own number (an array task's SLURM_JOB_ID, not
    `ARRAY_TASK`, whose digits run together): 15000-29999, below Linux's ephemeral range."""
    return 15000 + int(job_id) % 15000


def append_event(run_dir_: Path, **record) -> None:
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), **record}
    with open(Path(run_dir_) / EVENTS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def start_event(run_dir_: Path, command: list[str]) -> None:
    append_event(run_dir_, event="start", job=job_label(), restart=int(os.environ.get("SLURM_RESTART_COUNT") or 0),
                 host=socket.gethostname(), command=command)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl, launch.jsonl); a line still being written, or one that
    holds no JSON object (not herbs'), is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_events(run_dir_: Path) -> list[dict]:
    return read_jsonl(Path(run_dir_) / EVENTS_FILE)


# ---------------------------------------------------------------------------- rendezvous


def task_env(task, cpus: int | None = None, accelerate_config: str | None = None) -> dict[str, str]:
    """The variables one training process needs, as `torchrun` / `accelerate launch` would set them, from its
    task's place: submitit's `JobEnvironment` (ranks, nodes, hosts, job id), which submitit's tasks have and
    `slurm_task` gives an srun task of slurm/train.sh. A thread count the user set stays."""
    env = {"RANK": str(task.global_rank), "LOCAL_RANK": str(task.local_rank), "WORLD_SIZE": str(task.num_tasks),
           "LOCAL_WORLD_SIZE": str(task.num_tasks // task.num_nodes), "MASTER_ADDR": task.hostnames[0],
           "MASTER_PORT": str(rendezvous_port(task.raw_job_id))}
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or cpus or 0)
    if cpus and "OMP_NUM_THREADS" not in os.environ:
        # what `accelerate launch --num_cpu_threads_per_process` did: without it every process
        # spins one OpenMP thread per core of the node
        env["OMP_NUM_THREADS"] = str(cpus)
    return {**env, **accelerate_env(accelerate_config)}


def accelerate_env(path: str | None) -> dict[str, str]:
    """The variables `accelerate launch --config_file PATH` gives a DeepSpeed run, read from PATH.

    Accelerate exports these only for processes it starts itself (and its launch helpers are
    private), so the two keys herbs' configs/accelerate/*.yaml use are read here.
    """
    if not path:
        return {}
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise LaunchError(f"the accelerate config '{path}' cannot be read ({err}); pass a file like configs/accelerate/zero2.yaml") from None
    if not isinstance(config, dict):
        raise LaunchError(f"the accelerate config '{path}' must hold a mapping of keys to values; pass a file like configs/accelerate/zero2.yaml")
    kind = config.get("distributed_type", "NO")
    if kind in ("NO", "MULTI_GPU", "MULTI_CPU"):
        return {}
    ds = config.get("deepspeed_config") or {}
    if kind != "DEEPSPEED" or "deepspeed_config_file" not in ds:
        raise LaunchError(f"the accelerate config '{path}' has distributed_type {kind} without deepspeed_config.deepspeed_config_file; "
                          "the launchers run DDP or DeepSpeed with a JSON file, as configs/accelerate/zero2.yaml does")
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds["deepspeed_config_file"]),
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": str(bool(ds.get("zero3_init_flag", False))).lower()}


def slurm_task():
    """This srun task's place in its job, read from SLURM's variables by submitit, as for its own jobs."""
    missing = [name for name in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS") if name not in os.environ]
    if missing:
        raise LaunchError(f"not inside an srun task ({', '.join(missing)} unset); start it with srun, as slurm/train.sh does")
    from submitit.slurm.slurm import SlurmJobEnvironment  # submitit's own picks it only for jobs that submitit started

    return SlurmJobEnvironment()
