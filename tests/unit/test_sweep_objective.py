"""Which job of a sweep is the best: the optimized metric in its sweeper's direction, or the metric's own."""

from __future__ import annotations

import pytest
import yaml

from medllm.runs.jobs import JobResult
from medllm.sweeps.summary import Objective, best_job, objective


def jobs(metric, values):
    return [
        JobResult(job=i, run_dir=f"/runs/{i}", status="ok", metrics={metric: value}) for i, value in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ({}, Objective("val_loss", maximize=False)),
        ({"optimized_metric": "val_accuracy"}, Objective("val_accuracy", maximize=True)),  # a grid sweep: its own
        ({"optimized_metric": "eval_parse_failures"}, Objective("eval_parse_failures", maximize=False)),
        (
            {"optimized_metric": "val_reward", "hydra": {"sweeper": {"direction": "minimize"}}},
            Objective("val_reward", maximize=False),  # the sweeper's, when it has one (checked before the sweep)
        ),
    ],
    ids=["default", "higher-is-better", "lower-is-better", "sweeper"],
)
def test_the_objective_of_a_sweep(tmp_path, sweep, expected):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(sweep))
    assert objective(tmp_path, []) == expected


def test_a_grid_sweep_of_grpo_runs_picks_the_highest_validation_accuracy(tmp_path):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"optimized_metric": "val_accuracy"}))
    results = jobs("val_accuracy", [0.4, 0.7, 0.5])
    assert best_job(results, objective(tmp_path, results)).job == 1
