"""A causal LM on labelled batches: its forward pass, and the loss metrics of held-out rows.

Training validates with these (``medllm.training.module``) and evaluation scores held-out rows with the
same (``medllm.evaluation.held_out``), so an adapter's ``eval_loss`` is its run's ``val_loss``.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric

from medllm.data.chat_format import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "position_ids")


def causal_lm_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """The model on a batch, without a KV cache: with a cache, transformers ignores the restarting
    ``position_ids`` of packed rows and lets every row attend to the rows packed before it."""
    return model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}, use_cache=False)


class HeldOutMetrics(torch.nn.Module):
    """Loss per trained token, perplexity and next-token accuracy over batches: ``update`` each, ``compute``
    once (as ``val/loss``, ``val/ppl`` and ``val/token_accuracy``), then ``reset``."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.accuracy = MeanMetric()
        self._has_logits = False

    def update(self, out, batch: dict[str, torch.Tensor]) -> None:
        self.loss.update(out.loss.float(), weight=batch["num_trained"])
        logits = getattr(out, "logits", None)
        # Unsloth may return no logits (or a function computing them) to save memory: skip accuracy then.
        if torch.is_tensor(logits) and logits.shape[:2] == batch["labels"].shape:
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            correct = (logits[:, :-1].argmax(-1) == labels) & mask
            self.accuracy.update(correct.sum() / mask.sum().clamp(min=1), weight=mask.sum())
            self._has_logits = True

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.loss.compute()
        metrics = {"val/loss": loss, "val/ppl": torch.exp(loss.clamp(max=20))}
        if self._has_logits:
            metrics["val/token_accuracy"] = self.accuracy.compute()
        return metrics

    def reset(self) -> None:
        self.loss.reset()
        self.accuracy.reset()
        self._has_logits = False
