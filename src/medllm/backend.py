"""Backend start-up that must run before transformers and peft are imported (no heavy imports here)."""

from __future__ import annotations

import sys


def import_backend(backend: str) -> None:
    """Import Unsloth first when the run uses it, so it can patch transformers, peft and trl.

    Exits with a one-line message where Unsloth is missing or can't run (it needs an NVIDIA GPU).
    """
    if backend != "unsloth":
        return
    try:
        import unsloth  # noqa: F401
    except Exception as err:  # ImportError, or Unsloth's own error on a machine without a GPU
        sys.exit(
            f"error: model.backend=unsloth could not start ({type(err).__name__}: {err}). It needs an NVIDIA GPU "
            "and `pip install -e '.[gpu]'`; elsewhere use model=r1_distill_llama_8b_hf or model=tiny_llama."
        )


def eval_backend(cfg) -> str:
    """The backend eval.py imports first: the configured one where the model runs as trained (engine=peft,
    held-out loss, mode=generate); the merged engine needs only transformers, so Unsloth is not imported."""
    as_trained = cfg.engine == "peft" or cfg.mode == "generate" or cfg.benchmark.name == "medical_o1_val"
    return cfg.model.backend if as_trained else "hf"
