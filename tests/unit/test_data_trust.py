"""Data is never silently changed: control text stays text, odd files are named, caches can't go stale."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import unicodedata
from pathlib import Path

import datasets
import pytest

from medllm.config.rules import show
from medllm.data import prepare
from medllm.data.chat_format import ASSISTANT, EOS, IGNORE_INDEX, THINK_CLOSE
from medllm.data.datamodule import ReasoningDataModule
from medllm.data.records import DataError, sample_rows
from medllm.data.rows import _checked, check_data
from medllm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def datamodule(tokenizer, path: Path, cache_dir: Path, **kwargs) -> ReasoningDataModule:
    settings = {"val_size": 2, "max_seq_length": 512, "seed": 1} | kwargs
    return ReasoningDataModule(tokenizer, source="local", path=str(path), cache_dir=str(cache_dir), **settings)


def prepared_dirs(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "prepared").iterdir()}


# ---- control tokens spelled in rows ---------------------------------------------------------------
def test_rows_spelling_control_tokens_train_one_eos_at_the_end_and_are_counted(tokenizer, tmp_path):
    rows = sample_rows()
    rows[0]["Response"] += f" {EOS} and more text after it."
    rows[1]["Question"] = f"{ASSISTANT}{rows[1]['Question']}"
    rows[2]["Complex_CoT"] += f"{THINK_CLOSE}\n\nFake answer."
    data = datamodule(tokenizer, write_jsonl(tmp_path / "rows.jsonl", rows), tmp_path / "cache")
    data.setup("fit")
    assert data.summary.control_text_rows == 3
    assert any("control token" in line and line.endswith(": 3") for line in data.summary.lines())
    examples = datasets.concatenate_datasets([data.splits["train"], data.splits["val"]])
    assert len(examples) == len(rows)
    eos, assistant = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(ASSISTANT)
    for ids, labels in zip(examples["input_ids"], examples["labels"]):
        assert [i for i, label in enumerate(labels) if label == eos] == [len(labels) - 1]
        assert ids.count(assistant) == 1
        assert labels[ids.index(assistant)] == IGNORE_INDEX and labels[ids.index(assistant) + 1] != IGNORE_INDEX


# ---- files: encodings, empty files, CSV cells ------------------------------------------------------
ROWS = [{"Question": f"Q{i} café?", "Complex_CoT": f"Reasoning {i}.", "Response": f"Answer {i}."} for i in range(3)]


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv"])
def test_utf8_with_a_byte_order_mark_reads_like_utf8(tmp_path, suffix):
    plain, bom = tmp_path / f"plain.{suffix}", tmp_path / f"bom.{suffix}"
    if suffix == "csv":
        write_csv(plain, ROWS), write_csv(bom, ROWS, encoding="utf-8-sig")
    else:
        text = json.dumps(ROWS, ensure_ascii=False) if suffix == "json" else write_jsonl(plain, ROWS).read_text("utf-8")
        plain.write_text(text, "utf-8"), bom.write_text(text, "utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    checked = [check_data({"source": "local", "path": str(p), "val_size": 1})[0] for p in (plain, bom)]
    assert checked[0].rows.to_list() == checked[1].rows.to_list()
    assert checked[0].rows["question"][0] == "Q0 café?"


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv"])
def test_latin1_is_named_with_the_file_and_byte_offset(tmp_path, suffix):
    path = tmp_path / f"rows.{suffix}"
    if suffix == "csv":
        write_csv(path, ROWS, encoding="latin-1")
    else:
        text = (
            json.dumps(ROWS, ensure_ascii=False)
            if suffix == "json"
            else "\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS)
        )
        path.write_text(text, "latin-1")
    offset = path.read_bytes().index("é".encode("latin-1"))
    with pytest.raises(DataError) as err:
        check_data({"source": "local", "path": str(path)})
    message = str(err.value)
    assert str(path) in message and f"byte offset {offset}" in message and "UTF-8" in message
    assert "\n" not in message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_are_named(tmp_path, encoding):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]), encoding)
    with pytest.raises(DataError, match=rf"{path}: .*(UTF-16|UTF-32|NUL byte at byte offset \d+).*UTF-8"):
        check_data({"source": "local", "path": str(path)})


@pytest.mark.parametrize(
    ("name", "content"),
    [("rows.jsonl", ""), ("rows.json", "[]"), ("rows.json", " \n"), ("rows.csv", "Question,Complex_CoT,Response\n")],
)
def test_an_empty_file_says_no_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{path}: no rows") as err:
        check_data({"source": "local", "path": str(path)})
    assert "column" not in str(err.value)


def test_csv_cells_are_read_as_written(tmp_path):
    rows = [
        {"Question": f"Dose {i}?", "Complex_CoT": "Weight-based.", "Response": value}
        for i, value in enumerate(["42", "0.50", "NA", "007"])
    ]
    (checked,) = check_data({"source": "local", "path": str(write_csv(tmp_path / "rows.csv", rows)), "val_size": 1})
    assert checked.rows["response"] == ["42", "0.50", "NA", "007"]


def test_a_short_csv_row_names_its_missing_field(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("Question,Complex_CoT,Response\nq1,c1,r1\nq2,c2\n", "utf-8")
    with pytest.raises(DataError, match=r"row 2: field 'Response' is missing"):
        check_data({"source": "local", "path": str(path)})


# ---- invisible fields --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "invisible", ["\u200b", "\u200c\u200d", "\u2060", "\ufeff", "\u00a0", "\u3000\u200b", "\u2028", "\u3164"]
)
def test_fields_of_only_invisible_characters_are_empty(tmp_path, invisible):
    rows = [dict(r) for r in ROWS]
    rows[1]["Response"] = invisible
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=rf"(?s){path}: 1 bad row.*row 2: field 'Response' is empty") as err:
        check_data({"source": "local", "path": str(path)})
    assert f"U+{ord(invisible[-1]):04X}" in str(err.value)


def test_invisible_characters_inside_real_text_are_kept(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["Response"] = "Ménière\u200b disease\u00a0(ok)"
    (checked,) = check_data({"source": "local", "path": str(write_jsonl(tmp_path / "r.jsonl", rows)), "val_size": 1})
    assert checked.rows["response"][0] == unicodedata.normalize("NFC", "Ménière\u200b disease\u00a0(ok)")


@pytest.mark.parametrize("control", ["\x00", "\x1b[31m", "\x7f", "\x08"], ids=["NUL", "escape", "DEL", "backspace"])
def test_control_characters_are_named_not_trained_on(tmp_path, control):
    """Binary or corrupted text (a NUL in a Response) is a bad row; tabs, newlines and form feeds are text."""
    rows = [dict(r) for r in ROWS]
    rows[1]["Response"] = f"Metformin{control} first line."
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(
        DataError,
        match=rf"row 2: field 'Response' is holding a control character \(U\+{ord(control[0]):04X} at character 9\)",
    ):
        check_data({"source": "local", "path": str(path)})
    rows[1]["Response"] = "Metformin\tfirst\r\nline\f."
    check_data({"source": "local", "path": str(write_jsonl(tmp_path / "ok.jsonl", rows)), "val_size": 1})


def test_validation_rows_repeating_training_questions_are_counted_and_said(tokenizer, tmp_path, caplog):
    """Rows of one question with different answers leak it into validation: a run says how many, not silently."""
    from medllm.data.datamodule import ReasoningDataModule

    rows = [{"Question": "Dose of metformin?", "Complex_CoT": "c", "Response": f"{n} mg."} for n in range(10)]
    rows += [{"Question": f"Other question {n}?", "Complex_CoT": "c", "Response": "r"} for n in range(10)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    def summary(data_path):
        data = ReasoningDataModule(
            tokenizer, source="local", path=str(data_path), val_size=6, cache_dir=str(tmp_path / "cache"), seed=3
        )
        data.setup("fit")
        val = [tokenizer.decode(ids) for ids in data.splits["val"]["input_ids"]]
        return data.summary, sum("metformin" in text for text in val)

    leaked, metformin_in_val = summary(path)
    assert metformin_in_val > 0 and leaked.val_prompts_in_train == metformin_in_val  # the split put some there
    assert f"{metformin_in_val} of the 6 validation rows ask a question some training rows ask too" in caplog.text
    assert leaked.metrics()["data/val_prompts_in_train"] == metformin_in_val
    distinct = write_jsonl(tmp_path / "distinct.jsonl", [{**r, "Question": f"Q{i}?"} for i, r in enumerate(rows)])
    assert summary(distinct)[0].val_prompts_in_train == 0


# ---- settings that leave nothing to train on -----------------------------------------------------
def test_max_seq_length_below_every_row_names_the_setting_and_the_lengths(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    full = datamodule(tokenizer, path, tmp_path / "cache", max_seq_length=4096)
    full.setup("fit")
    lengths = sorted([*full.splits["train"]["length"], *full.splits["val"]["length"]])
    with pytest.raises(DataError) as err:
        datamodule(tokenizer, path, tmp_path / "cache", max_seq_length=16).setup("fit")
    message = str(err.value)
    assert "max_seq_length=16" in message and str(path) in message
    assert f"{lengths[0]} to {lengths[-1]} tokens" in message
    assert f"median {int(statistics.median(lengths))}." in message
    suggested = int(message.split("(max_seq_length=")[1].split(" ")[0])
    assert sum(n <= suggested for n in lengths) >= len(lengths) / 2  # the suggestion keeps what it says


def test_truncating_below_every_prompt_is_named_too(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    with pytest.raises(DataError, match=r"no row fits max_seq_length=4 .*no_trained_tokens"):
        datamodule(tokenizer, path, tmp_path / "cache", max_seq_length=4, too_long="truncate").setup("fit")


@pytest.mark.parametrize("val_size", [0, 0.0, 1.0, 24, 1000, 0.99, -3, "abc", True])
def test_val_size_that_leaves_no_split_is_named(tokenizer, tmp_path, val_size):
    rows = sample_rows()
    assert len(rows) == 24
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    # A value no row count makes right is the schema's to refuse (ConfigError); one this file's rows can't split,
    # the data check's (DataError): either way one line naming the setting and the value.
    with pytest.raises((DataError, ConfigError), match=re.escape(f"data.val_size={show(val_size)}")) as err:
        check_data({"source": "local", "path": str(path), "val_size": val_size})
    assert "\n" not in str(err.value)
    with pytest.raises((DataError, ConfigError), match=r"data\.val_size"):
        datamodule(tokenizer, path, tmp_path / "cache", val_size=val_size).setup("fit")


@pytest.mark.parametrize("val_size", [1, 23, 0.1, 0.2, 0.001, 0.95])
def test_val_size_keeps_its_meaning_fraction_rounded_up_or_count(tokenizer, tmp_path, val_size):
    data = datamodule(
        tokenizer, write_jsonl(tmp_path / "rows.jsonl", sample_rows()), tmp_path / "cache", val_size=val_size
    )
    data.setup("fit")
    n = len(data.splits["train"]) + len(data.splits["val"])
    reference = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=val_size, seed=1)
    assert len(data.splits["val"]) == len(reference["test"]) >= 1 and len(data.splits["train"]) >= 1


# ---- caches that can't go stale ------------------------------------------------------------------
def test_every_setting_that_changes_the_examples_gets_its_own_cache(tokenizer, tmp_path):
    from medllm.models.tiny import tiny_tokenizer

    path, cache = write_jsonl(tmp_path / "rows.jsonl", sample_rows()), tmp_path / "cache"
    variants = [
        {},
        {"instruction": "Be brief."},
        {"train_on": "all"},
        {"max_seq_length": 300},
        {"max_seq_length": 300, "too_long": "truncate"},
    ]
    for settings in variants:
        datamodule(tokenizer, path, cache, **settings).setup("fit")
    datamodule(tiny_tokenizer(vocab_size=400), path, cache).setup("fit")
    assert len(prepared_dirs(cache)) == len(variants) + 1
    datamodule(tokenizer, path, cache, batch_size=2, packing=True, val_size=3).setup("fit")  # batching only
    assert len(prepared_dirs(cache)) == len(variants) + 1


def test_edited_rows_are_prepared_again_even_with_the_same_size_and_mtime(tokenizer, tmp_path):
    path, cache = write_jsonl(tmp_path / "rows.jsonl", sample_rows()), tmp_path / "cache"
    stat = path.stat()
    first = datamodule(tokenizer, path, cache)
    first.setup("fit")
    rows = sample_rows()
    rows[0]["Response"] = rows[0]["Response"][:-1] + ("X" if rows[0]["Response"][-1] != "X" else "Y")
    write_jsonl(path, rows)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    _checked.clear()  # as in a new process: the first read is not remembered
    second = datamodule(tokenizer, path, cache)
    second.setup("fit")
    assert len(prepared_dirs(cache)) == 2


def test_a_change_to_the_chat_format_code_changes_the_key(monkeypatch, tmp_path):
    from medllm.data import chat_format

    before = prepare.cache_key(rows="r")
    edited = tmp_path / "chat_format.py"
    edited.write_text(Path(chat_format.__file__).read_text("utf-8").replace("\\n\\n{response}", "\\n{response}"))
    monkeypatch.setattr(chat_format, "__file__", str(edited))
    assert prepare.cache_key(rows="r") != before


def test_phi_error_holds_on_data_an_earlier_warn_or_off_run_cached(tokenizer, tmp_path, caplog):
    rows = sample_rows()
    rows[4]["Question"] += " Contact jane.doe@example.org."
    path, cache = write_jsonl(tmp_path / "rows.jsonl", rows), tmp_path / "cache"
    for policy in ("off", "warn"):
        data = datamodule(tokenizer, path, cache, phi_check=policy)
        data.setup("fit")
        assert data.summary.phi == ({} if policy == "off" else {"email": 1})
    assert len(prepared_dirs(cache)) == 1
    with pytest.raises(DataError, match=rf"{path}: possible personal identifiers found; email: 1 row"):
        datamodule(tokenizer, path, cache, phi_check="error").setup("fit")


@pytest.mark.parametrize("damage", ["truncate_arrow", "garbage_summary", "delete_arrow", "empty_summary"])
def test_a_broken_cache_is_rebuilt_with_a_warning(tokenizer, tmp_path, caplog, damage):
    path, cache = write_jsonl(tmp_path / "rows.jsonl", sample_rows()), tmp_path / "cache"
    first = datamodule(tokenizer, path, cache)
    first.setup("fit")
    (target,) = (cache / "prepared").iterdir()
    arrow = next(target.glob("*.arrow"))
    if damage == "truncate_arrow":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    elif damage == "delete_arrow":
        arrow.unlink()
    else:
        (target / "summary.json").write_text("{not json" if damage == "garbage_summary" else "")
    with caplog.at_level(logging.WARNING, logger="medllm.data.prepare"):
        second = datamodule(tokenizer, path, cache)
        second.setup("fit")
    assert any("unreadable" in r.getMessage() and str(target) in r.getMessage() for r in caplog.records)
    assert second.splits["train"]["input_ids"] == first.splits["train"]["input_ids"]
    assert prepare.read_cache(target) is not None  # rebuilt whole


def test_a_cache_that_cannot_be_written_costs_a_warning_and_leaves_nothing_behind(
    tokenizer, tmp_path, monkeypatch, caplog
):
    def disk_full(self, *args, **kwargs):
        Path(args[0]).mkdir(parents=True)
        (Path(args[0]) / "partial.arrow").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    path, cache = write_jsonl(tmp_path / "rows.jsonl", sample_rows()), tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="medllm.data.prepare"):
        data = datamodule(tokenizer, path, cache)
        data.setup("fit")
    assert len(data.splits["train"]) == len(sample_rows()) - 2
    assert any("No space left" in r.getMessage() for r in caplog.records)
    assert not list((cache / "prepared").iterdir())


# ---- validation before any heavy import ---------------------------------------------------------
def test_rows_are_checked_without_torch_transformers_or_a_tokenizer(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["Question"] = "\u200b"
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    script = (
        "import sys\n"
        "from medllm.data.rows import check_data\n"
        "try:\n"
        f"    check_data({{'source': 'local', 'path': {str(path)!r}}})\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'peft', 'tokenizers') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert f"DataError {path}: 1 bad row(s):\n  row 3: field 'Question' is empty" in out
    assert out.strip().endswith("[]")


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["Complex_CoT"] = "First step.\u2028Second step.\u2029Third\u0085step."
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    (checked,) = check_data({"source": "local", "path": str(path), "val_size": 1})
    assert checked.rows["reasoning"][0] == rows[0]["Complex_CoT"]


@pytest.mark.parametrize("indent", [2, None], ids=["pretty-printed", "one-line"])
def test_rows_wrapped_in_an_object_are_named_as_such_not_blamed_on_columns(tmp_path, indent):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": ROWS}, indent=indent), "utf-8")
    expected = rf"{path}: the top level is an object whose 'rows' holds {len(ROWS)} rows; the top level must be"
    with pytest.raises(DataError, match=expected):
        check_data({"source": "local", "path": str(path)})


def test_a_pretty_printed_json_object_of_no_rows_is_named_as_not_rows(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"version": 2, "note": "no rows here"}, indent=2), "utf-8")
    with pytest.raises(DataError, match=rf"{path}: one JSON object, not rows"):
        check_data({"source": "local", "path": str(path)})


def test_identifiers_are_named_by_the_files_own_row_numbers_after_skipped_and_duplicate_rows(tokenizer, tmp_path):
    rows = sample_rows()
    rows[1]["Response"] = ""  # row 2: bad, skipped
    rows[3] = dict(rows[2])  # row 4: a duplicate of row 3, dropped
    rows[6]["Question"] += " Contact jane.doe@example.org."  # row 7 of the file, 5th row kept
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = datamodule(tokenizer, path, tmp_path / "cache", phi_check="error", on_bad_row="skip")
    with pytest.raises(DataError, match=r"email: 1 row\(s\) \(7\)"):
        data.setup("fit")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"val_size": 1}, r"data.val_size=1 holds out 1 row\(s\) for 2 processes, each of which validates"),
        ({"batch_size": 12}, r"22 training rows make no step of data.batch_size=12 on each of 2 processes"),
    ],
)
def test_too_few_rows_for_every_process_of_a_ddp_run_are_named_before_the_model_loads(
    tokenizer, tmp_path, monkeypatch, settings, message
):
    """torchrun sets WORLD_SIZE and LOCAL_WORLD_SIZE before anything else runs: a process left without rows
    would end the run in Lightning's "zero length" error after the model loaded."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    with pytest.raises(DataError, match=message):
        datamodule(tokenizer, path, tmp_path / "cache", **({"val_size": 2} | settings)).setup("fit")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    datamodule(tokenizer, path, tmp_path / "cache", **({"val_size": 2} | settings)).setup("fit")  # one process: fine


def test_rows_a_ddp_epoch_leaves_out_are_counted_in_a_warning(tokenizer, tmp_path, monkeypatch, caplog):
    """21 training rows in global batches of 5 x 2: the last global batch holds 1 row, which one of the 2
    processes could not take, so each epoch trains 20 of them; a last batch of 2 or more is shared out."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    with caplog.at_level(logging.WARNING, logger="medllm.data.datamodule"):
        datamodule(tokenizer, path, tmp_path / "cache", val_size=3, batch_size=5).setup("fit")
    assert "1 of the 21 training rows are left out of each epoch" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medllm.data.datamodule"):
        datamodule(tokenizer, path, tmp_path / "cache", val_size=2, batch_size=5).setup("fit")  # 22 = 2 x 10 + 2
    assert "left out" not in caplog.text
