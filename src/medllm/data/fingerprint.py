"""A fingerprint of a tokenized split: what a run record keeps to tell the rows it trained on from others."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

# Rows read at a time while fingerprinting a split (bounds the memory for large splits).
FINGERPRINT_BATCH = 1024


def split_fingerprint(examples: Any) -> dict[str, Any]:
    """The rows' count and a digest of their token ids and labels; the rows' order does not count (the
    split's seed decides it, and the same rows in another order are the same held-out set). Token ids and
    labels hold the data file, the tokenizer, the chat format and the length policy at once."""
    rows = []
    for batch in examples.with_format("numpy", columns=["input_ids", "labels"]).iter(batch_size=FINGERPRINT_BATCH):
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            row = np.asarray(ids, np.int64).tobytes() + b"|" + np.asarray(labels, np.int64).tobytes()
            rows.append(hashlib.sha256(row).digest())
    return {"rows": len(rows), "digest": hashlib.sha256(b"".join(sorted(rows))).hexdigest()[:16]}


def splits_fingerprint(splits: dict[str, Any]) -> dict[str, Any]:
    """The fingerprints of a data module's train and validation splits."""
    return {name: split_fingerprint(splits[name]) for name in ("train", "val")}
