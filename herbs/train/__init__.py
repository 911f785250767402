"""The training engine: Accelerate setup, the loop, checkpoints, preemption and tracking."""
