"""What an evaluation produces: one result per (benchmark, model), and the training run behind an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BASE = "base"  # the model label of the base, the adapters switched off


def adapter_label(path: str) -> str:
    """An adapter's model label in the report."""
    return f"adapter:{path}"


@dataclass(frozen=True)
class TrainingRun:
    """The run that trained an adapter (``<run>/adapter``): what the report ranks it beside."""

    run_dir: str
    val_loss: float | None
    lr: float | None
    r: int | None
    alpha: float | None


@dataclass
class EvalResult:
    """One model's scores on one benchmark: ``metrics`` (accuracy, ..., or loss and perplexity for held-out rows),
    ``predictions`` (a row per item: id, prompt, output, parsed, gold) where answers were generated, and the
    adapter's ``run`` where it is known."""

    benchmark: str
    model: str  # BASE or adapter_label(path)
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] | None = None
    run: TrainingRun | None = None
