"""Trains one packed row of five examples through Unsloth three ways and prints the loss and LoRA
gradients' agreement as JSON: each example on its own (the reference), packed through Unsloth's
per-segment SDPA, and packed through torch's varlen flash kernel (medllm's ``unsloth_varlen`` where
this torch lacks ``enable_gqa``). Runs in a fresh process: Unsloth patches transformers on import.

    python -m tests.gpu.packed_attention_check MODEL_DIR
"""

from __future__ import annotations

import json
import sys

import torch
import unsloth  # noqa: F401  (before transformers and peft)
from unsloth import FastLanguageModel
from unsloth.utils import attention_dispatch

from medllm.data.chat_format import IGNORE_INDEX
from medllm.data.collate import PackCollator
from medllm.models import unsloth_varlen

# Two runs of equal lengths and three of their own, so the per-segment path batches some and not others.
LENGTHS = (37, 64, 64, 21, 70)


class Counted:
    """Counts the calls of ``name`` in Unsloth's attention dispatch, proving which path ran."""

    def __init__(self, name: str) -> None:
        self.inner, self.calls = getattr(attention_dispatch, name), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def loss_and_grads(model, batches: list[dict]) -> tuple[float, torch.Tensor]:
    """Token-weighted mean loss over ``batches`` and its gradient on every LoRA weight, flattened."""
    model.zero_grad(set_to_none=True)
    trained = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    total = 0.0
    for batch, n in zip(batches, trained):
        inputs = {k: v.cuda() for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")}
        loss = model(**inputs).loss * n / sum(trained)
        loss.backward()
        total += loss.item()
    grads = [p.grad.flatten().float() for name, p in model.named_parameters() if "lora_" in name]
    return total, torch.cat(grads)


def main(path: str) -> None:
    model, _ = FastLanguageModel.from_pretrained(path, max_seq_length=512, load_in_4bit=False, dtype=torch.bfloat16)
    model = FastLanguageModel.get_peft_model(
        model, r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], random_state=0
    )
    with torch.no_grad():  # LoRA B starts at zero, where A gets no gradient: give both one
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    model.train()

    generator = torch.Generator().manual_seed(0)
    rows = []
    for n in LENGTHS:
        ids = torch.randint(5, 500, (n,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]})
    packed = PackCollator(pad_token_id=0)([rows])
    alone = [PackCollator(pad_token_id=0)([[row]]) for row in rows]

    loss_alone, grads_alone = loss_and_grads(model, alone)
    unsloths_own = attention_dispatch._TORCH_VARLEN_ATTN  # set where this torch's varlen_attn takes enable_gqa
    attention_dispatch._TORCH_VARLEN_ATTN = None
    segments = attention_dispatch._sdpa_packed_segments = Counted("_sdpa_packed_segments")
    loss_segments, grads_segments = loss_and_grads(model, [packed])
    installed = unsloth_varlen.install()
    if not installed:
        attention_dispatch._TORCH_VARLEN_ATTN = unsloths_own
    varlen = None
    if attention_dispatch._TORCH_VARLEN_ATTN is not None:
        varlen = attention_dispatch._TORCH_VARLEN_ATTN = Counted("_TORCH_VARLEN_ATTN")
    loss_varlen, grads_varlen = loss_and_grads(model, [packed])

    def error(grads: torch.Tensor) -> float:
        return ((grads - grads_alone).norm() / grads_alone.norm()).item()

    print(
        json.dumps(
            {
                "medllm_installed": installed,
                "segment_calls": segments.calls,
                "varlen_calls": varlen.calls if varlen else 0,
                "loss_alone": loss_alone,
                "loss_segments": loss_segments,
                "loss_varlen": loss_varlen,
                "grad_error_segments": error(grads_segments),
                "grad_error_varlen": error(grads_varlen),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
