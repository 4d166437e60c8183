"""Checkpoints written whole or not at all: a kill during a save leaves the previous one loadable."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medllm.runs.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file in the same folder, flushes it to disk, then renames it into place."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp), durable=True)
