"""Checks of a composed config that run before any data or model is loaded.

Each failure is a one-line message that names the key and says what to change.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from medllm.errors import MedllmError
from medllm.models.export import ExportError, find_llama_cpp


class ConfigError(MedllmError):
    """A config value that can't work; the message names the key."""


def _positive(cfg: DictConfig, key: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value.get(part) if value is not None else None
    if value is None:
        return
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}={value} must be a number > 0; set {key}=<positive value>.")


def _writable(path: Path) -> bool:
    path = path.resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def check_train_config(cfg: DictConfig) -> None:
    for key in ("optimizer.lr", "model.lora.r", "model.lora.alpha", "max_seq_length", "data.batch_size"):
        _positive(cfg, key)
    if cfg.trainer.get("accumulate_grad_batches", 1) < 1:
        raise ConfigError("trainer.accumulate_grad_batches must be >= 1.")
    if cfg.data.get("source") == "local":
        if OmegaConf.is_missing(cfg.data, "path") or not cfg.data.path:
            raise ConfigError("data=local needs data.path=<a .json, .jsonl, .parquet or .csv file>.")
        if not Path(str(cfg.data.path)).expanduser().is_file():
            raise ConfigError(f"data.path={cfg.data.path}: no such file.")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    precision = str(cfg.trainer.get("precision", "32-true"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use hardware=cpu (and model=tiny_llama or "
            "model=r1_distill_llama_8b_hf) on this machine."
        )
    if precision in ("16", "16-mixed", "16-true"):
        raise ConfigError("trainer.precision=16-mixed is not supported (loss scaling); use bf16-mixed or 32-true.")
    if precision.startswith("bf16") and accelerator in ("gpu", "cuda") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision} but this GPU has no bfloat16; use trainer.precision=32-true.")
    if precision == "bf16-true" and cfg.model.get("load_in_4bit"):
        raise ConfigError("trainer.precision=bf16-true casts and breaks the 4-bit base; use bf16-mixed.")
    out_dir = Path(cfg.paths.output_dir)
    if not _writable(out_dir):
        raise ConfigError(f"paths.output_dir={out_dir} is not writable; set hydra.run.dir=<a writable folder>.")
    gguf = cfg.get("export", {}).get("gguf")
    if gguf and cfg.model.backend != "unsloth":
        raise ConfigError(f"export.gguf={gguf} needs model.backend=unsloth; or use export.merged_16bit=true.")
    if gguf:
        try:
            find_llama_cpp(cfg.export.llama_cpp_dir)
        except ExportError as err:
            raise ConfigError(str(err)) from None
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "auto") and not os.path.isfile(str(ckpt)):
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint; give a .ckpt file, or ckpt_path=auto.")
