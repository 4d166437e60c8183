"""GRPO's rewards: the correctness reward is eval.py's scorer, rewards are called as TRL calls them, and a
reward function's mistakes are named."""

from __future__ import annotations

import dataclasses
import math

import pytest
from omegaconf import OmegaConf

from medllm.config.schema import Reward
from medllm.rl.rewards import Correctness, OverlongPenalty, RewardError, RewardSet, ThinkFormat
from medllm.tasks.extraction import extract_answer
from medllm.tasks.problems import OpenEndedItem
from tests.helpers.extraction_cases import MCQ, MCQ_CASES, THINK, YNM, YNM_CASES

CASES = [(MCQ, output, expected) for output, expected in MCQ_CASES] + [
    (YNM, output, expected) for output, expected in YNM_CASES
]


@pytest.mark.parametrize(("item", "output", "expected"), CASES)
def test_correctness_agrees_with_the_scorer_on_every_case_of_its_tests(item, output, expected):
    """1 exactly where eval.py's extractor reads the gold label, whichever label is gold."""
    for gold in item.choices:
        problem = dataclasses.replace(item, gold=gold)
        (reward,) = Correctness()(completions=[output], problem=[problem])
        assert reward == float(extract_answer(output, problem) == gold) == float(expected == gold)


def test_open_ended_answers_are_judged_by_the_verifier_after_the_reasoning():
    item = OpenEndedItem("o1", "Most likely diagnosis?", "Graves' disease")
    outputs = [
        THINK + "The most likely diagnosis is Graves disease.",  # normalised match in an answer statement
        THINK + "Graves' disease",  # the first line
        THINK + "Toxic multinodular goitre.\nGraves disease was considered too.",  # named later, not stated
        "It is Graves' disease, I think",  # the reasoning never closed: no answer
    ]
    assert Correctness()(completions=outputs, problem=[item] * 4) == [1.0, 1.0, 0.0, 0.0]
    judge = Correctness(verifier=lambda answer, truth: 0.5)  # a model-as-judge plugs in the same way
    assert judge(completions=outputs[:1], problem=[item]) == [0.5]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("reasoning\n</think>\n\nThe answer is B.", 1.0),
        ("reasoning cut at the limit", 0.0),
        ("reasoning\n</think>\n\n", 0.0),  # closed, no answer
        ("a\n</think>\nb\n</think>\n\nB", 0.0),  # closed twice
    ],
)
def test_format_reward(completion, expected):
    assert ThinkFormat()(completions=[completion]) == [expected]


def test_overlong_penalty_falls_linearly_over_the_last_cache_tokens():
    penalty = OverlongPenalty(max_completion_length=10, cache=4)
    lengths = [3, 6, 7, 8, 10]
    assert penalty(completion_ids=[[0] * n for n in lengths]) == pytest.approx([0, 0, -0.25, -0.5, -1.0])
    with pytest.raises(ValueError, match="cache"):
        OverlongPenalty(max_completion_length=10, cache=11)


def _rewards(**functions):
    config = {name: Reward(fn=fn, weight=weight) for name, (fn, weight) in functions.items()}
    return RewardSet.from_config(OmegaConf.create({k: dataclasses.asdict(v) for k, v in config.items()}))


def test_a_reward_function_written_for_trl_works_unchanged_and_rewards_are_weighted():
    rewards = _rewards(
        right=({"_target_": "medllm.rl.rewards.Correctness"}, 1.0),
        mentions=({"_target_": "tests.helpers.rewards.mentions_answer"}, 0.5),  # a plain function, TRL's signature
    )
    problems = [MCQ, dataclasses.replace(MCQ, gold="C"), OpenEndedItem("o", "q", "B")]
    outputs = ["Graves.\n</think>\n\nThe answer is B."] * 3
    scores = rewards.score(["p"] * 3, outputs, [[1, 2]] * 3, problems, global_step=3)
    assert rewards.names == ["right", "mentions"]
    assert scores.per_function.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]  # "C" is not in the text
    assert scores.total.tolist() == pytest.approx([1.5, 0.0, 1.5])


def test_none_is_not_applicable_left_out_of_the_sum_as_trl_does():
    rewards = RewardSet({"a": lambda **kw: [None, 1.0], "b": lambda **kw: [0.5, None]}, {"a": 1.0, "b": 2.0})
    scores = rewards.score(["p", "p"], ["x", "y"], [[1], [2]], [MCQ, MCQ], 0)
    assert scores.total.tolist() == [1.0, 1.0]
    assert math.isnan(scores.per_function[0, 0]) and math.isnan(scores.per_function[1, 1])


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("lambda **kw: [1.0]", r"returned 1 values; it must return one number per completion \(2\)"),
        ("lambda **kw: 1.0", "returned float"),
        ("lambda **kw: ['yes', 1.0]", "returned 'yes' for completion 0"),
        ("lambda **kw: [float('inf'), 1.0]", "returned inf for completion 0"),
        ("lambda **kw: 1 / 0", "raised ZeroDivisionError"),
    ],
)
def test_a_reward_function_s_mistake_names_the_function(returned, message):
    rewards = RewardSet({"mine": eval(returned)}, {"mine": 1.0})
    with pytest.raises(RewardError, match=r"stage\.rewards\.mine " + message):
        rewards.score(["p", "p"], ["a", "b"], [[1], [2]], [MCQ, MCQ], 0)


def test_a_reward_that_cannot_be_built_is_named():
    with pytest.raises(RewardError, match=r"stage\.rewards\.broken\.fn could not be built"):
        _rewards(broken=({"_target_": "medllm.rl.rewards.OverlongPenalty", "cache": 4}, 1.0))
