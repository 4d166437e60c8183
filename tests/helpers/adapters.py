"""Adapters of the tiny model, made without training, for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import get_peft_model
from safetensors.torch import save_file

from medllm.models.lora import LoraSpec
from medllm.models.tiny import tiny_llama, tiny_tokenizer


def mark_adapter(folder: Path) -> Path:
    """The two files that make a folder an adapter to eval.py's adapter search: a LoRA config and weights that
    open (rank 2, one tensor); no model is built from them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 2}')
    save_file({"q_proj.lora_A.weight": torch.zeros(2, 4)}, folder / "adapter_model.safetensors")
    return folder


def save_adapter(folder: Path, zero: bool = False, seed: int = 1) -> Path:
    """A tiny-model adapter with random (or all-zero) LoRA updates, saved as train.py saves one."""
    tokenizer = tiny_tokenizer()
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraSpec(r=4, alpha=8).peft_config())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.zeros_like(param) if zero else torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(folder)
    return folder


QUESTIONS = [
    "What causes fever?",
    "A 45-year-old man has crushing chest pain radiating to the left arm with sweating. What is the next step?",
    "Dose?",
    "Which drug is first line for type 2 diabetes in a patient with normal kidney function?",
    "Is aspirin useful after a stroke?",
]
