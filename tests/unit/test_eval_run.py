"""eval.py's orchestration in-process: adapter discovery, model switching, scoring and a whole tiny run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel

from medllm.config.checks import check_eval_config
from medllm.config.inputs import find_adapters
from medllm.data.chat_format import THINK_CLOSE
from medllm.errors import ConfigError
from medllm.evaluation.evaluate import check_adapter_base, evaluate
from medllm.generation.engines import each_peft_model
from medllm.models.tiny import tiny_llama, tiny_tokenizer
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.scoring import score_completions, shared_choices
from tests.helpers.adapters import mark_adapter, save_adapter
from tests.helpers.configs import CONF, compose_eval, compose_train

BENCHMARKS = sorted(p.stem for p in (CONF / "benchmark").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", BENCHMARKS)  # not "benchmark": pytest-benchmark owns that fixture name
def test_every_benchmark_composes_and_resolves(name, tmp_path):
    cfg = compose_eval(f"benchmark={name}", "++benchmark.path=x", f"paths.output_dir={tmp_path}")
    OmegaConf.resolve(cfg)
    assert cfg.benchmark.name == name
    assert cfg.data.max_seq_length == cfg.max_seq_length == cfg.model.max_seq_length
    assert cfg.mode == "benchmark" and cfg.include_base and not cfg.do_sample and cfg.num_samples == 1


def test_eval_defaults_and_benchmark_instruction_follows_the_training_data(tmp_path):
    cfg = compose_eval(f"paths.output_dir={tmp_path}", "data.instruction=Think step by step.")
    assert cfg.benchmark.name == "pubmedqa" and cfg.adapter_path is None and list(cfg.adapters) == []
    assert cfg.benchmark.instruction == "Think step by step."
    assert cfg.seed == compose_train(f"paths.output_dir={tmp_path}").seed  # the same validation split


def test_evaluate_checks_its_config_before_anything_loads(tmp_path):
    """Every eval.yaml mistake is the schema's (tests/unit/test_config_schema.py); evaluate() asks it first."""
    cfg = compose_eval("engine=fast", "model.name_or_path=not/a/model", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="engine=fast must be one of auto | merged | peft"):
        evaluate(cfg)


def test_a_decoding_attention_for_the_engine_that_has_none_is_refused(tmp_path):
    cfg = compose_eval("engine=peft", "decode_attention=flex", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"^decode_attention=flex is the merged engine's; engine=peft"):
        evaluate(cfg)


@pytest.mark.parametrize(("capability", "refused"), [((7, 5), True), ((8, 0), False)])
def test_flex_decoding_on_a_gpu_older_than_ampere_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, capability, refused
):
    """FlexAttention's Triton kernels do not build below compute capability 8.0 (a T4 is 7.5). The GPU is
    what torch reports; this machine's answers are replaced by a T4's and an A100's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {capability}")
    cfg = compose_eval("decode_attention=flex", "trainer.accelerator=auto", f"paths.output_dir={tmp_path}")
    if refused:
        message = r"^decode_attention=flex needs a GPU of compute capability 8.0 or newer .* GPU \(7, 5\) is 7.5\."
        with pytest.raises(ConfigError, match=message):
            check_eval_config(cfg)
    else:
        check_eval_config(cfg)
    cfg = compose_eval("decode_attention=sdpa", "trainer.accelerator=auto", f"paths.output_dir={tmp_path}")
    check_eval_config(cfg)  # sdpa runs on any GPU


# ---------------------------------------------------------------------------------------------- adapters


def test_deleting_an_evaluation_setting_is_refused_before_anything_loads(tmp_path):
    cfg = compose_eval("~max_new_tokens", "model.name_or_path=not/a/model", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"^~max_new_tokens deletes a setting the run needs"):
        evaluate(cfg)


def test_find_adapters_keeps_order_dedupes_and_sorts_sweep_jobs_numerically(tmp_path):
    one = mark_adapter(tmp_path / "run1" / "adapter")
    sweep = tmp_path / "sweep"
    jobs = [mark_adapter(sweep / str(n) / "adapter") for n in (10, 2, 0)]
    (sweep / "3").mkdir()  # a job that failed before saving: skipped
    found = find_adapters(str(one), [str(one), str(jobs[0])], str(sweep))
    assert found == [str(one), str(jobs[0]), str(jobs[2]), str(jobs[1])]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adapter_path": "nope"}, r"nope: no such folder \(deleted, or a typo\?\)"),
        ({"adapter_path": "."}, "not an adapter folder"),
        ({"sweep_dir": "nope"}, "no such folder"),
        ({"sweep_dir": "."}, "no <job>/adapter folder"),
    ],
)
def test_find_adapters_rejects_what_is_not_an_adapter(kwargs, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        find_adapters(**kwargs)


def test_a_run_dir_given_for_its_adapter_is_pointed_at_the_adapter(tmp_path):
    adapter = mark_adapter(tmp_path / "run" / "adapter")
    message = rf"run: not an adapter folder .* it is a run dir: pass {re.escape(str(adapter))}\.$"
    with pytest.raises(ConfigError, match=message):
        find_adapters(str(tmp_path / "run"))


def test_the_adapter_of_a_run_still_training_says_so_not_what_was_passed(tmp_path):
    """eval.py adapter_path=<run>/adapter while the run trains: it was told to pass <run dir>/adapter."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step000006.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"adapter: no adapter yet: .*run is a run still training.*step000006\.ckpt"):
        find_adapters(str(run / "adapter"))


