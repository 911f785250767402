"""`herbs submit`, `herbs status`, and `herbs run-dir` (which `slurm/train.sh` asks for the run's log)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from herbs.launch import status, submit

    p = subparsers.add_parser("submit", help="submit training or a sweep to SLURM through submitit (same as python launch/submit.py)",
                              description=submit.DESCRIPTION)
    submit.add_arguments(p)
    p.set_defaults(func=submit.submit)

    p = subparsers.add_parser("status", help="the jobs of a submission (state, restarts, last step, best val top-1), or a run's checkpoints",
                              description="Show the jobs of a submission: state, restarts, last step, best val accuracy. "
                                          "Given a run directory, show its checkpoints: step, data position, and the "
                                          "processes, per-process batch, accumulation and global batch that wrote each.")
    p.add_argument("dir", metavar="DIR", help="the submission directory that herbs submit printed, or a run directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=status.run)

    p = subparsers.add_parser("run-dir", help="print the run directory of CONFIG + overrides (validates them)")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")  # a default, or argparse calls it required
    p.add_argument("--log", action="store_true", help="print this attempt's log file in the run directory instead")
    p.set_defaults(func=print_run_dir)


def print_run_dir(args: argparse.Namespace) -> int:
    from herbs.config import load_config
    from herbs.run import job_label, log_file, run_dir

    directory = run_dir(load_config(args.config, args.overrides))
    print(log_file(directory, job_label()) if args.log else directory)
    return 0
