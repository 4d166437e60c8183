"""Reading the chosen label out of an R1-style completion, without ever guessing.

Only the text after the last ``</think>`` is the answer: the reasoning weighs every option, so
searching it would find them all. A completion whose think block never closes gave no answer.

The answer is read in three tiers, each tried only when the ones before assert nothing:

1. explicit statements: "The answer is B", "Answer: C) Metformin", "the correct option is (D)",
   "Final answer: maybe", "In conclusion: no", ``\\boxed{B}``, "Option B is correct"; a statement
   naming an option by its text ("The answer is Metformin") counts too;
2. a label leading the first line ("B", "(B)", "B. Metformin", "Yes, ...") or standing alone on a line;
3. for multiple choice, the text of an option appearing in the answer ("so the diagnosis is Graves
   disease"), when exactly one option's text appears.

A tier that asserts two different labels returns None rather than pick one: a parse failure is
scored as wrong, a guess could be scored as right.
"""

from __future__ import annotations

import re

from medllm.data.chat_format import SPECIAL_TOKENS, THINK_CLOSE
from medllm.tasks.items import BenchmarkItem

# Explicit answer statements. The noun may be followed by up to four lowercase filler words ("the answer
# to this question is"); an uppercase word ends the phrase, so "Option A is wrong" is not a statement.
# The clause is captured in a lookahead so statements inside a statement's line are found as well.
_STATEMENT = re.compile(
    r"(?i:\b(?:answer|option|choice|conclusion)\b)(?:\s+[a-z]+){0,4}?\s*"
    r"(?i:\bis\b|\bwould be\b|\bshould be\b|\bwill be\b|[:=\-–—])[ \t:]*\n?\s*(?=(?P<clause>[^\n]*))"
)
_LETTER_IS_CORRECT = re.compile(
    r"(?<!\w)(?:(?i:option|choice)\s+)?[(\[]?([A-Z])[)\]]?\s+(?i:is)\s+(?:(?i:the)\s+)?(?i:correct|right|best)\b"
)
_CLAUSE_PREFIX = re.compile(
    r"^(?:(?i:the|most|likely|probably|definitely|clearly|therefore|thus|option|choice|letter|correct)\b[\s,:]*)+"
)
# A letter after an answer statement: "(B)", "[B]", "B" not followed by a word character, "b)" / "b.".
_CLAUSE_LETTER = re.compile(r"^(?:[(\[]([A-Za-z])[)\]]|([A-Z])(?![\w'’])|([a-z])[).](?!\w))")
# A letter leading the first line must look like a label: "(B)", "B.", "B)", "B:" or "B" alone.
_LINE_LETTER = re.compile(r"^(?:[(\[]([A-Z])[)\]]|([A-Z])(?:[.):]|$))")
_ALONE_LETTER = re.compile(r"^[(\[]?([A-Z])[)\].:]?$")
_JOINER = re.compile(r"^\s*(?:,|/|&|(?i:or|and)\b)\s*")

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_LATEX_TEXT = re.compile(r"\\text(?:bf)?\{([^{}]*)\}")
_EMPHASIS = re.compile(r"\*+|_{2,}|`+|\$")
_LINE_MARKUP = re.compile(r"^[ \t]*(?:#+|>|[-•+]|\d+\.)[ \t]+", re.MULTILINE)
_APOSTROPHES = re.compile(r"['’‘]")


def answer_section(output: str) -> str | None:
    """The text after the last ``</think>``, unmarked; None when the think block never closes."""
    if THINK_CLOSE not in output:
        return None
    text = output.rsplit(THINK_CLOSE, 1)[1]
    for token in SPECIAL_TOKENS:
        text = text.replace(token, " ")
    text = _BOXED.sub(lambda m: f"\nFinal answer: {m.group(1)}\n", text)
    text = _LATEX_TEXT.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    return _LINE_MARKUP.sub("", text).strip()


def _fold(text: str) -> str:
    """Case, apostrophes, spacing and end punctuation folded, so option texts match as written."""
    return " ".join(_APOSTROPHES.sub("", text).casefold().split()).strip(" .,;:!")


