"""`herbs submit` (also `python launch/submit.py`): HERBS training on SLURM through submitit, one job or a
sweep as a job array, requeued on timeout and preemption.

Every point of a sweep (herbs.launch.sweep) is one task of the array with its own run directory
(`log.name` = `<name>/<point>`, the point named after its values). The submission's directory
(`--dir`) keeps `sweep.json` and submitit's logs, which `herbs status DIR` reads. Mistakes end
in one sentence and exit code 2 before anything is submitted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import itertools
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from herbs.config import load_config
from herbs.errors import ConfigError, LaunchError, not_a_directory
from herbs.launch import sweep
from herbs.launch.status import RECORD, format_table, status_rows, write_record
from herbs.run import SUBMISSIONS, accelerate_env, log_file, run_dir, run_traces

DEFAULT_MAX_JOBS = 100
# SLURM checks time limits every 30 s and may signal up to 60 s before the delay asked for; a task
# signalled before submitit has installed its handler dies of SIGUSR2 and is not requeued.
SIGNAL_SLACK_S = 90
SUBMITTED_CONFIG = "config"  # in a submission's directory: the config file as submitted, which its jobs read
DESCRIPTION = ("Submit HERBS training (one run or a sweep as a job array) to SLURM through submitit; "
               "jobs are requeued on timeout and preemption and continue from their last checkpoint. "
               "`herbs status DIR` shows a submission's jobs.")


# ---------------------------------------------------------------------------- arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides for every job")
    p.add_argument("--sweep", metavar="SWEEP.yaml", help="values per config key: 'grid' (all combinations) and/or 'zip' (lists taken together)")
    p.add_argument("--nodes", type=int, default=1, help="nodes per job (default: 1)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs per node; 0 for CPU nodes (default: 8 on SLURM, the GPUs of this machine with --local)")
    p.add_argument("--procs-per-node", type=int, default=None,
                   help="training processes per node, one SLURM task each (default: one per GPU, 1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPUs per training process (default: 4); with --local it sets the CPU threads of the training")
    p.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB (default: the partition's default)")
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default partition)")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--qos", default=None, help="SLURM quality of service")
    p.add_argument("--constraint", default=None, help="SLURM node features, e.g. a100")
    p.add_argument("--time", type=int, default=24 * 60, help="time limit per attempt in minutes (default: 1440)")
    p.add_argument("--signal-delay", type=int, default=None,
                   help="seconds before the time limit at which training is told to checkpoint (default: 300, a quarter of "
                        "--time when that is shorter; SLURM may signal up to 60 s earlier)")
    p.add_argument("--max-requeues", type=int, default=10, help="how many times a job may be requeued after hitting its time limit (default: 10)")
    p.add_argument("--array-parallelism", type=int, default=None,
                   help="at most this many jobs of the sweep at once (default: all on SLURM, 1 with --local)")
    p.add_argument("--max-jobs", type=int, default=DEFAULT_MAX_JOBS, help=f"refuse sweeps with more jobs than this (default: {DEFAULT_MAX_JOBS})")
    p.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                   help="first start: 'auto' continues a run directory that has checkpoints (default), 'none' starts fresh, "
                        "PATH starts from that checkpoint; requeued starts always use auto")
    p.add_argument("--accelerate-config", default=None, help="accelerate config file, e.g. configs/accelerate/zero2.yaml")
    p.add_argument("--name", default=None, help="job name and run-name prefix (default: the config's log.name)")
    p.add_argument("--dir", default=None, help="where to keep the submission's files (default: <output_dir>/<project>/submitit/<name>-<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and the SLURM parameters; submit nothing")
    p.add_argument("--local", action="store_true", help="run on this machine through submitit's local executor and wait for the jobs")
    p.add_argument("--wait", action="store_true", help="wait until every job has finished, then print the status table")


# ---------------------------------------------------------------------------- planning


def plan_jobs(args: argparse.Namespace) -> tuple[str, list[sweep.Point], dict[str, Path]]:
    """Validate the config and the sweep; return the base name, the named points and their run directories
    (and where the submission's directory goes, `args.submissions`, when the user names no --dir)."""
    base = load_config(args.config, args.overrides)
    name = args.name or base.log.name or Path(args.config).stem
    args.submissions = Path(base.train.output_dir) / base.log.project / SUBMISSIONS
    if args.dir and Path(args.dir).exists() and not Path(args.dir).is_dir():
        raise LaunchError(f"--dir {args.dir} is not a directory; pass a directory for the submission's files")
    if args.dir and (Path(args.dir) / RECORD).exists():
        raise taken_dir(args.dir)
    swept = sweep.load_sweep(args.sweep) if args.sweep else None
    if swept and (n_jobs := sweep.count(swept)) > args.max_jobs:
        raise LaunchError(f"the sweep expands to {n_jobs} jobs, more than --max-jobs {args.max_jobs}; shrink the sweep or raise --max-jobs")
    points = sweep.expand(swept) if swept else [sweep.Point({})]
    sweep.name_points(points)
    run_dirs: dict[str, Path] = {}
    for point in points:
        if args.sweep and "log.name" not in point.values:
            point.extra = [sweep.override("log.name", f"{name}/{point.name}")]
        elif not args.sweep and args.name:
            point.extra = [sweep.override("log.name", name)]
        if not args.sweep:
            point.name = name
        try:
            cfg = load_config(args.config, [*args.overrides, *point.overrides()])
        except ConfigError as err:
            where = f"sweep '{args.sweep}'" if args.sweep else "the overrides"
            raise LaunchError(f"{where}: {err}") from None
        directory = run_dir(cfg).resolve()
        clash = [n for n, d in run_dirs.items() if d == directory]
        if clash:
            raise LaunchError(f"sweep points '{clash[0]}' and '{point.name}' would share the run directory {directory}; vary log.name in the sweep")
        if args.resume == "none" and run_traces(directory):  # the node would refuse it, after the wait in the queue
            raise LaunchError(f"run directory '{directory}' already holds a run, and --resume none would start a new one there; "
                              "continue it with --resume auto, or choose another --name")
        run_dirs[point.name] = directory
    return name, points, run_dirs


def taken_dir(folder) -> LaunchError:
    return LaunchError(f"--dir {folder} already holds a submission ({RECORD}); choose another --dir, or leave it out for a new directory")


def claim_submission_dir(args: argparse.Namespace, name: str, record: dict) -> tuple[Path, Path]:
    """The submission's directory, holding its first record, and the config as submitted in it: --dir, or
    `<submissions>/<name>-<time>`, numbered past one that a submission of the same second holds. The record is
    created only where none is, so of two submissions at once each keeps its own."""
    stem = f"{name.replace('/', '-')}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    named = [Path(args.dir)] if args.dir else (args.submissions / (f"{stem}-{i}" if i else stem) for i in itertools.count())
    for folder in named:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if write_record(folder, record, first=True):
                # Every start of a job reads its config, a requeued one days later: each reads this copy, as it was
                # when submitted, under the same file name (which names the run when the config does not).
                copy = folder.resolve() / SUBMITTED_CONFIG / Path(args.config).name
                copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(args.config, copy)
                return folder.resolve(), copy
        except OSError as err:
            raise LaunchError(f"cannot write --dir {folder} ({err.strerror}); pass a directory you can write") from None
    raise taken_dir(args.dir)


def resources(args: argparse.Namespace) -> dict:
    if args.signal_delay is None:
        args.signal_delay = min(300, args.time * 15)
    gpus = args.gpus_per_node
    if gpus is None:
        gpus = local_gpu_count() if args.local else 8
    procs = max(gpus, 1) if args.procs_per_node is None else args.procs_per_node
    cpus = 4 if args.cpus_per_task is None else args.cpus_per_task
    parallel = 1 if args.array_parallelism is None else args.array_parallelism
    for flag, value, low in (("--nodes", args.nodes, 1), ("--gpus-per-node", gpus, 0), ("--procs-per-node", procs, 1),
                             ("--cpus-per-task", cpus, 1), ("--time", args.time, 1), ("--signal-delay", args.signal_delay, 0),
                             ("--max-requeues", args.max_requeues, 0), ("--max-jobs", args.max_jobs, 1),
                             ("--array-parallelism", parallel, 1)):
        if value < low:
            raise LaunchError(f"{flag} must be at least {low}, got {value}")
    if args.mem_gb is not None and not 1 <= args.mem_gb * 1024 < math.inf:  # nan too
        raise LaunchError(f"--mem-gb must be a number of GB, at least 0.001 (1 MB), got {args.mem_gb:g}")
    if args.signal_delay >= args.time * 60:
        raise LaunchError(f"--signal-delay {args.signal_delay} s must be shorter than --time {args.time} min, or training is told to stop before it starts")
    if not args.local and args.time * 60 < args.signal_delay + SIGNAL_SLACK_S:
        raise LaunchError(f"--time {args.time} min with --signal-delay {args.signal_delay} s leaves {args.time * 60 - args.signal_delay} s "
                          f"before SLURM's checkpoint signal, which may come 60 s early and kill a task still starting; "
                          f"give at least {SIGNAL_SLACK_S} s (a longer --time or a shorter --signal-delay)")
    if args.local and args.nodes != 1:
        raise LaunchError(f"--local runs on this machine only; use --nodes 1 (got --nodes {args.nodes})")
    return {"gpus": gpus, "procs": procs, "cpus": cpus}


def local_gpu_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def gres_gpus(gres: str) -> int:
    """GPUs in sinfo's %G column: `gpu:8`, `gpu:a100:4(S:0-1)`, `(null)`."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partition_nodes(partition: str | None) -> tuple[str, list[dict]]:
    """(partition name, its nodes with CPUs, memory in MB and GPUs) from sinfo; the default partition when none is named."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G"], capture_output=True, text=True)
    if out.returncode != 0:
        raise LaunchError(f"sinfo failed ({out.stderr.strip() or out.returncode}); is the SLURM controller reachable?")
    rows = [fields for fields in (line.strip().split("|") for line in out.stdout.splitlines()) if len(fields) == 5]
    nodes: dict[str, dict[str, dict]] = {}  # partition -> host -> size (a node may be in several partitions)
    for name, host, cpus, mem, gres in rows:
        nodes.setdefault(name.rstrip("*"), {})[host] = {"cpus": int(cpus) if cpus.isdigit() else 0,
                                                        "mem_mb": int(mem) if mem.isdigit() else 0, "gpus": gres_gpus(gres)}
    partition = partition or next((name[:-1] for name, *_ in rows if name.endswith("*")), None)  # sinfo stars the default
    if partition is None:
        raise LaunchError("the cluster has no default partition; name one with --partition")
    if partition not in nodes:
        raise LaunchError(f"partition '{partition}' does not exist; sinfo lists: {', '.join(sorted(nodes)) or 'none'}")
    return partition, list(nodes[partition].values())


