"""The DeepSeek-R1-Distill chat format, rendered by the project.

The tokenizer's own R1 chat template deletes everything before ``</think>`` in assistant turns, so
rendering training rows through it would silently train on the answer alone. This module renders the
format itself and builds the loss mask while it renders: the prompt is tokenized apart from the
completion, and only the completion (reasoning, answer and the final EOS) carries labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = -100

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PAD = "<｜▁pad▁｜>"
SPECIAL_TOKENS = (BOS, EOS, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE, PAD)

TrainOn = Literal["completion", "all"]


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` (no special tokens added). A fast tokenizer's ``encode_batch_fast``
    skips the character offsets that ``tokenizer(texts)`` computes: ~4x faster, same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class R1ChatFormat:
    """Renders ``Question`` / ``Complex_CoT`` / ``Response`` rows as one R1 conversation.

    ``instruction`` (optional) is prepended to every question, separated by a blank line.
    """

    instruction: str | None = None

    def user_text(self, question: str) -> str:
        return f"{self.instruction}\n\n{question}" if self.instruction else question

    def prompt(self, question: str) -> str:
        """Everything the model reads before it starts to answer."""
        return f"{BOS}{USER}{self.user_text(question)}{ASSISTANT}"

    def generation_prompt(self, question: str) -> str:
        """The prompt with the reasoning block opened, as the model expects at inference."""
        return f"{self.prompt(question)}{THINK_OPEN}\n"

    @staticmethod
    def completion(reasoning: str, response: str) -> str:
        """The assistant turn: the reasoning inside ``<think>``, then the answer, then EOS."""
        return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{response}{EOS}"

    def render(self, question: str, reasoning: str, response: str) -> str:
        return self.prompt(question) + self.completion(reasoning, response)

    def tokenize_batch(
        self,
        tokenizer,
        questions: list[str],
        reasonings: list[str],
        responses: list[str],
        train_on: TrainOn = "completion",
    ) -> dict[str, list[list[int]]]:
        """Token ids and labels for a batch of rows (the shape ``datasets.map(batched=True)`` wants).

        Prompt and completion are tokenized apart and joined: the boundary is the special token
        ``<｜Assistant｜>``, which the tokenizer never merges with its neighbours, so the ids equal
        those of the whole rendered text. The first token (BOS) is never a label, so in a packed
        sequence no row is trained to predict the start of the next.
        """
        if train_on not in ("completion", "all"):
            raise ValueError(f"train_on must be 'completion' or 'all', got {train_on!r}")
        prompts = encode_batch(tokenizer, [self.prompt(q) for q in questions])
        completions = encode_batch(tokenizer, [self.completion(c, r) for c, r in zip(reasonings, responses)])
        input_ids, labels = [], []
        for prompt_ids, completion_ids in zip(prompts, completions):
            ids = prompt_ids + completion_ids
            if train_on == "completion":
                row_labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
            else:
                row_labels = [IGNORE_INDEX, *ids[1:]]
            input_ids.append(ids)
            labels.append(row_labels)
        return {"input_ids": input_ids, "labels": labels}
