"""Problems with checkable answers, for reinforcement learning: benchmark items, and open-ended questions with a
ground-truth answer judged by a swappable verifier.

A multiple-choice or yes/no/maybe problem is a ``BenchmarkItem``: its reward reads the answer with the very
extractor evaluation scores with (``medllm.tasks.extraction``), so a reward of 1 is an answer eval.py counts as
right. An open-ended problem (medical-o1-verifiable-problem: "Open-ended Verifiable Question", "Ground-True
Answer") is an ``OpenEndedItem``; whether a completion's answer matches its ground truth is a verifier's call:
``NormalizedMatch`` by default, or any callable ``(answer_text, ground_truth) -> bool | float`` (a model acting
as judge, say).

Loading goes through the benchmark loaders (one validation of options and answers, errors naming file, row and
field); ``PROBLEM_FORMATS`` lists the layouts a problem file may have.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import datasets

from medllm.tasks.benchmarks import _field, load_mcq, load_medmcqa, load_medqa, load_pubmedqa, read_rows_file
from medllm.tasks.extraction import answer_section, extract_answer
from medllm.tasks.items import BenchmarkError, BenchmarkItem

# The synthetic multiple-choice problems shipped with the package (data=problems without a path).
SAMPLE_PROBLEMS = Path(str(resources.files("medllm.data").joinpath("sample/medical_problems_sample.jsonl")))
OPEN_QUESTION = "Open-ended Verifiable Question"
OPEN_ANSWER = "Ground-True Answer"


@dataclass(frozen=True)
class OpenEndedItem:
    """A question answered in free text, with the ground truth a verifier compares the answer with."""

    id: str
    question: str
    answer: str

    def prompt_text(self) -> str:
        return self.question


Problem = BenchmarkItem | OpenEndedItem


def load_open_ended(path: str, question: str = OPEN_QUESTION, answer: str = OPEN_ANSWER) -> list[OpenEndedItem]:
    """Rows with an open-ended question and its ground-truth answer (medical-o1-verifiable-problem's fields by
    default); an optional ``id`` names rows."""
    source, rows = read_rows_file(path)
    items = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise BenchmarkError(f"{source}: row {number}: expected an object with fields {question!r} and {answer!r}")
        # Present, text, not blank, encodable, NFC: as a benchmark's fields are checked.
        values = [_field(row, name, source, number).strip() for name in (question, answer)]
        item_id = row.get("id", number)
        items.append(OpenEndedItem(str(item_id), *values))
    return items


# Each layout a problem file may have: the loader that reads it, and its fields.
PROBLEM_FORMATS: dict[str, tuple[Callable[[str], list[Problem]], str]] = {
    "mcq": (load_mcq, "question, options (dict or list), answer (a letter or an option's text)"),
    # medical-o1's demo rows and MedQA share this layout (options A-E in the demo).
    "medqa": (load_medqa, "question, options {A: ..}, answer_idx (a letter), answer (its text, optional)"),
    "medmcqa": (load_medmcqa, "question, opa..opd, cop (0-3 or 1-4)"),
    "pubmedqa": (load_pubmedqa, "a folder with ori_pqal.json and test_ground_truth.json"),
    "open_ended": (load_open_ended, f"{OPEN_QUESTION!r}, {OPEN_ANSWER!r}"),
}


# The fields that tell a layout (format=auto), in the order tried: MedQA's answer_idx wins over the open-ended
# fields where a row has both (medical-o1's demo rows): its answer is a letter, checked exactly.
TELLING_FIELDS = (
    ("medqa", ("question", "options", "answer_idx")),
    ("medmcqa", ("question", "opa", "cop")),
    ("mcq", ("question", "options", "answer")),
    ("open_ended", (OPEN_QUESTION, OPEN_ANSWER)),
)


def detect_format(path: str | Path) -> str:
    """The layout of a problem file, told by its first row's fields (a folder: PubMedQA's)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return "pubmedqa"
    source, rows = read_rows_file(path)
    if not rows:
        raise BenchmarkError(f"{source}: no rows")
    first = rows[0] if isinstance(rows[0], Mapping) else {}
    for layout, fields in TELLING_FIELDS:
        if all(name in first for name in fields):
            return layout
    known = "; ".join(f"{layout}: {', '.join(fields)}" for layout, fields in TELLING_FIELDS)
    raise BenchmarkError(
        f"{source}: row 1 has the fields {sorted(first)}, which match no problem format ({known}); "
        "rename the fields, or set data.format"
    )


