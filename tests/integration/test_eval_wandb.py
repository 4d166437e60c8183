"""eval.py with logger=wandb: the report's table, the per-item predictions and the budget curve in an offline run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers.configs import ROOT
from tests.helpers.extras import needs_wandb
from tests.integration.test_eval_suite_cli import write_data_dir
from tests.integration.test_wandb import _key, read_wandb_records

pytestmark = [pytest.mark.slow, needs_wandb]


def test_the_suite_logs_its_table_predictions_and_budget_curve(tmp_path):
    """In a process of its own: wandb's first import patches the sys.stdout of that moment for good, so importing it
    here would leave a later W&B run of the test session without its console log (output.log)."""
    data = write_data_dir(tmp_path / "data")
    out = tmp_path / "eval"
    overrides = [f"suite.data_dir={data}", "suite.benchmarks=[medqa,pubmedqa]", "logger=wandb", "max_new_tokens=6"]
    command = [sys.executable, "eval.py", "suite=medical", *overrides, "budgets=[3]", f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    records = read_wandb_records(run_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the offline run was never finished"
        time.sleep(0.2)  # W&B's service process writes the file behind the run
        records = read_wandb_records(run_file)
    history = {_key(item) for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item}
    logged = {key.rsplit("/", 1)[0] for key in history if key.endswith("/_type")}  # a table or image: its keys
    assert logged == {"eval/scores", "eval/predictions", "eval/budgets", "eval/budgets_chart"}
    summary = {
        _key(i): i.value_json for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update
    }
    report = json.loads((out / "report.json").read_text())
    assert json.loads(summary["eval/medqa/base/accuracy"]) == report["benchmarks"]["medqa"]["base"]["accuracy"]
    assert json.loads(summary["eval/suite/base/micro_accuracy"]) == report["averages"]["base"]["micro_accuracy"]
    tables = list(out.glob("wandb/offline-run-*/files/media/table/eval/predictions_*.table.json"))
    assert len(json.loads(tables[0].read_text())["data"]) == 5  # 3 MedQA + 2 PubMedQA items, the base only
