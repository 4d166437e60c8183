"""A run's rows read and validated with no tokenizer or model, so bad input is named in seconds.

``check_data(cfg.data)`` is what the entry points call before they import a backend; the data module
calls the same ``load_valid_rows`` and, in the same process, gets the rows already checked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets

from medllm.data import phi, records

log = logging.getLogger(__name__)

Source = Literal["sample", "hub", "local"]
DEFAULT_CACHE_DIR = "~/.cache/medllm"
HUB_NAME = "FreedomIntelligence/medical-o1-reasoning-SFT"


@dataclass(frozen=True)
class RowSource:
    """Where rows come from: a local file (``path``), else the hub data set or the packaged sample."""

    source: Source = "sample"
    path: str | None = None
    hub_name: str = HUB_NAME
    subset: str = "en"
    revision: str | None = None
    cache_dir: str | None = None
    hub_token: str | None = field(default=None, repr=False, compare=False)  # a secret: never shown
    key: str = field(default="data.path", compare=False)  # the setting that names the file, for errors

    @property
    def name(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.source == "hub":
            return f"{self.hub_name} ({self.subset}, revision {self.revision})"
        return "medllm sample data"

    def read(self) -> list[dict]:
        if self.path is not None:
            return records.read_local(self.path, self.key)
        if self.source == "hub":
            hub_cache = str(Path(self.cache_dir or DEFAULT_CACHE_DIR).expanduser() / "hub")
            return records.read_hub(
                self.hub_name, self.subset, self.revision, cache_dir=hub_cache, token=self.hub_token
            )
        return records.sample_rows()

    def version(self) -> tuple:
        """What tells one state of the input from another within a process (a file's size and mtime)."""
        try:
            stat = Path(self.path).expanduser().stat() if self.path is not None else None
        except OSError:  # reading it will say what is wrong
            return ()
        return (stat.st_size, stat.st_mtime_ns) if stat else ()


@dataclass(frozen=True)
class ValidRows:
    rows: datasets.Dataset
    report: records.CleanReport
    phi: dict[str, int]  # rows with each kind of possible identifier (empty: none found, or not scanned)


_checked: dict[tuple, ValidRows] = {}
MAX_CHECKED = 4  # a run reads a training file and a test file; a sweep repeats them


def load_valid_rows(
    source: RowSource,
    columns: records.Columns,
    on_bad_row: records.BadRowPolicy = "error",
    phi_check: phi.PhiPolicy = "warn",
) -> ValidRows:
    """Read, validate and de-duplicate the rows, and apply the PHI policy to local files (``error``
    raises, ``warn`` logs). A DataError names the file, row and field. The result is kept for the
    process: the entry point's check and the data module read the file once."""
    if phi_check not in ("warn", "error", "off"):
        raise records.DataError(f"data.phi_check must be warn, error or off, got {phi_check!r}")
    key = (source, source.version(), columns, on_bad_row, phi_check)
    if key not in _checked:
        if len(_checked) >= MAX_CHECKED:
            del _checked[next(iter(_checked))]
        _checked[key] = _validate(source, columns, on_bad_row, phi_check)
    return _checked[key]


def _validate(source: RowSource, columns: records.Columns, on_bad_row, phi_check) -> ValidRows:
    rows, report = records.clean(source.read(), columns, source.name, on_bad_row)
    if report.bad_rows:
        log.warning("%s: skipped %d bad row(s), e.g. %s", source.name, len(report.bad_rows), report.bad_rows[0])
    counts: dict[str, int] = {}
    if source.path is not None and phi_check != "off":
        finding = phi.scan([rows.data.column(f).to_pylist() for f in records.FIELDS], report.kept_rows)
        if finding and phi_check == "error":
            raise records.DataError(finding.describe(source.name) + ". Remove them, or set data.phi_check=warn|off.")
        if finding:
            log.warning(finding.describe(source.name))
        counts = {kind: len(found) for kind, found in finding.rows.items()}
    return ValidRows(rows, report, counts)


def validation_count(val_size: Any, n_rows: int, source: str, dropped: Mapping[str, int] | None = None) -> int:
    """How many of ``n_rows`` rows ``data.val_size`` holds out: a fraction (0 < f < 1, rounded up, as
    ``datasets.train_test_split`` rounds it) or a count; at least one row each for validation and training."""
    fix = f"Use a fraction such as data.val_size=0.1 or a count such as data.val_size={max(1, n_rows // 10)}."
    if n_rows < 2:
        why = ", ".join(f"{reason} {count}" for reason, count in sorted((dropped or {}).items()) if count)
        raise records.DataError(
            f"{source}: {n_rows} usable row(s){f' (dropped: {why})' if why else ''}; need at least 2 to split off "
            "validation rows."
        )
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise records.DataError(f"data.val_size={val_size!r} is neither a fraction nor a count of rows. {fix}")
    if isinstance(val_size, float):
        if not 0 < val_size < 1:
            raise records.DataError(f"data.val_size={val_size!r}: a fraction must lie between 0 and 1. {fix}")
        n_val = math.ceil(val_size * n_rows)
    else:
        n_val = val_size
    if n_val < 1:
        raise records.DataError(f"data.val_size={val_size!r} holds out no rows, and training validates on them. {fix}")
    if n_val >= n_rows:
        raise records.DataError(
            f"data.val_size={val_size!r} holds out {n_val} rows, but {source} has {n_rows} usable rows: none "
            f"would be left to train on. {fix}"
        )
    return n_val


def _resolved(path: Any) -> Path:
    return Path(str(path)).expanduser().resolve()


def row_sources(data: Mapping[str, Any]) -> list[RowSource]:
    """The training input and the optional test file that a ``data`` config names."""
    source = data.get("source", "sample")
    if source not in ("sample", "hub", "local"):
        raise records.DataError(f"data.source must be sample, hub or local, got {source!r}")
    if source == "local" and not data.get("path"):
        raise records.DataError("data=local needs data.path=<a .json, .jsonl, .parquet or .csv file>.")
    hub = {k: data[k] for k in ("hub_name", "subset", "revision", "hub_token") if data.get(k) is not None}
    train = RowSource(source, data.get("path") if source == "local" else None, cache_dir=data.get("cache_dir"), **hub)
    test_path = data.get("test_path")
    if not test_path:
        return [train]
    same_file = train.path is not None and _resolved(test_path) == _resolved(train.path)
    if same_file:
        raise records.DataError(
            f"data.test_path={test_path} is data.path: the test rows would be the rows trained on. Give a file of "
            "held-out rows, or leave data.test_path out (data.val_size holds rows out of data.path)."
        )
    return [train, RowSource("local", str(test_path), key="data.test_path")]


def check_data(data: Mapping[str, Any]) -> list[ValidRows]:
    """Read and validate every input the ``data`` config names, and check ``data.val_size`` against the
    rows found: one DataError naming the file, row and field (or the setting), with no tokenizer or model."""
    columns = records.Columns(**(data.get("columns") or {}))
    checked = [
        load_valid_rows(s, columns, data.get("on_bad_row", "error"), data.get("phi_check", "warn"))
        for s in row_sources(data)
    ]
    # Rows too long for max_seq_length drop out later, so this catches only what no length can fix.
    report = checked[0].report
    validation_count(data.get("val_size", 0.1), len(checked[0].rows), report.source, report.dropped)
    return checked
