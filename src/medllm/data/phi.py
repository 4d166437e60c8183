"""A scan of local training rows for obvious personal identifiers.

It reports counts by kind and the row numbers where each kind was found, never the values. It is a
tripwire for data that was meant to be de-identified, not a de-identification tool.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    "phone": re.compile(r"(?<![\w/-])(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?![\w/-])"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "record_number": re.compile(
        r"\b(?:MRN|medical record(?: number| no\.?)?|patient id|record #)\s*[:#]?\s*[A-Z0-9-]{5,}\b", re.I
    ),
    "date_of_birth": re.compile(
        r"\b(?:DOB|D\.O\.B\.|date of birth|born on)\s*[:\-]?\s*\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b", re.I
    ),
}
# Cheap tests that every match needs, so the slow patterns run only on the few rows that pass them
# (a 20,000-row file is scanned in about a second instead of half a minute).
_DIGIT_RUN = re.compile(r"\d[\s.-]\d{4}")
HINTS = {
    "email": lambda text, lower: "@" in text,
    "phone": lambda text, lower: _DIGIT_RUN.search(text) is not None,
    "ssn": lambda text, lower: _DIGIT_RUN.search(text) is not None,
    "record_number": lambda text, lower: any(w in lower for w in ("mrn", "record", "patient id")),
    "date_of_birth": lambda text, lower: any(w in lower for w in ("dob", "d.o.b", "birth", "born on")),
}
MAX_LISTED_ROWS = 10


@dataclass
class PhiFinding:
    rows: dict[str, list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def describe(self, source: str) -> str:
        parts = []
        for kind, rows in sorted(self.rows.items()):
            listed = ", ".join(map(str, rows[:MAX_LISTED_ROWS])) + (" ..." if len(rows) > MAX_LISTED_ROWS else "")
            parts.append(f"{kind}: {len(rows)} row(s) ({listed})")
        return f"{source}: possible personal identifiers found; " + "; ".join(parts)


def scan(columns: Sequence[Sequence[str]], row_numbers: Sequence[int] | None = None) -> PhiFinding:
    """Rows in which each kind of identifier appears, across all given text columns.

    Rows are named by ``row_numbers`` (the file's own numbers of rows that survived cleaning), or 1, 2, ...
    """
    finding = PhiFinding()
    for i, texts in zip(row_numbers or itertools.count(1), zip(*columns)):
        joined = "\n".join(texts)
        lower = joined.lower()
        for kind, pattern in PATTERNS.items():
            if HINTS[kind](joined, lower) and pattern.search(joined):
                finding.rows.setdefault(kind, []).append(i)
    return finding
