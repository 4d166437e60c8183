"""Validation names the file, row and field of bad input before anything heavy runs."""

from __future__ import annotations

import json
import unicodedata

import datasets
import pytest

from medllm.config.schema import Data
from medllm.data import phi
from medllm.data.records import Columns, DataError, clean, read_hub, read_local, sample_rows
from medllm.data.rows import check_data, row_sources
from medllm.errors import ConfigError


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def good_rows(n=10):
    return [
        {"Question": f"Question {i}?", "Complex_CoT": f"Reasoning {i}.", "Response": f"Answer {i}."} for i in range(n)
    ]


def load_and_clean(path, **kwargs):
    return clean(read_local(path), Columns(), str(path), **kwargs)


def test_row_7_without_response_is_named(tmp_path):
    rows = good_rows()
    del rows[6]["Response"]  # the 7th row
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_and_clean(path)
    message = str(err.value)
    assert str(path) in message and "row 7" in message and "'Response'" in message and "missing" in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "empty"), ("   \n", "empty"), (42, "not a string"), (None, "null"), ("a \ud800 b", "not valid Unicode")],
)
def test_empty_or_non_string_fields_are_named(tmp_path, value, problem):
    rows = good_rows()
    rows[2]["Complex_CoT"] = value
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=rf"row 3: field 'Complex_CoT' is {problem}"):
        load_and_clean(path)


def test_skip_drops_and_counts_bad_rows_and_duplicates(tmp_path):
    rows = good_rows()
    rows[1]["Question"] = ""
    rows[4] = dict(rows[3])
    rows[5] = {k: f"  {v} " for k, v in rows[3].items()}  # a duplicate once trimmed
    cleaned, report = load_and_clean(write_jsonl(tmp_path / "rows.jsonl", rows), on_bad_row="skip")
    assert report.dropped == {"bad_row": 1, "duplicate": 2}
    assert len(cleaned) == 7 and report.rows_read == 10


def test_missing_column_lists_the_columns_there_are(tmp_path):
    rows = [{"q": "a", "Complex_CoT": "b", "Response": "c"}]
    with pytest.raises(DataError, match=r"\['Question'\] not found.*'q'"):
        load_and_clean(write_jsonl(tmp_path / "rows.jsonl", rows))


