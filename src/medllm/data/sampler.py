"""Batches of row indices whose order is a function of (seed, epoch), sharded over processes, resumable.

A resumed run must see the very batches an uninterrupted run would have seen next. Each epoch's order
is drawn from a generator seeded with ``seed + epoch``; the sampler's state (epoch, batches consumed by
training) goes into the checkpoint, and a restored sampler skips what was already trained on.

Under DDP every process draws the same order and takes its slice of each global batch of
``batch_size x world_size`` rows, so a step over N processes sees the same rows as one process with
N-fold gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from transformers.trainer_pt_utils import get_length_grouped_indices


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(
        self,
        num_items: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
    ):
        """``lengths`` given: group items of similar length into batches (less padding)."""
        self.num_items = num_items
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.lengths = lengths
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch that training has used
        self._skip = 0

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.lengths is not None:
            return get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        if self.shuffle:
            return torch.randperm(self.num_items, generator=generator).tolist()
        return list(range(self.num_items))

    def _batches(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        order = self._order()
        if not self.shuffle:  # evaluation: every row once; processes may differ by one batch
            rows = order[rank::world]
            return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        global_size = self.batch_size * world
        # A last global batch too short to give every process a row is dropped: all processes must
        # run the same number of steps, or DDP waits forever.
        starts = range(0, len(order), global_size)
        return [
            order[start + rank * self.batch_size : start + (rank + 1) * self.batch_size]
            for start in starts
            if len(order) - start > (world - 1) * self.batch_size
        ]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        skip, self._skip = self._skip, 0
        self.consumed = skip
        yield from batches[skip:]
        self.epoch += 1
        self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self._skip = state["consumed"]
