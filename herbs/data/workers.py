"""How loader worker processes start.

A training process runs threads of its own by the time it builds a loader (the process group's
communication threads, tqdm's monitor, the previous loader's queue feeders). `fork` copies
whatever locks those threads hold into the child, which then waits on them forever: a rare hang
that stops every rank of a job. `forkserver` forks workers from a small single-threaded server
process instead, started once per training process; preloading the data modules there makes
each later worker start as fast as a plain fork.

Like `spawn`, it needs the usual `if __name__ == "__main__":` guard in a script that builds loaders.

Workers (and the forkserver) ignore the stop signals. SLURM's time limit, `scancel` and Ctrl-C
signal every process of the job, workers included; a worker that died of it would make the
training process raise before it reaches its checkpoint. The training process alone decides to
stop, and its workers end with it (they watch their parent).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from multiprocessing import forkserver

START_METHODS = ("forkserver", "spawn", "fork")
PRELOAD = ["herbs.data.stream", "herbs.evaluate.images"]  # the modules every worker unpickles its dataset from


def worker_context(num_workers: int, method: str = "forkserver"):
    """The multiprocessing context for a loader's `num_workers` workers (None: loading in this process)."""
    if method not in START_METHODS:
        raise ValueError(f"worker start method '{method}' is not one of {', '.join(START_METHODS)}")
    if num_workers == 0:
        return None
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)
        with stop_signals_ignored():  # the server is exec'd with, and forks its workers with, SIG_IGN
            forkserver.ensure_running()
    return context


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """`worker_init_fn` of every loader: for workers started by fork or spawn."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_ignored():
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
