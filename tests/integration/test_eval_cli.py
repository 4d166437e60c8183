"""eval.py end to end on the CPU, as a user runs it, on the adapter of a short smoke training run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from tests.helpers.cli import eval_py, train_py
from tests.helpers.configs import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow

PUBMEDQA = SHARED_DATA / "pubmedqa"
REPORT_FILES = ("report.json", "report.md", "predictions.jsonl", "report.png")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke")
    train_py("experiment=smoke", f"hydra.run.dir={run_dir}", "trainer.max_steps=10")
    return run_dir


def write_pubmedqa(folder: Path, n: int) -> Path:
    """A folder in PubMedQA's release layout (ori_pqal.json + test_ground_truth.json) with n short items."""
    folder.mkdir()
    labels = {str(1000 + i): ("yes", "no", "maybe")[i % 3] for i in range(n)}
    rows = {
        pubid: {
            "QUESTION": f"Does treatment {i} reduce mortality in sepsis?",
            "CONTEXTS": [f"Patients with sepsis received treatment {i}.", "Mortality was recorded at 28 days."],
            "final_decision": label,
        }
        for i, (pubid, label) in enumerate(labels.items())
    }
    (folder / "ori_pqal.json").write_text(json.dumps(rows))
    (folder / "test_ground_truth.json").write_text(json.dumps(labels))
    return folder


def zeroed_copy(adapter: Path, target: Path) -> Path:
    """The adapter with every LoRA B set to zero: the same model as the base."""
    shutil.copytree(adapter, target)
    weights = load_file(target / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in weights.items()}, target / "adapter_model.safetensors")
    return target


def read_report(out: Path, benchmark: str) -> tuple[dict, list[dict], list[str]]:
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())["benchmarks"][benchmark]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    table = (out / "report.md").read_text().split("### Adapters ranked")[0]  # the models' table, not the ranking
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    return report, predictions, rows


def check_counts(out: Path, benchmark: str, models: list[str], n: int) -> list[dict]:
    """report.json n, predictions.jsonl lines and report.md rows agree: n items for each model."""
    report, predictions, rows = read_report(out, benchmark)
    assert sorted(report) == sorted(models)
    assert all(report[m]["n"] == n and 0 <= report[m]["accuracy"] <= 1 for m in models)
    assert Counter(p["model"] for p in predictions) == dict.fromkeys(models, n)
    assert all(p["benchmark"] == benchmark and p["gold"] in ("yes", "no", "maybe") for p in predictions)
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == models  # base first
    return predictions


@pytest.fixture(scope="module")
def sweep_eval(smoke_run, tmp_path_factory) -> tuple[Path, list[str]]:
    """One multirun (one process) of a written PubMedQA folder and medical_o1_val, no shared data needed.

    The models are the base and a sweep dir of two adapters: the trained one and a zeroed copy, which
    must score exactly as the base does. ``++benchmark.path`` adds the key medical_o1_val doesn't use.
    The smoke run's data, seed and max_seq_length come from the adapters' run record (nothing retyped), so
    medical_o1_val scores the rows training held out.
    """
    tmp = tmp_path_factory.mktemp("sweep_eval")
    data = write_pubmedqa(tmp / "pubmedqa", n=24)
    trained = tmp / "sweep" / "0" / "adapter"
    shutil.copytree(smoke_run / "adapter", trained)
    shutil.copytree(smoke_run / ".hydra", trained.parent / ".hydra")  # what trained it: lr, rank, val loss
    shutil.copy(smoke_run / "summary.json", trained.parent)
    zeroed = zeroed_copy(smoke_run / "adapter", tmp / "sweep" / "1" / "adapter")
    eval_py(
        "-m",
        "benchmark=pubmedqa,medical_o1_val",
        f"++benchmark.path={data}",
        "limit=20",
        f"sweep_dir={tmp / 'sweep'}",
        "max_new_tokens=16",
        f"hydra.sweep.dir={tmp / 'eval'}",
    )
    return tmp / "eval", ["base", f"adapter:{trained}", f"adapter:{zeroed}"]


