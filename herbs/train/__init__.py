"""The training engine: the loop, checkpoints, preemption and tracking."""
