"""Batching: pad rows to the longest in the batch, or pack rows into fixed-length sequences.

Padding is masked by position (attention mask, labels -100 past each row's end), never by token id:
R1 tokenizers may pad with their EOS, and masking every EOS id would teach the model never to stop.
Each batch also carries ``num_tokens`` (row tokens, no padding) and ``num_trained`` (tokens with a
label), as Python ints: counted on the CPU, so measuring throughput never waits for the GPU.
Packed sequences carry per-row ``position_ids`` that restart at 0; transformers (and flash attention's
variable-length kernels) read the restarts as row boundaries, so no row attends to another.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medllm.data.chat_format import IGNORE_INDEX


def count_trained(labels: torch.Tensor) -> int:
    """Tokens that enter the causal LM loss: labels after the one-token shift that are not ignored."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class PadCollator:
    """Right-pads ``input_ids`` / ``labels`` to the longest row (rounded up to ``pad_to_multiple_of``)."""

    pad_token_id: int
    pad_to_multiple_of: int = 1

    def _length(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return -(-longest // m) * m

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        length = self._length(max(len(r["input_ids"]) for r in rows))
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        ids_view, labels_view = input_ids.numpy(), labels.numpy()  # rows are lists or NumPy arrays
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids_view[i, :n] = row["input_ids"]
            labels_view[i, :n] = row["labels"]
            attention_mask[i, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "num_tokens": int(attention_mask.sum()),
            "num_trained": count_trained(labels),
        }


@dataclass
class PackCollator(PadCollator):
    """Collates packed items (each a list of rows) into ONE sequence with restarting ``position_ids``.

    The rows of all items of the batch go end to end in a single ``[1, T]`` row, as TRL's padding-free
    batches do: Unsloth infers the row boundaries from restarting positions only at batch size 1,
    and flash attention's variable-length kernels want them there too. The padding at the end (to
    ``pad_to_multiple_of``, or to exactly ``length`` tokens when given) is one more segment of its own,
    attended by nothing real, trains nothing. A fixed ``length`` gives every batch one shape, so
    compiled kernels are built once instead of once per new length.
    """

    length: int | None = None

    def __call__(self, bins: Sequence[Sequence[dict]]) -> dict[str, torch.Tensor]:
        rows = [row for rows in bins for row in rows]
        num_tokens = sum(len(r["input_ids"]) for r in rows)
        length = self.length or self._length(num_tokens)
        if num_tokens > length:
            raise ValueError(f"{num_tokens} packed tokens don't fit a batch of {length}")
        input_ids = torch.full((1, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((1, length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((1, length), dtype=torch.long)
        ids_view, labels_view = input_ids.numpy(), labels.numpy()  # rows are lists or NumPy arrays
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            ids_view[0, start : start + n] = row["input_ids"]
            labels_view[0, start : start + n] = row["labels"]
            # A row's first token is never predicted from within the row; in a packed sequence its label
            # would teach predicting it from the previous row's end.
            labels_view[0, start] = IGNORE_INDEX
            position_ids[0, start : start + n] = torch.arange(n)
            start += n
        position_ids[0, start:] = torch.arange(length - start)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "num_tokens": num_tokens,
            "num_trained": count_trained(labels),
        }


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: row indices grouped so each group's total length <= capacity.

    Each row goes into the fullest bin that still has room for it, which leaves few, full bins.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"a row of {max(lengths)} tokens can't be packed into sequences of {capacity}")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    for idx in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[idx]
        pos = bisect.bisect_left(free, (n, -1))
        if pos == len(free):
            bins.append([idx])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            space, b = free.pop(pos)
            bins[b].append(idx)
            bisect.insort(free, (space - n, b))
    return bins


class PackedDataset(torch.utils.data.Dataset):
    """Items are bins of rows of ``rows`` (a map-style dataset), packed once by ``pack``."""

    def __init__(self, rows, bins: list[list[int]]):
        self.rows = rows
        self.bins = bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.rows[j] for j in self.bins[i]]
