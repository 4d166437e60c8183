"""How fast each generation pass ran, against what the card's memory bandwidth allows.

Decoding one token a row is bound by memory: each step reads every weight once (the input embedding only for the
slots' tokens) and each row's KV cache up to its position. A pass of ``new_tokens`` in slots of ``batch_size`` takes
about ``new_tokens / batch_size`` steps, each reading the weights plus ``batch_size`` rows of cache at their mean
context (the prompt and half the new tokens); at the card's bandwidth that is the pass's shortest possible time. The
share reached is that time over the time measured: 100% is the limit, and the rest is host overhead, prefill,
attention compute or idle slots. Where the card's bandwidth is not known (the CPU, an unlisted GPU) the share is
None (n/a).
"""

from __future__ import annotations

from typing import Any

import torch

from medllm.generation.decoding import kv_bytes_per_token

# Peak memory bandwidth in bytes/s, by the name CUDA reports (the first listed name found in it wins).
BANDWIDTH = {
    "H200": 4.8e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,  # SXM
    "A100-SXM4-80GB": 2.039e12,
    "A100-PCIE-80GB": 1.935e12,
    "A100": 1.555e12,  # 40 GB
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10G": 0.6e12,
    "RTX 4090": 1.008e12,
}


def card_bandwidth(device: torch.device) -> tuple[str, float | None]:
    """The card's name and peak bandwidth (None where unknown: the CPU, an unlisted GPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((bw for key, bw in BANDWIDTH.items() if key in name), None)


def bandwidth_share(model: Any, row: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    """The card, its bandwidth and the share of the decode limit a pass's ``row`` (``Pass.as_row``) reached."""
    card, bandwidth = card_bandwidth(model.device)
    out: dict[str, Any] = {"card": card, "bandwidth_share": None}
    if bandwidth is None or not row["new_tokens"] or not row["seconds"]:
        return out
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embedding.data_ptr() != head.data_ptr():  # a step reads one row of the input embedding per slot, not all
        weights -= embedding.numel() * embedding.element_size()
    kv = kv_bytes_per_token(model.config, model.dtype)
    mean_prompt = prompt_tokens / max(row["rows"], 1)
    limit = limit_seconds(weights, kv, row["batch_size"], row["rows"], row["new_tokens"], mean_prompt, bandwidth)
    return out | {"bandwidth_share": limit / row["seconds"], "bandwidth_tb_s": bandwidth / 1e12}


def limit_seconds(
    weight_bytes: float,
    kv_per_token: float,
    batch_size: int,
    rows: int,
    new_tokens: int,
    mean_prompt: float,
    bandwidth: float,
) -> float:
    """The shortest time ``new_tokens`` of ``rows`` can decode in ``batch_size`` slots at ``bandwidth`` bytes/s:
    ``new_tokens / batch`` steps, each reading the weights and ``batch`` rows of cache at their mean context."""
    batch = max(1, min(batch_size, rows))
    context = mean_prompt + new_tokens / max(rows, 1) / 2
    return new_tokens / batch * (weight_bytes + batch * context * kv_per_token) / bandwidth
