"""Sweeps: the summary of a hyperparameter sweep's jobs (a table, a plot, the best job) and the Hydra
callback that keeps it up to date."""
