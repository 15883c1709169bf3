"""Training: objective, the DDP/DeepSpeed-wrapped module, loop, checkpoints, metrics."""
