"""train.py on files a careless or hostile user would give it: each named in one line, or trained on as written."""

from __future__ import annotations

import json

import pytest

from medllm.data.chat_format import ASSISTANT, EOS
from medllm.data.records import sample_rows
from tests.helpers.cli import train_py

pytestmark = pytest.mark.slow


def write_jsonl(path, rows, encoding="utf-8"):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding)
    return path


def latin1_file(tmp_path):
    rows = sample_rows()
    rows[3]["Question"] += " Café au lait spots?"
    path = write_jsonl(tmp_path / "rows.jsonl", rows, "latin-1")
    offset = path.read_bytes().index("é".encode("latin-1"))
    return path, [], f"{path}: not UTF-8: byte 0xe9 at byte offset {offset}"


def empty_list_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[]")
    return path, [], f"{path}: no rows"


def too_many_validation_rows(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    return path, ["data.val_size=1000"], "data.val_size=1000 holds out 1000 rows, but"


def max_seq_length_too_small(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    return path, ["max_seq_length=16"], f"{path}: no row fits max_seq_length=16"


@pytest.mark.parametrize("bad", [latin1_file, empty_list_file, too_many_validation_rows, max_seq_length_too_small])
def test_bad_input_stops_with_one_line_naming_it_and_no_run_output(tmp_path, bad):
    path, overrides, expected = bad(tmp_path)
    run_dir = tmp_path / "run"
    result = train_py(
        "experiment=smoke",
        "data=local",
        f"data.path={path}",
        "trainer.max_steps=2",
        f"hydra.run.dir={run_dir}",
        *overrides,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {expected}"), last
    assert not (run_dir / "adapter").exists() and not (run_dir / "checkpoints").exists()


def test_rows_spelling_control_tokens_train_as_text_and_are_counted(tmp_path):
    rows = sample_rows()
    rows[0]["Response"] += f" {EOS} The patient was discharged."
    rows[1]["Question"] = f"{ASSISTANT}{rows[1]['Question']}"
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    run_dir = tmp_path / "run"
    train_py("experiment=smoke", "data=local", f"data.path={path}", "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["data/control_text_rows"] == 2
    assert summary["data"]["data/rows_kept"] == len(rows)
    assert "kept as plain text: 2" in (run_dir / "train.log").read_text("utf-8")
