"""The submitit job: one call runs one training process; `checkpoint()` makes the requeued call.

submitit starts `TrainJob()` in every task, one task per training process (srun under SLURM,
processes of the local executor here); each task reads its rank, the head node and the job id
from submitit's `JobEnvironment` and runs `herbs train` as its child with the torchrun variables.
The child rather than this process trains because submitit's handler for its time-limit signal
(SIGUSR2, sent to every task) calls `checkpoint()` on rank 0, which has to wait for training's
checkpoint; inside the training process that wait would block the very step it waits for.

On the signal every task forwards SIGUSR1 to its child; the children finish their step, agree,
write one checkpoint and exit 75; rank 0's `checkpoint()` then returns the same call with
`--resume auto`, and submitit pickles it and requeues the job.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from herbs.run import EXIT_REQUEUE, STOP_SIGNALS, job_label, log_file, task_env

if TYPE_CHECKING:
    import submitit


def _start_blocked() -> None:  # in the child between fork and exec: a signal mask and an ignored signal survive exec
    # SLURM sends submitit's SIGUSR2 to every process of the job step, the training child included,
    # whose default action for it is to die; the child hears SIGUSR1 from its task instead.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # held by the kernel until training listens


class TrainingChild:
    """`herbs train` as a child, started with the stop signals blocked: one sent during its start-up
    is held by the kernel, not fatal, until `herbs train` has its handler and unblocks them."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: str, log: Path):
        self.cmd, self.env, self.cwd, self.log = cmd, env, cwd, log
        self.proc: subprocess.Popen | None = None
        self.sent: set[int] = set()  # every signal forwarded so far

    def start(self) -> "TrainingChild":
        with open(self.log, "ab", buffering=0) as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=_start_blocked)
        for signum in self.sent:  # asked for before the child existed: held like the others
            self.proc.send_signal(signum)
        return self

    def forward(self, signum: int) -> None:
        self.sent.add(signum)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, interval: float = 0.25) -> int:
        """The exit status (128+N when killed by signal N). A polling loop, not Popen.wait(): submitit's
        handler may wait on the same child from a signal handler, and Popen.wait holds a lock."""
        while self.proc.poll() is None:
            time.sleep(interval)
        return 128 - self.proc.returncode if self.proc.returncode < 0 else self.proc.returncode


@dataclass
class TrainJob:
    config: str  # absolute path
    overrides: list[str]
    run_dir: str  # absolute path, what the engine will use (for the log and `herbs status`)
    cwd: str  # where relative paths in the config and overrides are meant from (the submit directory)
    resume: str | None = "auto"
    accelerate_config: str | None = None
    name: str = ""
    cpus_per_task: int | None = None  # local executor only (under SLURM the allocation says)
    _child: TrainingChild | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_child": None}

    def command(self) -> list[str]:
        # A start that SLURM requeued itself (preemption, `scontrol requeue`) reruns the call pickled at
        # submission: it continues the run, whatever the first start was told to do.
        resume = "auto" if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 else self.resume
        return [sys.executable, "-m", "herbs", "train", "--config", self.config, *(["--resume", resume] if resume else []), *self.overrides]

    def __call__(self) -> dict:
        import submitit

        task = submitit.JobEnvironment()
        env = {**os.environ, **task_env(task, self.cpus_per_task, self.accelerate_config)}
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        log = log_file(Path(self.run_dir), job_label())
        print(f"{self.name or 'job'}: process {task.global_rank}/{task.num_tasks} on {task.hostnames[task.node]}, "
              f"training output in {log}", flush=True)
        self._child = child = TrainingChild(self.command(), env, self.cwd, log)
        usr_sig = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)

        def on_usr_sig(signum, frame):  # every task: stop training now; then submitit's handler
            child.forward(signal.SIGUSR1)
            if callable(submitit_handler):
                submitit_handler(signum, frame)

        signal.signal(usr_sig, on_usr_sig)
        signal.signal(signal.SIGTERM, lambda signum, frame: child.forward(signal.SIGTERM))
        # `scancel --signal=USR1 JOBID` reaches this process too, whose default action for it is to die
        signal.signal(signal.SIGUSR1, lambda signum, frame: child.forward(signal.SIGUSR1))
        interrupted = []  # Ctrl-C on `herbs submit --local` reaches training itself, in the same process group
        signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
        code = child.start().wait()
        if code == EXIT_REQUEUE and (signal.SIGTERM in child.sent or interrupted):
            # scancel, the hard end of the job, Ctrl-C: never undo a stop by requeueing (a SLURM
            # preemption that requeues does so itself)
            raise RuntimeError(f"training was stopped (job cancelled, preempted or interrupted) after writing a checkpoint; "
                               f"a job that SLURM requeues continues from it, or resubmit with --resume auto ({self.run_dir})")
        if code == EXIT_REQUEUE:
            if task.global_rank == 0:
                # Stopped by a SIGUSR1 that submitit did not see (`scancel --signal=USR1 JOBID`):
                # let submitit's own handler checkpoint and requeue, as for its signal.
                print("training checkpointed and asked to be requeued", flush=True)
                os.kill(os.getpid(), usr_sig)
                time.sleep(5)  # the handler raises SystemExit (requeued) or an error (too many requeues)
            return {"run_dir": self.run_dir, "requeued": True}
        if code != 0:
            raise RuntimeError(f"training exited with code {code}; see {log}")
        return {"run_dir": self.run_dir, "exit_code": 0}

    def checkpoint(self) -> "submitit.helpers.DelayedSubmission":
        """Called by submitit on rank 0 after its signal: wait for training's checkpoint, then requeue with --resume auto."""
        import submitit

        if self._child is not None and self._child.proc is not None:
            self._child.forward(signal.SIGUSR1)
            print(f"training exited with {self._child.wait()} after the signal; requeueing with --resume auto", flush=True)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, resume="auto"))
