"""Benchmark loaders on tiny files in each public layout, the hub fallback, and the real PubMedQA split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from medllm.tasks.benchmarks import LOADERS, load_benchmark, load_mcq, load_medmcqa, load_medqa, load_pubmedqa
from medllm.tasks.items import YES_NO_MAYBE, BenchmarkError

REPO = Path(__file__).resolve().parents[2]
PUBMEDQA_DIRS = [REPO / "shared/data/pubmedqa", REPO.parent / "shared/data/pubmedqa"]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), "utf-8")
    return path


def medqa_row(question: str, answer_idx: str) -> dict:
    options = {"A": "Insulin", "B": "Metformin", "C": "Sulfonylurea", "D": "Acarbose"}
    return {
        "question": question,
        "answer": options[answer_idx],
        "options": options,
        "meta_info": "step1",
        "answer_idx": answer_idx,
    }


def medmcqa_row(i: int, cop: int) -> dict:
    return {"id": f"m{i}", "question": f"Q{i}?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": cop, "exp": ""}


def pubmedqa_folder(tmp_path: Path, truth: dict[str, str]) -> Path:
    rows = {
        pubid: {
            "QUESTION": f"Question {pubid}?",
            "CONTEXTS": [f"First part {pubid}.", "Second part."],
            "final_decision": "yes",
        }
        for pubid in ("101", "102", "103")
    }
    write_json(tmp_path / "ori_pqal.json", rows)
    write_json(tmp_path / "test_ground_truth.json", truth)
    return tmp_path


# ------------------------------------------------------------------------------------------- local layouts


def test_pubmedqa_folder_gives_the_test_split(tmp_path: Path) -> None:
    items = load_pubmedqa(str(pubmedqa_folder(tmp_path, {"103": "no", "101": "maybe"})))
    assert [(i.id, i.gold) for i in items] == [("103", "no"), ("101", "maybe")]
    item = items[0]
    assert item.choices == YES_NO_MAYBE and item.options is None
    assert item.context == "First part 103.\nSecond part."
    prompt = item.prompt_text()
    assert prompt.index("First part 103.") < prompt.index("Question 103?")
    assert prompt.endswith("Answer with yes, no or maybe.")


def test_pubmedqa_errors_name_file_row_and_field(tmp_path: Path) -> None:
    folder = pubmedqa_folder(tmp_path, {"101": "yes", "999": "no"})
    with pytest.raises(BenchmarkError, match=r"test_ground_truth\.json: row 2: pubid 999"):
        load_pubmedqa(str(folder))
    write_json(folder / "test_ground_truth.json", {"101": "yes", "102": "perhaps"})
    with pytest.raises(BenchmarkError, match=r"ori_pqal\.json.*row 2 \(pubid 102\): field 'label' = 'perhaps'"):
        load_pubmedqa(str(folder))
    with pytest.raises(BenchmarkError, match=r"ori_pqal\.json: no such file"):
        load_pubmedqa(str(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"101": "no"', r"test_ground_truth\.json: not valid JSON"),
        ('{"101": "nò"}'.encode("latin-1"), r"test_ground_truth\.json: not UTF-8: byte 0xf2 at byte offset 10"),
        ('{"101": "no"}'.encode("utf-16"), r"test_ground_truth\.json: the file is UTF-16"),
        (b"{}", r"test_ground_truth\.json: empty; PubMedQA's files map pubid -> value"),
        (b'["101"]', r"test_ground_truth\.json: a JSON list; PubMedQA's files map pubid -> value"),
    ],
    ids=["truncated", "latin-1", "utf-16", "empty", "list"],
)
def test_a_pubmedqa_file_that_does_not_read_is_named_in_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    folder = pubmedqa_folder(tmp_path, {"101": "no"})
    (folder / "test_ground_truth.json").write_bytes(content)
    with pytest.raises(BenchmarkError, match=message):
        load_pubmedqa(str(folder))


def test_a_pubmedqa_file_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    folder = pubmedqa_folder(tmp_path, {"101": "no"})
    path = folder / "test_ground_truth.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [item.gold for item in load_pubmedqa(str(folder))] == ["no"]


def test_medqa_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "test.jsonl", [medqa_row("First-line drug?", "B"), medqa_row("Causes hypoglycaemia?", "C")]
    )
    items = load_medqa(str(path))
    assert [(i.id, i.gold) for i in items] == [("1", "B"), ("2", "C")]
    assert items[0].choices == ("A", "B", "C", "D")
    lines = items[0].prompt_text().splitlines()
    assert lines[0] == "First-line drug?"
    assert "A. Insulin" in lines and "D. Acarbose" in lines
    assert lines[-1] == "Answer with the letter of the correct option."


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"answer_idx": None}, r"row 2: field 'answer_idx' is missing"),
        ({"question": "  "}, r"row 2: field 'question' is empty"),
        ({"answer_idx": "F"}, r"row 2: field 'answer_idx' = 'F' is not an option letter"),
        ({"answer": "Insulin"}, r"row 2: field 'answer' = 'Insulin' is not the text of option B"),
        ({"options": {"A": "Insulin"}}, r"row 2: field 'options'"),
    ],
)
def test_medqa_bad_rows_name_file_row_and_field(tmp_path: Path, broken: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [medqa_row("Q1?", "A"), {**medqa_row("Q2?", "B"), **broken}])
    with pytest.raises(BenchmarkError, match=message) as err:
        load_medqa(str(path))
    assert str(path) in str(err.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.jsonl: no such file"):
        load_medqa(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(medqa_row("Q1?", "A")) + "\n{not json\n", "utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_medqa(str(bad))


def test_medmcqa_original_release_is_one_based_json_lines(tmp_path: Path) -> None:
    # The original release stores JSON lines under a .json name, with cop 1..4.
    path = write_jsonl(tmp_path / "dev.json", [medmcqa_row(1, 4), medmcqa_row(2, 1), medmcqa_row(3, 2)])
    items = load_medmcqa(str(path))
    assert [(i.id, i.gold) for i in items] == [("m1", "D"), ("m2", "A"), ("m3", "B")]
    assert items[0].options == {"A": "w", "B": "x", "C": "y", "D": "z"}


def test_medmcqa_hub_layout_is_zero_based(tmp_path: Path) -> None:
    path = write_json(tmp_path / "validation.json", [medmcqa_row(1, 0), medmcqa_row(2, 3)])
    assert [i.gold for i in load_medmcqa(str(path))] == ["A", "D"]


def test_medmcqa_cop_base_errors(tmp_path: Path) -> None:
    ambiguous = write_jsonl(tmp_path / "a.jsonl", [medmcqa_row(1, 1), medmcqa_row(2, 3)])
    with pytest.raises(BenchmarkError, match=r"a\.jsonl: field 'cop' takes the values \[1, 3\].*cop_base"):
        load_medmcqa(str(ambiguous))
    assert [i.gold for i in load_medmcqa(str(ambiguous), cop_base=1)] == ["A", "C"]
    assert [i.gold for i in load_benchmark("medmcqa", str(ambiguous), cop_base=0)] == ["B", "D"]
    mixed = write_jsonl(tmp_path / "m.jsonl", [medmcqa_row(1, 0), medmcqa_row(2, 4)])
    with pytest.raises(BenchmarkError, match="cop_base"):
        load_medmcqa(str(mixed))
    out_of_range = write_jsonl(tmp_path / "o.jsonl", [medmcqa_row(1, 0), medmcqa_row(2, 4)])
    with pytest.raises(BenchmarkError, match=r"o\.jsonl: row 2: field 'cop' = 4 is outside 0\.\.3"):
        load_medmcqa(str(out_of_range), cop_base=0)
    # An unlabelled row (the test split's cop -1) among labelled ones is named, base given or read.
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [medmcqa_row(1, 0), medmcqa_row(2, 3), medmcqa_row(3, -1)])
    with pytest.raises(BenchmarkError, match=r"u\.jsonl: row 3: field 'cop' = -1 is no option.*cop -1"):
        load_medmcqa(str(unlabelled))
    with pytest.raises(BenchmarkError, match=r"u\.jsonl: row 3: field 'cop' = -1 is outside 0\.\.3"):
        load_medmcqa(str(unlabelled), cop_base=0)
    missing = write_jsonl(tmp_path / "x.jsonl", [medmcqa_row(1, 0), {**medmcqa_row(2, 1), "opc": None}])
    with pytest.raises(BenchmarkError, match=r"x\.jsonl: row 2: field 'opc' is missing"):
        load_medmcqa(str(missing))


def test_mcq_with_list_options_and_text_answer(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1?", "options": ["Aspirin", "Heparin", "Warfarin"], "answer": "heparin"},
        {"id": "x7", "question": "Q2?", "options": {"A": "Yes", "B": "No"}, "answer": "B"},
    ]
    items = load_mcq(str(write_json(tmp_path / "mcq.json", rows)))
    assert [(i.id, i.choices, i.gold) for i in items] == [("1", ("A", "B", "C"), "B"), ("x7", ("A", "B"), "B")]
    assert items[0].options == {"A": "Aspirin", "B": "Heparin", "C": "Warfarin"}


def test_mcq_answer_must_name_one_option(tmp_path: Path) -> None:
    rows = [{"question": "Q1?", "options": ["Aspirin", "Heparin"], "answer": "Clopidogrel"}]
    with pytest.raises(BenchmarkError, match=r"mcq\.jsonl: row 1: field 'answer' = 'Clopidogrel'"):
        load_mcq(str(write_jsonl(tmp_path / "mcq.jsonl", rows)))
    with pytest.raises(BenchmarkError, match="local files only"):
        load_mcq(None)


def test_items_sharing_an_id_are_named_before_any_model_loads(tmp_path: Path) -> None:
    row = {"question": "Q?", "options": ["Aspirin", "Heparin"], "answer": "A"}
    path = write_jsonl(tmp_path / "mcq.jsonl", [{**row, "id": "q1"}, {**row, "id": "q2"}, {**row, "id": "q1"}])
    with pytest.raises(BenchmarkError, match=r"mcq\.jsonl: items 1 and 3 share the id 'q1'; ids name the items"):
        load_benchmark("mcq", str(path))
    # 5 and "5" are one id in predictions.jsonl
    with pytest.raises(BenchmarkError, match="items 1 and 2 share the id '5'"):
        load_benchmark("mcq", str(write_jsonl(tmp_path / "b.jsonl", [{**row, "id": 5}, {**row, "id": "5"}])))


def test_limit_is_a_deterministic_seeded_subsample(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [medqa_row(f"Q{i}?", "ABCD"[i % 4]) for i in range(40)])
    every = [i.question for i in load_benchmark("medqa", str(path))]
    first = [i.question for i in load_benchmark("medqa", str(path), limit=10, seed=3)]
    again = [i.question for i in load_benchmark("medqa", str(path), limit=10, seed=3)]
    other = [i.question for i in load_benchmark("medqa", str(path), limit=10, seed=4)]
    assert first == again and len(first) == 10
    assert first != other
    assert first == sorted(first, key=every.index)  # kept in file order
    assert load_benchmark("medqa", str(path), limit=100) == load_benchmark("medqa", str(path))
    with pytest.raises(BenchmarkError, match="unknown benchmark 'usmle'"):
        load_benchmark("usmle", str(path))
    assert set(LOADERS) == {"pubmedqa", "medqa", "medmcqa", "mcq"}


# ------------------------------------------------------------------------------------------- hub fallback


class FakeHub:
    """Stands in for the network call only: records its arguments and returns rows."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.calls = rows, []

    def __call__(self, *args: Any, **kwargs: Any) -> list[dict]:
        self.calls.append((args, kwargs))
        return self.rows


