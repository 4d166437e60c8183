"""eval.py's decoding step on a real GPU: FlexAttention's CUDA kernels read the same cache as SDPA
(skipped without a CUDA GPU). On the CPU both go through other kernels (tests/unit/test_decoding.py)."""

from __future__ import annotations

import pytest
import torch

from medllm.generation.decoding import KV_BLOCK, Decoder
from medllm.models.tiny import tiny_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Prompts that end in the first, second and third cache block, so rows read different numbers of whole blocks.
PROMPT_LENGTHS = (40, KV_BLOCK + 3, 2 * KV_BLOCK + 7, 2 * KV_BLOCK + 60)


def step_logits(model, prompts: list[list[int]], attention: str, steps: int = 4) -> torch.Tensor:
    """The compiled step's logits for ``steps`` tokens after the prompts (the same tokens whatever the
    attention, so both read the same cache); the first steps compile and capture, the last replay."""
    decoder = Decoder(model, max(map(len, prompts)), steps, len(prompts), compile=True, attention=attention)
    tokens = torch.tensor([[p[-1]] for p in prompts], device=model.device)
    out = []
    with torch.inference_mode():
        decoder._prefill(prompts, list(range(len(prompts))), pad_id=0)
        decoder.columns.copy_(torch.tensor([len(p) for p in prompts]))
        for _ in range(steps):
            out.append(decoder.step(tokens).clone())
            decoder.columns += 1
    return torch.stack(out)


def test_flex_decoding_reads_each_rows_cache_as_sdpa_does(tokenizer):
    model = tiny_llama(
        tokenizer, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512, seed=0
    )
    model = model.to("cuda", torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, len(tokenizer), (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    sdpa = step_logits(model, prompts, "sdpa")
    flex = step_logits(model, prompts, "flex")
    assert sdpa.isfinite().all()
    torch.testing.assert_close(flex, sdpa, atol=1e-3, rtol=1e-3)
