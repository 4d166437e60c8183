"""Writing one evaluation run as report.json, report.md, predictions.jsonl and report.png.

A result (``EvalResult``) is one (benchmark, model) pair; the model label is ``"base"`` or
``"adapter:<path>"``, and the markdown table shows each metric's change against ``base``. A result may
also carry only numbers (held-out loss and perplexity) and no predictions.

The figure is drawn on a ``Figure`` with the Agg canvas rather than through pyplot, so writing a
report never switches the backend of the process that called it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medllm.evaluation.results import BASE, EvalResult
from medllm.runs.atomic import write_atomically
from medllm.runs.layout import REPORT_FILES

COLUMNS = (
    "n",
    "accuracy",
    "macro_f1",
    "precision",
    "recall",
    "parse_failures",
    "format_rate",
    "mean_reasoning_chars",
    "mean_reasoning_tokens",
    "cut_off_rate",
    "accuracy_finished",
    "accuracy_forced",
    "accuracy_strict",
    "fallback_answers",
    "loss",
    "perplexity",
    "token_accuracy",
)
WITH_DELTA = ("accuracy", "macro_f1", "loss", "perplexity", "token_accuracy")
CHARTED = ("accuracy", "macro_f1")
PREDICTION_FIELDS = ("id", "parsed", "gold")


def _group(results: Sequence[EvalResult]) -> dict[str, dict[str, EvalResult]]:
    """Results as ``{benchmark: {model: result}}``, checked for duplicates and counts."""
    grouped: dict[str, dict[str, EvalResult]] = {}
    for number, result in enumerate(results, start=1):
        bench, model = result.benchmark, result.model
        if model in grouped.setdefault(bench, {}):
            raise ValueError(f"result {number}: a second result for benchmark {bench!r} and model {model!r}")
        predictions = result.predictions
        if predictions is not None:
            n = result.metrics.get("n")
            if n is not None and n != len(predictions):
                raise ValueError(
                    f"result {number} ({bench}, {model}): metrics n={n} but {len(predictions)} predictions"
                )
            for row, item in enumerate(predictions, start=1):
                absent = [f for f in PREDICTION_FIELDS if f not in item]
                if absent:
                    raise ValueError(f"result {number} ({bench}, {model}): prediction {row} lacks {absent}")
        grouped[bench][model] = result
    return grouped


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, int):  # bool included
        return f"{value:+d}" if signed else str(value)
    if isinstance(value, float):
        spec = ".1f" if abs(value) >= 100 else ".4f"
        return format(value, ("+" if signed else "") + spec)
    return str(value)


def _table(models: dict[str, EvalResult]) -> list[str]:
    """One markdown table: a row per model (base first), scalar metrics, and deltas against base."""
    metrics = {model: result.metrics for model, result in models.items()}
    scalars = {
        k for m in metrics.values() for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    keys = [k for k in COLUMNS if k in scalars] + sorted(scalars - set(COLUMNS))
    base = metrics.get(BASE)
    header, columns = ["model"], []
    for key in keys:
        header.append(key.replace("_", " "))
        columns.append((key, False))
        if base is not None and key in WITH_DELTA and key in base:
            header.append(f"Δ {key.replace('_', ' ')} vs base")
            columns.append((key, True))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in sorted(metrics, key=lambda m: m != BASE):
        cells = [model.replace("|", "\\|")]
        for key, delta in columns:
            value = metrics[model].get(key)
            if delta:
                cells.append("" if model == BASE or value is None else _fmt(value - base[key], signed=True))
            else:
                cells.append(_fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ranked(models: dict[str, EvalResult]) -> list[tuple[str, EvalResult]]:
    """Adapters whose training run is known, best accuracy first (lower val loss breaks ties)."""
    runs = [(m, r) for m, r in models.items() if r.run and r.metrics.get("accuracy") is not None]

    def loss(result: EvalResult) -> float:
        return math.inf if result.run.val_loss is None else result.run.val_loss

    return sorted(runs, key=lambda mr: (-mr[1].metrics["accuracy"], loss(mr[1])))


def _versus_best(model: str, best: str, compared: dict[str, dict[str, Any]]) -> str:
    """The ranking's mark: whether the data tell this adapter apart from the best one (McNemar, p < 0.05)."""
    if model == best:
        return "best"
    pair = compared.get(f"{model} vs {best}")
    if pair is None:
        return ""
    verdict = "worse" if pair["distinguishable"] else "≈ best"
    return f"{verdict} (Δ {pair['difference']:+.3f}, p={pair['p_mcnemar']:.3g})"


