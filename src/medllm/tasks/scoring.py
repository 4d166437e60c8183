"""Scoring completions: answers parsed, voted on and scored with torchmetrics, parse failures kept visible.

A parse failure (``None``) becomes an extra class, ``unparsed``, placed after the real labels:

- accuracy: it never equals a gold label, so every failure is a miss;
- recall of a label: a gold item whose answer failed to parse is a false negative of that label;
- precision of a label: a failure is not a prediction of any label, so it is no false positive;
- macro precision / recall / F1 average the real labels only: ``unparsed`` is never a gold label, so
  its own scores are undefined, and folding it in would punish failures twice. A label that occurs
  neither as gold nor as a prediction is left out of the average, as torchmetrics does, rather than
  counted as 0 (a 20-item subsample may hold no "maybe" at all); its per-label scores are None;
- the confusion matrix keeps an ``unparsed`` column so failures are counted per gold label.

Mapping failures to a real label (or dropping them) would instead make a model that answers less
often look more precise.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from medllm.data.chat_format import THINK_CLOSE
from medllm.tasks.extraction import extract_answer
from medllm.tasks.items import BenchmarkItem

UNPARSED = "unparsed"


def _indices(preds: list[str | None], golds: list[str], choices: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("nothing to score: no predictions")
    index = {label: i for i, label in enumerate(choices)}
    unknown = sorted({g for g in golds if g not in index} | {p for p in preds if p is not None and p not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the choices {choices}")
    pred_idx = [len(choices) if p is None else index[p] for p in preds]
    return torch.tensor(pred_idx), torch.tensor([index[g] for g in golds])


def score(preds: list[str | None], golds: list[str], choices: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-label scores and the confusion matrix (see module doc)."""
    pred_t, gold_t = _indices(preds, golds, choices)
    k = len(choices)
    num_classes = k + 1  # the real labels, then "unparsed"
    per_label = {
        name: fn(pred_t, gold_t, num_classes=num_classes, average="none")[:k]
        for name, fn in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    matrix = multiclass_confusion_matrix(pred_t, gold_t, num_classes=num_classes)[:k]  # rows: gold, never unparsed
    support = matrix.sum(dim=1)
    predicted = matrix.sum(dim=0)[:k]
    present = (support + predicted) > 0
    macro = {name: values[present].mean().item() for name, values in per_label.items()}
    return {
        "n": len(golds),
        "accuracy": multiclass_accuracy(pred_t, gold_t, num_classes=num_classes, average="micro").item(),
        "precision": macro["precision"],
        "recall": macro["recall"],
        "macro_f1": macro["f1"],
        "parse_failures": sum(p is None for p in preds),
        "per_class": {
            label: {
                **{name: values[i].item() if present[i] else None for name, values in per_label.items()},
                "support": int(support[i]),
            }
            for i, label in enumerate(choices)
        },
        "confusion_matrix": {
            "rows": list(choices),
            "columns": [*choices, UNPARSED],
            "matrix": matrix.tolist(),
        },
    }


def reasoning_stats(outputs: list[str], reasoning_tokens: list[int] | None = None) -> dict[str, float]:
    """How often the think block closes, and how long the reasoning runs.

    The reasoning is the text before the first ``</think>``, or the whole output when the block never
    closes (a truncated reasoning still spent its length). ``reasoning_tokens``: the generated tokens before
    each completion's ``</think>``, counted as generated (the decoded text tokenized again can count more
    than were generated, and more than ``max_new_tokens``).
    """
    if not outputs:
        raise ValueError("no outputs to measure")
    reasonings = [out.split(THINK_CLOSE, 1)[0] for out in outputs]
    stats = {
        "format_rate": sum(THINK_CLOSE in out for out in outputs) / len(outputs),
        "mean_reasoning_chars": sum(map(len, reasonings)) / len(reasonings),
    }
    if reasoning_tokens:
        stats["mean_reasoning_tokens"] = sum(reasoning_tokens) / len(reasoning_tokens)
    return stats


def majority_vote(answers: list[str | None]) -> str | None:
    """The most frequent parsed answer; None votes abstain, ties go to the answer seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    return max(counts, key=counts.__getitem__)  # Counter keeps first-seen order; max keeps the first maximum


def shared_choices(items: list[BenchmarkItem]) -> tuple[str, ...]:
    """The labels all items are scored over: their common choices, or the union in order (A, B, ... E)."""
    first = items[0].choices
    if all(item.choices == first for item in items):
        return first
    return tuple(sorted({c for item in items for c in item.choices}))


def score_completions(
    items: list[BenchmarkItem], prompts: list[str], completions: list[list[str]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and prediction rows from each item's completions (several: majority vote of their answers)."""
    predictions, parsed = [], []
    for item, prompt, outputs in zip(items, prompts, completions, strict=True):
        votes = [extract_answer(out, item) for out in outputs]
        answer = votes[0] if len(votes) == 1 else majority_vote(votes)
        parsed.append(answer)
        row = {"id": item.id, "prompt": prompt, "output": outputs[0], "parsed": answer, "gold": item.gold}
        if len(outputs) > 1:
            row |= {"samples": outputs, "votes": votes}
        predictions.append(row)
    metrics = score(parsed, [item.gold for item in items], shared_choices(items))
    metrics |= reasoning_stats([out for outputs in completions for out in outputs])
    return metrics, predictions
