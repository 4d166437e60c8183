"""Gradient checkpointing on or off, from an estimate of the activation memory it would save.

Without checkpointing, the backward pass keeps each layer's activations: for a Llama with LoRA on all
projections, about ``4 x hidden + 3 x intermediate`` bf16 values per token per layer (measured on the
R1-Distill-Llama-8B shape: 28 GiB more at batch 4 x 2048 tokens, 36 GiB in all, against 8 GiB with
Unsloth's offloaded checkpointing). ``auto`` turns checkpointing off when that fits the GPU's free
memory with a margin, and otherwise uses Unsloth's offloaded checkpointing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MARGIN_GIB = 4.0  # allocator fragmentation, the loss's logits chunks, CUDA context


@dataclass(frozen=True)
class CheckpointingPlan:
    setting: bool | str  # what the backend is given: False, True or "unsloth"
    estimated_peak_gib: float | None = None  # without checkpointing, when "auto" decided
    free_gib: float | None = None


def activation_gib(config, tokens: int) -> float:
    per_token_per_layer = 4 * config.hidden_size + 3 * config.intermediate_size
    return per_token_per_layer * 2 * config.num_hidden_layers * tokens / 2**30


def plan_checkpointing(setting, config, tokens_per_batch: int | None, offloaded: str | bool = "unsloth"):
    """What to give the backend for ``model.gradient_checkpointing`` (false | true | unsloth | auto).

    Called after the base is loaded, so the memory it holds is already counted as used.
    """
    if setting in (False, "false", None):
        return CheckpointingPlan(False)
    if setting != "auto":
        return CheckpointingPlan(offloaded if setting == "unsloth" else True)
    if not torch.cuda.is_available() or tokens_per_batch is None:
        return CheckpointingPlan(False)
    free, _ = torch.cuda.mem_get_info()
    free_gib = free / 2**30
    needed = activation_gib(config, tokens_per_batch) + MARGIN_GIB
    estimated_peak = torch.cuda.memory_allocated() / 2**30 + needed
    plan = CheckpointingPlan(False if needed < free_gib else offloaded, estimated_peak, free_gib)
    log.info(
        "gradient_checkpointing=auto: without it ~%.1f GiB of activations for %d tokens per micro-batch "
        "(estimated peak %.1f GiB), %.1f GiB free -> %s",
        needed - MARGIN_GIB,
        tokens_per_batch,
        estimated_peak,
        free_gib,
        plan.setting or "off",
    )
    return plan