def test_an_adapter_folder_without_weights_is_named_before_any_model_loads(tmp_path):
    folder = save_adapter(tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="an adapter folder without weights"):
        find_adapters(str(folder))


WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / WEIGHTS).write_bytes(b""), rf"{WEIGHTS}: unreadable"),
        (lambda f: truncate(f / WEIGHTS), rf"{WEIGHTS}: unreadable adapter weights"),
        (lambda f: (f / CONFIG).write_text('{"r": 2,'), rf"{CONFIG}: not a readable adapter"),
        (lambda f: (f / CONFIG).write_text('{"r": 8}'), rf"rank\(s\) \[2\] but {CONFIG} says r=8"),
    ],
    ids=["empty-weights", "truncated-weights", "broken-config", "config-of-another-adapter"],
)
def test_a_damaged_adapter_later_in_the_list_is_named_before_any_model_loads(tmp_path, damage, message):
    """A truncated copy among the adapters used to fail after the base and the adapters before it were scored."""
    good, bad = mark_adapter(tmp_path / "good"), mark_adapter(tmp_path / "bad")
    damage(bad)
    with pytest.raises(ConfigError, match=message):
        find_adapters(str(good), [str(bad)])


def test_tiny_adapter_on_a_real_model_says_which_model_to_pass(tmp_path):
    folder = save_adapter(tmp_path / "a")
    check_adapter_base(str(folder), OmegaConf.create({"name_or_path": None}))
    with pytest.raises(ConfigError, match="model=tiny_llama"):
        check_adapter_base(str(folder), OmegaConf.create({"name_or_path": "deepseek-ai/x"}))


def test_an_adapter_without_a_record_on_another_named_base_is_warned_about(tmp_path, caplog):
    """Its adapter_config.json names the base it was trained on; with no run record to match, a different
    model is named in a warning (a 4-bit or renamed copy of the same base is named differently: not refused)."""
    folder = mark_adapter(tmp_path / "adapter")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "base_model_name_or_path": str(tmp_path / "hfA")}))
    (tmp_path / "hfA").mkdir()
    with caplog.at_level("WARNING"):
        check_adapter_base(str(folder), OmegaConf.create({"name_or_path": str(tmp_path / "." / "hfA")}))
        assert "as its base" not in caplog.text  # the same folder, written otherwise
        check_adapter_base(str(folder), OmegaConf.create({"name_or_path": str(tmp_path / "hfB")}))
    assert f"names {tmp_path / 'hfA'} as its base in adapter_config.json, and this evaluation loads" in caplog.text


def model_label(adapter: str | None) -> str:
    return "base" if adapter is None else f"adapter:{adapter}"


def test_one_base_serves_every_adapter_and_the_base(tmp_path):
    """base == the plain tiny model; each adapter == PEFT loading it alone; a zero adapter == base."""
    trained, zero, other = (
        save_adapter(tmp_path / n, zero=n == "zero", seed=s) for n, s in [("a", 1), ("zero", 2), ("b", 3)]
    )
    cfg = compose_eval(f"paths.output_dir={tmp_path}")
    tokenizer = tiny_tokenizer()
    ids = tokenizer("<｜User｜>Chest pain?<｜Assistant｜><think>\n", return_tensors="pt")["input_ids"]

    def logits(model):
        with torch.no_grad():
            return model.eval()(ids).logits

    expected = {"base": logits(tiny_llama(tokenizer, seed=0))}
    for folder in (trained, other):
        expected[f"adapter:{folder}"] = logits(PeftModel.from_pretrained(tiny_llama(tokenizer, seed=0), folder))
    expected[f"adapter:{zero}"] = expected["base"]
    seen = {}
    for adapter, model in each_peft_model(cfg.model, tokenizer, [str(trained), str(zero), str(other)]):
        seen[model_label(adapter)] = logits(model)
        assert len(model.peft_config) == 1  # the previous adapter was deleted
    assert list(seen) == ["base", *(f"adapter:{f}" for f in (trained, zero, other))]  # base first, then in order
    for label, value in expected.items():
        torch.testing.assert_close(seen[label], value, msg=label)
    assert not torch.allclose(seen[f"adapter:{trained}"], seen["base"], atol=1e-3)
    assert not torch.allclose(seen[f"adapter:{trained}"], seen[f"adapter:{other}"], atol=1e-3)

    labels = [model_label(a) for a, _ in each_peft_model(cfg.model, tokenizer, [str(trained)], include_base=False)]
    assert labels == [f"adapter:{trained}"]
    assert [model_label(a) for a, _ in each_peft_model(cfg.model, tokenizer, [], include_base=False)] == ["base"]


