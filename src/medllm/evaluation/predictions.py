"""predictions.jsonl as the evaluation's record of finished items: appended to as each item finishes, read back on
``resume=true``.

Each item is one line written with a single ``write`` to a file opened for appending, so a killed process leaves
every earlier line whole; only the line being written at the kill can be torn, and a resume drops it (and
generates that item again). No fsync per line: a killed process's writes are in the kernel already; only a crash
of the machine could lose the last lines, which a resume then generates again.

``eval_settings.json`` beside it holds what the predictions depend on (models, items, decoding, protocol): a
resume with other settings would mix predictions of two evaluations in one report, so it is refused, naming the
settings that differ.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medllm.errors import ConfigError
from medllm.runs.atomic import write_atomically

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
SETTINGS = "eval_settings.json"


def item_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["benchmark"], row["model"], str(row["id"])


class PredictionLog:
    """The finished items of an evaluation in ``out_dir``: those kept from before (``resume``) and those appended."""

    def __init__(self, out_dir: Path, settings: dict[str, Any], resume: bool) -> None:
        self.path = Path(out_dir) / PREDICTIONS
        self.rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        settings_file = Path(out_dir) / SETTINGS
        if resume and settings_file.is_file():
            check_resume(json.loads(settings_file.read_text("utf-8")), settings, settings_file)
            self._read()
        elif resume and self.path.is_file():
            raise ConfigError(f"resume=true: {self.path} has no {SETTINGS} beside it to check the settings against.")
        write_atomically(settings_file, json.dumps(settings, indent=2) + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self.rows:
            log.info("resume: %d finished item(s) kept from %s", len(self.rows), self.path)

    def _read(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        whole, tail = lines[:-1], lines[-1]  # after the last newline: a line torn by a kill, or nothing
        kept = len(data) - len(tail)
        for number, line in enumerate(whole, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a kill tears only the last line, which has no newline yet
                raise ConfigError(
                    f"{self.path}: line {number} is not valid JSON (the file was edited?); choose another hydra.run.dir"
                ) from None
            self.rows[item_key(row)] = row
        if tail:
            log.warning(
                "resume: dropping the torn last line of %s (%d bytes); its item is generated again",
                self.path,
                len(tail),
            )
            os.truncate(self.path, kept)

    def done(self, benchmark: str, model: str, item_id: str) -> bool:
        return (benchmark, model, str(item_id)) in self.rows

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk: say so now, not with a torn file later
            raise OSError(f"{self.path}: only {written} of {len(line)} bytes written (disk full?)")
        self.rows[item_key(row)] = row

    def close(self) -> None:
        os.close(self._fd)


def check_resume(before: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    """ConfigError naming each setting that differs between the evaluation in the folder and this command."""
    changed = [
        _change(key, before.get(key), now.get(key))
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if changed:
        raise ConfigError(
            f"resume=true: the evaluation in {where.parent} was run with other settings ({'; '.join(changed)}); run "
            "the same command to resume it, or choose another hydra.run.dir for this one."
        )


def _change(key: str, before: Any, now: Any) -> str:
    """``key: before -> now``, or for long values (the items' ids) what differs in short."""
    shown = f"{key}: {before!r} -> {now!r}"
    if len(shown) <= 120:
        return shown
    if isinstance(before, dict) and isinstance(now, dict):
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        return f"{key} of {', '.join(differ)}"
    return f"{key} (changed)"
