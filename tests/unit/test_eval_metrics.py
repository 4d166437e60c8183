"""Scores from torchmetrics, checked against hand counts and a plain-Python reference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from medllm.tasks.scoring import UNPARSED, reasoning_stats, score

LETTERS = ("A", "B", "C", "D")


def reference(preds: list[str | None], golds: list[str], choices: tuple[str, ...]) -> dict:
    """Independent scores from TP/FP/FN counts: a failure (None) is a false negative of its gold label
    and a false positive of nothing; labels never seen as gold or prediction are not averaged."""
    per_class, present = {}, []
    for label in choices:
        tp = sum(p == label and g == label for p, g in zip(preds, golds, strict=True))
        fp = sum(p == label and g != label for p, g in zip(preds, golds, strict=True))
        fn = sum(p != label and g == label for p, g in zip(preds, golds, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = (precision, recall, f1, tp + fn)
        if tp + fp + fn:
            present.append(label)
    return {
        "accuracy": sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds),
        "precision": sum(per_class[c][0] for c in present) / len(present),
        "recall": sum(per_class[c][1] for c in present) / len(present),
        "macro_f1": sum(per_class[c][2] for c in present) / len(present),
        "per_class": per_class,
        "present": present,
    }


def write_predictions(path: Path, rows: list[tuple[str | None, str]]) -> Path:
    path.write_text("".join(json.dumps({"parsed": p, "gold": g}) + "\n" for p, g in rows), "utf-8")
    return path


def read_predictions(path: Path) -> tuple[list[str | None], list[str]]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [r["parsed"] for r in rows], [r["gold"] for r in rows]


def test_known_file_gives_hand_computed_scores(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "preds.jsonl", [("A", "A"), ("B", "B"), (None, "B"), ("A", "C"), ("C", "C")])
    preds, golds = read_predictions(path)
    result = score(preds, golds, LETTERS)
    # By hand: 3 of 5 right. A: TP1 FP1 FN0; B: TP1 FP0 FN1 (the failure); C: TP1 FP0 FN1; D never occurs.
    assert result["n"] == 5
    assert result["parse_failures"] == 1
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert result["recall"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["per_class"]["D"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert result["confusion_matrix"]["columns"] == [*LETTERS, UNPARSED]
    assert result["confusion_matrix"]["matrix"][1] == [0, 1, 0, 0, 1]  # gold B: once right, once unparsed

    ref = reference(preds, golds, LETTERS)
    for key in ("accuracy", "precision", "recall", "macro_f1"):
        assert result[key] == pytest.approx(ref[key], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_python_reference_on_random_predictions(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    choices = ("yes", "no", "maybe")
    rows = []
    for _ in range(200):
        gold = rng.choice(choices)
        pred = rng.choice([gold, gold, None, *choices])
        rows.append((pred, gold))
    preds, golds = read_predictions(write_predictions(tmp_path / "preds.jsonl", rows))
    result, ref = score(preds, golds, choices), reference(preds, golds, choices)

    for key in ("accuracy", "precision", "recall", "macro_f1"):
        assert result[key] == pytest.approx(ref[key], abs=1e-6)
    for label in choices:
        precision, recall, f1, support = ref["per_class"][label]
        got = result["per_class"][label]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1), abs=1e-6)
        assert got["support"] == support
    matrix = result["confusion_matrix"]["matrix"]
    columns = result["confusion_matrix"]["columns"]
    for i, gold in enumerate(choices):
        for j, pred in enumerate(columns):
            expected = sum(g == gold and (p or UNPARSED) == pred for p, g in rows)
            assert matrix[i][j] == expected
    assert result["parse_failures"] == sum(p is None for p, _ in rows)


def test_failures_lower_recall_but_are_no_false_positive() -> None:
    golds = ["A", "A", "B", "B"]
    answered = score(["A", "A", "B", "A"], golds, ("A", "B"))
    failed = score(["A", None, "B", "A"], golds, ("A", "B"))
    assert failed["accuracy"] < answered["accuracy"]
    assert failed["per_class"]["A"]["recall"] < answered["per_class"]["A"]["recall"]
    assert failed["per_class"]["B"]["precision"] == answered["per_class"]["B"]["precision"]
    # mapping the failure to "B" would have made it a false positive of B instead
    mapped = score(["A", "B", "B", "A"], golds, ("A", "B"))
    assert mapped["per_class"]["B"]["precision"] < failed["per_class"]["B"]["precision"]


def test_all_failures_score_zero() -> None:
    result = score([None, None], ["A", "B"], LETTERS)
    assert result["accuracy"] == 0.0
    assert result["macro_f1"] == 0.0
    assert result["parse_failures"] == 2


@pytest.mark.parametrize(
    ("preds", "golds", "message"),
    [(["A"], ["A", "B"], "1 predictions for 2"), (["E"], ["A"], "not among the choices"), ([], [], "nothing")],
)
def test_bad_input_is_refused(preds: list, golds: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score(preds, golds, LETTERS)


def test_reasoning_stats() -> None:
    outputs = ["one two three\n</think>\nB", "a never ending thought", "</think>\nA"]
    stats = reasoning_stats(outputs)
    assert stats["format_rate"] == pytest.approx(2 / 3)
    assert stats["mean_reasoning_chars"] == pytest.approx((len("one two three\n") + 22 + 0) / 3)
    assert "mean_reasoning_tokens" not in stats
    # The generated tokens as counted by the decoder: never more than it generated.
    assert reasoning_stats(outputs, [3, 4, 0])["mean_reasoning_tokens"] == pytest.approx((3 + 4 + 0) / 3)
