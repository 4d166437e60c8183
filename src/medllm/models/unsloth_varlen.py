"""Packed rows through torch's variable-length flash kernel where Unsloth waits for torch 2.12.

A packed batch is one sequence holding several examples, its ``position_ids`` restarting at each.
Unsloth 2026.10 attends it with ``torch.nn.attention.varlen.varlen_attn`` (one flash call a layer)
only when that function takes ``enable_gqa``, which torch 2.12 added. On torch 2.11 it falls back to
one SDPA call per run of equal-length examples, with the slicing and concatenation around each: at
medical-o1 lengths a 3 x 2,048-token step makes thousands more kernel launches and turns host-bound
(see README, "Packed rows").

torch 2.11's ``varlen_attn`` already hands key and value as they are to the flash kernel, which shares
each key/value head among its group of query heads (grouped-query attention) by itself; only the
argument is missing. ``install`` gives Unsloth a ``varlen_attn`` that takes it, so Unsloth's own varlen
path runs. Unsloth's switch for that path, ``UNSLOTH_TORCH_VARLEN=0``, turns this off too.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch


def _turned_off() -> bool:
    return os.environ.get("UNSLOTH_TORCH_VARLEN", "1").lower() in ("0", "false", "no", "off")


def taking_gqa(varlen_attn: Callable) -> Callable:
    """``varlen_attn`` with the ``enable_gqa`` argument of torch 2.12: grouped key/value heads pass
    through unchanged, and without the flag they must match the query's heads, as in torch 2.12."""

    def varlen_attn_taking_gqa(
        query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
    ):
        heads, kv_heads = query.shape[1], key.shape[1]
        if kv_heads != heads and not (enable_gqa and heads % kv_heads == 0):
            raise ValueError(f"{heads} query heads and {kv_heads} key/value heads need enable_gqa=True")
        return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size)

    return varlen_attn_taking_gqa


def install() -> bool:
    """Lets Unsloth's packed attention use torch's varlen kernel where only ``enable_gqa`` is missing;
    True when it was installed now. Call after ``import unsloth``."""
    try:
        from unsloth.utils import attention_dispatch
    except ImportError:  # an Unsloth laid out otherwise: leave it as it is
        return False
    # Unsloth already attends through varlen, or is not the Unsloth this was written against.
    if getattr(attention_dispatch, "_TORCH_VARLEN_ATTN", "missing") is not None:
        return False
    if _turned_off() or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # a torch without torch.nn.attention.varlen
        return False
    parameters = inspect.signature(varlen_attn).parameters
    # Without window_size it is older than Unsloth's call; with enable_gqa Unsloth could have used it and
    # chose not to (its switch, or no flash kernel in this build).
    if "window_size" not in parameters or "enable_gqa" in parameters:
        return False
    if not getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)():
        return False
    attention_dispatch._TORCH_VARLEN_ATTN = taking_gqa(varlen_attn)
    return True
