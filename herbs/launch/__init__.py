"""Starting training on a cluster: `herbs submit` (submitit, sweeps), `herbs status`, and the pieces
`slurm/train.sh` calls (`herbs run-dir`, `herbs task`).

    tasks     one SLURM task per training process: the torchrun variables from SLURM or submitit
    job       the submitit job: `herbs train` as each task's child, requeued by `checkpoint()`
    submit    plan, check and submit jobs and job arrays
    sweep     sweep files: grid and zip of config values, named points
    status    a submission's jobs: SLURM states and the runs' own records
    commands  the `herbs` subcommands above

Nothing here imports torch: it runs on login nodes and inside SLURM's batch script.
"""
