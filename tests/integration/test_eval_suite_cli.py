"""eval.py suite=medical end to end on the CPU, as a user runs it: a data folder laid out as the releases are
(written here, a few items each), the base and two adapters of the tiny model, one report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers.adapters import save_adapter
from tests.helpers.cli import eval_py

pytestmark = pytest.mark.slow

SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
            "professional_medicine")  # fmt: skip


def write_data_dir(root: Path) -> Path:
    """medqa/test.jsonl (3), medmcqa/validation.jsonl (3, reduced layout), pubmedqa/ (2), mmlu/test/ (1 a subject)."""
    (root / "medqa").mkdir(parents=True)
    options = {"A": "Insulin", "B": "Metformin", "C": "Statin", "D": "Aspirin"}
    medqa = [{"question": f"Patient {i}: first drug?", "options": options, "answer_idx": "ABC"[i],
              "answer": options["ABC"[i]]} for i in range(3)]  # fmt: skip
    (root / "medqa" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in medqa))
    (root / "medmcqa").mkdir()
    medmcqa = [
        {"question": f"Vitamin {i}?", "choices": ["A. C", "B. D", "C. K", "D. E"], "answer": i} for i in range(3)
    ]
    (root / "medmcqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in medmcqa))
    (root / "pubmedqa").mkdir()
    labels = {"11": "yes", "12": "no"}
    rows = {
        k: {"QUESTION": f"Does {k} work?", "CONTEXTS": ["It was tried."], "final_decision": v}
        for k, v in labels.items()
    }
    (root / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(rows))
    (root / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps(labels))
    (root / "mmlu" / "test").mkdir(parents=True)
    for subject in SUBJECTS:
        with (root / "mmlu" / "test" / f"{subject}_test.csv").open("w", newline="") as f:
            csv.writer(f).writerow([f"A {subject} question?", "w", "x", "y", "z", "B"])
    return root


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("suite")
    data = write_data_dir(tmp / "data")
    adapters = [save_adapter(tmp / "a1", seed=1), save_adapter(tmp / "a2", seed=2)]
    eval_py(
        "suite=medical",
        f"suite.data_dir={data}",
        f"adapters=[{adapters[0]},{adapters[1]}]",
        "max_new_tokens=8",
        "budgets=[4]",
        f"hydra.run.dir={tmp / 'eval'}",
    )
    return tmp / "eval", ["base", *(f"adapter:{a}" for a in adapters)]


def test_one_report_holds_every_benchmark_its_averages_and_what_was_skipped(suite_run):
    out, models = suite_run
    report = json.loads((out / "report.json").read_text())
    sizes = {"medqa": 3, "medmcqa": 3, "pubmedqa": 2, "mmlu_medical": 6}
    assert list(report["benchmarks"]) == list(sizes)  # the suite's order
    assert sorted(report["skipped"]) == ["gpqa_medical", "mmlu_pro_medical"]  # offline, no local copy
    assert report["protocol"] == "strict"
    for model in models:
        accuracies = {b: report["benchmarks"][b][model]["accuracy"] for b in sizes}
        average = report["averages"][model]
        assert average["n"] == sum(sizes.values())
        assert average["macro_accuracy"] == pytest.approx(sum(accuracies.values()) / len(sizes))
        assert average["micro_accuracy"] == pytest.approx(sum(accuracies[b] * n for b, n in sizes.items()) / 14)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 14 * 3
    for model in models:
        for bench, n in sizes.items():
            rows = [p for p in predictions if (p["benchmark"], p["model"]) == (bench, model)]
            metrics = report["benchmarks"][bench][model]
            assert metrics["cut_off_rate"] == pytest.approx(sum(p["new_tokens"] == 8 for p in rows) / n)
            for p in rows:  # made to answer at 4 tokens where the reasoning was still open there, never before
                assert ("forced" in p) >= (p["new_tokens"] >= 4 and "</think>" not in p["output"])
                assert ("forced" in p) <= (p["new_tokens"] >= 4)
    for model in models:  # MMLU's subjects, one item each here
        subjects = report["benchmarks"]["mmlu_medical"][model]["subjects"]
        assert sorted(subjects) == sorted(SUBJECTS) and all(s["n"] == 1 for s in subjects.values())
    markdown = (out / "report.md").read_text()
    assert "Protocol: **strict**" in markdown and "skipped **gpqa_medical**" in markdown
    assert "| model | medqa | medmcqa | pubmedqa | mmlu_medical | macro | micro | n |" in markdown


def test_each_adapter_is_compared_with_the_base_item_by_item(suite_run):
    out, (base, first, second) = suite_run
    report = json.loads((out / "report.json").read_text())
    comparisons = report["comparisons"]
    assert sorted(comparisons) == sorted(["medqa", "medmcqa", "pubmedqa", "mmlu_medical", "all benchmarks"])
    for scope, pairs in comparisons.items():
        assert sorted(pairs) == sorted([f"{first} vs {base}", f"{second} vs {base}"])
        for pair in pairs.values():
            n = 14 if scope == "all benchmarks" else report["benchmarks"][scope][base]["n"]
            assert pair["n"] == n and pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
            if scope == "all benchmarks":  # every item alike: the micro averages' difference
                accuracy = {m: report["averages"][m]["micro_accuracy"] for m in (pair["a"], pair["b"])}
            else:
                accuracy = {m: report["benchmarks"][scope][m]["accuracy"] for m in (pair["a"], pair["b"])}
            assert pair["difference"] == pytest.approx(accuracy[pair["a"]] - accuracy[pair["b"]])


def test_the_budget_curve_and_the_speed_of_each_pass_are_reported(suite_run):
    out, models = suite_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["budgets"]) == set(report["benchmarks"])
    assert all(set(report["budgets"][b]) == set(models) for b in report["budgets"])
    assert (out / "budgets.png").read_bytes().startswith(b"\x89PNG")
    passes = [(row["model"], row["pass"]) for row in report["speed"]]
    assert [p for p in passes if p[1] == "answers"] == [(m, "answers") for m in models]
    for row in report["speed"]:
        assert row["card"] == "cpu" and row["bandwidth_share"] is None  # n/a on the CPU
        assert row["new_tokens_per_s"] == pytest.approx(row["new_tokens"] / row["seconds"])


def test_the_huatuogpt_o1_protocol_is_one_flag(tmp_path):
    data = write_data_dir(tmp_path / "data")
    eval_py("suite=medical", f"suite.data_dir={data}", "suite.benchmarks=[pubmedqa,medqa]", "protocol=huatuogpt_o1",
            "max_new_tokens=8", f"hydra.run.dir={tmp_path / 'eval'}")  # fmt: skip
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["protocol"] == "huatuogpt_o1"
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert predictions[0]["prompt"].count("Please answer the following multiple-choice question:") == 1
    assert {p["gold"] for p in predictions if p["benchmark"] == "pubmedqa"} <= {"A", "B", "C"}  # yes/no/maybe lettered
    settings = json.loads((tmp_path / "eval" / "eval_settings.json").read_text())
    assert (settings["do_sample"], settings["temperature"], settings["top_p"], settings["max_new_tokens"]) == (
        True, 0.5, 0.9, 8,
    )  # their sampling; the command line's token limit wins  # fmt: skip
    for metrics in (report["benchmarks"][b]["base"] for b in ("pubmedqa", "medqa")):
        assert metrics["accuracy"] == max(metrics["accuracy_first_match"], metrics["accuracy_last_match"])
        assert metrics["fallback_answers"] == metrics["answers_by_similarity"] and "accuracy_strict" in metrics
