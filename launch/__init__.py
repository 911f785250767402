"""Launchers: the per-node runner shared by `slurm/train.sh` and submitit, sweeps, `launch/submit.py`.

Launchers only start processes: they build command lines (always as argument lists, never
by pasting strings into a shell), forward the cluster's signals to the training processes and
requeue a job whose training exited with the engine's checkpoint-and-requeue code.
"""
