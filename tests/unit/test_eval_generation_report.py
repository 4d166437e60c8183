"""Generation with the tiny model (left padding proven by batch == single), voting, and the report files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from medllm.data.chat_format import EOS, R1ChatFormat
from medllm.evaluation.report import write_report
from medllm.evaluation.results import EvalResult
from medllm.generation.hf_generate import generate, stream_answer
from medllm.models.tiny import tiny_llama, tiny_tokenizer
from medllm.tasks.scoring import majority_vote, reasoning_stats, score
from tests.helpers.adapters import QUESTIONS


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_tokenizer()
    return tiny_llama(tokenizer, seed=0), tokenizer


@pytest.fixture(scope="module")
def prompts(tiny) -> list[list[int]]:
    return R1ChatFormat().encode_generation_prompts(tiny[1], QUESTIONS)


def test_batched_left_padded_greedy_equals_one_by_one(tiny, prompts: list[list[int]]) -> None:
    model, tokenizer = tiny
    lengths = {len(p) for p in prompts}
    assert len(lengths) == len(prompts)  # every batch really holds padding
    batched = generate(model, tokenizer, prompts, max_new_tokens=16, batch_size=3, progress=False)
    alone = [generate(model, tokenizer, [p], max_new_tokens=16, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == alone
    assert all(len(samples) == 1 and samples[0] for samples in batched)
    assert not any(EOS in samples[0] for samples in batched)


def test_generation_restores_tokenizer_and_model_state(tiny, prompts: list[list[int]]) -> None:
    model, tokenizer = tiny
    model.train()
    tokenizer.padding_side = "right"
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, progress=False)
    assert tokenizer.padding_side == "right"
    assert model.training


def test_sampling_gives_num_samples_and_is_seeded(tiny, prompts: list[list[int]]) -> None:
    model, tokenizer = tiny
    kwargs = {"max_new_tokens": 8, "batch_size": 2, "do_sample": True, "num_samples": 3, "progress": False}
    first = generate(model, tokenizer, prompts[:3], seed=7, **kwargs)
    assert [len(samples) for samples in first] == [3, 3, 3]
    assert first == generate(model, tokenizer, prompts[:3], seed=7, **kwargs)
    with pytest.raises(ValueError, match="do_sample=True"):
        generate(model, tokenizer, prompts, num_samples=2, progress=False)


def test_stream_answer_prints_what_it_returns(tiny, prompts: list[list[int]], capsys: pytest.CaptureFixture) -> None:
    model, tokenizer = tiny
    text = stream_answer(model, tokenizer, prompts[1], max_new_tokens=12)
    assert text == generate(model, tokenizer, [prompts[1]], max_new_tokens=12, progress=False)[0][0]
    assert text in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["B", "A", "B", None], "B"),
        (["A", "B"], "A"),
        (["B", "A", "A", "B"], "B"),
        ([None, "C", None], "C"),
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers: list[str | None], expected: str | None) -> None:
    assert majority_vote(answers) == expected


def make_result(benchmark: str, model: str, rows: list[tuple[str | None, str]], choices: tuple[str, ...]) -> EvalResult:
    outputs = [f"thinking\n</think>\n\nThe answer is {p}." if p else "thinking without end" for p, _ in rows]
    preds, golds = [p for p, _ in rows], [g for _, g in rows]
    metrics = {**score(preds, golds, choices), **reasoning_stats(outputs)}
    predictions = [
        {"id": str(i), "prompt": f"question {i}", "output": out, "parsed": p, "gold": g}
        for i, (out, (p, g)) in enumerate(zip(outputs, rows, strict=True))
    ]
    return EvalResult(benchmark, model, metrics, predictions)


def test_report_writes_four_consistent_files(tmp_path: Path) -> None:
    ynm = ("yes", "no", "maybe")
    results = [
        make_result("pubmedqa", "base", [("yes", "yes"), ("no", "yes"), (None, "maybe"), ("no", "no")], ynm),
        make_result(
            "pubmedqa", "adapter:outputs/run1", [("yes", "yes"), ("yes", "yes"), ("maybe", "maybe"), ("no", "no")], ynm
        ),
        make_result("medqa", "base", [("A", "A"), ("B", "C"), ("D", "D")], ("A", "B", "C", "D")),
        EvalResult("medical-o1-val", "base", {"loss": 1.25, "perplexity": 3.49}),
        EvalResult("medical-o1-val", "adapter:outputs/run1", {"loss": 1.0, "perplexity": 2.72}),
    ]
    paths = write_report(tmp_path / "report", results)
    assert sorted(p.name for p in paths.values()) == ["predictions.jsonl", "report.json", "report.md", "report.png"]

    report = json.loads(paths["report.json"].read_text("utf-8"))["benchmarks"]
    assert set(report) == {"pubmedqa", "medqa", "medical-o1-val"}
    base, adapter = report["pubmedqa"]["base"], report["pubmedqa"]["adapter:outputs/run1"]
    assert (base["n"], base["parse_failures"], adapter["parse_failures"]) == (4, 1, 0)
    assert base["accuracy"] == pytest.approx(2 / 4) and adapter["accuracy"] == pytest.approx(4 / 4)
    for key in ("macro_f1", "precision", "recall", "format_rate", "per_class", "confusion_matrix"):
        assert key in base
    assert report["medical-o1-val"]["adapter:outputs/run1"] == {"loss": 1.0, "perplexity": 2.72}

    lines = [json.loads(line) for line in paths["predictions.jsonl"].read_text("utf-8").splitlines()]
    assert len(lines) == sum(r.metrics.get("n", 0) for r in results) == 11
    for bench, model in [("pubmedqa", "base"), ("pubmedqa", "adapter:outputs/run1"), ("medqa", "base")]:
        mine = [line for line in lines if line["benchmark"] == bench and line["model"] == model]
        assert len(mine) == report[bench][model]["n"]
        assert sum(line["correct"] for line in mine) == round(report[bench][model]["accuracy"] * len(mine))

    markdown = paths["report.md"].read_text("utf-8")
    for heading in ("## pubmedqa", "## medqa", "## medical-o1-val"):
        assert heading in markdown
    assert "Δ accuracy vs base" in markdown and "Δ loss vs base" in markdown
    adapter_row = next(line for line in markdown.splitlines() if line.startswith("| adapter:outputs/run1 | 4 |"))
    assert f"{adapter['accuracy'] - base['accuracy']:+.4f}" in adapter_row
    loss_row = next(line for line in markdown.splitlines() if line.startswith("| adapter:outputs/run1 | 1.0000"))
    assert f"{1.0 - 1.25:+.4f}" in loss_row

    png = paths["report.png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_report_refuses_inconsistent_results(tmp_path: Path) -> None:
    result = make_result("medqa", "base", [("A", "A"), ("B", "B")], ("A", "B"))
    with pytest.raises(ValueError, match="metrics n=3 but 2 predictions"):
        write_report(tmp_path, [replace(result, metrics={**result.metrics, "n": 3})])
    with pytest.raises(ValueError, match="a second result for benchmark 'medqa' and model 'base'"):
        write_report(tmp_path, [result, result])
    with pytest.raises(ValueError, match="prediction 1 lacks \\['gold'\\]"):
        write_report(
            tmp_path,
            [replace(result, predictions=[{"id": "1", "parsed": "A"}, {"id": "2", "parsed": "B", "gold": "B"}])],
        )
