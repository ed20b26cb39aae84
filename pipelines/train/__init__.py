"""Training: the loop every worker runs, and what it needs (engine, schedule, checkpoints)."""