def test_hub_pubmedqa_uses_pqa_labeled_train(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {
        "pubid": 21645374,
        "question": "Do mitochondria matter?",
        "context": {"contexts": ["Part one.", "Part two."], "labels": ["BACKGROUND", "RESULTS"]},
        "long_answer": "...",
        "final_decision": "maybe",
    }
    hub = FakeHub([row])
    monkeypatch.setattr(datasets, "load_dataset", hub)
    items = load_benchmark("pubmedqa")
    assert hub.calls == [(("qiaojin/PubMedQA", "pqa_labeled"), {"split": "train"})]
    assert [(i.id, i.gold, i.context) for i in items] == [("21645374", "maybe", "Part one.\nPart two.")]


def test_hub_medqa_and_medmcqa_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub([medqa_row("Q?", "C")])
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert [i.gold for i in load_benchmark("medqa")] == ["C"]
    assert hub.calls == [(("GBaker/MedQA-USMLE-4-options", None), {"split": "test"})]

    hub = FakeHub([medmcqa_row(1, 1), medmcqa_row(2, 2)])  # no 0 or 3: only the hub's layout says 0-based
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert [i.gold for i in load_benchmark("medmcqa")] == ["B", "C"]
    assert hub.calls == [(("openlifescienceai/medmcqa", None), {"split": "validation"})]


def test_hub_offline_says_to_pass_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'qiaojin/PubMedQA' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkError, match=r"(?s)qiaojin/PubMedQA.*OfflineModeIsEnabled.*benchmark\.path="):
        load_benchmark("pubmedqa")


