"""Rows of a JSON array or JSON-lines file, parsed with the standard library.

Shared by the training data and the benchmarks. Any field type reaches the caller's validation, which
then names the row (Arrow's readers would fail on a mixed-type column first). A file that starts with
``[`` is one JSON array; anything else is read as JSON lines, whatever its suffix (MedMCQA's original
release names its JSON-lines files ``.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_rows(path: Path, error: type[Exception]) -> list[Any]:
    """The rows of ``path``; a parse error is raised as ``error`` naming the file (and the line)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise error(f"{path}: not valid JSON ({err}).") from err
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise error(f"{path}: line {line_no} is not valid JSON ({err}).") from err
    return rows
