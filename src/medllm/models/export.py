"""Exports of a trained adapter: the base with the adapter merged in (16-bit safetensors), and GGUF.

The merge is done on a 16-bit copy of the base, never on the 4-bit one a QLoRA run trained against:
merging into quantized weights would round the adapter away. GGUF goes through a backend whose models
save it (Unsloth drives llama.cpp's converter and ``llama-quantize``); llama.cpp must be built beforehand
(nothing is fetched).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from peft import PeftModel

from medllm.config.checks import check_gguf
from medllm.models.backends import get_backend

log = logging.getLogger(__name__)


def export_merged_16bit(model_cfg: DictConfig, tokenizer, adapter_dir: Path, out_dir: Path) -> Path:
    """Base (16-bit) + adapter merged into plain weights, saved as safetensors with the tokenizer."""
    base = get_backend(model_cfg.backend).load_base(model_cfg, tokenizer, dtype=torch.bfloat16, quantize=False)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    log.info("merged 16-bit model: %s", out_dir)
    return out_dir


def export_gguf(
    model: torch.nn.Module, tokenizer, backend: str, out_dir: Path, quantization: str, llama_cpp_dir
) -> Path:
    check_gguf(quantization, backend, llama_cpp_dir)
    model.save_pretrained_gguf(str(out_dir), tokenizer, quantization_method=quantization)
    log.info("GGUF (%s): %s", quantization, out_dir)
    return out_dir


def run_exports(export_cfg: DictConfig | None, model_cfg: DictConfig, model, tokenizer, out_dir: Path) -> None:
    """The exports the ``export`` config asks for, after the adapter is saved in ``out_dir/adapter``."""
    if not export_cfg:
        return
    if export_cfg.get("gguf"):  # checked first: a missing llama.cpp should not wait for a 16 GB merge
        export_gguf(model, tokenizer, model_cfg.backend, out_dir / "gguf", export_cfg.gguf, export_cfg.llama_cpp_dir)
    if export_cfg.get("merged_16bit"):
        export_merged_16bit(model_cfg, tokenizer, out_dir / "adapter", out_dir / "merged_16bit")
