"""Exam benchmarks the medical reasoning papers report beside MedQA: the MMLU medical subjects, MMLU-Pro's
health and biology questions and GPQA's medical subset, each from its release's files or the hub.

Every item's id names its subject (``anatomy/12``), so one benchmark holds all its subjects and the report can
still break them down. Rows are checked as the other loaders check them (``medllm.tasks.benchmarks``): a bad
row stops loading, naming the file, the 1-based row and the field.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medllm.data.jsonrows import read_csv_rows, read_utf8
from medllm.tasks.benchmarks import _field, _hub_source, _load_hub, _options, read_rows_file
from medllm.tasks.items import LETTERS, BenchmarkError, BenchmarkItem

# MMLU's medical subjects, as the medical reasoning papers (and lm-evaluation-harness's mmlu medical tasks) take.
MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
MMLU_PRO_MEDICAL = ("health", "biology")  # MMLU-Pro's categories
GPQA_MEDICAL = ("Genetics", "Molecular Biology")  # GPQA's subdomains (HuatuoGPT-o1 reports these)


def subject_of(item_id: str) -> str | None:
    """The subject an exam item's id names (``anatomy/12`` -> ``anatomy``); None for ids without one."""
    return item_id.rpartition("/")[0] or None


def _exam_item(item_id: str, question: Any, options: Any, gold: int, source: str, number: int) -> BenchmarkItem:
    question = _field({"question": question}, "question", source, number)
    options = _options(options, source, number)
    if not 0 <= gold < len(options):
        raise BenchmarkError(f"{source}: row {number}: answer {gold} is outside 0..{len(options) - 1}")
    return BenchmarkItem(item_id, question.strip(), tuple(options), LETTERS[gold], options=options)


def load_mmlu_medical(path: str | None = None) -> list[BenchmarkItem]:
    """MMLU's six medical subjects (1,089 test questions).

    Local: the release's folder (``data.tar`` of hendrycks/test) or its ``test/`` folder, holding
    ``<subject>_test.csv`` without a header: question, A, B, C, D, answer letter. Hub: ``cais/mmlu``, one
    config per subject, split test (``question``, ``choices``, ``answer`` 0-3).
    """
    items: list[BenchmarkItem] = []
    if path is None:
        for subject in MMLU_MEDICAL:
            source = _hub_source(f"cais/mmlu/{subject}", "test")
            for number, row in enumerate(_load_hub("cais/mmlu", subject, "test"), start=1):
                answer = _field(row, "answer", source, number, int)
                choices = _field(row, "choices", source, number, list)
                items.append(_exam_item(f"{subject}/{number}", row.get("question"), choices, answer, source, number))
        return items
    folder = Path(path).expanduser()
    folder = folder / "test" if (folder / "test").is_dir() else folder
    for subject in MMLU_MEDICAL:
        file = folder / f"{subject}_test.csv"
        if not file.is_file():
            raise BenchmarkError(
                f"{file}: no such file. The MMLU folder must hold <subject>_test.csv for {MMLU_MEDICAL}."
            )
        rows = csv.reader(io.StringIO(read_utf8(file, BenchmarkError), newline=""))
        for number, cells in enumerate(rows, start=1):
            if len(cells) != 6:
                raise BenchmarkError(
                    f"{file}: row {number} has {len(cells)} cells; MMLU rows are question, A, B, C, D, answer"
                )
            letter = cells[5].strip()
            if letter not in LETTERS[:4]:
                raise BenchmarkError(f"{file}: row {number}: field 'answer' = {cells[5]!r} is not A, B, C or D")
            items.append(
                _exam_item(f"{subject}/{number}", cells[0], cells[1:5], LETTERS.index(letter), str(file), number)
            )
    return items


def _rows(path: str | None, hub: tuple[str, str | None, str]) -> tuple[str, Iterable[Any]]:
    """A local file's rows (.json, .jsonl or .csv with a header), or the hub split's."""
    if path is None:
        name, config, split = hub
        return _hub_source(name, split), _load_hub(name, config, split)
    if Path(path).suffix.lower() == ".csv":
        file = Path(path).expanduser()
        if not file.is_file():
            raise BenchmarkError(f"{file}: no such file.")
        return str(file), read_csv_rows(file, BenchmarkError)
    return read_rows_file(path)


def load_mmlu_pro_medical(path: str | None = None) -> list[BenchmarkItem]:
    """MMLU-Pro's health and biology questions (up to 10 options each).

    Rows in the hub's layout (``TIGER-Lab/MMLU-Pro``, split test): ``question_id``, ``question``, ``options`` (a
    list), ``answer`` (the letter), ``answer_index``, ``category``; other categories are left out.
    """
    source, rows = _rows(path, ("TIGER-Lab/MMLU-Pro", None, "test"))
    items = []
    for number, row in enumerate(rows, start=1):
        category = _field(row, "category", source, number)
        if category not in MMLU_PRO_MEDICAL:
            continue
        options = _field(row, "options", source, number, list)
        answer = _field(row, "answer_index", source, number, int)
        letter = row.get("answer")
        if letter is not None and 0 <= answer < len(options) and letter != LETTERS[answer]:
            raise BenchmarkError(
                f"{source}: row {number}: field 'answer' = {letter!r} but 'answer_index' = {answer} names "
                f"{LETTERS[answer]}"
            )
        question_id = _field(row, "question_id", source, number, (int, str))
        items.append(_exam_item(f"{category}/{question_id}", row.get("question"), options, answer, source, number))
    return items


def load_gpqa_medical(path: str | None = None) -> list[BenchmarkItem]:
    """GPQA's genetics and molecular biology questions.

    Rows in the release's layout (``gpqa_main.csv``; the hub's gated ``Idavidrein/gpqa`` config ``gpqa_main``):
    ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``, ``Subdomain``, ``Record ID``. The release keeps
    the correct answer first, so each row's options are shuffled by a generator seeded with its record id: the
    same letters on every run and machine, the answer not always A.
    """
    source, rows = _rows(path, ("Idavidrein/gpqa", "gpqa_main", "train"))
    items = []
    for number, row in enumerate(rows, start=1):
        subdomain = _field(row, "Subdomain", source, number).strip()
        if subdomain not in GPQA_MEDICAL:
            continue
        record = _field(row, "Record ID", source, number).strip()
        fields = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
        answers = [_field(row, name, source, number).strip() for name in fields]
        order = list(range(4))
        random.Random(record).shuffle(order)
        options = [answers[i] for i in order]
        subject = subdomain.lower().replace(" ", "_")
        items.append(_exam_item(f"{subject}/{record}", row.get("Question"), options, order.index(0), source, number))
    return items
