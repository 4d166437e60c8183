"""Medical QA benchmarks read from their public layouts or from the hub, as ``BenchmarkItem`` rows.

Every loader returns items whose ``gold`` is one of ``choices`` (option letters, or yes/no/maybe), so
extraction and scoring never need to know which benchmark they score. A bad row stops loading with a
``BenchmarkError`` naming the file, the 1-based row and the field: a silently dropped row would change the
denominator of every reported accuracy.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets

from medllm.data.jsonrows import read_json, read_json_rows
from medllm.data.records import is_blank
from medllm.tasks.items import LETTERS, YES_NO_MAYBE, BenchmarkError, BenchmarkItem

log = logging.getLogger(__name__)

MEDMCQA_OPTION_FIELDS = ("opa", "opb", "opc", "opd")


# ---------------------------------------------------------------------------------------------- reading


def read_rows_file(path: str | Path) -> tuple[str, list[Any]]:
    """The rows of a .json (array) or JSON-lines file; returns the file's name for messages too."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such file. Point benchmark.path at the benchmark's .json/.jsonl file.")
    return str(path), read_json_rows(path, BenchmarkError)


def _field(row: Any, name: str, source: str, number: int, kinds: type | tuple[type, ...] = str) -> Any:
    """``row[name]`` checked for presence and type (and non-emptiness for strings)."""
    where = f"{source}: row {number}"
    if not isinstance(row, Mapping):
        raise BenchmarkError(f"{where}: expected an object with field {name!r}, got {type(row).__name__}")
    if name not in row or row[name] is None:
        raise BenchmarkError(f"{where}: field {name!r} is missing")
    value = row[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise BenchmarkError(f"{where}: field {name!r} has type {type(value).__name__}")
    if isinstance(value, str):
        if is_blank(value):
            raise BenchmarkError(f"{where}: field {name!r} is empty (nothing but blank or invisible characters)")
        _check_encodable(value, where, name)
        return unicodedata.normalize("NFC", value)  # an answer typed in another normal form matches its option
    return value


def _check_encodable(text: str, where: str, name: str) -> None:
    """A lone surrogate (half of an escaped emoji, ``"\\ud83d"``) is no text a tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BenchmarkError(
            f"{where}: field {name!r} holds {text[err.start]!r} at character {err.start}, half of a surrogate pair: "
            "not text; fix the escape in the file"
        ) from None


def _item_id(row: Mapping[str, Any], source: str, number: int) -> str:
    """The row's ``id`` (text or a whole number), or its row number where it has none."""
    value = row.get("id")
    if value is None:
        return str(number)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and is_blank(value)):
        raise BenchmarkError(f"{source}: row {number}: field 'id' = {value!r}: give a non-empty text or a whole number")
    return str(value)


def _options(value: Any, source: str, number: int) -> dict[str, str]:
    """Options as ``{letter: text}`` from a dict keyed by letters or a list of texts."""
    where = f"{source}: row {number}: field 'options'"
    if isinstance(value, list):
        if len(value) > len(LETTERS):
            raise BenchmarkError(f"{where} has {len(value)} options; at most {len(LETTERS)} are supported")
        value = dict(zip(LETTERS, value, strict=False))
    if not isinstance(value, Mapping) or len(value) < 2:
        raise BenchmarkError(f"{where} must be a dict letter -> text or a list of at least two texts")
    options = {}
    for letter in sorted(value):
        text = value[letter]
        if not (isinstance(letter, str) and len(letter) == 1 and letter in LETTERS):
            raise BenchmarkError(f"{where}: key {letter!r} is not a capital letter")
        if not isinstance(text, str):
            raise BenchmarkError(f"{where}: option {letter} has type {type(text).__name__}, not text")
        if is_blank(text):
            raise BenchmarkError(f"{where}: option {letter} is empty")
        options[letter] = unicodedata.normalize("NFC", text).strip()
    return options


def _answer_letter(answer: str, options: dict[str, str], source: str, number: int, name: str) -> str:
    """The letter an answer names: the letter itself, or the one option whose text it equals."""
    matches = [letter for letter, text in options.items() if text.casefold() == answer.strip().casefold()]
    if answer.strip() in options:
        if matches and matches != [answer.strip()]:
            raise BenchmarkError(
                f"{source}: row {number}: field {name!r} = {answer!r} is both option letter {answer.strip()} and the "
                f"text of option {matches[0]}; give the letter or the text unambiguously"
            )
        return answer.strip()
    if len(matches) != 1:
        raise BenchmarkError(
            f"{source}: row {number}: field {name!r} = {answer!r} is neither an option letter "
            f"{tuple(options)} nor the text of exactly one option"
        )
    return matches[0]


