"""One benchmark question, whatever benchmark it comes from: what extraction reads and scoring scores."""

from __future__ import annotations

from dataclasses import dataclass

from medllm.errors import MedllmError

YES_NO_MAYBE = ("yes", "no", "maybe")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BenchmarkError(MedllmError, ValueError):
    """A benchmark file or hub dataset that can't be used as it is; the message says where and what."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One question: ``choices`` are the labels a parsed answer may take, ``gold`` is one of them.

    ``options`` maps each letter to its text for multiple-choice items (None for yes/no/maybe);
    ``context`` is the passage a question is asked about (PubMedQA's abstract).
    """

    id: str
    question: str
    choices: tuple[str, ...]
    gold: str
    options: dict[str, str] | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        if self.gold not in self.choices:
            raise BenchmarkError(f"item {self.id}: gold {self.gold!r} is not one of the choices {self.choices}")
        if self.options is not None and tuple(self.options) != self.choices:
            raise BenchmarkError(f"item {self.id}: options {tuple(self.options)} differ from choices {self.choices}")

    def prompt_text(self) -> str:
        """The user message: context, question, lettered options and how to answer."""
        parts = [f"Context:\n{self.context}\n\nQuestion: {self.question}" if self.context else self.question]
        if self.options:
            parts.append("\n".join(f"{letter}. {text}" for letter, text in self.options.items()))
            parts.append("Answer with the letter of the correct option.")
        else:
            parts.append(f"Answer with {', '.join(self.choices[:-1])} or {self.choices[-1]}.")
        return "\n\n".join(parts)
