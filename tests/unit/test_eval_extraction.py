"""Answer extraction on completions written the way R1-distilled models answer."""

from __future__ import annotations

import pytest

from medllm.tasks.extraction import extract_answer
from medllm.tasks.items import BenchmarkItem
from tests.helpers.extraction_cases import MCQ, MCQ_CASES, YNM, YNM_CASES


@pytest.mark.parametrize(("output", "expected"), MCQ_CASES)
def test_multiple_choice_outputs(output: str, expected: str | None) -> None:
    assert extract_answer(output, MCQ) == expected


@pytest.mark.parametrize(("output", "expected"), YNM_CASES)
def test_yes_no_maybe_outputs(output: str, expected: str | None) -> None:
    assert extract_answer(output, YNM) == expected


def test_only_text_after_the_last_think_close_counts() -> None:
    output = "The answer is A.\n</think>\nThe answer is A.\n</think>\n\nThe answer is D."
    assert extract_answer(output, MCQ) == "D"


def test_option_inside_a_longer_option_is_not_a_second_mention() -> None:
    item = BenchmarkItem(
        id="q2",
        question="Which?",
        choices=("A", "B"),
        gold="B",
        options={"A": "Graves disease", "B": "Graves disease with ophthalmopathy"},
    )
    assert extract_answer("</think>\nThis is Graves disease with ophthalmopathy.", item) == "B"
    assert extract_answer("</think>\nThis is Graves disease.", item) == "A"


def test_short_numeric_options_are_not_matched_in_prose() -> None:
    item = BenchmarkItem(id="q3", question="How many?", choices=("A", "B"), gold="A", options={"A": "2", "B": "4"})
    assert extract_answer("</think>\nAfter 2 weeks the count settles.", item) is None
    assert extract_answer("</think>\nThe answer is 4.", item) == "B"


def test_at_least_twenty_cases() -> None:
    assert len(MCQ_CASES) + len(YNM_CASES) >= 20
