"""The one exception type a user can cause.

Anything raised as `HerbsError` is reported by the command line as a single sentence and
exit code 2 (`--debug` shows the traceback); everything else is a bug and keeps its traceback.
"""


class HerbsError(Exception):
    """A problem with the user's input (config, file, checkpoint, data) and how to fix it."""


class ConfigError(HerbsError):
    """A config key, type or value that cannot be used."""


class CheckpointError(HerbsError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""
