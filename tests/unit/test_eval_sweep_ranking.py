"""A sweep's ranking marks which adapters the data can't tell apart from the best one."""

from __future__ import annotations

import json

from medllm.evaluation.report import write_report
from medllm.evaluation.results import BASE, EvalResult, TrainingRun
from medllm.evaluation.scores import best_of, comparisons


def result(model: str, correct: list[bool], val_loss: float | None) -> EvalResult:
    run = TrainingRun(run_dir=f"runs/{model}", val_loss=val_loss, lr=1e-4, r=8, alpha=8) if val_loss else None
    metrics = {"n": len(correct), "accuracy": sum(correct) / len(correct)}
    return EvalResult("medqa", model, metrics, run=run)


def test_the_ranking_marks_adapters_indistinguishable_from_the_best(tmp_path):
    items = [str(i) for i in range(100)]
    best = [i < 90 for i in range(100)]
    close = [i < 88 for i in range(100)]  # 2 items fewer: p = 0.5
    poor = [i % 2 == 0 for i in range(100)]
    base = [i < 40 for i in range(100)]
    scored = {"adapter:a": best, "adapter:b": close, "adapter:c": poor, BASE: base}
    results = [result(m, c, None if m == BASE else 1.0) for m, c in scored.items()]
    winner = best_of(results)
    assert winner == "adapter:a"
    pairs = {"medqa": [(m, BASE) for m in scored if m != BASE] + [("adapter:b", winner), ("adapter:c", winner)]}
    correct = {("medqa", m): dict(zip(items, c, strict=True)) for m, c in scored.items()}
    compared = comparisons(correct, ["medqa"], pairs, seed=0)
    assert not compared["medqa"]["adapter:b vs adapter:a"]["distinguishable"]
    assert compared["medqa"]["adapter:c vs adapter:a"]["distinguishable"]
    write_report(tmp_path, results, {"comparisons": compared})
    ranking = (tmp_path / "report.md").read_text().split("### Adapters ranked by accuracy")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in ranking.splitlines() if line[:3] in ("| 1", "| 2", "| 3")]
    marks = {cells[1]: cells[-1].rstrip(" |") for cells in rows}
    assert marks["adapter:a"] == "best"
    assert marks["adapter:b"].startswith("≈ best (Δ -0.020, p=0.5)")
    assert marks["adapter:c"].startswith("worse (Δ -0.400")
    saved = json.loads((tmp_path / "report.json").read_text())["comparisons"]["medqa"]
    assert saved["adapter:a vs base"]["difference"] == 0.5