class HubUnavailable(BenchmarkError):
    """A hub dataset that is neither cached nor reachable (offline): a suite skips its benchmark."""


def _load_hub(name: str, config: str | None, split: str) -> datasets.Dataset:
    """A hub split; offline or not cached, a HubUnavailable error that says how to use local files."""
    try:
        return datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError) as err:
        raise HubUnavailable(
            f"Could not load the hub dataset {name!r} (config {config}, split {split!r}): {err}\n"
            "It is not cached and the hub can't be reached. Pass benchmark.path=<local file or folder> "
            "pointing at the benchmark's public files instead."
        ) from err


def _hub_source(name: str, split: str) -> str:
    return f"hub dataset {name} ({split})"


# ---------------------------------------------------------------------------------------------- loaders


def _pubmedqa_item(
    pubid: str, values: tuple[Any, Any, Any], fields: tuple[str, str, str], source: str, number: int
) -> BenchmarkItem:
    """An item from (question, contexts, label); ``fields`` names them as the source spells them."""
    (question, contexts, gold), where = values, f"{source}: row {number} (pubid {pubid})"
    if question is None:
        raise BenchmarkError(f"{where}: field {fields[0]!r} is missing")
    if not isinstance(question, str):
        raise BenchmarkError(f"{where}: field {fields[0]!r} has type {type(question).__name__}, not text")
    if is_blank(question):
        raise BenchmarkError(f"{where}: field {fields[0]!r} is empty")
    _check_encodable(question, where, fields[0])
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise BenchmarkError(f"{where}: field {fields[1]!r} is missing or not a list of strings")
    if gold not in YES_NO_MAYBE:
        raise BenchmarkError(f"{where}: field {fields[2]!r} = {gold!r} is not yes/no/maybe")
    return BenchmarkItem(str(pubid), question.strip(), YES_NO_MAYBE, gold, context="\n".join(contexts))


def load_pubmedqa(path: str | None = None) -> list[BenchmarkItem]:
    """PubMedQA (PQA-L), yes/no/maybe questions about an abstract.

    Local: a folder holding the GitHub release's ``ori_pqal.json`` (the 1,000 labelled questions) and
    ``test_ground_truth.json`` (the ids and labels of the official 500-question test split); returns the
    500 test items, the split papers report.

    Hub: ``qiaojin/PubMedQA`` config ``pqa_labeled`` has the same 1,000 questions but only a ``train``
    split and no record of which 500 form the test split, so the fallback evaluates all 1,000. Its
    numbers are therefore not the official test split's; pass ``benchmark.path=`` for those.
    """
    if path is None:
        name, split = "qiaojin/PubMedQA", "train"
        source = _hub_source(name, split)
        items = []
        for number, row in enumerate(_load_hub(name, "pqa_labeled", split), start=1):
            values = (
                row.get("question"),
                _field(row, "context", source, number, Mapping).get("contexts"),
                row.get("final_decision"),
            )
            fields = ("question", "context.contexts", "final_decision")
            items.append(_pubmedqa_item(str(row.get("pubid")), values, fields, source, number))
        return items
    folder = Path(path).expanduser()
    pqal, truth = folder / "ori_pqal.json", folder / "test_ground_truth.json"
    for file in (pqal, truth):
        if not file.is_file():
            raise BenchmarkError(
                f"{file}: no such file. benchmark.path must be a folder with PubMedQA's ori_pqal.json "
                "and test_ground_truth.json."
            )
    rows, labels = (read_json(file, BenchmarkError) for file in (pqal, truth))
    for file, content in ((pqal, rows), (truth, labels)):
        if not isinstance(content, dict) or not content:
            what = "empty" if isinstance(content, dict) else f"a JSON {type(content).__name__}"
            raise BenchmarkError(f"{file}: {what}; PubMedQA's files map pubid -> value (one JSON object).")
    items = []
    for number, (pubid, gold) in enumerate(labels.items(), start=1):
        if pubid not in rows:
            raise BenchmarkError(f"{truth}: row {number}: pubid {pubid} is not in {pqal}")
        row = rows[pubid] if isinstance(rows[pubid], Mapping) else {}
        values = (row.get("QUESTION"), row.get("CONTEXTS"), gold)
        items.append(_pubmedqa_item(pubid, values, ("QUESTION", "CONTEXTS", "label"), f"{pqal} + {truth}", number))
    return items


