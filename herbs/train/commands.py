"""`python train.py` / `accelerate launch train.py` / `herbs train` / `herbs task`: one argument parser, one code path."""

from __future__ import annotations

import argparse
import atexit
import os
import sys

from herbs.config import parse_command_line
from herbs.errors import exit_code
from herbs.train.preemption import PreemptionWatch


DEBUG_HELP = "debug mode: one process, no loader workers, a few steps, anomaly detection, full tracebacks"


def add_arguments(parser: argparse.ArgumentParser, debug_default=False) -> None:
    """The options of every training command; `debug_default`: argparse.SUPPRESS where `herbs --debug` may set it."""
    parser.add_argument("--debug", action="store_true", default=debug_default, help=DEBUG_HELP)
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. optim.lr=1e-3")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="auto|PATH",
                       help="'auto': continue from the run's newest intact checkpoint (start fresh if none); "
                            "PATH: a checkpoints/step-NNNNNNN directory")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh in a run directory that holds an earlier run, moving that run aside to <name>.old-<time>")
    parser.set_defaults(func=run)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train HERBS (same as python train.py)", description=DESCRIPTION)
    add_arguments(parser, argparse.SUPPRESS)
    task = subparsers.add_parser("task", help="one srun task of slurm/train.sh: train as the process SLURM says this task is",
                                 description="Run `herbs train` as one process of a run started by `srun` with one task per "
                                             "process: rank, world size and threads come from SLURM's task variables.")
    add_arguments(task, argparse.SUPPRESS)
    task.add_argument("--accelerate-config", default=os.environ.get("HERBS_ACCELERATE_CONFIG") or None,
                      help="accelerate config file, e.g. configs/accelerate/zero2.yaml (default: $HERBS_ACCELERATE_CONFIG)")
    task.set_defaults(func=run_task)


DESCRIPTION = (
    "Train HERBS on WebDataset shards. Runs as one process (CPU or one GPU) or under "
    "`accelerate launch` (DDP / DeepSpeed). Exit code 75 means: preempted, checkpoint written, requeue me."
)


def run(args: argparse.Namespace) -> int:
    with PreemptionWatch() as watch:  # first: torch and the model take seconds to load
        from herbs.config import load_config
        from herbs.train.loop import train

        config = load_config(args.config, args.overrides)
        if args.debug:
            config.train.debug = True
        if config.train.threads:
            import torch

            torch.set_num_threads(config.train.threads)
        code = train(config, resume=args.resume, overwrite=args.overwrite, watch=watch)
    return leave_distributed(code)


def leave_distributed(code: int) -> int:
    """End a finished process of a multi-process run here, with its exit code, without the interpreter's teardown.

    The process group is already destroyed, but DDP and gloo keep C++ threads whose destructors can run
    during finalization and abort (`terminate called without an active exception`), turning a run that
    finished and saved everything into exit 134 and a failed job. Python's own exit handlers (loader
    streams, logging, trackers) still run; only the C++ teardown is skipped.
    """
    from herbs.accel import launched_processes

    if launched_processes() <= 1:
        return code
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_task(args: argparse.Namespace) -> int:
    from herbs.run import slurm_task, task_env

    os.environ.update(task_env(slurm_task(), accelerate_config=args.accelerate_config))  # before torch loads
    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION)
    add_arguments(parser)
    args = parse_command_line(parser, argv)
    return exit_code("train.py", lambda: run(args), debug=args.debug)
