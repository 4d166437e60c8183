"""The run record: what made an adapter, saved with it so that whatever loads the adapter can rebuild its run.

train.py puts one :class:`RunRecord` into every checkpoint and into ``<run>/adapter/medllm_run.json``:

* the base model and the LoRA shape, and the resolved config (secrets redacted);
* the chat format: the instruction and the prompt and completion templates the rows were rendered with;
* a fingerprint of the data split: for the train and the validation rows, their count and a digest of
  their token ids and labels (``medllm.data.fingerprint``).

A resume compares it with the config it is given (``medllm.training.resume``); eval.py reads it back
(``medllm.evaluation.run_settings``) to score the adapter with the model, data and prompt it was trained
with. ``format`` versions the layout: a record of another format is refused, never guessed at. Imports
stay light (no torch, transformers or peft): eval.py reads records before it picks the backend.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medllm.config.secrets import redact_secrets
from medllm.errors import MedllmError
from medllm.runs.atomic import write_atomically

RECORD_FILE = "medllm_run.json"
RECORD_FORMAT = 1


class RunRecordError(MedllmError):
    """A run record that can't be read; the message names the file."""


def base_model(model_cfg: DictConfig) -> dict[str, Any]:
    """What identifies the frozen base the adapter was trained on (the tiny model: its sizes and seed)."""
    tiny = model_cfg.get("tiny") if model_cfg.get("name_or_path") is None else None
    return {
        "name_or_path": model_cfg.get("name_or_path"),
        "revision": model_cfg.get("revision"),
        "tiny": OmegaConf.to_container(tiny, resolve=True) if tiny is not None else None,
    }


def lora_shape(lora_cfg: DictConfig) -> dict[str, Any]:
    return {"r": int(lora_cfg.r), "alpha": lora_cfg.alpha, "target_modules": sorted(lora_cfg.target_modules)}


@dataclass(frozen=True)
class RunRecord:
    base_model: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, secrets redacted
    chat_format: dict[str, Any] = field(default_factory=dict)  # instruction, generation_prompt, completion
    data_split: dict[str, Any] = field(default_factory=dict)  # train / val: {rows, digest}
    format: int = RECORD_FORMAT

    @classmethod
    def of_config(cls, cfg: DictConfig) -> RunRecord:
        """The record of a run with this config, before its data is prepared (no chat format, no split)."""
        config = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
        return cls(base_model=base_model(cfg.model), lora=lora_shape(cfg.model.lora), config=config)

    def with_data(self, chat_format: dict[str, Any], data_split: dict[str, Any]) -> RunRecord:
        """The record with the chat format and data split the run trained on (an instruction may hold a token's
        text too: redacted)."""
        return dataclasses.replace(self, chat_format=redact_secrets(chat_format), data_split=data_split)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> RunRecord:
        """The record as ``as_dict`` gave it (parts an older record lacks left empty)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})

    def write(self, adapter_dir: Path) -> Path:
        """Save the record beside the adapter in ``adapter_dir``; returns its path."""
        path = Path(adapter_dir) / RECORD_FILE
        write_atomically(path, json.dumps(self.as_dict(), indent=2, ensure_ascii=False))
        return path

    @classmethod
    def read(cls, adapter_dir: str | Path) -> RunRecord | None:
        """The record saved with an adapter; None for an adapter without one (an older run, or made by hand)."""
        path = Path(adapter_dir).expanduser() / RECORD_FILE
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunRecordError(f"{path}: not a readable run record ({err}); restore it or delete it.") from None
        if not isinstance(value, dict) or not isinstance(value.get("config"), dict):
            raise RunRecordError(f"{path}: not a medllm run record (no 'config'); restore it or delete it.")
        if value.get("format", RECORD_FORMAT) != RECORD_FORMAT:
            raise RunRecordError(
                f"{path}: a run record of format {value['format']}, not {RECORD_FORMAT}: written by another version "
                "of medllm."
            )
        return cls.from_dict(value)
