"""The learning-rate schedule spans the steps the run takes: in epochs with gradient accumulation, and when a
finished run is trained further from its checkpoint."""

from __future__ import annotations

import csv
import itertools

import pytest

from tests.helpers.cli import train_py

pytestmark = pytest.mark.slow

SMOKE = ("experiment=smoke", "trainer.log_every_n_steps=1", "scheduler.num_warmup_steps=0")
SMOKE_BATCHES_PER_EPOCH = 5  # the packaged sample's training rows at experiment=smoke's batch size


def learning_rates(run_dir) -> dict[int, float]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return {int(row["step"]): float(row["train/lr"]) for row in csv.DictReader(f) if row.get("train/lr")}


def test_in_epochs_with_accumulation_the_cosine_falls_once_over_every_step(tmp_path):
    """3 epochs of 5 micro-batches, 4 a step: each epoch's window ends with it, so 2 steps an epoch, 6 in all."""
    train_py(
        *SMOKE,
        "trainer.max_steps=-1",
        "trainer.max_epochs=3",
        "trainer.accumulate_grad_batches=4",
        "trainer.limit_val_batches=0",
        f"hydra.run.dir={tmp_path}",
    )
    lr = learning_rates(tmp_path)
    assert sorted(lr) == [1, 2, 3, 4, 5, 6]
    rates = [lr[step] for step in sorted(lr)]
    assert all(later < earlier for earlier, later in itertools.pairwise(rates)), rates  # never climbs back
    assert rates[-1] > 0  # the last step is still inside the schedule, not past its end


def test_more_micro_batches_a_step_than_an_epoch_holds_is_refused(tmp_path):
    out = train_py(
        *SMOKE, "trainer.max_steps=2", "trainer.accumulate_grad_batches=10", f"hydra.run.dir={tmp_path}", check=False
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert (
        f"trainer.accumulate_grad_batches=10, but an epoch holds {SMOKE_BATCHES_PER_EPOCH} micro-batch(es)"
        in out.stderr.strip().splitlines()[-1]
    )


def test_trained_further_from_a_checkpoint_the_steps_take_the_longer_runs_rates(tmp_path):
    """3 steps, then on to 6 from the 3-step run's checkpoint: steps 4-6 at the rates of a 6-step run's."""
    train_py(*SMOKE, "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'three'}")
    train_py(
        *SMOKE,
        "trainer.max_steps=6",
        f"ckpt_path={tmp_path / 'three' / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'further'}",
    )
    train_py(*SMOKE, "trainer.max_steps=6", f"hydra.run.dir={tmp_path / 'six'}")
    further, six = learning_rates(tmp_path / "further"), learning_rates(tmp_path / "six")
    assert sorted(further) == [4, 5, 6]
    assert [further[s] for s in (4, 5, 6)] == pytest.approx([six[s] for s in (4, 5, 6)], rel=1e-6)


def test_a_validation_interval_longer_than_an_epoch_of_the_data_validates_each_epoch_and_says_so(tmp_path):
    """A GPU experiment's interval on a user's first small file: Lightning refused it after the model loaded."""
    run_dir = tmp_path / "run"
    out = train_py(
        "experiment=smoke",
        "trainer.check_val_every_n_epoch=1",
        "trainer.val_check_interval=50",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
    )
    assert "trainer.val_check_interval=50 optimizer steps is more than an epoch of this data (5 steps)" in out.stdout
    with (run_dir / "csv" / "metrics.csv").open() as f:
        validated = sorted({int(row["step"]) for row in csv.DictReader(f) if row.get("val/loss")})
    assert validated == [5, 10, 12]  # each epoch's end, and the final validation
