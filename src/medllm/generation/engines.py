"""The two ways evaluation runs a base and its adapters, one model at a time.

The merged engine (``medllm.generation.merged``) merges each adapter into a 16-bit copy of the base and
decodes with the slot-refill decoder (``medllm.generation.decoding``). The peft engine loads the model as
trained (4-bit, the adapter unmerged) through its backend and generates with transformers, scoring the base
with the adapter switched off (``disable_adapter``). ``resolve_engine`` says which one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from medllm.config.schema import scores_held_out
from medllm.generation.decoding import kv_bytes_per_token
from medllm.models.backends import get_backend

log = logging.getLogger(__name__)

# The merged engine is chosen by `auto` where the 16-bit weights and this many rows of KV cache fit.
MIN_MERGED_ROWS = 8


def resolve_engine(cfg: DictConfig) -> str:
    """``merged`` or ``peft``: what ``engine=auto`` means for this run and this machine.

    Held-out loss is always measured on the model as trained (peft). Otherwise the merged engine runs
    wherever its 16-bit weights fit beside ``MIN_MERGED_ROWS`` rows of KV cache; a GPU too small for
    that falls back to the 4-bit model with the adapter unmerged.
    """
    if scores_held_out(cfg):
        return "peft"
    if cfg.engine != "auto":
        return cfg.engine
    if not torch.cuda.is_available():
        return "merged"
    from transformers import AutoModelForCausalLM

    config = get_backend(cfg.model.backend).base_config(cfg.model)
    with torch.device("meta"):
        weights = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) * 2
    cache = kv_bytes_per_token(config, torch.bfloat16) * (cfg.max_new_tokens + 1024) * MIN_MERGED_ROWS
    free, _ = torch.cuda.mem_get_info()
    if weights + cache < 0.9 * free:
        return "merged"
    log.warning(
        "engine=auto: the 16-bit weights (%.1f GiB) and a KV cache (%.1f GiB) don't fit the %.1f GiB free: "
        "generating with the 4-bit model and the adapter unmerged (slower)",
        weights / 2**30,
        cache / 2**30,
        free / 2**30,
    )
    return "peft"


def peft_model_cfg(model_cfg: DictConfig) -> DictConfig:
    """The model config for the peft engine, naming the backend that can load it in this process (Unsloth only
    where the entry point imported it first)."""
    backend = get_backend(model_cfg.backend).in_this_process()
    if backend.name != model_cfg.backend:
        model_cfg = model_cfg.copy()
        with open_dict(model_cfg):
            model_cfg.backend = backend.name
    return model_cfg


def each_peft_model(
    model_cfg: DictConfig, tokenizer: Any, adapters: list[str], include_base: bool = True, seed: int = 0
) -> Iterator[tuple[str | None, Any]]:
    """``(adapter, model)`` for the base (adapter None; unless ``include_base`` is false and adapters are given),
    then each adapter, as ``model_cfg``'s backend loads them for inference.

    One base is loaded; the first adapter comes with it (or, with none, a fresh LoRA whose update is
    zero and is switched off anyway). Later adapters are loaded beside the active one, activated, and
    the previous one is deleted, so at most two are in memory. The model a step yields is only valid
    until the next step.
    """
    model = get_backend(model_cfg.backend).load_model(
        model_cfg, tokenizer, adapter_path=adapters[0] if adapters else None, trainable=False, seed=seed
    )
    model.eval()
    if include_base or not adapters:
        with model.disable_adapter():
            yield None, model
    active = model.active_adapter
    for number, path in enumerate(adapters):
        if number > 0:
            name = f"adapter_{number}"
            model.load_adapter(path, adapter_name=name, is_trainable=False)
            model.set_adapter(name)
            model.delete_adapter(active)
            active = name
            model.eval()
        yield path, model


def to_accelerator(model: Any, accelerator: str) -> Any:
    """A model the loader left on the CPU (the tiny one) moves to the GPU when the hardware asks for one."""
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available() and model.device.type == "cpu":
        return model.to("cuda")
    return model
