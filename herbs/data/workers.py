"""How loader worker processes start.

A training process runs threads of its own by the time it builds a loader (the process group's
communication threads, tqdm's monitor, the previous loader's queue feeders). `fork` copies
whatever locks those threads hold into the child, which then waits on them forever: a rare hang
that stops every rank of a job. `forkserver` forks workers from a small single-threaded server
process instead, started once per training process; preloading there the module a loader's
dataset is unpickled from (the caller names it: this module knows no loaders) makes each later
worker start as fast as a plain fork.

Like `spawn`, it needs the usual `if __name__ == "__main__":` guard in a script that builds loaders.

Workers (and the forkserver) ignore the stop signals. SLURM's time limit, `scancel` and Ctrl-C
signal every process of the job, workers included; a worker that died of it would make the
training process raise before it reaches its checkpoint. The training process alone decides to
stop, and its workers end with it (they watch their parent, and its loaders shut them down).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import signal
import threading

from herbs.config import WORKER_START_METHODS
from herbs.run import STOP_SIGNALS


def worker_context(num_workers: int, method: str = "forkserver", preload: tuple[str, ...] = ()):
    """The multiprocessing context for a loader's `num_workers` workers (None: loading in this process).
    `preload`: the modules its workers unpickle the dataset from. The forkserver is started once per
    process, so the first loader's preload is the one it keeps; a later loader's modules not in it are
    imported by each of its workers instead (slower to start, same result)."""
    if method not in WORKER_START_METHODS:
        raise ValueError(f"worker start method '{method}' is not one of {', '.join(WORKER_START_METHODS)}")
    if num_workers == 0:
        return None
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(list(preload))
        if threading.current_thread() is threading.main_thread():
            _start_forkserver_deaf()
    return context


def _start_forkserver_deaf() -> None:
    """Start the forkserver now, with the stop signals ignored, which it and every worker it forks
    inherit. Started later by the loader, a Ctrl-C reaching the process group while it imports the
    preload modules would kill it, and the training process would fail on its next worker start."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_signals(_worker_id: int) -> None:
    """Loader worker init: a terminal's Ctrl-C and a scheduler's signals reach the whole process
    group, but stopping is the training process's business (it finishes its step and checkpoints);
    a worker dying of them would fail the loader first."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
