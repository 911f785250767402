"""`herbs submit`, `herbs status`, and the two commands `slurm/train.sh` runs: `herbs run-dir` and `herbs task`."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    from herbs.launch import submit
    from herbs.train.commands import add_arguments

    p = subparsers.add_parser("submit", help="submit training or a sweep to SLURM through submitit (same as python launch/submit.py)",
                              description=submit.DESCRIPTION)
    submit.add_arguments(p)
    p.set_defaults(func=submit.submit)

    p = subparsers.add_parser("status", help="the jobs of a submission: state, restarts, last step, best val top-1",
                              description="Show the jobs of a submission: state, restarts, last step, best val accuracy.")
    p.add_argument("dir", metavar="DIR", help="the submission directory that herbs submit printed")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=show_status)

    p = subparsers.add_parser("run-dir", help="print the run directory of CONFIG + overrides (validates them)")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--log", action="store_true", help="print this attempt's log file in the run directory instead")
    p.set_defaults(func=print_run_dir)

    p = subparsers.add_parser("task", help="one srun task of slurm/train.sh: train as the process SLURM says this task is",
                              description="Run `herbs train` as one process of a run started by `srun` with one task per "
                                          "process: rank, world size and threads come from SLURM's task variables.")
    add_arguments(p)
    p.add_argument("--accelerate-config", default=os.environ.get("HERBS_ACCELERATE_CONFIG") or None,
                   help="accelerate config file, e.g. configs/accelerate/zero2.yaml (default: $HERBS_ACCELERATE_CONFIG)")
    p.set_defaults(func=run_task)


def show_status(args: argparse.Namespace) -> int:
    from herbs.launch.status import run

    return run(args)


def print_run_dir(args: argparse.Namespace) -> int:
    from herbs.config import load_config
    from herbs.run import job_label, log_file, run_dir

    directory = run_dir(load_config(args.config, args.overrides))
    print(log_file(directory, job_label()) if args.log else directory)
    return 0


def run_task(args: argparse.Namespace) -> int:
    from herbs.launch.tasks import merged_env, slurm_task_env
    from herbs.train.commands import run

    os.environ.update(merged_env(slurm_task_env(accelerate_config=args.accelerate_config)))
    return run(args)
