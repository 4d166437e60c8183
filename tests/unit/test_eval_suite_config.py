"""The suite's, the protocols' and the budgets' settings, checked with the rest of eval.yaml before anything loads."""

from __future__ import annotations

import pytest

from medllm.config.checks import check_eval_config, check_train_config
from medllm.errors import ConfigError
from tests.helpers.configs import compose_eval, compose_train


def check(tmp_path, *overrides: str):
    cfg = compose_eval(*overrides, f"paths.output_dir={tmp_path}")
    check_eval_config(cfg, list(overrides))
    return cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("budgets=[512,4096]", "max_new_tokens=2048"), r"budgets=\[512, 4096\]: \[4096\] past max_new_tokens=2048"),
        (("budgets=[0]",), r"budgets=\[0\] must be a list of whole numbers > 0"),
        (("suite=medical", "suite.data_dir=/no/such/folder"), r"suite\.data_dir=/no/such/folder: no such folder"),
        (("suite=medical", "suite.benchmarks=[medqa,usmle]"), r"suite\.benchmarks=.* must be a non-empty list"),
        (("suite=medical", "suite.benchmarks=[]"), r"suite\.benchmarks=\[\] must be a non-empty list"),
        (("protocol=huatuogpt_o1", "benchmark=medical_o1_val"), r"protocol=huatuogpt_o1 asks questions"),
        (("suite=medical", "benchmark=medqa"), r"benchmark=medqa with suite=medical: a suite scores its own"),
    ],
    ids=[
        "budget-past-limit",
        "zero-budget",
        "missing-data-dir",
        "unknown-benchmark",
        "no-benchmark",
        "held-out",
        "benchmark-and-suite",
    ],
)
def test_a_mistake_is_one_line_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(tmp_path, *overrides)


def test_a_protocol_sets_its_decoding_and_the_command_line_still_wins(tmp_path):
    cfg = check(tmp_path, "protocol=huatuogpt_o1")
    assert (cfg.protocol.name, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (
        "huatuogpt_o1", True, 0.5, 0.9, 2000,
    )  # fmt: skip
    assert check(tmp_path, "protocol=huatuogpt_o1", "temperature=0.7").temperature == 0.7
    assert check(tmp_path).protocol.name == "strict" and not check(tmp_path).do_sample


def test_a_suite_in_eval_after_training_is_refused_before_training(tmp_path):
    cfg = compose_train("experiment=smoke", f"paths.output_dir={tmp_path}", '+eval_after_training=["suite=medical"]')
    with pytest.raises(ConfigError, match=r"eval_after_training: suite=medical .* one benchmark"):
        check_train_config(cfg)


def test_the_suite_schema_defaults_to_its_yaml(tmp_path):
    import dataclasses

    from omegaconf import OmegaConf

    from medllm.config.schema import Suite

    composed = OmegaConf.to_container(check(tmp_path, "suite=medical").suite, resolve=False)
    defaults = {
        f.name: f.default_factory() if callable(f.default_factory) else f.default for f in dataclasses.fields(Suite)
    }
    assert {k: v for k, v in composed.items() if k != "instruction"} == {
        k: v for k, v in defaults.items() if k != "instruction"
    }
    assert composed["instruction"] == "${data.instruction}"  # the training data's, as the benchmarks' own