def check_cluster(args: argparse.Namespace, res: dict) -> str:
    """SLURM is there and the partition has enough nodes of the size asked for; returns the partition's name.

    SLURM itself accepts a CPU or GPU request that no node can meet and leaves the job pending
    forever, so those are checked here too."""
    if not shutil.which("sbatch"):
        raise LaunchError("sbatch is not on the PATH, so there is no SLURM to submit to; run on a login node, or use --local to run here")
    partition, nodes = partition_nodes(args.partition)
    if args.nodes > len(nodes):
        raise LaunchError(f"--nodes {args.nodes} is more than the {len(nodes)} node(s) of partition '{partition}'; ask for at most {len(nodes)}")
    for flag, value, key, unit in (("--cpus-per-task", res["cpus"] * res["procs"], "cpus", "CPUs"), ("--gpus-per-node", res["gpus"], "gpus", "GPUs"),
                                   ("--mem-gb", int((args.mem_gb or 0) * 1024), "mem_mb", "MB of memory")):
        fitting = [n for n in nodes if n[key] >= value]
        if len(fitting) < args.nodes:
            shown = f"{args.mem_gb:g}" if key == "mem_mb" else str(value)
            if key == "cpus" and res["procs"] > 1:
                shown = f"{res['cpus']} (x {res['procs']} processes per node)"
            if not fitting:
                raise LaunchError(f"{flag} {shown} is more than any node of partition '{partition}' has "
                                  f"(at most {max(n[key] for n in nodes)} {unit}); ask for less")
            raise LaunchError(f"only {len(fitting)} node(s) of partition '{partition}' have {value} {unit}, "
                              f"fewer than --nodes {args.nodes}; ask for fewer nodes or less")
    return partition