def test_pubmedqa_layout_compares_base_and_a_sweep_of_adapters(sweep_eval):
    out, models = sweep_eval
    predictions = check_counts(out / "0", "pubmedqa", models, n=20)
    outputs = {m: [p["output"] for p in predictions if p["model"] == m] for m in models}
    assert outputs[models[2]] == outputs["base"]  # the base is the adapter switched off, after a switch
    assert outputs[models[1]] != outputs["base"]  # the trained adapter is really active
    ids = {m: [p["id"] for p in predictions if p["model"] == m] for m in models}
    assert ids[models[1]] == ids[models[2]] == ids["base"] and len(set(ids["base"])) == 20  # one subsample
    # Reasoning lengths are the generated tokens, never more than max_new_tokens=16 (the random model's text,
    # tokenized again, counts more: 86.9 against a limit of 64 in a report before).
    report = json.loads((out / "0" / "report.json").read_text())["benchmarks"]["pubmedqa"]
    assert all(0 < report[m]["mean_reasoning_tokens"] <= 16 for m in models)
    assert all(0 < p["reasoning_tokens"] <= p["new_tokens"] <= 16 for p in predictions)


def test_a_sweep_report_ranks_adapters_beside_their_training_run(sweep_eval, smoke_run):
    out, (_, trained_label, zeroed_label) = sweep_eval
    runs = json.loads((out / "0" / "report.json").read_text())["runs"]
    summary = json.loads((smoke_run / "summary.json").read_text())
    trained_cfg = OmegaConf.load(smoke_run / ".hydra" / "config.yaml")
    assert list(runs) == [trained_label]  # the zeroed copy has no run dir to read
    assert runs[trained_label]["val_loss"] == pytest.approx(summary["val_loss"])
    assert (runs[trained_label]["lr"], runs[trained_label]["r"]) == (trained_cfg.optimizer.lr, trained_cfg.model.lora.r)
    markdown = (out / "0" / "report.md").read_text()
    ranking = markdown.split("### Adapters ranked by accuracy")[1].split("\n## ")[0].splitlines()
    assert [line.split(" | ")[1] for line in ranking if line.startswith("| 1 ")] == [trained_label]
    assert zeroed_label not in "".join(ranking)
    assert (out / "0" / "accuracy_vs_val_loss.png").read_bytes().startswith(b"\x89PNG")


def test_validation_loss_is_lower_with_the_adapter(sweep_eval, smoke_run):
    out, (base_label, trained_label, zeroed_label) = sweep_eval
    report, predictions, rows = read_report(out / "1", "medical_o1_val")
    base, tuned, zeroed = report[base_label], report[trained_label], report[zeroed_label]
    assert tuned["loss"] < base["loss"]
    assert tuned["perplexity"] < base["perplexity"]
    assert zeroed["loss"] == pytest.approx(base["loss"], rel=1e-6)
    for metrics in (base, tuned):
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-4)
        assert metrics["n"] > 0 and 0 <= metrics["token_accuracy"] <= 1
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert tuned["loss"] == pytest.approx(summary["val_loss"], rel=1e-4)  # what training measured on the same rows
    assert predictions == [] and len(rows) == 3


@pytest.mark.skipif(not (PUBMEDQA / "test_ground_truth.json").is_file(), reason="real PubMedQA files not present")
def test_real_pubmedqa_subsample_reports_base_and_adapter(smoke_run, tmp_path):
    adapter = smoke_run / "adapter"
    eval_py(
        "benchmark=pubmedqa",
        f"benchmark.path={PUBMEDQA}",
        "limit=20",
        f"adapter_path={adapter}",
        "max_new_tokens=32",
        f"hydra.run.dir={tmp_path}",
    )
    check_counts(tmp_path, "pubmedqa", ["base", f"adapter:{adapter}"], n=20)


