"""Reward functions the GRPO tests plug in through ``stage.rewards``, in TRL's signature."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from medllm.tasks.items import BenchmarkItem
from medllm.tasks.problems import Problem, is_correct


def random_answer_correctness(
    completions: Sequence[str], problem: Sequence[Problem], answers: Sequence[str], trainer_state: Any, **kwargs: Any
) -> list[float]:
    """The control of "RL learns": 1 when a completion gives an answer drawn at random from ``answers`` for its
    prompt at this step, so the reward says nothing about the right one. Same scorer, same reward scale."""
    rng = random.Random(trainer_state.global_step)
    drawn: dict[str, str] = {}
    scores = []
    for text, item in zip(completions, problem, strict=True):
        answer = drawn.setdefault(item.id, str(rng.choice(list(answers))))
        field = "gold" if isinstance(item, BenchmarkItem) else "answer"
        scores.append(is_correct(text, dataclasses.replace(item, **{field: answer})))
    return scores


def mentions_answer(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **kwargs: Any) -> list:
    """A reward function as written for TRL's GRPOTrainer: 1 when the completion contains the row's ``answer``
    column; None (not applicable) where the row has no answer."""
    assert len(prompts) == len(completions)
    return [None if gold is None else float(str(gold) in text) for text, gold in zip(completions, answer, strict=True)]


def text_length(completions: Sequence[str], **kwargs: Any) -> list[float]:
    """A reward that tells apart the random tiny model's completions (their length in characters), so every
    group has advantages and every step a gradient: what the mechanics tests (resume, micro-batches) need."""
    return [len(text) / 100 for text in completions]
