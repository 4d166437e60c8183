"""The share of the decode limit: the time reading the weights and the KV cache once per step takes at the card's
bandwidth, checked against the limits worked out for the 8B model (weights 16 GB, 128 KiB of KV a token, H100)."""

from __future__ import annotations

from unittest import mock

import pytest

from medllm.evaluation import speed
from medllm.models.tiny import tiny_llama


def test_the_limit_is_the_8b_models_known_tokens_per_second():
    h100, weights, kv = 3.35e12, 16e9, 128 * 1024
    # batch 64, 64 rows of 2 new tokens each and no prompt: ~13.3k new tokens/s (context ~1 token)
    no_context = speed.limit_seconds(weights, kv, 64, 64, 128, 0, h100)
    assert 128 / no_context == pytest.approx(13.4e3, rel=0.01)
    # the same at a mean context of 1K tokens (prompt 1,023 and one new token each): ~8.8k
    at_1k = speed.limit_seconds(weights, kv, 64, 64, 64, 1023.5, h100)
    assert 64 / at_1k == pytest.approx(8.72e3, rel=0.01)
    assert speed.limit_seconds(weights, kv, 512, 64, 128, 0, h100) == no_context  # slots beyond the rows idle


def test_the_share_is_na_on_the_cpu_and_a_fraction_on_a_known_card(tokenizer):
    model = tiny_llama(tokenizer, seed=0)
    row = {"new_tokens": 1000, "seconds": 2.0, "batch_size": 10, "rows": 10}
    assert speed.bandwidth_share(model, row, prompt_tokens=100) == {"card": "cpu", "bandwidth_share": None}
    with mock.patch.object(speed, "card_bandwidth", return_value=("NVIDIA H100 80GB HBM3", 3.35e12)):
        share = speed.bandwidth_share(model, row, prompt_tokens=100)
    weights = sum(p.numel() * 4 for p in model.parameters()) - model.get_input_embeddings().weight.numel() * 4
    kv = 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head dim 16, float32
    expected = 100 * (weights + 10 * (10 + 50) * kv) / 3.35e12 / 2.0
    assert share["bandwidth_share"] == pytest.approx(expected)
    assert speed.card_bandwidth(model.device) == ("cpu", None)
