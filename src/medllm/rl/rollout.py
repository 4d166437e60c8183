"""Rollouts: completions sampled from the current policy with the slot-refill decoder evaluation uses.

The decoder (``medllm.generation.decoding``) is built once, on the policy's own modules: the LoRA layers it
runs are the parameters the optimizer updates in place, so each rollout samples from the policy as it is
after the last step (no stale generator, no weights copied). On a GPU its decoding step is compiled once with
CUDA graphs, which replay reading the parameters' current values. Rows refill their slot as they end, so a
long reasoning does not hold up the short ones.

Besides the tokens, each rollout keeps every sampled token's log-probability under the sampling
distribution (temperature applied, before top-p), which the training forward recomputes: their difference
is the decoder/trainer mismatch the step reports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medllm.generation.decoding import Decoder, Sampling
from medllm.generation.hf_generate import special_ids


@dataclass
class Rollout:
    """One batch of completions: ``prompt_ids[i]`` answered by ``completion_ids[i]``.

    ``completion_ids`` are the sampled tokens as trained on: up to and with the EOS that ended the completion
    (its probability is what teaches the policy when to stop), or ``max_completion_length`` tokens for a
    completion cut at the limit (``truncated``). ``texts`` are decoded without the EOS.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]  # the decoder's, one per completion token
    texts: list[str]
    truncated: list[bool]
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(map(len, self.completion_ids))


class Rollouts:
    """Samples completions of ``model`` (a PEFT model) through one decoder sized for ``rows`` completions."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_prompt_length: int,
        max_completion_length: int,
        rows: int,
        batch_size: int | None,
        attention: str = "auto",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos, self.pad = special_ids(tokenizer)
        self.max_completion_length = max_completion_length
        # The model with its LoRA layers in place: what the decoder calls is what the optimizer trains.
        self.decoder = Decoder(
            model.base_model.model,
            max_prompt_length,
            max_completion_length,
            batch_size=batch_size,
            rows_wanted=rows,
            attention=attention,
        )

    def sample(self, prompt_ids: Sequence[list[int]], sampling: Sampling, seed: int) -> Rollout:
        """One completion of each prompt (repeat a prompt for several), in ``prompt_ids``' order."""
        was_training = self.model.training
        self.model.eval()  # no dropout in the sampled policy
        started = time.perf_counter()
        try:
            ids, logprobs = self.decoder.decode(
                list(prompt_ids),
                eos_id=self.eos,
                pad_id=self.pad,
                sampling=sampling,
                seed=seed,
                progress=False,
                with_logprobs=True,
            )
        finally:
            self.model.train(was_training)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        seconds = time.perf_counter() - started
        texts = [self.tokenizer.decode(row, skip_special_tokens=False) for row in ids]
        # A row ends before max_completion_length only at EOS, which the decoder leaves out of ``ids``.
        truncated = [len(row) >= self.max_completion_length for row in ids]
        trained = [row if cut else [*row, self.eos] for row, cut in zip(ids, truncated, strict=True)]
        return Rollout([list(p) for p in prompt_ids], trained, logprobs, texts, truncated, seconds)
