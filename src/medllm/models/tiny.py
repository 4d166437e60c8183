"""A small random Llama and a tokenizer trained in-process: the model of smoke runs and tests.

Both are deterministic: the tokenizer is trained on the packaged sample rows, the weights are drawn
from a seeded generator, so eval.py rebuilds exactly the base a smoke run trained its adapter on.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from medllm.data.chat_format import BOS, EOS, PAD, SPECIAL_TOKENS
from medllm.data.records import sample_rows

# Weight std of the tiny model. transformers' 0.02 leaves logits so flat after the final norm that a
# LoRA adapter can barely move the loss; 0.1 gives it a base that LoRA visibly adapts in a few steps.
INIT_RANGE = 0.1


def train_r1_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the R1 special tokens, trained on ``texts``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="right"
    )


@functools.cache
def _sample_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    texts = [" ".join(row.values()) for row in sample_rows()]
    return train_r1_tokenizer(texts, vocab_size)


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The tokenizer of ``model=tiny_llama`` (a fresh copy; training it once per process)."""
    return copy.deepcopy(_sample_tokenizer(vocab_size))


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    attn_implementation: str = "sdpa",
) -> LlamaConfig:
    """The config of a tiny Llama sized to ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=INIT_RANGE,
    )
    config._attn_implementation = attn_implementation
    return config


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **sizes) -> LlamaForCausalLM:
    """A randomly initialised Llama sized to ``tokenizer`` (``sizes``: those of ``tiny_config``); the same
    ``seed`` gives the same weights."""
    config = tiny_config(tokenizer, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