def _mcq_items(rows: Iterable[Any], source: str, answer_field: str, letter_only: bool = False) -> list[BenchmarkItem]:
    """Rows with ``question``, ``options`` and an answer in ``answer_field``: a letter or an option's text, or
    (``letter_only``, as MedQA's ``answer_idx``) a letter, even where an option's text is a letter too."""
    items = []
    for number, row in enumerate(rows, start=1):
        question = _field(row, "question", source, number)
        options = _options(_field(row, "options", source, number, (dict, list)), source, number)
        answer = _field(row, answer_field, source, number)
        if letter_only and answer.strip() not in options:
            raise BenchmarkError(
                f"{source}: row {number}: field {answer_field!r} = {answer!r} is not an option letter {tuple(options)}"
            )
        gold = answer.strip() if letter_only else _answer_letter(answer, options, source, number, answer_field)
        item_id = _item_id(row, source, number)
        items.append(BenchmarkItem(item_id, question.strip(), tuple(options), gold, options=options))
    return items


def load_medqa(path: str | None = None) -> list[BenchmarkItem]:
    """MedQA-USMLE, 4 options: the public JSON-lines layout (``question``, ``options`` A-D, ``answer_idx``).

    ``answer`` must be the text of option ``answer_idx`` when present: a row where they disagree is
    corrupt and would make the gold label a guess. Hub fallback: ``GBaker/MedQA-USMLE-4-options``, test.
    """
    if path is None:
        name, split = "GBaker/MedQA-USMLE-4-options", "test"
        source, rows = _hub_source(name, split), _load_hub(name, None, split)
    else:
        source, rows = read_rows_file(path)
    items = _mcq_items(rows, source, "answer_idx", letter_only=True)
    for number, (row, item) in enumerate(zip(rows, items, strict=True), start=1):
        answer = row.get("answer")
        if isinstance(answer, str) and answer.strip().casefold() != item.options[item.gold].casefold():
            raise BenchmarkError(
                f"{source}: row {number}: field 'answer' = {answer!r} is not the text of option "
                f"{item.gold} ({item.options[item.gold]!r})"
            )
    return items


def load_mcq(path: str | None = None) -> list[BenchmarkItem]:
    """Any local .json/.jsonl multiple-choice file: ``question``, ``options`` (dict or list), ``answer``.

    ``answer`` is an option letter or the text of exactly one option; an optional ``id`` names rows.
    """
    if path is None:
        raise BenchmarkError("benchmark 'mcq' reads local files only; pass benchmark.path=<file.json|jsonl>")
    source, rows = read_rows_file(path)
    return _mcq_items(rows, source, "answer")


def _medmcqa_cop_base(rows: list[Any], source: str) -> int:
    """Whether ``cop`` counts from 0 (hub) or 1 (original release), read from the values present."""
    cops = [_field(row, "cop", source, number, int) for number, row in enumerate(rows, start=1)]
    for number, cop in enumerate(cops, start=1):
        if not 0 <= cop <= 4:  # no option under either layout
            raise BenchmarkError(
                f"{source}: row {number}: field 'cop' = {cop} is no option under either layout, 0..3 or 1..4 "
                "(unlabelled test rows have cop -1)"
            )
    values = set(cops)
    if values <= {0, 1, 2, 3} and 0 in values:
        return 0
    if values <= {1, 2, 3, 4} and 4 in values:
        return 1
    raise BenchmarkError(
        f"{source}: field 'cop' takes the values {sorted(values)}, which fit neither 0..3 (hub layout) nor "
        "1..4 (original release) unambiguously; pass cop_base=0 or cop_base=1"
    )


def load_medmcqa(path: str | None = None, cop_base: int | None = None) -> list[BenchmarkItem]:
    """MedMCQA: ``id``, ``question``, ``opa``..``opd`` and the correct option ``cop``.

    ``cop`` is 0-based (0..3) on the hub's ``openlifescienceai/medmcqa`` and 1-based (1..4) in the
    original JSON-lines release; for local files the base is read from the values unless ``cop_base``
    says it. Hub fallback: the validation split (the test split's answers are not public). A file in the reduced
    layout (``question``, ``choices`` "A. ..", ``answer`` 0-3) is read as it is.
    """
    if path is None:
        name, split = "openlifescienceai/medmcqa", "validation"
        source, rows, cop_base = _hub_source(name, split), list(_load_hub(name, None, split)), 0
    else:
        source, rows = read_rows_file(path)
    if rows and isinstance(rows[0], Mapping) and "choices" in rows[0] and "opa" not in rows[0]:
        return _medmcqa_reduced_items(rows, source)
    if cop_base is None:
        cop_base = _medmcqa_cop_base(rows, source)
    if cop_base not in (0, 1):
        raise BenchmarkError(f"cop_base must be 0 or 1, got {cop_base!r}")
    items = []
    for number, row in enumerate(rows, start=1):
        question = _field(row, "question", source, number)
        options = {
            letter: _field(row, name, source, number).strip()
            for letter, name in zip(LETTERS, MEDMCQA_OPTION_FIELDS, strict=False)
        }
        cop = _field(row, "cop", source, number, int) - cop_base
        if not 0 <= cop < len(options):
            raise BenchmarkError(
                f"{source}: row {number}: field 'cop' = {cop + cop_base} is outside "
                f"{cop_base}..{cop_base + len(options) - 1} (unlabelled test rows have cop -1)"
            )
        item_id = _item_id(row, source, number)
        items.append(BenchmarkItem(item_id, question.strip(), tuple(options), LETTERS[cop], options=options))
    return items