def slurm_parameters(args: argparse.Namespace, name: str, res: dict, n_jobs: int) -> dict:
    params = {
        "job_name": name,
        "time": args.time,
        "nodes": args.nodes,
        "ntasks_per_node": res["procs"],  # one task per training process (herbs/run.py says why)
        "cpus_per_task": res["cpus"],
        "signal_delay_s": args.signal_delay,
        "stderr_to_stdout": True,
        # srun of SLURM 22.05 does not pass --cpus-per-task on from the job: say it again; one
        # failed process ends the step instead of leaving the others in a collective
        "srun_args": [f"--cpus-per-task={res['cpus']}", "--kill-on-bad-exit=1"],
    }
    mem = args.mem_gb and (f"{int(args.mem_gb)}GB" if args.mem_gb == int(args.mem_gb) else f"{int(args.mem_gb * 1024)}MB")
    optional = {"gpus_per_node": res["gpus"], "partition": args.partition, "account": args.account, "qos": args.qos,
                "constraint": args.constraint, "mem": mem, "array_parallelism": n_jobs > 1 and (args.array_parallelism or n_jobs)}
    return {**params, **{key: value for key, value in optional.items() if value}}


# ---------------------------------------------------------------------------- submitting


def make_jobs(args: argparse.Namespace, points: list[sweep.Point], run_dirs: dict[str, Path]):
    """One job per point. The files they read on their nodes, maybe hours from now, are checked here, before they are queued."""
    from herbs.launch.job import TrainJob

    config = str(Path(args.config).resolve())
    resume = None if args.resume == "none" else args.resume
    if resume not in (None, "auto"):
        if not Path(resume).is_dir():
            raise LaunchError(f"--resume {resume} {not_a_directory(resume)}; pass a checkpoint directory, 'auto' or 'none'")
        resume = str(Path(resume).resolve())
    accelerate_env(args.accelerate_config)
    accel = str(Path(args.accelerate_config).resolve()) if args.accelerate_config else None
    return [TrainJob(config=config, overrides=[*args.overrides, *p.overrides()], run_dir=str(run_dirs[p.name]),
                     cwd=os.getcwd(), resume=resume, accelerate_config=accel, name=p.name,
                     cpus_per_task=args.cpus_per_task if args.local else None)
            for p in points]