def test_custom_columns_and_every_local_format(tmp_path):
    rows = [{"prompt": f"q{i}", "cot": f"c{i}", "answer": f"a{i}"} for i in range(4)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    ds.to_csv(str(tmp_path / "rows.csv"), index=False)
    write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    columns = Columns(question="prompt", reasoning="cot", response="answer")
    for suffix in ("parquet", "csv", "jsonl", "json"):
        cleaned, _ = clean(read_local(tmp_path / f"rows.{suffix}"), columns, suffix)
        assert cleaned["response"] == ["a0", "a1", "a2", "a3"], suffix


def test_unicode_is_nfc_and_case_is_kept(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Ménière disease")
    rows = [{"Question": f"  {decomposed}? ", "Complex_CoT": "Vertigo + Tinnitus.", "Response": "MÉNIÈRE"}]
    cleaned, _ = load_and_clean(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert cleaned["question"] == [unicodedata.normalize("NFC", "Ménière disease?")]
    assert cleaned["response"] == ["MÉNIÈRE"]


def test_malformed_json_lines_name_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"rows.jsonl: line 2 is not valid JSON"):
        read_local(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_local(tmp_path / "absent.jsonl")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_local(tmp_path / "rows.txt")


def test_a_csv_row_with_more_cells_than_the_header_is_named_not_trained_shifted(tmp_path):
    """An unquoted comma splits a field: the row's cells would shift into the wrong columns."""
    path = tmp_path / "rows.csv"
    path.write_text(
        "Question,Complex_CoT,Response\n"
        '"q1",c1,a1\n'
        '"q2\nwith a line break",c2,a2\n'
        "A, 45-year-old man,has chest pain,MI\n"
    )
    with pytest.raises(DataError, match=r"rows.csv: row 3 \(line 5\) has 4 cells where the header has 3; quote"):
        read_local(path)


def test_a_csv_header_that_names_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("Question,Complex_CoT,Response,Response\nq,c,a,see chart\n")
    with pytest.raises(DataError, match=r"rows.csv: the header names column\(s\) \['Response'\] more than once"):
        read_local(path)


def test_two_fields_read_from_one_column_are_refused():
    message = r"^data.columns.question and data.columns.response both name column 'Response'"
    with pytest.raises(DataError, match=message):
        Columns(question="Response")


def test_a_parquet_file_edited_in_place_is_read_as_it_is_now(tmp_path):
    """Copies that keep file times (cp -p, rsync -t) leave an edited file's time as it was: no cache may
    answer for it by path and time."""
    import os

    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(good_rows(3)).to_parquet(str(path))
    assert read_local(path)[0]["Response"] == "Answer 0."
    times = path.stat()
    edited = good_rows(3)
    edited[0]["Response"] = "Edited answer, longer than before."
    datasets.Dataset.from_list(edited).to_parquet(str(path))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert read_local(path)[0]["Response"] == "Edited answer, longer than before."


def test_test_path_errors_name_data_test_path(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", good_rows())
    with pytest.raises(ConfigError, match=r"^data.test_path=.*absent.jsonl: no such file. Point data.test_path"):
        check_data({"source": "local", "path": str(train), "test_path": str(tmp_path / "absent.jsonl")})
    with pytest.raises(ConfigError, match=r"^data.test_path=.* is data.path: the test rows would be the rows trained"):
        check_data({"source": "local", "path": str(train), "test_path": str(tmp_path / "." / "train.jsonl")})


def test_phi_scan_reports_kinds_and_rows_never_values():
    texts = [
        "A 50-year-old man with chest pain.",
        "Contact jane.doe@example.org or call 555-867-5309.",
        "SSN 123-45-6789, MRN: 00482913, DOB: 03/14/1961.",
    ]
    finding = phi.scan([texts])
    assert finding.rows == {
        "email": [2],
        "phone": [2],
        "ssn": [3],
        "record_number": [3],
        "date_of_birth": [3],
    }
    described = finding.describe("rows.jsonl")
    for secret in ("jane.doe", "867-5309", "123-45-6789", "00482913", "1961"):
        assert secret not in described


def test_the_packaged_sample_is_clean_and_has_no_identifiers():
    rows = sample_rows()
    cleaned, report = clean(rows, Columns(), "sample")
    assert len(cleaned) == len(rows) >= 20 and not report.dropped
    assert not phi.scan([cleaned["question"], cleaned["reasoning"], cleaned["response"]])


def test_hub_load_asks_for_the_pinned_subset_and_revision(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(good_rows(3))  # what the hub would return

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = read_hub("FreedomIntelligence/medical-o1-reasoning-SFT", "en_mix", "abc123", cache_dir="/tmp/c")
    assert ds == good_rows(3)
    assert calls == [
        (
            ("FreedomIntelligence/medical-o1-reasoning-SFT", "en_mix"),
            {"revision": "abc123", "split": "train", "cache_dir": "/tmp/c", "token": None},
        )
    ]
    # data.hub_token (a private or gated data set) reaches the hub call, and no description of the source
    settings = Data(source="hub", hub_name="me/private", hub_token="hf_" + "t" * 30)
    (source,) = row_sources(settings)
    assert source.read() == good_rows(3) and calls[-1][1]["token"] == "hf_" + "t" * 30
    assert "hf_" not in repr(source) + source.name


def test_hub_offline_and_not_cached_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        read_hub("FreedomIntelligence/medical-o1-reasoning-SFT", "en", "main", cache_dir=str(tmp_path))
    assert "data=local" in str(err.value) and "load_dataset" in str(err.value)


def test_a_gzip_file_is_named_as_one(tmp_path):
    import gzip

    path = tmp_path / "rows.jsonl"
    path.write_bytes(gzip.compress(b'{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n'))
    with pytest.raises(DataError, match=r"rows.jsonl: the file is gzip-compressed; decompress it first"):
        read_local(path)


def test_too_few_rows_to_split_says_what_was_dropped(tmp_path):
    rows = [good_rows(1)[0]] * 24  # one row, 24 times: 23 duplicates dropped
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"rows.jsonl: 1 usable row\(s\) \(dropped: duplicate 23\); need at least 2"):
        check_data({"source": "local", "path": str(path), "on_bad_row": "skip"})
