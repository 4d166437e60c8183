"""Text and rows of local JSON, JSON-lines and CSV files, read with the standard library.

Shared by the training data and the benchmarks. Files are UTF-8, with or without a byte order mark;
anything else is named with the file and the byte offset where it stops being UTF-8. Any field type
reaches the caller's validation, which then names the row (Arrow's readers would fail on a mixed-type
column first). A JSON file that starts with ``[`` is one JSON array; anything else is read as JSON
lines, whatever its suffix (MedMCQA's original release names its JSON-lines files ``.json``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any

# Longest first: a UTF-32 little-endian mark starts with the UTF-16 one.
FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
SAVE_AS_UTF8 = "Save it as UTF-8 (e.g. iconv -f <its encoding> -t UTF-8)."


def read_utf8(path: Path, error: type[Exception]) -> str:
    """The text of ``path`` (UTF-8, a leading byte order mark dropped), or ``error`` naming file and offset."""
    data = path.read_bytes()
    if data.startswith(b"\x1f\x8b"):
        raise error(f"{path}: the file is gzip-compressed; decompress it first (gunzip -k {path.name}).")
    for bom, name in FOREIGN_BOMS:
        if data.startswith(bom):
            raise error(f"{path}: the file is {name} (byte order mark at byte offset 0), not UTF-8. {SAVE_AS_UTF8}")
    nul = data.find(b"\x00")
    if nul >= 0:  # valid UTF-8, but UTF-16 without a mark (or a binary file) looks like this
        raise error(f"{path}: NUL byte at byte offset {nul}: not UTF-8 text (UTF-16? binary?). {SAVE_AS_UTF8}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(
            f"{path}: not UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line}) "
            f"can't be decoded (latin-1 or cp1252?). {SAVE_AS_UTF8}"
        ) from None


def read_json(path: Path, error: type[Exception]) -> Any:
    """One JSON document (UTF-8, a byte order mark allowed), or ``error`` naming the file and where it breaks."""
    return _parse_json(read_utf8(path, error), path, error)


def _parse_json(text: str, path: Path, error: type[Exception]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err}).") from None


def read_json_rows(path: Path, error: type[Exception]) -> list[Any]:
    """The rows of ``path``; a parse error is raised as ``error`` naming the file (and the line)."""
    text = read_utf8(path, error)
    if text.lstrip().startswith("["):
        return _parse_json(text, path, error)
    wrapped = _wrapped_rows(text)
    if wrapped is not None:
        name, count = wrapped
        raise error(
            f"{path}: the top level is an object whose {name!r} holds {count} rows; the top level must be the list "
            f"of rows itself ([{{...}}, ...]) or one row per line (JSON lines)."
        )
    rows = []
    # Lines end at "\n" only: str.splitlines() would also split at U+2028 and other characters that
    # JSON strings may hold as they are.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if _is_one_object(text):
                raise error(
                    f"{path}: one JSON object, not rows. Give a list of objects ([{{...}}, ...]) or one object "
                    "per line (JSON lines)."
                ) from None
            raise error(f"{path}: line {line_no} is not valid JSON ({err}).") from err
    return rows


def _wrapped_rows(text: str) -> tuple[str, int] | None:
    """``("rows", n)`` where ``text`` is one JSON object holding the rows under a key (``{"rows": [{...}]}``)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    for name, rows in value.items():
        if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
            return str(name), len(rows)
    return None


def _is_one_object(text: str) -> bool:
    """Whether ``text`` is a single JSON object spread over several lines (say, ``{"data": [...]}``)."""
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def read_csv_rows(path: Path, error: type[Exception]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, every cell a string as written: an answer ``42`` or
    ``NA`` stays text (type-guessing readers turn those into numbers and missing values). A cell
    absent from a short row is absent from its dict; a row with more cells than the header, or a header
    that names a column twice, is an ``error`` naming the file (and row)."""
    text = read_utf8(path, error)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise error(f"{path}: the header names column(s) {repeated} more than once; which one is meant is unclear.")
        rows = []
        for number, row in enumerate(reader, start=1):
            if None in row:  # cells beyond the header: a field's text split at an unquoted comma, most likely
                cells = len(header) + len(row[None])
                raise error(
                    f"{path}: row {number} (line {reader.line_num}) has {cells} cells where the header has "
                    f'{len(header)}; quote a field that holds a comma or a line break ("a, b").'
                )
            rows.append({k: v for k, v in row.items() if v is not None})
        return rows
    except csv.Error as err:
        raise error(f"{path}: not valid CSV ({err}).") from err
