"""Backend start-up that must run before transformers and peft are imported (no heavy imports here)."""

from __future__ import annotations

import sys

from medllm.errors import MedllmError
from medllm.models.backends import get_backend


def import_backend(backend: str | None) -> None:
    """The backend's early imports (Unsloth patches transformers, peft and trl as it is imported); none for None.

    Exits with a one-line message where the backend can't start here (Unsloth needs an NVIDIA GPU).
    """
    if backend is None:
        return
    try:
        get_backend(backend).prepare()
    except MedllmError as err:
        sys.exit(f"error: {err}")


def eval_backend(cfg) -> str | None:
    """The backend eval.py prepares first: the configured one where the model runs as trained (engine=peft,
    held-out loss, mode=generate); none for the merged engine, which needs only transformers."""
    as_trained = cfg.engine == "peft" or cfg.mode == "generate" or cfg.benchmark.name == "medical_o1_val"
    return cfg.model.backend if as_trained else None
