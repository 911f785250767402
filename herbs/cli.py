"""The `herbs` command: one subcommand per job, each defined next to the code it runs.

A command module exposes `register(subparsers)`, which adds its parser and sets `func`.
User mistakes (`HerbsError`) end in one sentence and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from herbs.config import parse_command_line
from herbs.errors import EXIT_USAGE, exit_code

COMMAND_MODULES = (
    "herbs.model.commands",
    "herbs.data.commands",
    "herbs.train.commands",
    "herbs.evaluate.commands",
    "herbs.launch.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herbs",
        description="Train, evaluate and use HERBS fine-grained classifiers (Swin Transformer + HERBS heads).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for every error (train, task: debug mode too)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for command in subparsers.choices.values():  # after the command too (python launch/submit.py --debug ...)
        if "--debug" not in command._option_string_actions:  # the training commands say what theirs does
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks for every error")
        command.set_defaults(command_parser=command)  # its usage goes with its errors
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return exit_code(f"herbs {args.command}", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
