"""The DeepSeek-R1-Distill chat format, rendered by the project.

The tokenizer's own R1 chat template deletes everything before ``</think>`` in assistant turns, so
rendering training rows through it would silently train on the answer alone. This module renders the
format itself and builds the loss mask while it renders: the prompt is tokenized apart from the
completion, and only the completion (reasoning, answer and the final EOS) carries labels.

Text from the data (question, reasoning, answer, instruction) is data, never control: a row whose
answer spells ``<｜end▁of▁sentence｜>`` or whose question spells ``<｜Assistant｜>`` is encoded as those
characters, not as the control tokens, so it can neither end an answer early nor forge a turn. Only
the format's own markers become control tokens.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from medllm.config.schema import TRAIN_ON

IGNORE_INDEX = -100

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PAD = "<｜▁pad▁｜>"
SPECIAL_TOKENS = (BOS, EOS, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE, PAD)

# Placeholders in a recorded format (R1ChatFormat.record): where a row's text goes.
QUESTION, REASONING, RESPONSE = "{question}", "{reasoning}", "{response}"


class PlainTextEncoder:
    """Token ids of text taken literally: no substring becomes one of the tokenizer's added tokens.

    ``split_special_tokens`` alone is not enough: it splits only tokens flagged *special*, while the R1
    distill tokenizers add ``<｜User｜>``, ``<｜Assistant｜>``, ``<think>`` and ``</think>`` as non-special
    added tokens (and transformers leaves the flag switched on in the tokenizer afterwards). So a copy
    of the fast tokenizer marks every added token special and splits them all; the caller's tokenizer
    is left as it was. Between control tokens the ids are those the tokenizer itself gives, because it
    too encodes the text between added tokens on its own.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.backend: Tokenizer | None = None
        if backend is not None:
            spec = json.loads(backend.to_str())
            for token in spec["added_tokens"]:
                token["special"] = True
            self.backend = Tokenizer.from_str(json.dumps(spec))
            self.backend.encode_special_tokens = True
        self.added = tokenizer.get_added_vocab()
        longest_first = sorted(self.added, key=len, reverse=True)
        self.control_text = re.compile("|".join(map(re.escape, longest_first))) if self.added else None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if self.backend is not None:
            # encode_batch_fast skips the character offsets: ~4x faster than tokenizer(texts), same ids.
            return [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        # A slow (Python) tokenizer takes the flag per call and then splits every added token.
        return self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def markers(self, tokens: Sequence[str]) -> list[list[int]]:
        """The ids of control markers: the added token's id (an R1 tokenizer has them all), else the text's.

        Looked up, not encoded, so a flag left on the tokenizer (``split_special_tokens``) can't split them.
        """
        return [[self.added[t]] if t in self.added else self.encode([t])[0] for t in tokens]

    def has_control_text(self, text: str) -> bool:
        """Whether ``text`` spells one of the tokenizer's added tokens."""
        return self.control_text is not None and self.control_text.search(text) is not None


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_text_encoder(tokenizer) -> PlainTextEncoder:
    """The tokenizer's encoder, built once (building copies the whole tokenizer); rebuilt if tokens were added."""
    encoder = _ENCODERS.get(tokenizer)
    if encoder is None or encoder.vocab_size != len(tokenizer):
        encoder = _ENCODERS[tokenizer] = PlainTextEncoder(tokenizer)
    return encoder


@dataclass(frozen=True)
class R1ChatFormat:
    """Renders ``Question`` / ``Complex_CoT`` / ``Response`` rows as one R1 conversation.

    ``instruction`` (optional) is prepended to every question, separated by a blank line. The string
    methods (``prompt``, ``render``...) show the text; the ``encode``/``tokenize`` methods give the ids
    the model sees, with the data's text kept literal.
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

    def record(self) -> dict[str, str | None]:
        """The format as a run record keeps it: the instruction, and the prompt and completion templates."""
        return {
            "instruction": self.instruction,
            "generation_prompt": self.generation_prompt(QUESTION),
            "completion": self.completion(REASONING, RESPONSE),
        }

    def _prompt_ids(self, encoder: PlainTextEncoder, questions: Sequence[str]) -> list[list[int]]:
        bos, user, assistant = encoder.markers([BOS, USER, ASSISTANT])
        users = encoder.encode([self.user_text(q) for q in questions])
        return [bos + user + text + assistant for text in users]

    def encode_generation_prompts(self, tokenizer, questions: Sequence[str]) -> list[list[int]]:
        """The ids of ``generation_prompt(q)`` for each question, its text literal: what evaluation feeds
        the model (no BOS to add: the prompt starts with it)."""
        encoder = plain_text_encoder(tokenizer)
        (think_open,) = encoder.markers([THINK_OPEN])
        (newline,) = encoder.encode(["\n"])
        return [ids + think_open + newline for ids in self._prompt_ids(encoder, questions)]

    def tokenize_batch(
        self,
        tokenizer,
        questions: list[str],
        reasonings: list[str],
        responses: list[str],
        train_on: str = "completion",
    ) -> dict[str, list]:
        """Token ids and labels for a batch of rows (the shape ``datasets.map(batched=True)`` wants), and
        ``control_text``: whether the row's text spells a control token (kept literal; counted).

        Each stretch of text between the format's markers is encoded on its own and the markers' ids
        put between them; for text without control tokens that equals tokenizing the rendered row.
        The first token (BOS) is never a label, so in a packed sequence no row is trained to predict
        the start of the next.
        """
        TRAIN_ON.check("data.train_on", train_on)
        encoder = plain_text_encoder(tokenizer)
        prompts = self._prompt_ids(encoder, questions)
        think_open, think_close, eos = encoder.markers([THINK_OPEN, THINK_CLOSE, EOS])
        reasoning_ids = encoder.encode([f"\n{c}\n" for c in reasonings])
        response_ids = encoder.encode([f"\n\n{r}" for r in responses])
        input_ids, labels, control_text = [], [], []
        for i, prompt_ids in enumerate(prompts):
            completion_ids = think_open + reasoning_ids[i] + think_close + response_ids[i] + eos
            ids = prompt_ids + completion_ids
            if train_on == "completion":
                row_labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
            else:
                row_labels = [IGNORE_INDEX, *ids[1:]]
            input_ids.append(ids)
            labels.append(row_labels)
            texts = (self.user_text(questions[i]), reasonings[i], responses[i])
            control_text.append(any(encoder.has_control_text(t) for t in texts))
        return {"input_ids": input_ids, "labels": labels, "control_text": control_text}
