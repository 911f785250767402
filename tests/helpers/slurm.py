"""SLURM in tests: the real local cluster, tiny training runs, and polling with deadlines.

Without `sbatch` on the PATH the SLURM tests skip; under HERBS_REQUIRE_SLURM=1 (set by .ci/run,
which starts `tools/local-slurm/start.sh`) they fail instead, so CI cannot pass by
skipping them. Tests wait by polling squeue/sacct/files against a deadline, never by sleeping
for a guessed time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from herbs.run import METRICS_FILE, read_jsonl
from helpers import REPO, wait_for
REQUIRE_ENV = "HERBS_REQUIRE_SLURM"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def require_slurm() -> None:
    """Skip when there is no SLURM here; fail when HERBS_REQUIRE_SLURM=1 says there must be one."""
    missing = [c for c in ("sbatch", "squeue", "sacct", "scontrol", "sinfo", "scancel") if not shutil.which(c)]
    problem = f"{', '.join(missing)} not on the PATH" if missing else None
    if problem is None:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if out.returncode != 0 or not out.stdout.strip():
            problem = f"sinfo does not reach a controller ({out.stderr.strip() or 'no nodes'})"
    if problem:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but there is no usable SLURM: {problem}; start one with `sudo bash tools/local-slurm/start.sh`")
        pytest.skip(f"no SLURM cluster here ({problem}); `sudo bash tools/local-slurm/start.sh` starts one")


@pytest.fixture(scope="session")
def slurm() -> None:
    require_slurm()


def sacct_states(job_id: str) -> list[str]:
    """States of every attempt of a job, oldest first (a requeued job has one REQUEUED line per requeue)."""
    out = subprocess.run(["sacct", "-j", str(job_id), "--duplicates", "-X", "-n", "-P", "-o", "JobID,State"],
                         capture_output=True, text=True)
    states = []
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() == str(job_id) and state.split():
            states.append(state.split()[0])
    return states


def sacct_elapsed(job_id: str) -> int:
    """Seconds the job's last attempt ran, from the accounting."""
    out = subprocess.run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "ElapsedRaw"], capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def in_queue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def wait_job_done(job_id: str, timeout: float, on_timeout=None) -> str:
    """Wait until the job has left the queue for good; return its final state."""
    def done():
        if in_queue(job_id):
            return None
        states = sacct_states(job_id)
        return states[-1] if states and states[-1] in FINAL_STATES else None

    return wait_for(done, timeout, f"job {job_id} to finish", on_timeout=on_timeout)


def sbatch(args: list[str], cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]




def last_step(run_dir: Path) -> int:
    steps = [r["step"] for r in read_jsonl(run_dir / METRICS_FILE) if isinstance(r.get("step"), int)]
    return max(steps, default=0)


def tail(path: Path, lines: int = 60) -> str:
    if not path.is_file():
        return f"({path} does not exist)"
    return f"--- {path} (last {lines} lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def model_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def final_checkpoint(run_dir: Path) -> Path:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    path = Path(latest)
    return path if path.is_absolute() else run_dir / "checkpoints" / latest


def submit_py(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "submit.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)