@pytest.mark.skipif(not datasets.config.HF_HUB_OFFLINE, reason="only with HF_HUB_OFFLINE=1, so nothing is downloaded")
def test_hub_really_offline_says_to_pass_local_files() -> None:
    try:
        items = load_medqa()
    except BenchmarkError as err:
        assert "benchmark.path=" in str(err)
    else:
        pytest.skip(f"the dataset is in the local cache ({len(items)} items)")


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture
def real_pubmedqa() -> str:
    for folder in PUBMEDQA_DIRS:
        if (folder / "ori_pqal.json").is_file() and (folder / "test_ground_truth.json").is_file():
            return str(folder)
    pytest.skip("the shared PubMedQA files are not present")


def test_real_pubmedqa_test_split(real_pubmedqa: str) -> None:
    items = load_benchmark("pubmedqa", real_pubmedqa)
    assert len(items) == 500
    assert len({i.id for i in items}) == 500
    assert {i.gold for i in items} == set(YES_NO_MAYBE)
    assert all(i.context and i.question for i in items)
    sample = load_benchmark("pubmedqa", real_pubmedqa, limit=20, seed=0)
    assert len(sample) == 20
    assert [i.id for i in sample] == [i.id for i in load_benchmark("pubmedqa", real_pubmedqa, limit=20, seed=0)]
    assert {i.id for i in sample} <= {i.id for i in items}


