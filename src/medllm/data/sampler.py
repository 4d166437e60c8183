"""Batches of row indices whose order is a function of (seed, epoch), sharded over processes, resumable.

A resumed run must see the very batches an uninterrupted run would have seen next. Each epoch's order
is drawn from a generator seeded with ``seed + epoch``; the sampler's state (epoch, batches consumed by
training, not merely fetched ahead by the loader) goes into the checkpoint, and a restored sampler skips
what was already trained on.

Under DDP every process draws the same order and takes its slice of each global batch of
``batch_size x world_size`` rows, so a step over N processes sees the same rows as one process with
N-fold gradient accumulation. A last global batch of fewer rows is shared out among the processes; one of
fewer rows than processes is left out of the epoch (the data module warns).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import lightning as L
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
        self._skip = 0
        self._handed_out: deque[tuple[int, int]] = deque()  # (epoch, position) fetched, not yet trained on
        self._trained = (0, -1)  # (epoch, position) of the last batch training used

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
        batches = []
        for start in range(0, len(order), global_size):
            rows = order[start : start + global_size]
            if len(rows) < world:  # a row for every process or none: all must run the same steps, or DDP hangs
                break
            # A short last global batch is shared out, a row or more to each process: the step trains the rows
            # one process would train in its last window of accumulation.
            full = len(rows) == global_size
            batches.append(rows[rank * self.batch_size : (rank + 1) * self.batch_size] if full else rows[rank::world])
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        skip, self._skip = self._skip, 0
        if skip >= len(batches):  # the checkpoint was taken after the last batch of an epoch
            self.epoch, skip = self.epoch + 1, 0
            batches = self._batches()
        # Each iteration is a new epoch: Lightning stops at len(loader) and never exhausts this generator,
        # so the count can't wait for the end of the loop.
        epoch = self.epoch
        self.epoch += 1
        for position in range(skip, len(batches)):
            self._handed_out.append((epoch, position))
            yield batches[position]

    def mark_trained(self) -> None:
        """Training took the oldest batch handed out (the loader may have fetched more ahead)."""
        self._trained = self._handed_out.popleft()

    def state_dict(self) -> dict[str, int]:
        epoch, position = self._trained
        return {"epoch": epoch, "consumed": position + 1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self._skip = state["consumed"]


class ResumableDataModule(L.LightningDataModule):
    """A data module whose training batches come from a ``ResumableBatchSampler`` that the checkpoint records:
    a resumed run trains on the batches an uninterrupted run would have trained on next."""

    train_sampler: ResumableBatchSampler | None = None
    _sampler_state: dict | None = None

    def resumable_sampler(self, num_items: int, batch_size: int, seed: int, lengths=None) -> ResumableBatchSampler:
        """The training batches' sampler, at the checkpoint's position where the run was resumed."""
        self.train_sampler = ResumableBatchSampler(num_items, batch_size, True, seed, lengths)
        if self._sampler_state is not None:
            self.train_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        return self.train_sampler

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training and self.train_sampler is not None:
            self.train_sampler.mark_trained()
        return batch

    def state_dict(self) -> dict:
        return {"train_sampler": self.train_sampler.state_dict()} if self.train_sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._sampler_state = state.get("train_sampler")
