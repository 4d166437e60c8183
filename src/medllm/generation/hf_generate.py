"""Batched generation of R1 completions through transformers' ``generate``, and streaming to the terminal.

Prompts are padded on the left so every row's last prompt token sits at the same position and the
new tokens follow it directly; with right padding the model would continue from pad tokens. The
completions are decoded with special tokens kept, cut at the first EOS: ``</think>`` is a special
token in some R1 tokenizers (the tiny one), and dropping it would hide whether the reasoning closed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TextStreamer


@contextmanager
def _left_padding(tokenizer: Any):
    """The tokenizer pads on the left inside the block; its own setting comes back afterwards."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


@contextmanager
def _eval_mode(model: Any):
    """Eval mode (no dropout) and no autograd inside the block; the model's mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def special_ids(tokenizer: Any) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; generation would never stop")
    pad = tokenizer.pad_token_id
    return eos, eos if pad is None else pad


def _until_eos(ids: list[int], eos: int) -> list[int]:
    """New tokens up to the first EOS: what the row generated (a row that ended is padded after its EOS)."""
    return ids[: ids.index(eos)] if eos in ids else ids


def decode_completion(tokenizer: Any, ids: list[int], pad: int) -> str:
    """A completion's text: pad tokens dropped (``generate`` can't tell a generated one from padding), special
    tokens such as ``</think>`` kept."""
    return tokenizer.decode([i for i in ids if i != pad], skip_special_tokens=False)


def _decode(tokenizer: Any, ids: list[int], eos: int, pad: int) -> str:
    """New tokens up to the first EOS, pad tokens dropped, special tokens such as ``</think>`` kept."""
    return decode_completion(tokenizer, _until_eos(ids, eos), pad)


def _sampling_args(do_sample: bool, temperature: float, top_p: float) -> dict[str, Any]:
    """Explicit decoding settings: R1 checkpoints ship a generation config that samples by default."""
    if do_sample:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int = 512,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 0.6,
    top_p: float = 0.95,
    num_samples: int = 1,
    seed: int = 0,
    progress: bool = True,
    with_ids: bool = False,
) -> list[list[str]] | tuple[list[list[str]], list[list[list[int]]]]:
    """``num_samples`` completions per prompt (token ids of rendered prompts, BOS included); ``with_ids``: also
    their new token ids (up to the first EOS, any pad token the model generated kept), as ``(texts, ids)``.

    Prompts are batched longest first, so rows of a batch need little padding, and returned in the
    caller's order. Sampling is seeded once, so a run is repeatable on the same hardware.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    if num_samples > 1 and not do_sample:
        raise ValueError("num_samples > 1 needs do_sample=True: greedy decoding gives the same completion each time")
    eos, pad = special_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[list[str]] = [[] for _ in prompts]
    result_ids: list[list[list[int]]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    with _left_padding(tokenizer), _eval_mode(model):
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
            encoded = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, return_tensors="pt").to(model.device)
            out = model.generate(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                eos_token_id=eos,
                pad_token_id=pad,
                **_sampling_args(do_sample, temperature, top_p),
            )
            new_tokens = out[:, encoded["input_ids"].shape[1] :].tolist()
            for row, ids in enumerate(new_tokens):  # rows come grouped: a prompt's samples are adjacent
                generated = _until_eos(ids, eos)
                results[batch[row // num_samples]].append(decode_completion(tokenizer, generated, pad))
                result_ids[batch[row // num_samples]].append(generated)
    return (results, result_ids) if with_ids else results


def stream_answer(model: Any, tokenizer: Any, prompt: list[int], max_new_tokens: int = 512) -> str:
    """Greedy-decode one prompt (token ids), printing reasoning and answer as they come; returns the completion."""
    eos, pad = special_ids(tokenizer)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
    with _eval_mode(model):
        input_ids = torch.tensor([prompt], device=model.device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            streamer=streamer,
            **_sampling_args(False, 0.0, 1.0),
        )
    return _decode(tokenizer, out[0, input_ids.shape[1] :].tolist(), eos, pad)
