"""hparams_search=optuna: a real 3-trial TPE study of train.py, its summary, and the rerun of its best trial."""

from __future__ import annotations

import csv
import json
import shlex

import pytest

from medllm.config.schema import STAGE_SUMMARY_METRICS, SFTStage
from tests.helpers.cli import train_py
from tests.helpers.configs import compose_train
from tests.helpers.extras import needs_optuna

pytestmark = [pytest.mark.slow, needs_optuna]

TRIALS = 3
METRIC = "train_loss_last"  # not the default: shows that the named summary entry is what Optuna gets


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("optuna") / "sweep"  # not there yet: the study's sqlite file needs it made
    train_py(
        "-m", "experiment=smoke", "hparams_search=optuna",
        f"hydra.sweeper.n_trials={TRIALS}", "trainer.max_steps=3", "trainer.val_check_interval=3",
        f"optimized_metric={METRIC}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    return sweep


def test_the_study_holds_each_trial_with_the_metric_its_job_returned(sweep_dir):
    import optuna

    study = optuna.load_study(study_name="medllm", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert len(study.trials) == TRIALS
    for job, trial in enumerate(study.trials):
        summary = json.loads((sweep_dir / str(job) / "summary.json").read_text())
        assert trial.value == pytest.approx(summary[METRIC])
        config = (sweep_dir / str(job) / ".hydra" / "config.yaml").read_text()
        assert f"r: {trial.params['model.lora.r']}\n" in config
        assert 1e-5 <= trial.params["optimizer.lr"] <= 1e-3
        # Every name optimized_metric accepts is a number in a run's summary.
        assert all(isinstance(summary[name], float) for name in STAGE_SUMMARY_METRICS[SFTStage._target_])


def test_summary_has_a_row_per_trial_and_best_json_the_best_by_the_metric(sweep_dir):
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["job"]) for r in rows] == list(range(TRIALS)) and all(r["status"] == "ok" for r in rows)
    values = {int(r["job"]): float(r[METRIC]) for r in rows}  # the metric has a column of its own
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["job"] == min(values, key=values.get)
    assert (best["optimized_metric"], best["direction"]) == (METRIC, "minimize")
    assert set(best["swept"]) == {"optimizer.lr", "model.lora.r"}


def test_best_json_command_reruns_the_best_trial(sweep_dir, tmp_path):
    best = json.loads((sweep_dir / "best.json").read_text())
    argv = shlex.split(best["command"])
    assert argv[:2] == ["python", "train.py"]
    rerun = tmp_path / "rerun"
    train_py(*argv[2:], f"hydra.run.dir={rerun}")
    adapter = json.loads((rerun / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == best["swept"]["model.lora.r"] == best["r"]
    config = compose_train(*argv[2:])
    assert config.optimizer.lr == best["swept"]["optimizer.lr"] == best["lr"]
    ran = json.loads((rerun / "summary.json").read_text())
    original = json.loads((sweep_dir / str(best["job"]) / "summary.json").read_text())
    assert ran[METRIC] == pytest.approx(original[METRIC], abs=1e-6)  # the same trial, trained again


def test_optuna_preset_defaults_to_val_loss_and_a_seeded_tpe_study_in_the_sweep_dir():
    cfg = compose_train("experiment=smoke", "hparams_search=optuna", "seed=7")
    sweeper = cfg.hydra.sweeper
    assert cfg.optimized_metric == "val_loss" and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 7
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"


def test_an_unknown_optimized_metric_is_one_line_before_training(tmp_path):
    out = train_py(
        "experiment=smoke",
        "hparams_search=optuna",
        "optimized_metric=val_los",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert out.returncode != 0
    assert "optimized_metric" in out.stderr and "val_loss" in out.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
