"""Reading reasoning SFT rows from the hub, local files or the packaged sample, and validating them.

Every row leaves this module as three clean strings (``question``, ``reasoning``, ``response``):
Unicode NFC, whitespace trimmed, never lowercased; a field of only invisible characters is empty.
A bad row is reported with its source, its 1-based row number and the field at fault, before any
tokenizer or model is loaded.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import datasets
import pyarrow.parquet

from medllm.config.inputs import rows_file
from medllm.config.schema import ON_BAD_ROW
from medllm.data.jsonrows import read_csv_rows, read_json_rows
from medllm.errors import MedllmError

FIELDS = ("question", "reasoning", "response")
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
MAX_LISTED_ERRORS = 5


class DataError(MedllmError, ValueError):
    """Input data that can't be used as it is; the message says where and what to change."""


@dataclass(frozen=True)
class Columns:
    """Which source column holds each field (medical-o1's names by default)."""

    question: str = "Question"
    reasoning: str = "Complex_CoT"
    response: str = "Response"

    def __post_init__(self) -> None:
        for i, (field_a, column) in enumerate(self.items()):
            for field_b, other in self.items()[i + 1 :]:
                if column == other:
                    raise DataError(
                        f"data.columns.{field_a} and data.columns.{field_b} both name column {column!r}: each of "
                        "question, reasoning and response needs a column of its own."
                    )

    def items(self) -> list[tuple[str, str]]:
        return [(f, getattr(self, f)) for f in FIELDS]


@dataclass
class CleanReport:
    """What validation kept and dropped, per reason."""

    source: str
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    bad_rows: list[str] = field(default_factory=list)
    kept_rows: list[int] = field(default_factory=list)  # the source's row number (1-based) of each kept row


def sample_rows() -> list[dict[str, str]]:
    """The synthetic medical reasoning rows shipped with the package (medical-o1 schema)."""
    text = resources.files("medllm.data").joinpath("sample/medical_reasoning_sample.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _read_json(path: Path) -> list[dict]:
    rows = read_json_rows(path, DataError)
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is a {type(row).__name__}, not an object with named fields.")
    return rows


def read_local(path: str | Path, key: str = "data.path") -> list[dict]:
    """The rows of a .json / .jsonl / .parquet / .csv file, or an error naming the file (and ``key``, the
    setting that named it)."""
    path = rows_file(key, path)
    suffix = path.suffix.lower()
    if suffix not in LOCAL_FORMATS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(LOCAL_FORMATS)}.")
    if suffix in (".json", ".jsonl"):
        return _read_json(path)
    if suffix == ".csv":
        return read_csv_rows(path, DataError)
    try:  # read as it is now: datasets' from_parquet would cache it by path and time, missing an edit
        return pyarrow.parquet.read_table(path).to_pylist()
    except Exception as err:  # the reader raises many types; all mean the file can't be parsed
        raise DataError(f"{path}: could not be read as parquet: {err}") from err


def read_hub(
    name: str, subset: str, revision: str | None, cache_dir: str | None = None, token: str | None = None
) -> list[dict]:
    """A hub dataset's train split; offline and not cached, a DataError saying what to do."""
    try:
        return datasets.load_dataset(
            name, subset, revision=revision, split="train", cache_dir=cache_dir, token=token
        ).to_list()
    except Exception as err:
        if (
            datasets.config.HF_HUB_OFFLINE
            or "offline" in str(err).lower()
            or isinstance(err, (ConnectionError, OSError))
        ):
            raise DataError(
                f"Could not load the hub dataset {name!r} (subset {subset!r}, revision {revision}) and it is not "
                f"in the cache: {err}\nDownload it once with network access "
                f"(python -c \"import datasets; datasets.load_dataset('{name}', '{subset}', revision='{revision}')\") "
                "or use data=local data.path=<your file>."
            ) from err
        raise


# Characters that render as nothing: whitespace (NBSP too), format characters (zero-width space and
# joiners, word joiner, byte order mark, bidi marks), controls, and the blank "letters" that pass for text.
INVISIBLE_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf"}
BLANK_LETTERS = set("\u115f\u1160\u3164\uffa0\u2800")


def _is_invisible(char: str) -> bool:
    return unicodedata.category(char) in INVISIBLE_CATEGORIES or char in BLANK_LETTERS


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, or only whitespace and invisible characters."""
    return all(_is_invisible(char) for char in text)


_ABSENT = object()


def _problem(value: object) -> str | None:
    if value is _ABSENT:
        return "missing"
    if value is None:
        return "null"
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if is_blank(value):
        unusual = sorted({f"U+{ord(c):04X}" for c in value if ord(c) > 127})
        return "empty" + (f" (only invisible characters: {', '.join(unusual)})" if unusual else "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800" in JSON): no text can hold it
        return f"not valid Unicode (U+{ord(value[err.start]):04X} at character {err.start})"
    control = CONTROL_CHARACTERS.search(value)
    if control:  # NUL and the like: binary or corrupted text, which would be trained on as it is
        return f"holding a control character (U+{ord(control.group()):04X} at character {control.start()})"
    return None


# Control characters no text means: C0 controls other than tab, newlines, vertical tab and form feed; DEL.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def clean(
    rows: list[dict],
    columns: Columns,
    source: str,
    on_bad_row: str = "error",
) -> tuple[datasets.Dataset, CleanReport]:
    """Validate, normalise and de-duplicate rows; returns ``question/reasoning/response`` columns."""
    ON_BAD_ROW.check("data.on_bad_row", on_bad_row)
    if not rows:
        raise DataError(f"{source}: no rows (the file is empty or holds an empty list). Point data.path at your rows.")
    present = set().union(*(row.keys() for row in rows))
    missing = [src for _, src in columns.items() if src not in present]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; the file has {sorted(present)}. "
            "Rename them or set data.columns.question / data.columns.reasoning / data.columns.response."
        )
    report = CleanReport(source=source, rows_read=len(rows))
    kept: dict[str, list[str]] = {f: [] for f in FIELDS}
    seen: set[tuple[str, ...]] = set()
    for i, row in enumerate(rows, start=1):
        problems = [(src, p) for _, src in columns.items() if (p := _problem(row.get(src, _ABSENT))) is not None]
        if problems:
            src, p = problems[0]
            report.bad_rows.append(f"row {i}: field '{src}' is {p}")
            report.dropped["bad_row"] += 1
            continue
        values = tuple(unicodedata.normalize("NFC", row[src]).strip() for _, src in columns.items())
        if values in seen:
            report.dropped["duplicate"] += 1
            continue
        seen.add(values)
        report.kept_rows.append(i)
        for f, v in zip(FIELDS, values):
            kept[f].append(v)
    if report.bad_rows and on_bad_row == "error":
        listed = "\n  ".join(report.bad_rows[:MAX_LISTED_ERRORS])
        more = len(report.bad_rows) - MAX_LISTED_ERRORS
        raise DataError(
            f"{source}: {len(report.bad_rows)} bad row(s):\n  {listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix the file, or set data.on_bad_row=skip to drop such rows and count them."
        )
    if not seen:
        raise DataError(f"{source}: no usable rows: all {len(rows)} are bad, e.g. {report.bad_rows[0]}.")
    return datasets.Dataset.from_dict(kept), report
