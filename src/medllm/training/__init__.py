"""Training: the LightningModule, the run from a config to an adapter and a summary (``fit``), resuming,
preemption, callbacks and W&B; evaluation is never imported (``medllm.workflows`` runs one after)."""
