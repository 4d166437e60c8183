"""What made an adapter, saved inside its folder, so that whatever loads the adapter can rebuild its run.

train.py writes ``<run>/adapter/medllm_run.json`` beside the PEFT weights and the tokenizer:

* the checkpoints' record (``medllm.training.resume.run_record``): base model, LoRA shape and the resolved
  config, secrets redacted;
* the chat format: the instruction and the prompt and completion templates the rows were rendered with;
* a fingerprint of the data split: for the train and the validation rows, their count and a digest of
  their token ids and labels (what the model saw, so the data file, the tokenizer, the chat format and
  the length policy are all in it).

eval.py reads it back (``medllm.evaluation.run_settings``) to score the adapter with the model, data and
prompt it was trained with. Imports stay light (no torch, transformers or peft): eval.py reads records
before it picks the backend.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medllm.data.chat_format import R1ChatFormat
from medllm.errors import MedllmError
from medllm.training.secrets import redact_secrets

RECORD_FILE = "medllm_run.json"
# Rows read at a time while fingerprinting a split (bounds the memory for large splits).
FINGERPRINT_BATCH = 1024
# Placeholders in the recorded templates: where a row's text goes.
QUESTION, REASONING, RESPONSE = "{question}", "{reasoning}", "{response}"


class RunRecordError(MedllmError):
    """A run record that can't be read; the message names the file."""


def chat_format_record(chat_format: R1ChatFormat) -> dict[str, Any]:
    return {
        "instruction": chat_format.instruction,
        "generation_prompt": chat_format.generation_prompt(QUESTION),
        "completion": chat_format.completion(REASONING, RESPONSE),
    }


def split_fingerprint(examples: Any) -> dict[str, Any]:
    """The rows' count and a digest of their token ids and labels; the rows' order does not count (the
    split's seed decides it, and the same rows in another order are the same held-out set)."""
    rows = []
    for batch in examples.with_format("numpy", columns=["input_ids", "labels"]).iter(batch_size=FINGERPRINT_BATCH):
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            row = np.asarray(ids, np.int64).tobytes() + b"|" + np.asarray(labels, np.int64).tobytes()
            rows.append(hashlib.sha256(row).digest())
    return {"rows": len(rows), "digest": hashlib.sha256(b"".join(sorted(rows))).hexdigest()[:16]}


def full_run_record(config_record: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """The record of a run (base, LoRA shape, resolved config) with its chat format and data split: what
    checkpoints and the adapter folder carry."""
    record = {
        **config_record,
        "chat_format": chat_format_record(datamodule.chat_format),
        "data_split": {name: split_fingerprint(datamodule.splits[name]) for name in ("train", "val")},
    }
    return redact_secrets(record)  # an instruction may hold a token's text too


def write_run_record(adapter_dir: Path, record: dict[str, Any]) -> Path:
    """Save the record of the run that trained the adapter in ``adapter_dir``; returns its path."""
    path = Path(adapter_dir) / RECORD_FILE
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def read_run_record(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The record saved with an adapter; None for an adapter without one (an older run, or made by hand)."""
    path = Path(adapter_dir).expanduser() / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunRecordError(f"{path}: not a readable run record ({err}); restore it or delete it.") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunRecordError(f"{path}: not a medllm run record (no 'config'); restore it or delete it.")
    return record
