"""The HuatuoGPT-o1 protocol, built from its description: its prompt, the first or the last option letter found
(whichever scores higher over the benchmark), and the most similar option when the output names none."""

from __future__ import annotations

import pytest

from medllm.tasks.items import YES_NO_MAYBE, BenchmarkItem
from medllm.tasks.protocols import (
    ANSWER_IS,
    HUATUOGPT_O1,
    LETTER,
    OPTION_TEXT,
    SIMILARITY,
    STRICT,
    LenientAnswer,
    as_protocol_item,
    lenient_accuracy,
    lenient_answer,
    prompt_text,
)

ITEM = BenchmarkItem(
    "q1",
    "Which drug is first line for type 2 diabetes?",
    ("A", "B", "C", "D"),
    "B",
    options={"A": "Insulin glargine", "B": "Metformin", "C": "Glipizide", "D": "Acarbose"},
)


def test_the_prompt_is_their_wording_and_yes_no_maybe_becomes_lettered_options():
    assert prompt_text(ITEM, HUATUOGPT_O1) == (
        "Please answer the following multiple-choice question:\nWhich drug is first line for type 2 diabetes?\n"
        "A. Insulin glargine\nB. Metformin\nC. Glipizide\nD. Acarbose"
    )
    assert prompt_text(ITEM, STRICT) == ITEM.prompt_text()
    pubmed = BenchmarkItem("7", "Does it help?", YES_NO_MAYBE, "maybe", context="An abstract.")
    lettered = as_protocol_item(pubmed, HUATUOGPT_O1)
    assert (lettered.options, lettered.gold) == ({"A": "yes", "B": "no", "C": "maybe"}, "C")
    assert prompt_text(pubmed, HUATUOGPT_O1).endswith("An abstract.\nDoes it help?\nA. yes\nB. no\nC. maybe")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("## Thinking\nA is wrong.\n## Final Response\nThe answer is B. Metformin", ("B", "B", ANSWER_IS)),
        ("<think>hmm</think>The answer is C, no wait, the answer is B.", ("C", "B", ANSWER_IS)),
        ("<think>A or D?</think>\nD, though B is close.", ("D", "B", LETTER)),  # first and last letters differ
        ("I would start with metformin today.", ("B", "B", OPTION_TEXT)),  # the option whose text appears (last)
        ("<think>long</think>glipizde maybe", ("C", "C", SIMILARITY)),  # names nothing: the most similar option
    ],
    ids=["final-response", "answer-is-first-last", "letters-first-last", "option-text", "similarity-fallback"],
)
def test_the_lenient_reading(output, expected):
    assert lenient_answer(output, ITEM) == LenientAnswer(*expected)


def test_the_reading_looks_after_final_response_or_think_only():
    reasoning = "<think>The answer is A, I first thought.</think>\nThe answer is D"
    assert lenient_answer(reasoning, ITEM) == LenientAnswer("D", "D", ANSWER_IS)


def test_a_benchmark_scores_the_better_of_first_and_last_match_and_counts_the_fallback():
    answers = [
        LenientAnswer("A", "B", LETTER),  # gold B: only the last match is right
        LenientAnswer("C", "B", ANSWER_IS),  # gold B: last right
        LenientAnswer("D", "A", LETTER),  # gold D: only the first is right
        LenientAnswer("B", "B", SIMILARITY),  # gold A: neither
    ]
    scores = lenient_accuracy(answers, ["B", "B", "D", "A"])
    assert (scores["accuracy_first_match"], scores["accuracy_last_match"]) == (0.25, 0.5)
    assert (scores["accuracy"], scores["match_used"]) == (0.5, "last")
    assert scores["fallback_answers"] == scores["answers_by_similarity"] == 1
    assert (scores["answers_by_letter"], scores["answers_by_answer_is"], scores["answers_by_option_text"]) == (2, 1, 0)
