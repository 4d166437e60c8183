"""Reward functions, called as TRL's GRPOTrainer calls them, and the weighted set a GRPO run scores with.

A reward function takes keyword arguments and returns one float per completion (None where it does not
apply, e.g. a reward for open-ended problems given a multiple-choice one):

    fn(prompts=[...], completions=[...], completion_ids=[...], problem=[...], answer=[...], question=[...],
       options=[...], id=[...], trainer_state=...) -> list[float | None]

``prompts`` are the prompt texts, ``completions`` the sampled texts (cut before EOS), ``completion_ids`` their
tokens; then one list entry per completion for each problem column: ``problem`` (the ``BenchmarkItem`` or
``OpenEndedItem``), ``answer`` (the gold label, or the ground-truth text), ``question``, ``options`` (letter ->
text, or None) and ``id``. ``trainer_state`` has ``global_step``. A function written for TRL that reads
``prompts``, ``completions`` and a column such as ``answer`` works unchanged; give it ``**kwargs``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from hydra.utils import get_object, instantiate

from medllm.data.chat_format import THINK_CLOSE
from medllm.errors import MedllmError
from medllm.tasks.extraction import answer_section
from medllm.tasks.items import BenchmarkItem
from medllm.tasks.problems import NormalizedMatch, Problem, is_correct


class RewardError(MedllmError):
    """A reward function failed or returned something other than one number per completion."""


class Correctness:
    """1 when the completion answers right, else 0: multiple-choice and yes/no/maybe answers read by the extractor
    eval.py scores with (a reward of 1 is an answer eval.py counts as right); open-ended answers judged by
    ``verifier`` (``NormalizedMatch`` by default; any ``(answer_text, ground_truth) -> bool | float``)."""

    def __init__(self, verifier: Callable[[str, str], Any] | None = None) -> None:
        self.verifier = verifier or NormalizedMatch()

    def __call__(self, completions: Sequence[str], problem: Sequence[Problem], **kwargs: Any) -> list[float]:
        return [is_correct(text, item, self.verifier) for text, item in zip(completions, problem, strict=True)]


class ThinkFormat:
    """1 when the reasoning closes with exactly one ``</think>`` and an answer follows it, else 0.

    The prompt opens the reasoning (``<think>\\n``), so a completion is well formed when it closes it once and
    answers after. A completion cut at the length limit is usually still reasoning: 0."""

    def __call__(self, completions: Sequence[str], **kwargs: Any) -> list[float]:
        return [float(text.count(THINK_CLOSE) == 1 and bool(answer_section(text))) for text in completions]


class OverlongPenalty:
    """DAPO's soft over-length punishment: 0 up to ``max_completion_length - cache`` tokens, then falling
    linearly to -1 at ``max_completion_length``: a reasoning that runs long is pushed shorter before it is cut.
    """

    def __init__(self, max_completion_length: int, cache: int) -> None:
        if not 0 < cache <= max_completion_length:
            raise ValueError(f"cache={cache} must be in 1..max_completion_length ({max_completion_length})")
        self.max_completion_length, self.cache = max_completion_length, cache

    def __call__(self, completion_ids: Sequence[Sequence[int]], **kwargs: Any) -> list[float]:
        start = self.max_completion_length - self.cache
        return [max(-1.0, min(0.0, (start - len(ids)) / self.cache)) for ids in completion_ids]


def problem_columns(problems: Sequence[Problem]) -> dict[str, list[Any]]:
    """The columns a reward function receives for ``problems``, one entry per completion."""
    return {
        "problem": list(problems),
        "answer": [p.gold if isinstance(p, BenchmarkItem) else p.answer for p in problems],
        "question": [p.question for p in problems],
        "options": [p.options if isinstance(p, BenchmarkItem) else None for p in problems],
        "id": [p.id for p in problems],
    }


@dataclass
class Scores:
    per_function: torch.Tensor  # [N, F]: NaN where a function returned None
    total: torch.Tensor  # [N]: the weighted sum over functions, NaNs left out


class RewardSet:
    """The run's reward functions by name (``stage.rewards``), each with its weight."""

    def __init__(self, functions: Mapping[str, Callable[..., Sequence[float | None]]], weights: Mapping[str, float]):
        self.functions, self.weights = dict(functions), dict(weights)

    @classmethod
    def from_config(cls, rewards: Mapping[str, Any]) -> RewardSet:
        """``stage.rewards``: ``{name: Reward(fn={_target_: ...}, weight=...)}`` (``medllm.config.schema.Reward``)."""
        functions, weights = {}, {}
        for name, reward in rewards.items():
            try:
                # A function (TRL's reward functions are) is the reward itself, its other keys bound to it; a
                # class is built from them.
                partial = inspect.isfunction(get_object(reward.fn["_target_"]))
                functions[name] = instantiate(reward.fn, _partial_=partial)
            except Exception as err:
                raise RewardError(f"stage.rewards.{name}.fn could not be built: {err}") from err
            weights[name] = float(reward.weight)
        return cls(functions, weights)

    @property
    def names(self) -> list[str]:
        return list(self.functions)

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        problems: Sequence[Problem],
        global_step: int = 0,
    ) -> Scores:
        columns = problem_columns(problems)
        state = SimpleNamespace(global_step=global_step)
        values = []
        for name, fn in self.functions.items():
            try:
                out = fn(
                    prompts=list(prompts),
                    completions=list(completions),
                    completion_ids=[list(ids) for ids in completion_ids],
                    trainer_state=state,
                    **columns,
                )
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(f"stage.rewards.{name} raised {type(err).__name__}: {err}") from err
            values.append(_checked(name, out, len(completions)))
        per_function = torch.tensor(values, dtype=torch.float32).T.reshape(len(completions), len(values))
        weights = torch.tensor([self.weights[name] for name in self.functions], dtype=torch.float32)
        total = (per_function * weights).nansum(dim=1)
        return Scores(per_function, total)


def _checked(name: str, out: Any, expected: int) -> list[float]:
    """A reward function's output as floats (None -> NaN), or RewardError naming the function."""
    if not isinstance(out, Sequence) or isinstance(out, str) or len(out) != expected:
        got = f"{len(out)} values" if isinstance(out, Sequence) and not isinstance(out, str) else type(out).__name__
        raise RewardError(f"stage.rewards.{name} returned {got}; it must return one number per completion ({expected})")
    values = []
    for i, value in enumerate(out):
        if value is None:
            values.append(math.nan)  # not applicable: left out of the weighted sum, as TRL does
        elif not isinstance(value, numbers.Real) or math.isinf(value):
            raise RewardError(f"stage.rewards.{name} returned {value!r} for completion {i}; rewards are finite numbers")
        else:
            values.append(float(value))
    return values
