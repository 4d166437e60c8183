"""Training runs the resume and preemption tests share."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.configs import ROOT

# A run of 24 optimizer steps of 2 micro-batches, a checkpoint every 3 and a validation every 6.
RESUMABLE = [
    "experiment=smoke",
    "trainer.max_steps=24",
    "trainer.val_check_interval=6",
    "trainer.accumulate_grad_batches=2",
    "callbacks.checkpoint.every_n_train_steps=3",
    "trainer.log_every_n_steps=1",
]

# A Python program that locks the folder given as its argument, says so, and holds the lock until its stdin
# closes (or it is killed).
HOLD_LOCK = """
import sys
from pathlib import Path
from medllm.runs.locks import lock
lock(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def train_steps(run_dir: Path) -> list[int]:
    """The optimizer steps of the training rows of a run's csv/metrics.csv."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


def kill_after_first_checkpoint(runs: dict[str, tuple[list[str], Path]]) -> None:
    """``train.py <overrides>`` of each run, started together, each killed (SIGKILL) as soon as its first step
    checkpoint is in its checkpoint folder."""
    processes = {
        name: subprocess.Popen(
            [sys.executable, "train.py", *overrides],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, (overrides, _) in runs.items()
    }
    deadline = time.monotonic() + 300
    while processes and time.monotonic() < deadline:
        for name, process in list(processes.items()):
            if list(runs[name][1].glob("step*.ckpt")):
                process.send_signal(signal.SIGKILL)
                assert process.wait() == -signal.SIGKILL
                del processes[name]
            elif process.poll() is not None:
                pytest.fail(f"the run {name} ended before its first checkpoint")
        time.sleep(0.02)
    assert not processes, "no checkpoint in time"


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 train.py <args>`` (gloo), one thread a process as torchrun sets it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_WORLD_SIZE", None)
    out = subprocess.run([*TORCHRUN, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out
