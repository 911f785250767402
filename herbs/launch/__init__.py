"""Starting training on a cluster: `herbs submit` (submitit, sweeps), `herbs status`, and `herbs run-dir`
(slurm/train.sh's log; its srun tasks run `herbs task`, in herbs.train.commands).

    job       the submitit job: `herbs train` as each task's child, requeued by `checkpoint()`
    submit    plan, check and submit jobs and job arrays
    sweep     sweep files: grid and zip of config values, named points
    status    a submission's jobs: SLURM states and the runs' own records
    commands  the `herbs` subcommands above

Nothing here imports torch: it runs on login nodes and inside SLURM's batch script.
"""
