"""The submitit job: one call runs one node's training; `checkpoint()` makes the requeued call.

submitit runs `TrainJob()` in every task (one task per node, started by srun). On the time-limit
or preemption signal (SIGUSR2, `--signal=USR2@delay` without `B:`, so SLURM sends it to every
process of the job) this module's handler forwards SIGUSR1 to the node's training processes,
then submitit's own handler runs; on rank 0 only it calls `checkpoint()`, which waits until
training has written its checkpoint and exited, and returns the same call with `--resume auto`;
submitit pickles that, runs `scontrol requeue`, and the job starts again from the checkpoint.
The checkpoint itself is written by the training loop on every rank, not by submitit.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from launch import node

if TYPE_CHECKING:
    import submitit


@dataclass
class TrainJob:
    config: str  # absolute path
    overrides: list[str]
    run_dir: str  # absolute path, what the engine will use (for logs, the requeue marker, status)
    cwd: str  # where relative paths in the config and overrides are meant from (the submit directory)
    resume: str | None = "auto"
    procs_per_node: int | None = None
    accelerate_config: str | None = None
    name: str = ""
    cpus_per_task: int | None = None  # local executor only (under SLURM the allocation says)
    _run: node.TrainingRun | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_run"] = None
        return state

    def _spec(self) -> tuple[node.NodeSpec, str, int]:
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            spec = node.slurm_node_spec(procs_per_node=self.procs_per_node)
            return spec, node.job_label(), int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        # submitit's local executor: one node, this machine
        spec = node.local_node_spec(self.procs_per_node or 1)
        if self.cpus_per_task:
            spec = dataclasses.replace(spec, threads_per_proc=max(1, self.cpus_per_task // spec.procs_per_node))
        return spec, f"local-{os.environ.get('SUBMITIT_LOCAL_JOB_ID', os.getpid())}", 0

    def command(self, spec: node.NodeSpec) -> list[str]:
        return node.accelerate_command(spec, node.train_arguments(self.config, self.overrides, self.resume),
                                       accelerate_config=self.accelerate_config)

    def __call__(self) -> dict:
        import submitit

        spec, job, restart = self._spec()
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        kind = "slurm" if job[0].isdigit() else "local"
        log_path = run_dir / (f"{kind}-{job}.log" if spec.node_rank == 0 else f"{kind}-{job}-node{spec.node_rank}.log")
        cmd = self.command(spec)
        print(f"{self.name or 'job'}: node {spec.node_rank}/{spec.num_nodes} on {socket.gethostname()}, "
              f"restart {restart}, training output in {log_path}", flush=True)

        usr_sig = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)

        def on_usr_sig(signum, frame):  # every node: stop training now; then submitit's handler
            if self._run is not None:
                self._run.forward(signal.SIGUSR1)
            if callable(submitit_handler):
                submitit_handler(signum, frame)

        signal.signal(usr_sig, on_usr_sig)
        code = node.run_training(cmd, run_dir, head=spec.node_rank == 0, job=job, restart=restart, log_path=log_path,
                                 cwd=self.cwd, on_start=lambda run: setattr(self, "_run", run), env=node.process_env(spec))
        if code == node.EXIT_REQUEUE and signal.SIGTERM in self._run.pending:
            # scancel, or the hard end of the job: never undo a cancel by requeueing (a SLURM
            # preemption that requeues does so itself)
            raise RuntimeError(f"training was stopped by SIGTERM (job cancelled or preempted) after writing a checkpoint; "
                               f"resubmit the same command to continue from it ({run_dir})")
        if code == node.EXIT_REQUEUE:
            if spec.node_rank == 0:
                # Stopped by a SIGUSR1 that submitit did not see (`scancel --signal=USR1 JOBID`):
                # let submitit's own handler checkpoint and requeue, as for its signal.
                print("training checkpointed and asked to be requeued", flush=True)
                os.kill(os.getpid(), usr_sig)
                time.sleep(5)  # the handler raises SystemExit (requeued) or an error (too many requeues)
            return {"run_dir": self.run_dir, "requeued": True}
        if code != 0:
            raise RuntimeError(f"training exited with code {code}; see {log_path}")
        return {"run_dir": self.run_dir, "exit_code": 0}

    def checkpoint(self) -> "submitit.helpers.DelayedSubmission":
        """Called by submitit on rank 0 after its signal: wait for training's checkpoint, then requeue with --resume auto."""
        import submitit

        if self._run is not None:
            self._run.forward(signal.SIGUSR1)
            code = self._run.wait()
            print(f"training exited with {node.exit_status(code)} after the signal; requeueing with --resume auto", flush=True)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, resume="auto"))