# ---------------------------------------------------------------------------------------------- scoring


def mcq(item_id: str, gold: str, letters: str = "ABCD") -> BenchmarkItem:
    options = {letter: f"option {letter.lower()}" for letter in letters}
    return BenchmarkItem(item_id, "Which?", tuple(letters), gold, options=options)


def test_shared_choices_is_the_union_when_items_differ():
    assert shared_choices([mcq("1", "A"), mcq("2", "B")]) == ("A", "B", "C", "D")
    assert shared_choices([mcq("1", "A", "ABC"), mcq("2", "E", "ABCDE")]) == ("A", "B", "C", "D", "E")


def test_score_completions_votes_over_samples_and_keeps_every_row():
    items = [mcq("1", "A"), mcq("2", "B"), mcq("3", "C")]
    said = {letter: f"weighing\n{THINK_CLOSE}\n\nThe answer is {letter}." for letter in "ABC"}
    completions = [
        [said["A"], said["B"], said["A"]],  # vote: A (right)
        [said["C"], "no closing think", said["C"]],  # vote: C (wrong)
        ["no closing think"] * 3,  # no answer at all
    ]
    metrics, rows = score_completions(items, ["p1", "p2", "p3"], completions)
    assert [r["parsed"] for r in rows] == ["A", "C", None]
    assert rows[0]["votes"] == ["A", "B", "A"] and rows[0]["samples"] == completions[0]
    assert rows[1]["output"] == said["C"] and rows[1]["prompt"] == "p2"
    assert metrics["n"] == 3 and metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["parse_failures"] == 1
    assert metrics["format_rate"] == pytest.approx(5 / 9)  # over every sample


def test_single_completions_carry_no_vote_fields():
    metrics, rows = score_completions([mcq("1", "B")], ["p"], [[f"x{THINK_CLOSE}B"]])
    assert rows == [{"id": "1", "prompt": "p", "output": f"x{THINK_CLOSE}B", "parsed": "B", "gold": "B"}]
    assert metrics["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------- whole run


def mcq_file(tmp_path) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"Question {i}?", "options": ["alpha", "beta", "gamma"], "answer": "B"}
        for i in range(6)
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    return questions


def test_evaluate_writes_a_report_for_base_and_adapter(tmp_path):
    adapter = save_adapter(tmp_path / "adapter")
    out = tmp_path / "out"
    cfg = compose_eval(
        "benchmark=mcq",
        f"benchmark.path={mcq_file(tmp_path)}",
        "limit=4",
        f"adapter_path={adapter}",
        "max_new_tokens=4",
        "batch_size=3",
        f"paths.output_dir={out}",
    )
    results = evaluate(cfg)
    assert [r.model for r in results] == ["base", f"adapter:{adapter}"]
    report = json.loads((out / "report.json").read_text())["benchmarks"]["mcq"]
    assert {m: v["n"] for m, v in report.items()} == {"base": 4, f"adapter:{adapter}": 4}
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {line["gold"] for line in lines} == {"B"}
    assert (out / "report.png").stat().st_size > 0


def test_a_second_evaluation_into_the_same_dir_is_refused_and_the_first_kept(tmp_path):
    out = tmp_path / "out"
    settings = ("benchmark=mcq", f"benchmark.path={mcq_file(tmp_path)}", "limit=2", "max_new_tokens=4")
    evaluate(compose_eval(*settings, f"paths.output_dir={out}"))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(ConfigError, match=r"holds an evaluation already \(report.json, .+\); choose another"):
        evaluate(compose_eval(*settings, "max_new_tokens=8", f"paths.output_dir={out}"))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_flex_and_sdpa_decoding_give_the_same_predictions(tmp_path):
    """decode_attention only changes which cache blocks a step reads, never a completion or a score."""
    questions, outputs = mcq_file(tmp_path), {}
    for attention in ("sdpa", "flex"):
        out = tmp_path / attention
        cfg = compose_eval(
            "benchmark=mcq",
            f"benchmark.path={questions}",
            "max_new_tokens=100",  # ~55-token prompts: rows that run on cross into a second cache block
            "batch_size=2",
            f"decode_attention={attention}",
            f"paths.output_dir={out}",
        )
        evaluate(cfg)
        outputs[attention] = (out / "predictions.jsonl").read_text()
    assert outputs["flex"] == outputs["sdpa"] and outputs["sdpa"].count("\n") >= 6