def _medmcqa_reduced_items(rows: list[Any], source: str) -> list[BenchmarkItem]:
    """MedMCQA in the reduced layout some copies of the dev split use: ``question``, ``choices`` (four texts, each
    led by its letter, "A. ...") and ``answer`` (0-3)."""
    items = []
    for number, row in enumerate(rows, start=1):
        question = _field(row, "question", source, number)
        choices = _field(row, "choices", source, number, list)
        texts = []
        for letter, choice in zip(LETTERS, choices, strict=False):
            lead = f"{letter}. "
            if not isinstance(choice, str) or not choice.startswith(lead):
                raise BenchmarkError(
                    f"{source}: row {number}: field 'choices': choice {letter} = {choice!r} does not start with "
                    f"{lead!r}"
                )
            texts.append(choice[len(lead) :])
        options = _options(texts, source, number)
        answer = _field(row, "answer", source, number, int)
        if not 0 <= answer < len(options):
            raise BenchmarkError(f"{source}: row {number}: field 'answer' = {answer} is outside 0..{len(options) - 1}")
        items.append(
            BenchmarkItem(_item_id(row, source, number), question.strip(), tuple(options), LETTERS[answer], options)
        )
    return items


LOADERS: dict[str, Callable[..., list[BenchmarkItem]]] = {
    "pubmedqa": load_pubmedqa,
    "medqa": load_medqa,
    "medmcqa": load_medmcqa,
    "mcq": load_mcq,
}


def load_benchmark(
    name: str,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    loader: Callable[..., list[BenchmarkItem]] | None = None,
    **loader_args: Any,
) -> list[BenchmarkItem]:
    """A benchmark by name (read by ``loader``, else the one ``LOADERS`` names); with ``limit``, a seeded subsample
    kept in file order (same seed, same items)."""
    if loader is None and name not in LOADERS:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose one of {sorted(LOADERS)}")
    items = (loader or LOADERS[name])(path, **loader_args)
    if not items:  # said now, before any model loads
        raise BenchmarkError(f"benchmark={name}: {path or 'the hub copy'} holds no items")
    first: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        if item.id in first:  # predictions.jsonl and per-item comparisons name items by id
            raise BenchmarkError(
                f"benchmark={name}: {path or 'the hub copy'}: items {first[item.id]} and {number} share the id "
                f"{item.id!r}; ids name the items in predictions.jsonl and must be unique."
            )
        first[item.id] = number
    asked: dict[str, tuple[int, str]] = {}
    contradictions = []
    for number, item in enumerate(items, start=1):
        earlier, gold = asked.setdefault(item.prompt_text(), (number, item.gold))
        if gold != item.gold:  # one of the two is scored against a wrong answer, whatever the model says
            contradictions.append(f"items {earlier} and {number} ({gold!r}, {item.gold!r})")
    if contradictions:  # published benchmarks hold a few such pairs: named, not refused
        log.warning(
            "benchmark=%s: %s: %d question(s) asked twice with different answers, so no model can get both right: %s",
            name,
            path or "the hub copy",
            len(contradictions),
            "; ".join(contradictions[:5]) + ("; ..." if len(contradictions) > 5 else ""),
        )
    if limit is not None and limit < 1:
        raise BenchmarkError(f"benchmark.limit must be a positive number of items, got {limit}")
    return [items[i] for i in subsample(len(items), limit, seed)]


def subsample(total: int, limit: int | None, seed: int) -> list[int]:
    """Which of ``total`` items a ``limit`` keeps: a seeded sample, in their order (all of them without one)."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def load_items(cfg: Any) -> list[BenchmarkItem]:
    """The items of an eval config's ``benchmark`` (its file or folder, else the hub), ``limit`` of them."""
    bench = cfg.benchmark
    extra = {"cop_base": bench.cop_base} if bench.get("cop_base") is not None else {}
    path = bench.get("path")
    return load_benchmark(bench.name, path=str(path) if path else None, limit=cfg.limit, seed=cfg.limit_seed, **extra)