def print_plan(name: str, points: list[sweep.Point], run_dirs: dict[str, Path], params: dict, args, jobs) -> None:
    kind = "job array" if len(points) > 1 else "job"
    print(f"{name}: {len(points)} job(s) as one {kind}" + (f", at most {params.get('array_parallelism')} at a time" if len(points) > 1 else ""))
    width = max(len(p.name) for p in points)
    for i, p in enumerate(points):
        print(f"  [{i}] {p.name:<{width}}  {run_dirs[p.name]}  {shlex.join(p.overrides())}")
    target = "local executor (this machine)" if args.local else "SLURM"
    print(f"{target} parameters:")
    for key in sorted(params):
        print(f"  {key}: {params[key]}")
    print("each training process runs (rank, head node and port come from its task's environment):")
    print("  " + shlex.join(jobs[0].command()))


def submit(args: argparse.Namespace) -> int:
    import submitit

    res = resources(args)
    name, points, run_dirs = plan_jobs(args)
    jobs = make_jobs(args, points, run_dirs)
    if not args.local and (not args.dry_run or shutil.which("sbatch")):
        check_cluster(args, res)
    if args.local:
        params = {"timeout_min": args.time, "signal_delay_s": args.signal_delay, "tasks_per_node": res["procs"],
                  "gpus_per_node": res["gpus"], "stderr_to_stdout": True}
    else:
        params = slurm_parameters(args, name, res, len(points))
    if args.dry_run:
        print_plan(name, points, run_dirs, params, args, jobs)
        print("dry run: nothing submitted")
        return 0

    record = {
        "name": name, "created": datetime.datetime.now().isoformat(timespec="seconds"), "executor": "local" if args.local else "slurm",
        "config": str(Path(args.config).resolve()), "overrides": args.overrides,
        "sweep": args.sweep and str(Path(args.sweep).resolve()), "parameters": params,
        "jobs": [{"name": p.name, "overrides": p.overrides(), "run_dir": str(run_dirs[p.name]), "job_id": None} for p in points],
    }
    # before any job starts: a kill after that leaves the jobs named, if not their ids
    folder, copy = claim_submission_dir(args, name, record)
    record["submitted_config"] = str(copy)
    for job in jobs:
        job.config = record["submitted_config"]
    write_record(folder, record)
    executor = (submitit.LocalExecutor if args.local else submitit.SlurmExecutor)(folder / "logs", max_num_timeout=args.max_requeues)
    executor.update_parameters(**params)
    try:
        failed = 0
        if args.local:
            submitted, failed = run_local(executor, jobs, record, folder, args.array_parallelism or 1)
        else:
            # submitit prints sbatch's complaint itself; it comes back below as one sentence instead
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                submitted = [executor.submit(job) for job in jobs]
            for entry, job in zip(record["jobs"], submitted):
                entry["job_id"] = job.job_id
            write_record(folder, record)
    except KeyboardInterrupt:  # Ctrl-C reached the local jobs too: training writes a checkpoint and stops
        if not args.local:
            raise
        raise LaunchError("interrupted: the local jobs stop at a checkpoint; run the same command to continue them (--resume auto)") from None
    except submitit.core.utils.FailedJobError as err:
        (folder / RECORD).unlink()  # nothing was submitted: the directory is free for the corrected submission
        raise LaunchError(f"sbatch refused the job: {sbatch_message(str(err))}") from None
    ids = ", ".join(str(j.job_id) for j in submitted)
    print(f"submitted {len(submitted)} job(s): {ids}")
    print(f"status: herbs status {shlex.quote(str(folder))}")
    if args.wait and not args.local:
        for job in submitted:
            job.wait()
    if args.wait or args.local:
        print(format_table(status_rows(folder)))
    return 1 if failed else 0