def _ranking(models: dict[str, EvalResult], compared: dict[str, dict[str, Any]]) -> list[str]:
    ranked = _ranked(models)
    lines = [
        "### Adapters ranked by accuracy",
        "",
        "| rank | model | accuracy | macro f1 | val loss | lr | r | alpha | vs best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, (model, result) in enumerate(ranked, start=1):
        metrics, run = result.metrics, result.run
        cells = [metrics.get("accuracy"), metrics.get("macro_f1"), run.val_loss, run.lr]
        cells = [_fmt(v) for v in cells] + [_fmt(run.r), _fmt(run.alpha), _versus_best(model, ranked[0][0], compared)]
        lines.append("| " + " | ".join([str(rank), model.replace("|", "\\|"), *cells]) + " |")
    return lines


def _cell(model: str) -> str:
    return model.replace("|", "\\|")


def _suite_lines(grouped: dict[str, dict[str, EvalResult]], extras: dict[str, Any]) -> list[str]:
    """The suite's table (a row per model: each benchmark's accuracy, the macro and micro averages) and what was
    skipped."""
    averages, lines = extras.get("averages"), []
    if averages:
        benches = list(grouped)
        lines += ["## Suite: accuracy per benchmark", "", "| model | " + " | ".join(benches) + " | macro | micro | n |"]
        lines.append("|" + "---|" * (len(benches) + 4))
        for model, avg in averages.items():
            cells = [_fmt(grouped[b][model].metrics.get("accuracy")) if model in grouped[b] else "" for b in benches]
            cells += [_fmt(avg["macro_accuracy"]), _fmt(avg["micro_accuracy"]), str(avg["n"])]
            lines.append(f"| {_cell(model)} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, why in (extras.get("skipped") or {}).items():
        lines.append(f"- skipped **{name}**: {why}")
    return [*lines, ""] if extras.get("skipped") else lines


def _comparison_lines(comparisons: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    if not comparisons:
        return []
    lines = [
        "## Differences in accuracy, paired over items",
        "",
        "Δ is the first model's accuracy minus the second's on the items both answered; the interval is a 95% paired "
        "bootstrap over items; p is McNemar's exact test on the items they disagree on. An interval holding 0 (p >= "
        "0.05): the data can't tell the two apart.",
        "",
        "| benchmark | model | vs | n | Δ accuracy | 95% interval | p (McNemar) | only model right | only vs right |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scope, pairs in comparisons.items():
        for pair in pairs.values():
            interval = f"[{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}]"
            cells = [
                scope, _cell(pair["a"]), _cell(pair["b"]), str(pair["n"]), f"{pair['difference']:+.3f}", interval,
                f"{pair['p_mcnemar']:.3g}", str(pair["only_first_right"]), str(pair["only_second_right"]),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _budget_lines(curve: dict[str, Any]) -> list[str]:
    if not curve:
        return []
    budgets = next(iter(next(iter(curve.values())).values())).keys()
    lines = [
        "## Accuracy against the thinking budget",
        "",
        "Each completion cut at the budget (where its reasoning ran past it) and made to answer; one that closed its "
        "reasoning within the budget keeps its answer.",
        "",
        "| benchmark | model | " + " | ".join(budgets) + " |",
        "|" + "---|" * (len(budgets) + 2),
    ]
    for bench, models in curve.items():
        for model, points in models.items():
            lines.append(f"| {bench} | {_cell(model)} | " + " | ".join(_fmt(v) for v in points.values()) + " |")
    return [*lines, ""]


SPEED_COLUMNS = ("seconds", "rows", "new_tokens", "new_tokens_per_s", "rows_per_s", "batch_size", "bandwidth_share")


def _speed_lines(speed: list[dict[str, Any]]) -> list[str]:
    if not speed:
        return []
    lines = [
        "## Speed (this process's generation passes)",
        "",
        "bandwidth share: the time reading the weights and each row's KV cache once per step would take at the card's "
        "memory bandwidth, over the time taken (n/a: the CPU, or a card whose bandwidth is not listed).",
        "",
        "| model | pass | card | " + " | ".join(c.replace("_", " ") for c in SPEED_COLUMNS) + " |",
        "|" + "---|" * (len(SPEED_COLUMNS) + 3),
    ]
    for row in speed:
        cells = [_fmt(row.get(c)) if row.get(c) is not None else "n/a" for c in SPEED_COLUMNS]
        lines.append(f"| {_cell(row['model'])} | {row['pass']} | {row.get('card', '')} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _markdown(grouped: dict[str, dict[str, EvalResult]], extras: dict[str, Any]) -> str:
    lines = ["# Evaluation report", ""]
    if extras.get("protocol"):
        lines += [f"Protocol: **{extras['protocol']}**", ""]
    lines += _suite_lines(grouped, extras)
    comparisons = extras.get("comparisons") or {}
    for bench, models in grouped.items():
        lines += [f"## {bench}", "", *_table(models), ""]
        if _ranked(models):
            lines += [*_ranking(models, comparisons.get(bench, {})), ""]
    lines += _comparison_lines(comparisons) + _budget_lines(extras.get("budgets") or {})
    lines += _speed_lines(extras.get("speed") or [])
    return "\n".join(lines)


def _budget_chart(curve: dict[str, Any], path: Path) -> None:
    """Accuracy against the thinking budget: a panel per benchmark, a line per model."""
    fig = Figure(figsize=(4.5 * len(curve), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (bench, models) in zip(fig.subplots(1, len(curve), squeeze=False)[0], curve.items(), strict=True):
        for model, points in models.items():
            xs = [int(b) for b in points]
            ax.plot(xs, [v if v is not None else float("nan") for v in points.values()], marker="o", label=model[-28:])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("thinking budget (tokens)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(bench)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def _accuracy_vs_val_loss(grouped: dict[str, dict[str, EvalResult]], path: Path) -> bool:
    """A point per adapter (labelled lr, r): does a lower validation loss mean better answers?"""
    charted = {
        b: ranked for b, m in grouped.items() if (ranked := [mr for mr in _ranked(m) if mr[1].run.val_loss is not None])
    }
    if not charted:
        return False
    fig = Figure(figsize=(5.0 * len(charted), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (bench, ranked) in zip(fig.subplots(1, len(charted), squeeze=False)[0], charted.items(), strict=True):
        for _, result in ranked:
            x, y = result.run.val_loss, result.metrics["accuracy"]
            ax.scatter([x], [y], color="tab:blue")
            ax.annotate(
                f"lr {_fmt(result.run.lr)}, r {_fmt(result.run.r)}",
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        base = grouped[bench].get(BASE)
        if base is not None and base.metrics.get("accuracy") is not None:
            ax.axhline(base.metrics["accuracy"], color="grey", linestyle="--", label="base")
            ax.legend(fontsize=8)
        ax.set_xlabel("validation loss (training run)")
        ax.set_ylabel("accuracy")
        ax.set_title(bench)
    fig.savefig(path, dpi=120)
    return True


def _chart(grouped: dict[str, dict[str, EvalResult]], path: Path) -> None:
    """Accuracy and macro F1 per model, one panel per benchmark that has them."""
    charted = {b: m for b, m in grouped.items() if any("accuracy" in r.metrics for r in m.values())}
    fig = Figure(figsize=(max(4.0, 4.0 * len(charted)), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    if not charted:
        fig.text(0.5, 0.5, "no accuracy metrics to chart", ha="center", va="center")
    axes = fig.subplots(1, len(charted), squeeze=False)[0] if charted else []
    width = 0.8 / len(CHARTED)
    for ax, (bench, models) in zip(axes, charted.items(), strict=True):
        names = sorted((m for m, r in models.items() if "accuracy" in r.metrics), key=lambda m: m != BASE)
        for offset, key in enumerate(CHARTED):
            values = [models[m].metrics.get(key) or 0.0 for m in names]
            xs = [i + (offset - (len(CHARTED) - 1) / 2) * width for i in range(len(names))]
            bars = ax.bar(xs, values, width, label=key.replace("_", " "))
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(range(len(names)), [n if len(n) <= 24 else "…" + n[-23:] for n in names], fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_title(bench)
        ax.legend(loc="upper left", ncols=len(CHARTED), fontsize=8)
    fig.savefig(path, dpi=120)


def write_report(
    out_dir: str | Path, results: Sequence[EvalResult], extras: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the four report files into ``out_dir`` (created if needed), ``accuracy_vs_val_loss.png`` where adapters
    carry their training run, and ``budgets.png`` with a budget curve; returns their paths.

    ``extras``: what an evaluation adds beside the per-benchmark tables: ``protocol``, the suite's ``averages`` and
    ``skipped`` benchmarks, ``comparisons`` (paired differences), the ``budgets`` curve and ``speed`` rows. Each file
    is written whole or not at all: predictions.jsonl, which holds the finished items, is replaced only by a
    complete copy of them.
    """
    extras = extras or {}
    grouped = _group(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    summary = {bench: {model: dict(r.metrics) for model, r in models.items()} for bench, models in grouped.items()}
    runs = {r.model: dataclasses.asdict(r.run) for r in results if r.run}
    report = {"benchmarks": summary, "runs": runs, **extras}
    write_atomically(paths["report.json"], json.dumps(report, indent=2) + "\n")
    write_atomically(paths["report.md"], _markdown(grouped, extras))

    def predictions(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for result in results:
                for item in result.predictions or []:
                    line = {"benchmark": result.benchmark, "model": result.model, **item}
                    line.setdefault("correct", item["parsed"] == item["gold"])
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")

    write_atomically(paths["predictions.jsonl"], predictions)
    _chart(grouped, paths["report.png"])
    if extras.get("budgets"):
        paths["budgets.png"] = out / "budgets.png"
        _budget_chart(extras["budgets"], paths["budgets.png"])
    scatter = out / "accuracy_vs_val_loss.png"
    if _accuracy_vs_val_loss(grouped, scatter):
        paths[scatter.name] = scatter
    return paths
