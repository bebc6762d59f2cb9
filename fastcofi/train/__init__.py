"""Training: the objective over `Ratings`, the solvers that minimize it, and checkpoints."""
