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
from typing import Any

import datasets
import numpy as np
import tokenizers
import transformers

from medllm.config.schema import TOO_LONG
from medllm.data import chat_format as chat_format_module
from medllm.data.chat_format import IGNORE_INDEX, R1ChatFormat
from medllm.data.records import FIELDS, DataError

log = logging.getLogger(__name__)


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
    control_text_rows: int = 0  # kept rows whose text spells a control token (trained on as plain text)
    val_prompts_in_train: int = 0  # validation rows whose prompt (question) some training row has too

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
        if self.control_text_rows:
            out.append(
                f"  rows whose text spells a control token (<think>, <｜end▁of▁sentence｜>...), "
                f"kept as plain text: {self.control_text_rows}"
            )
        if self.val_prompts_in_train:
            out.append(
                f"  validation rows asking a question the training rows ask too: {self.val_prompts_in_train} "
                "(their val_loss measures recall of the training answers)"
            )
        if self.phi:
            out.append("  possible identifiers (rows): " + ", ".join(f"{k} {v}" for k, v in sorted(self.phi.items())))
        return out

    def metrics(self) -> dict[str, float]:
        return summary_metrics(self)


def summary_metrics(summary: Any) -> dict[str, float]:
    """A data summary's numbers for a logger (``data/<field>``, ``data/dropped_<reason>``): every stage's."""
    flat = {k: v for k, v in asdict(summary).items() if isinstance(v, (int, float)) and v is not None}
    flat.update({f"dropped_{k}": v for k, v in summary.dropped.items()})
    return {f"data/{k}": float(v) for k, v in flat.items()}


def _apply_length_policy(batch: dict, max_seq_length: int, too_long: str) -> dict:
    out = {"input_ids": [], "labels": [], "keep": [], "truncated": [], "n_trained": [], "length": []}
    out["full_length"], out["control_text"] = [len(ids) for ids in batch["input_ids"]], batch["control_text"]
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


@dataclass
class Tokenized:
    """Examples ready to train on, and what became of the other rows."""

    examples: datasets.Dataset
    dropped: Counter
    truncated: int
    control_text_rows: int  # kept rows whose text spells a control token
    row_lengths: np.ndarray  # every row's full token length, before the length policy


def tokenize(
    rows: datasets.Dataset,
    tokenizer,
    chat_format: R1ChatFormat,
    max_seq_length: int,
    train_on: str = "completion",
    too_long: str = "drop",
    num_proc: int | None = None,
) -> Tokenized:
    """Tokenize clean rows. Rows over ``max_seq_length`` are dropped or truncated (``too_long``); rows
    left with no trained token (a prompt longer than the budget, say) are dropped."""
    TOO_LONG.check("data.too_long", too_long)

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
    kept = keep & (n_trained > 0)
    examples = encoded.select(np.flatnonzero(kept)).remove_columns(["keep", "truncated", "full_length", "control_text"])
    return Tokenized(
        examples,
        +dropped,
        truncated=int(_column(encoded, "truncated").sum()),
        control_text_rows=int((kept & _column(encoded, "control_text")).sum()),
        row_lengths=_column(encoded, "full_length"),
    )


def nothing_fits_error(source: str, tokenized: Tokenized, max_seq_length: int) -> DataError:
    """No row left to train on: say which setting and the rows' lengths, so the fix is one change."""
    lengths = tokenized.row_lengths
    median = int(np.median(lengths))
    enough = 1 << (median - 1).bit_length()  # the power of two at or above the median row
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(tokenized.dropped.items()))
    return DataError(
        f"{source}: no row fits max_seq_length={max_seq_length} (dropped: {dropped}). The rows are "
        f"{int(lengths.min())} to {int(lengths.max())} tokens long, median {median}. Raise max_seq_length "
        f"(max_seq_length={enough} keeps at least half of them; data.max_seq_length follows it)."
    )


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


def code_digest() -> str:
    """A digest of the code that turns clean rows into examples: this module, the chat format and the
    tokenizer libraries. Any edit there makes new cache keys, so no cache outlives the code that wrote it."""
    digest = hashlib.sha256(f"tokenizers {tokenizers.__version__} transformers {transformers.__version__}".encode())
    for module_file in (__file__, chat_format_module.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:16]


def rows_digest(rows: datasets.Dataset) -> str:
    """A digest of the clean rows' text: the cache follows the content, whatever file or column it came from."""
    digest = hashlib.sha256()
    for name in FIELDS:
        for text in rows.data.column(name).to_pylist():
            data = text.encode()
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:16]


def cache_key(**parts) -> str:
    """A short digest of everything that determines the prepared examples."""
    blob = json.dumps({"code": code_digest(), **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_atomically(examples: datasets.Dataset, summary: DataSummary, target: Path) -> None:
    """Write the prepared set to a temporary folder and rename it, so a cache folder is always whole.

    A cache that can't be written (disk full, read-only) costs only the next run's time: warned about,
    its partial copy removed, and the run goes on with the examples in memory.
    """
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        examples.save_to_disk(str(tmp))
        (tmp / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache the prepared data in %s (%s); the next run prepares it again", target, err)
        return
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first; its copy is equally good
        shutil.rmtree(tmp, ignore_errors=True)


class UnreadableCache(Exception):
    """A cache folder that exists but can't be loaded (truncated, edited, written by something else)."""


def read_cache(target: Path) -> tuple[datasets.Dataset, DataSummary] | None:
    """The prepared set in ``target``; None if there is none (its summary is written last, then renamed in)."""
    if not (target / "summary.json").exists():
        return None
    try:
        summary = DataSummary(**json.loads((target / "summary.json").read_text("utf-8")))
        examples = datasets.load_from_disk(str(target))
        if examples.num_rows != summary.rows_kept:
            raise ValueError(f"{examples.num_rows} examples, the summary says {summary.rows_kept}")
    except Exception as err:  # Arrow, JSON and the dataset loader each fail their own way on a broken file
        raise UnreadableCache(f"{type(err).__name__}: {err}") from err
    return examples, summary


def load_cached(target: Path) -> tuple[datasets.Dataset, DataSummary] | None:
    """The prepared set in ``target``, for the process that builds it: None if absent; an unreadable
    one is reported, removed and None returned, so it is built again."""
    try:
        return read_cache(target)
    except UnreadableCache as err:
        log.warning("prepared data in %s is unreadable (%s); preparing it again", target, err)
        shutil.rmtree(target, ignore_errors=True)
        return None


def wait_for_cache(target: Path, wait_s: float) -> tuple[datasets.Dataset, DataSummary] | None:
    """The prepared set in ``target`` once another process has written it (or rewritten a broken one)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cached = read_cache(target)
        except UnreadableCache:
            cached = None
        if cached is not None or time.monotonic() >= deadline:
            return cached
        time.sleep(0.5)
