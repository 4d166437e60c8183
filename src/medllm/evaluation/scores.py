"""From the recorded predictions to each (benchmark, model)'s scores, the suite's averages, the comparisons with
confidence and the accuracy at each thinking budget.

Everything here reads the prediction rows only (``predictions.jsonl``'s), so a resumed evaluation, whose rows
were written by two processes, is scored exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medllm.evaluation.results import BASE, EvalResult
from medllm.evaluation.statistics import paired_difference
from medllm.tasks.exams import subject_of
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.protocols import STRICT, as_protocol_item, lenient_accuracy, lenient_answer
from medllm.tasks.scoring import reasoning_stats, score, shared_choices

ALL = "all benchmarks"  # the comparison over every item of the suite


def _mean(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def cut_off_metrics(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """The share of completions cut at the limit, the accuracy of the others and, where cut-off completions were made
    to answer, the accuracy with those answers."""
    finished = [r["correct"] for r in rows if not r["cut_off"]]
    metrics = {"cut_off_rate": _mean([r["cut_off"] for r in rows]), "accuracy_finished": _mean(finished)}
    if any(str(limit) in r.get("forced", {}) for r in rows):
        metrics["accuracy_forced"] = _mean([answer_at(r, limit) == r["gold"] for r in rows])
    return metrics


def answer_at(row: dict[str, Any], budget: int) -> str | None:
    """The answer with the reasoning cut at ``budget`` tokens: the forced one where it was cut there, else its own."""
    return row.get("forced", {}).get(str(budget), row["parsed"])


def item_correct(rows: list[dict[str, Any]], metrics: dict[str, Any], items: dict[str, BenchmarkItem], protocol: str):
    """Each row's right or wrong as the protocol scores it (the lenient scorer: by the match the benchmark used)."""
    if protocol == STRICT:
        return [r["correct"] for r in rows]
    use = metrics["match_used"]
    answers = [lenient_answer(r["output"], as_protocol_item(items[r["id"]], protocol)) for r in rows]
    return [getattr(a, use) == r["gold"] for a, r in zip(answers, rows, strict=True)]


def benchmark_result(
    benchmark: str,
    model: str,
    rows: list[dict[str, Any]],
    items: list[BenchmarkItem],
    protocol: str,
    limit: int,
) -> EvalResult:
    """One model's scores on one benchmark from its rows (in item order)."""
    golds = [r["gold"] for r in rows]
    metrics = score([r["parsed"] for r in rows], golds, shared_choices(items))
    outputs = [out for r in rows for out in r.get("samples", [r["output"]])]
    metrics |= reasoning_stats(outputs, [r["reasoning_tokens"] for r in rows if "reasoning_tokens" in r])
    metrics |= cut_off_metrics(rows, limit)
    metrics["mean_new_tokens"] = sum(r["new_tokens"] for r in rows) / len(rows)
    subjects: dict[str, list[bool]] = {}
    for row in rows:
        if (subject := subject_of(str(row["id"]))) is not None:
            subjects.setdefault(subject, []).append(row["correct"])
    if subjects:  # an exam's subjects (MMLU's, MMLU-Pro's, GPQA's): their accuracies (strict) and sizes
        metrics["subjects"] = {s: {"accuracy": _mean(c), "n": len(c)} for s, c in subjects.items()}
    if protocol != STRICT:
        metrics["accuracy_strict"] = metrics["accuracy"]
        by_id = {item.id: item for item in items}
        answers = [lenient_answer(r["output"], as_protocol_item(by_id[r["id"]], protocol)) for r in rows]
        metrics |= lenient_accuracy(answers, golds)
    return EvalResult(benchmark, model, metrics, rows)


def averages(results: list[EvalResult], models: list[str]) -> dict[str, dict[str, Any]]:
    """Per model: the macro average (the mean of the benchmarks' accuracies) and the micro one (every item alike)."""
    out = {}
    for model in models:
        mine = [r for r in results if r.model == model]
        n = sum(r.metrics["n"] for r in mine)
        out[model] = {
            "benchmarks": len(mine),
            "n": n,
            "macro_accuracy": sum(r.metrics["accuracy"] for r in mine) / len(mine),
            "micro_accuracy": sum(r.metrics["accuracy"] * r.metrics["n"] for r in mine) / n,
        }
    return out


def comparisons(
    correct: dict[tuple[str, str], dict[str, bool]],
    benchmarks: list[str],
    pairs: dict[str, list[tuple[str, str]]],
    seed: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{benchmark or ALL: {"a vs b": paired difference}}`` for the pairs of each scope, over the items both
    answered (ALL: every benchmark's items together)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scope, scope_pairs in pairs.items():
        members = benchmarks if scope == ALL else [scope]
        for a, b in scope_pairs:
            left, right = [], []
            for bench in members:
                x, y = correct.get((bench, a), {}), correct.get((bench, b), {})
                shared = [i for i in x if i in y]
                left += [x[i] for i in shared]
                right += [y[i] for i in shared]
            if left:
                out.setdefault(scope, {})[f"{a} vs {b}"] = paired_difference(left, right, seed) | {"a": a, "b": b}
    return out


def best_of(results: list[EvalResult], average: dict[str, dict[str, Any]] | None = None) -> str | None:
    """The adapter of a known training run with the best accuracy (``average``: the best micro average), a lower
    validation loss breaking ties, as the report ranks them; None where no adapter has a run."""
    candidates = {r.model: r for r in results if r.run is not None and r.model != BASE}
    if not candidates:
        return None

    def rank(model: str) -> tuple[float, float]:
        accuracy = average[model]["micro_accuracy"] if average else candidates[model].metrics["accuracy"]
        loss = candidates[model].run.val_loss
        return -accuracy, math.inf if loss is None else loss

    return min(candidates, key=rank)


def budget_curve(rows_by: dict[tuple[str, str], list[dict[str, Any]]], points: list[int]) -> dict[str, Any]:
    """Accuracy at each thinking budget, per benchmark and model: ``{benchmark: {model: {budget: accuracy}}}``."""
    curve: dict[str, Any] = {}
    for (bench, model), rows in rows_by.items():
        curve.setdefault(bench, {})[model] = {
            str(b): _mean([answer_at(r, b) == r["gold"] for r in rows]) for b in points
        }
    return curve