def test_limit_takes_the_same_items_whatever_seed_the_adapters_runs_trained_with(tmp_path: Path) -> None:
    """The subsample is limit_seed's: two adapters of runs seeded 42 and 7, evaluated apart, score one set."""
    from medllm.tasks.benchmarks import load_items
    from tests.helpers.configs import compose_train

    path = write_jsonl(
        tmp_path / "mcq.jsonl",
        [{"question": f"Q{i}?", "options": {"A": "yes", "B": "no"}, "answer": "A"} for i in range(40)],
    )
    picked = []
    for run_seed in (42, 7):
        cfg = compose_train("benchmark=mcq", f"benchmark.path={path}", "limit=5", config_name="eval")
        cfg.seed = run_seed  # what take_run_settings sets from an adapter's record
        picked.append([item.id for item in load_items(cfg)])
    assert picked[0] == picked[1] and len(picked[0]) == 5
    cfg.limit_seed = 1
    assert [item.id for item in load_items(cfg)] != picked[0]


MCQ_ROW = {"question": "Which drug?", "options": {"A": "Aspirin", "B": "Café au lait"}, "answer": "B"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": "\u200b "}, r"row 1: field 'question' is empty \(nothing but blank or invisible characters\)"),
        ({"options": {"A": "Aspirin", "B": 20}}, r"row 1: field 'options': option B has type int, not text"),
        ({"options": {"A": "Aspirin", "B": "\u2800"}}, r"row 1: field 'options': option B is empty"),
        ({"id": ""}, r"row 1: field 'id' = '': give a non-empty text or a whole number"),
        ({"id": {"a": 1}}, r"row 1: field 'id' = \{'a': 1\}: give a non-empty text or a whole number"),
        (
            {"options": {"A": "B", "B": "C", "C": "A"}, "answer": "A"},
            r"row 1: field 'answer' = 'A' is both option letter A and the text of option C",
        ),
    ],
    ids=["invisible-question", "numeric-option", "blank-option", "empty-id", "object-id", "letter-or-text"],
)
def test_benchmark_rows_are_checked_as_strictly_as_training_rows(tmp_path: Path, change, message) -> None:
    with pytest.raises(BenchmarkError, match=message):
        load_mcq(str(write_jsonl(tmp_path / "mcq.jsonl", [{**MCQ_ROW, **change}])))


def test_an_answer_in_another_unicode_normal_form_names_its_option(tmp_path: Path) -> None:
    """ "Café" typed with a combining accent (NFD) is the option written with "é" (NFC)."""
    import unicodedata

    row = {**MCQ_ROW, "answer": unicodedata.normalize("NFD", "café au lait")}
    assert [item.gold for item in load_mcq(str(write_jsonl(tmp_path / "mcq.jsonl", [row])))] == ["B"]


def test_a_question_asked_twice_with_different_answers_is_named(tmp_path: Path, caplog) -> None:
    rows = [{**MCQ_ROW, "id": "q1"}, {**MCQ_ROW, "id": "q2", "answer": "A"}, {**MCQ_ROW, "id": "q3"}]
    with caplog.at_level("WARNING"):
        items = load_benchmark("mcq", str(write_jsonl(tmp_path / "mcq.jsonl", rows)))
    assert len(items) == 3
    assert "1 question(s) asked twice with different answers, so no model can get both right: items 1 and 2" in (
        caplog.text
    )


def test_a_lone_surrogate_or_a_number_for_text_is_named_with_its_row(tmp_path: Path) -> None:
    path = tmp_path / "mcq.jsonl"
    path.write_text('{"question": "Pain \\ud83d?", "options": {"A": "x", "B": "y"}, "answer": "A"}\n')
    with pytest.raises(BenchmarkError, match=r"row 1: field 'question' holds '\\ud83d' at character 5, half of a"):
        load_mcq(str(path))
    (tmp_path / "pq").mkdir()
    folder = pubmedqa_folder(tmp_path / "pq", {"101": "no"})
    rows = json.loads((folder / "ori_pqal.json").read_text())
    rows["101"]["QUESTION"] = 5
    write_json(folder / "ori_pqal.json", rows)
    with pytest.raises(BenchmarkError, match=r"row 1 \(pubid 101\): field 'QUESTION' has type int, not text"):
        load_pubmedqa(str(folder))