def load_problems(path: str | Path, layout: str = "auto") -> list[Problem]:
    """The problems of a file (or PubMedQA's folder) in ``layout`` (a key of ``PROBLEM_FORMATS``, or auto)."""
    if layout == "auto":
        layout = detect_format(path)
    if layout not in PROBLEM_FORMATS:
        raise BenchmarkError(f"unknown problem format {layout!r}; choose one of {sorted(PROBLEM_FORMATS)}")
    loader, fields = PROBLEM_FORMATS[layout]
    try:
        return loader(str(path))
    except BenchmarkError as err:
        raise BenchmarkError(f"{err} (format={layout}: {fields})") from None


def read_problems(
    path: str | None,
    layout: str = "auto",
    hub_name: str | None = None,
    subset: str | None = None,
    split: str = "train",
    revision: str | None = None,
    token: str | None = None,
) -> tuple[list[Problem], str, str]:
    """The problems a data config names (``data.path``, ``data.hub_name``, or the packaged sample without either),
    their source and layout; a bad row raises, naming the file, the row and the field."""
    if hub_name:
        source = hub_rows_file(hub_name, subset, split, revision, token)
    else:
        source = Path(path).expanduser() if path else SAMPLE_PROBLEMS
    layout = detect_format(source) if layout == "auto" else layout
    return load_problems(source, layout), str(source), layout


def hub_rows_file(name: str, subset: str | None, split: str, revision: str | None, token: str | None) -> Path:
    """A hub split's rows as a JSON-lines file beside datasets' cache, read and checked as a local file is (a
    bad row is named by this file and its row); offline and not cached, a BenchmarkError saying what to do."""
    try:
        rows = datasets.load_dataset(name, subset, split=split, revision=revision, token=token)
    except (ConnectionError, OSError) as err:
        raise BenchmarkError(
            f"Could not load the hub dataset {name!r} (subset {subset}, split {split!r}, revision {revision}) and it "
            f"is not in the cache: {err}\nDownload it once with network access, or save it as a file and pass "
            "data.path=<file> (datasets.load_dataset(...).to_json('problems.jsonl'))."
        ) from err
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "medllm_problems"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [name.replace("/", "--"), subset or "default", split, revision or "latest"]
    target = folder / ("--".join(parts) + ".jsonl")
    partial = target.with_name(target.name + ".partial")
    rows.to_json(partial, lines=True, force_ascii=False)
    partial.replace(target)  # a reader never sees half a file
    return target


# ---------------------------------------------------------------------------------------------- verifiers
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NOT_WORD = re.compile(r"[^\w]+")
# The sentence that states an answer: "... answer is X", "Diagnosis: X", "X is the most likely ...".
_ANSWER_CLAUSE = re.compile(r"(?i:\b(?:answer|diagnosis|conclusion)\b)[^\n.:]*?(?:\bis\b|:)\s*(?P<clause>[^\n]*)")


def normalize_answer(text: str) -> str:
    """Case, accents, punctuation, articles and spacing folded: "The H. pylori-infection." -> "h pylori infection"."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(_ARTICLES.sub(" ", _NOT_WORD.sub(" ", text)).split())


class NormalizedMatch:
    """The ground truth, normalised, occurs as whole words in the answer's first line or in a sentence that
    states the answer ("The most likely diagnosis is ..."): lenient on wording, strict on where.

    Only those sentences are searched, not the whole answer: an answer that lists every candidate would
    otherwise always match. A ground truth that normalises to nothing never matches.
    """

    def __call__(self, answer: str, ground_truth: str) -> bool:
        gold = normalize_answer(ground_truth)
        if not gold:
            return False
        lines = [line for line in answer.splitlines() if line.strip()]
        statements = [m.group("clause") for m in _ANSWER_CLAUSE.finditer(answer)]
        candidates = lines[:1] + statements
        return any(f" {gold} " in f" {normalize_answer(text)} " for text in candidates)


def is_correct(completion: str, problem: Problem, verifier: Callable[[str, str], Any] | None = None) -> float:
    """1.0 where the completion answers ``problem`` right, else 0.0 (a verifier may return a score in [0, 1]).

    A benchmark item is right when evaluation's extractor reads its gold label from the completion; an
    open-ended one, when ``verifier`` (``NormalizedMatch()`` by default) accepts the text after ``</think>``.
    A completion whose reasoning never closes answers nothing.
    """
    if isinstance(problem, BenchmarkItem):
        return float(extract_answer(completion, problem) == problem.gold)
    answer = answer_section(completion)
    if not answer:
        return 0.0
    return float((verifier or NormalizedMatch())(answer, problem.answer))
