"""Evaluation: eval.py's run (the base and each adapter on a benchmark, or held-out loss), the settings it
takes from an adapter's run record, and the report. Items, answers and scores come from ``medllm.tasks``,
completions from ``medllm.generation``; training is never imported."""
