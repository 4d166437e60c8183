"""Training: the LightningModule, checkpointing, callbacks and the run that ties them together."""
