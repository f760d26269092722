"""Training loops that run without Flower: per-task model parts, evaluation, the central baseline."""
