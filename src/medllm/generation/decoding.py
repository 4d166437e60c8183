"""Batched decoding on a static KV cache, with one compiled forward per new token and rows refilled as they end.

``model.generate`` syncs with the host at every step (stopping criteria, finished rows), and a batch
runs until its longest row ends: with R1's reasoning lengths (~500 to 2,000 tokens) half of its rows'
steps decode padding. Here the batch is a set of ``batch_size`` slots in one static cache. Each slot
holds one prompt at columns ``0..len-1`` and writes each new token at its own next column; every few
steps (``SYNC_EVERY``) the host collects the rows that ended and prefills the next prompts into their
slots. Every step has the same shapes, so on a GPU the step is compiled once with CUDA graphs
(``torch.compile(mode="reduce-overhead")``) for the whole run and every model decoded with it.

A row's greedy completion depends only on its prompt: the slot it lands in, its neighbours and the batch size
change nothing but rounding (none in float32 on the CPU).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from tqdm.auto import tqdm
from transformers import AttentionInterface, AttentionMaskInterface, TopPLogitsWarper
from transformers.cache_utils import Cache, DynamicCache, StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from medllm.config.schema import DECODE_ATTENTION, FLEX_MIN_CAPABILITY
from medllm.errors import MedllmError

SYNC_EVERY = 16
# Cache columns per block of `attention="flex"`: a row reads only the blocks up to its own column. The cache
# length is rounded up to it (SDPA's memory-efficient kernel wants aligned mask rows too).
KV_BLOCK = 128
GROUPED_ATTENTION = "medllm_grouped_sdpa"
# Without a GPU there is no free-memory figure to size batches from.
CPU_BATCH_SIZE = 16
# Of the GPU memory free once the weights are loaded, the share `batch_size=auto` fills; the rest is
# headroom for the allocator's fragmentation and the compiled step's graph pool.
FREE_MEMORY_SHARE = 0.8
# Rows in one batch at most: beyond this the decode step is compute-bound and gains little.
MAX_BATCH_SIZE = 512
# Prompts prefilled in one forward: enough tokens to keep the GPU busy, few enough that the prefill's
# activations stay small beside the cache.
PREFILL_ROWS = 32


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (the default) or sampled with temperature and top-p."""

    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(-1)
        scores = logits.float() / self.temperature
        if self.top_p < 1.0:  # 1 keeps every token: no sort of the vocabulary
            scores = TopPLogitsWarper(self.top_p)(None, scores)
        return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)

    def logprob(self, logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Each row's log-probability of ``token`` under the policy sampled from: the logits at the sampling
        temperature (1 for greedy), before top-p, as a training forward computes it."""
        temperature = self.temperature if self.do_sample else 1.0
        return torch.log_softmax(logits.float() / temperature, -1).gather(-1, token[:, None]).squeeze(-1)


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA that decodes one token a row without copying keys and values for every query head.

    With an attention mask (a static cache always has one) transformers' SDPA repeats the cached keys and
    values once per query head of a group (4x for Llama 8B) at every layer and step: at a batch of 64
    and 756 cached tokens that is most of a step's memory traffic. Here the query heads that share a key
    head become rows of one query instead, so the cache is read once. Prompts (more than one new token
    a row) go through transformers' SDPA. Given a ``BlockMask`` (``Decoder(attention="flex")``), FlexAttention
    reads each row's cache only up to its own column.
    """
    if isinstance(attention_mask, BlockMask):
        out = flex_attention(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2), None
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


class DecodingError(MedllmError):
    """The decoding asked for can't run on this model or in this memory; the message says what to lower."""


def auto_batch_size(model: Any, cache_len: int, rows: int, prompt_len: int) -> int:
    """As many slots as fit ``FREE_MEMORY_SHARE`` of the free GPU memory, beside one prefill of
    ``PREFILL_ROWS`` prompts (its activations, mask and keys and values)."""
    if model.device.type != "cuda":
        return max(1, min(rows, CPU_BATCH_SIZE))
    torch.cuda.empty_cache()  # loading and rounding the weights leave freed blocks behind
    free = free_memory(model.device)
    config = model.config
    kv_per_token = kv_bytes_per_token(config, model.dtype)
    per_row = kv_per_token * cache_len
    # A prefill holds a layer's activations for every prompt token (MLP gate, up and product; queries,
    # keys, values, output), its attention mask, and the prompts' keys and values for all layers.
    activations = (3 * config.intermediate_size + 4 * config.hidden_size) * model.dtype.itemsize
    prefill = PREFILL_ROWS * prompt_len * (activations + prompt_len + kv_per_token)
    fits = (int(free * FREE_MEMORY_SHARE) - prefill) // per_row
    if fits < 1:
        raise DecodingError(
            f"one row of {cache_len} tokens needs {per_row / 2**30:.1f} GiB of KV cache beside "
            f"{prefill / 2**30:.1f} GiB for prefilling, {free / 2**30:.1f} GiB are free: lower max_new_tokens, "
            "or use engine=peft"
        )
    return max(1, min(rows, fits, MAX_BATCH_SIZE))


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (the GPU's, or the machine's available memory), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux
        return None


def check_decoding_fits(model: Any, batch_size: int, max_prompt_len: int, max_new_tokens: int, cache_len: int) -> None:
    """DecodingError before any cache is allocated: the rows past the model's context, or a cache of
    ``batch_size`` rows larger than the memory free."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_prompt_len + max_new_tokens > context:
        raise DecodingError(
            f"the longest prompt ({max_prompt_len} tokens) and max_new_tokens={max_new_tokens} make "
            f"{max_prompt_len + max_new_tokens} tokens, past the model's context of {context}: lower max_new_tokens, "
            "or leave the longest questions out."
        )
    need = batch_size * cache_len * kv_bytes_per_token(model.config, model.dtype)
    free = free_memory(model.device)
    if free is not None and need > free:
        raise DecodingError(
            f"batch_size={batch_size} rows of {cache_len} tokens need {need / 2**30:.1f} GiB of KV cache, "
            f"{free / 2**30:.1f} GiB are free: lower batch_size (or batch_size=auto) or max_new_tokens."
        )


class _SlotLayer(StaticLayer):
    """A static cache layer whose rows each write their one new token at their own column (``columns``).

    The write is an ``index_put_``, which inductor performs in place on the cache. A ``scatter_`` would be
    compiled out of place: a copy of the whole layer's cache at every step, more than half of a step's
    time at R1 lengths (batch 64 on an H200: 1,535 new tokens/s, 3,769 in place).
    """

    def __init__(self, max_cache_len: int, rows: torch.Tensor, columns: torch.Tensor) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.rows, self.columns = rows, columns

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys[self.rows, :, self.columns] = key_states[:, :, 0]
        self.values[self.rows, :, self.columns] = value_states[:, :, 0]
        return self.keys, self.values


def flex_is_fast_on(device: torch.device) -> bool:
    """Whether ``decode_attention=auto`` picks FlexAttention on ``device``: a GPU its kernels are built for."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FLEX_MIN_CAPABILITY


class Decoder:
    """Decodes prompts through ``batch_size`` slots of one static cache of ``max_prompt_len + max_new_tokens``.

    Built once per evaluation and reused for every model: the merged engine changes the weights in
    place, so the compiled step (and its CUDA graphs) serve the base and every adapter.
    ``batch_size`` None picks as many slots as fit (``auto_batch_size``); ``compile`` None compiles on
    a GPU. ``attention``: ``"sdpa"`` attends over the whole cache with a mask of each row's columns;
    ``"flex"`` (FlexAttention) skips the cache blocks past each row's column, which at R1 lengths are
    most of them (on an H200, batch 64: 4,718 new tokens/s against SDPA's 3,693); ``"auto"``: flex on a
    GPU of compute capability 8.0 or newer, sdpa elsewhere.
    """

    def __init__(
        self,
        model: Any,
        max_prompt_len: int,
        max_new_tokens: int,
        batch_size: int | None = None,
        rows_wanted: int = 1,
        compile: bool | None = None,
        attention: str = "auto",
    ) -> None:
        DECODE_ATTENTION.check("decode_attention", attention)
        if attention == "auto":
            attention = "flex" if flex_is_fast_on(model.device) else "sdpa"
        self.model, self.attention = model, attention
        self.max_new_tokens = max_new_tokens
        self.cache_len = KV_BLOCK * math.ceil((max_prompt_len + max_new_tokens) / KV_BLOCK)
        self.batch_size = batch_size or auto_batch_size(model, self.cache_len, rows_wanted, max_prompt_len)
        check_decoding_fits(model, self.batch_size, max_prompt_len, max_new_tokens, self.cache_len)
        config = model.config
        device = model.device
        # Each slot's next column (= the position of the token it is fed); the layers write there.
        self.columns = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        rows = torch.arange(self.batch_size, device=device)
        layers = [_SlotLayer(self.cache_len, rows, self.columns) for _ in range(config.num_hidden_layers)]
        self.cache = Cache(layers=layers)
        model.set_attn_implementation(GROUPED_ATTENTION)
        self.cache.early_initialization(  # all of it now, not layer by layer between a prefill's activations
            self.batch_size,
            config.num_key_value_heads,
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            model.dtype,
            device,
        )
        torch._dynamo.mark_static_address(self.columns)
        torch._dynamo.mark_static_address(rows)
        self._all_columns = torch.arange(self.cache_len, device=device)
        self._blocks = torch.arange(self.cache_len // KV_BLOCK, dtype=torch.int32, device=device)
        # Every slot's whole blocks in order (the first ``whole`` of them count): the same at every step. A
        # real copy per slot, not an expanded view: the CUDA decoding kernel finds a slot's row of these with
        # the strides of the partial blocks' indices, so both must be laid out alike.
        self._whole_blocks = self._blocks.repeat(self.batch_size, 1).view(self.batch_size, 1, 1, -1)
        self.step = self._forward
        if device.type == "cuda" if compile is None else compile:
            self.step = torch.compile(self._forward, mode="reduce-overhead", dynamic=False)

    def _block_mask(self) -> BlockMask:
        """Each slot's columns ``0..column`` as FlexAttention blocks: the blocks wholly before its column, and
        the one it falls in (masked inside); the blocks after it are never read."""
        slots, blocks = len(self.columns), len(self._blocks)
        whole = ((self.columns + 1) // KV_BLOCK).int()
        partial = ((self.columns + 1) % KV_BLOCK != 0).int()
        first_partial = (self._blocks[None, :] + whole[:, None]) % blocks  # the partial block comes first

        def visible(batch, head, q_index, kv_index):
            return kv_index <= self.columns[batch]

        return BlockMask.from_kv_blocks(
            partial.view(slots, 1, 1),
            first_partial.view(slots, 1, 1, blocks),
            whole.view(slots, 1, 1),
            self._whole_blocks,
            BLOCK_SIZE=(KV_BLOCK, KV_BLOCK),
            mask_mod=visible,
            seq_lengths=(1, self.cache_len),
            compute_q_blocks=False,
        )

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new token a slot, each at its slot's column, attending to the columns before it."""
        if self.attention == "flex":
            visible = self._block_mask()
        else:
            visible = (self._all_columns[None, :] <= self.columns[:, None])[:, None, None, :]
        out = self.model(
            input_ids=tokens,
            position_ids=self.columns[:, None],
            attention_mask=visible,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _prefill(self, prompts: list[Sequence[int]], slots: list[int], pad_id: int) -> torch.Tensor:
        """Writes the prompts' keys and values into their slots' columns ``0..len-1``; the logits of their
        last tokens, ``[len(prompts), vocab]``. Prompts are right-padded: each starts at column 0."""
        device, width = self.model.device, max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
            mask[row, : len(prompt)] = 1
        scratch = DynamicCache(config=self.model.config)
        hidden = self.model.get_decoder()(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=torch.arange(width, device=device).expand(len(prompts), -1),
            past_key_values=scratch,
            use_cache=True,
        ).last_hidden_state
        rows = torch.arange(len(prompts), device=device)
        last = hidden[rows, torch.as_tensor([len(p) - 1 for p in prompts], device=device)]
        into = torch.as_tensor(slots, device=device)
        for layer, written in zip(self.cache.layers, scratch.layers, strict=True):
            layer.keys[:, :, :width].index_copy_(0, into, written.keys)
            layer.values[:, :, :width].index_copy_(0, into, written.values)
        return self.model.get_output_embeddings()(last).float()

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
        with_logprobs: bool = False,
        on_finish: Callable[[int, list[int]], None] | None = None,
    ) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
        """The new token ids of each prompt (token ids, BOS included), cut before its first EOS.

        ``row_budgets`` caps each row's new tokens below ``max_new_tokens`` (the generation benchmark
        draws R1-like lengths with it; evaluation caps the first pass so that a second one fits a longer prompt
        in the same cache). ``with_logprobs``: also each new token's log-probability under the sampling policy
        (``Sampling.logprob``), as ``(ids, logprobs)``; a row that ended at EOS has one more, the EOS's (which
        ``ids`` leaves out). ``on_finish(index, ids)`` is called as each row ends, so a caller can keep its
        result before the others end.
        """
        limit = self.max_new_tokens
        budgets = [min(b, limit) for b in row_budgets] if row_budgets is not None else [limit] * len(prompts)
        if any(len(p) + b > self.cache_len for p, b in zip(prompts, budgets, strict=True)):
            raise ValueError(f"a prompt of {max(map(len, prompts))} tokens does not fit a cache of {self.cache_len}")
        queue = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # pop() takes the longest
        state = _Slots.empty(self.batch_size, limit, self.model.config.vocab_size, pad_id, self.model.device)
        held: list[int | None] = [None] * self.batch_size  # the prompt each slot decodes
        results: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        torch.manual_seed(seed)
        bar = tqdm(total=len(prompts), desc="generate", unit="completion", disable=not progress)
        started, new_tokens = time.perf_counter(), 0
        while True:  # the host looks at the slots only here, every SYNC_EVERY steps
            done, lengths = state.finished.tolist(), state.count.tolist()
            ended = [slot for slot, item in enumerate(held) if item is not None and done[slot]]
            rows_logprobs = state.logprobs[ended].tolist() if with_logprobs else [None] * len(ended)
            for slot, row, row_logprobs in zip(ended, state.out[ended].tolist(), rows_logprobs):
                results[held[slot]] = row[: lengths[slot]]
                if with_logprobs:  # a row ended by EOS before its budget: the EOS's log-probability too
                    ended_by_eos = lengths[slot] < budgets[held[slot]]
                    logprobs[held[slot]] = row_logprobs[: lengths[slot] + ended_by_eos]
                new_tokens += lengths[slot]
                if on_finish is not None:
                    on_finish(held[slot], results[held[slot]])
                held[slot] = None
            if ended:
                bar.update(len(ended))
                bar.set_postfix_str(f"{new_tokens / (time.perf_counter() - started):,.0f} new tok/s")
            free = [slot for slot, item in enumerate(held) if item is None][: len(queue)]
            for first in range(0, len(free), PREFILL_ROWS):
                slots = free[first : first + PREFILL_ROWS]
                items = [queue.pop() for _ in slots]
                for slot, item in zip(slots, items):
                    held[slot] = item
                logits = self._prefill([prompts[i] for i in items], slots, pad_id)
                state.start_rows(slots, logits, [budgets[i] for i in items], [len(prompts[i]) for i in items])
            if all(item is None for item in held):
                break
            for _ in range(SYNC_EVERY):
                token = sampling.choose(state.logits)
                if with_logprobs:  # an EOS's too, at the column past the row's last token, which ended rows keep
                    column = state.count[:, None]
                    kept = state.logprobs.gather(1, column).squeeze(1)
                    logprob = torch.where(state.finished, kept, sampling.logprob(state.logits, token))
                    state.logprobs.scatter_(1, column, logprob[:, None])
                state.finished |= (token == eos_id) | (state.count >= state.budget)
                token = torch.where(state.finished, pad_id, token)
                state.out.scatter_(1, state.count[:, None], token[:, None])  # a finished row: a pad past its end
                self.columns.copy_((state.start + state.count).clamp(max=self.cache_len - 1))
                state.count += ~state.finished
                logits = self.step(token[:, None])
                # A CUDA graph's output is overwritten by its next replay.
                state.logits = logits.clone() if logits.device.type == "cuda" else logits
        bar.close()
        return (results, logprobs) if with_logprobs else results


@dataclass
class _Slots:
    """What the device holds for each slot: the new tokens so far, their count, the row's budget, its
    prompt's length, whether it ended (an empty slot counts as ended) and the logits of its next token."""

    out: torch.Tensor  # [slots, max_new_tokens + 1]: one more column for the pads of ended rows
    logprobs: torch.Tensor  # [slots, max_new_tokens + 1]: each new token's log-probability (with_logprobs)
    count: torch.Tensor
    budget: torch.Tensor
    start: torch.Tensor
    finished: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def empty(cls, slots: int, max_new_tokens: int, vocab: int, pad_id: int, device: torch.device) -> _Slots:
        def zeros(dtype=torch.long):
            return torch.zeros(slots, dtype=dtype, device=device)

        out = torch.full((slots, max_new_tokens + 1), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(out.shape, device=device)
        finished = torch.ones(slots, dtype=torch.bool, device=device)
        return cls(out, logprobs, zeros(), zeros(), zeros(), finished, torch.zeros((slots, vocab), device=device))

    def start_rows(self, slots: list[int], logits: torch.Tensor, budgets: list[int], prompt_lengths: list[int]) -> None:
        into = torch.as_tensor(slots, device=self.count.device)
        self.logits.index_copy_(0, into, logits)
        self.budget.index_copy_(0, into, torch.as_tensor(budgets, device=into.device))
        self.start.index_copy_(0, into, torch.as_tensor(prompt_lengths, device=into.device))
        self.count.index_fill_(0, into, 0)
        self.finished.index_fill_(0, into, False)