def test_generate_mode_streams_each_models_answer(smoke_run, tmp_path):
    adapter = smoke_run / "adapter"
    out = eval_py(
        "mode=generate",
        'question="A 60-year-old man, chest pain: next step?"',  # quoted for Hydra, as eval.yaml says
        f"adapter_path={adapter}",
        "max_new_tokens=12",
        f"hydra.run.dir={tmp_path}",
    )
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [a["model"] for a in answers] == ["base", f"adapter:{adapter}"]
    assert out.stdout.index("===== base =====") < out.stdout.index(f"===== adapter:{adapter} =====")
    for answer in answers:
        assert answer["question"] == "A 60-year-old man, chest pain: next step?"  # commas survive
        assert answer["output"] and answer["output"] in out.stdout
    assert f"answers saved to {tmp_path / 'answers.jsonl'}" in out.stdout + out.stderr  # says where they went


def test_an_evaluation_never_writes_over_results_or_a_training_run(smoke_run, tmp_path):
    """Into a folder that holds answers, or a training run: refused in one line, not a byte changed (not even
    .hydra/, which Hydra itself would rewrite); a command line's secret is written nowhere."""
    secret = "hf_" + "S" * 30
    adapter = f"adapter_path={smoke_run / 'adapter'}"
    ask = ("mode=generate", 'question="Chest pain: next step?"', adapter, "max_new_tokens=4")
    first = tmp_path / "first"
    eval_py(*ask, f"+data.hub_token={secret}", f"hydra.run.dir={first}")
    assert (first / ".hydra" / "config.yaml").is_file()
    assert not any(secret.encode() in path.read_bytes() for path in first.rglob("*") if path.is_file())
    for target, held in ((first, "holds an evaluation already (answers.jsonl)"), (smoke_run, "holds a training run")):
        before = {str(p): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
        out = eval_py(*ask, "max_new_tokens=6", f"hydra.run.dir={target}", check=False)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        error = out.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {target} {held}") and error.endswith("choose another hydra.run.dir."), error
        assert {str(p): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()} == before


def test_an_adapter_copied_beside_another_runs_adapter_is_not_credited_with_that_run(smoke_run, tmp_path):
    """<run>/adapter is the run's; another adapter put in that folder gets the run's numbers only if its record
    is that adapter's (the same run), never another run's loss and lr."""
    from medllm.evaluation.evaluate import training_run
    from medllm.runs.record import RECORD_FILE

    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    assert training_run(str(run_dir / "adapter")).val_loss is not None
    shutil.copytree(run_dir / "adapter", run_dir / "adapter_copy")
    assert training_run(str(run_dir / "adapter_copy")) == training_run(str(run_dir / "adapter"))  # the same run
    record = json.loads((run_dir / "adapter_copy" / RECORD_FILE).read_text())
    record["config"]["seed"] += 1  # an adapter of another run
    (run_dir / "adapter_copy" / RECORD_FILE).write_text(json.dumps(record))
    assert training_run(str(run_dir / "adapter_copy")) is None
    (run_dir / "adapter_copy" / RECORD_FILE).unlink()  # or of no known run
    assert training_run(str(run_dir / "adapter_copy")) is None


def test_an_evaluation_stopped_by_sigterm_says_so_and_its_folder_takes_the_rerun(smoke_run, tmp_path):
    import signal
    import time

    settings = [
        "benchmark=pubmedqa", f"benchmark.path={write_pubmedqa(tmp_path / 'pq', n=40)}",
        f"adapter_path={smoke_run / 'adapter'}", f"hydra.run.dir={tmp_path / 'eval'}",
    ]  # fmt: skip
    command = [sys.executable, "eval.py", *settings, "max_new_tokens=64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "eval" / "eval.log").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # eval.log opens at eval.py's first message: the handler is in place by then
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted before the report was written") and "resume=true" in last
    assert not (tmp_path / "eval" / "report.json").exists()
    kept = tmp_path / "eval" / "predictions.jsonl"
    kept = kept.read_text().splitlines() if kept.is_file() else []
    eval_py(*settings, "max_new_tokens=64", "resume=true")  # the same command continues in the same folder
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 80 and set(kept) <= set(predictions)  # what the stopped run finished is kept
