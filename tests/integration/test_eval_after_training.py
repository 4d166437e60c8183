"""eval_after_training: train.py scores its own adapter when it ends, and an Optuna sweep optimizes that score."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers.cli import train_py
from tests.helpers.extras import needs_optuna

pytestmark = pytest.mark.slow


def write_questions(path):
    rows = [
        {"id": f"q{i}", "question": f"Is {i} even?", "options": ["yes", "no"], "answer": "AB"[i % 2]} for i in range(6)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def after(questions) -> str:
    return f'eval_after_training=["benchmark=mcq","benchmark.path={questions}","max_new_tokens=8"]'


def test_a_run_scores_its_adapter_into_its_dir_and_summary(tmp_path):
    run = tmp_path / "run"
    questions = write_questions(tmp_path / "q.jsonl")
    train_py("experiment=smoke", "trainer.max_steps=2", after(questions), f"hydra.run.dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    (scores,) = json.loads((run / "eval" / "report.json").read_text())["benchmarks"]["mcq"].values()  # no base
    assert summary["eval_benchmark"] == "mcq" and scores["n"] == 6
    for name in ("accuracy", "macro_f1", "precision", "recall", "parse_failures", "format_rate"):
        assert summary[f"eval_{name}"] == scores[name], name
    assert summary["val_loss"] is not None  # training's own numbers stay
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {p["model"] for p in predictions} == {f"adapter:{run / 'adapter'}"}


@needs_optuna
def test_an_optuna_sweep_maximizes_the_score_each_trial_returns(tmp_path):
    sweep = tmp_path / "sweep"
    train_py(
        "-m", "experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
        "trainer.max_steps=2", "optimized_metric=eval_macro_f1", "hydra.sweeper.direction=maximize",
        after(write_questions(tmp_path / "q.jsonl")), f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    import optuna

    study = optuna.load_study(study_name="medllm", storage=f"sqlite:///{sweep}/optuna.db")
    scores = {}
    for job, trial in enumerate(study.trials):
        scores[job] = json.loads((sweep / str(job) / "summary.json").read_text())["eval_macro_f1"]
        assert trial.value == pytest.approx(scores[job])
    with (sweep / "summary.csv").open() as f:
        assert {int(r["job"]): float(r["eval_macro_f1"]) for r in csv.DictReader(f)} == pytest.approx(scores)
    best = json.loads((sweep / "best.json").read_text())
    assert best["eval_macro_f1"] == max(scores.values())


def test_train_called_from_python_composes_the_evaluation_from_the_packages_conf(tmp_path):
    """No Hydra app runs: the evaluation's eval.yaml comes from the conf/ the package carries."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medllm.config.compose import CONF
    from medllm.workflows.train_eval import train_and_evaluate

    overrides = ["experiment=smoke", "trainer.max_steps=2", after(write_questions(tmp_path / "q.jsonl"))]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}"])
    assert not GlobalHydra.instance().is_initialized()
    summary = train_and_evaluate(cfg)
    assert summary["eval_benchmark"] == "mcq" and (tmp_path / "eval" / "report.json").is_file()


def test_the_package_carries_conf(tmp_path):
    """An installed wheel composes configs with no checkout beside it: every file of conf/ is inside it."""
    import subprocess
    import sys
    import zipfile

    from tests.helpers.configs import CONF, ROOT

    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("medllm-*.whl")
    carried = {name.removeprefix("medllm/conf/") for name in zipfile.ZipFile(wheel).namelist() if "/conf/" in name}
    assert carried == {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
