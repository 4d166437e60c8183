"""Every step count of the config counts optimizer steps, whatever trainer.accumulate_grad_batches is.

One train.py run with 2 micro-batches per optimizer step: max_steps, log_every_n_steps, the scheduler's
warmup and the checkpoint interval are read in optimizer steps from what the run wrote.
"""

from __future__ import annotations

import csv

import pytest

from tests.helpers.cli import train_py

pytestmark = pytest.mark.slow

LR = 1e-2  # experiment=smoke's optimizer.lr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("steps")
    train_py(
        "experiment=smoke",
        "trainer.max_steps=4",
        "trainer.accumulate_grad_batches=2",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "scheduler.num_warmup_steps=2",
        "callbacks.checkpoint.every_n_train_steps=2",
        "callbacks.checkpoint.save_top_k=-1",
        f"hydra.run.dir={out}",
    )
    with (out / "csv" / "metrics.csv").open() as f:
        return out, list(csv.DictReader(f))


def steps_with(rows: list[dict], key: str) -> list[int]:
    return sorted({int(row["step"]) for row in rows if row.get(key)})


def test_max_steps_and_log_every_n_steps_count_optimizer_steps(run_dir):
    _, rows = run_dir
    assert steps_with(rows, "train/loss") == [1, 2, 3, 4]


def test_warmup_counts_optimizer_steps(run_dir):
    _, rows = run_dir
    lr = {int(row["step"]): float(row["train/lr"]) for row in rows if row.get("train/lr")}
    # Linear warmup over 2 optimizer steps, then the cosine from the peak: 0, half, peak.
    assert [lr[1], lr[2], lr[3]] == pytest.approx([0.0, LR / 2, LR])


def test_checkpoints_count_optimizer_steps(run_dir):
    out, _ = run_dir
    saved = sorted(p.name for p in (out / "checkpoints").glob("step*.ckpt"))
    assert saved == ["step000002.ckpt", "step000004.ckpt"]


def test_val_check_interval_counts_optimizer_steps(run_dir):
    _, rows = run_dir
    assert steps_with(rows, "val/loss") == [2, 4]