def _option_mentions(text: str, options: dict[str, str], prose: bool = False) -> set[str]:
    """Letters whose option text occurs in ``text`` as whole words.

    An option found only inside a longer option's occurrence is not a mention ("Graves disease" in
    "Graves disease with ophthalmopathy"). In free ``prose`` short or letterless texts ("2", "IV",
    "150") are skipped: they would match by chance, where after "The answer is" they can't.
    """
    folded = _fold(text)
    spans: dict[str, list[tuple[int, int]]] = {}
    for letter, option in options.items():
        needle = _fold(option)
        if prose and (len(needle) < 4 or not any(c.isalpha() for c in needle)):
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(needle) + r"(?!\w)")
        found = [m.span() for m in pattern.finditer(folded)]
        if found:
            spans[letter] = found

    def inside_longer(letter: str, span: tuple[int, int]) -> bool:
        return any(
            other != letter and a <= span[0] and span[1] <= b and b - a > span[1] - span[0]
            for other, others in spans.items()
            for a, b in others
        )

    return {letter for letter, found in spans.items() if not all(inside_longer(letter, s) for s in found)}


def _leading_letters(clause: str, choices: tuple[str, ...]) -> set[str]:
    """The letter(s) a clause opens with: "B", "(B) Metformin", and both of "B or C"."""
    letters: set[str] = set()
    while match := _CLAUSE_LETTER.match(clause):
        letter = next(g for g in match.groups() if g).upper()
        if letter not in choices:
            break
        letters.add(letter)
        joiner = _JOINER.match(clause[match.end() :])
        if not joiner:
            break
        clause = clause[match.end() + joiner.end() :]
    return letters


def _leading_words(clause: str, choices: tuple[str, ...]) -> set[str]:
    """The label word(s) a clause opens with: "no", "Yes, ..." and both of "yes or maybe"."""
    words = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True))
    pattern = re.compile(rf"^(?i:({words}))\b")
    labels: set[str] = set()
    while match := pattern.match(clause):
        labels.add(next(c for c in choices if c.casefold() == match.group(1).casefold()))
        joiner = _JOINER.match(clause[match.end() :])
        if not joiner:
            break
        clause = clause[match.end() + joiner.end() :]
    return labels


def _statements(text: str, item: BenchmarkItem) -> set[str]:
    """Labels asserted by explicit answer statements (tier 1)."""
    labels: set[str] = set()
    for match in _STATEMENT.finditer(text):
        clause = _CLAUSE_PREFIX.sub("", match.group("clause").strip())
        if item.options is None:
            labels |= _leading_words(clause, item.choices)
        else:
            labels |= _leading_letters(clause, item.choices) or _option_mentions(clause, item.options)
    if item.options is not None:
        labels |= {m.group(1) for m in _LETTER_IS_CORRECT.finditer(text) if m.group(1) in item.choices}
    return labels


def _line_labels(text: str, item: BenchmarkItem) -> set[str]:
    """Labels leading the first line or standing alone on any line (tier 2)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return set()
    if item.options is not None:
        first = _LINE_LETTER.match(lines[0])
        labels = {next(g for g in first.groups() if g)} if first else set()
        labels |= {m.group(1) for line in lines if (m := _ALONE_LETTER.match(line))}
        return labels & set(item.choices)
    words = "|".join(re.escape(c) for c in sorted(item.choices, key=len, reverse=True))
    first = re.match(rf"^(?i:({words}))(?:[.,;:!)]|$|\s+[-–—])", lines[0])
    found = [first.group(1)] if first else []
    found += [m.group(1) for line in lines if (m := re.match(rf"^(?i:({words}))[.!]?$", line))]
    return {c for c in item.choices for f in found if c.casefold() == f.casefold()}


def extract_answer(output: str, item: BenchmarkItem) -> str | None:
    """The label (option letter or yes/no/maybe) the completion answers, or None if it gives none or several."""
    text = answer_section(output)
    if not text:
        return None
    tiers = [_statements, _line_labels]
    if item.options is not None:
        tiers.append(lambda t, i: _option_mentions(t, i.options, prose=True))
    for tier in tiers:
        labels = tier(text, item)
        if labels:
            return labels.pop() if len(labels) == 1 else None
    return None
