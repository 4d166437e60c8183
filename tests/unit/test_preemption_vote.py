"""Under DDP the processes agree whether to stop without waiting for one another: each optimizer step's vote
is an all-reduce read one step later, so every process stops at the same step, one or two after a signal
that only some of them got. Two real processes, gloo."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medllm.training.preemption import Preemption
from tests.helpers.cli import free_port

STEPS = 8
SIGNAL_AT = 3  # rank 1 gets SIGTERM during this step


def vote(rank: int, port: int, decisions) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        callback, trainer = Preemption(), SimpleNamespace(world_size=2)
        stops = []
        for step in range(1, STEPS + 1):
            if rank == 1 and step == SIGNAL_AT:
                callback.received = signal.SIGTERM
            stops.append(callback._agreed_to_stop(trainer, torch.device("cpu")))
        decisions[rank] = stops
    finally:
        dist.destroy_process_group()


def test_every_process_stops_at_the_step_after_the_vote_that_saw_the_signal():
    decisions = mp.Manager().dict()
    mp.spawn(vote, args=(free_port(), decisions), nprocs=2, join=True)
    expected = [step > SIGNAL_AT for step in range(1, STEPS + 1)]  # read one step after the vote
    assert decisions[0] == decisions[1] == expected


def test_a_single_process_stops_at_the_step_of_its_signal():
    callback = Preemption()
    assert not callback._agreed_to_stop(SimpleNamespace(world_size=1), torch.device("cpu"))
    callback.received = signal.SIGINT
    assert callback._agreed_to_stop(SimpleNamespace(world_size=1), torch.device("cpu"))