def sbatch_message(text: str) -> str:
    lines = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
    return "; ".join(lines) if lines else text.strip().splitlines()[-1] if text.strip() else "no reason given"


def run_local(executor, jobs, record: dict, folder: Path, parallel: int) -> tuple[list, int]:
    """The local executor starts every job at once: submit them in waves of `parallel`, waiting for each.
    Returns the jobs and how many failed."""
    submitted, failed = [], 0
    for start in range(0, len(jobs), parallel):
        # submitit's controller inherits an ignored SIGINT: Ctrl-C is for training to take (a checkpoint, then it
        # stops), and the controller waits for that instead of dying with a traceback
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            wave = [executor.submit(job) for job in jobs[start:start + parallel]]
        finally:
            signal.signal(signal.SIGINT, previous)
        entries = record["jobs"][start:start + parallel]
        for entry, job in zip(entries, wave):
            entry["job_id"] = job.job_id
        write_record(folder, record)
        for entry, job in zip(entries, wave):
            try:
                job.result()
            except Exception:  # submitit's error holds the job's traceback; training's own output says why
                failed += 1
                log = log_file(Path(entry["run_dir"]), f"local-{job.job_id}")
                print(f"herbs submit: job {job.job_id} ({entry['name']}) failed: {last_line(log)} (the whole output is in {log})",
                      file=sys.stderr)
        submitted += wave
    return submitted, failed


def last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "it wrote no output"
    return lines[-1] if lines else "it wrote no output"
