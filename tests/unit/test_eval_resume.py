"""predictions.jsonl is the evaluation's record: written item by item, continued by resume=true, and a killed and
resumed evaluation ends with the report of an uninterrupted one (greedy, CPU, the tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medllm.errors import ConfigError
from medllm.evaluation.evaluate import evaluate
from medllm.evaluation.predictions import PredictionLog
from medllm.runs.layout import RunDirError
from tests.helpers.adapters import QUESTIONS, save_adapter
from tests.helpers.configs import compose_eval


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("resume")
    rows = [
        {"id": f"q{i}", "question": QUESTIONS[i % 5] + "?" * i, "options": ["yes", "no"], "answer": "AB"[i % 2]}
        for i in range(8)
    ]
    questions = tmp / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    return questions, save_adapter(tmp / "adapter")


def run(inputs, out: Path, *overrides: str):
    questions, adapter = inputs
    settings = ("benchmark=mcq", f"benchmark.path={questions}", f"adapter_path={adapter}", "max_new_tokens=12")
    return evaluate(compose_eval(*settings, "batch_size=3", "budgets=[6]", f"paths.output_dir={out}", *overrides))


def report(out: Path) -> dict:
    content = json.loads((out / "report.json").read_text())
    content.pop("speed")  # this process's timings
    return content


def test_a_killed_and_resumed_evaluation_ends_as_an_uninterrupted_one(inputs, tmp_path, monkeypatch):
    run(inputs, tmp_path / "whole")
    append, written = PredictionLog.append, []

    def killed_after_five(self, row):
        if len(written) == 5:
            raise KeyboardInterrupt  # what eval.py turns a SIGTERM into
        written.append(row["id"])
        append(self, row)

    monkeypatch.setattr(PredictionLog, "append", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, tmp_path / "cut")
    monkeypatch.undo()
    stopped = tmp_path / "cut" / "predictions.jsonl"
    assert len(stopped.read_text().splitlines()) == 5 and not (tmp_path / "cut" / "report.json").exists()
    stopped.write_bytes(stopped.read_bytes()[:-25])  # the last line torn, as by a kill in the middle of its write
    run(inputs, tmp_path / "cut", "resume=true")
    whole, resumed = (tmp_path / d / "predictions.jsonl" for d in ("whole", "cut"))
    assert resumed.read_text() == whole.read_text()  # item order, outputs, forced answers: all alike
    assert report(tmp_path / "cut") == report(tmp_path / "whole")
    assert len(whole.read_text().splitlines()) == 16  # 8 items, base and adapter
    run(inputs, tmp_path / "cut", "resume=true")  # a finished evaluation resumed: nothing left, the same report
    assert report(tmp_path / "cut") == report(tmp_path / "whole")


def test_a_resume_with_other_settings_or_a_rerun_without_resume_is_refused(inputs, tmp_path):
    out = tmp_path / "eval"
    run(inputs, out, "limit=2", "force_answers=false", "budgets=[]")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=r"resume=true: .* other settings \(max_new_tokens: 12 -> 10\)"):
        run(inputs, out, "limit=2", "force_answers=false", "budgets=[]", "resume=true", "max_new_tokens=10")
    with pytest.raises(ConfigError, match=r"other settings \(items: \{'mcq'.*\}\); run the same"):  # 3 items
        run(inputs, out, "limit=3", "force_answers=false", "budgets=[]", "resume=true")
    with pytest.raises(RunDirError, match=r"holds an evaluation already .*the same command with resume=true"):
        run(inputs, out, "limit=2", "force_answers=false", "budgets=[]")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_line_broken_inside_the_file_is_named_not_dropped(tmp_path):
    log = PredictionLog(tmp_path, {"a": 1}, resume=False)
    for i in range(3):
        log.append({"benchmark": "b", "model": "base", "id": str(i), "parsed": None})
    log.close()
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "predictions.jsonl").write_text("\n".join([lines[0], lines[1][:10], lines[2]]) + "\n")
    with pytest.raises(ConfigError, match=r"predictions\.jsonl: line 2 is not valid JSON"):
        PredictionLog(tmp_path, {"a": 1}, resume=True)


def test_a_long_setting_that_differs_is_named_in_short(tmp_path):
    from medllm.evaluation.predictions import check_resume

    before = {"items": {"medqa": [str(i) for i in range(500)], "pubmedqa": ["1"]}, "seed": 1}
    now = {"items": {"medqa": [str(i) for i in range(400)], "pubmedqa": ["1"]}, "seed": 2}
    with pytest.raises(ConfigError, match=r"other settings \(items of medqa; seed: 1 -> 2\); run the same"):
        check_resume(before, now, tmp_path / "eval_settings.json")
