"""A run remembers itself, and the loop learns: train.py on a learnable task, eval.py from the adapter folder alone.

The task is multiple choice in the medical-o1 schema: the diseased organ named in the question decides the
specialist, options always in the same order, the reasoning says which organ and the response names the letter.
A tiny model learns that in a few seconds. eval.py then scores it as a user would, given nothing but the
benchmark and the adapter folder: the model (non-default tiny sizes), max_seq_length and instruction come from
the run's record. Any mismatch between how training renders rows and how evaluation prompts (BOS, turns, think
block, instruction, literal encoding) or parses answers leaves the adapter near chance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from medllm.runs.record import RECORD_FILE
from medllm.tasks.items import BenchmarkItem
from medllm.training.resume import RECORD_KEY
from tests.helpers.cli import eval_py, train_py

pytestmark = pytest.mark.slow

SPECIALISTS = {"heart": "Cardiologist", "lung": "Pulmonologist", "kidney": "Nephrologist", "liver": "Hepatologist"}
OPTIONS = dict(zip("ABCD", SPECIALISTS.values(), strict=True))
INSTRUCTION = "Choose the specialist."
TRAIN = (
    "experiment=smoke",
    "data=local",
    "data.val_size=20",
    f"data.instruction={INSTRUCTION}",  # not eval.yaml's: the prompt must come from the run
    "model.tiny.hidden_size=48",  # not eval.yaml's: without the run's record the adapter would not even load
    "max_seq_length=256",
    "data.batch_size=8",
    "trainer.max_steps=100",
    "trainer.val_check_interval=50",
    "callbacks.checkpoint.every_n_train_steps=0",
)


def questions(n: int, seed: int) -> list[BenchmarkItem]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        organ = rng.choice(list(SPECIALISTS))
        patient = f"A {rng.randint(20, 89)}-year-old {rng.choice(['man', 'woman'])}"
        question = f"{patient} has a disease of the {organ}. Which specialist should see this patient?"
        gold = "ABCD"[list(SPECIALISTS).index(organ)]
        items.append(BenchmarkItem(f"q{i}", question, tuple(OPTIONS), gold, options=OPTIONS))
    return items


def training_row(item: BenchmarkItem) -> dict[str, str]:
    """The medical-o1 schema; the question as the mcq benchmark shows it (question, lettered options, how to answer)."""
    specialist = OPTIONS[item.gold]
    organ = next(organ for organ, name in SPECIALISTS.items() if name == specialist)
    return {
        "Question": item.prompt_text(),
        "Complex_CoT": f"The {organ} is treated by a {specialist.lower()}.",
        "Response": f"The answer is {item.gold}.",
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run dir, the training rows, other questions of the same task in the mcq benchmark's layout)."""
    tmp = tmp_path_factory.mktemp("task")
    rows = write_jsonl(tmp / "train.jsonl", [training_row(item) for item in questions(200, seed=1)])
    asked = [
        {"id": q.id, "question": q.question, "options": q.options, "answer": q.gold} for q in questions(40, seed=2)
    ]
    benchmark = write_jsonl(tmp / "questions.jsonl", asked)
    run_dir = tmp / "run"
    train_py(*TRAIN, f"data.path={rows}", f"hydra.run.dir={run_dir}")
    return run_dir, rows, benchmark


def test_the_loop_learns(trained, tmp_path):
    run_dir, _, benchmark = trained
    adapter = run_dir / "adapter"
    eval_py(
        "benchmark=mcq",
        f"benchmark.path={benchmark}",
        f"adapter_path={adapter}",
        "max_new_tokens=40",  # the trained completion is ~36 tokens
        f"hydra.run.dir={tmp_path}",
    )
    report = json.loads((tmp_path / "report.json").read_text())["benchmarks"]["mcq"]
    assert report[f"adapter:{adapter}"]["n"] == report["base"]["n"] == 40
    assert report[f"adapter:{adapter}"]["accuracy"] >= 0.9
    assert report["base"]["accuracy"] <= 0.4  # chance is 0.25
    prompts = {json.loads(line)["prompt"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()}
    assert all(prompt.count(INSTRUCTION) == 1 for prompt in prompts)  # the run's instruction, from its record


def test_held_out_loss_is_measured_on_the_runs_own_rows(trained, tmp_path):
    run_dir, _, _ = trained
    out = eval_py("benchmark=medical_o1_val", f"adapter_path={run_dir / 'adapter'}", f"hydra.run.dir={tmp_path}")
    record = json.loads((run_dir / "adapter" / RECORD_FILE).read_text())
    held_out = record["data_split"]["val"]
    assert f"validation rows: the {held_out['rows']} rows the run of" in out.stdout and held_out["digest"] in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())["benchmarks"]["medical_o1_val"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report[f"adapter:{run_dir / 'adapter'}"]["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert report[f"adapter:{run_dir / 'adapter'}"]["n"] == held_out["rows"] == 20


def test_a_contradicting_override_is_refused_in_one_line(trained, tmp_path):
    run_dir, _, benchmark = trained
    adapter = run_dir / "adapter"
    for override, said in [
        ("max_seq_length=512", "max_seq_length: the run's 256, given 512"),
        ("model.tiny.hidden_size=64", "model.tiny.hidden_size: the run's 48, given 64"),
    ]:
        given = ("benchmark=mcq", f"benchmark.path={benchmark}", f"adapter_path={adapter}", override)
        out = eval_py(*given, f"hydra.run.dir={tmp_path}", check=False)
        assert out.returncode != 0
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: the command line contradicts the run that trained {adapter}") and said in last
        assert not (tmp_path / "report.json").exists()


def test_rows_changed_since_training_are_not_scored_as_held_out(trained, tmp_path):
    run_dir, rows, _ = trained
    original = rows.read_text(encoding="utf-8")
    changed = [{**row, "Response": row["Response"] + " Refer."} for row in map(json.loads, original.splitlines())]
    try:
        write_jsonl(rows, changed)
        given = ("benchmark=medical_o1_val", f"adapter_path={run_dir / 'adapter'}")
        out = eval_py(*given, f"hydra.run.dir={tmp_path}", check=False)
    finally:
        rows.write_text(original, encoding="utf-8")
    assert out.returncode != 0
    assert "error: the validation rows differ from those the run of" in out.stderr.strip().splitlines()[-1]


def test_checkpoints_carry_the_record_of_the_adapter_folder(trained):
    """What made the run travels with its checkpoints too: config, chat format and data split."""
    run_dir, _, _ = trained
    record = json.loads((run_dir / "adapter" / RECORD_FILE).read_text())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert json.loads(json.dumps(checkpoint[RECORD_KEY])) == record
    assert record["data_split"]["train"]["rows"] > 0 and "{question}" in record["chat_format"]["generation_prompt"]
