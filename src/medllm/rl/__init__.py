"""Reinforcement learning after SFT: GRPO on problems with checkable answers, inside the same Lightning run.

Rollouts go through the slot-refill decoder evaluation uses (``medllm.generation``), on the weights being
trained; rewards read answers with evaluation's extractor (``medllm.tasks``); the run dir, checkpoints, resume
and run record are training's (``medllm.training``).
"""
