"""The training sampler under DDP: each process's slice of every global batch, as one process with
accumulation would train them, including a short last global batch."""

from __future__ import annotations

import itertools

import pytest

from medllm.data import sampler as sampler_module
from medllm.data.sampler import ResumableBatchSampler


def epoch_batches(monkeypatch, num_items: int, batch_size: int, world: int, rank: int) -> list[list[int]]:
    monkeypatch.setattr(sampler_module, "_rank_and_world", lambda: (rank, world))
    return list(ResumableBatchSampler(num_items, batch_size, seed=3))


@pytest.mark.parametrize(("num_items", "batch_size"), [(20, 3), (20, 4), (23, 4), (24, 4), (10, 2)])
def test_each_step_over_two_processes_trains_the_rows_of_one_window_of_accumulation_two(
    monkeypatch, num_items, batch_size
):
    single = epoch_batches(monkeypatch, num_items, batch_size, world=1, rank=0)
    windows = [sorted(itertools.chain(*single[i : i + 2])) for i in range(0, len(single), 2)]
    ranks = [epoch_batches(monkeypatch, num_items, batch_size, world=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # the same number of steps, or DDP would wait forever
    assert all(ranks[0]) and all(ranks[1])  # every process has a row in every step
    steps = [sorted(a + b) for a, b in zip(*ranks, strict=True)]
    assert steps == windows  # every row once an epoch, each in the step one process would train it


def test_a_last_global_batch_of_fewer_rows_than_processes_is_left_out(monkeypatch):
    """21 rows, 5 a process, 2 processes: two steps of 10, and the 21st row has no step to go in."""
    single = epoch_batches(monkeypatch, 21, 5, world=1, rank=0)
    ranks = [epoch_batches(monkeypatch, 21, 5, world=2, rank=r) for r in (0, 1)]
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [5, 5]
    trained = sorted(itertools.chain(*ranks[0], *ranks[1]))
    assert trained == sorted(itertools.chain(*single[:4])) and single[4] == [i for i in range(21) if i not in trained]
