"""GRPO's mistakes are named before any model loads: the config (one pass) and its inputs (files, adapter)."""

from __future__ import annotations

import json

import pytest

from medllm.config.checks import check_train_config
from medllm.errors import ConfigError, MedllmError
from medllm.workflows.inputs import check_inputs
from tests.helpers.adapters import save_adapter
from tests.helpers.configs import compose_train


def grpo(tmp_path, *overrides):
    return compose_train("experiment=grpo_smoke", f"paths.output_dir={tmp_path}", *overrides)


def test_the_grpo_smoke_config_and_its_sample_pass(tmp_path):
    cfg = grpo(tmp_path)
    check_train_config(cfg)
    check_inputs(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage.num_generations=1"], r"^stage.num_generations=1 must be"),
        (["stage.loss_type=ppo"], r"^stage.loss_type='?ppo'? must be one of"),
        (["stage.scale_rewards=std"], r"^stage.scale_rewards='?std'? must be one of"),
        (["stage.max_completion_length=512"], r"stage.max_completion_length=512 leaves no room for a prompt"),
        (["stage.rewards.correctness.fn._target_=my_rewards.nothing"], r"stage.rewards.correctness.fn._target_"),
        (["data=sample"], r"^stage=grpo trains on problems with checkable answers: use data=problems"),
        (["data.format=medqa_v2"], r"^data.format='?medqa_v2'? must be one of"),
        (["+optimized_metric=val_loss"], r"^optimized_metric=val_loss is not in a stage=grpo run's summary"),
    ],
    ids=["one-generation", "loss", "scale", "no-room", "reward-import", "sft-data", "format", "sft-metric"],
)
def test_config_mistakes_are_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(grpo(tmp_path, *overrides))


def test_problems_and_init_adapter_belong_to_grpo(tmp_path):
    sft = ("experiment=smoke", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"^data=problems holds problems for reinforcement learning \(stage=grpo\)"):
        check_train_config(compose_train(*sft, "data=problems"))
    adapter = save_adapter(tmp_path / "sft")
    with pytest.raises(ConfigError, match="^init_adapter=.* starts stage=grpo from an adapter"):
        check_train_config(compose_train(*sft, f"init_adapter={adapter}"))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD = {"question": "Which organ makes insulin?", "options": {"A": "Liver", "B": "Pancreas"}, "answer": "B"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({**GOOD, "answer": "E"}, r"row 2: field 'answer' = 'E' is neither an option letter"),
        ({**GOOD, "question": "  "}, r"row 2: field 'question'"),
        ({**GOOD, "options": "A or B"}, r"row 2: field 'options'"),
    ],
    ids=["answer-not-an-option", "blank-question", "options-not-a-mapping"],
)
def test_a_bad_problem_is_named_by_file_row_and_field(tmp_path, bad, message):
    path = write_rows(tmp_path / "problems.jsonl", [GOOD, bad])
    with pytest.raises(MedllmError, match=rf"{path}: {message}"):
        check_inputs(grpo(tmp_path, f"data.path={path}"))


def test_an_init_adapter_of_another_shape_says_which_settings_fit_it(tmp_path):
    adapter = save_adapter(tmp_path / "sft")  # rank 4, alpha 8
    with pytest.raises(ConfigError, match=r"has another LoRA shape: model.lora.r=8 \(the adapter's: 4\).* pass .*r=4"):
        check_inputs(grpo(tmp_path, f"init_adapter={adapter}"))
    check_inputs(grpo(tmp_path, f"init_adapter={adapter}", "model.lora.r=4", "model.lora.alpha=8"))


def test_problems_that_are_benchmark_questions_are_counted_or_refused(tmp_path, caplog):
    problems = [{**GOOD, "id": f"p{i}", "question": f"Question {i}?"} for i in range(6)]
    path = write_rows(tmp_path / "problems.jsonl", problems)
    benchmark = write_rows(tmp_path / "bench.jsonl", [{**problems[1], "question": "QUESTION 1"}, problems[4]])
    after = f'eval_after_training=["benchmark=mcq","benchmark.path={benchmark}"]'
    check_inputs(grpo(tmp_path, f"data.path={path}", after))
    assert "2 of the 6 training problems are questions of the benchmark" in caplog.text
    with pytest.raises(ConfigError, match=r"^2 of the 6 training problems .*ids p1, p4.*stage.contamination=warn"):
        check_inputs(grpo(tmp_path, f"data.path={path}", after, "stage.contamination=error"))


def test_hub_problems_offline_say_what_to_do(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("the hub can't be reached")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = grpo(tmp_path, "data.hub_name=FreedomIntelligence/medical-o1-verifiable-problem")
    with pytest.raises(MedllmError, match="(?s)Could not load the hub dataset .* pass data.path=<file>"):
        check_inputs(cfg)


def test_hub_problems_are_read_and_checked_as_a_file_is(tmp_path, monkeypatch):
    import datasets

    rows = [
        {
            "Open-ended Verifiable Question": "Drug of choice for absence seizures?",
            "Ground-True Answer": "Ethosuximide",
        },
        {"Open-ended Verifiable Question": "", "Ground-True Answer": "x"},
    ]
    seen = {}

    def hub(name, subset, split, revision, token):  # the network call, answered from memory
        seen.update(name=name, split=split, revision=revision)
        return datasets.Dataset.from_list(rows[: seen.setdefault("rows", 1)])

    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    cfg = grpo(tmp_path, "data.hub_name=org/problems", "data.revision=abc123")
    check_inputs(cfg)
    assert seen == {"name": "org/problems", "split": "train", "revision": "abc123", "rows": 1}
    seen["rows"] = 2
    with pytest.raises(MedllmError, match=r"org--problems--default--train--abc123.jsonl: row 2: field .* is empty"):
        check_inputs(cfg)
