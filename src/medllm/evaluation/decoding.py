"""Batched decoding on a static KV cache, with one compiled forward per new token.

``model.generate`` syncs with the host at every step (stopping criteria, finished rows) and, with a
static cache, still grows its attention mask by a column a step. Here every step has the same shapes:
the cache and the attention mask are sized once for the longest prompt plus ``max_new_tokens``, a batch
is always ``batch_size`` rows (a short last batch is filled with copies of a prompt whose outputs are
dropped), and the host looks at the finished rows only every ``SYNC_EVERY`` steps. On a GPU the forward
is compiled with CUDA graphs (``torch.compile(mode="reduce-overhead")``) once for the whole run.

Prompts are decoded longest first, so the rows of a batch need little padding; a batch stops as soon
as all its rows have produced EOS or their budget of new tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface, AttentionMaskInterface, StaticCache, TopPLogitsWarper
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

SYNC_EVERY = 16
# The cache length is rounded up to this: SDPA's memory-efficient kernel wants aligned mask rows.
CACHE_ALIGN = 64
GROUPED_ATTENTION = "medllm_grouped_sdpa"
# Without a GPU there is no free-memory figure to size batches from.
CPU_BATCH_SIZE = 16
# Of the GPU memory free once the weights are loaded, the share `batch_size=auto` fills; the rest is
# headroom for the allocator's fragmentation and the compiled step's graph pool.
FREE_MEMORY_SHARE = 0.8
# Rows in one batch at most: beyond this the decode step is compute-bound and gains little.
MAX_BATCH_SIZE = 512


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (the default) or sampled with temperature and top-p."""

    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(-1)
        scores = TopPLogitsWarper(self.top_p)(None, logits.float() / self.temperature)
        return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA that decodes one token a row without copying keys and values for every query head.

    With an attention mask (a static cache always has one) transformers' SDPA repeats the cached keys and
    values once per query head of a group (4x for Llama 8B) at every layer and step: at a batch of 64
    and 756 cached tokens that is most of a step's memory traffic. Here the query heads that share a key
    head become rows of one query instead, so the cache is read once. Prompts (more than one new token
    a row) go through transformers' SDPA.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, new, dim = query.shape
    if new != 1 or groups == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    grouped = query.view(batch, heads // groups, groups, dim)  # head h uses key head h // groups
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register(GROUPED_ATTENTION, grouped_sdpa)
AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token holds in the cache, over all layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def balanced(rows: int, most: int) -> int:
    """The smallest batch that needs no more batches than ``most`` rows a batch would.

    Every batch has the same shape (a short last one is filled with copies), so 513 rows at most 256 a
    batch run as 3 batches of 171, not 3 of 256 of which the last decodes 255 copies.
    """
    batches = math.ceil(max(rows, 1) / most)
    return math.ceil(max(rows, 1) / batches)


def auto_batch_size(model: Any, cache_len: int, rows: int, prompt_len: int) -> int:
    """As many rows as fit ``FREE_MEMORY_SHARE`` of the free GPU memory (KV cache and prefill activations),
    spread evenly over the batches that ``rows`` need."""
    if model.device.type != "cuda":
        return balanced(rows, CPU_BATCH_SIZE)
    torch.cuda.empty_cache()  # loading and rounding the weights leave freed blocks behind
    free, _ = torch.cuda.mem_get_info(model.device)
    config = model.config
    per_row = kv_bytes_per_token(config, model.dtype) * cache_len
    # Prefill holds a layer's activations for every prompt token (MLP gate, up and product; queries, keys,
    # values, output) and its attention mask.
    per_row += prompt_len * ((3 * config.intermediate_size + 4 * config.hidden_size) * model.dtype.itemsize + cache_len)
    fits = int(free * FREE_MEMORY_SHARE) // per_row
    if fits < 1:
        raise torch.OutOfMemoryError(
            f"one row of {cache_len} tokens needs {per_row / 2**30:.1f} GiB of KV cache and activations, "
            f"{free / 2**30:.1f} GiB are free: lower max_new_tokens, or use engine=peft"
        )
    return balanced(rows, min(fits, MAX_BATCH_SIZE))


class Decoder:
    """Decodes batches of ``batch_size`` rows into one static cache of ``max_prompt_len + max_new_tokens``.

    Built once per evaluation and reused for every model: the merged engine changes the weights in
    place, so the compiled step (and its CUDA graphs) serve the base and every adapter.
    ``batch_size`` None picks the largest batch that fits (``auto_batch_size``); ``compile`` None
    compiles on a GPU.
    """

    def __init__(
        self,
        model: Any,
        max_prompt_len: int,
        max_new_tokens: int,
        batch_size: int | None = None,
        rows_wanted: int = 1,
        compile: bool | None = None,
    ) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.cache_len = CACHE_ALIGN * math.ceil((max_prompt_len + max_new_tokens) / CACHE_ALIGN)
        self.batch_size = batch_size or auto_batch_size(model, self.cache_len, rows_wanted, max_prompt_len)
        self.cache = StaticCache(config=model.config, max_cache_len=self.cache_len)
        model.set_attn_implementation(GROUPED_ATTENTION)
        config = model.config
        self.cache.early_initialization(  # all of it now, not layer by layer between a prefill's activations
            self.batch_size,
            config.num_key_value_heads,
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            model.dtype,
            model.device,
        )
        self.step = self._forward
        if model.device.type == "cuda" if compile is None else compile:
            self.step = torch.compile(self._forward, mode="reduce-overhead", dynamic=False)

    def _forward(self, tokens, positions, cache_position, attention_mask) -> torch.Tensor:
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            cache_position=cache_position,
            attention_mask=attention_mask,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def decode(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        eos_id: int,
        pad_id: int,
        sampling: Sampling = Sampling(),
        seed: int = 0,
        row_budgets: Sequence[int] | None = None,
        progress: bool = True,
    ) -> list[list[int]]:
        """The new token ids of each prompt (token ids, BOS included), cut before its first EOS.

        ``row_budgets`` caps each row's new tokens below ``max_new_tokens`` (the generation benchmark
        draws R1-like lengths with it; evaluation passes none).
        """
        limit = self.max_new_tokens
        budgets = [min(b, limit) for b in row_budgets] if row_budgets is not None else [limit] * len(prompts)
        longest = max((len(p) for p in prompts), default=0)
        if longest + limit > self.cache_len:
            raise ValueError(f"a prompt of {longest} tokens does not fit a cache of {self.cache_len}")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[list[int]] = [[] for _ in prompts]
        torch.manual_seed(seed)
        bar = tqdm(total=len(prompts), desc="generate", unit="completion", disable=not progress)
        started, new_tokens = time.perf_counter(), 0
        rows = self.batch_size
        for start in range(0, len(order), rows):
            batch = order[start : start + rows]
            filled = batch + [batch[-1]] * (rows - len(batch))  # a full batch keeps the compiled shapes
            ids, lengths = self._batch(
                [prompts[i] for i in filled], [budgets[i] for i in filled], eos_id, pad_id, sampling
            )
            for row, index in enumerate(batch):
                results[index] = ids[row, : lengths[row]].tolist()
                new_tokens += lengths[row]
            bar.update(len(batch))
            bar.set_postfix_str(f"{new_tokens / (time.perf_counter() - started):,.0f} new tok/s")
        bar.close()
        return results

    def _batch(
        self, prompts: list[Sequence[int]], budgets: list[int], eos_id: int, pad_id: int, sampling: Sampling
    ) -> tuple[torch.Tensor, list[int]]:
        """Decode one full batch: ``(new ids [rows, steps], new tokens per row before EOS)``."""
        device, rows, steps = self.model.device, len(prompts), max(budgets)
        width = max(len(p) for p in prompts)
        ids = torch.full((rows, width), pad_id, dtype=torch.long)
        mask = torch.ones((rows, self.cache_len), dtype=torch.long)  # the causal mask hides unwritten columns
        for row, prompt in enumerate(prompts):  # left padding: every row's next token lands at column `width`
            ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
            mask[row, : width - len(prompt)] = 0
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        self.cache.reset()
        logits = self._forward(ids, positions, torch.arange(width, device=device), mask)

        out = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)
        budget = torch.as_tensor(budgets, device=device)
        lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        position = positions[:, -1:]
        cache_position = torch.tensor([width - 1], device=device)
        for t in range(steps):
            token = sampling.choose(logits)
            stop = ~finished & ((token == eos_id) | (budget <= t))
            lengths = torch.where(stop, t, lengths)
            finished |= stop
            token = torch.where(finished, pad_id, token)
            out[:, t] = token
            if t + 1 == steps or (t % SYNC_EVERY == SYNC_EVERY - 1 and bool(finished.all())):
                break
            position += 1  # in place on the device: the host never waits for a step
            cache_position += 1
            logits = self.step(token[:, None], position, cache_position, mask)
            if device.type == "cuda":
                logits = logits.clone()  # a CUDA graph's output is overwritten by its next replay
        return out, lengths.tolist()
