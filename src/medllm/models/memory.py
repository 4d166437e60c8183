"""The peak GPU memory of training, estimated before it starts, and so whether gradient checkpointing is needed.

For a Llama of ``L`` layers, hidden size ``h``, intermediate size ``i`` and vocabulary ``V``, trained with
LoRA on micro-batches of ``T`` tokens, the peak is about::

    memory allocated when planning (the base's weights)
    + the LoRA state: weights, gradients and two AdamW moments, fp32 (16 bytes a parameter)
    + T x (the layers' activations kept for the backward pass, per token
           + the loss's, per token: 16 h bytes with Unsloth's chunked loss, 14 V with full logits)
    + WORKSPACE_GIB

where a token's activations take ``L x A`` bytes without checkpointing (``A = (4h + 3i) x 2``, the bf16
values one decoder layer keeps with LoRA on all projections), ``L x 2h + A`` with checkpointing (each
layer's input kept, one layer recomputed at a time) and ``A`` with Unsloth's offloaded checkpointing (the
layers' inputs wait in CPU memory). Fitted on the R1-Distill-Llama-8B shape, QLoRA r16, Unsloth (peak
allocated, H100 and H200): 8.05 GiB with offloaded checkpointing and 36.14 GiB without at 4 x 2,048
tokens, 7.32 GiB offloaded at 3 x 2,048 packed; each within 0.2 GiB of the estimate.

``gradient_checkpointing=auto`` turns checkpointing off where that peak fits the GPU with a margin, and
otherwise uses offloaded checkpointing. ``MEDLLM_MEMORY_CAP_GIB`` (environment) plans as if the GPU had
that many GiB in all: a smaller card simulated on a larger one, or room left for another process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from medllm.config.inputs import CAP_VARIABLE, memory_cap_gib
from medllm.models.lora import LoraSpec

log = logging.getLogger(__name__)

WORKSPACE_GIB = 0.5  # cuBLAS workspaces, the loss's chunk, rotary tables: the fit's constant
# ``auto`` leaves this much beside the estimate: the allocator's cache above what is allocated, the CUDA
# context, and estimates' error. Missing: an out-of-memory error mid-run; too much: a slower run.
MARGIN_GIB = 2.0
MARGIN_FRACTION = 0.1  # of the memory that training adds to the base
LORA_STATE_BYTES = 16  # fp32 weight, gradient and two AdamW moments per LoRA parameter
UNSLOTH_LOSS_BYTES_PER_HIDDEN = 16  # Unsloth's fused loss: logits in chunks, a few hidden-size vectors a token
# transformers' loss: bf16 logits, their fp32 copy, fp32 log-probabilities and the fp32 logits' gradient
FULL_LOGITS_BYTES_PER_VOCAB = 14


@dataclass(frozen=True)
class CheckpointingPlan:
    setting: bool | str  # what the backend is given: False, True or "unsloth"
    estimate_gib: float | None = None  # estimated peak of training with `setting` (on a GPU or under a cap)
    free_gib: float | None = None  # the free memory "auto" planned with (capped by MEDLLM_MEMORY_CAP_GIB)
    memory_cap_gib: float | None = None


def activation_bytes_per_token(config, setting: bool | str) -> float:
    """Bytes of activations a token keeps on the GPU through the layers, for a checkpointing setting."""
    layer = (4 * config.hidden_size + 3 * config.intermediate_size) * 2
    if setting is False:
        return config.num_hidden_layers * layer
    if setting == "unsloth":
        return layer
    return config.num_hidden_layers * 2 * config.hidden_size + layer


def lora_state_gib(config, lora: LoraSpec) -> float:
    """The LoRA adapter's weights, gradients and AdamW moments: ``r x (in + out)`` per adapted projection."""
    h, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q, kv = heads * head_dim, config.num_key_value_heads * head_dim
    sizes = {  # (in, out) of each Llama projection
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, config.intermediate_size),
        "up_proj": (h, config.intermediate_size),
        "down_proj": (config.intermediate_size, h),
    }
    per_layer = sum(lora.r * sum(sizes[name]) for name in lora.target_modules if name in sizes)
    return per_layer * config.num_hidden_layers * LORA_STATE_BYTES / 2**30


