"""Evaluation protocols: how a question is asked and how an answer is read, so a number can be compared with the
paper that published it.

``strict`` (the default) asks as ``BenchmarkItem.prompt_text`` does and reads the answer only after
``</think>``, never guessing (``medllm.tasks.extraction``). ``huatuogpt_o1`` follows HuatuoGPT-o1's evaluation
as its paper and code describe it (their sampling and token limit are set by conf/protocol/huatuogpt_o1.yaml):

- the prompt "Please answer the following multiple-choice question:\\n{question}\\n{options}", options as
  "A. text" lines; yes/no/maybe questions become the options A. yes, B. no, C. maybe, after their context;
- the answer is read from the text after "## Final Response" (else after ``</think>``, else the whole output):
  the first and the last "answer is X" there; else the first and the last option letter standing alone; else
  the option whose text appears last; else (the fallback) the option whose text is most similar to the output;
- a benchmark's accuracy is the better of the first-match and the last-match accuracies.

The similarity is ``difflib.SequenceMatcher.ratio``, as their scorer uses: Python's standard library, so the
fallback matches theirs to the character with no dependency added.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace

from medllm.data.chat_format import THINK_CLOSE
from medllm.tasks.items import LETTERS, BenchmarkItem

STRICT, HUATUOGPT_O1 = "strict", "huatuogpt_o1"
PROTOCOLS = (STRICT, HUATUOGPT_O1)
HUATUO_PROMPT = "Please answer the following multiple-choice question:\n{question}\n{options}"
FINAL_RESPONSE = "## Final Response"

# How a lenient answer was found, from the most explicit to the fallback.
ANSWER_IS, LETTER, OPTION_TEXT, SIMILARITY = "answer_is", "letter", "option_text", "similarity"
_ANSWER_IS = re.compile(r"(?i:answer\s+is)[\s:*]*\(?([A-Z])\b")
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")


def as_protocol_item(item: BenchmarkItem, protocol: str) -> BenchmarkItem:
    """The item as the protocol asks it: unchanged for strict; yes/no/maybe as lettered options for HuatuoGPT-o1."""
    if protocol == STRICT or item.options is not None:
        return item
    options = dict(zip(LETTERS, item.choices, strict=False))
    gold = LETTERS[item.choices.index(item.gold)]
    return replace(item, choices=tuple(options), gold=gold, options=options)


def prompt_text(item: BenchmarkItem, protocol: str) -> str:
    """The user message the protocol asks ``item`` with."""
    if protocol == STRICT:
        return item.prompt_text()
    item = as_protocol_item(item, protocol)
    question = f"{item.context}\n{item.question}" if item.context else item.question
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return HUATUO_PROMPT.format(question=question, options=options)


@dataclass(frozen=True)
class LenientAnswer:
    first: str
    last: str
    found_by: str  # ANSWER_IS, LETTER, OPTION_TEXT or SIMILARITY


def _response(output: str) -> str:
    if FINAL_RESPONSE in output:
        return output.split(FINAL_RESPONSE, 1)[1]
    if THINK_CLOSE in output:
        return output.rsplit(THINK_CLOSE, 1)[1]
    return output


def lenient_answer(output: str, item: BenchmarkItem) -> LenientAnswer:
    """HuatuoGPT-o1's reading of ``output`` (see the module doc); always an option letter of ``item``."""
    text = _response(output)
    letters = item.choices
    stated = [m.group(1) for m in _ANSWER_IS.finditer(text) if m.group(1) in letters]
    if stated:
        return LenientAnswer(stated[0], stated[-1], ANSWER_IS)
    alone = [m.group(1) for m in _LETTER.finditer(text) if m.group(1) in letters]
    if alone:
        return LenientAnswer(alone[0], alone[-1], LETTER)
    folded = text.casefold()
    places = {letter: folded.rfind(option.casefold()) for letter, option in item.options.items()}
    present = {letter: place for letter, place in places.items() if place >= 0}
    if present:
        letter = max(present, key=present.__getitem__)
        return LenientAnswer(letter, letter, OPTION_TEXT)
    ratios = {letter: difflib.SequenceMatcher(None, text, option).ratio() for letter, option in item.options.items()}
    letter = max(ratios, key=ratios.__getitem__)  # ties: the first option, as max keeps the first maximum
    return LenientAnswer(letter, letter, SIMILARITY)


def lenient_accuracy(answers: list[LenientAnswer], golds: list[str]) -> dict[str, float | int | str]:
    """The better of first-match and last-match accuracy over a benchmark, which one it was, and how many answers
    each way of reading found."""
    first = sum(a.first == g for a, g in zip(answers, golds, strict=True)) / len(golds)
    last = sum(a.last == g for a, g in zip(answers, golds, strict=True)) / len(golds)
    counts = {way: sum(a.found_by == way for a in answers) for way in (ANSWER_IS, LETTER, OPTION_TEXT, SIMILARITY)}
    return {
        "accuracy": max(first, last),
        "accuracy_first_match": first,
        "accuracy_last_match": last,
        "match_used": "first" if first >= last else "last",
        "fallback_answers": counts[SIMILARITY],
        **{f"answers_by_{way}": count for way, count in counts.items()},
    }
