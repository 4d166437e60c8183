"""Training runs the resume and preemption tests share."""

from __future__ import annotations

import csv
from pathlib import Path

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