def estimate_peak_gib(
    config, tokens: int, setting: bool | str, allocated_gib: float, lora: LoraSpec, chunked_loss: bool
) -> float:
    """Estimated peak allocated memory of training with ``setting``, ``tokens`` per micro-batch (see above)."""
    loss = (
        UNSLOTH_LOSS_BYTES_PER_HIDDEN * config.hidden_size
        if chunked_loss
        else FULL_LOGITS_BYTES_PER_VOCAB * config.vocab_size
    )
    per_token = activation_bytes_per_token(config, setting) + loss
    return allocated_gib + lora_state_gib(config, lora) + tokens * per_token / 2**30 + WORKSPACE_GIB


def _memory_seen(cap: float | None) -> tuple[float, float] | None:
    """(allocated, free) GiB on this process's GPU, free capped as if the card had ``cap`` GiB; None with
    neither a GPU nor a cap (a CPU run: nothing to plan)."""
    if torch.cuda.is_available():
        # The GPU the loaders put this process's model on: under torchrun, before Lightning sets the device.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        allocated = torch.cuda.memory_allocated(device) / 2**30
        free = torch.cuda.mem_get_info(device)[0] / 2**30
        if cap is not None:
            free = min(free, cap - torch.cuda.memory_reserved(device) / 2**30)
        return allocated, free
    return (0.0, cap) if cap is not None else None


def plan_checkpointing(
    setting,
    config,
    tokens_per_batch: int | None,
    offloaded: str | bool = "unsloth",
    lora: LoraSpec | None = None,
) -> CheckpointingPlan:
    """What to give the backend for ``model.gradient_checkpointing`` (false | true | unsloth | auto), and
    the peak memory estimated for it.

    ``offloaded`` is the backend's offloaded checkpointing: ``"unsloth"`` (Unsloth, whose loss is chunked)
    or True (transformers, which has none and computes full logits). ``lora`` is the adapter to be trained
    (default: rank 16 on all projections, the 8B experiments' adapter).
    Called after the base is loaded, so the memory it holds is already counted as allocated.
    """
    if setting in (False, "false", None):
        chosen = False
    elif setting == "auto":
        chosen = None
    else:
        chosen = offloaded if setting == "unsloth" else True
    cap = memory_cap_gib()
    seen = _memory_seen(cap) if tokens_per_batch is not None else None
    if seen is None:  # no GPU (or no batch size): no estimate, and "auto" has nothing to save
        return CheckpointingPlan(chosen or False)
    allocated, free = seen
    chunked = offloaded == "unsloth"

    def estimate(s):
        return estimate_peak_gib(config, tokens_per_batch, s, allocated, lora or LoraSpec(r=16, alpha=16), chunked)

    if chosen is not None:
        return CheckpointingPlan(chosen, estimate(chosen), memory_cap_gib=cap)
    without = estimate(False)
    needed = (without - allocated) * (1 + MARGIN_FRACTION) + MARGIN_GIB
    chosen = False if needed <= free else offloaded
    log.info(
        "gradient_checkpointing=auto: without it, peak ~%.1f GiB at %d tokens per micro-batch; %.1f GiB needed "
        "beside the base with the margin, %.3g GiB free%s -> %s",
        without,
        tokens_per_batch,
        needed,
        free,
        f" (capped at {cap:g} GiB by {CAP_VARIABLE})" if cap is not None else "",
        chosen or "off",
    )
    return CheckpointingPlan(chosen, estimate(chosen), free, cap)


def checkpointing_summary(plan: CheckpointingPlan, gpu_peak_gib: float | None) -> dict:
    """The plan beside the peak the GPU measured in training, logged, for the run's summary.

    ``peak_vs_estimate`` (measured / estimated) near 1 says the estimate behind ``auto`` can be trusted.
    """
    ratio = gpu_peak_gib / plan.estimate_gib if plan.estimate_gib and gpu_peak_gib is not None else None
    if plan.estimate_gib is not None:
        measured = "no GPU peak measured" if ratio is None else f"measured {gpu_peak_gib:.2f} GiB ({ratio:.2f}x)"
        log.info("gradient_checkpointing=%s: estimated peak %.2f GiB, %s", plan.setting, plan.estimate_gib, measured)
    return {
        "setting": plan.setting,
        "estimate_gib": plan.estimate_gib,
        "peak_mem_gib": gpu_peak_gib,
        "peak_vs_estimate": ratio,
        "free_gib": plan.free_gib,
        "memory_cap_gib": plan.memory_cap_gib,
    }
