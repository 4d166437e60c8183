"""Tasks with checkable answers: benchmark items and their loaders, reading the answer out of a completion,
and scoring it. Evaluation scores with them, and reinforcement learning's rewards will too: one extractor,
one scorer."""
