"""Fixtures of the GPU tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A small random Llama (head dim 64, as Unsloth's kernels expect; 4 query heads sharing 2 key/value
    heads, as the 8B's 32 share 8) saved as a hub-style folder."""
    from medllm.models.tiny import tiny_llama, tiny_tokenizer

    path = tmp_path_factory.mktemp("small_llama")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
