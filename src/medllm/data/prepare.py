"""From clean rows to tokenized training examples, with a length policy, counts and an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from medllm.data.chat_format import IGNORE_INDEX, R1ChatFormat, TrainOn

log = logging.getLogger(__name__)

TooLongPolicy = Literal["drop", "truncate"]
CACHE_FORMAT_VERSION = 1


@dataclass
class DataSummary:
    """What the pipeline kept and dropped, and the token lengths of what it kept."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    length_mean: float = 0.0
    length_p50: float = 0.0
    length_p99: float = 0.0
    length_max: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    packing_efficiency: float | None = None
    phi: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        out = [
            f"data: {self.source}",
            f"  rows: read {self.rows_read}, kept {self.rows_kept}; dropped: {dropped}; truncated {self.truncated}",
            f"  tokens per row: mean {self.length_mean:.0f}, p50 {self.length_p50:.0f}, "
            f"p99 {self.length_p99:.0f}, max {self.length_max}",
            f"  trained tokens: {self.trained_tokens} of {self.total_tokens} "
            f"({self.trained_tokens / max(self.total_tokens, 1):.1%})",
        ]
        if self.packing_efficiency is not None:
            out.append(f"  packing efficiency (row tokens / packed sequence tokens): {self.packing_efficiency:.1%}")
        if self.phi:
            out.append("  possible identifiers (rows): " + ", ".join(f"{k} {v}" for k, v in sorted(self.phi.items())))
        return out

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a logger."""
        flat = {k: v for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}
        flat.update({f"dropped_{k}": v for k, v in self.dropped.items()})
        return {f"data/{k}": float(v) for k, v in flat.items()}


def _apply_length_policy(batch: dict, max_seq_length: int, too_long: TooLongPolicy) -> dict:
    out = {"input_ids": [], "labels": [], "keep": [], "truncated": [], "n_trained": [], "length": []}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        cut = len(ids) > max_seq_length
        if cut and too_long == "truncate":
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["keep"].append(not (cut and too_long == "drop"))
        out["truncated"].append(cut and too_long == "truncate")
        out["n_trained"].append(len(labels) - labels.count(IGNORE_INDEX))
        out["length"].append(len(ids))
    return out


def _column(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """One scalar column as a NumPy array, straight from Arrow (no Python objects per row)."""
    return dataset.data.column(name).to_numpy()


def tokenize(
    rows: datasets.Dataset,
    tokenizer,
    chat_format: R1ChatFormat,
    max_seq_length: int,
    train_on: TrainOn = "completion",
    too_long: TooLongPolicy = "drop",
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, Counter, int]:
    """Tokenize clean rows; returns (examples, dropped counts by reason, truncated count).

    Rows over ``max_seq_length`` are dropped or truncated (``too_long``); rows left with no trained
    token (a prompt longer than the budget, say) are dropped.
    """
    if too_long not in ("drop", "truncate"):
        raise ValueError(f"data.too_long must be 'drop' or 'truncate', got {too_long!r}")

    def encode(batch: dict) -> dict:
        out = chat_format.tokenize_batch(
            tokenizer, batch["question"], batch["reasoning"], batch["response"], train_on=train_on
        )
        return _apply_length_policy(out, max_seq_length, too_long)

    num_proc = num_proc if num_proc and num_proc > 1 and len(rows) >= 1000 else None
    encoded = rows.map(
        encode, batched=True, batch_size=256, num_proc=num_proc, remove_columns=rows.column_names, desc="Tokenizing"
    )
    keep, n_trained = _column(encoded, "keep"), _column(encoded, "n_trained")
    dropped = Counter({"too_long": int((~keep).sum()), "no_trained_tokens": int((keep & (n_trained == 0)).sum())})
    truncated = int(_column(encoded, "truncated").sum())
    examples = encoded.select(np.flatnonzero(keep & (n_trained > 0))).remove_columns(["keep", "truncated"])
    return examples, +dropped, truncated


def summarize(examples: datasets.Dataset, summary: DataSummary) -> DataSummary:
    lengths = np.asarray(examples["length"]) if len(examples) else np.zeros(1)
    trained = np.asarray(examples["n_trained"]) if len(examples) else np.zeros(1)
    summary.rows_kept = len(examples)
    summary.length_mean = float(lengths.mean())
    summary.length_p50 = float(np.percentile(lengths, 50))
    summary.length_p99 = float(np.percentile(lengths, 99))
    summary.length_max = int(lengths.max())
    summary.total_tokens = int(lengths.sum()) if len(examples) else 0
    summary.trained_tokens = int(trained.sum())
    return summary


def cache_key(**parts) -> str:
    """A short digest of everything that determines the prepared examples."""
    blob = json.dumps({"version": CACHE_FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_identity(path: str | Path) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def save_atomically(examples: datasets.Dataset, summary: DataSummary, target: Path) -> None:
    """Write the prepared set to a temporary folder and rename it, so a cache folder is always whole."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    examples.save_to_disk(str(tmp))
    (tmp / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first; its copy is equally good
        shutil.rmtree(tmp, ignore_errors=True)


def is_cached(target: Path) -> bool:
    """Whether ``target`` holds a whole prepared set (its summary is written last, then renamed in)."""
    return (target / "summary.json").exists()


def load_cached(target: Path, wait_s: float = 0.0) -> tuple[datasets.Dataset, DataSummary] | None:
    """The prepared set in ``target``, waiting up to ``wait_s`` for another process to write it."""
    deadline = time.monotonic() + wait_s
    while not is_cached(target):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
    summary = DataSummary(**json.loads((target / "summary.json").read_text()))
    return datasets.load_from_disk(str(target)), summary
