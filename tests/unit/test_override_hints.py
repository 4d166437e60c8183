"""A "did you mean" after Hydra refuses an override of an unknown key (no ``+``), for train.py and eval.py."""

from __future__ import annotations

import pytest

from medllm.config.hints import hint
from tests.helpers.cli import eval_py, train_py
from tests.helpers.configs import CONF


@pytest.mark.parametrize(
    ("config", "argv", "expected"),
    [
        ("train", ["experiment=smoke", "optimizer.lrr=1e-4"], "did you mean optimizer.lr?"),
        ("train", ["-m", "trainer.max_stepz=3", "seed=1"], "did you mean trainer.max_steps?"),
        ("train", ["sede=3"], "did you mean seed?"),
        ("eval", ["limitt=3"], "did you mean limit?"),
        (
            "train",
            ["-m", "hparams_search=optuna", "hydra.sweeper.params.optimizer.lr='tag(log, interval(1e-6, 1e-3))'"],
            "to change a search range, sweep the key itself: 'optimizer.lr=tag(log, interval(1e-6, 1e-3))'",
        ),
        ("train", ["experiment=smoke", "optimizer.lr=1e-4"], None),  # nothing refused
        ("train", ["optimizer.zzzzzz=1"], None),  # refused, but nothing close
        ("train", ["experiment=smoke", "optimizer.lr=["], None),  # a syntax error: Hydra's message is enough
    ],
)
def test_a_refused_key_is_matched_against_its_neighbours(config, argv, expected):
    assert hint(CONF, config, argv) == expected


def test_train_py_prints_the_hint_after_hydras_error():
    out = train_py("experiment=smoke", "optimizer.lrr=1e-4", check=False)
    assert out.returncode == 1
    assert "Could not override 'optimizer.lrr'" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "did you mean optimizer.lr?"
    assert "To append to your config use" not in out.stderr  # Hydra's advice would add the typo: one hint only


def test_a_new_key_with_nothing_close_keeps_hydras_advice_to_append_it():
    out = train_py("experiment=smoke", "optimizer.zzzzzz=1", check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "To append to your config use +optimizer.zzzzzz=1"


def test_an_override_hydra_cannot_parse_ends_with_hydras_message_alone():
    out = train_py("experiment=smoke", "optimizer.lr=[", check=False)
    assert out.returncode == 1
    assert "no viable alternative at input '['" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [train_py, eval_py], ids=["train.py", "eval.py"])
@pytest.mark.parametrize(
    "override",
    ["data.hub_token=hf_short1234", "+model.api_key=plain-words-9", "benchmark.hub_tokn=sk-abcdefghijkl"],
    ids=["unknown-secret-key", "appended", "typo"],
)
def test_hydras_own_refusal_never_echoes_a_secret(command, override):
    """Hydra refuses the override and echoes it ("To append to your config use +data.hub_token=..."): the value
    of a secret key, or one that looks like a secret, never reaches the console."""
    out = command("experiment=smoke" if command is train_py else "limit=1", override, "optimizer.lrr=1", check=False)
    value = override.partition("=")[2]
    assert out.returncode != 0 and "Could not override" in out.stderr  # Hydra's own refusal, printed
    assert value not in out.stdout + out.stderr
