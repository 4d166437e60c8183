"""A run's rows read and validated with no tokenizer or model, so bad input is named in seconds.

``check_data(cfg.data)`` is what the entry points call before they import a backend; the data module
calls the same ``load_valid_rows`` and, in the same process, gets the rows already checked. The data
settings arrive as the schema's ``Data`` (``medllm.config.schema``), checked and with its defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from medllm.config import inputs
from medllm.config.schema import PHI_CHECK, Data, Paths
from medllm.config.schema_check import typed
from medllm.data import phi, records

log = logging.getLogger(__name__)

# Where prepared data and hub downloads go when data.cache_dir is null (a data module built from Python).
DEFAULT_CACHE_DIR = Paths.cache_dir


@dataclass(frozen=True)
class RowSource:
    """Where rows come from: a local file (``path``), else the hub data set or the packaged sample."""

    source: str
    path: str | None
    hub_name: str
    subset: str
    revision: str | None
    cache_dir: str | None
    hub_token: str | None = field(repr=False, compare=False)  # a secret: never shown
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
    on_bad_row: str = "error",
    phi_check: str = "warn",
) -> ValidRows:
    """Read, validate and de-duplicate the rows, and apply the PHI policy to local files (``error``
    raises, ``warn`` logs). A DataError names the file, row and field. The result is kept for the
    process: the entry point's check and the data module read the file once."""
    PHI_CHECK.check("data.phi_check", phi_check)
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


def validation_count(val_size: float | int, n_rows: int, source: str, dropped: Mapping[str, int] | None = None) -> int:
    """How many of ``n_rows`` rows ``data.val_size`` holds out: a fraction (rounded up, as
    ``datasets.train_test_split`` rounds it) or a count (the schema checked which); at least one row each
    for validation and training."""
    if n_rows < 2:
        why = ", ".join(f"{reason} {count}" for reason, count in sorted((dropped or {}).items()) if count)
        raise records.DataError(
            f"{source}: {n_rows} usable row(s){f' (dropped: {why})' if why else ''}; need at least 2 to split off "
            "validation rows."
        )
    n_val = math.ceil(val_size * n_rows) if isinstance(val_size, float) else val_size
    if n_val >= n_rows:
        fix = f"Use a fraction such as data.val_size=0.1 or a count such as data.val_size={max(1, n_rows // 10)}."
        raise records.DataError(
            f"data.val_size={val_size!r} holds out {n_val} rows, but {source} has {n_rows} usable rows: none "
            f"would be left to train on. {fix}"
        )
    return n_val


def row_sources(data: Data) -> list[RowSource]:
    """The training input and the optional test file that the data settings name."""
    inputs.data_files(dataclasses.asdict(data))
    hub = {"hub_name": data.hub_name, "subset": data.subset, "revision": data.revision, "hub_token": data.hub_token}
    train = RowSource(data.source, data.path if data.source == "local" else None, cache_dir=data.cache_dir, **hub)
    if not data.test_path:
        return [train]
    return [train, RowSource("local", str(data.test_path), cache_dir=data.cache_dir, key="data.test_path", **hub)]


def check_data(data: Mapping[str, Any]) -> list[ValidRows]:
    """Read and validate every input the ``data`` config names, and check ``data.val_size`` against the
    rows found: one DataError naming the file, row and field (or the setting), with no tokenizer or model."""
    settings = typed(data, Data, "data.")
    columns = records.Columns(**dataclasses.asdict(settings.columns))
    checked = [load_valid_rows(s, columns, settings.on_bad_row, settings.phi_check) for s in row_sources(settings)]
    # Rows too long for max_seq_length drop out later, so this catches only what no length can fix.
    report = checked[0].report
    validation_count(settings.val_size, len(checked[0].rows), report.source, report.dropped)
    return checked
