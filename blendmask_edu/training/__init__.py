"""Training: the loop, the solver, the data stream, checkpoints and multi-process training."""
