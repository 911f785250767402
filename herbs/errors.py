"""The one exception type a user can cause, and the one way it leaves a command.

Anything raised as `HerbsError` is reported by every command (`herbs`, `train.py`,
`launch/submit.py`) as a single sentence and exit code 2 (`--debug` shows the traceback);
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell tool that dies of SIGPIPE exits with


class HerbsError(Exception):
    """A problem with the user's input (config, file, checkpoint, data, launch request) and how to fix it."""


def not_a_directory(path: str | Path) -> str:
    """Why `path` is no directory, for the middle of an error sentence."""
    return "is not a directory" if Path(path).exists() else "does not exist"


class ConfigError(HerbsError):
    """A config key, type or value that cannot be used."""


class CheckpointError(HerbsError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


class DataError(HerbsError):
    """A dataset, shard or manifest that cannot be used as it is, and what to do about it."""


class LaunchError(HerbsError):
    """A launch or submission request that cannot work (resources, sweep, cluster)."""


def exit_code(prog: str, command: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command; a `HerbsError` becomes `<prog>: error: <sentence>` on stderr and exit code 2."""
    try:
        code = int(command() or 0)
        sys.stdout.flush()  # here, not at exit, where a reader that went away (`| head`) is a traceback
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        return EXIT_BROKEN_PIPE
    except HerbsError as err:
        if debug:
            raise
        # One write with its newline: stderr writes through, and print() would send the newline
        # separately, so two ranks failing at once could share a line.
        sys.stderr.write(f"{prog}: error: {sentence(err)}\n")
        return EXIT_USAGE


def sentence(err: HerbsError) -> str:
    """The error's one sentence. One raised in a DataLoader worker comes back from torch with the worker's
    traceback in its message, which ends in `<module>.<Class>: <the sentence>`."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text
