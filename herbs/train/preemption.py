"""Stop cleanly when the cluster asks: SIGUSR1 (SLURM's warning before the time limit) or SIGTERM,
or the user presses Ctrl-C (SIGINT); a second Ctrl-C stops at once, without a checkpoint.

The handler only sets a flag (`received`); the loop checks it after each optimizer step, all ranks agree
(any rank signalled means all stop), a checkpoint is written, and the process exits with
EXIT_REQUEUE after leaving a `requeue` marker in the run directory, so a launcher that only
sees `accelerate launch`'s own exit status can still tell a preemption from a failure.

`herbs train` installs the handlers before anything heavy is imported, so a signal that comes
during start-up is kept; then it unblocks them, so one that a launcher held blocked while Python
started (`herbs.run.STOP_SIGNALS`) arrives now. Once a stop was asked for, SIGUSR1 and SIGTERM
stay ignored until the process exits: the first rank to exit ends an `srun --kill-on-bad-exit`
step, whose SIGTERM must not turn the others' exit code 75 into a death by signal.
"""

from __future__ import annotations

import logging
import os
import signal

from herbs.run import STOP_SIGNALS

log = logging.getLogger(__name__)


class PreemptionWatch:
    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        self.doing = "finishing this step and writing a checkpoint"  # what a first Ctrl-C still lets happen (said to the user)

    def __enter__(self) -> "PreemptionWatch":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            stopping = self.received is not None and sig != signal.SIGINT
            signal.signal(sig, signal.SIG_IGN if stopping else handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.received == signal.SIGINT:  # the user insists: die of the signal, as without this handler
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            log.warning("Ctrl-C: %s; press Ctrl-C again to stop at once", self.doing)
        self.received = signum
