"""The suite's loaders on tiny hand-made files in each benchmark's own layout, the hub layout, skipping what the
hub can't give offline, and the real local copies (tests/helpers/configs.SHARED_DATA) where they are present."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest

from medllm.tasks.benchmarks import load_medmcqa
from medllm.tasks.exams import MMLU_MEDICAL, load_gpqa_medical, load_mmlu_medical, load_mmlu_pro_medical, subject_of
from medllm.tasks.items import BenchmarkError
from medllm.tasks.suites import SUITE_BENCHMARKS, load_suite
from tests.helpers.configs import SHARED_DATA


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def medmcqa_reduced(question: str, answer: int) -> dict:
    return {"question": question, "choices": ["A. Iron", "B. Zinc", "C. Copper", "D. Lead"], "answer": answer}


def mmlu_folder(root: Path, rows_per_subject: int = 2) -> Path:
    for subject in MMLU_MEDICAL:
        rows = [
            [f"{subject} question {i}, with a comma?", "w", "x", "y", "z", "ABCD"[i % 4]]
            for i in range(rows_per_subject)
        ]
        write_csv(root / "test" / f"{subject}_test.csv", rows)
    return root


MMLU_PRO_ROWS = [
    {"question_id": 7, "question": "Which organ makes insulin?", "options": ["Liver", "Pancreas", "Skin"],
     "answer": "B", "answer_index": 1, "category": "health"},
    {"question_id": 8, "question": "What is 2 + 2?", "options": ["3", "4"], "answer": "B", "answer_index": 1,
     "category": "math"},
    {"question_id": 9, "question": "Where is DNA kept?", "options": ["Nucleus", "Ribosome", "Membrane", "Wall"],
     "answer": "A", "answer_index": 0, "category": "biology"},
]  # fmt: skip
GPQA_HEADER = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3",
               "Subdomain", "High-level domain", "Record ID"]  # fmt: skip
GPQA_ROWS = [
    ["Which enzyme unwinds DNA?", "Helicase", "Ligase", "Primase", "Topoisomerase I", "Molecular Biology", "Biology",
     "recA"],
    ["What is a quark?", "A particle", "A wave", "A field", "A string", "Quantum Mechanics", "Physics", "recB"],
    ["Which allele is dominant?", "The one expressed", "Neither", "Both", "The recessive", "Genetics", "Biology",
     "recC"],
]  # fmt: skip


def test_medmcqa_reads_the_reduced_dev_layout(tmp_path):
    items = load_medmcqa(str(write_jsonl(tmp_path / "v.jsonl", [medmcqa_reduced("Q1?", 2), medmcqa_reduced("Q2?", 0)])))
    assert [(i.id, i.gold) for i in items] == [("1", "C"), ("2", "A")]
    assert items[0].options == {"A": "Iron", "B": "Zinc", "C": "Copper", "D": "Lead"}  # the "A. " lead dropped


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**medmcqa_reduced("Q?", 0), "answer": 4}, r"v\.jsonl: row 1: field 'answer' = 4 is outside 0\.\.3"),
        ({**medmcqa_reduced("Q?", 0), "choices": ["A. x", "C. y"]}, r"row 1: field 'choices': choice B = 'C. y'"),
        ({**medmcqa_reduced("Q?", 0), "answer": "A"}, r"row 1: field 'answer' has type str"),
    ],
)
def test_a_bad_reduced_medmcqa_row_is_named(tmp_path, row, message):
    with pytest.raises(BenchmarkError, match=message):
        load_medmcqa(str(write_jsonl(tmp_path / "v.jsonl", [row])))


def test_mmlu_medical_reads_the_release_csvs_of_its_six_subjects(tmp_path):
    items = load_mmlu_medical(str(mmlu_folder(tmp_path / "mmlu")))
    assert len(items) == 12 and [subject_of(i.id) for i in items[::2]] == list(MMLU_MEDICAL)
    assert items[1].question == "anatomy question 1, with a comma?" and items[1].gold == "B"
    assert load_mmlu_medical(str(tmp_path / "mmlu" / "test")) == items  # the test/ folder itself is fine too
    write_csv(tmp_path / "mmlu" / "test" / "anatomy_test.csv", [["Q?", "a", "b", "c", "d", "E"]])
    with pytest.raises(BenchmarkError, match=r"anatomy_test\.csv: row 1: field 'answer' = 'E' is not A, B, C or D"):
        load_mmlu_medical(str(tmp_path / "mmlu"))
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").unlink()
    with pytest.raises(BenchmarkError, match=r"anatomy_test\.csv: no such file"):
        load_mmlu_medical(str(tmp_path / "mmlu"))


def test_mmlu_pro_keeps_health_and_biology_in_the_hub_layout(tmp_path, monkeypatch):
    items = load_mmlu_pro_medical(str(write_jsonl(tmp_path / "mmlu_pro.jsonl", MMLU_PRO_ROWS)))
    assert [(i.id, i.gold, i.choices) for i in items] == [("health/7", "B", ("A", "B", "C")),
                                                          ("biology/9", "A", ("A", "B", "C", "D"))]  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(MMLU_PRO_ROWS))
    assert load_mmlu_pro_medical() == items  # the hub's rows, read alike
    bad = [{**MMLU_PRO_ROWS[0], "answer": "C"}]
    with pytest.raises(BenchmarkError, match=r"row 1: field 'answer' = 'C' but 'answer_index' = 1 names B"):
        load_mmlu_pro_medical(str(write_jsonl(tmp_path / "bad.jsonl", bad)))


def test_gpqa_keeps_its_medical_subdomains_with_options_shuffled_by_record(tmp_path):
    path = write_csv(tmp_path / "gpqa_main.csv", GPQA_ROWS, GPQA_HEADER)
    items = load_gpqa_medical(str(path))
    assert [i.id for i in items] == ["molecular_biology/recA", "genetics/recC"]
    for item, row in zip(items, (GPQA_ROWS[0], GPQA_ROWS[2]), strict=True):
        assert item.options[item.gold] == row[1]  # the gold letter names the correct answer
        assert sorted(item.options.values()) == sorted(row[1:5])
    assert load_gpqa_medical(str(path)) == items  # the same letters on every run
    assert {i.gold for i in load_gpqa_medical(str(write_csv(tmp_path / "many.csv", [
        [f"Q{n}?", "right", "w1", "w2", "w3", "Genetics", "Biology", f"r{n}"] for n in range(12)
    ], GPQA_HEADER)))} != {"A"}  # fmt: skip


def test_a_suite_reads_local_copies_and_skips_what_the_offline_hub_cant_give(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    write_jsonl(data / "medmcqa" / "validation.jsonl", [medmcqa_reduced(f"Q{i}?", i % 4) for i in range(5)])
    mmlu_folder(data / "mmlu")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with caplog.at_level("WARNING"):
        loaded, skipped = load_suite(["medmcqa", "mmlu_medical", "gpqa_medical"], str(data), limit=3, seed=0)
    assert {name: len(items) for name, items in loaded.items()} == {"medmcqa": 3, "mmlu_medical": 3}
    assert list(skipped) == ["gpqa_medical"] and "hub is out of reach" in skipped["gpqa_medical"]
    assert len([r for r in caplog.records if "skipping gpqa_medical" in r.getMessage()]) == 1
    write_jsonl(data / "medmcqa" / "validation.jsonl", [{**medmcqa_reduced("Q?", 0), "answer": 9}])
    with pytest.raises(BenchmarkError, match="outside 0..3"):  # a bad local copy stops, never skipped
        load_suite(["medmcqa"], str(data), limit=None, seed=0)
    with pytest.raises(BenchmarkError, match="no benchmark could be read"):
        load_suite(["gpqa_medical"], str(data), limit=None, seed=0)


@pytest.mark.skipif(
    not (SHARED_DATA / "medqa" / "test.jsonl").is_file(), reason="the shared benchmark copies are absent"
)
def test_the_real_local_copies_load_in_full():
    loaded, skipped = load_suite(["medqa", "medmcqa", "pubmedqa", "mmlu_medical"], str(SHARED_DATA), None, 0)
    assert {name: len(items) for name, items in loaded.items()} == {
        "medqa": 1273, "medmcqa": 4183, "pubmedqa": 500, "mmlu_medical": 1089,
    }  # fmt: skip
    assert skipped == {}
    golds = [item.gold for item in loaded["medmcqa"]]
    assert [golds.count(letter) for letter in "ABCD"] == [1348, 1085, 925, 825]  # as the data's README counts them
    golds = [item.gold for item in loaded["medqa"]]
    assert [golds.count(letter) for letter in "ABCD"] == [353, 309, 346, 265]


def test_every_suite_benchmark_of_the_schema_has_a_loader():
    from medllm.config.schema import SUITE_BENCHMARK_NAMES

    assert set(SUITE_BENCHMARK_NAMES) == set(SUITE_BENCHMARKS)
